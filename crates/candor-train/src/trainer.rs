//! The training loop: examples → token sequences with a loss mask → micro-batches with gradient
//! accumulation, loss normalised by the trained tokens of the whole global batch → AdamW step →
//! logs and checkpoints.
//!
//! The loss mask (`Objective`, `encode`): under `loss_on = "confidence"` the prompt and the
//! model's own answer are context; the confidence line and the end of turn carry cross-entropy,
//! except the token that decides the value, which carries a proper scoring rule over the
//! model's distribution on the value set (`value_loss`); and each answer token carries a soft
//! cross-entropy to the starting model's distribution there (`answer_kl`), so the answers stay.
//! Under `loss_on = "response"` the whole response carries cross-entropy.

use crate::checkpoint;
use crate::curriculum;
use crate::optim::AdamW;
use crate::recipe::{
    AnswerSource, AnswerTarget, ConfidenceLoss, ConfidenceTarget, LossOn, Recipe, ValueCeTarget,
};
use crate::schedule::lr_at;
use crate::weighting;
use anyhow::{bail, Context, Result};
use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use candor_confidence::ValueSet;
use candor_data::config::Style;
use candor_data::Example;
use candor_model::model::{tokens_tensor, KvCache, Positions};
use candor_model::{Llama, Tokenizer};
use std::io::Write;
use std::time::Instant;

/// One training sequence: prompt + response + end of turn, and which of its tokens carry
/// which loss. Token `p` is predicted at position `p − 1`.
#[derive(Clone, Debug, PartialEq)]
pub struct Seq {
    pub ids: Vec<u32>,
    /// Index of the first response token (the answer).
    pub start: usize,
    pub weight: f32,
    /// Index of the first token trained with cross-entropy: `start` when the whole response is
    /// trained, the confidence line's first token under `loss_on = "confidence"`.
    pub ce_from: usize,
    /// Soft targets (the starting model's distribution, probabilities) for the answer tokens
    /// `ids[start..start + soft.len()]`: the answer-keeping term. Empty when off.
    pub soft: Vec<Vec<(u32, f32)>>,
    /// The token that decides the confidence value and the target probability: trained with
    /// the scoring rule (or, under `ce`, its cross-entropy), weighted by `value_weight`.
    pub value: Option<(usize, f32)>,
    /// Under `train.value_digits = 2`: the token after the deciding one (the units digit of a
    /// two-digit value) and its target share (0, 0.1, …, 0.9), trained like the value token
    /// over the same digit tokens.
    pub unit: Option<(usize, f32)>,
}

impl Seq {
    /// A sequence whose whole response (`ids[start..]`) is trained with cross-entropy.
    pub fn response(ids: Vec<u32>, start: usize, weight: f32) -> Self {
        Self {
            ids,
            start,
            weight,
            ce_from: start,
            soft: vec![],
            value: None,
            unit: None,
        }
    }

    /// Tokens the loss is normalised by: the trained response tokens (the value token
    /// included, the soft answer targets not).
    pub fn loss_tokens(&self) -> usize {
        self.ids.len() - self.ce_from
    }

    /// The first token that carries any loss.
    fn first_loss(&self) -> usize {
        if self.soft.is_empty() {
            self.ce_from
        } else {
            self.start.min(self.ce_from)
        }
    }
}

/// What the loss is: the training settings that shape it, and the confidence value set.
#[derive(Clone, Debug)]
pub struct Objective {
    pub loss_on: LossOn,
    pub answer: AnswerSource,
    pub confidence_loss: ConfidenceLoss,
    pub confidence_target: ConfidenceTarget,
    pub answer_kl: f64,
    pub answer_target: AnswerTarget,
    /// Weight of the loss at the deciding token (`train.value_weight`).
    pub value_weight: f64,
    /// Weight of a cross-entropy on the written label added to the scoring rule there
    /// (`train.value_ce`), at the first step.
    pub value_ce: f64,
    /// Share of the steps over which `value_ce` falls to `value_ce_floor` (`train.value_ce_decay`;
    /// 0 = held).
    pub value_ce_decay: f64,
    /// Where `value_ce` falls to and holds after its decay (`train.value_ce_floor`).
    pub value_ce_floor: f64,
    /// What that cross-entropy aims at (`train.value_ce_target`).
    pub value_ce_target: ValueCeTarget,
    /// Weight of the log loss of the expected value beside the Brier score there
    /// (`train.value_log`).
    pub value_log: f64,
    /// Weight of the squared gap between the micro-batch's mean expected value and its mean
    /// label (`train.value_level`).
    pub value_level: f64,
    /// Stop the confidence loss's gradient at the context's keys and values
    /// (`train.detach_context`).
    pub detach_context: bool,
    /// Needed under `loss_on = "confidence"` (the written values and the deciding token).
    pub values: Option<ValueSet>,
    /// `train.value_digits`: 1 (the value set's own lines) or 2 (`NN%`, the units digit
    /// trained too; [`ValueSet::two_digit_line`]).
    pub value_digits: u8,
}

