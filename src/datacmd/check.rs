//! `gcl data check`: what an image dataset holds and what is wrong with it, before a run
//! finds out. Every file is read and decoded (on several threads); every problem is listed
//! with its path (and list line).
use crate::data::files::{read_list, scan_folder, Entry};
use crate::data::image::{decode_within, sniff, Color, Format};
use crate::data::{class_counts, DatasetKind};
use crate::eval::Table;
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The long-tail benchmarks' list files as classifier-balancing ships them (data/*/*.txt at
/// commit 22370c6): name, git blob id (SHA-1 of "blob <len>\0" + content), SHA-256 where the
/// file itself could be read here (the train lists of ImageNet-LT and iNaturalist are too
/// large for the mirror we read them from; their blob ids identify them as well).
pub const KNOWN_LISTS: &[(&str, &str, Option<&str>)] = &[
    ("ImageNet-LT train (ImageNet_LT_train.txt)", "a063f095fcd475db4cf8b0658c4b73955535bbf9", None),
    (
        "ImageNet-LT val (ImageNet_LT_val.txt)",
        "3ed3188b2f44829ce2dec1cc27040d8d40984088",
        Some("9af7ba688acf9532ff5845a8fb14a1e97fdc4c51ac48bc72c08ea9c3f7ff142e"),
    ),
    (
        "ImageNet-LT test (ImageNet_LT_test.txt)",
        "76a2fb9749d6cd29e765cc4f8c270f2504131e2f",
        Some("d1590191cf8a71fada7b1aaedaa2d139a2aea93ff2f1b755319d0bd8dbaa55d5"),
    ),
    (
        "Places-LT train (Places_LT_train.txt)",
        "6392252f8ae867bc8a5e841cc1b29e5b8ef4b636",
        Some("726c4871dcbf07ce2f857703bfe32e9a83ffbf52d704239f6d95c4f4f4c247f7"),
    ),
    ("Places-LT val (Places_LT_val.txt)", "b93a2ca58ccb7f3b671c176f395a70bf52c95533", Some("719e3cf3766c09134ea28f56f1036c78def511ac1ed2c2532a6beef78f2439ba")),
    (
        "Places-LT test (Places_LT_test.txt)",
        "e732e58b8aa718a2c1c11933375f5710652c2b93",
        Some("44eee8441c8098c59195465abede425721bc35525d75209f9433b161a6eb37bc"),
    ),
    ("iNaturalist 2018 train (iNaturalist18_train.txt)", "4accdb7584d2f0a5106c40a33ed6afa392189bcc", None),
    (
        "iNaturalist 2018 val (iNaturalist18_val.txt)",
        "4c23900857fd0f5adcd4cc0dffef345039eeb05f",
        Some("efaeff65f80641b60864470e6f255aa69453406ef5717eec8c6681748f3a61f3"),
    ),
];

/// SHA-256 (hex) and git blob id (hex) of `bytes`.
pub fn list_digests(bytes: &[u8]) -> (String, String) {
    use sha1::Digest as _;
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let sha256 = hex(&sha2::Sha256::digest(bytes));
    let mut g = sha1::Sha1::new();
    g.update(format!("blob {}\0", bytes.len()).as_bytes());
    g.update(bytes);
    (sha256, hex(&g.finalize()))
}

/// The benchmark list these digests belong to, if any.
pub fn known_list(sha256: &str, blob: &str) -> Option<&'static str> {
    KNOWN_LISTS.iter().find(|(_, b, s)| *b == blob || *s == Some(sha256)).map(|k| k.0)
}

/// One split of the dataset as found on disk.
struct Part {
    name: &'static str,
    root: PathBuf,
    list: Option<PathBuf>,
    entries: Vec<Entry>,
}

/// What reading every file of a part found.
#[derive(Default)]
struct Scan {
    /// (path and line, problem)
    bad: Vec<(String, String)>,
    sizes: Vec<(usize, usize)>,
    jpeg: usize,
    png: usize,
    grey: usize,
}

fn scan(part: &Part, threads: usize, max_pixels: u64, bar: &ProgressBar) -> Scan {
    let next = AtomicUsize::new(0);
    let results: Vec<Scan> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads.max(1))
            .map(|_| {
                s.spawn(|| {
                    let mut out = Scan::default();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(e) = part.entries.get(i) else { break };
                        let path = part.root.join(&e.path);
                        let at = crate::data::files::where_(&part.root, part.list.as_deref(), e);
                        match std::fs::read(&path) {
                            Err(err) => out.bad.push((at, if err.kind() == std::io::ErrorKind::NotFound { "missing".into() } else { err.to_string() })),
                            Ok(bytes) => match decode_within(&bytes, Color::Rgb, max_pixels) {
                                Err(err) => out.bad.push((at, format!("{err:#}"))),
                                Ok(img) => {
                                    out.sizes.push((img.geometry.w, img.geometry.h));
                                    match sniff(&bytes) {
                                        Some(Format::Jpeg) => out.jpeg += 1,
                                        _ => out.png += 1,
                                    }
                                    if crate::data::fit::is_grey(&img) {
                                        out.grey += 1;
                                    }
                                }
                            },
                        }
                        bar.inc(1);
                    }
                    out
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("check thread")).collect()
    });
    let mut all = Scan::default();
    for r in results {
        all.bad.extend(r.bad);
        all.sizes.extend(r.sizes);
        all.jpeg += r.jpeg;
        all.png += r.png;
        all.grey += r.grey;
    }
    all.bad.sort();
    all
}

