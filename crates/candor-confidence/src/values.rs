//! The confidence values a model is taught to write, and the two readouts that look at its
//! distribution over them instead of the one number it writes.
//!
//! A trained model writes `<answer>\nConfidence: N%`. Some token of that line decides N: the
//! first token after the part all values share (`\nConfidence: `). With a tokenizer that keeps
//! numbers whole (Llama 3: `70`, `100` are single tokens) that token *is* the value. With one that
//! splits every digit (SmolLM2, the byte tokenizer) it is the first digit, so `10%` and `100%`
//! both start with `1`: one token cannot tell them apart. The value set is therefore built from
//! the tokenizer: start from the deciles 0, 10, …, 100; where two values share their deciding
//! token, keep the more extreme one (farther from 50%; so `1` means 100% and 10% is not a value).
//! Digit-splitting tokenizers get {0, 20, 30, …, 90, 100}; others all eleven deciles.
//!
//! The distribution over the values at that position (the softmax of the model's logits
//! restricted to the value tokens) is what the proper-scoring confidence losses train
//! (`candor-train`), and what [`expected`] reads: Σ q(v)·v.

use anyhow::{bail, Result};
use candor_model::Tokenizer;

/// What every confidence line starts with, after the answer.
pub const PREFIX: &str = "\nConfidence: ";

/// The deciles a value set starts from (percent).
pub const DECILES: [u32; 11] = [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100];

#[derive(Clone, Debug, PartialEq)]
pub struct ValueSet {
    /// Tokens of the part every confidence line shares (`\nConfidence: ` or a prefix of it).
    pub prefix: Vec<u32>,
    /// The deciding token of each value.
    pub tokens: Vec<u32>,
    /// The values, percent, ascending.
    pub values: Vec<u32>,
    /// The tokens of each whole line `\nConfidence: N%`, in the order of `values`.
    lines: Vec<Vec<u32>>,
}

impl ValueSet {
    /// The value set of a tokenizer (see the module doc).
    pub fn new(tok: &Tokenizer) -> Result<Self> {
        Self::from_candidates(tok, &DECILES)
    }

    /// Exactly these values (percent, any order): an error names two values whose lines start
    /// with the same deciding token under this tokenizer (`10` and `100` with digit tokens).
    pub fn exact(tok: &Tokenizer, values: &[u32]) -> Result<Self> {
        Self::build(tok, values, true)
    }

    pub fn from_candidates(tok: &Tokenizer, candidates: &[u32]) -> Result<Self> {
        Self::build(tok, candidates, false)
    }

    /// The value set of `candidates`; two that share their deciding token are an error under
    /// `refuse_shared`, else the one farther from 50% is kept.
    fn build(tok: &Tokenizer, candidates: &[u32], refuse_shared: bool) -> Result<Self> {
        if candidates.len() < 2 {
            bail!("a confidence value set needs at least two values");
        }
        let lines: Vec<Vec<u32>> = candidates
            .iter()
            .map(|v| tok.encode(&format!("{PREFIX}{v}%"), false))
            .collect::<Result<_>>()?;
        // the longest token prefix all lines share
        let mut lcp = 0;
        while lines
            .iter()
            .all(|l| l.len() > lcp && l[lcp] == lines[0][lcp])
        {
            lcp += 1;
        }
        // candidates by deciding token; a collision keeps the value farther from 50%
        let mut kept: Vec<(u32, u32, Vec<u32>)> = vec![];
        for (v, line) in candidates.iter().zip(&lines) {
            let t = line[lcp];
            match kept.iter_mut().find(|k| k.1 == t) {
                Some(k) if refuse_shared => bail!(
                    "confidence values {}% and {}% start with the same token under this tokenizer, so one token cannot choose between them: keep one",
                    k.0.max(*v),
                    k.0.min(*v)
                ),
                Some(k) if v.abs_diff(50) > k.0.abs_diff(50) => *k = (*v, t, line.clone()),
                Some(_) => {}
                None => kept.push((*v, t, line.clone())),
            }
        }
        kept.sort_by_key(|k| k.0);
        if kept.len() < 2 {
            bail!("the tokenizer writes every confidence value with the same first token");
        }
        Ok(Self {
            prefix: lines[0][..lcp].to_vec(),
            tokens: kept.iter().map(|k| k.1).collect(),
            values: kept.iter().map(|k| k.0).collect(),
            lines: kept.into_iter().map(|k| k.2).collect(),
        })
    }

