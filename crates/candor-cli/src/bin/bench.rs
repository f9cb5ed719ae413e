//! `bench --model DIR`: forward and generation throughput of a model on the CPU backend, and
//! the same measured with PyTorch/transformers side by side when `.venv-bench` (see
//! `scripts/setup-bench-venv.sh`) or `--python` provides them. Prints a table with ratios.

use anyhow::{Context, Result};
use burn::backend::Flex;
use candor_cli::peak_rss_mb;
use candor_model::{generate, load_model_and_tokenizer, GenConfig};
use clap::Parser;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
#[command(about = "Throughput of forward and generation (batch 1 and 16), beside PyTorch")]
struct Args {
    #[arg(long, default_value = "checkpoints/smollm2-135m-instruct")]
    model: PathBuf,
    /// Tokens per sequence for the forward benchmark.
    #[arg(long, default_value_t = 64)]
    seq: usize,
    /// New tokens per sequence for the generation benchmark (prompt: 16 tokens).
    #[arg(long, default_value_t = 32)]
    new_tokens: usize,
    /// Timed repeats (best is reported) after one warm-up.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Python with torch + transformers; default `.venv-bench/bin/python` if present.
    #[arg(long)]
    python: Option<PathBuf>,
    /// Skip the PyTorch side.
    #[arg(long)]
    no_pytorch: bool,
    /// Instead: the CPU backend's matrix product at decode shapes (a few rows against a
    /// SmolLM2-sized weight, weights cold as at decode), GFLOP/s and weight bytes read per
    /// second; no model needed.
    #[arg(long)]
    matmul: bool,
    /// Instead: all-MiniLM-L6-v2 (this folder, `scripts/fetch-minilm.sh`) embedding
    /// `--texts` distinct SAR-like texts (3–24 words), beside sentence-transformers' computation
    /// in transformers with the same batches when the PyTorch side is available.
    #[arg(long, value_name = "DIR")]
    minilm: Option<PathBuf>,
    /// Texts for `--minilm`.
    #[arg(long, default_value_t = 2000)]
    texts: usize,
}

/// `bench --minilm DIR`: texts per second of the MiniLM embedding SAR uses, best of
/// `repeats` after a warm-up, and the same texts in transformers (batches of 64 sorted by
/// length, mean pooling, L2 norm — what `MiniLm::embed` does).
fn minilm_table(a: &Args, dir: &std::path::Path) -> Result<()> {
    let words = [
        "the",
        "answer",
        "is",
        "Paris",
        "river",
        "Thames",
        "in",
        "1969",
        "a",
        "famous",
        "painter",
        "Vincent",
        "van",
        "Gogh",
        "of",
        "capital",
        "Australia",
        "Canberra",
        "was",
        "born",
        "on",
        "island",
        "Corsica",
        "Napoleon",
        "I",
        "think",
        "it",
        "probably",
        "novel",
        "written",
        "by",
        "George",
        "Orwell",
        "Mount",
        "Everest",
        "highest",
    ];
    let mut rng = StdRng::seed_from_u64(1);
    let texts: Vec<String> = (0..a.texts)
        .map(|i| {
            let n = rng.random_range(3..=24);
            let mut t: Vec<&str> = (0..n)
                .map(|_| words[rng.random_range(0..words.len())])
                .collect();
            let id = i.to_string();
            t.push(&id);
            t.join(" ")
        })
        .collect();
    let device = Default::default();
    let ours = best(a.repeats, || {
        // a fresh model each time: the embedding cache would otherwise answer from memory
        let mut m = candor_confidence::MiniLm::<Flex>::load(dir, &device)?;
        std::hint::black_box(m.embed(&texts)?);
        Ok(())
    })?;
    let file = std::env::temp_dir().join("candor-bench-minilm.json");
    std::fs::write(&file, serde_json::to_string(&texts)?)?;
    let theirs = pytorch_side(
        a,
        "scripts/bench_minilm_pytorch.py",
        &[dir.into(), file.into(), a.repeats.to_string().into()],
    )?
    .and_then(|v| v["seconds"].as_f64());
    let n = texts.len() as f64;
    println!(
        "MiniLM ({}), {} distinct texts of 4–25 words, batches of 64 by length",
        dir.display(),
        texts.len()
    );
    println!(
        "{:<22} {:>12} {:>12} {:>8}",
        "measure", "candor", "pytorch", "ratio"
    );
    match theirs {
        Some(t) => println!(
            "{:<22} {:>12.1} {:>12.1} {:>7.2}×",
            "texts/s",
            n / ours,
            n / t,
            t / ours
        ),
        None => println!(
            "{:<22} {:>12.1} {:>12} {:>8}",
            "texts/s",
            n / ours,
            "-",
            "-"
        ),
    }
    Ok(())
}

