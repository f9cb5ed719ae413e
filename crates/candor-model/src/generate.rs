//! Batched generation with a KV cache (greedy, temperature, top-p, seeded), and scoring of a
//! given continuation. Every generated token comes with its log-prob and the top-k log-probs
//! under the model's own (untempered) distribution — what SAR and DeepConf read.

use crate::model::{left_pad, tokens_tensor, KvCache, Llama, Positions};
use crate::tokenizer::Tokenizer;
use anyhow::Result;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GenConfig {
    pub max_new_tokens: usize,
    /// 0 = greedy.
    pub temperature: f32,
    /// Nucleus sampling mass (1 = off).
    pub top_p: f32,
    /// How many top log-probs to keep per generated token.
    pub top_logprobs: usize,
    pub seed: u64,
    /// Token ids that end a sequence (EOS / end of turn); the stop token is kept in `tokens`.
    pub stop_ids: Vec<u32>,
    /// Strings that end a sequence; the text is cut before them. Leading whitespace of the
    /// generation is skipped first, so `"\n"` means "the first non-empty line".
    pub stop_strings: Vec<String>,
    /// One seed per prompt row (overrides `seed`), so a row's samples do not depend on which
    /// batch it was in — what a resumable answering run needs.
    #[serde(default)]
    pub row_seeds: Vec<u64>,
    /// One temperature per prompt row (overrides `temperature`; 0 = greedy), so one call can
    /// decode a question's greedy answer and its samples from one prefill.
    #[serde(default)]
    pub row_temperatures: Vec<f32>,
}

impl Default for GenConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            temperature: 0.0,
            top_p: 1.0,
            top_logprobs: 20,
            seed: 0,
            stop_ids: vec![],
            stop_strings: vec![],
            row_seeds: vec![],
            row_temperatures: vec![],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    StopToken,
    StopString,
    Length,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Generation {
    pub tokens: Vec<u32>,
    /// Log-prob of each generated token.
    pub logprobs: Vec<f32>,
    /// Top-k `(id, log-prob)` at each step, best first.
    pub top: Vec<Vec<(u32, f32)>>,
    /// Decoded text without special tokens, cut at a stop string.
    pub text: String,
    pub finish: Finish,
}

/// log-softmax of one row, accumulated in f64.
pub fn log_softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|&x| ((x - max) as f64).exp()).sum();
    let lse = max as f64 + sum.ln();
    row.iter().map(|&x| (x as f64 - lse) as f32).collect()
}

fn top_k(lp: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut idx: Vec<u32> = (0..lp.len() as u32).collect();
    let k = k.min(lp.len());
    if k == 0 {
        return vec![];
    }
    idx.select_nth_unstable_by(k - 1, |&a, &b| {
        lp[b as usize].total_cmp(&lp[a as usize]).then(a.cmp(&b))
    });
    let mut top: Vec<(u32, f32)> = idx[..k].iter().map(|&i| (i, lp[i as usize])).collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    top
}