/// What `gcl data check` looks at.
pub struct CheckOptions {
    pub cfg: crate::config::Config,
    pub threads: usize,
    /// Bad files listed in full (else the first 20 and a count).
    pub all: bool,
}

/// Checks the dataset and prints what it found; Err when any file is bad.
pub fn run_command(o: &CheckOptions) -> Result<()> {
    let d = &o.cfg.data;
    let root = d.dataset.resolve_dir(d.dir.as_deref())?;
    if !root.is_dir() {
        bail!("data folder {} does not exist ({})", root.display(), d.dataset.info().missing_hint);
    }
    let mut text = String::new();
    let mut parts = Vec::new();
    let mut class_names: Option<Vec<String>> = None;
    let mut problems = Vec::new();
    match d.dataset {
        DatasetKind::List => {
            let lists = [("train", &d.train_list), ("val", &d.val_list), ("test", &d.test_list)];
            for (name, l) in lists {
                let Some(l) = l else {
                    if name != "val" {
                        bail!("--dataset list needs --{name}-list FILE");
                    }
                    continue;
                };
                let bytes = std::fs::read(l).with_context(|| format!("cannot read list file {}", l.display()))?;
                let (sha, blob) = list_digests(&bytes);
                let known = known_list(&sha, &blob).map_or("not one of the benchmark lists gcl knows".to_string(), |k| format!("this is {k}"));
                text += &format!("{name} list {}: sha256 {sha} ({known})\n", l.display());
                let entries = read_list(l)?;
                let mut seen: HashMap<&Path, usize> = HashMap::new();
                for e in &entries {
                    if let Some(first) = seen.insert(e.path.as_path(), e.line) {
                        problems.push(format!("{}:{}: {} is listed again (first on line {first})", l.display(), e.line, e.path.display()));
                    }
                }
                parts.push(Part { name, root: root.clone(), list: Some(l.clone()), entries });
            }
        }
        DatasetKind::Folder => {
            let (classes, train) = scan_folder(&root.join("train"))?;
            let index: HashMap<String, i64> = classes.iter().enumerate().map(|(i, c)| (c.clone(), i as i64)).collect();
            for (name, dir) in [("train", root.join("train")), ("val", root.join("val")), ("test", root.join("test"))] {
                if !dir.is_dir() {
                    if name == "test" {
                        problems.push(format!("{} is missing", dir.display()));
                    }
                    continue;
                }
                let files = if name == "train" { train.clone() } else { scan_folder(&dir)?.1 };
                let mut entries = Vec::new();
                for (c, p) in files {
                    match index.get(&c) {
                        Some(&label) => entries.push(Entry { path: p, label, line: 0 }),
                        None => problems.push(format!("{}/{c}: a class that train/ does not have", dir.display())),
                    }
                }
                parts.push(Part { name, root: dir, list: None, entries });
            }
            class_names = Some(classes);
        }
        other => bail!("gcl data check reads image files (--dataset list or folder), not `{}`", other.name()),
    }
    let classes = class_names.as_ref().map_or_else(|| parts.iter().flat_map(|p| &p.entries).map(|e| e.label as usize + 1).max().unwrap_or(0), Vec::len);
    let class_names = class_names.unwrap_or_else(|| {
        let lists: Vec<&[Entry]> = parts.iter().map(|p| p.entries.as_slice()).collect();
        crate::data::files::list_class_names(&lists, classes)
    });
    let train_counts = class_counts(&parts[0].entries.iter().map(|e| e.label).collect::<Vec<_>>(), classes);
    for (c, n) in train_counts.iter().enumerate() {
        if *n == 0 {
            problems.push(format!("class {c} has no training image"));
        }
    }
    for p in &parts[1..] {
        for e in &p.entries {
            if train_counts[e.label as usize] == 0 {
                problems.push(format!("{} image {} has label {}, which no training image has", p.name, e.path.display(), e.label));
                break;
            }
        }
    }

    // Every file read and decoded.
    let total: usize = parts.iter().map(|p| p.entries.len()).sum();
    let bar = ProgressBar::new(total as u64).with_style(ProgressStyle::with_template("checking {pos}/{len} images {wide_bar} {eta}").expect("template"));
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let scans: Vec<Scan> = parts.iter().map(|p| scan(p, o.threads, d.max_pixels, &bar)).collect();
    bar.finish_and_clear();

    let (many_above, few_below) = (o.cfg.run.many_above, o.cfg.run.few_below);
    let mut t =
        Table::new(&["split", "images", "classes", "min/class", "max/class", "imbalance", "JPEG", "PNG", "grey", "sizes (w x h): min / median / max", "bad"]);
    for (p, s) in parts.iter().zip(&scans) {
        let counts = class_counts(&p.entries.iter().map(|e| e.label).collect::<Vec<_>>(), classes);
        let present: Vec<usize> = counts.iter().copied().filter(|&n| n > 0).collect();
        let (mn, mx) = (present.iter().min().copied().unwrap_or(0), present.iter().max().copied().unwrap_or(0));
        t.row(&[
            p.name.to_string(),
            p.entries.len().to_string(),
            present.len().to_string(),
            mn.to_string(),
            mx.to_string(),
            if mn > 0 { format!("{:.1}", mx as f64 / mn as f64) } else { "-".into() },
            s.jpeg.to_string(),
            s.png.to_string(),
            s.grey.to_string(),
            size_summary(&s.sizes),
            s.bad.len().to_string(),
        ]);
    }
    text += &t.text();
    if let Some(train) = scans.first().filter(|s| !s.sizes.is_empty()) {
        // What `gcl train` chooses for these images when the settings leave it unset.
        let stats = crate::data::fit::ImageStats::of(&train.sizes, train.grey);
        let mut blank = o.cfg.clone();
        (blank.model.arch, blank.data.color, blank.data.train_transform, blank.data.test_transform) = (None, None, None, None);
        let fitted = blank.fit_to(&stats);
        text += &format!(
            "suggested settings (what gcl train chooses when they are unset), from all {} training images:\n  model.arch = {:?}\n  data.color = {:?}\n  data.train_transform = {}\n  data.test_transform = {}\n",
            stats.sampled,
            fitted.model.arch(),
            if fitted.data.color() == Color::Grey { "grey" } else { "rgb" },
            inline_toml(&fitted.data.train_transform)?,
            inline_toml(&fitted.data.test_transform)?,
        );
    }
    let many = train_counts.iter().filter(|&&n| n > many_above).count();
    let few = train_counts.iter().filter(|&&n| n < few_below).count();
    text += &format!("training classes: {many} many-shot (> {many_above} images), {} medium, {few} few-shot (< {few_below})\n", classes - many - few);
    let mut per_class = Table::new(&["class", "name", "train", "val", "test"]);
    let counts_of = |name: &str| parts.iter().find(|p| p.name == name).map(|p| class_counts(&p.entries.iter().map(|e| e.label).collect::<Vec<_>>(), classes));
    let (val, test) = (counts_of("val"), counts_of("test"));
    if classes <= 100 {
        for c in 0..classes {
            let name = class_names[c].clone();
            let cell = |v: &Option<Vec<usize>>| v.as_ref().map_or("-".to_string(), |v| v[c].to_string());
            per_class.row(&[c.to_string(), name, train_counts[c].to_string(), cell(&val), cell(&test)]);
        }
        text += &per_class.text();
    }
    let bad: Vec<(String, String)> = scans.into_iter().flat_map(|s| s.bad).collect();
    let shown = if o.all { bad.len() } else { bad.len().min(20) };
    for (path, why) in &bad[..shown] {
        text += &format!("bad file: {path}: {why}\n");
    }
    if shown < bad.len() {
        text += &format!("... and {} more bad files (--all lists them all)\n", bad.len() - shown);
    }
    for p in &problems {
        text += &format!("problem: {p}\n");
    }
    crate::util::out(&text)?;
    if !bad.is_empty() || !problems.is_empty() {
        bail!("{} bad files and {} other problems in {}", bad.len(), problems.len(), root.display());
    }
    Ok(())
}

fn size_summary(sizes: &[(usize, usize)]) -> String {
    if sizes.is_empty() {
        return "-".into();
    }
    let mut by_area: Vec<(usize, usize)> = sizes.to_vec();
    by_area.sort_by_key(|&(w, h)| (w * h, w));
    let f = |s: (usize, usize)| format!("{}x{}", s.0, s.1);
    format!("{} / {} / {}", f(by_area[0]), f(by_area[by_area.len() / 2]), f(by_area[by_area.len() - 1]))
}

/// A setting's value as an inline TOML table (`{ name = "resize-crop", resize = 36, size = 36 }`).
fn inline_toml<T: serde::Serialize>(v: &T) -> Result<String> {
    Ok(toml::Value::try_from(v)?.to_string())
}