/// `bench --matmul`: rows × in · in × out products through `candor_model::fused::matmul`,
/// cycling through ~200 MB of distinct weights so that each product reads its weight from
/// memory, as a decoding step does (`CANDOR_NO_PACK=1`: weights read unpacked;
/// `CANDOR_NO_SMALL_M=1`: gemm's products).
fn matmul_table() {
    use burn::tensor::{Tensor, TensorData};
    let device = Default::default();
    println!(
        "{:<26} {:>10} {:>16}",
        "rows × in × out", "GFLOP/s", "weight GB/s"
    );
    // (rows, in, out, transposed): `transposed` = the weight held `[out, in]` and used through a
    // transposed view, as the tied output layer uses the embedding table
    for (m, k, n, transposed) in [
        (1, 576, 1536, false),
        (2, 576, 1536, false),
        (4, 576, 1536, false),
        (8, 576, 1536, false),
        (16, 576, 1536, false),
        (32, 576, 1536, false),
        (16, 576, 192, false),
        (16, 576, 576, false),
        (16, 1536, 576, false),
        (32, 1536, 576, false),
        (64, 576, 1536, false),
        (64, 1536, 576, false),
        (128, 576, 1536, false),
        (16, 576, 49152, false),
        (32, 576, 49152, false),
        (16, 576, 49152, true),
        (32, 576, 49152, true),
        (512, 576, 1536, false),
    ] {
        let count = (200_000_000 / (4 * k * n)).max(2);
        let weights: Vec<Tensor<Flex, 2>> = (0..count)
            .map(|j| {
                let v: Vec<f32> = (0..k * n).map(|i| ((i + j) % 7) as f32 * 0.1).collect();
                if transposed {
                    Tensor::from_data(TensorData::new(v, [n, k]), &device).transpose()
                } else {
                    Tensor::from_data(TensorData::new(v, [k, n]), &device)
                }
            })
            .collect();
        let x = Tensor::<Flex, 2>::from_data(TensorData::new(vec![0.5f32; m * k], [m, k]), &device);
        let reps = 100.max(count);
        // two passes first: a weight's second decode-shaped product packs it
        // (`fused/decode.rs`), and the timed ones read it packed, as decoding steps do
        for w in weights.iter().chain(&weights) {
            std::hint::black_box(candor_model::fused::matmul(x.clone(), w.clone()));
        }
        let t = Instant::now();
        for r in 0..reps {
            let y = candor_model::fused::matmul(x.clone(), weights[r % count].clone());
            std::hint::black_box(y);
        }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        println!(
            "{:<26} {:>10.1} {:>16.1}",
            format!("{m} × {k} × {n}{}", if transposed { " (ᵀ)" } else { "" }),
            2.0 * (m * k * n) as f64 / s / 1e9,
            4.0 * (k * n) as f64 / s / 1e9
        );
    }
}

