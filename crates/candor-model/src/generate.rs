//! Batched generation with a KV cache (greedy, temperature, top-p, seeded), and scoring of a
//! given continuation. Every generated token comes with its log-prob and the top-k log-probs
//! under the model's own (untempered) distribution — what SAR and DeepConf read.

use crate::model::{left_pad, tokens_tensor, KvCache, Llama, Positions};
use crate::tokenizer::Tokenizer;
use anyhow::Result;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use rand::{rngs::StdRng, Rng, SeedableRng};
use rayon::prelude::*;
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

thread_local! {
    /// A vocabulary-sized scratch row per thread for [`pick`] (a fresh 200 KB allocation per
    /// row and step went to the OS and back, page faults included).
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `(max, ln Σ exp(x))` of a row, the exponentials vectorised and summed in f64
/// ([`crate::fused::exp_shifted`]); `buf` receives `exp(x − max)`.
fn log_sum_exp(row: &[f32], buf: &mut [f32]) -> (f32, f64) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum = crate::fused::exp_shifted(row, max, 1.0, buf);
    (max, max as f64 + sum.ln())
}

/// log-softmax of one row (log-sum-exp in f64).
pub fn log_softmax(row: &[f32]) -> Vec<f32> {
    let (_, lse) = log_sum_exp(row, &mut vec![0.0; row.len()]);
    row.iter().map(|&x| (x as f64 - lse) as f32).collect()
}

/// The `k` largest entries of a row as `(id, value)`, best first, ties to the lower id: one
/// pass that keeps the best `k` sorted and skips every entry at or below the k-th (a select
/// over the whole vocabulary per row and step cost more than the rest of the host side).
fn top_k(row: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    if k == 0 {
        return best;
    }
    let mut floor = f32::NEG_INFINITY;
    for (i, &x) in row.iter().enumerate() {
        if best.len() == k && x.total_cmp(&floor).is_le() {
            continue;
        }
        let at = best.partition_point(|&(_, v)| v.total_cmp(&x).is_ge());
        best.insert(at, (i as u32, x));
        best.truncate(k);
        floor = best[best.len() - 1].1;
    }
    best
}

