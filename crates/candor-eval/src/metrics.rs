//! Calibration metrics with the exact conventions of `../shared/fixtures/metrics/cases.json`
//! (scikit-learn / numpy), confidences on the 0..1 scale, `correct` as booleans.

use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Every metric of one readout on one set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub n: usize,
    pub accuracy: f64,
    pub brier: f64,
    pub ece_10: f64,
    pub ece_15: f64,
    /// None when only one class is present.
    pub auroc: Option<f64>,
    /// Average precision with correct answers as positives; None when only one class is present.
    pub auprc: Option<f64>,
    pub mad_20: f64,
    pub aurc: f64,
    /// Accuracy on the most confident 25/50/75/100% (the rest escalated).
    pub acc_at_coverage: [f64; 4],
}

impl Metrics {
    pub fn compute(conf: &[f64], correct: &[bool]) -> Metrics {
        assert_eq!(conf.len(), correct.len(), "one confidence per answer");
        Metrics {
            n: conf.len(),
            accuracy: accuracy(correct),
            brier: brier(conf, correct),
            ece_10: ece(conf, correct, 10),
            ece_15: ece(conf, correct, 15),
            auroc: auroc(conf, correct),
            auprc: average_precision(conf, correct),
            mad_20: mad_equal_mass(conf, correct, 20),
            aurc: aurc(conf, correct),
            acc_at_coverage: [0.25, 0.5, 0.75, 1.0].map(|c| accuracy_at_coverage(conf, correct, c)),
        }
    }
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 {
        f64::NAN
    } else {
        s / n as f64
    }
}

pub fn accuracy(correct: &[bool]) -> f64 {
    mean(correct.iter().map(|&c| c as u8 as f64))
}

/// Mean squared difference between confidence and correctness.
pub fn brier(conf: &[f64], correct: &[bool]) -> f64 {
    mean(
        conf.iter()
            .zip(correct)
            .map(|(&p, &y)| (p - y as u8 as f64).powi(2)),
    )
}

/// `np.linspace(0, 1, n + 1)`: `k · (1/n)`, the last edge exactly 1.
fn linspace01(n: usize) -> Vec<f64> {
    let step = 1.0 / n as f64;
    let mut e: Vec<f64> = (0..=n).map(|k| k as f64 * step).collect();
    e[n] = 1.0;
    e
}

/// One equal-width bin: how many answers fell in it, their mean confidence and accuracy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Bin {
    pub lo: f64,
    pub hi: f64,
    pub count: usize,
    pub mean_confidence: f64,
    pub accuracy: f64,
}

/// Equal-width bins `[0, e1], (e1, e2], …, (e_{n-1}, 1]` (numpy's linspace edges): the first bin
/// is closed at 0 and every bin on the right, so 0.0 and 1.0 both land in a bin.
pub fn equal_width_bins(conf: &[f64], correct: &[bool], bins: usize) -> Vec<Bin> {
    let edges = linspace01(bins);
    let mut out: Vec<Bin> = (0..bins)
        .map(|k| Bin {
            lo: edges[k],
            hi: edges[k + 1],
            ..Default::default()
        })
        .collect();
    for (&p, &y) in conf.iter().zip(correct) {
        // first edge ≥ p, minus one
        let k = edges
            .partition_point(|&e| e < p)
            .saturating_sub(1)
            .min(bins - 1);
        out[k].count += 1;
        out[k].mean_confidence += p;
        out[k].accuracy += y as u8 as f64;
    }
    for b in out.iter_mut().filter(|b| b.count > 0) {
        b.mean_confidence /= b.count as f64;
        b.accuracy /= b.count as f64;
    }
    out
}

/// Expected calibration error over [`equal_width_bins`]: Σ (count/n)·|accuracy − confidence|.
pub fn ece(conf: &[f64], correct: &[bool], bins: usize) -> f64 {
    let n = conf.len() as f64;
    equal_width_bins(conf, correct, bins)
        .iter()
        .filter(|b| b.count > 0)
        .map(|b| b.count as f64 / n * (b.accuracy - b.mean_confidence).abs())
        .sum()
}

/// The risk–coverage curve: `(k/n, error rate among the k most confident)` for k = 1..n.
pub fn risk_coverage(conf: &[f64], correct: &[bool]) -> Vec<(f64, f64)> {
    let n = conf.len() as f64;
    let mut errors = 0usize;
    by_confidence_desc(conf)
        .iter()
        .enumerate()
        .map(|(k, &i)| {
            errors += !correct[i] as usize;
            ((k + 1) as f64 / n, errors as f64 / (k + 1) as f64)
        })
        .collect()
}

/// Area under the ROC curve of confidence against correctness (Mann–Whitney, ties count ½).
pub fn auroc(conf: &[f64], correct: &[bool]) -> Option<f64> {
    let pos = correct.iter().filter(|&&c| c).count();
    let neg = correct.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    let mut idx: Vec<usize> = (0..conf.len()).collect();
    idx.sort_by(|&a, &b| conf[a].total_cmp(&conf[b]));
    // mid-ranks (1-based) of tied groups
    let mut rank_sum_pos = 0f64;
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && conf[idx[j + 1]] == conf[idx[i]] {
            j += 1;
        }
        let mid = (i + j) as f64 / 2.0 + 1.0;
        rank_sum_pos += idx[i..=j].iter().filter(|&&k| correct[k]).count() as f64 * mid;
        i = j + 1;
    }
    let (p, n) = (pos as f64, neg as f64);
    Some((rank_sum_pos - p * (p + 1.0) / 2.0) / (p * n))
}