impl Objective {
    /// The objective at `step` of `total`: `value_ce` on its schedule (`value_ce_decay`, down to
    /// `value_ce_floor`).
    pub fn at_step(&self, step: usize, total: usize) -> Objective {
        let mut o = self.clone();
        if self.value_ce_decay > 0.0 {
            let end = self.value_ce_decay * total as f64;
            let left = (1.0 - step as f64 / end).max(0.0);
            o.value_ce = self.value_ce_floor + (self.value_ce - self.value_ce_floor) * left;
        }
        o
    }

    /// Today's objective before confidence training: cross-entropy on the whole response.
    pub fn response() -> Self {
        Self {
            loss_on: LossOn::Response,
            answer: AnswerSource::GoldForCorrect,
            confidence_loss: ConfidenceLoss::Ce,
            confidence_target: ConfidenceTarget::Teacher,
            answer_kl: 0.0,
            answer_target: AnswerTarget::Distribution,
            value_weight: 1.0,
            value_ce: 0.0,
            value_ce_decay: 0.0,
            value_ce_floor: 0.0,
            value_ce_target: ValueCeTarget::Written,
            value_log: 0.0,
            value_level: 0.0,
            detach_context: false,
            values: None,
            value_digits: 1,
        }
    }

    /// The recipe's objective (the value set from the tokenizer when it needs one).
    pub fn from_recipe(r: &Recipe, tok: &Tokenizer) -> Result<Self> {
        let t = &r.train;
        let confidence = t.loss_on == LossOn::Confidence
            && r.labels.teacher != candor_data::config::Teacher::Gold;
        let values = if confidence {
            Some(r.value_set(tok)?)
        } else {
            None
        };
        if let (Some(vs), 2) = (&values, t.value_digits) {
            // refuse a value set or tokenizer that cannot write `NN%` before any work
            vs.two_digit_line(tok, 42.0)
                .context("train.value_digits = 2")?;
        }
        Ok(Self {
            loss_on: if confidence {
                LossOn::Confidence
            } else {
                LossOn::Response
            },
            answer: t.answer,
            confidence_loss: t.confidence_loss,
            confidence_target: t.confidence_target,
            answer_kl: t.answer_kl,
            answer_target: t.answer_target,
            value_weight: t.value_weight,
            value_ce: t.value_ce,
            value_ce_decay: t.value_ce_decay,
            value_ce_floor: t.value_ce_floor,
            value_ce_target: t.value_ce_target,
            value_log: t.value_log,
            value_level: t.value_level,
            detach_context: confidence && t.detach_context,
            values,
            value_digits: t.value_digits,
        })
    }

    /// The scoring rule at the value token, when there is one (not for `ce`).
    fn scores_value(&self) -> bool {
        self.loss_on == LossOn::Confidence && self.confidence_loss != ConfidenceLoss::Ce
    }
}

/// The text that follows the prompt: plain prompts (`…\nA:`) get a space before the answer.
pub fn response_text(style: Style, target: &str) -> String {
    match style {
        Style::Plain => format!(" {target}"),
        Style::Chat => target.to_string(),
    }
}

/// Probabilities under this are left out of the answer-keeping soft targets (the rest is
/// renormalised): they would cost an output-layer row each and carry almost no loss.
const SOFT_MIN_P: f32 = 1e-3;

/// Soft targets from top-k log-probs: probabilities ≥ [`SOFT_MIN_P`], renormalised.
fn soft_targets(top: &[(u32, f32)]) -> Vec<(u32, f32)> {
    let kept: Vec<(u32, f32)> = top
        .iter()
        .map(|&(t, lp)| (t, lp.exp()))
        .filter(|&(_, p)| p >= SOFT_MIN_P)
        .collect();
    let z: f32 = kept.iter().map(|p| p.1).sum();
    kept.into_iter().map(|(t, p)| (t, p / z)).collect()
}

