//! Readers of user bytes must never panic: IDX, CIFAR, split files, list files, JPEG and PNG
//! images (size-bomb headers too), PyTorch state dicts (`torch.save` files, storages and
//! shapes that claim more than the file holds too), settings (TOML and `--set`), the
//! launcher's environment (torchrun, Slurm), metrics.jsonl; and the TensorBoard event files
//! gcl writes are well-framed whatever the tags and values. Each target runs a few hundred
//! random inputs here (seconds); `scripts/fuzz.sh`
//! runs them for a fixed budget of many more. Inputs that once failed are kept in
//! tests/fuzz.proptest-regressions and replayed first.
mod common;
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

/// A pickle integer (LONG1, 8 bytes).
fn pint(v: i64) -> Vec<u8> {
    let mut o = vec![0x8a, 8];
    o.extend(v.to_le_bytes());
    o
}

/// A pickle string (BINUNICODE).
fn pstr(s: &str) -> Vec<u8> {
    let mut o = vec![b'X'];
    o.extend((s.len() as u32).to_le_bytes());
    o.extend(s.as_bytes());
    o
}

/// A zip state dict (torch.save's layout) of one float tensor `w`: its storage claims `numel`
/// elements and holds `data`; the tensor has `size`, `stride` and `offset`.
fn state_dict(numel: i64, data: &[u8], offset: i64, size: &[i64], stride: &[i64]) -> Vec<u8> {
    use std::io::Write;
    let tuple = |v: &[i64]| [vec![b'('], v.iter().flat_map(|&x| pint(x)).collect(), vec![b't']].concat();
    let p = [
        b"\x80\x02}".to_vec(),
        pstr("w"),
        b"ctorch._utils\n_rebuild_tensor_v2\n(".to_vec(),
        [vec![b'('], pstr("storage"), b"ctorch\nFloatStorage\n".to_vec(), pstr("0"), pstr("cpu"), pint(numel), b"tQ".to_vec()].concat(),
        pint(offset),
        tuple(size),
        tuple(stride),
        b"\x89ccollections\nOrderedDict\n)RtRs.".to_vec(),
    ]
    .concat();
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored = zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("archive/data.pkl", stored).unwrap();
    z.write_all(&p).unwrap();
    z.start_file("archive/data/0", stored).unwrap();
    z.write_all(data).unwrap();
    z.finish().unwrap().into_inner()
}

/// Reads the TFRecord framing of an event file: each record's length, data and masked CRCs.
fn tfrecords(bytes: &[u8]) -> Result<usize, String> {
    let masked = |b: &[u8]| {
        let c = crc32c::crc32c(b);
        c.rotate_right(15).wrapping_add(0xa282_ead8)
    };
    let (mut at, mut n) = (0, 0);
    while at < bytes.len() {
        let head = bytes.get(at..at + 12).ok_or("a record cut in its header")?;
        let len = u64::from_le_bytes(head[..8].try_into().unwrap()) as usize;
        if u32::from_le_bytes(head[8..12].try_into().unwrap()) != masked(&head[..8]) {
            return Err(format!("record {n}: bad length checksum"));
        }
        let data = bytes.get(at + 12..at + 12 + len).ok_or("a record cut in its data")?;
        let crc = bytes.get(at + 12 + len..at + 16 + len).ok_or("a record without its checksum")?;
        if u32::from_le_bytes(crc.try_into().unwrap()) != masked(data) {
            return Err(format!("record {n}: bad data checksum"));
        }
        at += 16 + len;
        n += 1;
    }
    Ok(n)
}

