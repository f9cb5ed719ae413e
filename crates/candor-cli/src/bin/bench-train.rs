//! `bench-train`: one training step (forward, backward, AdamW update) of a model, beside the
//! same step in PyTorch/transformers, on the same machine in the same run: f32 on the CPU by
//! default; `--device cuda --dtype bf16` on an NVIDIA GPU (PyTorch: `torch.autocast`). Four
//! workloads, each measured in its own process so that peak memory is its own:
//!
//! - `full-lm`:   full fine-tuning, loss on every token (a plain language-model step);
//! - `full-sft`:  full fine-tuning, loss on the last `--response` tokens of each row only — what
//!   calibration SFT looks like (a prompt, then `42\nConfidence: 80%<|im_end|>`);
//! - `lora-lm`, `lora-sft`: the same with LoRA (rank 16, alpha 32, q/k/v/o projections).
//!
//! PyTorch computes the logits of every position and masks the loss with labels = -100 (what
//! HF SFT code does); candor computes logits only where the loss is. Prints seconds per step,
//! tokens/s (batch × seq / step time) and memory for both (peak RSS on the CPU; on an NVIDIA
//! GPU the device memory the process holds after its steps, from `nvidia-smi`), and the ratio.

use anyhow::{bail, Context, Result};
use burn::backend::Autodiff;
use burn::optim::GradientsParams;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, ElementConversion};
use candor_cli::peak_rss_mb;
use candor_model::{load_model, run_on, BackendTask, DeviceSpec, Llama, ModelConfig};
use candor_train::optim::AdamW;
use candor_train::recipe::OptimSection;
use candor_train::trainer::{batch_loss, Objective, Seq};
use clap::Parser;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::path::PathBuf;
use std::time::Instant;

const WORKLOADS: [&str; 4] = ["full-lm", "full-sft", "lora-lm", "lora-sft"];

#[derive(Parser)]
#[command(about = "Training-step throughput and peak memory, beside PyTorch")]
struct Args {
    #[arg(long, default_value = "checkpoints/smollm2-135m-instruct")]
    model: PathBuf,
    /// cpu, wgpu[:N] or cuda[:N] (the GPU backends need a build with `--features wgpu` or
    /// `cuda`). PyTorch runs on the CPU for `cpu` and on the same GPU for `cuda`; it has no WGPU.
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// The precision the model computes in: f32, or bf16 (mixed precision, as `model.dtype =
    /// "bf16"` in a recipe; PyTorch: `torch.autocast` to bf16). Weights and AdamW stay f32.
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    dtype: String,
    /// Initialise the weights at random (normal, std 0.02) from the folder's config.json alone,
    /// on both sides: for a machine that has a model's config but not its weights. A step's
    /// work does not depend on the weights' values.
    #[arg(long)]
    random_init: bool,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 64)]
    seq: usize,
    /// Response tokens per row for the `*-sft` workloads.
    #[arg(long, default_value_t = 12)]
    response: usize,
    /// Timed steps after one warm-up step; the median is reported.
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Rounds of (candor, PyTorch) per workload, run alternately; the table shows each side's
    /// median step time over the rounds (tokens/s derived from it), the median of the per-round
    /// ratios, and each round's ratio with the host's steal time. On a shared or noisy machine,
    /// use 3 or more.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// A round in which the hypervisor stole more than this share (percent) of the host's CPU
    /// time during either side's run is run again, up to 3 times; the discarded rounds are
    /// listed. 100 keeps every round.
    #[arg(long, default_value_t = 10.0)]
    max_steal: f64,
    /// Python with torch + transformers; default `.venv-bench/bin/python` if present.
    #[arg(long)]
    python: Option<PathBuf>,
    #[arg(long)]
    no_pytorch: bool,
    /// Workloads to run (default: all four).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Internal: measure one workload in this process and print a JSON line.
    #[arg(long, hide = true)]
    child: Option<String>,
}

/// One round of a workload: candor's JSON line and PyTorch's (if it ran).
type Round = (serde_json::Value, Option<serde_json::Value>);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    (v[(n - 1) / 2] + v[n / 2]) / 2.0
}

/// The host's CPU time counters from `/proc/stat`: (stolen, total) in ticks, or `None` off
/// Linux. Steal is the time the hypervisor ran something else while this VM's cores had work:
/// on a shared VM it is what makes one round several times slower than the next.
fn cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    Some((*fields.get(7)?, fields.iter().take(8).sum()))
}

