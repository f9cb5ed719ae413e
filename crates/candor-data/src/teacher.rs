//! Teachers turn graded answers into confidence labels (percent), and the distillation filter
//! and target format turn labels into training examples (`../shared/reference/methods.md`
//! §1, §3).

use crate::config::{ConfidenceFormat, Recalibrate};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// CalibratedMath's label: `floor(100 · accuracy)` of each sub-task's greedy answers.
pub fn empirical_subtask<'a>(
    answers: impl IntoIterator<Item = (&'a str, bool)>,
) -> BTreeMap<String, f64> {
    let mut tally: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (sub, ok) in answers {
        let e = tally.entry(sub.to_string()).or_default();
        e.0 += ok as usize;
        e.1 += 1;
    }
    tally
        .into_iter()
        .map(|(k, (c, n))| (k, (100.0 * c as f64 / n as f64).floor()))
        .collect()
}

/// Per-question label: the share of the K samples that are correct, ×100.
pub fn empirical_question(sample_correct: &[bool]) -> Option<f64> {
    if sample_correct.is_empty() {
        return None;
    }
    let c = sample_correct.iter().filter(|&&b| b).count();
    Some(100.0 * c as f64 / sample_correct.len() as f64)
}

/// Per-question label with a sub-task prior (empirical Bayes): a share `share` (0–1) of `n`
/// samples right, the greedy answer's grade `greedy` counted as `w` more samples, shrunk
/// toward the sub-task's accuracy `subtask` (0–1) with `m` pseudo-samples:
/// 100·(n·share + w·greedy + m·subtask)/(n + w + m). A question of a sub-task the model
/// always gets right keeps a high label when its few samples were unlucky; questions of one
/// sub-task still differ by their own samples, which a per-sub-task label cannot.
pub fn empirical_question_shrunk(
    share: f64,
    n: usize,
    (greedy, w): (bool, f64),
    subtask: f64,
    m: f64,
) -> f64 {
    let n = n as f64;
    if n + w + m <= 0.0 {
        return 100.0 * subtask;
    }
    let g = if greedy { w } else { 0.0 };
    100.0 * (n * share + g + m * subtask) / (n + w + m)
}

/// `labels.recalibrate`: P(right) = σ(a·logit(label) + b) for a label (percent), fitted on
/// the greedy answers' grades. `logistic` (Platt scaling) fits a and b by logistic
/// regression; `mean` fixes a = 1 and finds the b that makes the mean label the accuracy.
/// With a > 0 the labels keep their order; both bring their mean to the greedy accuracy (for
/// the logistic fit, a property of its intercept).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recalibration {
    pub kind: Recalibrate,
    pub a: f64,
    pub b: f64,
    pub fitted_on: usize,
    /// Mean label (percent) before and after, and the greedy accuracy (percent) of the fit.
    pub mean_before: f64,
    pub mean_after: f64,
    pub accuracy: f64,
}

/// logit of a percentage, clamped to [0.5%, 99.5%] so that 0% and 100% labels stay finite.
fn logit_percent(p: f64) -> f64 {
    let q = (p / 100.0).clamp(0.005, 0.995);
    (q / (1.0 - q)).ln()
}

/// σ(a·logit(label) + b), in percent.
fn platt(a: f64, b: f64, label: f64) -> f64 {
    100.0 / (1.0 + (-(a * logit_percent(label) + b)).exp())
}

impl Recalibration {
    /// Fit `kind` on labels (percent) and grades. `None` when one class is absent (or for
    /// `Recalibrate::None`: nothing to fit).
    pub fn fit(kind: Recalibrate, labels: &[f64], correct: &[bool]) -> Option<Self> {
        let right = correct.iter().filter(|&&c| c).count();
        if right == 0 || right == labels.len() {
            return None;
        }
        let (a, b) = match kind {
            Recalibrate::None => return None,
            Recalibrate::Logistic => Self::logistic_ab(labels, correct)?,
            Recalibrate::Mean => (1.0, Self::mean_b(labels, right)),
        };
        let n = labels.len() as f64;
        let mut r = Self {
            kind,
            a,
            b,
            fitted_on: labels.len(),
            mean_before: labels.iter().sum::<f64>() / n,
            mean_after: 0.0,
            accuracy: 100.0 * right as f64 / n,
        };
        r.mean_after = r.mean_of(labels);
        Some(r)
    }

