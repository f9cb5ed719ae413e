//! The training loop: examples → token sequences with a loss mask (response tokens and the end
//! of turn only) → micro-batches with gradient accumulation, loss normalised by the response
//! tokens of the whole global batch → AdamW step → logs and checkpoints.

use crate::checkpoint;
use crate::curriculum;
use crate::optim::AdamW;
use crate::recipe::Recipe;
use crate::schedule::lr_at;
use crate::weighting;
use anyhow::{bail, Result};
use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use candor_data::config::Style;
use candor_data::Example;
use candor_model::model::{tokens_tensor, KvCache, Positions};
use candor_model::{Llama, Tokenizer};
use std::io::Write;
use std::time::Instant;

/// One training sequence: prompt + response + end of turn; loss on `ids[start..]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Seq {
    pub ids: Vec<u32>,
    /// Index of the first response token.
    pub start: usize,
    pub weight: f32,
}

/// The text that follows the prompt: plain prompts (`…\nA:`) get a space before the answer.
pub fn response_text(style: Style, target: &str) -> String {
    match style {
        Style::Plain => format!(" {target}"),
        Style::Chat => target.to_string(),
    }
}

/// Tokenise examples; those longer than `max_len` tokens are dropped (counted).
pub fn encode(
    tok: &Tokenizer,
    examples: &[Example],
    weights: &[f64],
    style: Style,
    max_len: usize,
) -> Result<(Vec<Seq>, Vec<usize>, usize)> {
    let eos = *tok.stop_ids.first().ok_or_else(|| {
        anyhow::anyhow!("the tokenizer has no end-of-turn / EOS token to train on")
    })?;
    let mut seqs = vec![];
    let mut kept_idx = vec![];
    let mut dropped = 0;
    for (i, e) in examples.iter().enumerate() {
        let mut ids = tok.encode(&e.prompt, false)?;
        let start = ids.len();
        ids.extend(tok.encode(&response_text(style, &e.target), false)?);
        ids.push(eos);
        if ids.len() > max_len {
            dropped += 1;
            continue;
        }
        seqs.push(Seq {
            ids,
            start,
            weight: weights[i] as f32,
        });
        kept_idx.push(i);
    }
    Ok((seqs, kept_idx, dropped))
}

/// Sum over the batch of `weight · NLL` of each response token, and the number of those
/// tokens. Logits are computed only at the positions that predict a response token.
pub fn batch_loss<B: Backend>(
    model: &Llama<B>,
    seqs: &[&Seq],
    device: &B::Device,
) -> (Tensor<B, 1>, usize) {
    let b = seqs.len();
    let t = seqs.iter().map(|s| s.ids.len()).max().unwrap_or(1);
    let pad = 0u32;
    let rows: Vec<Vec<u32>> = seqs
        .iter()
        .map(|s| {
            let mut r = s.ids.clone();
            r.resize(t, pad);
            r
        })
        .collect();
    let valid: Vec<Vec<bool>> = seqs
        .iter()
        .map(|s| (0..t).map(|j| j < s.ids.len()).collect())
        .collect();
    let pos = Positions::new(&model.config, &valid, t, device);
    let mut cache = KvCache::new(model.config.num_hidden_layers);
    // the first position that predicts a response token; the last layer skips those before it
    let from = seqs.iter().map(|s| s.start.max(1) - 1).min().unwrap_or(0);
    let tokens = tokens_tensor::<B>(&rows, device);
    let hidden = model.forward_hidden_from(tokens, &pos, &mut cache, from);
    let (d, tail) = (model.config.hidden_size, t - from);
    let mut at = vec![];
    let mut targets = vec![];
    let mut w = vec![];
    for (i, s) in seqs.iter().enumerate() {
        for p in s.start..s.ids.len() {
            at.push((i * tail + p - 1 - from) as i64);
            targets.push(s.ids[p]);
            w.push(s.weight);
        }
    }
    let n = at.len();
    let h = hidden.reshape([b * tail, d]).select(
        0,
        Tensor::<B, 1, Int>::from_data(TensorData::new(at, [n]), device),
    );
    (model.nll(h, &targets, &w), n)
}

/// Gradients of one optimizer step over `batch`, in micro-batches of `micro`: each micro-batch
/// loss is divided by the response tokens of the *whole* batch, so the summed gradients are
/// the same whatever the split. Returns the gradients and the batch loss (mean weighted NLL
/// per response token).
pub fn accumulate<B: AutodiffBackend>(
    model: &Llama<B>,
    batch: &[&Seq],
    micro: usize,
    seed: u64,
    step: usize,
    device: &B::Device,
) -> (GradientsParams, f64) {
    let resp_tokens: usize = batch.iter().map(|s| s.ids.len() - s.start).sum();
    let mut acc = GradientsAccumulator::<Llama<B>>::new();
    let mut loss_sum = 0.0;
    for (mi, m) in batch.chunks(micro.max(1)).enumerate() {
        B::seed(device, step_seed(seed, step, mi));
        let (loss, _) = batch_loss(model, m, device);
        let loss = loss / resp_tokens as f64;
        loss_sum += loss.clone().into_scalar().elem::<f64>();
        let grads = GradientsParams::from_grads(loss.backward(), model);
        acc.accumulate(model, grads);
    }
    (acc.grads(), loss_sum)
}

/// Summary of a finished (or resumed-and-finished) run.
pub struct Trained<B: AutodiffBackend> {
    pub model: Llama<B>,
    pub steps: usize,
    pub last_loss: f64,
    pub tokens_per_s: f64,
}

