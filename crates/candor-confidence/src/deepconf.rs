//! DeepConf token confidence (Fu et al. 2025, `../shared/reference/methods.md` §4):
//! `C_i = −(1/k) Σ_j log P_i(j)` over the top-k log-probs at each generated position (higher =
//! more peaked = more confident); group confidence = mean of C over a sliding window of `n`
//! tokens (a trace shorter than the window is one group).

use serde::{Deserialize, Serialize};

/// The three per-trace summaries the trainer and the report use.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeepConf {
    /// Mean token confidence over the whole trace.
    pub mean: f64,
    /// Lowest sliding-window mean.
    pub lowest_group: f64,
    /// Mean over the last `window` tokens.
    pub tail: f64,
}

/// Token confidence at one position from its top-k log-probs.
pub fn token_confidence(top_logprobs: &[f32]) -> f64 {
    if top_logprobs.is_empty() {
        return 0.0;
    }
    -top_logprobs.iter().map(|&l| l as f64).sum::<f64>() / top_logprobs.len() as f64
}

/// Summaries of a trace of token confidences; `None` for an empty trace.
pub fn summarize(conf: &[f64], window: usize) -> Option<DeepConf> {
    if conf.is_empty() {
        return None;
    }
    let n = conf.len();
    let w = window.clamp(1, n);
    let mean = conf.iter().sum::<f64>() / n as f64;
    let lowest = conf
        .windows(w)
        .map(|g| g.iter().sum::<f64>() / w as f64)
        .fold(f64::INFINITY, f64::min);
    let tail = conf[n - w..].iter().sum::<f64>() / w as f64;
    Some(DeepConf {
        mean,
        lowest_group: lowest,
        tail,
    })
}

/// Summaries straight from a generation's top-k log-probs per position.
pub fn from_top_logprobs(top: &[Vec<f32>], window: usize) -> Option<DeepConf> {
    let conf: Vec<f64> = top.iter().map(|t| token_confidence(t)).collect();
    summarize(&conf, window)
}
