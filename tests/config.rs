//! Settings: presets, TOML files, `--set`, validation, and the README's commands.
mod common;
use gcl::config::{self, Config, Stage2Method};
use gcl::data::split::SplitRule;
use gcl::data::DatasetKind;
use gcl::loss::LossConfig;

#[test]
fn config_files_and_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(&f, "[stage1]\nepochs = 3\n[stage1.loss]\nname = \"gcl-a\"\nepsilon = 0.3\n").unwrap();
    let c = config::preset("cifar100-lt").unwrap().merge_file(&f).unwrap();
    assert_eq!(c.stage1.epochs, 3);
    match c.stage1.loss {
        LossConfig::GclA(p) => assert_eq!((p.epsilon, p.s), (0.3, 30.0)),
        other => panic!("{other:?}"),
    }
    // A parameter that does not belong to the method, or an unknown method, is an error.
    std::fs::write(&f, "[stage1.loss]\nname = \"ce\"\nepsilon = 0.3\n").unwrap();
    let err = format!("{:#}", Config::default().merge_file(&f).err().unwrap());
    assert!(err.contains("epsilon"), "{err}");
    std::fs::write(&f, "[stage1.loss]\nname = \"nope\"\n").unwrap();
    let err = format!("{:#}", Config::default().merge_file(&f).err().unwrap());
    assert!(err.contains("nope"), "{err}");
    assert!(Config::default().set("stage1.sampler=cben").is_ok());
    assert!(Config::default().set("stage1.sampler=nope").is_err());
    // GCL's stage 2 needs a cosine classifier: CE in stage 1 with it is refused.
    assert!(Config::default().set("stage1.loss={ name = \"ce\" }").is_err());
    assert!(Config::default().set("stage1.loss={ name = \"ce\" }").and_then(|c| c.set("stage2.method={ name = \"crt\" }")).is_err());
    let mut ce = Config::default();
    ce.stage1.loss = config::loss_by_name("ce").unwrap();
    ce.stage2.method = Stage2Method::Crt;
    assert!(ce.validate().is_ok());
    assert_eq!(c.data.dataset, DatasetKind::Cifar100);
    let c = c.set("stage1.lr=0.05").unwrap().set("data.split={ rule = \"random\", seed = 3 }").unwrap();
    assert_eq!(c.stage1.lr, 0.05);
    assert_eq!(c.data.split, SplitRule::Random { seed: 3 });
    std::fs::write(&f, "[stage1]\nepoch = 3\n").unwrap();
    let err = format!("{:#}", Config::default().merge_file(&f).err().unwrap());
    assert!(err.contains("epoch") && err.contains("c.toml"), "{err}");
    assert!(Config::default().set("stage1.nope=1").is_err());
    assert!(Config::default().set("run.device=tpu").is_err());
    assert!(Config::default().set("stage1.lr=-1").is_err());
    // What `gcl config` prints reads back as the same settings.
    let text = c.to_toml();
    std::fs::write(&f, &text).unwrap();
    assert_eq!(Config::default().merge_file(&f).unwrap(), c);
}

#[test]
fn every_optional_setting_can_be_set_without_a_list_of_them() {
    // Unset optional settings are absent from the TOML that `gcl config` prints, yet `--set`
    // knows them from the schema.
    for s in ["run.posthoc_tau=1.0", "run.eval_batch_size=64", "run.prefetch=2", "data.dir=/tmp", "stage1.loss.focal_gamma=2.0"] {
        let c = Config::default().set(s).unwrap_or_else(|e| panic!("{s}: {e:#}"));
        assert!(c.to_toml().contains(s.split('=').next().unwrap().rsplit('.').next().unwrap()), "{s}");
    }
    let c = Config::default().set("stage2.method.loss.m=0.2").unwrap();
    match c.stage2.method {
        Stage2Method::Retrain { loss: LossConfig::GclE(p) } => assert_eq!(p.m, 0.2),
        other => panic!("{other:?}"),
    }
    // A parameter of another method is still unknown.
    let err = format!("{:#}", Config::default().set("stage1.loss.epsilon=0.1").err().unwrap());
    assert!(err.contains("not a setting"), "{err}");
    assert!(Config::default().set("stage2.gcl.m=0.2").is_err());
}

