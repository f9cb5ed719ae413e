//! The `train` binary end to end on a tiny model trained from scratch: a run killed with
//! SIGKILL and resumed ends with exactly the weights of an uninterrupted run (LoRA dropout
//! included); a diverging run stops on a non-finite loss and keeps its last good checkpoint;
//! a model folder whose tokenizer does not fit its embeddings is refused by name; the whole
//! pipeline on tiny-arith runs on WGPU (lavapipe) as on the CPU; questions the run trained on
//! are left out of its eval sets; `train.layers` trains only those layers and resumes exactly.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn recipe(dir: &Path, extra: &str) -> PathBuf {
    let text = format!(
        r#"run_dir = "{run}"
[model]
preset = "tiny"
tokenizer = "byte"
[data]
subtasks = ["+:1:1", "-:2:2"]
per_subtask = 40
style = "plain"
[labels]
teacher = "gold"
[train]
max_steps = 24
micro_batch = 4
global_batch = 8
seed = 5
[lora]
rank = 4
alpha = 8
dropout = 0.1
[checkpoint]
every = 4
keep = 2
[log]
every = 4
tensorboard = true
[eval]
enabled = false
{extra}
"#,
        run = dir.join("run").display()
    );
    let p = dir.join("recipe.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// Add `keys` (TOML lines) to the `[model]` section of the recipe at `r`.
fn set_model_keys(r: &Path, keys: &str) {
    let text = std::fs::read_to_string(r).unwrap().replace(
        "tokenizer = \"byte\"\n",
        &format!("tokenizer = \"byte\"\n{keys}"),
    );
    std::fs::write(r, text).unwrap();
}

fn train(recipe: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_train"))
        .arg(recipe)
        .output()
        .unwrap()
}

#[test]
fn killed_and_resumed_run_matches_uninterrupted_run_bit_for_bit() {
    let a = tempfile::tempdir().unwrap();
    let out = train(&recipe(a.path(), ""));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let full = std::fs::read(a.path().join("run/final/model.safetensors")).unwrap();
    assert!(
        a.path().join("run/tb").read_dir().unwrap().count() > 0,
        "TensorBoard events written"
    );
    let log = std::fs::read_to_string(a.path().join("run/train.log")).unwrap();
    assert!(
        log.contains("grad_norm") && log.contains("step 24/24"),
        "{log}"
    );

    let b = tempfile::tempdir().unwrap();
    let rb = recipe(b.path(), "");
    let mut child = Command::new(env!("CARGO_BIN_EXE_train"))
        .arg(&rb)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !b.path().join("run/step-000008").exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !b.path().join("run/final").exists(),
        "killed before the end"
    );
    let out = train(&rb);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("resumed from"), "{err}");
    let resumed = std::fs::read(b.path().join("run/final/model.safetensors")).unwrap();
    assert!(
        full == resumed,
        "resumed weights differ from the uninterrupted run"
    );
    // keep = 2: only the two newest checkpoints remain
    let steps: Vec<String> = std::fs::read_dir(b.path().join("run"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-"))
        .collect();
    assert_eq!(steps.len(), 2, "{steps:?}");

    // a resume with other training settings is refused
    let rc = recipe(b.path(), "[optim]\nlr = 0.5\n");
    let out = train(&rc);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("other [model]/[train]"));
}

