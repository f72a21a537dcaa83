//! Readers of user bytes must never panic: IDX, CIFAR, split files, list files, JPEG and PNG
//! images, PyTorch state dicts (`torch.save` files), and settings (TOML and `--set`). Each target runs a few hundred random inputs here (seconds); `scripts/fuzz.sh`
//! runs them for a fixed budget of many more. Inputs that once failed are kept in
//! tests/fuzz.proptest-regressions and replayed first.
use gcl::config::Config;
use gcl::data::{cifar, idx, split};
use proptest::prelude::*;
use std::path::Path;

/// Bytes that look like an IDX file often enough to get past the magic number.
fn idx_like(magic: u32) -> impl Strategy<Value = Vec<u8>> {
    (any::<[u32; 3]>(), proptest::collection::vec(any::<u8>(), 0..300), any::<bool>(), 0usize..20).prop_map(move |(dims, body, small, cut)| {
        let dims = if small { dims.map(|d| d % 8) } else { dims };
        let mut v = magic.to_be_bytes().to_vec();
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(&body);
        v.truncate(v.len().saturating_sub(cut));
        v
    })
}

/// Bytes that start as one of `seeds` and are then cut, overwritten in a few places, or both:
/// past the magic numbers into the readers' depths.
fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (0..seeds.len(), proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6), any::<usize>(), any::<bool>()).prop_map(move |(k, edits, cut, do_cut)| {
        let mut v = seeds[k].clone();
        for (at, b) in edits {
            let n = v.len();
            v[at % n] = b;
        }
        if do_cut {
            v.truncate(cut % (v.len() + 1));
        }
        v
    })
}

/// Real JPEG and PNG files (the fixtures), mutated.
fn image_like() -> impl Strategy<Value = Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/transforms");
    mutated(
        ["baseline_420.jpg", "progressive.jpg", "cmyk.jpg", "grey.jpg", "grey_64x80.png", "rgb_97x131.png"]
            .iter()
            .map(|f| std::fs::read(dir.join(f)).unwrap())
            .collect(),
    )
}