#[test]
fn the_fuzzers_builders_make_valid_files() {
    // A well-formed state dict from `state_dict` reads back (so that the target below, whose
    // inputs are mostly refused, does reach the size checks).
    let data: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let t = gcl::model::pth::parse(&state_dict(6, &data, 0, &[2, 3], &[3, 1])).unwrap();
    assert_eq!((t[0].0.as_str(), t[0].1.size()), ("w", vec![2, 3]));
    assert_eq!(t[0].1.double_value(&[1, 2]), 5.0);
    // A zero stride claiming 10^12 elements of one stored value: refused before allocation.
    let e = format!("{:#}", gcl::model::pth::parse(&state_dict(1, &data[..4], 0, &[1_000_000_000_000], &[0])).err().unwrap());
    assert!(e.contains("does not fit its storage"), "{e}");
    // An event file of gcl's reads as TFRecords.
    let dir = tempfile::tempdir().unwrap();
    let mut w = gcl::eval::tensorboard::EventWriter::create(dir.path()).unwrap();
    w.scalars(1, &[("loss".to_string(), 0.5)]).unwrap();
    drop(w);
    let f = std::fs::read_dir(dir.path()).unwrap().next().unwrap().unwrap().path();
    assert_eq!(tfrecords(&std::fs::read(f).unwrap()), Ok(2), "the file version record and one scalar");
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
    fn size_bomb_headers_are_refused_before_their_pixels_are_allocated(huge in any::<bool>(), w in 1u16..=65535, h in 1u16..=65535, png in any::<bool>(), cut in 0usize..40) {
        use gcl::data::image::{decode, Color, MAX_PIXELS};
        // Small claims decode (the data runs short: an error) in milliseconds; huge ones must
        // be refused from the header, or decoding would allocate and fill gigabytes.
        let (w, h) = if huge { (w, h) } else { (w % 1500 + 1, h % 1500 + 1) };
        let mut bytes = if png { common::png_bomb(w as u32, h as u32) } else { common::jpeg_bomb(w, h) };
        if cut > 30 {
            bytes.truncate(bytes.len().saturating_sub(cut - 30));
        }
        let over = w as u64 * h as u64 > MAX_PIXELS;
        match decode(&bytes, Color::Rgb) {
            Ok(s) => prop_assert!(!over && s.pixels.len() == s.geometry.pixels()),
            // Over the limit: one of the errors found before any pixel memory is allocated.
            Err(e) => {
                let e = format!("{e:#}");
                prop_assert!(!over || ["data.max_pixels", "not a readable", "truncated JPEG"].iter().any(|m| e.contains(m)), "{}", e)
            }
        }
    }

    #[test]
    fn state_dicts_claiming_more_than_the_file_holds_are_refused(
        numel in prop_oneof![0i64..64, any::<i64>()],
        stored in 0usize..64,
        offset in prop_oneof![0i64..8, any::<i64>()],
        size in proptest::collection::vec(prop_oneof![0i64..8, any::<i64>()], 0..4),
        stride in proptest::collection::vec(prop_oneof![0i64..8, any::<i64>()], 0..4),
    ) {
        let data = vec![0u8; stored * 4];
        if let Ok(t) = gcl::model::pth::parse(&state_dict(numel, &data, offset, &size, &stride)) {
            // Read tensors hold no more elements than the file stores.
            prop_assert!(t.iter().all(|(_, t)| t.numel() <= stored));
        }
    }

    #[test]
    fn launcher_environments_never_panic(vars in proptest::collection::hash_map(
        "WORLD_SIZE|RANK|LOCAL_RANK|MASTER_ADDR|MASTER_PORT|TORCHELASTIC_USE_AGENT_STORE",
        "-?[0-9]{0,21}|[a-z.:]{0,12}|true|True|\\PC{0,10}",
        0..7,
    )) {
        if let Ok(Some(e)) = gcl::dist::Env::read(&|k| vars.get(k).cloned()) {
            prop_assert!(e.rank < e.world && e.world > 1 && e.port > 0);
        }
    }

    #[test]
    fn metrics_files_never_panic(text in "(\\{\"stage\":[0-9],\"epoch\":[0-9]{1,3}(,\"loss\":[0-9.e-]{1,8})?\\}\n){0,4}\\PC{0,30}") {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("metrics.jsonl"), &text).unwrap();
        if let Ok(lines) = gcl::report::read_curves(dir.path()) {
            prop_assert!(lines.iter().all(|l| l.is_object()));
        }
    }

    #[test]
    fn event_files_are_well_framed_whatever_the_tags_and_values(scalars in proptest::collection::vec(("\\PC{0,40}", any::<f64>(), any::<i64>()), 0..6)) {
        let dir = tempfile::tempdir().unwrap();
        let mut w = gcl::eval::tensorboard::EventWriter::create(dir.path()).unwrap();
        for (tag, v, step) in &scalars {
            w.scalars(*step, &[(tag.clone(), *v)]).unwrap();
        }
        drop(w);
        let f = std::fs::read_dir(dir.path()).unwrap().next().unwrap().unwrap().path();
        prop_assert_eq!(tfrecords(&std::fs::read(f).unwrap()), Ok(1 + scalars.len()));
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