/// The `gcl ...` lines of the README's sh blocks.
fn readme_commands() -> Vec<String> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let (mut out, mut in_sh) = (Vec::new(), false);
    for line in text.lines() {
        if line.starts_with("```") {
            in_sh = line.trim() == "```sh";
            continue;
        }
        // Without the comment and any shell redirection.
        let cmd = line.split(" # ").next().unwrap().split(" > ").next().unwrap().trim();
        if in_sh && cmd.starts_with("gcl ") {
            out.push(cmd.to_string());
        }
    }
    out
}

#[test]
fn the_readmes_commands_run() {
    let exe = env!("CARGO_BIN_EXE_gcl");
    let dir = tempfile::tempdir().unwrap();
    let my_toml = dir.path().join("my.toml");
    std::fs::write(&my_toml, "[stage1]\nlr = 0.05\n").unwrap();
    let commands = readme_commands();
    assert!(commands.len() >= 8, "{commands:?}");
    let mut checked = 0;
    for cmd in &commands {
        let mut words: Vec<String> = cmd.split_whitespace().skip(1).map(|w| match w {
            "my.toml" => my_toml.display().to_string(),
            "DIR" => dir.path().display().to_string(),
            w if w.starts_with("docs/") => concat!(env!("CARGO_MANIFEST_DIR"), "/").to_string() + w,
            w => w.to_string(),
        }).collect();
        // A sweep trains for long: its plan is checked by writing it (and its Slurm script)
        // into a fresh folder instead; `sweep collect` of a folder the reader made must say so.
        if words[0] == "sweep" && words.get(1).map(String::as_str) != Some("collect") {
            let at = words.iter().position(|w| w == "--out").expect("a README sweep names --out");
            words[at + 1] = dir.path().join(format!("sweep-{checked}")).display().to_string();
            if !words.iter().any(|w| w == "--emit") {
                words.extend(["--emit".to_string(), "slurm".to_string()]);
            }
        }
        // Training takes minutes: check that its settings resolve, through `gcl config` with the
        // same settings (the flags that only `train`, `compare` and `bench` take are dropped).
        let quick = words.iter().any(|w| w == "--list-default");
        if matches!(words[0].as_str(), "train" | "compare" | "bench") && !quick {
            let mut kept = vec!["config".to_string()];
            let mut it = words.iter().skip(1);
            while let Some(w) = it.next() {
                match w.as_str() {
                    "--out" | "--stages" | "--stage1-checkpoint" | "--methods" | "--only" | "--vs-reference" | "--rounds" | "--json" | "--images" | "--passes" | "--worker-counts" | "--nproc" | "--dist-timeout" | "--tunes" | "--isa" => {
                        it.next();
                    }
                    "--resume" | "--overwrite" | "--quiet" | "-q" | "--input" => {}
                    _ => kept.push(w.clone()),
                }
            }
            words = kept;
        }
        // `gcl data make` as written, but with few test, val and photo images (seconds, not
        // half a minute); the `gcl data check` lines then read what it wrote.
        if words.len() >= 2 && words[..2] == ["data", "make"] {
            words.extend(["--test-per-class", "5", "--val-per-class", "2", "--max-per-class", "6", "--photo-width", "64"].map(String::from));
        }
        if words.iter().any(|w| w == "--export") {
            let at = words.iter().position(|w| w == "--export").unwrap();
            words[at + 1] = dir.path().join("split.txt").display().to_string();
        }
        let out = std::process::Command::new(exe).args(&words).current_dir(dir.path()).output().unwrap();
        if words[0] == "sweep" && words[1] == "collect" {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.code() == Some(1) && err.contains("holds no sweep"), "README: `{cmd}`: {err}");
            checked += 1;
            continue;
        }
        if words[0] == "predict" || words[0] == "report" || words[0] == "export" {
            // Its run folders and weight files are the reader's: the arguments must parse, and
            // the error must be about the missing files (exit 1), not the command line (exit 2).
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.code() == Some(1) && (err.contains("not a run folder") || err.contains("no such file")), "README: `{cmd}`: {err}");
            checked += 1;
            continue;
        }
        assert!(out.status.success(), "README: `{cmd}` (run as gcl {}) failed:\n{}", words.join(" "), String::from_utf8_lossy(&out.stderr));
        checked += 1;
    }
    assert_eq!(checked, commands.len());
}

/// clap's own checks of every command and flag (unique names, valid defaults), which debug
/// builds otherwise run only when a command is used.
#[test]
fn the_command_line_is_well_formed() {
    use clap::CommandFactory;
    gcl::cli::Cli::command().debug_assert();
}