/// Run `f` and add the share of the host's CPU time stolen meanwhile (percent) to its JSON as
/// `steal_pct` (absent where `/proc/stat` cannot be read).
fn with_steal(f: impl FnOnce() -> Result<serde_json::Value>) -> Result<serde_json::Value> {
    let before = cpu_ticks();
    let mut v = f()?;
    if let (Some((s0, t0)), Some((s1, t1))) = (before, cpu_ticks()) {
        v["steal_pct"] = (100.0 * (s1 - s0) as f64 / (t1 - t0).max(1) as f64).into();
    }
    Ok(v)
}

/// The compute dtype `--dtype` names (clap has checked it is one of these).
fn compute_dtype(a: &Args) -> DType {
    if a.dtype == "bf16" {
        DType::BF16
    } else {
        DType::F32
    }
}

/// The device memory in use on NVIDIA GPU `index`, in MB, from `nvidia-smi` (`None` without
/// one). Measured while the process still holds its memory: the CUDA context and the
/// allocator's pools included, as for the PyTorch side.
fn nvidia_used_mb(index: usize) -> Option<f64> {
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=memory.used", "--format=csv,noheader,nounits"])
        .arg(format!("--id={index}"))
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// One workload in this process, on the backend `--device` names.
struct Child<'a>(&'a Args, &'a str);

impl BackendTask for Child<'_> {
    type Output = serde_json::Value;
    fn run<B: Backend>(self, device: B::Device) -> Result<serde_json::Value> {
        child::<Autodiff<B>>(self.0, self.1, &device)
    }
}

/// One workload: a warm-up step, then `steps` timed steps.
fn child<B: burn::tensor::backend::AutodiffBackend>(
    a: &Args,
    workload: &str,
    device: &B::Device,
) -> Result<serde_json::Value> {
    let dtype = compute_dtype(a);
    if !B::supports_dtype(device, dtype) {
        bail!(
            "--dtype {}: the {} backend ({device:?}) cannot compute in it",
            a.dtype,
            B::name(device)
        );
    }
    let mut model: Llama<B> = if a.random_init {
        let cfg = ModelConfig::from_hf_file(&a.model.join("config.json"))?;
        Llama::init(&cfg, 0, device)
    } else {
        load_model::<B>(&a.model, device)?
    };
    model = model.with_compute(dtype);
    if workload.starts_with("lora") {
        let t: Vec<String> = ["q_proj", "k_proj", "v_proj", "o_proj"]
            .map(String::from)
            .to_vec();
        model = model.with_lora(&t, &[], 16, 32.0, 0.0, 0, device);
    }
    let start = if workload.ends_with("sft") {
        a.seq - a.response
    } else {
        1
    };
    let vocab = model.config.vocab_size as u32;
    let mut rng = StdRng::seed_from_u64(0);
    let seqs: Vec<Seq> = (0..a.batch)
        .map(|_| {
            Seq::response(
                (0..a.seq)
                    .map(|_| rng.random_range(100..vocab - 100))
                    .collect(),
                start,
                1.0,
            )
        })
        .collect();
    let refs: Vec<&Seq> = seqs.iter().collect();
    let obj = Objective::response();
    let mut opt = AdamW::<B>::new(OptimSection::default());
    let mut times = vec![];
    let mut phases = vec![];
    let mut loss = 0.0;
    let resp: usize = refs.iter().map(|s| s.ids.len() - s.start).sum();
    // a GPU backend queues work: wait for it before reading the clock (reading the loss
    // waits for the forward pass on every backend)
    let sync = || B::sync(device).map_err(|e| anyhow::anyhow!("{e:?}"));
    for step in 0..=a.steps {
        // the same work as `trainer::accumulate` with one micro-batch, timed per phase
        let t = Instant::now();
        let (l, _) = batch_loss(&model, &refs, &obj, device);
        let l = l / resp as f64;
        loss = l.clone().into_scalar().elem::<f64>();
        let t_fwd = t.elapsed().as_secs_f64();
        let grads = GradientsParams::from_grads(l.backward(), &model);
        sync()?;
        let t_bwd = t.elapsed().as_secs_f64() - t_fwd;
        let (m, _) = opt.step(model, grads, 1e-5);
        model = m;
        sync()?;
        let total = t.elapsed().as_secs_f64();
        if step > 0 {
            times.push(total);
            phases.push([t_fwd, t_bwd, total - t_fwd - t_bwd]);
        }
    }
    let s = median(times);
    let ph = |i: usize| median(phases.iter().map(|p| p[i]).collect());
    let gpu_mb = match a.device {
        DeviceSpec::Cuda(i) => nvidia_used_mb(i),
        _ => None,
    };
    Ok(serde_json::json!({
        "s_per_step": s,
        "tokens_per_s": (a.batch * a.seq) as f64 / s,
        "peak_rss_mb": peak_rss_mb(),
        "gpu_mb": gpu_mb,
        "loss": loss,
        "forward_s": ph(0),
        "backward_s": ph(1),
        "optimizer_s": ph(2),
    }))
}