/// The answer-keeping targets at each answer token: the starting model's top-k distribution,
/// or the token it wrote (`train.answer_target`).
fn answer_targets(
    target: AnswerTarget,
    answer: &[u32],
    top: &[Vec<(u32, f32)>],
) -> Vec<Vec<(u32, f32)>> {
    match target {
        AnswerTarget::Distribution => top.iter().map(|t| soft_targets(t)).collect(),
        AnswerTarget::Greedy => answer.iter().map(|&t| vec![(t, 1.0)]).collect(),
    }
}

/// Rehearsal rows: a prompt and the starting model's own answer, whose answer tokens carry
/// only the answer-keeping term ([`answer_targets`]), followed by `line_start` — the opening
/// of the confidence line (`\nConfidence: `, the value set's prefix) — trained with
/// cross-entropy, so that every kind of question learns where its answer ends in the format
/// the calibrated model writes. No value: the confidence itself is learnt only from labelled
/// rows. (Without the line's opening, the starting model's end of turn after an answer is
/// unlearnt on the calibration questions only, and on other questions the freed probability
/// goes to stray tokens: `5 / 1 = 50`.)
pub fn rehearsal_seq(
    prompt: Vec<u32>,
    answer: &[u32],
    top: &[Vec<(u32, f32)>],
    target: AnswerTarget,
    line_start: &[u32],
) -> Seq {
    let start = prompt.len();
    let ids = [prompt, answer.to_vec(), line_start.to_vec()].concat();
    let ce_from = start + answer.len();
    Seq {
        ids,
        start,
        weight: 1.0,
        ce_from,
        soft: answer_targets(target, answer, top),
        value: None,
        unit: None,
    }
}

/// Tokenise examples; those longer than `max_len` tokens are dropped (counted).
pub fn encode(
    tok: &Tokenizer,
    examples: &[Example],
    weights: &[f64],
    style: Style,
    max_len: usize,
    obj: &Objective,
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
        let w = weights[i] as f32;
        let seq = match (&obj.values, obj.loss_on) {
            (Some(vs), LossOn::Confidence) if e.teacher != "gold" => {
                // the answer as context: the model's own tokens, or the reference for a correct one
                let own = obj.answer == AnswerSource::Own || !e.correct;
                let soft = if own && !e.answer_tokens.is_empty() {
                    ids.extend(&e.answer_tokens);
                    if obj.answer_kl > 0.0 {
                        answer_targets(obj.answer_target, &e.answer_tokens, &e.answer_top)
                    } else {
                        vec![]
                    }
                } else {
                    let answer = if own { &e.answer } else { &e.gold };
                    if !answer.trim().is_empty() {
                        ids.extend(tok.encode(&response_text(style, answer.trim()), false)?);
                    }
                    vec![]
                };
                let ce_from = ids.len();
                let unit = if obj.value_digits == 2 {
                    let (line, unit) = vs.two_digit_line(tok, e.confidence)?;
                    ids.extend(line);
                    unit.map(|y| (ce_from + vs.prefix.len() + 1, y))
                } else {
                    ids.extend(vs.line(vs.nearest(e.confidence)));
                    None
                };
                ids.push(eos);
                let target = match obj.confidence_target {
                    ConfidenceTarget::Teacher => (e.confidence / 100.0).clamp(0.0, 1.0) as f32,
                    ConfidenceTarget::Correct => e.correct as u8 as f32,
                };
                Seq {
                    ids,
                    start,
                    weight: w,
                    ce_from,
                    soft,
                    value: Some((ce_from + vs.prefix.len(), target)),
                    unit,
                }
            }
            _ => {
                ids.extend(tok.encode(&response_text(style, &e.target), false)?);
                ids.push(eos);
                Seq::response(ids, start, w)
            }
        };
        if seq.ids.len() > max_len {
            dropped += 1;
            continue;
        }
        seqs.push(seq);
        kept_idx.push(i);
    }
    Ok((seqs, kept_idx, dropped))
}

