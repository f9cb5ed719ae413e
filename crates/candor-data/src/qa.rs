//! Question-answering sets from JSONL: open answers with aliases (TriviaQA / SciQ shape,
//! `{"id","question","answers":[...]}`) and multiple choice (MedQA shape, `options` + `answer`).
//! Grading: normalised exact match against any alias (SQuAD normalisation), "contains" (an alias
//! appears as a whole-word span of the answer), or ROUGE-L F1 ≥ a threshold (UaIT).

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QaItem {
    pub id: String,
    pub question: String,
    /// Accepted answers (aliases). For multiple choice: the correct option's text.
    pub answers: Vec<String>,
    /// Multiple choice: option key → text, in key order; empty for open questions.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    /// Multiple choice: the key of the correct option.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_key: Option<String>,
}

impl QaItem {
    /// The question as the model sees it; multiple-choice options are listed `A. text`.
    pub fn prompt_text(&self) -> String {
        if self.options.is_empty() {
            return self.question.clone();
        }
        let mut s = self.question.clone();
        for (k, v) in &self.options {
            s.push_str(&format!("\n{k}. {v}"));
        }
        s
    }
}

/// What a loaded file held: the items, and every line that could not be read (1-based line
/// number and why), so a million-line file with a few bad lines loads and says which.
#[derive(Debug, Default)]
pub struct Loaded {
    pub items: Vec<QaItem>,
    pub malformed: Vec<(usize, String)>,
}

impl Loaded {
    /// One line for logs: `1998 questions (2 malformed lines: 17: missing field "question"; …)`.
    pub fn summary(&self) -> String {
        let mut s = format!("{} questions", self.items.len());
        if !self.malformed.is_empty() {
            let shown: Vec<String> = self
                .malformed
                .iter()
                .take(3)
                .map(|(l, e)| format!("line {l}: {e}"))
                .collect();
            s.push_str(&format!(
                " ({} malformed lines skipped: {}{})",
                self.malformed.len(),
                shown.join("; "),
                if self.malformed.len() > 3 {
                    "; …"
                } else {
                    ""
                }
            ));
        }
        s
    }
}

#[derive(Deserialize)]
struct RawLine {
    id: Option<serde_json::Value>,
    question: String,
    #[serde(default)]
    answers: Option<Vec<String>>,
    #[serde(default)]
    answer: Option<serde_json::Value>,
    #[serde(default)]
    answer_idx: Option<String>,
    #[serde(default)]
    options: Option<serde_json::Value>,
}

fn parse_line(line: &str, lineno: usize) -> Result<QaItem> {
    let raw: RawLine = serde_json::from_str(line)?;
    let id = match raw.id {
        Some(serde_json::Value::String(s)) => s,
        Some(v) => v.to_string(),
        None => format!("line-{lineno}"),
    };
    let as_str = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let options: BTreeMap<String, String> = match &raw.options {
        None => BTreeMap::new(),
        Some(serde_json::Value::Object(m)) => m
            .iter()
            .map(|(k, v)| Ok((k.clone(), as_str(v).context("option text is not a string")?)))
            .collect::<Result<_>>()?,
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let key = ((b'A' + i as u8) as char).to_string();
                Ok((key, as_str(v).context("option text is not a string")?))
            })
            .collect::<Result<_>>()?,
        Some(_) => bail!("`options` must be an object {{\"A\": text}} or a list"),
    };
    if options.is_empty() {
        let mut answers = raw.answers.unwrap_or_default();
        if let Some(a) = raw.answer.as_ref().and_then(as_str) {
            answers.push(a);
        }
        answers.retain(|a| !a.trim().is_empty());
        if answers.is_empty() {
            bail!("no answers: need `answers` (a list) or `answer`");
        }
        return Ok(QaItem {
            id,
            question: raw.question,
            answers,
            options,
            answer_key: None,
        });
    }
    // Multiple choice: `answer_idx` (MedQA) or `answer` naming a key or an option's text.
    let answer = raw.answer.as_ref().and_then(as_str);
    let key = raw
        .answer_idx
        .or_else(|| answer.clone().filter(|a| options.contains_key(a)))
        .or_else(|| {
            let a = answer.as_deref()?;
            options
                .iter()
                .find(|(_, v)| v.as_str() == a)
                .map(|(k, _)| k.clone())
        })
        .context("multiple choice: `answer` (or `answer_idx`) names no option")?;
    let text = options
        .get(&key)
        .with_context(|| format!("answer key `{key}` is not one of the options"))?
        .clone();
    Ok(QaItem {
        id,
        question: raw.question,
        answers: vec![text],
        options,
        answer_key: Some(key),
    })
}

