//! Image files as a [`Source`]: list files as the long-tail benchmarks ship them
//! (`relative/path label` per line, joined to a root: ImageNet_LT_*.txt, Places_LT_*.txt,
//! iNaturalist18_*.txt) and image folders in torchvision's ImageFolder convention
//! (`DIR/train/<class>/...`, classes sorted by name). Files are read and decoded when a
//! sample is asked for; only paths and labels are held.
use super::image::{decode_within, Color};
use super::{Dataset, Sample, Source};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// How image files are read.
#[derive(Debug, Clone, PartialEq)]
pub struct FileOptions {
    pub train_list: Option<PathBuf>,
    pub test_list: Option<PathBuf>,
    pub val_list: Option<PathBuf>,
    pub color: Color,
    /// Skip missing and unreadable files (counted and reported) instead of stopping.
    pub skip_unreadable: bool,
    /// Images of more pixels are refused before decoding (`data.max_pixels`).
    pub max_pixels: u64,
}

impl Default for FileOptions {
    /// No lists, RGB, stop at an unreadable file, Pillow's pixel limit.
    fn default() -> Self {
        Self { train_list: None, test_list: None, val_list: None, color: Color::Rgb, skip_unreadable: false, max_pixels: super::image::MAX_PIXELS }
    }
}

/// One image of a list or folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// As the list gives it (relative to the root), or relative to the folder.
    pub path: PathBuf,
    pub label: i64,
    /// Line in the list file (1-based); 0 for folders.
    pub line: usize,
}

/// Image files with labels.
pub struct FileSet {
    root: PathBuf,
    /// The list file the entries come from, if any.
    list: Option<PathBuf>,
    entries: Vec<Entry>,
    labels: Vec<i64>,
    class_names: Vec<String>,
    color: Color,
    skip: bool,
    max_pixels: u64,
    /// Unreadable samples met so far (index -> what was wrong), when skipping.
    unreadable: Mutex<BTreeMap<usize, String>>,
    /// Files left out when the set was opened (missing), when skipping.
    missing: Vec<String>,
}

