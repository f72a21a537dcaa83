//! Hostile and careless input, full disks and kills (issue 23): each probe gives a clear
//! error naming the problem, and whatever a run folder held before stays whole.
mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const GCL: &str = env!("CARGO_BIN_EXE_gcl");

fn err_of<T>(r: anyhow::Result<T>) -> String {
    format!("{:#}", r.err().expect("an error"))
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// `gcl ARGS` under the shell limits `limits` (`ulimit` arguments, e.g. "-f 64").
fn gcl_limited(limits: &str, args: &[&str]) -> Output {
    let script = format!("ulimit {limits} && exec \"$0\" \"$@\"");
    Command::new("bash").arg("-c").arg(&script).arg(GCL).args(args).output().unwrap()
}

fn gcl(args: &[&str]) -> Output {
    Command::new(GCL).args(args).output().unwrap()
}

fn sha(p: &Path) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))))
}

/// Files under `dir` whose name ends in `.tmp` or holds `.partial-` / `.old-`.
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp") || n.contains(".partial-") || n.contains(".old-"))
        .collect()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// An image folder (DIR/train/<class>/, DIR/test/<class>/) of Fashion-MNIST PNGs: `train`
/// images of each of three classes, 4 test images each.
fn folder(dir: &Path, train: usize) -> PathBuf {
    let samples = fashion_samples(train + 4);
    for (split, range) in [("train", 0..train), ("test", train..train + 4)] {
        for c in 0..3 {
            let d = dir.join(split).join(format!("class_{c}"));
            std::fs::create_dir_all(&d).unwrap();
            for (k, (_, img)) in samples.iter().filter(|(l, _)| *l == c).skip(range.start).take(range.len()).enumerate() {
                std::fs::write(d.join(format!("{k:03}.png")), gcl::data::image::encode_png(img).unwrap()).unwrap();
            }
        }
    }
    dir.to_path_buf()
}

#[test]
fn a_decompression_bomb_is_refused_from_its_header_before_any_pixel_is_allocated() {
    use gcl::data::image::{decode, decode_within, Color, MAX_PIXELS};
    // 429 bytes claiming 60000 x 60000 (10.8 GB as RGB); 600 bytes claiming 30000 x 30000.
    let (png, jpg) = (png_bomb(60_000, 60_000), jpeg_bomb(30_000, 30_000));
    for (what, bytes) in [("PNG", &png), ("JPEG", &jpg)] {
        let e = err_of(decode(bytes, Color::Rgb));
        assert!(e.contains("more than data.max_pixels = 89478485"), "{what}: {e}");
    }
    // The limit is a setting: a 28 x 28 image is refused under 700 pixels, read at 784.
    let small = gcl::data::image::encode_png(&fashion_samples(1)[0].1).unwrap();
    assert!(err_of(decode_within(&small, Color::Grey, 700)).contains("28 x 28 pixels (784)"));
    assert!(decode_within(&small, Color::Grey, 784).is_ok() && MAX_PIXELS == 89_478_485);

    // In a training folder, under an 8 GB address-space limit: `data check` names both files
    // (no abort), training skips them as unreadable when told to, predict names them.
    let dir = tempfile::tempdir().unwrap();
    let data = folder(&dir.path().join("data"), 12);
    std::fs::write(data.join("train/class_0/bomb.png"), &png).unwrap();
    std::fs::write(data.join("train/class_1/bomb.jpg"), &jpg).unwrap();
    let limit = "-v 8000000";
    let o = gcl_limited(limit, &["data", "check", "--dataset", "folder", "--data", s(&data)]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    for f in ["class_0/bomb.png: 60000 x 60000 pixels (3600000000) is more than data.max_pixels", "class_1/bomb.jpg: 30000 x 30000 pixels"] {
        assert!(out.contains(f), "{f} not in:\n{out}");
    }
    let run = dir.path().join("run");
    let o = gcl_limited(
        limit,
        &["train", "--quiet", "--dataset", "folder", "--data", s(&data), "--set", "data.unreadable=\"skip\"", "--set", "model.depth=8", "--epochs", "1", "--cls-epochs", "0", "--out", s(&run)],
    );
    assert!(o.status.success(), "{}", text(&o));
    let res: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("results.json")).unwrap()).unwrap();
    let bad = res["unreadable"].to_string();
    assert!(bad.contains("bomb.png") && bad.contains("bomb.jpg") && bad.contains("data.max_pixels"), "{bad}");
    let o = gcl_limited(limit, &["predict", "--run", s(&run), s(&data.join("train/class_0/bomb.png"))]);
    assert!(!o.status.success() && text(&o).contains("bomb.png: 60000 x 60000 pixels"), "{}", text(&o));
    // A genuine large image passes with a larger limit; a limit of 0 is refused as a setting.
    let o = gcl(&["predict", "--run", s(&run), "--max-pixels", "100", s(&data.join("train/class_0/000.png"))]);
    assert!(!o.status.success() && text(&o).contains("28 x 28 pixels (784) is more than data.max_pixels = 100"), "{}", text(&o));
    let o = gcl(&["config", "--set", "data.max_pixels=0"]);
    assert!(!o.status.success() && text(&o).contains("data.max_pixels = 0"), "{}", text(&o));
}

