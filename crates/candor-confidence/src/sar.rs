//! SAR, "Shifting Attention to Relevance" (Duan et al. 2024), `../shared/reference/methods.md` §2.
//! All scores are uncertainties: higher = less sure. Sentence terms are summed in log space
//! (log-sum-exp), and a trace whose token relevances are all zero (a one-token answer, or
//! removing any token changes nothing) gets uniform weights instead of the reference code's NaN.
//!
//! The functions take numbers (log-probs, relevances, similarity matrices) so that they can be
//! checked by hand; [`crate::similarity`] computes the relevances and similarities.

/// Normalised token relevance `R̃_i = R_i / Σ R`; uniform when `Σ R ≤ 0` (the zero-relevance
/// guard). Negative relevances (a similarity model that rates the shortened answer *more*
/// similar) count as 0.
pub fn normalized_relevance(relevance: &[f64]) -> Vec<f64> {
    let r: Vec<f64> = relevance.iter().map(|&x| x.max(0.0)).collect();
    let total: f64 = r.iter().sum();
    if total <= 0.0 || !total.is_finite() {
        return vec![1.0 / r.len().max(1) as f64; r.len()];
    }
    r.iter().map(|x| x / total).collect()
}

/// tokenSAR: `E_T(s) = Σ_i R̃_i · (−log p(z_i))`, a relevance-weighted mean NLL.
pub fn token_sar(logprobs: &[f64], relevance: &[f64]) -> f64 {
    assert_eq!(logprobs.len(), relevance.len());
    if logprobs.is_empty() {
        return 0.0;
    }
    normalized_relevance(relevance)
        .iter()
        .zip(logprobs)
        .map(|(w, lp)| -w * lp)
        .sum()
}

fn log_sum_exp(xs: &[f64]) -> f64 {
    let m = xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + xs.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
}

/// sentenceSAR over K samples from their sequence log-probs `log p(s_j)` and the similarity
/// matrix `g[j][k]` (diagonal unused; clipped to [0, 1]):
/// `E_S(s_j) = −log(p(s_j) + Σ_{k≠j} g(s_j, s_k) p(s_k) / t)`, score = mean over j.
pub fn sentence_sar(log_p: &[f64], sim: &[Vec<f64>], t: f64) -> f64 {
    let k = log_p.len();
    assert_eq!(sim.len(), k);
    if k == 0 {
        return 0.0;
    }
    let log_t = t.ln();
    let per: Vec<f64> = (0..k)
        .map(|j| {
            let mut terms = vec![log_p[j]];
            for (kk, &lp) in log_p.iter().enumerate() {
                let g = sim[j][kk].clamp(0.0, 1.0);
                if kk != j && g > 0.0 {
                    terms.push(g.ln() + lp - log_t);
                }
            }
            -log_sum_exp(&terms)
        })
        .collect();
    per.iter().sum::<f64>() / k as f64
}

/// SAR: sentenceSAR with `p(s)` replaced by `p'(s) = exp(−E_T(s))`, given each sample's tokenSAR.
pub fn sar(token_sars: &[f64], sim: &[Vec<f64>], t: f64) -> f64 {
    let log_p: Vec<f64> = token_sars.iter().map(|e| -e).collect();
    sentence_sar(&log_p, sim, t)
}

/// SAR's reference temperature.
pub const DEFAULT_T: f64 = 0.001;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_sar_weights_by_relevance() {
        // two tokens, p = 0.5 and 0.1; relevance 3:1 → weights 0.75, 0.25
        let lp = [0.5f64.ln(), 0.1f64.ln()];
        let e = token_sar(&lp, &[0.3, 0.1]);
        let want = 0.75 * -(0.5f64.ln()) + 0.25 * -(0.1f64.ln());
        assert!((e - want).abs() < 1e-12, "{e} vs {want}");
    }

    #[test]
    fn one_token_answer_and_zero_relevance_fall_back_to_uniform() {
        // one token whose removal leaves a perfectly similar text: R = 0 → weight 1, not NaN
        let e = token_sar(&[0.2f64.ln()], &[0.0]);
        assert!((e - -(0.2f64.ln())).abs() < 1e-12);
        // several tokens, all irrelevant: the plain mean NLL
        let lp = [0.5f64.ln(), 0.25f64.ln()];
        let e = token_sar(&lp, &[0.0, 0.0]);
        assert!((e - (-(0.5f64.ln()) - 0.25f64.ln()) / 2.0).abs() < 1e-12);
        assert!(e.is_finite());
    }

    #[test]
    fn sentence_sar_hand_computed() {
        // K = 2, p = (0.2, 0.4), g = 0.5 between them, t = 0.1
        // E_1 = −ln(0.2 + 0.5·0.4/0.1) = −ln 2.2; E_2 = −ln(0.4 + 0.5·0.2/0.1) = −ln 1.4
        let sim = vec![vec![1.0, 0.5], vec![0.5, 1.0]];
        let s = sentence_sar(&[0.2f64.ln(), 0.4f64.ln()], &sim, 0.1);
        let want = (-(2.2f64.ln()) - 1.4f64.ln()) / 2.0;
        assert!((s - want).abs() < 1e-12, "{s} vs {want}");
    }

    #[test]
    fn identical_samples_are_more_certain_than_unrelated_ones() {
        let lp = vec![-3.0f64; 5];
        let same = vec![vec![1.0; 5]; 5];
        let mut apart = vec![vec![0.0; 5]; 5];
        (0..5).for_each(|i| apart[i][i] = 1.0);
        let s_same = sentence_sar(&lp, &same, DEFAULT_T);
        let s_apart = sentence_sar(&lp, &apart, DEFAULT_T);
        // identical: −ln(e^-3 + 4·e^-3/0.001) = 3 − ln(4001); unrelated: −ln(e^-3) = 3
        assert!((s_same - (3.0 - 4001f64.ln())).abs() < 1e-9, "{s_same}");
        assert!((s_apart - 3.0).abs() < 1e-12);
        assert!(s_same < s_apart);
    }

    #[test]
    fn log_space_does_not_overflow() {
        // tiny probabilities and t = 1e-3: a linear-space sum would underflow to −ln 0 = ∞
        let lp = vec![-800.0, -801.0];
        let sim = vec![vec![1.0, 0.9], vec![0.9, 1.0]];
        let s = sentence_sar(&lp, &sim, DEFAULT_T);
        assert!(s.is_finite() && s > 790.0, "{s}");
    }

    #[test]
    fn sar_uses_token_sar_as_probability() {
        let sim = vec![vec![1.0, 0.3], vec![0.3, 1.0]];
        let et = [0.7, 1.9];
        let direct = sentence_sar(&[-0.7, -1.9], &sim, 0.01);
        assert_eq!(sar(&et, &sim, 0.01), direct);
    }
}
