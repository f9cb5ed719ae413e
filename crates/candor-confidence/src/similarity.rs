//! Semantic similarity `g(a, b)` for SAR, pluggable: all-MiniLM-L6-v2 cosine ([`crate::MiniLm`]),
//! or [`Lexical`] ROUGE-L F1 over normalised words, which needs no model. Also the SAR driver
//! that turns sampled answers into tokenSAR / sentenceSAR / SAR.

use crate::sar;
use anyhow::Result;
use serde::{Deserialize, Serialize};

pub trait Similarity {
    /// `g(a, b)` for each pair, in [0, 1] (cosines below 0 are clipped by SAR).
    fn similarities(&mut self, pairs: &[(String, String)]) -> Result<Vec<f64>>;
    fn name(&self) -> String;
    /// Prepare for comparisons among `texts` (a model embeds them all at once, in batches of
    /// similar length, instead of a few at a time as each question asks). Optional.
    fn prefetch(&mut self, _texts: &[String]) -> Result<()> {
        Ok(())
    }
}

/// A stand-in similarity that records every text it is asked about (and answers 0.5): run a
/// computation once with it to learn the texts a real model will need, [`Similarity::prefetch`]
/// them, then run the computation for real.
#[derive(Default)]
pub struct Recorder {
    pub texts: Vec<String>,
}

impl Similarity for Recorder {
    fn similarities(&mut self, pairs: &[(String, String)]) -> Result<Vec<f64>> {
        for (a, b) in pairs {
            self.texts.push(a.clone());
            self.texts.push(b.clone());
        }
        Ok(vec![0.5; pairs.len()])
    }
    fn name(&self) -> String {
        "recorder".into()
    }
}

/// SQuAD normalisation: lowercase, punctuation removed, articles removed, spaces collapsed.
pub fn normalize(s: &str) -> String {
    let lower: String = s
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c.is_whitespace() {
                c
            } else {
                ' '
            }
        })
        .collect();
    lower
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// ROUGE-L F1 over normalised words (longest common subsequence), as `rouge_score` computes it.
pub fn rouge_l(candidate: &str, reference: &str) -> f64 {
    let (ca, rb) = (normalize(candidate), normalize(reference));
    let a: Vec<&str> = ca.split_whitespace().collect();
    let b: Vec<&str> = rb.split_whitespace().collect();
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    let mut prev = vec![0usize; b.len() + 1];
    for x in &a {
        let mut cur = vec![0usize; b.len() + 1];
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                cur[j].max(prev[j + 1])
            };
        }
        prev = cur;
    }
    let lcs = prev[b.len()] as f64;
    if lcs == 0.0 {
        return 0.0;
    }
    let (p, r) = (lcs / a.len() as f64, lcs / b.len() as f64);
    2.0 * p * r / (p + r)
}

/// ROUGE-L F1 as the similarity: no model, no download; coarse (token relevance becomes
/// nearly uniform), so SAR with it is mostly sentenceSAR over lexical agreement.
pub struct Lexical;

impl Similarity for Lexical {
    fn similarities(&mut self, pairs: &[(String, String)]) -> Result<Vec<f64>> {
        Ok(pairs.iter().map(|(a, b)| rouge_l(a, b)).collect())
    }
    fn name(&self) -> String {
        "rouge-l".into()
    }
}