#[test]
fn a_link_loop_in_an_image_folder_is_walked_once_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = folder(&dir.path().join("data"), 5);
    std::os::unix::fs::symlink("..", data.join("train/class_0/loop")).unwrap();
    // A link to a file, and a link to a folder outside the data, are followed as usual.
    std::os::unix::fs::symlink(data.join("test/class_2/000.png"), data.join("train/class_2/linked.png")).unwrap();
    let extra = dir.path().join("extra");
    std::fs::create_dir_all(&extra).unwrap();
    std::fs::copy(data.join("test/class_1/000.png"), extra.join("x.png")).unwrap();
    std::os::unix::fs::symlink(&extra, data.join("train/class_1/more")).unwrap();
    let (classes, files) = gcl::data::files::scan_folder(&data.join("train")).unwrap();
    assert_eq!(classes, ["class_0", "class_1", "class_2"]);
    let per_class: Vec<usize> = (0..3).map(|c| files.iter().filter(|(k, _)| *k == classes[c]).count()).collect();
    assert_eq!(per_class, [5, 6, 6], "{files:?}");
    let o = gcl(&["data", "check", "--dataset", "folder", "--data", s(&data)]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("1 link(s) to a folder already walked were not followed") && out.contains("class_0/loop -> .."), "{out}");
}