/// The loss of a batch: Σ over sequences of `weight ·` (cross-entropy of each trained token,
/// plus `value_weight ·` the scoring rule (or cross-entropy) at the value token and
/// `value_ce ·` its cross-entropy beside a scoring rule, plus `answer_kl ·` the soft
/// cross-entropy to the starting model at each answer token), and the number of trained tokens
/// ([`Seq::loss_tokens`]). Logits are computed only at the positions that carry a loss.
pub fn batch_loss<B: Backend>(
    model: &Llama<B>,
    seqs: &[&Seq],
    obj: &Objective,
    device: &B::Device,
) -> (Tensor<B, 1>, usize) {
    // (row, position, target, weight) of every cross-entropy term, soft targets included,
    // and (row, position, target probability, weight) of every value term; position p
    // predicts token p + 1
    let (mut ce, mut val) = (vec![], vec![]);
    let kl = obj.answer_kl as f32;
    let vw = obj.value_weight as f32;
    let scores = obj.scores_value();
    let vce = obj.value_ce as f32;
    let vlog = obj.value_log as f32;
    let vlevel = obj.value_level as f32;
    for (i, s) in seqs.iter().enumerate() {
        for (j, soft) in s.soft.iter().enumerate() {
            for &(tk, p) in soft {
                ce.push((i, s.start + j - 1, tk, s.weight * kl * p));
            }
        }
        for p in s.ce_from..s.ids.len() {
            // the value token, and a two-digit value's units digit, carry the value loss
            let scored = [s.value, s.unit].into_iter().flatten().find(|v| v.0 == p);
            match scored {
                Some((_, y)) => {
                    if !scores {
                        ce.push((i, p - 1, s.ids[p], s.weight * vw));
                        continue;
                    }
                    // the level term reads the first digit's ē only, never a units digit
                    let level = if s.value.is_some_and(|v| v.0 == p) {
                        s.weight * vlevel
                    } else {
                        0.0
                    };
                    val.push((i, p - 1, y, s.weight * vw, s.weight * vlog, level));
                    if vce > 0.0 {
                        value_ce_targets(obj, s.ids[p], y, |tk, w| {
                            ce.push((i, p - 1, tk, s.weight * vce * w))
                        });
                    }
                }
                _ => ce.push((i, p - 1, s.ids[p], s.weight)),
            }
        }
    }
    let n_tokens = seqs.iter().map(|s| s.loss_tokens()).sum();
    let hidden = if obj.detach_context {
        Hidden::two_pass(model, seqs, device)
    } else {
        Hidden::one_pass(model, seqs, device)
    };
    let mut loss = if ce.is_empty() {
        Tensor::<B, 1>::zeros([1], device)
    } else {
        let at: Vec<(usize, usize)> = ce.iter().map(|c| (c.0, c.1)).collect();
        let targets: Vec<u32> = ce.iter().map(|c| c.2).collect();
        let w: Vec<f32> = ce.iter().map(|c| c.3).collect();
        model.nll(hidden.rows(&at, device), &targets, &w)
    };
    if !val.is_empty() {
        let vs = obj
            .values
            .as_ref()
            .expect("a value token implies a value set");
        let at: Vec<(usize, usize)> = val.iter().map(|c| (c.0, c.1)).collect();
        let y: Vec<f32> = val.iter().map(|c| c.2).collect();
        let w: Vec<f32> = val.iter().map(|c| c.3).collect();
        let w_log: Option<Vec<f32>> = (vlog > 0.0).then(|| val.iter().map(|c| c.4).collect());
        let logits = model.logits(hidden.rows(&at, device));
        let w_level: Option<Vec<f32>> = (vlevel > 0.0).then(|| val.iter().map(|c| c.5).collect());
        let (kind, w_log) = (obj.confidence_loss, w_log.as_deref());
        let extra = ExtraTerms {
            log: w_log,
            level: w_level.as_deref(),
        };
        loss = loss + value_loss(logits, vs, kind, &y, &w, extra, device);
    }
    (loss, n_tokens)
}

/// The cross-entropy targets of `train.value_ce` at a scored token that wrote `written` for
/// the target `y` (a share): the written token, or under `two-hot` the two values around `y`
/// weighted so that their mean is `y` ([`ValueSet::two_hot`]).
fn value_ce_targets(obj: &Objective, written: u32, y: f32, mut push: impl FnMut(u32, f32)) {
    match (obj.value_ce_target, obj.values.as_ref()) {
        (ValueCeTarget::TwoHot, Some(vs)) => {
            for (k, w) in vs.two_hot(y as f64 * 100.0).into_iter().enumerate() {
                if w > 0.0 {
                    push(vs.tokens[k], w as f32);
                }
            }
        }
        _ => push(written, 1.0),
    }
}

