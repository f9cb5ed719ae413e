//! The `probe` readout: logistic regression on the model's last hidden state at the end of its
//! answer, fitted on graded training answers. It says how much the model "knows" about its own
//! correctness, so a report can tell whether the verbalized confidence falls short of it
//! (RLCR and calibration-tuning use such probes; `../shared/reference/methods.md` §8).
//!
//! Written here rather than taken from a crate: the Rust logistic regressions (linfa-logistic,
//! smartcore) bring a linear-algebra stack for what is ~60 lines of Newton's method on at most
//! a few thousand rows of a few hundred features.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    /// Per-feature mean and standard deviation of the training features (standardisation).
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    /// Weights of the standardised features, then the bias.
    pub w: Vec<f64>,
    /// The L2 penalty it was fitted with.
    pub l2: f64,
    pub fitted_on: usize,
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// Solve `a · x = b` for a symmetric positive definite `a` (n×n, row-major) by Cholesky.
fn solve_spd(mut a: Vec<f64>, mut b: Vec<f64>, n: usize) -> Vec<f64> {
    for j in 0..n {
        let mut d = a[j * n + j];
        for k in 0..j {
            d -= a[j * n + k] * a[j * n + k];
        }
        let d = d.max(1e-12).sqrt();
        a[j * n + j] = d;
        for i in j + 1..n {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = s / d;
        }
    }
    for i in 0..n {
        for k in 0..i {
            b[i] -= a[i * n + k] * b[k];
        }
        b[i] /= a[i * n + i];
    }
    for i in (0..n).rev() {
        for k in i + 1..n {
            b[i] -= a[k * n + i] * b[k];
        }
        b[i] /= a[i * n + i];
    }
    b
}

impl Probe {
    /// Fit by Newton's method (iteratively reweighted least squares) with an L2 penalty `l2`
    /// on the weights (not the bias), on standardised features. `None` when one class is
    /// absent or there are no rows.
    pub fn fit(x: &[Vec<f32>], y: &[bool], l2: f64) -> Option<Self> {
        let n = x.len();
        if n == 0 || y.iter().all(|&c| c) || y.iter().all(|&c| !c) {
            return None;
        }
        let d = x[0].len();
        let mut mean = vec![0.0; d];
        let mut std = vec![0.0; d];
        for r in x {
            for (m, &v) in mean.iter_mut().zip(r) {
                *m += v as f64 / n as f64;
            }
        }
        for r in x {
            for j in 0..d {
                std[j] += (r[j] as f64 - mean[j]).powi(2) / n as f64;
            }
        }
        for s in std.iter_mut() {
            *s = s.sqrt().max(1e-6);
        }
        // standardised rows with a trailing 1 for the bias
        let p = d + 1;
        let z: Vec<Vec<f64>> = x
            .iter()
            .map(|r| {
                let mut v: Vec<f64> = (0..d).map(|j| (r[j] as f64 - mean[j]) / std[j]).collect();
                v.push(1.0);
                v
            })
            .collect();
        let mut w = vec![0.0; p];
        for _ in 0..25 {
            let mut h = vec![0.0; p * p];
            let mut g = vec![0.0; p];
            for (zi, &yi) in z.iter().zip(y) {
                let pi = sigmoid(zi.iter().zip(&w).map(|(a, b)| a * b).sum());
                let r = pi - yi as u8 as f64;
                let s = (pi * (1.0 - pi)).max(1e-9);
                for a in 0..p {
                    g[a] += r * zi[a];
                    let sa = s * zi[a];
                    for b in 0..=a {
                        h[a * p + b] += sa * zi[b];
                    }
                }
            }
            for a in 0..p {
                for b in 0..a {
                    h[b * p + a] = h[a * p + b];
                }
            }
            for j in 0..d {
                g[j] += l2 * w[j];
                h[j * p + j] += l2;
            }
            let step = solve_spd(h, g, p);
            let mut moved = 0f64;
            for (wi, si) in w.iter_mut().zip(&step) {
                *wi -= si;
                moved = moved.max(si.abs());
            }
            if moved < 1e-8 {
                break;
            }
        }
        Some(Self {
            mean,
            std,
            w,
            l2,
            fitted_on: n,
        })
    }

    /// P(correct) for one feature vector.
    pub fn predict(&self, x: &[f32]) -> f64 {
        let d = self.mean.len();
        let z: f64 = (0..d)
            .map(|j| (x[j] as f64 - self.mean[j]) / self.std[j] * self.w[j])
            .sum::<f64>()
            + self.w[d];
        sigmoid(z)
    }
}

