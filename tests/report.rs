//! `gcl report` on two real runs (cross-entropy and GCL on a tiny Fashion-MNIST-LT): the
//! files it promises, numbers that agree with the runs' own results, a page that needs
//! nothing from elsewhere, and (where Debian's chromium is installed, as scripts/test.sh
//! does) that a real browser renders every figure.
mod common;
use common::*;
use gcl::report::{ReportOptions, TsneSettings};
use gcl::runtime::RunConfig;
use gcl::train::{train, Stage};
use std::path::Path;
use std::process::Command;

/// Runs whose config.toml gives back their data: Fashion-MNIST with an index-file split.
fn two_runs(dir: &Path) {
    let mut gcl = tiny_config();
    gcl.stage1.epochs = 3;
    gcl.data.split = gcl::data::split::SplitRule::IndexFile { path: small_split(dir) };
    let mut ce = gcl.clone();
    ce.stage2.method = gcl::config::Stage2Method::None;
    ce.stage1.loss = gcl::loss::LossConfig::Ce(Default::default());
    for (name, cfg) in [("ce", &ce), ("gcl", &gcl)] {
        let data = cfg.data.prepare().unwrap();
        train(cfg, &data, &opts(&dir.join(name), false, &[Stage::One, Stage::Two])).unwrap();
    }
}

/// Chromium's headless flags that work on a closed network (see the env notes).
fn chromium(args: &[&str], profile: &Path) -> Option<std::process::Output> {
    let exe = Path::new("/usr/bin/chromium");
    if !exe.exists() {
        return None;
    }
    let flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"];
    Some(Command::new(exe).args(flags).arg(format!("--user-data-dir={}", profile.display())).args(args).output().unwrap())
}

#[test]
fn report_of_ce_and_gcl_runs() {
    let dir = tempfile::tempdir().unwrap();
    two_runs(dir.path());
    let out = dir.path().join("report");
    let opts = ReportOptions {
        runs: vec![dir.path().join("ce"), dir.path().join("gcl")],
        out: out.clone(),
        tsne: TsneSettings { max_points: 400, epochs: 400, ..Default::default() },
        run_cfg: RunConfig::default(),
        verbose: false,
    };
    let report = gcl::report::run(&opts).unwrap();

    // One stage for CE (no stage 2), two for GCL; the accuracy is the run's own.
    assert_eq!(report.runs.iter().map(|r| r.stages.len()).collect::<Vec<_>>(), [1, 2]);
    for r in &report.runs {
        let results: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(r.path.join("results.json")).unwrap()).unwrap();
        for s in &r.stages {
            let want = results[format!("stage{}", s.stage)]["top1"].as_f64().unwrap();
            assert!((s.top1 - want).abs() < 1e-9, "{} stage {}: report {} vs results.json {want}", r.name, s.stage, s.top1);
            assert!((0.0..=1.0).contains(&s.calibration.ece) && s.calibration.bins.len() == 15);
            assert_eq!(s.calibration.samples, 10_000);
            assert_eq!(s.tsne.points, 400, "sampled down to --max-points");
            assert_eq!(s.geometry.len(), 10);
            assert!(s.geometry.iter().all(|g| g.spread_deg > 0.0 && g.spread_deg < 90.0 && g.nearest_mean_deg > 0.0));
            assert_eq!(s.confusion.len(), 10);
        }
        // A frozen backbone: stage 2 has stage 1's features (spread), another classifier.
        if r.stages.len() == 2 {
            assert_eq!(r.stages[0].tail_spread_deg, r.stages[1].tail_spread_deg);
        }
        assert!(!r.curves.is_empty(), "metrics.jsonl of {}", r.name);
        assert!(r.curves.iter().all(|c| c["loss"].as_f64().is_some_and(f64::is_finite) && c["images_per_s"].as_f64().is_some()));
    }

    // The files, and a page that fetches nothing.
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["runs"].as_array().unwrap().len(), 2);
    let figures = ["tsne-ce-stage1", "tsne-gcl-stage2", "geometry", "per-class-accuracy", "shot-groups", "reliability-gcl-stage1", "confusion-ce-stage1", "curves"];
    for f in figures {
        for ext in ["svg", "png"] {
            assert!(out.join(format!("{f}.{ext}")).exists(), "{f}.{ext} missing");
        }
        assert!(html.contains(&format!("id=\"{f}\"")), "{f} not on the page");
    }
    let png = std::fs::read(out.join("geometry.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http") && !html.contains("<script"), "the page must open offline");
    let svgs = html.matches("<svg").count();

    // A real browser: every figure rendered, the page not blank.
    let profile = dir.path().join("chromium");
    let url = format!("file://{}", out.join("report.html").display());
    let Some(dom) = chromium(&["--dump-dom", &url], &profile) else {
        eprintln!("skipped: /usr/bin/chromium is not installed (scripts/test.sh installs it), so the page was not opened in a browser");
        return;
    };
    assert!(dom.status.success(), "{}", String::from_utf8_lossy(&dom.stderr));
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert_eq!(dom.matches("<svg").count(), svgs, "the browser's DOM holds every figure");
    let shot = dir.path().join("shot.png");
    let r = chromium(&["--window-size=1400,1600", &format!("--screenshot={}", shot.display()), &url], &profile).unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let img = gcl::data::image::decode(&std::fs::read(&shot).unwrap(), gcl::data::image::Color::Rgb).unwrap();
    let coloured = img.pixels.chunks(img.geometry.c).filter(|p| p.len() >= 3 && (p[0] as i32 - p[2] as i32).abs() > 40).count();
    assert!(coloured > 5000, "the screenshot shows the figures' colours ({coloured} coloured pixels)");
}
