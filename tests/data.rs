//! Readers, the long-tailed split and their errors.
mod common;
use gcl::data::split::{longtail_indices, read_index_file, write_index_file, Profile, SplitRule};
use gcl::data::{cifar, class_counts, idx, load, DatasetKind, Source, Subset};

/// All pixels of a source, in order.
fn all_pixels(s: &dyn Source) -> Vec<u8> {
    (0..s.len()).flat_map(|i| s.sample(i).unwrap().pixels.into_owned()).collect()
}
use std::io::Write;
use std::path::Path;

fn pixels(n: usize, per: usize) -> Vec<u8> {
    (0..n * per).map(|i| (i * 7 % 251) as u8).collect()
}

fn write_mnist_like(dir: &Path, n_train: usize, n_test: usize, gz: bool) {
    let lab = |n: usize| (0..n).map(|i| (i % 10) as u8).collect::<Vec<_>>();
    idx::write_pair(dir, "train", &pixels(n_train, 28 * 28), n_train, 28, 28, &lab(n_train)).unwrap();
    idx::write_pair(dir, "t10k", &pixels(n_test, 28 * 28), n_test, 28, 28, &lab(n_test)).unwrap();
    if gz {
        for f in ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"] {
            let raw = std::fs::read(dir.join(f)).unwrap();
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(&raw).unwrap();
            std::fs::write(dir.join(format!("{f}.gz")), enc.finish().unwrap()).unwrap();
            std::fs::remove_file(dir.join(f)).unwrap();
        }
    }
}

#[test]
fn idx_round_trip_raw_and_gzip() {
    for gz in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        write_mnist_like(dir.path(), 50, 20, gz);
        let ds = load(DatasetKind::Mnist, Some(dir.path())).unwrap();
        assert_eq!(ds.train.len(), 50);
        let g = ds.train.sample(0).unwrap().geometry;
        assert_eq!((g.c, g.h, g.w), (1, 28, 28));
        assert_eq!(ds.test.len(), 20);
        assert_eq!(ds.train.num_classes(), 10);
        assert_eq!(ds.train.labels()[13], 3);
        assert_eq!(all_pixels(ds.train.as_ref()), pixels(50, 28 * 28));
    }
}

#[test]
fn truncated_idx_file_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    write_mnist_like(dir.path(), 30, 10, false);
    let f = dir.path().join("train-images-idx3-ubyte");
    let raw = std::fs::read(&f).unwrap();
    std::fs::write(&f, &raw[..raw.len() - 100]).unwrap();
    let err = format!("{:#}", load(DatasetKind::Mnist, Some(dir.path())).err().unwrap());
    assert!(err.contains("train-images-idx3-ubyte") && err.contains("truncated"), "{err}");
}

#[test]
fn corrupt_gzip_and_missing_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    write_mnist_like(dir.path(), 30, 10, true);
    let f = dir.path().join("t10k-labels-idx1-ubyte.gz");
    let mut raw = std::fs::read(&f).unwrap();
    raw.truncate(raw.len() / 2);
    std::fs::write(&f, raw).unwrap();
    let err = format!("{:#}", load(DatasetKind::Mnist, Some(dir.path())).err().unwrap());
    assert!(err.contains("t10k-labels-idx1-ubyte.gz"), "{err}");
    std::fs::remove_file(&f).unwrap();
    let err = format!("{:#}", load(DatasetKind::Mnist, Some(dir.path())).err().unwrap());
    assert!(err.contains("missing file") && err.contains("t10k-labels"), "{err}");
    let err = format!("{:#}", load(DatasetKind::Mnist, Some(&dir.path().join("nope"))).err().unwrap());
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn a_label_outside_the_datasets_classes_is_an_error_in_either_file() {
    let dir = tempfile::tempdir().unwrap();
    idx::write_pair(dir.path(), "train", &pixels(4, 4), 4, 2, 2, &[0, 1, 2, 2]).unwrap();
    idx::write_pair(dir.path(), "t10k", &pixels(2, 4), 2, 2, 2, &[0, 12]).unwrap();
    let err = format!("{:#}", load(DatasetKind::Mnist, Some(dir.path())).err().unwrap());
    assert!(err.contains("t10k-labels") && err.contains("label 12") && err.contains("10 classes"), "{err}");
    // A training label out of range is caught too, not taken as a 201st class.
    idx::write_pair(dir.path(), "train", &pixels(4, 4), 4, 2, 2, &[0, 1, 200, 2]).unwrap();
    let err = format!("{:#}", load(DatasetKind::FashionMnist, Some(dir.path())).err().unwrap());
    assert!(err.contains("train-labels") && err.contains("label 200 of image 2"), "{err}");
}