/// A small state dict saved by torch (zip and legacy formats), mutated.
fn pth_like() -> impl Strategy<Value = Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pth");
    mutated(["small.pth", "small_legacy.pth"].iter().map(|f| std::fs::read(dir.join(f)).unwrap()).collect())
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"))), ..ProptestConfig::default() })]

    #[test]
    fn the_state_dict_reader_never_panics(bytes in pth_like(), raw in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = gcl::model::pth::parse(&bytes);
        let _ = gcl::model::pth::parse(&raw);
    }

    #[test]
    fn idx_readers_never_panic(image in idx_like(0x0803), label in idx_like(0x0801), raw in proptest::collection::vec(any::<u8>(), 0..64)) {
        let name = Path::new("fuzz");
        let _ = idx::parse_images(name, &image);
        let _ = idx::parse_labels(name, &label);
        let _ = idx::parse_images(name, &raw);
        let _ = idx::parse_labels(name, &raw);
    }

    #[test]
    fn a_folder_of_random_idx_files_loads_or_fails_cleanly(image in idx_like(0x0803), label in idx_like(0x0801), gz in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        for stem in ["train", "t10k"] {
            let (i, l) = (dir.path().join(format!("{stem}-images-idx3-ubyte")), dir.path().join(format!("{stem}-labels-idx1-ubyte")));
            if gz {
                // Not really gzip past the magic bytes: the reader must say so.
                let mut bad = vec![0x1f, 0x8b];
                bad.extend_from_slice(&image);
                std::fs::write(format!("{}.gz", i.display()), bad).unwrap();
            } else {
                std::fs::write(&i, &image).unwrap();
            }
            std::fs::write(&l, &label).unwrap();
        }
        let _ = gcl::data::load(gcl::data::DatasetKind::Mnist, Some(dir.path()));
    }

    #[test]
    fn cifar_readers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..8000), records in 0usize..3, label in any::<u8>()) {
        let dir = tempfile::tempdir().unwrap();
        // Whole records with a random label, or random bytes.
        let mut whole = Vec::new();
        for _ in 0..records {
            whole.push(label);
            whole.push(label);
            whole.extend(std::iter::repeat_n(7u8, 3072));
        }
        for (name, data) in [("train.bin", &whole), ("test.bin", &bytes)] {
            std::fs::write(dir.path().join(name), data).unwrap();
        }
        let _ = cifar::load_dir(dir.path(), cifar::Variant::Cifar100);
        for i in 1..=5 {
            std::fs::write(dir.path().join(format!("data_batch_{i}.bin")), &bytes).unwrap();
        }
        std::fs::write(dir.path().join("test_batch.bin"), &whole).unwrap();
        let _ = cifar::load_dir(dir.path(), cifar::Variant::Cifar10);
    }

    #[test]
    fn image_decoders_never_panic(bytes in image_like(), raw in proptest::collection::vec(any::<u8>(), 0..64)) {
        for color in [gcl::data::image::Color::Rgb, gcl::data::image::Color::Grey] {
            if let Ok(s) = gcl::data::image::decode(&bytes, color) {
                prop_assert_eq!(s.pixels.len(), s.geometry.pixels());
            }
            let _ = gcl::data::image::decode(&raw, color);
        }
        let _ = gcl::data::image::dimensions(&bytes);
    }

    #[test]
    fn list_files_never_panic(text in "([ \\t]*[a-z/._ ]{0,12}[ \\t]+-?[0-9]{0,21}[ \\t]*\\r?\\n){0,8}|\\PC{0,80}") {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("list.txt");
        std::fs::write(&p, &text).unwrap();
        if let Ok(entries) = gcl::data::files::read_list(&p) {
            prop_assert!(entries.iter().all(|e| e.label >= 0 && e.line >= 1));
            let opts = gcl::data::files::FileOptions { train_list: Some(p.clone()), test_list: Some(p.clone()), skip_unreadable: true, ..Default::default() };
            let _ = gcl::data::files::open_lists(dir.path(), &opts);
        }
    }

    #[test]
    fn split_files_never_panic(text in "([ \\t]*-?[0-9]{0,22}[ \\t]*\\r?\\n){0,12}|\\PC{0,80}", train_len in 0usize..100) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("split.txt");
        std::fs::write(&p, &text).unwrap();
        if let Ok(idx) = split::read_index_file(&p, train_len) {
            prop_assert!(idx.iter().all(|&i| i >= 0 && (i as usize) < train_len));
        }
    }

    #[test]
    fn settings_never_panic(
        key in "(data|model|stage1|stage2|run|stage1\\.loss|stage2\\.method|stage2\\.method\\.loss|[a-z_.]{0,12})\\.[a-z_]{0,14}",
        value in "-?[0-9]{1,25}(\\.[0-9]{0,5})?(e-?[0-9]{1,3})?|nan|inf|-inf|true|\"[a-z-]{0,10}\"|\\[[0-9., ]{0,12}\\]|\\{ ?name = \"[a-z-]{0,16}\" ?\\}|\\PC{0,20}",
        toml_text in "(\\[[a-z0-9_.]{0,16}\\]\\n)?([a-z_]{1,14} = (-?[0-9]{1,20}|\"[a-z-]{0,10}\"|true|nan)\\n){0,4}|\\PC{0,60}",
    ) {
        let _ = Config::default().set(&format!("{key}={value}"));
        if let Ok(t) = toml_text.parse::<toml::Table>() {
            let _ = Config::default().merge_table(t);
        }
    }
}

/// Inputs that made a reader fail before its fix, kept as they were found.
#[test]
fn regression_inputs_stay_fixed() {
    // An IDX header whose image count times size overflows (a panic in debug builds, and a
    // wrapped size in release builds, before the check became a checked product).
    let mut header = 0x0803u32.to_be_bytes().to_vec();
    for d in [u32::MAX, u32::MAX, 2] {
        header.extend_from_slice(&d.to_be_bytes());
    }
    let err = format!("{:#}", idx::parse_images(Path::new("huge"), &header).err().unwrap());
    assert!(err.contains("corrupt header"), "{err}");
}