/// Final hidden states of a batch, `[n, d]`, readable at any `(row, position)` that carries a
/// loss through `layout`.
struct Hidden<B: Backend> {
    flat: Tensor<B, 2>,
    layout: Layout,
}

/// Where position p of row i sits in [`Hidden::flat`].
enum Layout {
    /// One pass over the right-padded rows, from position `from` on: `i·tail + p − from`.
    One { from: usize, tail: usize },
    /// The context (`ids[..split]`, left-padded to `p1`, from position `from1` on) and, after
    /// its `n1` rows, the rest (right-padded to `t2`), which attended to the context's keys and
    /// values with the gradient stopped.
    Two {
        from1: usize,
        tail1: usize,
        n1: usize,
        t2: usize,
        p1: usize,
        split: Vec<usize>,
    },
}

impl Layout {
    fn index(&self, i: usize, p: usize) -> i64 {
        (match self {
            Layout::One { from, tail } => i * tail + p - from,
            Layout::Two {
                from1,
                tail1,
                n1,
                t2,
                p1,
                split,
            } => {
                if p < split[i] {
                    i * tail1 + p1 - split[i] + p - from1
                } else {
                    n1 + i * t2 + p - split[i]
                }
            }
        }) as i64
    }
}

impl<B: Backend> Hidden<B> {
    fn one_pass(model: &Llama<B>, seqs: &[&Seq], device: &B::Device) -> Self {
        let t = seqs.iter().map(|s| s.ids.len()).max().unwrap_or(1);
        let rows: Vec<Vec<u32>> = seqs
            .iter()
            .map(|s| {
                let mut r = s.ids.clone();
                r.resize(t, 0);
                r
            })
            .collect();
        let valid: Vec<Vec<bool>> = seqs
            .iter()
            .map(|s| (0..t).map(|j| j < s.ids.len()).collect())
            .collect();
        let pos = Positions::new(&model.config, &valid, t, device);
        let mut cache = KvCache::new(model.config.num_hidden_layers);
        // the first position that predicts a trained token; the last layer skips those before it
        let from = seqs
            .iter()
            .map(|s| s.first_loss().max(1) - 1)
            .min()
            .unwrap_or(0);
        let tokens = tokens_tensor::<B>(&rows, device);
        let hidden = model.forward_hidden_from(tokens, &pos, &mut cache, from);
        let tail = t - from;
        let flat = hidden.reshape([seqs.len() * tail, model.config.hidden_size]);
        Hidden {
            flat,
            layout: Layout::One { from, tail },
        }
    }