impl FileSet {
    /// `entries` under `root`. Missing files are an error naming them (or, skipping, are
    /// left out and reported).
    pub fn new(root: &Path, list: Option<&Path>, entries: Vec<Entry>, class_names: Vec<String>, o: &FileOptions) -> Result<Self> {
        let skip = o.skip_unreadable;
        if let Some(bad) = entries.iter().find(|e| e.label < 0 || e.label as usize >= class_names.len()) {
            bail!("{}: label {} is outside 0..{}", where_(root, list, bad), bad.label, class_names.len());
        }
        let (mut kept, mut missing) = (Vec::with_capacity(entries.len()), Vec::new());
        for e in entries {
            if root.join(&e.path).is_file() {
                kept.push(e);
            } else {
                missing.push(where_(root, list, &e));
            }
        }
        if !missing.is_empty() {
            if !skip {
                let hint = match list {
                    Some(_) => format!(
                        " (paths in the list are joined to --data {}; benchmark lists differ in their first folder, e.g. `data_256/` or `train/`)",
                        root.display()
                    ),
                    None => String::new(),
                };
                bail!(
                    "{} of {} image files are missing{hint}; the first: {}\n(data.unreadable = \"skip\" leaves such files out and reports them)",
                    missing.len(),
                    missing.len() + kept.len(),
                    missing[..missing.len().min(5)].join(", ")
                );
            }
            crate::util::warn_once(&format!("{} missing image files left out (data.unreadable = \"skip\"); the first: {}", missing.len(), missing[0]));
        }
        let labels = kept.iter().map(|e| e.label).collect();
        Ok(Self {
            root: root.to_path_buf(),
            list: list.map(Path::to_path_buf),
            entries: kept,
            labels,
            class_names,
            color: o.color,
            skip,
            max_pixels: o.max_pixels,
            unreadable: Mutex::new(BTreeMap::new()),
            missing,
        })
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// The full path of sample `i`.
    pub fn file(&self, i: usize) -> PathBuf {
        self.root.join(&self.entries[i].path)
    }
    /// Sample `i`'s file and, for lists, its line: how errors name it.
    pub fn describe(&self, i: usize) -> String {
        where_(&self.root, self.list.as_deref(), &self.entries[i])
    }
}

/// An entry's file, and for lists its `list:line`: how errors and reports name it.
pub fn where_(root: &Path, list: Option<&Path>, e: &Entry) -> String {
    match list {
        Some(l) => format!("{} ({}:{})", root.join(&e.path).display(), l.display(), e.line),
        None => root.join(&e.path).display().to_string(),
    }
}

impl Source for FileSet {
    fn len(&self) -> usize {
        self.entries.len()
    }
    fn labels(&self) -> &[i64] {
        &self.labels
    }
    fn num_classes(&self) -> usize {
        self.class_names.len()
    }
    fn class_names(&self) -> &[String] {
        &self.class_names
    }
    fn channels(&self) -> usize {
        self.color.channels()
    }
    fn sample(&self, i: usize) -> Result<Sample<'_>> {
        let path = self.file(i);
        let bytes = std::fs::read(&path).with_context(|| format!("cannot read image {}", self.describe(i)))?;
        decode_within(&bytes, self.color, self.max_pixels).with_context(|| format!("image {}", self.describe(i)))
    }
    fn from_files(&self) -> bool {
        true
    }
    fn path(&self, i: usize) -> Option<PathBuf> {
        Some(self.file(i))
    }
    fn skips_unreadable(&self) -> bool {
        self.skip
    }
    fn note_unreadable(&self, i: usize, e: &anyhow::Error) {
        let mut bad = self.unreadable.lock().unwrap_or_else(|p| p.into_inner());
        if bad.insert(i, format!("{e:#}")).is_none() {
            eprintln!("gcl: warning: skipped unreadable {e:#}");
        }
    }
    fn unreadable(&self) -> Vec<String> {
        let bad = self.unreadable.lock().unwrap_or_else(|p| p.into_inner());
        self.missing.iter().map(|m| format!("{m}: missing")).chain(bad.values().cloned()).collect()
    }
    /// A file's identity is its path (as listed), label and size: hashing every pixel of a
    /// 400k-image set would take minutes.
    fn digest_sample(&self, i: usize, h: &mut sha2::Sha256) -> Result<()> {
        use sha2::Digest;
        let e = &self.entries[i];
        let len = std::fs::metadata(self.file(i)).with_context(|| format!("cannot read image {}", self.describe(i)))?.len();
        h.update(e.path.to_string_lossy().as_bytes());
        h.update([0]);
        h.update(e.label.to_le_bytes());
        h.update(len.to_le_bytes());
        Ok(())
    }
}

/// Labels run from 0 to below this (iNaturalist 2018 has 8,142 classes).
pub const MAX_CLASSES: usize = 1_000_000;

/// The entries of a list file: `relative/path label` per line (the path may hold spaces;
/// blank lines are skipped).
pub fn read_list(path: &Path) -> Result<Vec<Entry>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read list file {}", path.display()))?;
    let mut out = Vec::new();
    for (no, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (p, label) =
            line.rsplit_once(char::is_whitespace).with_context(|| format!("{}:{}: expected `relative/path label`, got `{line}`", path.display(), no + 1))?;
        let label: i64 = label.parse().with_context(|| format!("{}:{}: `{label}` is not a class label (a whole number)", path.display(), no + 1))?;
        if label < 0 {
            bail!("{}:{}: label {label} is negative", path.display(), no + 1);
        }
        if label >= MAX_CLASSES as i64 {
            bail!("{}:{}: label {label} is beyond the {MAX_CLASSES} classes gcl takes (labels are 0, 1, ...)", path.display(), no + 1);
        }
        out.push(Entry { path: PathBuf::from(p.trim_end()), label, line: no + 1 });
    }
    if out.is_empty() {
        bail!("list file {} names no images", path.display());
    }
    Ok(out)
}

