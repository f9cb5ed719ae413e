//! Reading the confidence a model wrote after its answer: `Confidence: 73%`, `73 %`, `0.73`, a
//! bare `73`, or one of the five words lowest…highest (read back as 10/30/50/70/90%).
//! Missing, duplicated and out-of-range confidences are parse failures, counted with examples.

use regex::Regex;
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

/// The five words of the word format, lowest first, and the confidence each reads back as.
pub const WORDS: [(&str, f64); 5] = [
    ("lowest", 0.1),
    ("low", 0.3),
    ("medium", 0.5),
    ("high", 0.7),
    ("highest", 0.9),
];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verbalized {
    /// The text before the confidence, trimmed.
    pub answer: String,
    /// On the 0..1 scale.
    pub confidence: f64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParseFailure {
    Missing,
    Duplicated,
    OutOfRange,
    Malformed,
}

fn label_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"(?i)\bconfidence(?:\s+level)?\s*(?::|=|\bis\b)?\s*").unwrap())
}

fn value_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"(?i)^(?:(?P<num>[+-]?(?:\d+(?:\.\d+)?|\.\d+))\s*(?P<pct>%|percent)?|(?P<word>highest|lowest|medium|high|low)\b)").unwrap()
    })
}

/// Parse one generation. The confidence must appear exactly once.
pub fn parse_verbalized(text: &str) -> Result<Verbalized, ParseFailure> {
    let labels: Vec<_> = label_re().find_iter(text).collect();
    let m = match labels.as_slice() {
        [] => return Err(ParseFailure::Missing),
        [one] => one,
        _ => return Err(ParseFailure::Duplicated),
    };
    let rest = &text[m.end()..];
    let caps = value_re().captures(rest).ok_or(ParseFailure::Malformed)?;
    let confidence = if let Some(w) = caps.name("word") {
        let w = w.as_str().to_lowercase();
        WORDS
            .iter()
            .find(|(name, _)| *name == w)
            .map(|(_, c)| *c)
            .ok_or(ParseFailure::Malformed)?
    } else {
        let num = caps.name("num").unwrap().as_str();
        let v: f64 = num.parse().map_err(|_| ParseFailure::Malformed)?;
        // `73%` and a bare `73` are percents; `0.73` (a fraction with a point, at most 1) is a probability.
        let is_fraction = caps.name("pct").is_none() && num.contains('.') && v <= 1.0;
        let pct = if is_fraction { v * 100.0 } else { v };
        if !(0.0..=100.0).contains(&pct) {
            return Err(ParseFailure::OutOfRange);
        }
        pct / 100.0
    };
    let answer = text[..m.start()]
        .trim()
        .trim_end_matches([',', ';', '('])
        .trim()
        .to_string();
    Ok(Verbalized { answer, confidence })
}

/// How many generations parsed, and up to `keep` examples of each failure.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ParseReport {
    pub total: usize,
    pub parsed: usize,
    pub failures: std::collections::BTreeMap<ParseFailure, usize>,
    pub examples: std::collections::BTreeMap<ParseFailure, Vec<String>>,
}

impl ParseReport {
    pub fn add(&mut self, text: &str, result: &Result<Verbalized, ParseFailure>, keep: usize) {
        self.total += 1;
        match result {
            Ok(_) => self.parsed += 1,
            Err(f) => {
                *self.failures.entry(f.clone()).or_default() += 1;
                let ex = self.examples.entry(f.clone()).or_default();
                if ex.len() < keep {
                    ex.push(text.to_string());
                }
            }
        }
    }
    pub fn parse_rate(&self) -> f64 {
        if self.total == 0 {
            f64::NAN
        } else {
            self.parsed as f64 / self.total as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(t: &str) -> Result<f64, ParseFailure> {
        parse_verbalized(t).map(|v| v.confidence)
    }

    #[test]
    fn formats_that_parse() {
        assert_eq!(
            parse_verbalized(" 897\nConfidence: 61%").unwrap(),
            Verbalized {
                answer: "897".into(),
                confidence: 0.61
            }
        );
        assert_eq!(conf("Paris\nConfidence: 73 %"), Ok(0.73));
        assert_eq!(conf("Paris. confidence: 0.8"), Ok(0.8));
        assert_eq!(conf("Paris\nConfidence: 90"), Ok(0.9));
        assert_eq!(conf("Paris\nConfidence: 100%"), Ok(1.0));
        assert_eq!(conf("Paris\nConfidence: 0%"), Ok(0.0));
        assert_eq!(conf("Paris\nConfidence: 1.0"), Ok(1.0));
        assert_eq!(conf("Paris\nConfidence: 12.5%"), Ok(0.125));
        assert_eq!(conf("Paris\nConfidence: highest"), Ok(0.9));
        assert_eq!(conf("Paris\nConfidence: High"), Ok(0.7));
        assert_eq!(conf("Paris\nConfidence: low"), Ok(0.3));
        assert_eq!(conf("Paris (confidence level is 55 percent)"), Ok(0.55));
        assert_eq!(
            parse_verbalized("Paris, confidence: 40%").unwrap().answer,
            "Paris"
        );
    }

    #[test]
    fn failures_are_classified() {
        assert_eq!(conf("Paris"), Err(ParseFailure::Missing));
        assert_eq!(
            conf("Confidence: 50%\nConfidence: 60%"),
            Err(ParseFailure::Duplicated)
        );
        assert_eq!(
            conf("Paris\nConfidence: 150%"),
            Err(ParseFailure::OutOfRange)
        );
        assert_eq!(
            conf("Paris\nConfidence: -5%"),
            Err(ParseFailure::OutOfRange)
        );
        assert_eq!(
            conf("Paris\nConfidence: very"),
            Err(ParseFailure::Malformed)
        );
        let mut r = ParseReport::default();
        for t in ["a\nConfidence: 10%", "b", "c", "d\nConfidence: 500%"] {
            r.add(t, &parse_verbalized(t), 1);
        }
        assert_eq!((r.total, r.parsed), (4, 1));
        assert_eq!(r.failures[&ParseFailure::Missing], 2);
        assert_eq!(r.examples[&ParseFailure::Missing], vec!["b".to_string()]);
        assert_eq!(r.parse_rate(), 0.25);
    }
}
