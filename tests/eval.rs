//! The `eval` binary on the committed tiny model: every readout (SAR included when samples
//! are asked for) lands in report.json with per-task metrics; a second run with the same
//! settings reuses the generations and writes a byte-identical report.

use std::path::Path;
use std::process::Command;

fn eval(recipe: &Path, out: &Path) -> std::process::Output {
    // the crate folder as cargo reports it when running the test (not when it was built: a test
    // binary reused from another checkout's build must still read this checkout's files)
    let crate_dir: String =
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    let root = Path::new(&crate_dir).join("../..");
    Command::new(env!("CARGO_BIN_EXE_eval"))
        .current_dir(&root)
        .arg(recipe)
        .arg("--out")
        .arg(out)
        .args(["--constant", "0.3"])
        .output()
        .unwrap()
}

#[test]
fn eval_reports_every_readout_and_reuses_generations() {
    let d = tempfile::tempdir().unwrap();
    let recipe = d.path().join("eval.toml");
    std::fs::write(
        &recipe,
        r#"[model]
path = "checkpoints/tiny-arith"
[labels]
similarity = "rouge-l"
[eval]
max_new_tokens = 16
batch_size = 16
bootstrap = 50
samples = 3
[[eval.sets]]
subtasks = ["+:1:1", "-:1:1", "*:1:1"]
per_subtask = 6
style = "plain"
"#,
    )
    .unwrap();
    let out = d.path().join("eval");
    let first = eval(&recipe, &out);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let json = std::fs::read_to_string(out.join("report.json")).unwrap();
    let rep: serde_json::Value = serde_json::from_str(&json).unwrap();
    let res = &rep["results"][0];
    assert_eq!(res["n"], 18);
    for k in [
        "answer_logit",
        "answer_logit_norm",
        "p_true",
        "sar_rank",
        "constant",
    ] {
        assert_eq!(res["readouts"][k]["n"], 18, "readout {k}: {res}");
    }
    let tasks = res["by_task"].as_object().unwrap();
    assert_eq!(
        tasks.len(),
        3,
        "addition, subtraction, multiplication: {tasks:?}"
    );
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("sar_rank") && md.contains("Per task"), "{md}");
    let gens = std::fs::read_dir(&out)
        .unwrap()
        .filter(|e| {
            let n = e.as_ref().unwrap().file_name();
            n.to_string_lossy().ends_with(".settings.json")
        })
        .count();
    assert_eq!(gens, 1, "one settings file per set and model");

    let second = eval(&recipe, &out);
    assert!(second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("reusing"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(
        std::fs::read_to_string(out.join("report.json")).unwrap() == json,
        "same inputs must give a byte-identical report.json (floats must round-trip)"
    );
}