    /// Platt scaling: the probe's logistic regression on one feature, the label's logit (a
    /// negligible penalty keeps a separable fit finite); it standardises, so undo that.
    fn logistic_ab(labels: &[f64], correct: &[bool]) -> Option<(f64, f64)> {
        let x: Vec<Vec<f32>> = labels
            .iter()
            .map(|&l| vec![logit_percent(l) as f32])
            .collect();
        let p = candor_confidence::probe::Probe::fit(&x, correct, 1e-3)?;
        let a = p.w[0] / p.std[0];
        Some((a, p.w[1] - a * p.mean[0]))
    }

    /// The log-odds shift that makes the mean label the accuracy (bisection: the mean rises
    /// with b).
    fn mean_b(labels: &[f64], right: usize) -> f64 {
        let accuracy = 100.0 * right as f64 / labels.len() as f64;
        let mean =
            |b: f64| labels.iter().map(|&l| platt(1.0, b, l)).sum::<f64>() / labels.len() as f64;
        let (mut lo, mut hi) = (-20.0, 20.0);
        for _ in 0..100 {
            let b = 0.5 * (lo + hi);
            if mean(b) < accuracy {
                lo = b;
            } else {
                hi = b;
            }
        }
        0.5 * (lo + hi)
    }

    /// The mean recalibrated label (percent).
    fn mean_of(&self, labels: &[f64]) -> f64 {
        labels.iter().map(|&l| self.apply(l)).sum::<f64>() / labels.len() as f64
    }

    /// The recalibrated label (percent).
    pub fn apply(&self, label: f64) -> f64 {
        platt(self.a, self.b, label)
    }
}

impl std::fmt::Display for Recalibration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "labels recalibrated ({}, fitted on {} training answers): σ({:.3}·logit(label) {:+.3}); mean label {:.1}% → {:.1}% (greedy accuracy {:.1}%); e.g. 5% → {:.0}%, 20% → {:.0}%, 50% → {:.0}%, 80% → {:.0}%",
            self.kind.name(),
            self.fitted_on,
            self.a,
            self.b,
            self.mean_before,
            self.mean_after,
            self.accuracy,
            self.apply(5.0),
            self.apply(20.0),
            self.apply(50.0),
            self.apply(80.0)
        )
    }
}

/// A monotone map from an uncertainty score (higher = less sure, like SAR) to a probability of
/// being correct, fitted on held-out graded questions and saved with the dataset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MonotoneMap {
    /// `isotonic` or `bins`.
    pub kind: String,
    /// `(score, P(correct))`, score ascending, probability non-increasing; linear in between,
    /// constant beyond the ends (as scikit-learn's `IsotonicRegression(out_of_bounds="clip")`).
    pub points: Vec<(f64, f64)>,
    pub fitted_on: usize,
}

/// Pool-adjacent-violators: the non-increasing fit of `ys` (weights `ws`) in the given order.
/// Written here because the one Rust crate with isotonic regression (linfa) is a large
/// framework for a 20-line algorithm.
fn pav_non_increasing(ys: &[f64], ws: &[f64]) -> Vec<f64> {
    // blocks of (weighted mean, weight, count)
    let mut blocks: Vec<(f64, f64, usize)> = vec![];
    for (&y, &w) in ys.iter().zip(ws) {
        blocks.push((y, w, 1));
        while blocks.len() > 1 {
            let n = blocks.len();
            let (a, b) = (blocks[n - 2], blocks[n - 1]);
            if a.0 >= b.0 {
                break;
            }
            let w = a.1 + b.1;
            blocks[n - 2] = ((a.0 * a.1 + b.0 * b.1) / w, w, a.2 + b.2);
            blocks.pop();
        }
    }
    blocks
        .into_iter()
        .flat_map(|(m, _, c)| std::iter::repeat_n(m, c))
        .collect()
}