/// Draw from `softmax(logits / t)` restricted to the top-p nucleus.
fn sample(logits: &[f32], temperature: f32, top_p: f32, rng: &mut StdRng) -> u32 {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &x)| (i as u32, (((x - max) / temperature) as f64).exp()))
        .collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= total);
    if top_p < 1.0 {
        probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut cum = 0.0;
        let mut keep = probs.len();
        for (i, p) in probs.iter().enumerate() {
            cum += p.1;
            if cum >= top_p as f64 {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
    }
    let mass: f64 = probs.iter().map(|p| p.1).sum();
    let mut u = rng.random::<f64>() * mass;
    for &(i, p) in &probs {
        u -= p;
        if u <= 0.0 {
            return i;
        }
    }
    probs.last().map(|p| p.0).unwrap_or(0)
}

/// Top-k `(id, log-prob)` and the full log-softmax of one row.
type RowStats = (Vec<(u32, f32)>, Vec<f32>);

/// Logits of the last positions, flat `[rows × vocab]` on the host.
fn logits_host<B: Backend>(model: &Llama<B>, hidden_last: Tensor<B, 2>) -> Vec<f32> {
    model
        .logits(hidden_last)
        .into_data()
        .into_vec::<f32>()
        .expect("f32 logits")
}

/// The prompts' KV cache, each row's key validity, and the last prompt position's hidden
/// state `[rows, hidden]`, computed with as little work as the prompts allow:
/// - a prompt that occurs several times (a question's K samples, its greedy answer) is
///   prefilled once and its cache rows are copied;
/// - the head all distinct prompts share (a chat template's system prompt and instruction)
///   is prefilled once, for one row, and its keys and values are copied to every row; each
///   row then prefills only its own tail, left-padded after the shared head (`[head][pad]
///   [tail]`; the mask and the position ids skip the padding, so each real token sees the same
///   keys at the same positions as in a plain left-padded batch).
///
/// This is automatic prefix caching (vLLM's idea) within one call.
fn prefill<B: Backend>(
    model: &Llama<B>,
    prompts: &[Vec<u32>],
    pad: u32,
    device: &B::Device,
) -> (KvCache<B>, Vec<Vec<bool>>, Tensor<B, 2>) {
    let d = model.config.hidden_size;
    // distinct prompts, in order of first occurrence, and each row's distinct prompt
    let mut distinct: Vec<&Vec<u32>> = vec![];
    let mut first: std::collections::HashMap<&Vec<u32>, usize> = Default::default();
    let of_row: Vec<usize> = prompts
        .iter()
        .map(|p| {
            *first.entry(p).or_insert_with(|| {
                distinct.push(p);
                distinct.len() - 1
            })
        })
        .collect();
    let u = distinct.len();
    // the head every distinct prompt shares (none for a single one), leaving each prompt at
    // least its last token to prefill on its own
    let head = match distinct.split_first() {
        Some((first, rest)) if !rest.is_empty() => distinct
            .iter()
            .map(|p| {
                let common = p.iter().zip(*first).take_while(|(a, b)| a == b).count();
                common.min(p.len() - 1)
            })
            .min()
            .unwrap_or(0),
        _ => 0,
    };
    let mut cache = KvCache::new(model.config.num_hidden_layers);
    if head > 0 {
        let valid = vec![vec![true; head]];
        let pos = Positions::new(&model.config, &valid, head, device);
        let tokens = tokens_tensor::<B>(&[distinct[0][..head].to_vec()], device);
        model.forward_hidden_from(tokens, &pos, &mut cache, head - 1);
        cache.select_rows(Tensor::<B, 1, Int>::zeros([u], device));
    }
    let tails: Vec<Vec<u32>> = distinct.iter().map(|p| p[head..].to_vec()).collect();
    let (toks, tail_valid) = left_pad(&tails, pad);
    let t = tail_valid[0].len();
    let valid: Vec<Vec<bool>> = tail_valid
        .into_iter()
        .map(|v| [vec![true; head], v].concat())
        .collect();
    let pos = Positions::new(&model.config, &valid, t, device);
    // only the last prompt position's hidden state is needed (the cache still gets every one)
    let hidden = model
        .forward_hidden_from(tokens_tensor::<B>(&toks, device), &pos, &mut cache, t - 1)
        .reshape([u, d]);
    if u == prompts.len() {
        return (cache, valid, hidden);
    }
    let idx: Vec<i64> = of_row.iter().map(|&i| i as i64).collect();
    let rows = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [prompts.len()]), device);
    cache.select_rows(rows.clone());
    let valid = of_row.iter().map(|&i| valid[i].clone()).collect();
    (cache, valid, hidden.select(0, rows))
}

