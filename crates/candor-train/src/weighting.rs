//! Confidence-weighted loss (`../shared/reference/methods.md` §5). With teacher confidence
//! c ∈ [0, 1] and correctness y:
//!   correct: w = 1 + correct_slope · (0.5 − c)   (unsure-but-correct up, easy down)
//!   wrong:   w = 1 + wrong_slope · c              (confident errors highest)
//! then clipped to [w_min, w_max] and normalised to mean 1 over the dataset (so the loss scale,
//! and thus the learning rate, means the same with and without weighting).

use crate::recipe::WeightingSection;

/// The raw (clipped, not normalised) weight of one example.
pub fn raw_weight(w: &WeightingSection, confidence: f64, correct: bool) -> f64 {
    let c = (confidence / 100.0).clamp(0.0, 1.0);
    let v = if correct {
        1.0 + w.correct_slope * (0.5 - c)
    } else {
        1.0 + w.wrong_slope * c
    };
    v.clamp(w.w_min, w.w_max)
}

/// Weights for a dataset, mean 1; all ones when weighting is off.
pub fn weights(w: &WeightingSection, examples: &[(f64, bool)]) -> Vec<f64> {
    if !w.enabled || examples.is_empty() {
        return vec![1.0; examples.len()];
    }
    let raw: Vec<f64> = examples.iter().map(|&(c, y)| raw_weight(w, c, y)).collect();
    let mean = raw.iter().sum::<f64>() / raw.len() as f64;
    raw.iter().map(|r| r / mean).collect()
}

/// The 10-point bin of a teacher label (percent): [0,10) … [90,100].
fn label_bin(percent: f64) -> usize {
    ((percent / 10.0).floor().max(0.0) as usize).min(9)
}

/// Label balancing (Self-Calibration balances its training set by label bin): each example
/// weighs 1 / (examples in its 10-point label bin)^power, normalised to mean 1. At power 1
/// every occupied bin carries the same total weight; below it a bin's total grows as
/// count^(1 − power), part way back to the unbalanced counts (power 0).
pub fn balance_by_label_bin(labels: &[f64], power: f64) -> Vec<f64> {
    let mut count = [0usize; 10];
    for &l in labels {
        count[label_bin(l)] += 1;
    }
    let raw: Vec<f64> = labels
        .iter()
        .map(|&l| (count[label_bin(l)] as f64).powf(-power))
        .collect();
    let mean = raw.iter().sum::<f64>() / raw.len().max(1) as f64;
    raw.iter().map(|r| r / mean).collect()
}

/// Per label bin: examples and their summed weight (the effective count), for the log.
pub fn bin_summary(labels: &[f64], weights: &[f64]) -> String {
    let mut n = [0usize; 10];
    let mut eff = [0f64; 10];
    for (&l, &w) in labels.iter().zip(weights) {
        n[label_bin(l)] += 1;
        eff[label_bin(l)] += w;
    }
    (0..10)
        .filter(|&i| n[i] > 0)
        .map(|i| {
            format!(
                "{}-{}%: {} → {:.1}",
                i * 10,
                i * 10 + 9 + (i == 9) as usize,
                n[i],
                eff[i]
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A one-line histogram of weights for the log: counts in 8 bins over [min, max].
pub fn histogram(ws: &[f64]) -> String {
    if ws.is_empty() {
        return "no examples".into();
    }
    let (lo, hi) = ws
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &w| {
            (a.min(w), b.max(w))
        });
    if hi - lo < 1e-12 {
        return format!("all {} weights = {lo:.3}", ws.len());
    }
    let mut h = [0usize; 8];
    for &w in ws {
        h[(((w - lo) / (hi - lo) * 8.0) as usize).min(7)] += 1;
    }
    let width = (hi - lo) / 8.0;
    h.iter()
        .enumerate()
        .map(|(i, c)| {
            format!(
                "[{:.2},{:.2}):{c}",
                lo + i as f64 * width,
                lo + (i + 1) as f64 * width
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_ordering_clipping_and_mean() {
        let w = WeightingSection {
            enabled: true,
            correct_slope: 1.0,
            wrong_slope: 2.0,
            w_min: 0.25,
            w_max: 2.5,
        };
        let easy = raw_weight(&w, 95.0, true);
        let unsure = raw_weight(&w, 10.0, true);
        let confident_wrong = raw_weight(&w, 90.0, false);
        let humble_wrong = raw_weight(&w, 5.0, false);
        assert!((easy - 0.55).abs() < 1e-12);
        assert!((unsure - 1.4).abs() < 1e-12);
        assert!(
            (confident_wrong - 2.5).abs() < 1e-12,
            "1 + 2·0.9 = 2.8 clipped to 2.5"
        );
        assert!((humble_wrong - 1.1).abs() < 1e-12);
        assert!(confident_wrong > unsure && unsure > easy);
        let tight = WeightingSection {
            w_min: 0.8,
            ..w.clone()
        };
        assert_eq!(raw_weight(&tight, 100.0, true), 0.8, "clipped from below");
        let ws = weights(
            &w,
            &[(95.0, true), (10.0, true), (90.0, false), (5.0, false)],
        );
        let mean = ws.iter().sum::<f64>() / 4.0;
        assert!((mean - 1.0).abs() < 1e-12);
        assert!(ws[2] > ws[1] && ws[1] > ws[0]);
        let off = WeightingSection::default();
        assert_eq!(weights(&off, &[(95.0, true), (5.0, false)]), vec![1.0, 1.0]);
        assert!(histogram(&ws).contains("):"));
    }
}