/// The recipe of `recipe` with `[lora]` replaced by full fine-tuning of `train.layers`.
fn recipe_train_layers(dir: &Path, layers: &str, extra: &str) -> PathBuf {
    let p = recipe(dir, extra);
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("[lora]\nrank = 4\nalpha = 8\ndropout = 0.1\n", "")
        .replace("seed = 5\n", &format!("seed = 5\nlayers = {layers}\n"));
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn train_layers_trains_only_those_layers_and_resumes_bit_for_bit() {
    use candor_model::checkpoint::read_safetensors_file;
    let weights = |d: &Path| read_safetensors_file(&d.join("run/final/model.safetensors")).unwrap();
    let a = tempfile::tempdir().unwrap();
    let out = train(&recipe_train_layers(a.path(), "[2, 3]", ""));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("full fine-tuning of layers [2, 3]"), "{err}");
    // another learning rate: the listed layers end elsewhere, every other weight where it began
    let c = tempfile::tempdir().unwrap();
    let out = train(&recipe_train_layers(
        c.path(),
        "[2, 3]",
        "[optim]\nlr = 3e-3\n",
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (wa, wc) = (weights(a.path()), weights(c.path()));
    for (name, t) in &wa {
        let trained = name.contains("layers.2.") || name.contains("layers.3.");
        assert_eq!(
            t.data != wc[name].data,
            trained,
            "{name}: trained {trained}, yet {} between learning rates",
            if trained { "the same" } else { "different" }
        );
    }
    // resumed in place from the checkpoint of step 20 (the last one removed): the same weights
    let file = |d: &Path| std::fs::read(d.join("run/final/model.safetensors")).unwrap();
    let uninterrupted = file(a.path());
    std::fs::remove_dir_all(a.path().join("run/final")).unwrap();
    std::fs::remove_dir_all(a.path().join("run/step-000024")).unwrap();
    let ra = a.path().join("recipe.toml");
    let out = train(&ra);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("resumed from") && err.contains("step 20"),
        "{err}"
    );
    assert!(
        file(a.path()) == uninterrupted,
        "resumed weights differ from the uninterrupted run"
    );
    // not with [lora]
    let bad = std::fs::read_to_string(&ra).unwrap() + "[lora]\nrank = 4\n";
    std::fs::write(&ra, bad).unwrap();
    let out = train(&ra);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("train.layers") && err.contains("[lora]"),
        "{err}"
    );
}

#[test]
fn non_finite_loss_stops_and_keeps_the_last_good_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let r = recipe(
        d.path(),
        "[optim]\nlr = 1e30\nmin_lr = 1e30\nwarmup = 0\ngrad_clip = 0\n",
    );
    let text = std::fs::read_to_string(&r)
        .unwrap()
        .replace("every = 4\nkeep", "every = 1\nkeep");
    std::fs::write(&r, text).unwrap();
    let out = train(&r);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("loss is") && err.contains("last good checkpoint"),
        "{err}"
    );
    assert!(d.path().join("run/step-000001/state.json").exists());
    assert!(!d.path().join("run/final").exists());
}

/// `loss` of every logged step in a run's train.log.
fn logged_losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("train.log"))
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("step "))
        .map(|l| {
            let at = l.find(" loss ").expect("a loss on every step line") + 6;
            l[at..].split(' ').next().unwrap().parse().unwrap()
        })
        .collect()
}

#[test]
fn bf16_run_tracks_the_f32_run() {
    // the same run computing in bf16 (mixed precision) on the CPU backend: it finishes, says
    // so, and its losses follow the f32 run's within bf16's precision without equalling them
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ra = recipe(a.path(), "");
    let rb = recipe(b.path(), "");
    set_model_keys(&rb, "dtype = \"bf16\"\n");
    for r in [&ra, &rb] {
        let out = train(r);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let log = std::fs::read_to_string(b.path().join("run/train.log")).unwrap();
    assert!(log.contains("bf16 compute with f32 weights"), "{log}");
    let (f32s, bf16s) = (
        logged_losses(&a.path().join("run")),
        logged_losses(&b.path().join("run")),
    );
    assert_eq!(f32s.len(), 6, "{f32s:?}");
    assert_eq!(f32s.len(), bf16s.len());
    assert!(f32s != bf16s, "bf16 compute must change the losses");
    for (x, y) in f32s.iter().zip(&bf16s) {
        assert!((x - y).abs() < 0.01 * x, "f32 {f32s:?} vs bf16 {bf16s:?}");
    }
    // the export is the f32 weights either way
    let size = |d: &tempfile::TempDir| {
        std::fs::metadata(d.path().join("run/final/model.safetensors"))
            .unwrap()
            .len()
    };
    assert_eq!(size(&a), size(&b));
}

#[test]
#[cfg_attr(
    not(feature = "wgpu"),
    ignore = "built without --features wgpu (scripts/test.sh adds it when a Vulkan driver is installed)"
)]
fn bf16_on_a_backend_without_bf16_arithmetic_is_an_error_before_any_work() {
    if !candor_test_support::have_vulkan() {
        return;
    }
    // Burn 0.21's WGPU backend registers bf16 for storage and conversion at most, never for
    // arithmetic, so `dtype = "bf16"` there must be refused by name, before the run folder
    let d = tempfile::tempdir().unwrap();
    let r = recipe(d.path(), "");
    set_model_keys(&r, "device = \"wgpu\"\ndtype = \"bf16\"\n");
    let out = train(&r);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("model.dtype = \"bf16\"") && err.contains("cannot compute in bf16"),
        "{err}"
    );
    assert!(!d.path().join("run").exists(), "nothing written");
}