/// The last stdout line of `script` (a JSON object) run with the bench venv's Python (or
/// `--python`) on `args`; `None`, with a line saying why, when there is no such Python, with
/// `--no-pytorch`, or when the script fails.
fn pytorch_side(
    a: &Args,
    script: &str,
    args: &[std::ffi::OsString],
) -> Result<Option<serde_json::Value>> {
    let python = a.python.clone().or_else(|| {
        let p = PathBuf::from(".venv-bench/bin/python");
        p.exists().then_some(p)
    });
    let py = match (&python, a.no_pytorch) {
        (Some(py), false) => py,
        _ => {
            eprintln!("(no PyTorch side: run scripts/setup-bench-venv.sh or pass --python)");
            return Ok(None);
        }
    };
    eprintln!("running the PyTorch side with {} …", py.display());
    let out = std::process::Command::new(py)
        .arg(script)
        .args(args)
        .output()
        .with_context(|| format!("running {script}"))?;
    if !out.status.success() {
        eprintln!(
            "PyTorch side failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return Ok(None);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or("");
    Ok(Some(
        serde_json::from_str(line).context("parsing the PyTorch result")?,
    ))
}

fn best(repeats: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut b = f64::INFINITY;
    for _ in 0..repeats {
        let t = Instant::now();
        f()?;
        b = b.min(t.elapsed().as_secs_f64());
    }
    Ok(b)
}

fn main() -> Result<()> {
    let a = Args::parse();
    candor_model::device::keep_freed_memory(); // as `generate` does on the CPU
    if a.matmul {
        matmul_table();
        return Ok(());
    }
    if let Some(dir) = &a.minilm {
        return minilm_table(&a, dir);
    }
    let device = Default::default();
    let (model, tok) = load_model_and_tokenizer::<Flex>(&a.model, &device)?;
    let vocab = model.config.vocab_size as u32;
    let mut rng = StdRng::seed_from_u64(0);
    let mut rows = |b: usize, n: usize| -> Vec<Vec<u32>> {
        (0..b)
            .map(|_| (0..n).map(|_| rng.random_range(100..vocab - 100)).collect())
            .collect()
    };
    let mut ours = serde_json::Map::new();
    for b in [1usize, 16] {
        let x = rows(b, a.seq);
        let s = best(a.repeats, || {
            let l = model.forward_logits(&x, &device);
            let _ = l.into_data(); // wait for the result
            Ok(())
        })?;
        ours.insert(format!("forward_b{b}"), ((b * a.seq) as f64 / s).into());
        eprintln!(
            "forward   batch {b:>2}: {:.1} tokens/s",
            (b * a.seq) as f64 / s
        );
        let p = rows(b, 16);
        let cfg = GenConfig {
            max_new_tokens: a.new_tokens,
            stop_ids: vec![],
            ..Default::default()
        };
        let s = best(a.repeats, || {
            generate(&model, &tok, &p, &cfg, &device).map(|_| ())
        })?;
        ours.insert(
            format!("generate_b{b}"),
            ((b * a.new_tokens) as f64 / s).into(),
        );
        eprintln!(
            "generate  batch {b:>2}: {:.1} tokens/s",
            (b * a.new_tokens) as f64 / s
        );
    }
    ours.insert("peak_rss_mb".into(), peak_rss_mb().into());

    let theirs = pytorch_side(
        &a,
        "scripts/bench_pytorch.py",
        &[
            a.model.clone().into(),
            a.seq.to_string().into(),
            a.new_tokens.to_string().into(),
            a.repeats.to_string().into(),
        ],
    )?;
    println!(
        "model: {}  (f32, CPU, {} threads available)",
        a.model.display(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "forward: {} tokens per sequence; generation: 16-token prompt + {} new tokens, greedy",
        a.seq, a.new_tokens
    );
    if let Some(t) = &theirs {
        println!(
            "pytorch: torch {} ({} threads)",
            t["torch"].as_str().unwrap_or("?"),
            t["threads"]
        );
    }
    println!(
        "{:<22} {:>12} {:>12} {:>8}",
        "measure", "candor", "pytorch", "ratio"
    );
    let label = |k: &str| match k {
        "forward_b1" => "forward b=1 (tok/s)",
        "forward_b16" => "forward b=16 (tok/s)",
        "generate_b1" => "generate b=1 (tok/s)",
        "generate_b16" => "generate b=16 (tok/s)",
        _ => "peak RSS (MB)",
    };
    for k in [
        "forward_b1",
        "forward_b16",
        "generate_b1",
        "generate_b16",
        "peak_rss_mb",
    ] {
        let o = ours[k].as_f64().unwrap();
        match theirs.as_ref().and_then(|t| t[k].as_f64()) {
            Some(p) => println!("{:<22} {:>12.1} {:>12.1} {:>7.2}×", label(k), o, p, o / p),
            None => println!("{:<22} {:>12.1} {:>12} {:>8}", label(k), o, "-", "-"),
        }
    }
    Ok(())
}