/// Class names for list labels: the folder that holds each class's images, when every class
/// has one folder of its own (ImageNet's synsets, Places' scene names); the labels otherwise.
pub fn list_class_names(lists: &[&[Entry]], classes: usize) -> Vec<String> {
    let mut dirs: Vec<Option<String>> = vec![None; classes];
    let mut consistent = true;
    for e in lists.iter().flat_map(|l| l.iter()) {
        let d = e.path.parent().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned());
        match (&dirs[e.label as usize], d) {
            (None, Some(d)) => dirs[e.label as usize] = Some(d),
            (Some(a), Some(d)) if *a == d => {}
            _ => consistent = false,
        }
    }
    let names: Vec<String> = dirs.iter().enumerate().map(|(i, d)| d.clone().unwrap_or_else(|| i.to_string())).collect();
    let unique = names.iter().collect::<std::collections::HashSet<_>>().len() == names.len();
    if consistent && unique {
        names
    } else {
        (0..classes).map(|i| i.to_string()).collect()
    }
}

/// A list file's path: as given, or, when a relative path is not found so, under the root
/// (the presets name the benchmarks' list files, which usually sit beside the images).
pub fn locate_list(root: &Path, p: &Path) -> PathBuf {
    if p.is_relative() && !p.exists() && root.join(p).exists() {
        root.join(p)
    } else {
        p.to_path_buf()
    }
}

/// `--dataset list`: train and test lists (and an optional val list) under `root`.
pub fn open_lists(root: &Path, o: &FileOptions) -> Result<Dataset> {
    let need = |p: &Option<PathBuf>, flag: &str| -> Result<PathBuf> {
        p.clone().with_context(|| format!("--dataset list needs {flag} FILE (one `relative/path label` per line)"))
    };
    let locate = |p: PathBuf| locate_list(root, &p);
    let (train_p, test_p) = (locate(need(&o.train_list, "--train-list")?), locate(need(&o.test_list, "--test-list")?));
    let val_p = o.val_list.clone().map(locate);
    let train = read_list(&train_p)?;
    let test = read_list(&test_p)?;
    let val = val_p.as_deref().map(read_list).transpose()?;
    let mut all: Vec<&[Entry]> = vec![&train, &test];
    if let Some(v) = &val {
        all.push(v);
    }
    let classes = all.iter().flat_map(|l| l.iter()).map(|e| e.label as usize + 1).max().unwrap_or(0);
    let names = list_class_names(&all, classes);
    let set = |entries: Vec<Entry>, list: &Path| -> Result<Arc<dyn Source>> {
        Ok(Arc::new(FileSet::new(root, Some(list), entries, names.clone(), o)?))
    };
    let val = match (val, &val_p) {
        (Some(v), Some(p)) => Some(set(v, p)?),
        _ => None,
    };
    Ok(Dataset { train: set(train, &train_p)?, test: set(test, &test_p)?, val })
}

/// The file extensions torchvision's ImageFolder takes (lower case). JPEG and PNG decode;
/// the others are listed so that they fail by name instead of vanishing from the split.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "ppm", "bmp", "pgm", "tif", "tiff", "webp"];

/// The images of one split folder (`DIR/train`): (class folder names sorted, entries).
pub fn scan_folder(dir: &Path) -> Result<(Vec<String>, Vec<(String, PathBuf)>)> {
    let mut classes = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot read folder {}", dir.display()))? {
        let e = e?;
        if e.path().is_dir() {
            classes.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    classes.sort();
    if classes.is_empty() {
        bail!("{} has no class folders (expected {}/<class>/<image>)", dir.display(), dir.display());
    }
    let mut files = Vec::new();
    for c in &classes {
        for f in image_files_within(&dir.join(c), dir, IMAGE_EXTENSIONS)? {
            let rel = f.strip_prefix(dir).expect("under dir").to_path_buf();
            files.push((c.clone(), rel));
        }
    }
    Ok((classes, files))
}

/// The image files (by extension) under `dir` and its subfolders, sorted (see
/// [`image_files_within`]).
pub fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    image_files_within(dir, dir, IMAGE_EXTENSIONS)
}