#[test]
fn a_model_folder_that_is_not_there_is_an_error_before_the_run_folder() {
    // a recipe whose model has not been fetched yet (SmolLM2's, on a fresh clone)
    let d = tempfile::tempdir().unwrap();
    let r = recipe(d.path(), "");
    let text = std::fs::read_to_string(&r).unwrap().replace(
        "preset = \"tiny\"\ntokenizer = \"byte\"\n",
        "path = \"/nonexistent/smollm2\"\n",
    );
    std::fs::write(&r, text).unwrap();
    let out = train(&r);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("model.path = /nonexistent/smollm2")
            && err.contains("no model folder at /nonexistent/smollm2")
            && err.contains("checkpoints/README.md"),
        "{err}"
    );
    assert!(!d.path().join("run").exists(), "nothing written");
}

/// checkpoints/tiny-arith, from the crate folder as cargo reports it at run time (see
/// tests/eval.rs).
fn tiny_arith() -> PathBuf {
    let crate_dir: String =
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    Path::new(&crate_dir).join("../../checkpoints/tiny-arith")
}

/// The last `loss` a run's train.log reports.
fn last_loss(run: &Path) -> f64 {
    let log = std::fs::read_to_string(run.join("train.log")).unwrap();
    let line = log.lines().rev().find(|l| l.starts_with("step ")).unwrap();
    let at = line.split_whitespace().position(|w| w == "loss").unwrap();
    line.split_whitespace()
        .nth(at + 1)
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
#[cfg_attr(
    not(feature = "wgpu"),
    ignore = "built without --features wgpu (scripts/test.sh adds it when a Vulkan driver is installed)"
)]
fn the_whole_pipeline_runs_on_wgpu_as_on_the_cpu() {
    if !candor_test_support::have_vulkan() {
        return;
    }
    // tiny-arith through answering, labels, full fine-tuning, export and evaluation on a GPU
    // backend (lavapipe in CI: the same cubecl runtime as CUDA, another compiler): the same
    // greedy answers as the CPU's before training, and nearly the same training loss after it
    let model = tiny_arith();
    let d = tempfile::tempdir().unwrap();
    let mut runs = vec![];
    for device in ["cpu", "wgpu"] {
        let run = d.path().join(device);
        let text = format!(
            r#"run_dir = "{run}"
[model]
path = "{model}"
device = "{device}"
[data]
subtasks = ["+:1:1", "-:1:1", "+:2:2"]
per_subtask = 8
style = "plain"
[labels]
teacher = "empirical-subtask"
max_new_tokens = 12
[train]
max_steps = 4
micro_batch = 8
global_batch = 8
[eval]
max_new_tokens = 32
[[eval.sets]]
source = "calibratedmath"
subtasks = ["+:1:1", "+:3:3"]
per_subtask = 4
seed = 1
style = "plain"
"#,
            run = run.display(),
            model = model.display()
        );
        let r = d.path().join(format!("{device}.toml"));
        std::fs::write(&r, text).unwrap();
        let out = train(&r);
        assert!(
            out.status.success(),
            "{device}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for f in ["final/model.safetensors", "report/report.md"] {
            assert!(run.join(f).exists(), "{device}: no {f}");
        }
        runs.push(run);
    }
    let greedy = |run: &Path| -> Vec<String> {
        std::fs::read_to_string(run.join("data/answers.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["greedy"]["text"].as_str().unwrap().to_string()
            })
            .collect()
    };
    let (cpu, gpu) = (greedy(&runs[0]), greedy(&runs[1]));
    assert_eq!(cpu.len(), 24);
    let differ = cpu.iter().zip(&gpu).filter(|(a, b)| a != b).count();
    // a greedy pick flips only where two logits tie to within float rounding
    assert!(
        differ <= 1,
        "{differ} of 24 answers differ: {cpu:?} vs {gpu:?}"
    );
    let (a, b) = (last_loss(&runs[0]), last_loss(&runs[1]));
    eprintln!("answers differing: {differ} of 24; last loss: cpu {a}, wgpu {b}");
    assert!((a - b).abs() <= 0.02 * a, "last loss: cpu {a}, wgpu {b}");
}