/// Generate a continuation for each prompt (token ids), batched with left padding; repeated
/// prompts and the head all prompts share are prefilled once ([`prefill`]). Finished
/// sequences leave the batch. Row `i` samples from its own RNG seeded with `(seed, i)`, so the
/// result of a row does not depend on the rest of the batch.
pub fn generate<B: Backend>(
    model: &Llama<B>,
    tok: &Tokenizer,
    prompts: &[Vec<u32>],
    cfg: &GenConfig,
    device: &B::Device,
) -> Result<Vec<Generation>> {
    let n = prompts.len();
    if n == 0 {
        return Ok(vec![]);
    }
    let mut out: Vec<Generation> = (0..n)
        .map(|_| Generation {
            tokens: vec![],
            logprobs: vec![],
            top: vec![],
            text: String::new(),
            finish: Finish::Length,
        })
        .collect();
    if cfg.max_new_tokens == 0 {
        return Ok(out);
    }
    if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
        anyhow::bail!("prompt {i} is empty: generation needs at least one prompt token");
    }
    // a prompt the context cannot hold is refused before anything is allocated for it
    let context = model.config.max_position_embeddings;
    if let Some((i, p)) = prompts
        .iter()
        .enumerate()
        .find(|(_, p)| p.len() + cfg.max_new_tokens > context)
    {
        anyhow::bail!(
            "prompt {i} has {} tokens; with {} new tokens it does not fit the model's context of \
             {context} tokens (max_position_embeddings)",
            p.len(),
            cfg.max_new_tokens
        );
    }
    anyhow::ensure!(
        cfg.row_seeds.is_empty() || cfg.row_seeds.len() == n,
        "row_seeds has {} seeds for {n} prompts",
        cfg.row_seeds.len()
    );
    let mut rngs: Vec<StdRng> = (0..n)
        .map(|i| match cfg.row_seeds.get(i) {
            Some(&s) => StdRng::seed_from_u64(s),
            None => StdRng::seed_from_u64(cfg.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i as u64),
        })
        .collect();
    anyhow::ensure!(
        cfg.row_temperatures.is_empty() || cfg.row_temperatures.len() == n,
        "row_temperatures has {} temperatures for {n} prompts",
        cfg.row_temperatures.len()
    );
    let temperature = |i: usize| {
        cfg.row_temperatures
            .get(i)
            .copied()
            .unwrap_or(cfg.temperature)
    };
    let mut active: Vec<usize> = (0..n).collect();
    let (mut cache, mut valid, hidden) = prefill(model, prompts, tok.pad_id, device);
    let d = model.config.hidden_size;
    let mut last = hidden;
    for step in 0..cfg.max_new_tokens {
        let flat = logits_host(model, last);
        let v = model.config.vocab_size;
        // log-softmax and top-k of each row (the host side of a decoding step)
        let stats: Vec<RowStats> = flat
            .chunks(v)
            .map(|logits| {
                let lp = log_softmax(logits);
                let top = top_k(&lp, cfg.top_logprobs.max(1));
                (top, lp)
            })
            .collect();
        let mut next = Vec::with_capacity(active.len());
        let mut keep = Vec::with_capacity(active.len());
        for (r, &i) in active.iter().enumerate() {
            let logits = &flat[r * v..(r + 1) * v];
            let (top, lp) = &stats[r];
            let t = temperature(i);
            let id = if t <= 0.0 {
                top[0].0
            } else {
                sample(logits, t, cfg.top_p, &mut rngs[i])
            };
            let g = &mut out[i];
            g.tokens.push(id);
            g.logprobs.push(lp[id as usize]);
            g.top.push(top[..cfg.top_logprobs.min(top.len())].to_vec());
            let mut done = false;
            if cfg.stop_ids.contains(&id) {
                g.finish = Finish::StopToken;
                done = true;
            } else if !cfg.stop_strings.is_empty() {
                let text = tok.decode(&g.tokens, true)?;
                let text = text.trim_start();
                if cfg.stop_strings.iter().any(|s| text.contains(s.as_str())) {
                    g.finish = Finish::StopString;
                    done = true;
                }
            }
            if !done && step + 1 < cfg.max_new_tokens {
                next.push(id);
                keep.push(r);
            }
        }
        if keep.is_empty() {
            break;
        }
        if keep.len() < active.len() {
            let idx: Vec<i64> = keep.iter().map(|&r| r as i64).collect();
            cache.select_rows(Tensor::<B, 1, Int>::from_data(
                TensorData::new(idx, [keep.len()]),
                device,
            ));
            valid = keep.iter().map(|&r| valid[r].clone()).collect();
            active = keep.iter().map(|&r| active[r]).collect();
        }
        valid.iter_mut().for_each(|v| v.push(true));
        let pos = Positions::new(&model.config, &valid, 1, device);
        let ids: Vec<Vec<u32>> = next.iter().map(|&t| vec![t]).collect();
        let h = model.forward_hidden(tokens_tensor::<B>(&ids, device), &pos, &mut cache);
        last = h.reshape([active.len(), d]);
    }
    for g in out.iter_mut() {
        let mut text = tok.decode(&g.tokens, true)?;
        if !cfg.stop_strings.is_empty() {
            text = text.trim_start().to_string();
        }
        for s in &cfg.stop_strings {
            if let Some(p) = text.find(s.as_str()) {
                text.truncate(p);
            }
        }
        g.text = text;
    }
    Ok(out)
}