/// Run a command and parse the JSON object on its last stdout line.
fn json_of(cmd: &mut std::process::Command, what: &str) -> Result<serde_json::Value> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!("{what} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or("");
    serde_json::from_str(line).with_context(|| format!("parsing {what}'s output: {line:?}"))
}

fn main() -> Result<()> {
    let a = Args::parse();
    if let Some(w) = &a.child {
        println!("{}", run_on(a.device, Child(&a, w))?);
        return Ok(());
    }
    let workloads: Vec<String> = if a.only.is_empty() {
        WORKLOADS.map(String::from).to_vec()
    } else {
        a.only.clone()
    };
    if let Some(w) = workloads.iter().find(|w| !WORKLOADS.contains(&w.as_str())) {
        bail!(
            "--only: unknown workload {w:?}; allowed: {}",
            WORKLOADS.join(", ")
        );
    }
    if a.response + 1 > a.seq {
        bail!("--response {} must be below --seq {}", a.response, a.seq);
    }
    let python = a.python.clone().or_else(|| {
        let p = PathBuf::from(".venv-bench/bin/python");
        p.exists().then_some(p)
    });
    let me = std::env::current_exe()?;
    // PyTorch's device for ours (it has no WGPU), its compute dtype and its init
    let torch_device = match a.device {
        DeviceSpec::Cpu => Some("cpu".to_string()),
        DeviceSpec::Cuda(i) => Some(format!("cuda:{i}")),
        DeviceSpec::Wgpu(_) => None,
    };
    if torch_device.is_none() && !a.no_pytorch {
        eprintln!("PyTorch has no WGPU backend: candor's side only");
    }
    let torch_setup = [
        torch_device.clone().unwrap_or_default(),
        a.dtype.clone(),
        (if a.random_init { "random" } else { "weights" }).to_string(),
    ];
    let shape = [
        a.batch.to_string(),
        a.seq.to_string(),
        a.response.to_string(),
        a.steps.to_string(),
    ];
    if a.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    // per workload, one (candor, PyTorch) pair per round
    let mut rows: Vec<(String, Vec<Round>)> = vec![];
    let mut discarded: Vec<String> = vec![];
    for w in &workloads {
        let mut rounds = vec![];
        let mut r = 1;
        let mut tries = 0;
        while r <= a.rounds {
            eprintln!("{w}: candor … (round {r}/{})", a.rounds);
            let ours = with_steal(|| {
                json_of(
                    std::process::Command::new(&me)
                        .arg("--model")
                        .arg(&a.model)
                        .args(["--batch", &shape[0], "--seq", &shape[1]])
                        .args(["--response", &shape[2], "--steps", &shape[3]])
                        .args(["--device", &a.device.to_string(), "--dtype", &a.dtype])
                        .args(a.random_init.then_some("--random-init"))
                        .args(["--child", w]),
                    "the candor side",
                )
            })?;
            let theirs = match (&python, a.no_pytorch || torch_device.is_none()) {
                (Some(py), false) => {
                    eprintln!("{w}: pytorch … (round {r}/{})", a.rounds);
                    Some(with_steal(|| {
                        json_of(
                            std::process::Command::new(py)
                                .arg("scripts/bench_train_pytorch.py")
                                .arg(&a.model)
                                .arg(w)
                                .args(&shape)
                                .args(&torch_setup),
                            "scripts/bench_train_pytorch.py",
                        )
                    })?)
                }
                _ => None,
            };
            let steal = [Some(&ours), theirs.as_ref()]
                .map(|v| v.and_then(|v| v["steal_pct"].as_f64()).unwrap_or(0.0));
            if steal.iter().any(|&s| s > a.max_steal) && tries < 3 {
                tries += 1;
                eprintln!(
                    "{w}: round {r} saw {:.0}% / {:.0}% steal (above --max-steal {}): again",
                    steal[0], steal[1], a.max_steal
                );
                discarded.push(format!("{w} {:.0}%/{:.0}%", steal[0], steal[1]));
                continue;
            }
            rounds.push((ours, theirs));
            (r, tries) = (r + 1, 0);
        }
        rows.push((w.clone(), rounds));
    }
    println!(
        "model: {}{}  {} on {}, batch {}×{} tokens ({} response tokens in *-sft), {} CPU threads",
        a.model.display(),
        if a.random_init { " (random init)" } else { "" },
        a.dtype,
        a.device,
        a.batch,
        a.seq,
        a.response,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    if let Some(t) = rows.iter().flat_map(|r| &r.1).find_map(|r| r.1.as_ref()) {
        println!(
            "pytorch: torch {} ({} threads)",
            t["torch"].as_str().unwrap_or("?"),
            t["threads"]
        );
    }
    if a.rounds > 1 {
        println!("median over {} alternating rounds", a.rounds);
    }
    println!(
        "{:<10} {:>10} {:>10} {:>10} {:>10} {:>7}   {:>10} {:>10}",
        "workload",
        "candor s",
        "torch s",
        "candor t/s",
        "torch t/s",
        "ratio",
        "candor MB",
        "torch MB"
    );
    // one figure of one side's JSON (NaN where PyTorch did not run)
    let g =
        |v: Option<&serde_json::Value>, k: &str| v.and_then(|v| v[k].as_f64()).unwrap_or(f64::NAN);
    let ratio = |(o, t): &Round| g(Some(o), "tokens_per_s") / g(t.as_ref(), "tokens_per_s");
    let ours =
        |rounds: &[Round], k: &str| median(rounds.iter().map(|(o, _)| g(Some(o), k)).collect());
    let theirs =
        |rounds: &[Round], k: &str| median(rounds.iter().map(|(_, t)| g(t.as_ref(), k)).collect());
    let tokens = (a.batch * a.seq) as f64;
    // which memory figure the table shows, and what it means
    let (memory, memory_note) = match a.device {
        DeviceSpec::Cuda(_) => (
            "gpu_mb",
            "GPU memory in use after the steps, from nvidia-smi: CUDA context and pools included",
        ),
        _ => ("peak_rss_mb", "peak RSS of the process"),
    };
    for (w, rounds) in &rows {
        // tokens/s from the median step time, so that both columns describe the same step
        let (s_ours, s_theirs) = (ours(rounds, "s_per_step"), theirs(rounds, "s_per_step"));
        println!(
            "{:<10} {:>10.3} {:>10.3} {:>10.1} {:>10.1} {:>6.2}×   {:>10.0} {:>10.0}",
            w,
            s_ours,
            s_theirs,
            tokens / s_ours,
            tokens / s_theirs,
            median(rounds.iter().map(ratio).collect()),
            ours(rounds, memory),
            theirs(rounds, memory),
        );
        let steal = |v: Option<&serde_json::Value>| match g(v, "steal_pct") {
            s if s.is_nan() => "?".to_string(),
            s => format!("{s:.0}%"),
        };
        let each: Vec<String> = rounds
            .iter()
            .map(|r| {
                format!(
                    "{:.2}× (steal {}/{})",
                    ratio(r),
                    steal(Some(&r.0)),
                    steal(r.1.as_ref())
                )
            })
            .collect();
        println!("{:<10} per round: {}", "", each.join("  "));
    }
    println!("(MB: {memory_note})");
    println!(
        "(steal: the share of the host's CPU time the hypervisor gave to other guests during \
         candor's / PyTorch's run; above a few percent, that round's times are inflated)"
    );
    if !discarded.is_empty() {
        println!(
            "rounds run again for steal above {}% (candor/PyTorch): {}",
            a.max_steal,
            discarded.join(", ")
        );
    }
    println!(
        "candor time per step by phase (median): forward (incl. loss) / backward / clip + AdamW"
    );
    for (w, rounds) in &rows {
        println!(
            "{:<10} {:>6.3} s / {:>6.3} s / {:>6.3} s",
            w,
            ours(rounds, "forward_s"),
            ours(rounds, "backward_s"),
            ours(rounds, "optimizer_s"),
        );
    }
    Ok(())
}