#[test]
fn a_model_folder_whose_tokenizer_outgrows_its_embeddings_is_an_error_not_a_panic() {
    // tiny-arith's byte tokenizer with one more added token (id 259) than its 259 rows: the
    // token would index past the embedding table, so loading must say so by name
    let d = tempfile::tempdir().unwrap();
    let src = tiny_arith();
    let model = d.path().join("model");
    std::fs::create_dir(&model).unwrap();
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, model.join(f.file_name().unwrap())).unwrap();
    }
    let tj = model.join("tokenizer.json");
    let mut t: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&tj).unwrap()).unwrap();
    t["added_tokens"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "id": 259, "content": "<|extra|>", "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true
        }));
    std::fs::write(&tj, t.to_string()).unwrap();
    let r = recipe(d.path(), "");
    let text = std::fs::read_to_string(&r).unwrap().replace(
        "preset = \"tiny\"\ntokenizer = \"byte\"\n",
        &format!("path = {:?}\n", model.display().to_string()),
    );
    std::fs::write(&r, text).unwrap();
    let out = train(&r);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains("go up to 259") && err.contains("vocab_size = 259"),
        "{err}"
    );
}

/// Writes `body` (a recipe with `run_dir` and `[model] path` filled in for tiny-arith) to a
/// recipe in `dir` and trains it; returns the run folder and the run's stderr.
fn train_tiny_arith(dir: &Path, body: &str) -> (PathBuf, String) {
    let run = dir.join("run");
    let text = format!(
        "run_dir = \"{}\"\n[model]\npath = \"{}\"\n{body}",
        run.display(),
        tiny_arith().display()
    );
    let r = dir.join("recipe.toml");
    std::fs::write(&r, text).unwrap();
    let out = train(&r);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    (run, stderr)
}

fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn questions_the_run_trained_on_are_left_out_of_its_eval_sets() {
    // the eval set's first 8 "+:1:1" questions are the training set's (same seed, same stream)
    let d = tempfile::tempdir().unwrap();
    let (run, stderr) = train_tiny_arith(
        d.path(),
        r#"[data]
subtasks = ["+:1:1"]
per_subtask = 8
style = "plain"
[labels]
teacher = "empirical-subtask"
max_new_tokens = 12
[train]
max_steps = 1
micro_batch = 8
global_batch = 8
[eval]
max_new_tokens = 24
bootstrap = 20
[[eval.sets]]
name = "overlapping"
source = "calibratedmath"
subtasks = ["+:1:1"]
per_subtask = 20
style = "plain"
"#,
    );
    let trained: std::collections::HashSet<String> = jsonl(&run.join("data/dataset.jsonl"))
        .iter()
        .map(|v| v["question"].as_str().unwrap().to_string())
        .collect();
    let rep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("report/report.json")).unwrap())
            .unwrap();
    let gens = jsonl(&run.join("report/generations-overlapping-after.jsonl"));
    assert_eq!(gens.len(), 20, "the generations file keeps every question");
    let seen = gens
        .iter()
        .filter(|g| trained.contains(g["question"].as_str().unwrap()))
        .count();
    assert!(seen >= 8, "{seen} of the eval questions were trained on");
    for res in rep["results"].as_array().unwrap() {
        assert_eq!(res["left_out_seen"], seen, "{}", res["model"]);
        assert_eq!(res["n"], 20 - seen, "{}", res["model"]);
    }
    assert!(stderr.contains("also in the training data"), "{stderr}");
    let md = std::fs::read_to_string(run.join("report/report.md")).unwrap();
    assert!(
        md.contains(&format!(
            "{seen} questions also in the training data left out"
        )),
        "{md}"
    );
}