impl MonotoneMap {
    /// Isotonic regression of correctness on the score (non-increasing).
    pub fn isotonic(scores: &[f64], correct: &[bool]) -> Self {
        // unique scores (sorted) with the mean correctness and count of each
        let mut pairs: Vec<(f64, f64)> = scores
            .iter()
            .zip(correct)
            .map(|(&s, &c)| (s, c as u8 as f64))
            .collect();
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut xs: Vec<f64> = vec![];
        let mut ys: Vec<f64> = vec![];
        let mut ws: Vec<f64> = vec![];
        for (s, c) in pairs {
            if xs.last() == Some(&s) {
                let i = xs.len() - 1;
                ys[i] = (ys[i] * ws[i] + c) / (ws[i] + 1.0);
                ws[i] += 1.0;
            } else {
                xs.push(s);
                ys.push(c);
                ws.push(1.0);
            }
        }
        let fit = pav_non_increasing(&ys, &ws);
        Self {
            kind: "isotonic".into(),
            points: xs.into_iter().zip(fit).collect(),
            fitted_on: scores.len(),
        }
    }

    /// `bins` equal-count bins of the score → accuracy of each bin (made monotone with PAV),
    /// placed at the bin's mean score.
    pub fn bins(scores: &[f64], correct: &[bool], bins: usize) -> Self {
        let mut pairs: Vec<(f64, bool)> = scores
            .iter()
            .cloned()
            .zip(correct.iter().cloned())
            .collect();
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let n = pairs.len();
        let bins = bins.clamp(1, n.max(1));
        let mut xs = vec![];
        let mut ys = vec![];
        let mut ws = vec![];
        for b in 0..bins {
            let (lo, hi) = (b * n / bins, (b + 1) * n / bins);
            if hi <= lo {
                continue;
            }
            let chunk = &pairs[lo..hi];
            xs.push(chunk.iter().map(|p| p.0).sum::<f64>() / chunk.len() as f64);
            ys.push(chunk.iter().filter(|p| p.1).count() as f64 / chunk.len() as f64);
            ws.push(chunk.len() as f64);
        }
        let fit = pav_non_increasing(&ys, &ws);
        Self {
            kind: "bins".into(),
            points: xs.into_iter().zip(fit).collect(),
            fitted_on: n,
        }
    }

    /// P(correct) for a score.
    pub fn apply(&self, s: f64) -> f64 {
        let p = &self.points;
        match p.len() {
            0 => 0.5,
            1 => p[0].1,
            _ if s <= p[0].0 => p[0].1,
            _ if s >= p[p.len() - 1].0 => p[p.len() - 1].1,
            _ => {
                let i = p.partition_point(|q| q.0 <= s); // p[i-1].0 <= s < p[i].0
                let (a, b) = (p[i - 1], p[i]);
                a.1 + (b.1 - a.1) * (s - a.0) / (b.0 - a.0)
            }
        }
    }
}

/// The distillation filter's verdict on one labelled answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    KeptCorrect,
    KeptWrong,
    /// Correct but the teacher was unsure (confidence < τ_hi): a lucky guess.
    DroppedUnsureCorrect,
    /// Wrong but the teacher was confident (confidence > τ_lo).
    DroppedConfidentWrong,
}