    /// The confidence line learns from what the model computes over the prompt and answer
    /// without reshaping it: the context's keys and values are detached before the line
    /// attends to them. The split is one token before the line, so the position that writes
    /// the line's first token (after the answer's last token) still trains.
    fn two_pass(model: &Llama<B>, seqs: &[&Seq], device: &B::Device) -> Self {
        let split: Vec<usize> = seqs.iter().map(|s| s.ce_from.max(2) - 1).collect();
        let p1 = *split.iter().max().expect("a batch has rows");
        let rows1: Vec<Vec<u32>> = seqs
            .iter()
            .zip(&split)
            .map(|(s, &k)| [vec![0; p1 - k], s.ids[..k].to_vec()].concat())
            .collect();
        let valid1: Vec<Vec<bool>> = split
            .iter()
            .map(|&k| (0..p1).map(|j| j >= p1 - k).collect())
            .collect();
        let pos1 = Positions::new(&model.config, &valid1, p1, device);
        let mut cache = KvCache::new(model.config.num_hidden_layers);
        // the first context position that predicts a trained (soft) token
        let from1 = seqs
            .iter()
            .zip(&split)
            .filter(|(s, _)| !s.soft.is_empty())
            .map(|(s, &k)| p1 - k + s.start - 1)
            .min()
            .unwrap_or(p1 - 1);
        let first =
            model.forward_hidden_from(tokens_tensor::<B>(&rows1, device), &pos1, &mut cache, from1);
        for (k, v) in cache.layers.iter_mut().flatten() {
            *k = k.clone().detach();
            *v = v.clone().detach();
        }
        let t2 = seqs
            .iter()
            .zip(&split)
            .map(|(s, &k)| s.ids.len() - k)
            .max()
            .unwrap_or(1);
        let rows2: Vec<Vec<u32>> = seqs
            .iter()
            .zip(&split)
            .map(|(s, &k)| {
                let mut r = s.ids[k..].to_vec();
                r.resize(t2, 0);
                r
            })
            .collect();
        let valid: Vec<Vec<bool>> = seqs
            .iter()
            .zip(&valid1)
            .zip(&split)
            .map(|((s, v1), &k)| {
                let mut v = v1.clone();
                v.extend((0..t2).map(|j| k + j < s.ids.len()));
                v
            })
            .collect();
        let pos2 = Positions::new(&model.config, &valid, t2, device);
        let second = model.forward_hidden(tokens_tensor::<B>(&rows2, device), &pos2, &mut cache);
        let d = model.config.hidden_size;
        let tail1 = p1 - from1;
        let n1 = seqs.len() * tail1;
        let flat = Tensor::cat(
            vec![first.reshape([n1, d]), second.reshape([seqs.len() * t2, d])],
            0,
        );
        Hidden {
            flat,
            layout: Layout::Two {
                from1,
                tail1,
                n1,
                t2,
                p1,
                split,
            },
        }
    }

    /// The hidden states at `(row, position)`, in that order, `[n, d]`.
    fn rows(&self, at: &[(usize, usize)], device: &B::Device) -> Tensor<B, 2> {
        let idx: Vec<i64> = at.iter().map(|&(i, p)| self.layout.index(i, p)).collect();
        let n = idx.len();
        self.flat.clone().select(
            0,
            Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [n]), device),
        )
    }
}

/// The scoring rule at the value token, summed over rows (`logits` `[n, vocab]`): with q the
/// softmax of the logits restricted to the value tokens and m = log Σ_v p(v) the log of the
/// probability on any value token,
/// `brier`: Σ_v q(v)·(v − y)² − m, `log`: −[y·ln ē + (1 − y)·ln(1 − ē)] − m with ē = Σ_v q(v)·v.
/// The −m term keeps the value token where the value belongs (it is the cross-entropy of
/// "some value"). Weighted by `weights`; `extra` adds the terms beside it.
pub fn value_loss<B: Backend>(
    logits: Tensor<B, 2>,
    vs: &ValueSet,
    kind: ConfidenceLoss,
    targets: &[f32],
    weights: &[f32],
    extra: ExtraTerms,
    device: &B::Device,
) -> Tensor<B, 1> {
    let n = targets.len();
    let k = vs.tokens.len();
    let lse = |z: Tensor<B, 2>| {
        let m = z.clone().max_dim(1).detach();
        (z - m.clone()).exp().sum_dim(1).log() + m
    };
    let idx: Vec<i64> = vs.tokens.iter().map(|&t| t as i64).collect();
    let zv = logits.clone().select(
        1,
        Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [k]), device),
    );
    let all = lse(logits); // [n, 1]
    let on_values = lse(zv.clone()); // [n, 1]
    let mass_nll = all - on_values.clone(); // −log Σ_v p(v)
    let log_q = zv - on_values; // [n, k]
    let q = log_q.clone().exp();
    let vals: Vec<f32> = vs.values.iter().map(|&v| v as f32 / 100.0).collect();
    let vals = Tensor::<B, 2>::from_data(TensorData::new(vals, [1, k]), device);
    let y = Tensor::<B, 2>::from_data(TensorData::new(targets.to_vec(), [n, 1]), device);
    // ē = Σ_v q(v)·v, [n, 1]
    let e = (q.clone() * vals.clone()).sum_dim(1);
    // −[y ln ē + (1 − y) ln(1 − ē)]
    let log_score = || {
        let e = e.clone().clamp(1e-4, 1.0 - 1e-4);
        (y.clone() * e.clone().log() + (y.clone().neg() + 1.0) * (e.neg() + 1.0).log()).neg()
    };
    let log_term = extra.log.map(|lw| {
        let lw = Tensor::<B, 2>::from_data(TensorData::new(lw.to_vec(), [n, 1]), device);
        (log_score() * lw).sum().reshape([1])
    });
    // λ·(Σ u·(ē − y))² / Σ u, u = λ × the row's weight (0 on a units digit)
    let level_term = extra.level.and_then(|u| {
        let total: f32 = u.iter().sum();
        (total > 0.0).then(|| {
            let u = Tensor::<B, 2>::from_data(TensorData::new(u.to_vec(), [n, 1]), device);
            let gap = ((e.clone() - y.clone()) * u).sum();
            (gap.powi_scalar(2) / total).reshape([1])
        })
    });
    let score = match kind {
        ConfidenceLoss::Brier => (q * (vals.clone() - y.clone()).powi_scalar(2)).sum_dim(1),
        ConfidenceLoss::Log => log_score(),
        ConfidenceLoss::TwoHot => {
            let t: Vec<f32> = targets
                .iter()
                .flat_map(|&y| vs.two_hot(y as f64 * 100.0))
                .map(|w| w as f32)
                .collect();
            let t = Tensor::<B, 2>::from_data(TensorData::new(t, [n, k]), device);
            (t * log_q).sum_dim(1).neg()
        }
        ConfidenceLoss::Ce => unreachable!("ce trains the value token with cross-entropy"),
    };
    let w = Tensor::<B, 2>::from_data(TensorData::new(weights.to_vec(), [n, 1]), device);
    let loss = ((score + mass_nll) * w).sum().reshape([1]);
    [log_term, level_term]
        .into_iter()
        .flatten()
        .fold(loss, |l, x| l + x)
}