fn cifar_records(n: usize, coarse: bool, classes: u8) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        if coarse {
            out.push((i % 20) as u8);
        }
        out.push((i % classes as usize) as u8);
        out.extend((0..3072).map(|p| ((p + i) % 256) as u8));
    }
    out
}

#[test]
fn cifar10_binary_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    for b in 1..=5 {
        std::fs::write(dir.path().join(format!("data_batch_{b}.bin")), cifar_records(4, false, 10)).unwrap();
    }
    std::fs::write(dir.path().join("test_batch.bin"), cifar_records(3, false, 10)).unwrap();
    let ds = cifar::load_dir(dir.path(), cifar::Variant::Cifar10).unwrap();
    assert_eq!(ds.train.len(), 20);
    assert_eq!(ds.train.channels(), 3);
    assert_eq!(ds.train.labels()[..5], [0, 1, 2, 3, 0]);
    assert_eq!(ds.test.len(), 3);
    let px = ds.train.sample(1).unwrap().pixels.into_owned();
    // The first pixel of record i is i, the last channel's last one (3071 + i) % 256.
    assert_eq!(px[0], 1);
    assert_eq!(px[3071] as usize, (3071 + 1) % 256);
}

#[test]
fn cifar100_reads_the_fine_label() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("train.bin"), cifar_records(150, true, 100)).unwrap();
    std::fs::write(dir.path().join("test.bin"), cifar_records(10, true, 100)).unwrap();
    let ds = load(DatasetKind::Cifar100, Some(dir.path())).unwrap();
    assert_eq!(ds.train.num_classes(), 100);
    assert_eq!(ds.train.labels()[99], 99);
    assert_eq!(ds.train.labels()[120], 20);
}

#[test]
fn cifar_truncated_or_bad_label_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut rec = cifar_records(3, true, 100);
    std::fs::write(dir.path().join("test.bin"), &rec).unwrap();
    rec.pop();
    std::fs::write(dir.path().join("train.bin"), &rec).unwrap();
    let err = format!("{:#}", load(DatasetKind::Cifar100, Some(dir.path())).err().unwrap());
    assert!(err.contains("train.bin") && err.contains("truncated"), "{err}");
    let mut bad = cifar_records(2, false, 10);
    bad[0] = 12;
    for b in 1..=5 {
        std::fs::write(dir.path().join(format!("data_batch_{b}.bin")), &bad).unwrap();
    }
    std::fs::write(dir.path().join("test_batch.bin"), &bad).unwrap();
    let err = format!("{:#}", load(DatasetKind::Cifar10, Some(dir.path())).err().unwrap());
    assert!(err.contains("data_batch_1.bin") && err.contains("label 12"), "{err}");
}

#[test]
fn first_n_split_keeps_the_first_images_of_each_class_in_file_order() {
    let labels: Vec<i64> = (0..300).map(|i| i % 3).collect(); // 100 per class
    let idx = longtail_indices(&labels, 3, 10.0, Profile::Exp, &SplitRule::FirstN).unwrap();
    // counts 100, 31, 10
    assert_eq!(idx.len(), 100 + 31 + 10);
    assert_eq!(&idx[100..103], &[1, 4, 7]);
    assert_eq!(idx[141 - 1], 2 + 3 * 9);
}

#[test]
fn random_split_is_seeded_and_keeps_the_counts() {
    let labels: Vec<i64> = (0..300).map(|i| i % 3).collect();
    let a = longtail_indices(&labels, 3, 10.0, Profile::Exp, &SplitRule::Random { seed: 1 }).unwrap();
    let b = longtail_indices(&labels, 3, 10.0, Profile::Exp, &SplitRule::Random { seed: 1 }).unwrap();
    let c = longtail_indices(&labels, 3, 10.0, Profile::Exp, &SplitRule::Random { seed: 2 }).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_eq!(a.len(), 141);
}