#[test]
fn a_torn_last_line_of_metrics_is_skipped_and_a_broken_middle_line_is_named() {
    use gcl::report::read_curves;
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("metrics.jsonl");
    let good = "{\"stage\":1,\"epoch\":1,\"loss\":2.0}\n{\"stage\":1,\"epoch\":2,\"loss\":1.5}\n";
    std::fs::write(&m, format!("{good}{{\"stage\":1,\"epo")).unwrap();
    assert_eq!(read_curves(dir.path()).unwrap().len(), 2, "the torn line is left out");
    std::fs::write(&m, format!("{{\"stage\":1,\"epoch\":1}}\n{{\"stage\":1,\"epo\n{good}")).unwrap();
    let e = format!("{:#}", read_curves(dir.path()).unwrap_err());
    assert!(e.contains("metrics.jsonl:2: not a JSON object"), "{e}");
    // `gcl report` on a run whose metrics.jsonl is broken in the middle stops before it
    // computes anything (no features, no t-SNE: it takes a fraction of a second here).
    let run = dir.path().join("run");
    let split = small_split(dir.path());
    let o = gcl(&["train", "--quiet", "--split", s(&split), "--set", "model.depth=8", "--epochs", "2", "--cls-epochs", "0", "--out", s(&run)]);
    assert!(o.status.success(), "{}", text(&o));
    let lines = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    std::fs::write(run.join("metrics.jsonl"), format!("{{\"stage\":1,\"epo\n{lines}")).unwrap();
    let t = std::time::Instant::now();
    let o = gcl(&["report", s(&run), "--out", s(&dir.path().join("report"))]);
    assert!(!o.status.success() && text(&o).contains("metrics.jsonl:1: not a JSON object"), "{}", text(&o));
    assert!(!dir.path().join("report/report.html").exists() && t.elapsed().as_secs() < 30);
    // Torn at the end instead: the report is made, from the whole lines.
    std::fs::write(run.join("metrics.jsonl"), format!("{lines}{{\"stage\":1,\"epo")).unwrap();
    let o = gcl(&["report", s(&run), "--out", s(&dir.path().join("report")), "--max-points", "200", "--tsne-epochs", "100"]);
    let out = text(&o);
    assert!(o.status.success() && out.contains("the last line is cut short"), "{out}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("report/report.json")).unwrap()).unwrap();
    assert_eq!(report["runs"][0]["curves"].as_array().unwrap().len(), 2);
}

#[test]
fn more_workers_than_cores_are_refused_unless_the_user_insists() {
    use gcl::dist::launch::check_size;
    let cores = gcl::runtime::cores();
    let e = format!("{:#}", check_size(100, false, false, 700 << 20).unwrap_err());
    assert!(e.contains(&format!("--nproc 100: more CPU workers than this machine's {cores} cores")) && e.contains("--oversubscribe"), "{e}");
    assert!(check_size(cores, false, false, 1 << 20).is_ok());
    assert!(check_size(100, false, true, 1 << 20).is_ok(), "--oversubscribe starts them");
    // From the command line: refused before anything is started or written.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = gcl(&["train", "--nproc", "100", "--epochs", "1", "--out", s(&out)]);
    assert!(!o.status.success() && text(&o).contains("more CPU workers than"), "{}", text(&o));
    assert!(!out.join("config.toml").exists());
}

#[test]
fn a_state_dict_that_would_run_code_is_refused_by_name() {
    use std::io::Write;
    // pickle protocol 2: posix.system("true"), as a `__reduce__` that runs a command writes it.
    let pickle = b"\x80\x02cposix\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("evil.pth");
    let mut z = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    z.start_file("archive/data.pkl", zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored)).unwrap();
    z.write_all(pickle).unwrap();
    z.finish().unwrap();
    let e = format!("{:#}", gcl::model::pth::load(&path).unwrap_err());
    assert!(e.contains("the pickle calls posix.system; only tensors and plain containers are read"), "{e}");
}

