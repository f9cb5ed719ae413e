//! Careless and hostile inputs, one test per case of the issue that found them (issue 22): an
//! error or a result, never an abort, a silent NaN, runaway memory or two writers on a folder.

use candor_model::checkpoint::{read_safetensors_dir, write_safetensors, SaveDtype};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    candor_test_support::repo_root()
}

fn tiny_arith() -> PathBuf {
    root().join("checkpoints/tiny-arith")
}

/// A binary's command, without the caller's backtrace settings (error lengths are checked).
fn cmd(bin: &str) -> Command {
    let mut c = Command::new(bin);
    c.env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE");
    c
}

fn run(bin: &str, args: &[&Path]) -> Output {
    cmd(bin).args(args).output().expect("running the binary")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A recipe answering with checkpoints/tiny-arith (no training unless `extra` asks for it).
fn recipe(dir: &Path, data: &str, extra: &str) -> PathBuf {
    let text = format!(
        r#"run_dir = "{run}"
[model]
path = "{model}"
[data]
{data}
style = "plain"
[labels]
teacher = "empirical-subtask"
max_new_tokens = 8
batch_size = 8
[train]
max_steps = 2
micro_batch = 4
global_batch = 4
[eval]
enabled = false
{extra}
"#,
        run = dir.join("run").display(),
        model = tiny_arith().display(),
    );
    let p = dir.join("recipe.toml");
    std::fs::write(&p, text).unwrap();
    p
}

const SMALL_MATH: &str =
    "source = \"calibratedmath\"\nsubtasks = [\"+:1:1\", \"-:2:2\", \"*:1:1\"]\nper_subtask = 8";

/// A copy of tiny-arith whose config.json and tensors `edit` may change.
fn model_copy(dir: &Path, edit_config: impl Fn(&mut serde_json::Value)) -> PathBuf {
    let m = dir.join("model");
    std::fs::create_dir_all(&m).unwrap();
    for f in std::fs::read_dir(tiny_arith()).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, m.join(f.file_name().unwrap())).unwrap();
    }
    let cfg = m.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    edit_config(&mut v);
    std::fs::write(&cfg, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    m
}

fn generate(model: &Path) -> Output {
    cmd(env!("CARGO_BIN_EXE_generate"))
        .args(["--model".as_ref(), model.as_os_str()])
        .args([
            "--style",
            "plain",
            "--max-new-tokens",
            "4",
            "--prompt",
            "What is 2 + 3?",
        ])
        .output()
        .unwrap()
}

// --- a JSONL question of 50 MB; a question longer than the context -----------------------------

#[test]
fn a_50_mb_question_and_one_longer_than_the_context_are_skipped_and_counted() {
    let d = tempfile::tempdir().unwrap();
    let q = d.path().join("questions.jsonl");
    let mut text = String::new();
    text += &format!(
        "{{\"id\": \"huge\", \"question\": \"{}\", \"answers\": [\"1\"]}}\n",
        "x".repeat(50 << 20)
    );
    text += &format!(
        "{{\"id\": \"long\", \"question\": \"{}\", \"answers\": [\"1\"]}}\n",
        "y".repeat(5_000)
    );
    for i in 0..3 {
        text += &format!(
            "{{\"id\": \"ok{i}\", \"question\": \"What is {i} + 1?\", \"answers\": [\"{}\"]}}\n",
            i + 1
        );
    }
    std::fs::write(&q, text).unwrap();
    let r = recipe(
        d.path(),
        &format!("source = \"jsonl\"\npath = \"{}\"", q.display()),
        "",
    );
    let out = run(env!("CARGO_BIN_EXE_dataset"), &[&r]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("over the 1048576-byte limit"), "{err}");
    assert!(
        err.contains("skipped 1 question(s)") && err.contains("long (5006 tokens)"),
        "{err}"
    );
    let answers = std::fs::read_to_string(d.path().join("run/data/answers.jsonl")).unwrap();
    assert_eq!(
        answers.lines().count(),
        3,
        "the three short questions answered"
    );
}

// --- `[data] per_subtask = 10000000` -------------------------------------------------------------