#[test]
fn step_profile_halves_the_classes() {
    let labels: Vec<i64> = (0..400).map(|i| i % 4).collect();
    let idx = longtail_indices(&labels, 4, 10.0, Profile::Step, &SplitRule::FirstN).unwrap();
    assert_eq!(idx.len(), 100 + 100 + 10 + 10);
}

#[test]
fn index_file_round_trip_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("split.txt");
    write_index_file(&f, &[5, 3, 9]).unwrap();
    assert_eq!(read_index_file(&f, 10).unwrap(), vec![5, 3, 9]);
    let err = format!("{:#}", read_index_file(&f, 8).err().unwrap());
    assert!(err.contains("split.txt:3") && err.contains("index 9"), "{err}");
    std::fs::write(&f, "1\nx\n").unwrap();
    let err = format!("{:#}", read_index_file(&f, 8).err().unwrap());
    assert!(err.contains("split.txt:2"), "{err}");
    // An image listed twice is refused, naming both lines.
    std::fs::write(&f, "4\n2\n\n4\n").unwrap();
    let err = format!("{:#}", read_index_file(&f, 8).err().unwrap());
    assert!(err.contains("split.txt:4") && err.contains("index 4 is listed twice (first on line 1)"), "{err}");
}

#[test]
fn fashion_mnist_lt_split_has_the_reference_counts() {
    let ds = load(DatasetKind::FashionMnist, Some(&common::fashion_mnist_dir())).unwrap();
    assert_eq!(ds.train.len(), 60000);
    assert_eq!(class_counts(ds.test.labels(), 10), vec![1000; 10]);
    assert_eq!(ds.train.class_names()[0], "T-shirt/top");
    let idx = longtail_indices(ds.train.labels(), 10, 100.0, Profile::Exp, &SplitRule::FirstN).unwrap();
    let sub = Subset::new(ds.train.clone(), &idx).unwrap();
    assert_eq!(class_counts(sub.labels(), 10), vec![6000, 3596, 2156, 1292, 774, 464, 278, 166, 100, 60]);
    // The subset hands out the kept images themselves.
    assert_eq!(sub.sample(5).unwrap().pixels, ds.train.sample(idx[5] as usize).unwrap().pixels);
}

#[test]
fn samplers_draw_classes_in_the_stated_proportions() {
    use gcl::data::sampler::Sampler;
    use rand::SeedableRng;
    let counts = vec![900usize, 100, 25];
    let labels: Vec<i64> = counts.iter().enumerate().flat_map(|(c, &n)| std::iter::repeat(c as i64).take(n)).collect();
    let freq = |s: Sampler| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut hits = vec![0f64; 3];
        let mut draws = 0f64;
        for _ in 0..40 {
            for i in s.epoch_order(&labels, &counts, &mut rng) {
                hits[labels[i] as usize] += 1.0;
                draws += 1.0;
            }
        }
        hits.iter().map(|h| h / draws).collect::<Vec<f64>>()
    };
    // Instance: every image once per epoch, in a shuffled order.
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut order = Sampler::Instance.epoch_order(&labels, &counts, &mut rng);
    assert_ne!(order, (0..labels.len()).collect::<Vec<_>>());
    order.sort();
    assert_eq!(order, (0..labels.len()).collect::<Vec<_>>());
    // Class-balanced: each class a third of the draws.
    for f in freq(Sampler::ClassBalanced) {
        assert!((f - 1.0 / 3.0).abs() < 0.02, "{f}");
    }
    // Square root: class share proportional to sqrt(n): 30 : 10 : 5.
    let f = freq(Sampler::Sqrt);
    for (got, want) in f.iter().zip([30.0 / 45.0, 10.0 / 45.0, 5.0 / 45.0]) {
        assert!((got - want).abs() < 0.02, "{f:?}");
    }
    // CBEN favours the tail over the head, far more than instance sampling does.
    let f = freq(Sampler::Cben);
    assert!(f[2] > 0.25 && f[0] < 0.45, "{f:?}");
}