#[test]
fn a_full_disk_leaves_the_previous_files_whole_and_no_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let split = small_split(dir.path());
    let train = |out: &Path, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["train", "--quiet", "--split", s(&split), "--set", "model.depth=8", "--out", s(out)].map(String::from).to_vec();
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    let run_limited = |limit: &str, args: &Vec<String>| gcl_limited(limit, &args.iter().map(String::as_str).collect::<Vec<_>>());
    // 64 kB per file: the settings and the split fit, a checkpoint (600 kB) does not.
    let limit = "-f 64";
    let fresh = dir.path().join("fresh");
    let o = run_limited(limit, &train(&fresh, &["--epochs", "1", "--cls-epochs", "0"]));
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("cannot write") && out.contains("stage1.safetensors") && out.contains("File too large"), "{out}");
    assert!(!fresh.join("stage1.safetensors").exists() && leftovers(&fresh).is_empty(), "{:?}", leftovers(&fresh));

    // Stage 1 done; stage 2 cannot write its checkpoint: stage 1's files stay as they were,
    // results.json does not claim a stage 2, no stage2.safetensors, nothing half-written.
    let run = dir.path().join("run");
    let o = Command::new(GCL).args(train(&run, &["--epochs", "1", "--cls-epochs", "1", "--stages", "one"])).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let before: Vec<String> = ["stage1.safetensors", "results.json", "config.toml"].iter().map(|f| sha(&run.join(f))).collect();
    let o = run_limited(limit, &train(&run, &["--epochs", "1", "--cls-epochs", "1", "--stages", "two"]));
    let out = text(&o);
    assert!(!o.status.success() && out.contains("stage2.safetensors") && out.contains("File too large"), "{out}");
    let after: Vec<String> = ["stage1.safetensors", "results.json", "config.toml"].iter().map(|f| sha(&run.join(f))).collect();
    assert_eq!(before, after);
    assert!(!run.join("stage2.safetensors").exists() && leftovers(&run).is_empty(), "{:?}", leftovers(&run));

    // A report, then a report that cannot be written: the first stays whole.
    let report = dir.path().join("report");
    let rargs = ["report", s(&run), "--out", s(&report), "--max-points", "200", "--tsne-epochs", "100", "--quiet"];
    let o = gcl(&rargs);
    assert!(o.status.success(), "{}", text(&o));
    let before: Vec<String> = ["report.html", "report.json"].iter().map(|f| sha(&report.join(f))).collect();
    let o = gcl_limited("-f 4", &rargs);
    let out = text(&o);
    assert!(!o.status.success() && out.contains("cannot write") && out.contains("File too large"), "{out}");
    let after: Vec<String> = ["report.html", "report.json"].iter().map(|f| sha(&report.join(f))).collect();
    assert_eq!(before, after);
    assert!(leftovers(&report).is_empty(), "{:?}", leftovers(&report));

    // gcl data make: no folder, or the old folder, and nothing partial beside it.
    let made = dir.path().join("made");
    let margs = ["data", "make", "--from", "fashion-mnist", "--ratio", "10", "--test-per-class", "5", "--out", s(&made)];
    let o = gcl_limited("-f 1", &margs);
    assert!(!o.status.success() && text(&o).contains("File too large"), "{}", text(&o));
    assert!(!made.exists() && leftovers(dir.path()).is_empty(), "{:?}", leftovers(dir.path()));
}

/// Part of the test below, run by it in a child process (the limit applies to the whole
/// process): with a file-size limit of 1000 bytes, an atomic write of 2000 bytes fails,
/// naming the file, and the old file stays.
#[test]
#[ignore = "a child process of results_and_best_val_files_too_large_for_the_disk_keep_the_old_version"]
fn fsize_child() {
    let dir = std::env::var_os("GCL_FSIZE_CHILD").expect("GCL_FSIZE_CHILD: the folder to write in");
    #[repr(C)]
    struct Rlimit {
        cur: u64,
        max: u64,
    }
    extern "C" {
        fn setrlimit(resource: i32, rlim: *const Rlimit) -> i32;
        fn signal(signum: i32, handler: usize) -> usize;
    }
    // SAFETY: libc calls with valid arguments (RLIMIT_FSIZE = 1, SIGXFSZ = 25, SIG_IGN = 1).
    unsafe {
        signal(25, 1);
        assert_eq!(setrlimit(1, &Rlimit { cur: 1000, max: 1000 }), 0);
    }
    let path = Path::new(&dir).join("results.json");
    let e = format!("{:#}", gcl::util::write_atomic(&path, &[b'x'; 2000]).unwrap_err());
    assert!(e.contains("cannot write") && e.contains("results.json") && e.contains("File too large"), "{e}");
}

#[test]
fn results_and_best_val_files_too_large_for_the_disk_keep_the_old_version() {
    // Every run file (results.json, checkpoints, best-val checkpoints, report files, split,
    // settings) is written by util::write_atomic or with_atomic; here it meets the limit.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("results.json");
    std::fs::write(&path, "{\"old\": true}").unwrap();
    let exe = std::env::current_exe().unwrap();
    let o = Command::new(exe).args(["--exact", "fsize_child", "--ignored", "--nocapture"]).env("GCL_FSIZE_CHILD", dir.path()).output().unwrap();
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("1 passed"), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"old\": true}");
    assert!(leftovers(dir.path()).is_empty());
    // Every writer of a run file goes through them: none writes a run file in place.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for f in ["train/checkpoint.rs", "train/select.rs", "train/mod.rs", "train/probe.rs", "report/mod.rs", "eval/plots.rs", "sweep/collect.rs"] {
        let code = std::fs::read_to_string(src.join(f)).unwrap();
        assert!(!code.contains("std::fs::write(") && !code.contains("File::create("), "{f} writes a file in place");
    }
}