/// One sampled answer as SAR needs it.
pub struct SarSample {
    /// The answer text.
    pub text: String,
    /// The answer text with token `i` left out, for each generated token.
    pub without: Vec<String>,
    /// Log-prob of each generated token.
    pub logprobs: Vec<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SarScores {
    /// tokenSAR of each sample.
    pub token_sar: Vec<f64>,
    pub sentence_sar: f64,
    pub sar: f64,
}

/// Token relevances `R_i = 1 − g(x ⊕ s, x ⊕ s∖z_i)` of one answer.
pub fn token_relevance(sim: &mut dyn Similarity, prompt: &str, s: &SarSample) -> Result<Vec<f64>> {
    let full = format!("{prompt} {}", s.text);
    let pairs: Vec<(String, String)> = s
        .without
        .iter()
        .map(|w| (full.clone(), format!("{prompt} {w}")))
        .collect();
    Ok(sim.similarities(&pairs)?.iter().map(|g| 1.0 - g).collect())
}

/// tokenSAR of each sample, sentenceSAR and SAR of the set (temperature `t`).
pub fn sar_scores(
    sim: &mut dyn Similarity,
    prompt: &str,
    samples: &[SarSample],
    t: f64,
) -> Result<SarScores> {
    let k = samples.len();
    let mut token_sar = Vec::with_capacity(k);
    for s in samples {
        let r = token_relevance(sim, prompt, s)?;
        token_sar.push(sar::token_sar(&s.logprobs, &r));
    }
    let mut pairs = vec![];
    for i in 0..k {
        for j in i + 1..k {
            pairs.push((samples[i].text.clone(), samples[j].text.clone()));
        }
    }
    let g = sim.similarities(&pairs)?;
    let mut m = vec![vec![1.0; k]; k];
    let idx = (0..k).flat_map(|i| (i + 1..k).map(move |j| (i, j)));
    for ((i, j), v) in idx.zip(g) {
        m[i][j] = v;
        m[j][i] = v;
    }
    let log_p: Vec<f64> = samples.iter().map(|s| s.logprobs.iter().sum()).collect();
    Ok(SarScores {
        sentence_sar: sar::sentence_sar(&log_p, &m, t),
        sar: sar::sar(&token_sar, &m, t),
        token_sar,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rouge_l_by_hand() {
        assert_eq!(rouge_l("The Eiffel Tower", "eiffel tower!"), 1.0);
        // candidate 4 words, reference 2, LCS 2: P = 0.5, R = 1, F = 2/3
        assert!((rouge_l("it is Dave Lamb", "Dave Lamb") - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(rouge_l("", "x"), 0.0);
        assert_eq!(rouge_l("paris", "london"), 0.0);
    }

    #[test]
    fn identical_samples_score_lower_sar_than_disagreeing_ones() {
        let mk = |t: &str| SarSample {
            text: t.into(),
            without: t.split(' ').map(|_| String::new()).collect(),
            logprobs: vec![-0.5; t.split(' ').count()],
        };
        let same: Vec<SarSample> = (0..5).map(|_| mk("Montpelier")).collect();
        let mixed: Vec<SarSample> = ["Montpelier", "Boston", "Burlington", "Albany", "Concord"]
            .iter()
            .map(|t| mk(t))
            .collect();
        let a = sar_scores(&mut Lexical, "Q", &same, sar::DEFAULT_T).unwrap();
        let b = sar_scores(&mut Lexical, "Q", &mixed, sar::DEFAULT_T).unwrap();
        assert!(
            a.sar < b.sar && a.sentence_sar < b.sentence_sar,
            "{a:?} {b:?}"
        );
        assert!(a.token_sar.iter().all(|e| (e - 0.5).abs() < 1e-12));
    }

    /// Lexical similarity that remembers which texts it compared and whether they were
    /// prefetched first.
    #[derive(Default)]
    struct Counting {
        prefetched: std::collections::HashSet<String>,
        missed: Vec<String>,
    }

    impl Similarity for Counting {
        fn similarities(&mut self, pairs: &[(String, String)]) -> Result<Vec<f64>> {
            for (a, b) in pairs {
                for t in [a, b] {
                    if !self.prefetched.contains(t) {
                        self.missed.push(t.clone());
                    }
                }
            }
            Lexical.similarities(pairs)
        }
        fn name(&self) -> String {
            "counting".into()
        }
        fn prefetch(&mut self, texts: &[String]) -> Result<()> {
            self.prefetched.extend(texts.iter().cloned());
            Ok(())
        }
    }

    #[test]
    fn a_recorded_pass_prefetches_every_text_sar_compares() {
        let mk = |t: &str| SarSample {
            text: t.into(),
            without: t.split(' ').map(|w| t.replace(w, "")).collect(),
            logprobs: vec![-0.5; t.split(' ').count()],
        };
        let samples: Vec<SarSample> = ["Mount Everest", "Everest", "K2 maybe"]
            .iter()
            .map(|t| mk(t))
            .collect();
        let mut rec = Recorder::default();
        sar_scores(&mut rec, "Highest mountain?", &samples, sar::DEFAULT_T).unwrap();
        assert!(!rec.texts.is_empty());
        let mut sim = Counting::default();
        sim.prefetch(&rec.texts).unwrap();
        let got = sar_scores(&mut sim, "Highest mountain?", &samples, sar::DEFAULT_T).unwrap();
        assert!(sim.missed.is_empty(), "not prefetched: {:?}", sim.missed);
        // and the scores are the plain computation's
        let want = sar_scores(&mut Lexical, "Highest mountain?", &samples, sar::DEFAULT_T).unwrap();
        assert_eq!(got.sar, want.sar);
    }
}