/// Out-of-fold probabilities: row i's comes from a probe fitted on the rows of the other
/// folds, so no row's probability has seen its own label (the `probe` teacher). Rows with
/// equal `keys` (the same question asked twice: the same greedy answer and hidden state) share
/// a fold, or a copy in another fold would hand the probe the label; the k-th distinct key, in
/// order of first appearance, is in fold k mod `folds` (`folds` ≥ 2), so with distinct keys row
/// i is in fold i mod `folds`. `Err(f)` when the rows outside fold f hold one class only.
pub fn cross_fitted<K: std::hash::Hash + Eq>(
    x: &[Vec<f32>],
    y: &[bool],
    keys: &[K],
    folds: usize,
    l2: f64,
) -> Result<Vec<f64>, usize> {
    assert!(folds >= 2, "cross-fitting needs at least 2 folds");
    assert_eq!(keys.len(), x.len(), "one key per row");
    let mut first = std::collections::HashMap::new();
    let fold: Vec<usize> = keys
        .iter()
        .map(|k| {
            let n = first.len();
            *first.entry(k).or_insert(n) % folds
        })
        .collect();
    let mut p = vec![0.0; x.len()];
    for f in 0..folds {
        let (xs, ys): (Vec<Vec<f32>>, Vec<bool>) = (0..x.len())
            .filter(|&i| fold[i] != f)
            .map(|i| (x[i].clone(), y[i]))
            .unzip();
        let probe = Probe::fit(&xs, &ys, l2).ok_or(f)?;
        for i in (0..x.len()).filter(|&i| fold[i] == f) {
            p[i] = probe.predict(&x[i]);
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A seeded stream of numbers in [-1, 1) (a 64-bit LCG), for test data.
    fn uniform(seed: u64) -> impl FnMut() -> f32 {
        let mut s = seed;
        move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f64 / (1u64 << 31) as f64) as f32 * 2.0 - 1.0
        }
    }

    #[test]
    fn a_cross_fitted_probability_never_sees_its_own_label() {
        let mut r = uniform(11);
        let x: Vec<Vec<f32>> = (0..100).map(|_| vec![r(), r()]).collect();
        let mut y: Vec<bool> = x.iter().map(|v| v[0] > 0.0).collect();
        let keys: Vec<usize> = (0..100).collect();
        let before = cross_fitted(&x, &y, &keys, 5, 1.0).unwrap();
        // it still ranks: the other folds teach the rule
        let right = (0..100).filter(|&i| (before[i] > 0.5) == y[i]).count();
        assert!(right >= 90, "{right} of 100");
        // flip row 7's label: its own probability is unchanged, its fold-mates' are not
        y[7] = !y[7];
        let after = cross_fitted(&x, &y, &keys, 5, 1.0).unwrap();
        assert_eq!(before[7], after[7]);
        assert_eq!(
            before[12], after[12],
            "same fold as row 7 (7 mod 5 = 12 mod 5)"
        );
        assert_ne!(
            before[8], after[8],
            "another fold's probe saw the flipped label"
        );
        // a fold whose complement has one class is named
        let one = vec![true, true, true, true, true, false];
        let x6: Vec<Vec<f32>> = (0..6).map(|i| vec![i as f32]).collect();
        assert_eq!(cross_fitted(&x6, &one, &[0, 1, 2, 3, 4, 5], 6, 1.0), Err(5));
    }

    #[test]
    fn a_question_asked_twice_never_lends_its_label_to_its_copy() {
        let mut r = uniform(5);
        let mut x: Vec<Vec<f32>> = (0..100).map(|_| vec![r(), r(), r()]).collect();
        x[51] = x[7].clone(); // row 51 asks row 7's question again
        let mut y: Vec<bool> = x.iter().map(|v| v[0] > 0.0).collect();
        let by_question: Vec<usize> = (0..100).map(|i| if i == 51 { 7 } else { i }).collect();
        let by_row: Vec<usize> = (0..100).collect();
        let before = cross_fitted(&x, &y, &by_question, 5, 1e-3).unwrap();
        let before_by_row = cross_fitted(&x, &y, &by_row, 5, 1e-3).unwrap();
        // the question's grade flips (both copies): keyed by question, neither copy's
        // probability moves; keyed by row, the copy in another fold lends it the new label
        y[7] = !y[7];
        y[51] = !y[51];
        let after = cross_fitted(&x, &y, &by_question, 5, 1e-3).unwrap();
        let after_by_row = cross_fitted(&x, &y, &by_row, 5, 1e-3).unwrap();
        assert_eq!((before[7], before[51]), (after[7], after[51]));
        assert_eq!(
            before[7], before[51],
            "same fold, same probe, same features"
        );
        let moved = (after_by_row[7] - before_by_row[7]).abs();
        assert!(moved > 1e-3, "keyed by row the copy leaks: moved {moved}");
    }

    #[test]
    fn separates_a_separable_case_and_refuses_one_class() {
        // correct iff x0 + 0.5·x1 > 0.2, plus a feature of pure noise
        let mut r = uniform(7);
        let x: Vec<Vec<f32>> = (0..400).map(|_| vec![r(), r(), r()]).collect();
        let y: Vec<bool> = x.iter().map(|v| v[0] + 0.5 * v[1] > 0.2).collect();
        let p = Probe::fit(&x, &y, 1e-3).unwrap();
        let right = x
            .iter()
            .zip(&y)
            .filter(|(v, &c)| (p.predict(v) > 0.5) == c)
            .count();
        assert!(right >= 396, "{right} of 400 on the training set");
        // held-out points far from the boundary
        assert!(p.predict(&[0.9, 0.5, 0.0]) > 0.95);
        assert!(p.predict(&[-0.9, -0.5, 0.0]) < 0.05);
        // the noise feature gets a small weight next to the informative one
        assert!(p.w[2].abs() < 0.2 * p.w[0].abs(), "{:?}", p.w);
        assert!(Probe::fit(&x, &vec![true; 400], 1e-3).is_none());
    }
}