#[test]
fn an_absurd_question_count_is_refused_before_any_work() {
    let d = tempfile::tempdir().unwrap();
    let r = recipe(
        d.path(),
        "source = \"calibratedmath\"\ngroups = [\"Add-subtract\"]\nper_subtask = 10000000",
        "",
    );
    let t0 = Instant::now();
    let out = run(env!("CARGO_BIN_EXE_train"), &[&r]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("data: ") && err.contains("over the limit of 1000000 per set"),
        "{err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    assert!(!d.path().join("run").exists(), "nothing written");
}

// --- `num_hidden_layers = 1000000` / 10^7 --------------------------------------------------------

#[test]
fn a_config_asking_for_more_layers_than_the_weights_hold_is_a_short_error_at_once() {
    // 60,000 passes the config's own bound (65,536) and is refused against the weights'
    // header; 10^6 and 10^7 are refused by the bound itself
    for layers in [60_000u64, 1_000_000, 10_000_000] {
        let d = tempfile::tempdir().unwrap();
        let m = model_copy(d.path(), |v| v["num_hidden_layers"] = layers.into());
        let t0 = Instant::now();
        let out = generate(&m);
        let err = stderr(&out);
        assert!(!out.status.success());
        assert!(
            err.contains(&format!("num_hidden_layers = {layers}")),
            "{err}"
        );
        if layers == 60_000 {
            assert!(err.contains("the weights hold 4 layers"), "{err}");
        } else {
            assert!(
                err.contains("out of range (allowed: at most 65536)"),
                "{err}"
            );
        }
        assert!(err.len() < 2_000, "{} bytes of error", err.len());
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    }
}

#[test]
fn a_checkpoint_problem_list_is_bounded() {
    // every tensor's shape wrong (hidden size doubled): hundreds of problems, ten shown
    let d = tempfile::tempdir().unwrap();
    let m = model_copy(d.path(), |v| {
        v["hidden_size"] = 384.into();
        v["head_dim"] = 64.into();
    });
    let out = generate(&m);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("problems)") && err.contains("more"), "{err}");
    assert!(err.lines().count() < 20, "{err}");
}

// --- NaN and Inf weights; rms_norm_eps = -1 ------------------------------------------------------

/// A change made to one tensor's values.
type Poison = fn(&mut Vec<f32>);

fn poison(m: &Path, tensor: &str, how: Poison) {
    let mut t = read_safetensors_dir(m).unwrap();
    how(&mut t.get_mut(tensor).unwrap().data);
    write_safetensors(&m.join("model.safetensors"), &t, SaveDtype::F32).unwrap();
}

#[test]
fn non_finite_weights_are_refused_by_tensor_name_unless_allowed() {
    let cases: [(&str, Poison); 3] = [
        ("model.layers.0.self_attn.q_proj.weight", |d| {
            d[7] = f32::NAN
        }),
        ("model.layers.2.input_layernorm.weight", |d| {
            d.fill(f32::NAN)
        }),
        ("model.embed_tokens.weight", |d| d[100] = f32::INFINITY),
    ];
    for (tensor, how) in cases {
        let d = tempfile::tempdir().unwrap();
        let m = model_copy(d.path(), |_| {});
        poison(&m, tensor, how);
        let out = generate(&m);
        let err = stderr(&out);
        assert!(!out.status.success(), "{tensor}: {err}");
        assert!(
            err.contains(&format!("tensor `{tensor}`"))
                && err.contains("CANDOR_ALLOW_NON_FINITE=1"),
            "{err}"
        );
        // `convert` refuses it too (it loads the same way)
        let conv = cmd(env!("CARGO_BIN_EXE_convert"))
            .args(["--model".as_ref(), m.as_os_str()])
            .args(["--out".as_ref(), d.path().join("out").as_os_str()])
            .output()
            .unwrap();
        assert!(!conv.status.success(), "convert exported a NaN model");
        // the explicit opt-out
        let ok = cmd(env!("CARGO_BIN_EXE_generate"))
            .env("CANDOR_ALLOW_NON_FINITE", "1")
            .args(["--model".as_ref(), m.as_os_str()])
            .args([
                "--style",
                "plain",
                "--max-new-tokens",
                "2",
                "--prompt",
                "What is 2 + 3?",
            ])
            .output()
            .unwrap();
        assert!(ok.status.success(), "{}", stderr(&ok));
    }
}

#[test]
fn a_negative_norm_epsilon_is_a_config_error() {
    let d = tempfile::tempdir().unwrap();
    let m = model_copy(d.path(), |v| v["rms_norm_eps"] = (-1.0).into());
    let out = generate(&m);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("rms_norm_eps = -1") && err.contains("config.json"),
        "{err}"
    );
}

// --- `[train] epochs = 9223372036854775807` ------------------------------------------------------

#[test]
fn an_epoch_count_that_would_overflow_the_steps_is_refused_by_name() {
    let d = tempfile::tempdir().unwrap();
    let r = recipe(d.path(), SMALL_MATH, "");
    let text = std::fs::read_to_string(&r)
        .unwrap()
        .replace("max_steps = 2", "epochs = 9223372036854775807");
    std::fs::write(&r, text).unwrap();
    let out = run(env!("CARGO_BIN_EXE_train"), &[&r]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("train.epochs = 9223372036854775807 is out of range (allowed: 1 to 10000)"),
        "{err}"
    );
}