#[test]
fn the_probe_teacher_labels_every_trained_question_from_a_cross_fitted_probe() {
    let d = tempfile::tempdir().unwrap();
    let (run, stderr) = train_tiny_arith(
        d.path(),
        r#"[data]
subtasks = ["+:1:1", "+:2:2", "-:1:1", "-:2:2"]
per_subtask = 15
style = "plain"
[labels]
teacher = "probe"
probe_logprob = true
max_new_tokens = 12
[train]
max_steps = 1
micro_batch = 8
global_batch = 8
[eval]
enabled = false
"#,
    );
    assert!(stderr.contains("5-fold cross-fitted"), "{stderr}");
    assert!(
        stderr.contains("after the answer, and the answer's log-probability"),
        "{stderr}"
    );
    let ex = jsonl(&run.join("data/dataset.jsonl"));
    assert_eq!(ex.len(), 60);
    let right = ex.iter().filter(|e| e["correct"] == true).count();
    assert!(
        0 < right && right < 60,
        "{right} of 60 right: the probe needs both"
    );
    for e in &ex {
        let p = e["signals"]["probe"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&p), "{e}");
        assert_eq!(e["teacher"], "probe");
        assert_eq!(
            e["confidence"].as_f64().unwrap(),
            (100.0 * p).round(),
            "{e}"
        );
    }
    // the label follows the grade: right answers get more on average (tiny-arith's hidden
    // state tells its sums apart)
    let mean = |c: bool| {
        let v: Vec<f64> = ex
            .iter()
            .filter(|e| e["correct"] == c)
            .map(|e| e["confidence"].as_f64().unwrap())
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    assert!(
        mean(true) > mean(false),
        "right {} wrong {}",
        mean(true),
        mean(false)
    );
}

#[test]
fn eval_questions_can_be_kept_out_of_training_and_the_probe_read_before_the_value_at_a_layer() {
    // the eval set of questions_the_run_trained_on_are_left_out_of_its_eval_sets: its first
    // "+:1:1" questions are also this [data]'s (same seed, same stream); here they leave the
    // training data instead of the metrics
    let d = tempfile::tempdir().unwrap();
    let (run, stderr) = train_tiny_arith(
        d.path(),
        r#"[data]
subtasks = ["+:1:1", "+:2:2", "-:1:1", "-:2:2"]
per_subtask = 15
style = "plain"
[labels]
teacher = "probe"
probe_at = "confidence"
probe_layer = 2
max_new_tokens = 12
[train]
max_steps = 1
micro_batch = 8
global_batch = 8
[eval]
exclude_from_training = true
max_new_tokens = 24
bootstrap = 20
[[eval.sets]]
name = "overlapping"
source = "calibratedmath"
subtasks = ["+:1:1"]
per_subtask = 20
style = "plain"
"#,
    );
    assert!(stderr.contains("layer 2 before the value"), "{stderr}");
    assert!(stderr.contains("eval.exclude_from_training"), "{stderr}");
    let ex = jsonl(&run.join("data/dataset.jsonl"));
    let gens = jsonl(&run.join("report/generations-overlapping-after.jsonl"));
    let asked: std::collections::HashSet<&str> = gens
        .iter()
        .map(|g| g["question"].as_str().unwrap())
        .collect();
    let kept = ex
        .iter()
        .filter(|e| !asked.contains(e["question"].as_str().unwrap()))
        .count();
    assert_eq!(kept, ex.len(), "no training question is an eval question");
    assert!(ex.len() < 60, "some of the 60 questions were left out");
    let rep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("report/report.json")).unwrap())
            .unwrap();
    for res in rep["results"].as_array().unwrap() {
        assert_eq!(res["left_out_seen"], 0, "{}", res["model"]);
        assert_eq!(res["n"], 20, "{}", res["model"]);
    }
    for e in &ex {
        let p = e["signals"]["probe"].as_f64().unwrap();
        assert_eq!(
            e["confidence"].as_f64().unwrap(),
            (100.0 * p).round(),
            "{e}"
        );
    }
    // a layer the model does not have names the field and the range, before any work
    let r = d.path().join("bad-layer.toml");
    std::fs::write(
        &r,
        format!(
            "run_dir = \"{}\"\n[model]\npath = \"{}\"\n{}",
            d.path().join("bad-layer").display(),
            tiny_arith().display(),
            r#"[data]
subtasks = ["+:1:1", "-:1:1"]
per_subtask = 10
style = "plain"
[labels]
teacher = "probe"
probe_layer = 9
max_new_tokens = 12
[train]
max_steps = 1
[eval]
enabled = false
"#
        ),
    )
    .unwrap();
    let out = train(&r);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("labels.probe_layer = 9") && err.contains("1 to 4"),
        "{err}"
    );
    assert!(
        !d.path().join("bad-layer").exists(),
        "refused before the run folder, so before any answering"
    );
    // and under another teacher the probe's place is a recipe error
    let text = std::fs::read_to_string(&r).unwrap().replace(
        "teacher = \"probe\"\nprobe_layer = 9",
        "teacher = \"empirical-subtask\"\nprobe_at = \"confidence\"",
    );
    std::fs::write(&r, text).unwrap();
    let out = train(&r);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("apply to teacher \"probe\" only"), "{err}");
}

