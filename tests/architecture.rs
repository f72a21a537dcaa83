//! The module layering stated in src/lib.rs: every `crate::` path in a module names a module
//! of a lower layer (within a layer, only `loss` may use `model`, for the head a loss needs).
use std::path::Path;

const LAYERS: &[(&str, u32)] = &[
    ("cli", 8),
    ("sweep", 7),
    ("bench", 6),
    ("compare", 6),
    ("predict", 6),
    ("export", 6),
    ("report", 6),
    ("train", 5),
    ("inspect", 5),
    ("datacmd", 5),
    ("config", 4),
    ("eval", 3),
    ("loss", 2),
    ("model", 2),
    ("data", 2),
    ("runtime", 1),
    ("dist", 1),
    ("kernels", 0),
    ("util", 0),
];

fn layer(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|&(_, l)| l)
}

/// The top-level modules that `text` names as `crate::NAME`.
fn crate_refs(text: &str) -> Vec<String> {
    text.match_indices("crate::").map(|(i, m)| text[i + m.len()..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect()).collect()
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn modules_use_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut checked = 0;
    for f in all {
        let rel = f.strip_prefix(&src).unwrap();
        let module = rel.components().next().unwrap().as_os_str().to_str().unwrap().trim_end_matches(".rs").to_string();
        if module == "lib" || module == "main" {
            continue;
        }
        let mine = layer(&module).unwrap_or_else(|| panic!("src/{}: module `{module}` has no layer in tests/architecture.rs and src/lib.rs", rel.display()));
        for used in crate_refs(&std::fs::read_to_string(&f).unwrap()) {
            if used == module {
                continue;
            }
            let theirs = layer(&used).unwrap_or_else(|| panic!("src/{}: uses unknown module `{used}`", rel.display()));
            let allowed = theirs < mine || (module == "loss" && used == "model");
            assert!(allowed, "src/{} (layer {mine}) uses `crate::{used}` (layer {theirs}): an arrow back up", rel.display());
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} crate paths found");
}