/// Draw from `softmax(logits / t)` restricted to the top-p nucleus; `buf` is scratch.
fn sample(logits: &[f32], max: f32, t: f32, top_p: f32, rng: &mut StdRng, buf: &mut [f32]) -> u32 {
    let total = crate::fused::exp_shifted(logits, max, 1.0 / t, buf);
    if top_p >= 1.0 {
        let mut u = rng.random::<f64>() * total;
        for (i, &w) in buf.iter().enumerate() {
            u -= w as f64;
            if u <= 0.0 {
                return i as u32;
            }
        }
        return buf.len().saturating_sub(1) as u32;
    }
    let mut probs: Vec<(u32, f64)> = buf
        .iter()
        .enumerate()
        .map(|(i, &w)| (i as u32, w as f64 / total))
        .collect();
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

/// What every row decoding from one slot reads off the slot's logits, computed once per slot:
/// the max, the log-sum-exp, and the top-k `(id, log-prob)` (at least one), all under the
/// model's untempered distribution.
struct SlotStats {
    max: f32,
    lse: f64,
    top: Vec<(u32, f32)>,
}

impl SlotStats {
    fn of(logits: &[f32], k: usize) -> Self {
        SCRATCH.with_borrow_mut(|buf| {
            buf.resize(logits.len(), 0.0);
            let (max, lse) = log_sum_exp(logits, buf);
            let top = top_k(logits, k.max(1))
                .into_iter()
                .map(|(i, x)| (i, (x as f64 - lse) as f32))
                .collect();
            Self { max, lse, top }
        })
    }

    /// The log-prob of the token whose logit is `x`.
    fn logprob(&self, x: f32) -> f32 {
        (x as f64 - self.lse) as f32
    }
}

/// One row's next token from its slot's logits: greedy at `t ≤ 0`, else drawn at temperature
/// `t` within the top-p nucleus.
fn pick(logits: &[f32], s: &SlotStats, t: f32, top_p: f32, rng: &mut StdRng) -> u32 {
    if t <= 0.0 {
        return s.top[0].0;
    }
    SCRATCH.with_borrow_mut(|buf| {
        buf.resize(logits.len(), 0.0);
        sample(logits, s.max, t, top_p, rng, buf)
    })
}

/// Logits of the last positions, flat `[rows × vocab]` on the host.
fn logits_host<B: Backend>(model: &Llama<B>, hidden_last: Tensor<B, 2>) -> Vec<f32> {
    model
        .logits(hidden_last)
        .into_data()
        .into_vec::<f32>()
        .expect("f32 logits")
}

/// The distinct prompts' KV cache, each one's key validity, the last prompt position's hidden
/// state `[distinct, hidden]`, and which distinct prompt each prompt row is; computed with as
/// little work as the prompts allow:
/// - a prompt that occurs several times (a question's K samples, its greedy answer) is
///   prefilled once;
/// - the head all distinct prompts share (a chat template's system prompt and instruction)
///   is prefilled once, for one row, and its keys and values are copied to every row; each
///   row then prefills only its own tail, left-padded after the shared head (`[head][pad]
///   [tail]`; the mask and the position ids skip the padding, so each real token sees the same
///   keys at the same positions as in a plain left-padded batch).
///
/// This is automatic prefix caching (vLLM's idea) within one call. The cache keeps room for
/// `reserve` more positions (the tokens to generate), which decoding then writes in place.
fn prefill<B: Backend>(
    model: &Llama<B>,
    prompts: &[Vec<u32>],
    pad: u32,
    reserve: usize,
    device: &B::Device,
) -> (KvCache<B>, Vec<Vec<bool>>, Tensor<B, 2>, Vec<usize>) {
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
    cache.reserve = reserve;
    if head > 0 {
        let valid = vec![vec![true; head]];
        let pos = Positions::new(&model.config, &valid, head, device);
        let tokens = tokens_tensor::<B>(&[distinct[0][..head].to_vec()], device);
        model.forward_hidden_from(tokens, &pos, &mut cache, head - 1);
        cache.select_rows(&vec![0; u]);
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
    (cache, valid, hidden, of_row)
}

/// Generate a continuation for each prompt (token ids), batched with left padding; repeated
/// prompts and the head all prompts share are prefilled once ([`prefill`]), and rows with the
/// same prompt decode as one row for as long as their tokens agree. Finished sequences leave
/// the batch. Row `i` samples from its own RNG seeded with `(seed, i)`, so the
/// result of a row does not depend on the rest of the batch.
pub fn generate<B: Backend>(
    model: &Llama<B>,
    tok: &Tokenizer,
    prompts: &[Vec<u32>],
    cfg: &GenConfig,
    device: &B::Device,
) -> Result<Vec<Generation>> {
    crate::device::on_cpu_pool::<B, _>(|| generate_inner(model, tok, prompts, cfg, device))
}

fn generate_inner<B: Backend>(
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
    // One cache row ("slot") per distinct history: prompt rows whose prompts and tokens so far
    // are the same share a slot, so a question's greedy answer and its K samples decode as one
    // row until their tokens differ, and the slot is then copied for each token drawn.
    // the cache keeps room for the new tokens, so decoding steps write them in place
    let (mut cache, mut valid, hidden, of_row) =
        prefill(model, prompts, tok.pad_id, cfg.max_new_tokens, device);
    let mut members: Vec<Vec<usize>> = vec![vec![]; valid.len()];
    for (i, &slot) in of_row.iter().enumerate() {
        members[slot].push(i);
    }
    let d = model.config.hidden_size;
    let mut last = hidden;
    for step in 0..cfg.max_new_tokens {
        let flat = logits_host(model, last);
        let v = model.config.vocab_size;
        // the host side of the step: each slot's statistics once, then every row's token, in
        // parallel (each row draws from its own RNG)
        let logits = |slot: usize| &flat[slot * v..(slot + 1) * v];
        let stats: Vec<SlotStats> = flat
            .par_chunks(v)
            .map(|l| SlotStats::of(l, cfg.top_logprobs))
            .collect();
        let picked: Vec<u32> = {
            let mut rng_of: Vec<Option<&mut StdRng>> = rngs.iter_mut().map(Some).collect();
            let rows: Vec<(usize, usize, &mut StdRng)> = members
                .iter()
                .enumerate()
                .flat_map(|(slot, m)| m.iter().map(move |&i| (slot, i)))
                .map(|(slot, i)| (slot, i, rng_of[i].take().expect("rows are in one slot")))
                .collect();
            rows.into_par_iter()
                .map(|(slot, i, rng)| {
                    pick(logits(slot), &stats[slot], temperature(i), cfg.top_p, rng)
                })
                .collect()
        };
        // the next step's slots: per slot, one for each token its unfinished rows drew
        let (mut source, mut next, mut next_members): (Vec<usize>, Vec<u32>, Vec<Vec<usize>>) =
            (vec![], vec![], vec![]);
        let mut picked = picked.into_iter();
        for (slot, m) in members.iter().enumerate() {
            let first = next.len();
            for &i in m {
                let id = picked.next().expect("one pick per row");
                let (g, st) = (&mut out[i], &stats[slot]);
                g.tokens.push(id);
                g.logprobs.push(st.logprob(logits(slot)[id as usize]));
                g.top
                    .push(st.top[..cfg.top_logprobs.min(st.top.len())].to_vec());
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
                if done || step + 1 == cfg.max_new_tokens {
                    continue;
                }
                match (first..next.len()).find(|&j| next[j] == id) {
                    Some(j) => next_members[j].push(i),
                    None => {
                        source.push(slot);
                        next.push(id);
                        next_members.push(vec![i]);
                    }
                }
            }
        }
        if next.is_empty() {
            break;
        }
        if !source.iter().copied().eq(0..members.len()) {
            cache.select_rows(&source);
            valid = source.iter().map(|&r| valid[r].clone()).collect();
        }
        members = next_members;
        valid.iter_mut().for_each(|v| v.push(true));
        let pos = Positions::new(&model.config, &valid, 1, device);
        let ids: Vec<Vec<u32>> = next.iter().map(|&t| vec![t]).collect();
        let h = model.forward_hidden(tokens_tensor::<B>(&ids, device), &pos, &mut cache);
        last = h.reshape([next.len(), d]);
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

/// The residual stream after the first `layers` decoder layers at the last token of each
/// row (rows left-padded into one batch), `[row][hidden]`: what a probe of an intermediate
/// layer reads (HF's `hidden_states[layers]`).
pub fn last_residuals<B: Backend>(
    model: &Llama<B>,
    rows: &[Vec<u32>],
    layers: usize,
    pad_id: u32,
    device: &B::Device,
) -> Vec<Vec<f32>> {
    if rows.is_empty() {
        return vec![];
    }
    assert!(rows.iter().all(|r| !r.is_empty()), "rows need a token");
    let (toks, valid) = left_pad(rows, pad_id);
    let t = valid[0].len();
    let pos = Positions::new(&model.config, &valid, t, device);
    let mut cache = KvCache::new(model.config.num_hidden_layers);
    let tokens = tokens_tensor::<B>(&toks, device);
    let x = model.residual_after(tokens, &pos, &mut cache, layers);
    let h: Vec<f32> = x.narrow(1, t - 1, 1).into_data().iter::<f32>().collect();
    h.chunks(model.config.hidden_size)
        .map(<[f32]>::to_vec)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vocabulary-sized row with repeated values (ties) and a wide range.
    fn row(seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..49_152)
            .map(|_| (rng.random::<f32>() * 40.0 - 30.0).round() / 4.0)
            .collect()
    }

    #[test]
    fn top_k_is_a_full_sort_cut_at_k() {
        for seed in 0..4 {
            let r = row(seed);
            let mut all: Vec<(u32, f32)> =
                r.iter().enumerate().map(|(i, &x)| (i as u32, x)).collect();
            all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            for k in [0, 1, 5, 20] {
                assert_eq!(top_k(&r, k), all[..k].to_vec(), "seed {seed}, k {k}");
            }
        }
        assert_eq!(top_k(&[1.0, 3.0], 5), vec![(1, 3.0), (0, 1.0)]);
    }

    #[test]
    fn log_softmax_matches_f64_reference() {
        let r = row(7);
        let max = r.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = max + r.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
        for (got, &x) in log_softmax(&r).iter().zip(&r) {
            assert!(
                (*got as f64 - (x as f64 - lse)).abs() < 1e-5,
                "{got} vs {}",
                x as f64 - lse
            );
        }
    }

    #[test]
    fn sampling_follows_the_tempered_distribution() {
        // three tokens at log-odds 0, ln 2, ln 3 → probabilities 1/6, 2/6, 3/6 at t = 1, and
        // 1/14, 4/14, 9/14 at t = 0.5
        let logits = [0.0, 2f32.ln(), 3f32.ln()];
        for (t, want) in [(1.0f32, [1.0, 2.0, 3.0]), (0.5, [1.0, 4.0, 9.0])] {
            let total: f64 = want.iter().sum();
            let mut rng = StdRng::seed_from_u64(3);
            let mut counts = [0usize; 3];
            let n = 60_000;
            let stats = SlotStats::of(&logits, 2);
            for _ in 0..n {
                let id = pick(&logits, &stats, t, 1.0, &mut rng);
                let (lp, top) = (stats.logprob(logits[id as usize]), &stats.top);
                counts[id as usize] += 1;
                assert!((lp as f64 - (want_lp(&logits, id))).abs() < 1e-6);
                assert_eq!(top.len(), 2);
            }
            for (c, w) in counts.iter().zip(want) {
                let p = *c as f64 / n as f64;
                assert!((p - w / total).abs() < 0.01, "t {t}: {counts:?}");
            }
        }
        // greedy takes the top token
        let mut rng = StdRng::seed_from_u64(0);
        let stats = SlotStats::of(&logits, 0);
        assert_eq!(pick(&logits, &stats, 0.0, 1.0, &mut rng), 2);
    }

    /// The untempered log-prob of token `id`.
    fn want_lp(logits: &[f32], id: u32) -> f64 {
        let lse = logits.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln();
        logits[id as usize] as f64 - lse
    }
}