    /// The index of the value nearest to `percent` (the lower one on a tie).
    pub fn nearest(&self, percent: f64) -> usize {
        let mut best = 0;
        for (i, &v) in self.values.iter().enumerate() {
            if (v as f64 - percent).abs() < (self.values[best] as f64 - percent).abs() {
                best = i;
            }
        }
        best
    }

    /// `percent` spread over the two values around it so that the spread's mean is `percent`
    /// (MuZero's "two-hot" target; clamped to the set's range): one weight per value, summing
    /// to 1, at most two non-zero.
    pub fn two_hot(&self, percent: f64) -> Vec<f64> {
        let v = &self.values;
        let p = percent.clamp(v[0] as f64, v[v.len() - 1] as f64);
        let mut w = vec![0.0; v.len()];
        let hi = v.iter().position(|&x| x as f64 >= p).unwrap_or(v.len() - 1);
        if hi == 0 || v[hi] as f64 == p {
            w[hi] = 1.0;
        } else {
            let (a, b) = (v[hi - 1] as f64, v[hi] as f64);
            w[hi] = (p - a) / (b - a);
            w[hi - 1] = 1.0 - w[hi];
        }
        w
    }

    /// The tokens of `\nConfidence: N%` for value index `i`; the deciding token sits at
    /// `self.prefix.len()`.
    pub fn line(&self, i: usize) -> &[u32] {
        &self.lines[i]
    }

    /// `train.value_digits = 2`: the line `\nConfidence: NN%` for a label (percent) written
    /// with two digits, so that the second digit says where in its decade the label lies. The
    /// label is rounded to a whole percent and capped at 99; one under 10 is written as the
    /// nearer of 0% and 10% (a one-digit `7%` would start with the token of 70%). Returns the
    /// line's tokens and, for a two-digit value, the units digit as a share (0, 0.1, …, 0.9):
    /// the target of the token after the deciding one, which is scored over the same digit
    /// tokens. Needs the value set 0, 10, …, 90 under a tokenizer that writes one token per
    /// digit (SmolLM2's, the byte tokenizer); anything else is an error.
    pub fn two_digit_line(&self, tok: &Tokenizer, percent: f64) -> Result<(Vec<u32>, Option<f32>)> {
        if self.values != DECILES[..10] {
            bail!(
                "two-digit confidence values need the value set 0, 10, …, 90 (train.values = [0, 10, 20, 30, 40, 50, 60, 70, 80, 90]); this one is {:?}",
                self.values
            );
        }
        let l = percent.round().clamp(0.0, 99.0) as u32;
        if l < 10 {
            return Ok((self.lines[usize::from(l >= 5)].clone(), None));
        }
        let line = tok.encode(&format!("{PREFIX}{l}%"), false)?;
        let p = self.prefix.len();
        let (tens, units) = ((l / 10) as usize, (l % 10) as usize);
        if line.len() < p + 2
            || line[..p] != self.prefix[..]
            || line[p] != self.tokens[tens]
            || line[p + 1] != self.tokens[units]
        {
            bail!("two-digit confidence values need a tokenizer that writes one token per digit; this one does not split `{l}%` that way");
        }
        Ok((line, Some(units as f32 / 10.0)))
    }

    /// A one-line description for logs: `0%:"0" 20%:"2" … 100%:"1"`.
    pub fn describe(&self, tok: &Tokenizer) -> String {
        self.values
            .iter()
            .zip(&self.tokens)
            .map(|(v, t)| format!("{v}%:{:?}", tok.decode(&[*t], false).unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The distribution over the values at the deciding position, from that position's log-probs
/// over the whole vocabulary: `(q, mass)`, q renormalised over the value tokens, `mass` the
/// probability the model puts on any value token at all.
pub fn distribution(set: &ValueSet, logprobs: &[f32]) -> (Vec<f64>, f64) {
    let lp: Vec<f64> = set
        .tokens
        .iter()
        .map(|&t| logprobs[t as usize] as f64)
        .collect();
    let m = lp.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = lp.iter().map(|l| (l - m).exp()).collect();
    let z: f64 = e.iter().sum();
    (e.iter().map(|x| x / z).collect(), z * m.exp())
}

/// The `verbalized_expected` readout: Σ q(v)·v/100 under the model's distribution over the
/// values after its own answer and `\nConfidence: ` (teacher-forced).
pub fn expected(set: &ValueSet, logprobs: &[f32]) -> f64 {
    let (q, _) = distribution(set, logprobs);
    q.iter()
        .zip(&set.values)
        .map(|(q, &v)| q * v as f64 / 100.0)
        .sum()
}