#[test]
fn a_lora_layer_past_the_last_is_refused_naming_the_layer_count_before_any_work() {
    let d = tempfile::tempdir().unwrap();
    let r = recipe(d.path(), SMALL_MATH, "[lora]\nlayers = [0, 99]\n");
    let out = run(env!("CARGO_BIN_EXE_train"), &[&r]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("lora.layers: 99 is out of range (the model has"),
        "{err}"
    );
    assert!(
        !d.path().join("run/data/answers.jsonl").exists(),
        "no answering before the error"
    );
}

// --- two `train` processes on one run folder ------------------------------------------------------

#[test]
fn a_second_run_on_a_folder_in_use_fails_at_once_naming_the_holder() {
    let d = tempfile::tempdir().unwrap();
    let r = recipe(d.path(), SMALL_MATH, "");
    let run_dir = d.path().join("run");
    // the lock a running `train` holds (the same function takes it)
    let held = candor_train::lock::RunLock::acquire(&run_dir).unwrap();
    let t0 = Instant::now();
    for bin in [env!("CARGO_BIN_EXE_train"), env!("CARGO_BIN_EXE_dataset")] {
        let out = run(bin, &[&r]);
        let err = stderr(&out);
        assert!(!out.status.success(), "{bin}: {err}");
        assert!(
            err.contains(&format!("run folder {} is in use", run_dir.display()))
                && err.contains(&format!("PID {}", std::process::id())),
            "{err}"
        );
    }
    assert!(t0.elapsed() < Duration::from_secs(20));
    assert!(
        !run_dir.join("data").exists(),
        "the second run wrote nothing"
    );
    // released: the next run goes ahead (and takes over a lock file a dead run left)
    drop(held);
    let out = run(env!("CARGO_BIN_EXE_dataset"), &[&r]);
    assert!(out.status.success(), "{}", stderr(&out));
}

// --- a write that fails (disk full, file too large) names the file --------------------------------

#[test]
fn a_failed_write_during_answering_names_the_file() {
    // `ulimit -f` makes writes past 64 KiB fail (EFBIG, SIGXFSZ ignored) as a full disk
    // makes them fail (ENOSPC): the same error path, with no root or mount needed
    let d = tempfile::tempdir().unwrap();
    let r = recipe(
        d.path(),
        "source = \"calibratedmath\"\ngroups = [\"Add-subtract\"]\nper_subtask = 4",
        "",
    );
    let out = cmd("sh")
        .arg("-c")
        .arg(format!(
            "trap '' XFSZ; ulimit -f 128; exec '{}' '{}'",
            env!("CARGO_BIN_EXE_dataset"),
            r.display()
        ))
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "writing {}",
            d.path().join("run/data/answers.jsonl").display()
        )),
        "{err}"
    );
}

// --- an `[[eval.sets]]` path that does not exist -------------------------------------------------

#[test]
fn a_missing_eval_set_is_reported_before_any_work() {
    let d = tempfile::tempdir().unwrap();
    let r = recipe(
        d.path(),
        SMALL_MATH,
        "[[eval.sets]]\nsource = \"jsonl\"\npath = \"/nonexistent/heldout.jsonl\"",
    );
    let text = std::fs::read_to_string(&r)
        .unwrap()
        .replace("[eval]\nenabled = false\n", "");
    std::fs::write(&r, text).unwrap();
    let t0 = Instant::now();
    let out = run(env!("CARGO_BIN_EXE_train"), &[&r]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("eval.sets[0].path = /nonexistent/heldout.jsonl"),
        "{err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(20));
    assert!(
        !d.path().join("run").exists(),
        "nothing answered or written"
    );
}

// --- answering resumed from a torn line inside a batch --------------------------------------------

#[test]
fn answering_resumed_from_a_torn_line_inside_a_batch_is_bit_identical() {
    let d = tempfile::tempdir().unwrap();
    let data = "source = \"calibratedmath\"\ngroups = [\"Add-subtract\", \"Multiply-divide\"]\nper_subtask = 1";
    let r = recipe(d.path(), data, "");
    let out = run(env!("CARGO_BIN_EXE_dataset"), &[&r]);
    assert!(out.status.success(), "{}", stderr(&out));
    let path = d.path().join("run/data/answers.jsonl");
    let whole = std::fs::read(&path).unwrap();
    // cut inside the second batch of 8: three of its records complete, the fourth torn
    let ends: Vec<usize> = whole
        .iter()
        .enumerate()
        .filter(|(_, &b)| b == b'\n')
        .map(|(i, _)| i + 1)
        .collect();
    assert!(ends.len() > 24, "{} records", ends.len());
    let cut = ends[10] + (ends[11] - ends[10]) / 2;
    std::fs::write(&path, &whole[..cut]).unwrap();
    let out = run(env!("CARGO_BIN_EXE_dataset"), &[&r]);
    assert!(out.status.success(), "{}", stderr(&out));
    let resumed = std::fs::read(&path).unwrap();
    assert!(
        resumed == whole,
        "the resumed answers.jsonl differs from the uninterrupted one"
    );
}