#[test]
fn the_models_teacher_labels_each_answer_with_the_models_mean_expected_confidence() {
    // a trained model to read: tiny-arith after a few steps on sub-task labels
    let d = tempfile::tempdir().unwrap();
    let data = r#"[data]
subtasks = ["+:1:1", "-:1:1"]
per_subtask = 8
style = "plain"
"#;
    let step = |dir: &Path, labels: &str| {
        std::fs::create_dir_all(dir).unwrap();
        train_tiny_arith(
            dir,
            &format!(
                "{data}[labels]\n{labels}\nmax_new_tokens = 12\n[train]\nmax_steps = 3\nmicro_batch = 8\nglobal_batch = 8\n[eval]\nenabled = false\n"
            ),
        )
    };
    let (trained, _) = step(&d.path().join("a"), "teacher = \"empirical-subtask\"");
    let trained = trained.join("final");
    let base = tiny_arith();
    let label = |name: &str, models: &[&Path]| {
        let list: Vec<String> = models
            .iter()
            .map(|p| format!("\"{}\"", p.display()))
            .collect();
        let (run, stderr) = step(
            &d.path().join(name),
            &format!("teacher = \"models\"\nmodels = [{}]", list.join(", ")),
        );
        assert!(stderr.contains("models teacher:"), "{stderr}");
        let ex = jsonl(&run.join("data/dataset.jsonl"));
        assert_eq!(ex.len(), 16);
        ex.iter()
            .map(|e| {
                let p = e["signals"]["models"].as_f64().unwrap();
                assert!((0.0..=1.0).contains(&p), "{e}");
                assert_eq!(e["teacher"], "models");
                assert_eq!(e["confidence"].as_f64().unwrap(), (100.0 * p).round());
                p
            })
            .collect::<Vec<f64>>()
    };
    let one = label("b", &[&trained]);
    let other = label("c", &[&base]);
    let both = label("e", &[&trained, &base]);
    assert_ne!(one, other, "the label reads the model it names");
    for ((a, b), m) in one.iter().zip(&other).zip(&both) {
        assert!(
            (m - (a + b) / 2.0).abs() < 1e-5,
            "{m} is not the mean of {a} and {b}"
        );
    }
    // a teacher without models, and models under another teacher, are recipe errors
    for (name, labels, says) in [
        ("f", "teacher = \"models\"", "labels.models is empty"),
        (
            "g",
            "teacher = \"empirical-subtask\"\nmodels = [\"x\"]",
            "applies to teacher \"models\" only",
        ),
    ] {
        let dir = d.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let r = dir.join("recipe.toml");
        std::fs::write(
            &r,
            format!(
                "run_dir = \"{}\"\n[model]\npath = \"{}\"\n{data}[labels]\n{labels}\n",
                dir.join("run").display(),
                base.display()
            ),
        )
        .unwrap();
        let out = train(&r);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{err}");
    }
}
