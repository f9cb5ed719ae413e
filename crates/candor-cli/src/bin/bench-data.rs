//! `bench-data`: wall time and generated tokens/s of the data stage (answer, grade, label) on
//! fixed slices of the SmolLM2 recipes, for this build's `dataset` and, side by side, a
//! baseline `dataset` binary built from another commit (`scripts/build-baseline.sh REV`):
//! - `greedy`: CalibratedMath Add-subtract, `--per-subtask` questions per sub-task, greedy
//!   answers only, chat prompts (the settings recipes/smollm2-calibratedmath-sampled.toml had until
//!   2026-12-03; it answers in the plain style now);
//! - `sar`: the first `--trivia` TriviaQA questions, K = 5 samples at T 0.5 and the SAR teacher
//!   with MiniLM (the settings of the former recipes/smollm2-uait-triviaqa.toml, removed on
//!   2026-12-03 because the model answers 5.7% of TriviaQA right).
//!
//! Each round runs the baseline and this build alternately on a fresh run folder, so both see
//! the same minutes of a shared host; the table gives each side's median and the median of the
//! per-round ratios (baseline time / this build's time: above 1 = faster now).

use anyhow::{bail, Context, Result};
use clap::Parser;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

#[derive(Parser)]
#[command(about = "Time the data stage (answering + labelling) against a baseline build")]
struct Args {
    /// A `dataset` binary from another commit (`scripts/build-baseline.sh REV` prints its path).
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Rounds (each runs both sides once per workload).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Workloads: greedy, sar (comma-separated).
    #[arg(long, default_value = "greedy,sar", value_delimiter = ',')]
    only: Vec<String>,
    /// Add-subtract questions per sub-task for `greedy` (the slice: 20).
    #[arg(long, default_value_t = 20)]
    per_subtask: usize,
    /// TriviaQA questions for `sar` (the slice: 100).
    #[arg(long, default_value_t = 100)]
    trivia: usize,
    /// The SmolLM2 folder.
    #[arg(long, default_value = "checkpoints/smollm2-135m-instruct")]
    model: PathBuf,
    /// The TriviaQA JSONL.
    #[arg(long, default_value = "../shared/data/triviaqa-2000.jsonl")]
    triviaqa: PathBuf,
    /// Scratch folder for the recipes and run folders (emptied per run).
    #[arg(long, default_value = "/tmp/candor-bench-data")]
    scratch: PathBuf,
}

fn recipe(a: &Args, workload: &str) -> Result<String> {
    let model = a.model.canonicalize().with_context(|| {
        format!(
            "model folder {} (scripts/fetch-smollm2.sh fetches it)",
            a.model.display()
        )
    })?;
    let head = format!(
        "[model]\npath = {:?}\ndevice = \"cpu\"\n\n",
        model.display().to_string()
    );
    Ok(match workload {
        "greedy" => format!(
            "{head}[data]\nsource = \"calibratedmath\"\ngroups = [\"Add-subtract\"]\nper_subtask = {}\n\
             template = \"{{question}} Answer with the number only.\"\nmax_length = 128\n\n\
             [labels]\nteacher = \"empirical-subtask\"\nmax_new_tokens = 24\nbatch_size = 32\n",
            a.per_subtask
        ),
        "sar" => {
            let data = a.triviaqa.canonicalize().with_context(|| {
                format!("TriviaQA file {}", a.triviaqa.display())
            })?;
            let minilm = Path::new("checkpoints/all-minilm-l6-v2")
                .canonicalize()
                .context("checkpoints/all-minilm-l6-v2 (scripts/fetch-minilm.sh fetches it)")?;
            format!(
                "{head}[data]\nsource = \"jsonl\"\npath = {:?}\nlimit = {}\n\
                 template = \"{{question}} Answer in a few words.\"\ngrading = \"contains\"\nmax_length = 160\n\n\
                 [labels]\nteacher = \"sar\"\nsamples = 5\ntemperature = 0.5\nmax_new_tokens = 24\n\
                 batch_size = 16\nsimilarity = \"minilm\"\nminilm_path = {:?}\nmap = \"isotonic\"\nheldout = 0.2\n",
                data.display().to_string(),
                a.trivia,
                minilm.display().to_string()
            )
        }
        w => bail!("unknown workload {w:?} (allowed: greedy, sar)"),
    })
}