/// Every run file in `dir` reads back: one consistent state.
fn consistent(dir: &Path) -> Result<(), String> {
    use gcl::train::checkpoint::Checkpoint;
    let err = |f: &str, e: String| Err(format!("{f}: {e}"));
    if dir.join("config.toml").exists() {
        if let Err(e) = gcl::config::Config::default().merge_file(&dir.join("config.toml")) {
            return err("config.toml", format!("{e:#}"));
        }
    }
    if dir.join("split.txt").exists() {
        if let Err(e) = gcl::data::split::read_index_file(&dir.join("split.txt"), usize::MAX) {
            return err("split.txt", format!("{e:#}"));
        }
    }
    if dir.join("results.json").exists() {
        let t = std::fs::read_to_string(dir.join("results.json")).unwrap();
        if let Err(e) = serde_json::from_str::<gcl::eval::report::Results>(&t) {
            return err("results.json", e.to_string());
        }
    }
    for f in ["stage1.safetensors", "stage2.safetensors", "stage1.best-val.safetensors", "stage2.best-val.safetensors"] {
        let p = dir.join(f);
        if p.exists() {
            if let Err(e) = Checkpoint::load(&p) {
                return err(f, format!("{e:#}"));
            }
        }
    }
    Ok(())
}

#[test]
fn a_run_killed_at_random_moments_resumes_to_the_same_end() {
    use rand::{Rng, SeedableRng};
    let dir = tempfile::tempdir().unwrap();
    let split = small_split(dir.path());
    let out = dir.path().join("run");
    let args = |resume: bool| {
        let mut a = vec!["train", "--quiet", "--split", s(&split), "--set", "model.depth=8", "--set", "data.val_fraction=0.1", "--epochs", "4", "--cls-epochs", "2", "--out", s(&out)];
        a.push(if resume { "--resume" } else { "--overwrite" });
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    // How long a whole run takes here, to spread the kills over it.
    let t = std::time::Instant::now();
    let o = Command::new(GCL).args(args(false)).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let whole = t.elapsed().as_secs_f64();
    let want: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    std::fs::remove_dir_all(&out).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(23);
    let (mut kills, mut trials) = (0, 0);
    // Kills until 6 have landed (a run that ends first is started afresh, so that there is
    // always work to kill), at most 30 runs.
    while kills < 6 && trials < 30 {
        trials += 1;
        let finished = std::fs::read_to_string(out.join("results.json")).is_ok_and(|t| t.contains("\"stage2\": {"));
        // Resume when there is something to resume, else start afresh.
        let resume = out.join("stage1.safetensors").exists() && !finished;
        let mut child = Command::new(GCL).args(args(resume)).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_secs_f64(rng.gen_range(0.05..0.5) * whole));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success() || o.status.code().is_none(), "trial {trials}: {}", String::from_utf8_lossy(&o.stderr));
        consistent(&out).unwrap_or_else(|e| panic!("after the kill of trial {trials}: {e}"));
    }
    assert!(kills >= 6, "only {kills} of {trials} runs were killed before they ended");
    // Whatever the kills left, --resume finishes the run, with the results of a run never
    // killed, every epoch's line once, and no temporary file.
    let o = Command::new(GCL).args(args(out.join("stage1.safetensors").exists())).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let got: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    for k in ["stage1", "stage2", "stage1_best_val", "train_counts"] {
        assert_eq!(got[k], want[k], "{k}");
    }
    let epochs: Vec<(u64, u64)> =
        gcl::report::read_curves(&out).unwrap().iter().map(|l| (l["stage"].as_u64().unwrap(), l["epoch"].as_u64().unwrap())).collect();
    assert_eq!(epochs, [(1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2)]);
    assert!(leftovers(&out).is_empty(), "{:?}", leftovers(&out));
}