/// The files with one of the lower-case `extensions` under `dir`, sorted. Links to files are
/// followed, and so are links to folders outside `root` (images kept on another disk); a link
/// back into `root` or to a folder above it is not (`loop -> ..` would be walked until the
/// path is too long, counting every image below it again each time), nor one to a folder
/// already walked: such links are named in a warning.
pub fn image_files_within(dir: &Path, root: &Path, extensions: &[&str]) -> Result<Vec<PathBuf>> {
    use std::os::unix::fs::MetadataExt;
    let real = |p: &Path| p.canonicalize().with_context(|| format!("cannot read folder {}", p.display()));
    let root = real(root)?;
    let id = |p: &Path| std::fs::metadata(p).map(|m| (m.dev(), m.ino())).with_context(|| format!("cannot read folder {}", p.display()));
    let mut visited = std::collections::HashSet::from([id(dir)?]);
    let (mut out, mut skipped) = (Vec::new(), Vec::new());
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("cannot read folder {}", d.display()))? {
            let e = e.with_context(|| format!("cannot read folder {}", d.display()))?;
            let p = e.path();
            if p.is_dir() {
                let follow = if e.file_type().is_ok_and(|t| t.is_symlink()) {
                    let target = real(&p)?;
                    !(target.starts_with(&root) || root.starts_with(&target)) && visited.insert(id(&p)?)
                } else {
                    visited.insert(id(&p)?)
                };
                if follow {
                    todo.push(p);
                } else {
                    skipped.push(format!("{} -> {}", p.display(), std::fs::read_link(&p).map(|t| t.display().to_string()).unwrap_or_default()));
                }
            } else if p.extension().is_some_and(|x| extensions.contains(&x.to_string_lossy().to_lowercase().as_str())) {
                out.push(p);
            }
        }
    }
    if !skipped.is_empty() {
        skipped.sort();
        crate::util::warn_once(&format!(
            "{} link(s) to a folder already walked were not followed (a loop, or a second way to the same images): {}",
            skipped.len(),
            skipped.join(", ")
        ));
    }
    out.sort();
    Ok(out)
}

/// `--dataset folder`: `DIR/train/<class>/*`, `DIR/test/<class>/*` and optionally `DIR/val/`;
/// classes are train's folders sorted by name.
pub fn open_folder(root: &Path, o: &FileOptions) -> Result<Dataset> {
    let train_dir = root.join("train");
    if !train_dir.is_dir() {
        bail!("{} has no train/ folder (an image folder dataset is DIR/train/<class>/*, DIR/test/<class>/*)", root.display());
    }
    let (classes, train) = scan_folder(&train_dir)?;
    let index: std::collections::HashMap<&str, i64> = classes.iter().enumerate().map(|(i, c)| (c.as_str(), i as i64)).collect();
    let set = |split: &str, files: Vec<(String, PathBuf)>| -> Result<Arc<dyn Source>> {
        let mut entries = Vec::with_capacity(files.len());
        for (c, p) in files {
            let label =
                *index.get(c.as_str()).with_context(|| format!("{}/{split}/{c} is a class that {}/train/ does not have", root.display(), root.display()))?;
            entries.push(Entry { path: p, label, line: 0 });
        }
        Ok(Arc::new(FileSet::new(&root.join(split), None, entries, classes.clone(), o)?))
    };
    let test_dir = root.join("test");
    if !test_dir.is_dir() {
        bail!("{} has no test/ folder (an image folder dataset is DIR/train/<class>/*, DIR/test/<class>/*)", root.display());
    }
    let test = scan_folder(&test_dir)?.1;
    let val = if root.join("val").is_dir() { Some(set("val", scan_folder(&root.join("val"))?.1)?) } else { None };
    Ok(Dataset { train: set("train", train)?, test: set("test", test)?, val })
}