/// The terms [`value_loss`] adds beside the scoring rule, each with one weight per row:
/// `log` (`train.value_log`, under `brier`) the `log` score of ē; `level`
/// (`train.value_level`, λ × the row's weight, 0 on rows it skips) the squared gap between
/// the rows' mean ē and their mean label, λ·(Σ w·(ē − y))² / Σ w.
#[derive(Clone, Copy, Default)]
pub struct ExtraTerms<'a> {
    pub log: Option<&'a [f32]>,
    pub level: Option<&'a [f32]>,
}

/// Gradients of one optimizer step over `batch`, in micro-batches of `micro`: each micro-batch
/// loss is divided by the trained tokens of the *whole* batch, so the summed gradients are
/// the same whatever the split. Returns the gradients and the batch loss (mean weighted loss
/// per trained token).
pub fn accumulate<B: AutodiffBackend>(
    model: &Llama<B>,
    batch: &[&Seq],
    obj: &Objective,
    micro: usize,
    seed: u64,
    step: usize,
    device: &B::Device,
) -> (GradientsParams, f64) {
    let resp_tokens: usize = batch.iter().map(|s| s.loss_tokens()).sum();
    let mut acc = GradientsAccumulator::<Llama<B>>::new();
    let mut loss_sum = 0.0;
    for (mi, m) in batch.chunks(micro.max(1)).enumerate() {
        B::seed(device, step_seed(seed, step, mi));
        let (loss, _) = batch_loss(model, m, obj, device);
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
    /// The last step's loss; `None` when no step ran in this call (resumed at the last step).
    pub last_loss: Option<f64>,
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
    rehearsal: &[Seq],
    device: &B::Device,
) -> Result<Trained<B>> {
    let run = r.run_dir();
    std::fs::create_dir_all(&run).with_context(|| format!("creating {}", run.display()))?;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run.join("train.log"))
        .with_context(|| format!("opening {}", run.join("train.log").display()))?;
    let mut say = |line: String| {
        eprintln!("{line}");
        let _ = writeln!(log, "{line}");
    };
    let conf: Vec<(f64, bool)> = examples.iter().map(|e| (e.confidence, e.correct)).collect();
    let mut weights = weighting::weights(&r.weighting, &conf);
    if r.weighting.enabled {
        say(format!("loss weights: {}", weighting::histogram(&weights)));
    }
    if r.train.balance == crate::recipe::Balance::LabelBin {
        let labels: Vec<f64> = conf.iter().map(|c| c.0).collect();
        let b = weighting::balance_by_label_bin(&labels, r.train.balance_power);
        for (w, b) in weights.iter_mut().zip(&b) {
            *w *= b;
        }
        say(format!(
            "label balancing (train.balance = \"label-bin\", balance_power {}): {}",
            r.train.balance_power,
            weighting::bin_summary(&labels, &weights)
        ));
    }
    let obj = Objective::from_recipe(r, tok)?;
    if !rehearsal.is_empty() {
        say(format!(
            "rehearsal: {} answers of the starting model keep their answer {} (answer_kl {}), {} per step beside the calibration batch",
            rehearsal.len(),
            match obj.answer_target {
                AnswerTarget::Distribution => "distribution",
                AnswerTarget::Greedy => "tokens",
            },
            obj.answer_kl,
            r.train.global_batch
        ));
    }
    let two_hot = match obj.value_ce_target {
        ValueCeTarget::TwoHot => " (two-hot)",
        ValueCeTarget::Written => "",
    };
    say(match (&obj.values, obj.loss_on) {
        (Some(vs), LossOn::Confidence) => format!(
            "loss on the confidence line only (answer: {}, answer_kl {}), value token loss {} × {}{}, values {}",
            match obj.answer {
                AnswerSource::Own => "the model's own",
                AnswerSource::GoldForCorrect => "gold for correct, own for wrong",
            },
            obj.answer_kl,
            match obj.confidence_loss {
                ConfidenceLoss::Ce => "cross-entropy".to_string(),
                l => format!(
                    "{} against {}",
                    l.name(),
                    format!("{:?}", obj.confidence_target).to_lowercase()
                ),
            },
            obj.value_weight,
            if obj.value_ce > 0.0 && obj.value_ce_decay > 0.0 {
                format!(
                    " + cross-entropy{} × {} falling to {} over the first {:.0}% of the steps",
                    two_hot,
                    obj.value_ce,
                    obj.value_ce_floor,
                    100.0 * obj.value_ce_decay
                )
            } else if obj.value_ce > 0.0 {
                format!(" + cross-entropy{} × {}", two_hot, obj.value_ce)
            } else {
                String::new()
            } + &if obj.value_log > 0.0 {
                format!(" + log loss of the expected value × {}", obj.value_log)
            } else {
                String::new()
            } + &if obj.value_level > 0.0 {
                format!(
                    " + squared gap of the batch's mean expected value to its mean label × {}",
                    obj.value_level
                )
            } else {
                String::new()
            },
            vs.describe(tok)
        ) + if obj.value_digits == 2 {
            ", written with two digits (NN%; the units digit scored the same way)"
        } else {
            ""
        },
        _ => "loss on the whole response (cross-entropy)".into(),
    });
    let (seqs, kept, dropped) = encode(
        tok,
        examples,
        &weights,
        r.data.style,
        r.data.max_length,
        &obj,
    )?;
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
        // bounded by the recipe's limits (epochs ≤ 10,000, a set ≤ 1,000,000 questions), so
        // this cannot overflow; checked anyway
        r.train
            .epochs
            .checked_mul(seqs.len())
            .map(|n| n.div_ceil(g))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "train.epochs = {} × {} examples overflows the step count",
                    r.train.epochs,
                    seqs.len()
                )
            })?
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
            Some(l) => format!(
                "LoRA rank {} on {}{}",
                l.rank,
                l.targets.join(","),
                match l.layers.as_slice() {
                    [] => String::new(),
                    ls => format!(" of layers {ls:?}"),
                }
            ),
            None => match r.train.layers.as_slice() {
                [] => "full fine-tuning".into(),
                ls => format!("full fine-tuning of layers {ls:?} (the rest frozen)"),
            },
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
    let mut last_loss = None;
    let rehearsal_all: Vec<usize> = (0..rehearsal.len()).collect();
    let plain = crate::recipe::CurriculumSection::default();
    let rehearsal_seed = r.train.seed ^ 0x5245_4845;
    for step in start..total {
        let idx = curriculum::step_batch(&r.curriculum, &ordered, r.train.seed, step, total, g);
        let mut batch: Vec<&Seq> = idx.iter().map(|&i| &seqs[i]).collect();
        // as many rehearsal rows as calibration rows, in shuffled passes of their own
        for i in curriculum::step_batch(&plain, &rehearsal_all, rehearsal_seed, step, total, g) {
            batch.push(&rehearsal[i]);
        }
        let (grads, loss_sum) = accumulate(
            &model,
            &batch,
            &obj.at_step(step, total),
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
        last_loss = Some(loss_sum);
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