#[test]
fn images_that_change_under_a_run_are_named_and_the_checkpoint_kept() {
    let dir = tempfile::tempdir().unwrap();
    let data = folder(&dir.path().join("data"), 40);
    let run = dir.path().join("run");
    let args = |epochs: &str| -> Vec<String> {
        ["train", "--quiet", "--dataset", "folder", "--data", s(&data), "--set", "model.depth=8", "--epochs", epochs, "--cls-epochs", "0", "--out", s(&run)]
            .map(String::from)
            .to_vec()
    };
    // Deleted after the first epoch: the next epoch stops, naming it; epoch 1's checkpoint stays.
    let victim = data.join("train/class_1/003.png");
    let child = Command::new(GCL).args(args("400")).stderr(Stdio::piped()).spawn().unwrap();
    let t = std::time::Instant::now();
    while !run.join("stage1.safetensors").exists() && t.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let kept = std::fs::read(victim.clone()).unwrap();
    std::fs::remove_file(&victim).unwrap();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success() && err.contains("cannot read image") && err.contains("class_1/003.png"), "{err}");
    let ck = gcl::train::checkpoint::Checkpoint::load(&run.join("stage1.safetensors")).unwrap();
    assert!(ck.meta(&run.join("stage1.safetensors")).unwrap().epochs_done >= 1);
    // Truncated between runs: the data is no longer what the checkpoint trained on.
    std::fs::write(&victim, &kept[..kept.len() / 2]).unwrap();
    let o = Command::new(GCL).args([args("400"), vec!["--resume".into()]].concat()).output().unwrap();
    let out = text(&o);
    assert!(!o.status.success() && out.contains("the data changed since"), "{out}");
    std::fs::write(&victim, &kept).unwrap();
    // Truncated while the resumed run trains (once it has written an epoch's line): named.
    let lines = || std::fs::read_to_string(run.join("metrics.jsonl")).map_or(0, |t| t.lines().count());
    let before = lines();
    let o = Command::new(GCL).args([args("400"), vec!["--resume".into()]].concat()).stderr(Stdio::piped()).spawn().unwrap();
    let t = std::time::Instant::now();
    while lines() <= before && t.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::fs::write(&victim, &kept[..kept.len() / 2]).unwrap();
    let o = o.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success() && err.contains("class_1/003.png") && err.contains("PNG"), "{err}");
}

#[test]
fn a_list_file_edited_between_resumes_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let samples = fashion_samples(12);
    write_split(&data, "train", &samples, false);
    write_split(&data, "test", &samples[..30], false);
    let run = dir.path().join("run");
    let args = |resume: bool| {
        let mut a: Vec<String> = ["train", "--quiet", "--dataset", "list", "--data", s(&data), "--train-list", "train.txt", "--test-list", "test.txt"]
            .map(String::from)
            .to_vec();
        a.extend(["--set", "model.depth=8", "--epochs", "1", "--cls-epochs", "0", "--stages", "one", "--out", s(&run)].map(String::from));
        if resume {
            a.push("--resume".into());
        }
        a
    };
    let o = Command::new(GCL).args(args(false)).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    // Resuming on the same lists is fine.
    let o = Command::new(GCL).args(args(true)).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    // The same images and labels by index, two lines of one class swapped: other data.
    let list = data.join("train.txt");
    let mut lines: Vec<String> = std::fs::read_to_string(&list).unwrap().lines().map(String::from).collect();
    let (a, b) = (0, lines.iter().rposition(|l| l.ends_with(" 0") && *l != lines[0]).unwrap());
    lines.swap(a, b);
    std::fs::write(&list, lines.join("\n") + "\n").unwrap();
    let o = Command::new(GCL).args(args(true)).output().unwrap();
    let out = text(&o);
    assert!(!o.status.success() && out.contains("--resume: the data changed since"), "{out}");
}