/// Per-step dropout seed, so that a resumed step draws the same masks.
fn step_seed(seed: u64, step: usize, micro: usize) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((step as u64) << 16 | micro as u64)
}

/// Train `model` on `examples` as the recipe says, checkpointing into `<run>/`.
pub fn train<B: AutodiffBackend>(
    r: &Recipe,
    mut model: Llama<B>,
    tok: &Tokenizer,
    examples: &[Example],
    device: &B::Device,
) -> Result<Trained<B>> {
    let run = r.run_dir();
    std::fs::create_dir_all(&run)?;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run.join("train.log"))?;
    let mut say = |line: String| {
        eprintln!("{line}");
        let _ = writeln!(log, "{line}");
    };
    let conf: Vec<(f64, bool)> = examples.iter().map(|e| (e.confidence, e.correct)).collect();
    let weights = weighting::weights(&r.weighting, &conf);
    if r.weighting.enabled {
        say(format!("loss weights: {}", weighting::histogram(&weights)));
    }
    let (seqs, kept, dropped) = encode(tok, examples, &weights, r.data.style, r.data.max_length)?;
    if dropped > 0 {
        say(format!(
            "dropped {dropped} examples longer than data.max_length = {} tokens",
            r.data.max_length
        ));
    }
    if seqs.is_empty() {
        bail!("no training examples left (dataset empty, or every example longer than data.max_length)");
    }
    let kept_conf: Vec<(f64, bool)> = kept.iter().map(|&i| conf[i]).collect();
    let ordered = curriculum::order(&r.curriculum, &kept_conf);
    let g = r.train.global_batch;
    let total = if r.train.max_steps > 0 {
        r.train.max_steps
    } else {
        (r.train.epochs * seqs.len()).div_ceil(g)
    };
    let mut opt = AdamW::<B>::new(r.optim.clone());
    let mut start = 0;
    if r.checkpoint.resume {
        if let Some((dir, state)) = checkpoint::latest(&run)? {
            checkpoint::check_compatible(&state, r)?;
            model = checkpoint::load(&dir, model, &mut opt, device)?;
            start = state.step;
            say(format!(
                "resumed from {} (step {start} of {total})",
                dir.display()
            ));
        }
    }
    say(format!(
        "training {} examples, {total} steps of {g} ({}×{} accumulation), lr {} → {}, {}, {}",
        seqs.len(),
        r.train.accumulation(),
        r.train.micro_batch,
        r.optim.lr,
        r.optim.min_lr,
        match &r.lora {
            Some(l) => format!("LoRA rank {} on {}", l.rank, l.targets.join(",")),
            None => "full fine-tuning".into(),
        },
        match r.model.dtype {
            crate::recipe::Dtype::F32 => "f32",
            crate::recipe::Dtype::Bf16 => "bf16 compute with f32 weights",
        }
    ));
    let tb = if r.log.tensorboard {
        Some(crate::tb::Scalars::new(&run.join("tb"))?)
    } else {
        None
    };
    let pb = crate::pipeline::bar((total - start) as u64, "training");
    let t0 = Instant::now();
    let mut tokens_seen = 0usize;
    let mut last_loss = f64::NAN;
    for step in start..total {
        let idx = curriculum::step_batch(&r.curriculum, &ordered, r.train.seed, step, total, g);
        let batch: Vec<&Seq> = idx.iter().map(|&i| &seqs[i]).collect();
        let (grads, loss_sum) = accumulate(
            &model,
            &batch,
            r.train.micro_batch,
            r.train.seed,
            step,
            device,
        );
        tokens_seen += batch.iter().map(|s| s.ids.len()).sum::<usize>();
        if !loss_sum.is_finite() {
            pb.abandon();
            bail!(
                "loss is {loss_sum} at step {}: stopping; the last good checkpoint in {} is kept (lower optim.lr or check the data)",
                step + 1,
                run.display()
            );
        }
        let lr = lr_at(&r.optim, step, total);
        let (m, gnorm) = opt.step(model, grads, lr);
        model = m;
        last_loss = loss_sum;
        let done = step + 1;
        let tps = tokens_seen as f64 / t0.elapsed().as_secs_f64();
        pb.set_position((done - start) as u64);
        pb.set_message(format!("loss {loss_sum:.4} lr {lr:.2e} {tps:.0} tok/s"));
        if done % r.log.every == 0 || done == total {
            pb.suspend(|| {
                say(format!(
                    "step {done}/{total} loss {loss_sum:.4} lr {lr:.3e} grad_norm {gnorm:.3} tokens/s {tps:.0}"
                ))
            });
            if let Some(tb) = &tb {
                tb.add(
                    done,
                    &[
                        ("loss", loss_sum),
                        ("lr", lr),
                        ("grad_norm", gnorm),
                        ("tokens_per_s", tps),
                    ],
                )?;
            }
        }
        if (r.checkpoint.every > 0 && done % r.checkpoint.every == 0) || done == total {
            checkpoint::save(&run, r, &model, &opt, done)?;
        }
    }
    pb.finish_and_clear();
    Ok(Trained {
        model,
        steps: total,
        last_loss,
        tokens_per_s: tokens_seen as f64 / t0.elapsed().as_secs_f64().max(1e-9),
    })
}

use burn::tensor::ElementConversion;

/// The inference copy of a trained model with LoRA merged, for export and evaluation.
pub fn merged<B: AutodiffBackend>(model: &Llama<B>) -> Llama<B::InnerBackend> {
    let mut m = model.valid();
    m.merge_lora();
    m
}