/// Generated tokens (greedy + samples) in a run's answers.jsonl.
fn generated_tokens(run: &Path) -> Result<usize> {
    let path = run.join("data/answers.jsonl");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut n = 0;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let count = |s: &serde_json::Value| s["tokens"].as_array().map_or(0, |t| t.len());
        n += count(&v["greedy"]);
        n += v["samples"]
            .as_array()
            .map_or(0, |s| s.iter().map(count).sum());
    }
    Ok(n)
}

/// One timed `dataset` run on a fresh folder: (seconds, generated tokens).
fn run_once(bin: &Path, recipe: &Path, run: &Path) -> Result<(f64, usize)> {
    if run.exists() {
        std::fs::remove_dir_all(run)?;
    }
    let t = Instant::now();
    let out = Command::new(bin)
        .arg(recipe)
        .arg("--run-dir")
        .arg(run)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let s = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "{} {} failed:\n{}",
            bin.display(),
            recipe.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((s, generated_tokens(run)?))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() -> Result<()> {
    let a = Args::parse();
    let ours = std::env::current_exe()?
        .parent()
        .context("the bench binary's folder")?
        .join("dataset");
    if !ours.exists() {
        bail!(
            "{} not found: build it with `cargo build --release --bin dataset`",
            ours.display()
        );
    }
    let mut sides = vec![("this build", ours)];
    if let Some(b) = &a.baseline {
        if !b.exists() {
            bail!("baseline binary {} not found", b.display());
        }
        sides.insert(0, ("baseline", b.clone()));
    }
    std::fs::create_dir_all(&a.scratch)?;
    println!(
        "{:<8} {:<11} {:>5} {:>9} {:>8} {:>10}",
        "workload", "side", "round", "wall s", "tokens", "tokens/s"
    );
    let mut summary = vec![];
    for w in &a.only {
        let path = a.scratch.join(format!("{w}.toml"));
        std::fs::write(&path, recipe(&a, w)?)?;
        let mut times: Vec<Vec<f64>> = vec![vec![]; sides.len()];
        let mut rates: Vec<Vec<f64>> = vec![vec![]; sides.len()];
        let mut ratios = vec![];
        for round in 1..=a.rounds {
            for (i, (name, bin)) in sides.iter().enumerate() {
                let (s, tokens) = run_once(bin, &path, &a.scratch.join(format!("run-{w}-{i}")))?;
                println!(
                    "{w:<8} {name:<11} {round:>5} {s:>9.1} {tokens:>8} {:>10.1}",
                    tokens as f64 / s
                );
                times[i].push(s);
                rates[i].push(tokens as f64 / s);
            }
            if sides.len() == 2 {
                ratios.push(times[0][round - 1] / times[1][round - 1]);
            }
        }
        summary.push((w.clone(), times, rates, ratios));
    }
    println!("\nmedians (wall s, generated tokens/s); ratio = baseline time / this build's time");
    for (w, times, rates, ratios) in summary {
        let mut line = format!("{w:<8}");
        for (i, (name, _)) in sides.iter().enumerate() {
            line += &format!(
                "  {name}: {:.1} s, {:.1} tok/s",
                median(times[i].clone()),
                median(rates[i].clone())
            );
        }
        if !ratios.is_empty() {
            let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}×")).collect();
            line += &format!(
                "  speed-up {:.2}× (rounds: {})",
                median(ratios.clone()),
                each.join(" ")
            );
        }
        println!("{line}");
    }
    Ok(())
}