/// scikit-learn's `average_precision_score` with correct answers as positives:
/// `Σ (R_i − R_{i−1}) · P_i` over distinct thresholds, highest first.
pub fn average_precision(conf: &[f64], correct: &[bool]) -> Option<f64> {
    let pos = correct.iter().filter(|&&c| c).count();
    if pos == 0 || pos == correct.len() {
        return None;
    }
    let mut idx: Vec<usize> = (0..conf.len()).collect();
    idx.sort_by(|&a, &b| conf[b].total_cmp(&conf[a]));
    let (mut tp, mut fp, mut prev_recall, mut ap) = (0f64, 0f64, 0f64, 0f64);
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j < idx.len() && conf[idx[j]] == conf[idx[i]] {
            if correct[idx[j]] {
                tp += 1.0;
            } else {
                fp += 1.0;
            }
            j += 1;
        }
        let recall = tp / pos as f64;
        ap += (recall - prev_recall) * (tp / (tp + fp));
        prev_recall = recall;
        i = j;
    }
    Some(ap)
}

/// numpy's `percentile(a, q·100)` with the default linear method (and its lerp).
fn percentile_linear(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    let virtual_index = (n - 1) as f64 * q;
    let lo = virtual_index.floor();
    let gamma = virtual_index - lo;
    let lo = (lo as usize).min(n - 1);
    let hi = (lo + 1).min(n - 1);
    let (a, b) = (sorted[lo], sorted[hi]);
    let diff = b - a;
    if gamma >= 0.5 {
        b - diff * (1.0 - gamma)
    } else {
        a + diff * gamma
    }
}

/// CalibratedMath's MAD: scikit-learn `calibration_curve(strategy="quantile", n_bins)` and the
/// unweighted mean of `|fraction correct − mean confidence|` over its non-empty bins.
pub fn mad_equal_mass(conf: &[f64], correct: &[bool], bins: usize) -> f64 {
    if conf.is_empty() {
        return f64::NAN;
    }
    let mut sorted = conf.to_vec();
    sorted.sort_by(f64::total_cmp);
    let edges: Vec<f64> = linspace01(bins)
        .iter()
        .map(|&q| percentile_linear(&sorted, q * 100.0 / 100.0))
        .collect();
    let inner = &edges[1..bins];
    let mut count = vec![0usize; bins + 1];
    let mut sum_conf = vec![0f64; bins + 1];
    let mut sum_acc = vec![0f64; bins + 1];
    for (&p, &y) in conf.iter().zip(correct) {
        let k = inner.partition_point(|&e| e < p); // np.searchsorted(side="left")
        count[k] += 1;
        sum_conf[k] += p;
        sum_acc[k] += y as u8 as f64;
    }
    mean(
        (0..=bins)
            .filter(|&k| count[k] > 0)
            .map(|k| (sum_acc[k] / count[k] as f64 - sum_conf[k] / count[k] as f64).abs()),
    )
}

/// Indices by confidence, highest first; ties keep their original order.
fn by_confidence_desc(conf: &[f64]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..conf.len()).collect();
    idx.sort_by(|&a, &b| conf[b].total_cmp(&conf[a])); // stable
    idx
}

/// Area under the risk–coverage curve: mean over k of the error rate among the k most confident.
pub fn aurc(conf: &[f64], correct: &[bool]) -> f64 {
    mean(
        risk_coverage(conf, correct)
            .into_iter()
            .map(|(_, risk)| risk),
    )
}

/// Accuracy on the `ceil(coverage · n)` most confident answers (the rest escalated). Answers
/// tied with the last one kept are taken in proportion (the expected accuracy when ties are
/// broken at random), so a constant readout scores the overall accuracy at every coverage.
pub fn accuracy_at_coverage(conf: &[f64], correct: &[bool], coverage: f64) -> f64 {
    let n = conf.len();
    if n == 0 {
        return f64::NAN;
    }
    let keep = ((coverage * n as f64).ceil() as usize).clamp(1, n);
    let order = by_confidence_desc(conf);
    let cut = conf[order[keep - 1]];
    let above: Vec<usize> = order.iter().copied().filter(|&i| conf[i] > cut).collect();
    let tied: Vec<usize> = order.iter().copied().filter(|&i| conf[i] == cut).collect();
    let hits = |v: &[usize]| v.iter().filter(|&&i| correct[i]).count() as f64;
    let from_tied = (keep - above.len()) as f64;
    (hits(&above) + from_tied * hits(&tied) / tied.len() as f64) / keep as f64
}

/// Seeded percentile bootstrap: the 2.5% and 97.5% quantiles of `metric` over `reps` resamples
/// (resamples where the metric is undefined are skipped).
pub fn bootstrap_ci(
    conf: &[f64],
    correct: &[bool],
    reps: usize,
    seed: u64,
    metric: impl Fn(&[f64], &[bool]) -> Option<f64>,
) -> Option<(f64, f64)> {
    let n = conf.len();
    if n == 0 {
        return None;
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut vals = Vec::with_capacity(reps);
    let (mut c, mut y) = (vec![0f64; n], vec![false; n]);
    for _ in 0..reps {
        for k in 0..n {
            let i = rng.random_range(0..n);
            c[k] = conf[i];
            y[k] = correct[i];
        }
        if let Some(v) = metric(&c, &y) {
            vals.push(v);
        }
    }
    if vals.is_empty() {
        return None;
    }
    vals.sort_by(f64::total_cmp);
    Some((
        percentile_linear(&vals, 0.025),
        percentile_linear(&vals, 0.975),
    ))
}