/// Log-prob of each token of `continuation[i]` given `prompt[i]`, batched with left padding.
/// Logits are computed only at the positions that predict continuation tokens.
pub fn score<B: Backend>(
    model: &Llama<B>,
    prompts: &[Vec<u32>],
    continuations: &[Vec<u32>],
    pad_id: u32,
    device: &B::Device,
) -> Vec<Vec<f32>> {
    assert_eq!(prompts.len(), continuations.len());
    let n = prompts.len();
    if n == 0 {
        return vec![];
    }
    let rows: Vec<Vec<u32>> = prompts
        .iter()
        .zip(continuations)
        .map(|(p, c)| [p.as_slice(), c.as_slice()].concat())
        .collect();
    let (toks, valid) = left_pad(&rows, pad_id);
    let t = valid[0].len();
    let l = continuations.iter().map(|c| c.len()).max().unwrap_or(0);
    if l == 0 {
        return vec![vec![]; n];
    }
    let pos = Positions::new(&model.config, &valid, t, device);
    let mut cache = KvCache::new(model.config.num_hidden_layers);
    // positions t-l-1 .. t-2 predict the last l tokens
    let tokens = tokens_tensor::<B>(&toks, device);
    let hidden = model.forward_hidden_from(tokens, &pos, &mut cache, t - l - 1);
    let h = hidden.narrow(1, 0, l);
    let v = model.config.vocab_size;
    let flat: Vec<f32> = model.logits(h).into_data().iter::<f32>().collect();
    continuations
        .iter()
        .enumerate()
        .map(|(i, c)| {
            c.iter()
                .enumerate()
                .map(|(j, &id)| {
                    let p = l - c.len() + j; // index within the last-l window
                    let row = &flat[(i * l + p) * v..(i * l + p + 1) * v];
                    log_softmax(row)[id as usize]
                })
                .collect()
        })
        .collect()
}

/// Teacher-forced states at the end of each row (rows left-padded into one batch): the final
/// hidden state (after the last norm) at the last `k` positions, `[row][k][hidden]`, and the
/// next-token log-probs after the last token, `[row][vocab]`. What the expected-confidence and
/// probe readouts read after an answer.
pub fn tail_states<B: Backend>(
    model: &Llama<B>,
    rows: &[Vec<u32>],
    k: usize,
    pad_id: u32,
    device: &B::Device,
) -> (Vec<Vec<Vec<f32>>>, Vec<Vec<f32>>) {
    let n = rows.len();
    if n == 0 {
        return (vec![], vec![]);
    }
    assert!(
        rows.iter().all(|r| r.len() >= k && k >= 1),
        "rows need at least k ≥ 1 tokens"
    );
    let (toks, valid) = left_pad(rows, pad_id);
    let t = valid[0].len();
    let pos = Positions::new(&model.config, &valid, t, device);
    let mut cache = KvCache::new(model.config.num_hidden_layers);
    let tokens = tokens_tensor::<B>(&toks, device);
    let hidden = model.forward_hidden_from(tokens, &pos, &mut cache, t - k); // [n, k, d]
    let d = model.config.hidden_size;
    let last = hidden.clone().narrow(1, k - 1, 1);
    let v = model.config.vocab_size;
    let logits: Vec<f32> = model.logits(last).into_data().iter::<f32>().collect();
    let h: Vec<f32> = hidden.into_data().iter::<f32>().collect();
    let states = (0..n)
        .map(|i| {
            (0..k)
                .map(|j| h[(i * k + j) * d..(i * k + j + 1) * d].to_vec())
                .collect()
        })
        .collect();
    let lps = (0..n)
        .map(|i| log_softmax(&logits[i * v..(i + 1) * v]))
        .collect();
    (states, lps)
}