/// Keep correct answers with confidence ≥ τ_hi and wrong ones with confidence ≤ τ_lo.
pub fn distill(correct: bool, confidence: f64, tau_hi: f64, tau_lo: f64) -> Verdict {
    match (
        correct,
        correct && confidence >= tau_hi,
        !correct && confidence <= tau_lo,
    ) {
        (true, true, _) => Verdict::KeptCorrect,
        (true, false, _) => Verdict::DroppedUnsureCorrect,
        (false, _, true) => Verdict::KeptWrong,
        (false, _, false) => Verdict::DroppedConfidentWrong,
    }
}

/// The five words of CalibratedMath's word variant, for 0.2-wide bins.
pub const CONFIDENCE_WORDS: [&str; 5] = ["lowest", "low", "medium", "high", "highest"];

/// `Confidence: 61%` or `Confidence: medium` for a percentage.
pub fn confidence_text(percent: f64, format: ConfidenceFormat) -> String {
    match format {
        ConfidenceFormat::Percent => format!("Confidence: {}%", percent.round().clamp(0.0, 100.0)),
        ConfidenceFormat::Words => {
            let i = ((percent / 20.0).floor() as usize).min(4);
            format!("Confidence: {}", CONFIDENCE_WORDS[i])
        }
    }
}

/// The training target: `<answer>\nConfidence: N%`.
pub fn target(answer: &str, percent: f64, format: ConfidenceFormat) -> String {
    format!("{}\n{}", answer.trim(), confidence_text(percent, format))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logistic_recalibration_keeps_order_and_meets_the_accuracy() {
        // labels that run low: the answers are right about twice as often as labelled
        let mut labels = vec![];
        let mut correct = vec![];
        for (l, right_of_10) in [(5.0, 1), (10.0, 2), (20.0, 4), (40.0, 7), (60.0, 9)] {
            for i in 0..10 {
                labels.push(l);
                correct.push(i < right_of_10);
            }
        }
        let r = Recalibration::fit(Recalibrate::Logistic, &labels, &correct).unwrap();
        assert!(r.a > 0.0, "{r}");
        // order kept
        let mapped: Vec<f64> = [5.0, 10.0, 20.0, 40.0, 60.0]
            .iter()
            .map(|&l| r.apply(l))
            .collect();
        assert!(mapped.windows(2).all(|w| w[0] < w[1]), "{mapped:?}");
        // the fit's mean is the accuracy (46%), well above the labels' mean (27%)
        assert!((r.accuracy - 46.0).abs() < 1e-9);
        assert!((r.mean_after - r.accuracy).abs() < 0.5, "{r}");
        assert!((r.mean_before - 27.0).abs() < 1e-9);
        // each level near its bin's accuracy
        assert!((r.apply(10.0) - 20.0).abs() < 8.0, "{r}");
        // one class only: nothing to fit
        assert!(
            Recalibration::fit(Recalibrate::Logistic, &[10.0, 20.0], &[false, false]).is_none()
        );
        // the mean alone: slope 1, every label moved up, the mean met exactly
        let m = Recalibration::fit(Recalibrate::Mean, &labels, &correct).unwrap();
        assert_eq!(m.a, 1.0);
        assert!(m.b > 0.0 && (m.mean_after - m.accuracy).abs() < 1e-6, "{m}");
        assert!(m.apply(10.0) > 10.0 && m.apply(10.0) < r.apply(60.0));
        assert!(Recalibration::fit(Recalibrate::Mean, &[10.0], &[true]).is_none());
    }

    #[test]
    fn empirical_subtask_floors() {
        let m = empirical_subtask([("a", true), ("a", true), ("a", false), ("b", false)]);
        assert_eq!(m["a"], 66.0);
        assert_eq!(m["b"], 0.0);
        assert_eq!(
            empirical_question(&[true, false, true, true, true]),
            Some(80.0)
        );
        assert_eq!(empirical_question(&[]), None);
        // 1 of 4 right, sub-task at 80%, 4 pseudo-samples: (1 + 3.2) / 8
        let l = empirical_question_shrunk(0.25, 4, (true, 0.0), 0.8, 4.0);
        assert!((l - 52.5).abs() < 1e-9, "{l}");
        // no prior: the plain share
        assert_eq!(
            empirical_question_shrunk(0.5, 2, (false, 0.0), 0.9, 0.0),
            50.0
        );
        // a strong prior: near the sub-task's accuracy
        let l = empirical_question_shrunk(0.0, 10, (true, 0.0), 0.6, 1e6);
        assert!((l - 60.0).abs() < 0.01);
        // the greedy answer counted as 2 samples: right (1 + 2) / 6, wrong 1 / 6
        let l = empirical_question_shrunk(0.25, 4, (true, 2.0), 0.8, 0.0);
        assert!((l - 50.0).abs() < 1e-9, "{l}");
        let l = empirical_question_shrunk(0.25, 4, (false, 2.0), 0.8, 0.0);
        assert!((l - 100.0 / 6.0).abs() < 1e-9, "{l}");
    }

    #[test]
    fn isotonic_is_non_increasing_and_pools_violators() {
        // scores 1..6, correctness 1 1 0 1 0 0: the (0, 1) at scores 3, 4 pool to 0.5
        let s = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let c = [true, true, false, true, false, false];
        let m = MonotoneMap::isotonic(&s, &c);
        let ys: Vec<f64> = m.points.iter().map(|p| p.1).collect();
        assert_eq!(ys, vec![1.0, 1.0, 0.5, 0.5, 0.0, 0.0]);
        assert_eq!(m.apply(0.0), 1.0);
        assert_eq!(m.apply(2.5), 0.75);
        assert_eq!(m.apply(9.0), 0.0);
        // ties are averaged before pooling
        let m = MonotoneMap::isotonic(&[1.0, 1.0, 2.0], &[true, false, true]);
        // (mean 0.5, weight 2) then (1, weight 1) violate, pool to 2/3
        assert_eq!(m.points, vec![(1.0, 2.0 / 3.0), (2.0, 2.0 / 3.0)]);
    }

    #[test]
    fn bins_are_monotone() {
        let s: Vec<f64> = (0..100).map(|i| i as f64).collect();
        let c: Vec<bool> = (0..100).map(|i| i % 3 != 0 && i < 60).collect();
        let m = MonotoneMap::bins(&s, &c, 5);
        assert_eq!(m.points.len(), 5);
        assert!(m
            .points
            .windows(2)
            .all(|w| w[0].1 >= w[1].1 && w[0].0 < w[1].0));
    }

    #[test]
    fn distillation_rules() {
        assert_eq!(distill(true, 90.0, 85.0, 50.0), Verdict::KeptCorrect);
        assert_eq!(
            distill(true, 60.0, 85.0, 50.0),
            Verdict::DroppedUnsureCorrect
        );
        assert_eq!(distill(false, 40.0, 85.0, 50.0), Verdict::KeptWrong);
        assert_eq!(
            distill(false, 70.0, 85.0, 50.0),
            Verdict::DroppedConfidentWrong
        );
        // the defaults (0, 100) keep everything
        assert_eq!(distill(true, 0.0, 0.0, 100.0), Verdict::KeptCorrect);
        assert_eq!(distill(false, 100.0, 0.0, 100.0), Verdict::KeptWrong);
    }

    #[test]
    fn target_formats() {
        assert_eq!(
            target(" 897", 61.0, ConfidenceFormat::Percent),
            "897\nConfidence: 61%"
        );
        assert_eq!(
            target("897", 61.0, ConfidenceFormat::Words),
            "897\nConfidence: high"
        );
        assert_eq!(
            confidence_text(100.0, ConfidenceFormat::Words),
            "Confidence: highest"
        );
        assert_eq!(
            confidence_text(0.0, ConfidenceFormat::Words),
            "Confidence: lowest"
        );
    }
}