/// The longest JSONL line read as a question (1 MiB): a longer one is counted as malformed
/// and skipped without being held in memory. No model's context holds a question that long.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Read a JSONL file. Blank lines are skipped; unreadable ones (and lines over
/// [`MAX_LINE_BYTES`]) are listed in `malformed`.
pub fn load_jsonl(path: &Path) -> Result<Loaded> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    read_jsonl(std::io::BufReader::new(f)).with_context(|| format!("reading {}", path.display()))
}

/// [`load_jsonl`] on any reader (the fuzzing harness feeds it bytes).
pub fn read_jsonl(mut r: impl std::io::BufRead) -> Result<Loaded> {
    let mut out = Loaded::default();
    let mut buf = Vec::new();
    for i in 1usize.. {
        let read = read_line_bounded(&mut r, &mut buf, MAX_LINE_BYTES)
            .with_context(|| format!("line {i}"))?;
        let Some(len) = read else { break };
        if len > MAX_LINE_BYTES {
            out.malformed.push((
                i,
                format!("{len} bytes, over the {MAX_LINE_BYTES}-byte limit for one question"),
            ));
            continue;
        }
        let Ok(line) = std::str::from_utf8(&buf) else {
            out.malformed.push((i, "not UTF-8".to_string()));
            continue;
        };
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(line, i) {
            Ok(item) => out.items.push(item),
            Err(e) => out.malformed.push((i, e.to_string())),
        }
    }
    Ok(out)
}

/// Read one line (without its `\n`) into `buf`, keeping at most `max` bytes: returns the
/// line's full length (which may exceed `max`; the rest is read and dropped), or `None` at
/// the end of the file.
fn read_line_bounded(
    r: &mut impl std::io::BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<usize>> {
    buf.clear();
    let mut len = 0usize;
    let mut any = false;
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            return Ok(any.then_some(len));
        }
        any = true;
        let (part, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(p) => (&chunk[..p], Some(p + 1)),
            None => (chunk, None),
        };
        if len < max {
            let keep = part.len().min(max - len);
            buf.extend_from_slice(&part[..keep]);
        }
        len += part.len();
        let used = done.unwrap_or(chunk.len());
        r.consume(used);
        if done.is_some() {
            if buf.last() == Some(&b'\r') && len <= max {
                buf.pop();
            }
            return Ok(Some(len));
        }
    }
}

pub use candor_confidence::similarity::{normalize, rouge_l};

/// How an open answer is matched against the aliases.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Match {
    /// Normalised answer equals a normalised alias.
    Exact,
    /// A normalised alias occurs as whole words inside the normalised answer
    /// ("The capital is Montpelier." matches "Montpelier").
    Contains,
    /// ROUGE-L F1 against the best alias ≥ threshold (UaIT uses > 0.5).
    RougeL { threshold: f64 },
}

/// Is `answer` correct for `item`? Multiple choice: the first option key the answer names
/// (`B`, `(B)`, `B.`) or the option text it repeats.
pub fn is_correct(item: &QaItem, answer: &str, how: Match) -> bool {
    if let Some(key) = &item.answer_key {
        return chosen_option(item, answer).as_deref() == Some(key.as_str());
    }
    let a = normalize(answer);
    if a.is_empty() {
        return false;
    }
    item.answers.iter().any(|alias| {
        let g = normalize(alias);
        match how {
            Match::Exact => !g.is_empty() && a == g,
            Match::Contains => !g.is_empty() && format!(" {a} ").contains(&format!(" {g} ")),
            Match::RougeL { threshold } => rouge_l(answer, alias) >= threshold,
        }
    })
}

/// The option a multiple-choice answer picks: a standalone key letter first, else an option
/// whose normalised text equals the answer's.
pub fn chosen_option(item: &QaItem, answer: &str) -> Option<String> {
    let t = answer.trim();
    let lead: String = t
        .trim_start_matches(['(', '[', ' '])
        .chars()
        .take_while(|c| c.is_alphanumeric())
        .collect();
    if item.options.contains_key(&lead) {
        return Some(lead);
    }
    let a = normalize(t);
    item.options
        .iter()
        .find(|(_, v)| normalize(v) == a)
        .map(|(k, _)| k.clone())
}
