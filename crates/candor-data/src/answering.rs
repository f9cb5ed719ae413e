//! Answering runs: the base model answers every question greedily plus K samples, batched, with
//! per-token log-probs and top-k log-probs kept. Results are appended to a JSONL file one
//! question per line (fsynced per batch); a restarted run skips the questions already there, so
//! a kill loses at most the batch in flight. A torn last line is dropped on restart.

use crate::config::{DataConfig, LabelsConfig, Style};
use crate::item::Item;
use anyhow::{bail, Context, Result};
use burn::tensor::backend::Backend;
use candor_model::generate::Finish;
use candor_model::{generate, GenConfig, Llama, PromptStyle, Tokenizer};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

/// What an answering run depends on; a resumed run must use the same settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnswerSettings {
    /// The answering model (`weights_fingerprint`, or the preset): new weights, new answers.
    #[serde(default)]
    pub model: String,
    pub style: Style,
    pub samples: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub seed: u64,
    pub max_new_tokens: usize,
    pub top_logprobs: usize,
    /// Not part of the result (batching does not change answers), kept out of comparisons.
    #[serde(skip)]
    pub batch_size: usize,
}

impl AnswerSettings {
    pub fn new(model: &str, data: &DataConfig, labels: &LabelsConfig) -> Self {
        Self {
            model: model.to_string(),
            style: data.style,
            samples: labels.samples,
            temperature: labels.temperature,
            top_p: labels.top_p,
            seed: labels.seed,
            max_new_tokens: labels.max_new_tokens,
            top_logprobs: labels.top_logprobs,
            batch_size: labels.batch_size,
        }
    }
}

pub fn prompt_style(s: Style) -> PromptStyle {
    match s {
        Style::Chat => PromptStyle::Chat,
        Style::Plain => PromptStyle::Plain,
    }
}

/// One generated answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sample {
    /// The answer: first non-empty line, special tokens removed.
    pub text: String,
    pub tokens: Vec<u32>,
    pub logprobs: Vec<f32>,
    /// Top-k `(token, log-prob)` per generated position.
    pub top: Vec<Vec<(u32, f32)>>,
    pub finish: Finish,
}

impl Sample {
    /// How many leading tokens make up the answer: all but the stop token / the token that
    /// ended the first line.
    pub fn answer_len(&self) -> usize {
        match self.finish {
            Finish::Length => self.tokens.len(),
            Finish::StopToken | Finish::StopString => self.tokens.len().saturating_sub(1),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Answered {
    pub item: Item,
    /// The rendered prompt.
    pub prompt: String,
    pub prompt_tokens: usize,
    pub greedy: Sample,
    pub samples: Vec<Sample>,
}

pub struct Progress {
    pub done: usize,
    pub total: usize,
    /// Generated tokens in this session (not counting resumed work).
    pub new_tokens: usize,
    pub elapsed_s: f64,
}

/// FNV-1a of (seed, id, k): a sample's RNG seed, independent of batching and resumption.
/// The sampling seed of sample `k` of question `id`: independent of batching and order.
pub fn row_seed(seed: u64, id: &str, k: usize) -> u64 {
    let h = id.bytes().fold(0xcbf2_9ce4_8422_2325 ^ seed, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    (h ^ k as u64).wrapping_mul(0x100_0000_01b3)
}

fn to_sample(g: candor_model::Generation) -> Sample {
    Sample {
        text: g.text.trim().to_string(),
        tokens: g.tokens,
        logprobs: g.logprobs,
        top: g.top,
        finish: g.finish,
    }
}

/// Read the records already in `path`; a torn (unparseable) last line is cut off the file.
pub fn read_answers(path: &Path) -> Result<Vec<Answered>> {
    if !path.exists() {
        return Ok(vec![]);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = vec![];
    let mut good_len = 0usize;
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    for (i, line) in lines.iter().enumerate() {
        let complete = line.ends_with('\n');
        match serde_json::from_str::<Answered>(line.trim_end()) {
            Ok(a) if complete => {
                out.push(a);
                good_len += line.len();
            }
            _ if i + 1 == lines.len() => {
                eprintln!(
                    "{}: dropping a torn last line (an interrupted write); it will be redone",
                    path.display()
                );
                let f = std::fs::OpenOptions::new().write(true).open(path)?;
                f.set_len(good_len as u64)?;
                f.sync_all()?;
            }
            Err(e) => bail!(
                "{}: line {} is not an answer record: {e}",
                path.display(),
                i + 1
            ),
            Ok(_) => unreachable!("only the last line can lack a newline"),
        }
    }
    Ok(out)
}

/// Answer every item (resuming from `path`), returning records in `items` order.
#[allow(clippy::too_many_arguments)]
pub fn run_answers<B: Backend>(
    model: &Llama<B>,
    tok: &Tokenizer,
    items: &[Item],
    s: &AnswerSettings,
    path: &Path,
    device: &B::Device,
    on_progress: &mut dyn FnMut(&Progress),
) -> Result<Vec<Answered>> {
    let meta_path = path.with_extension("settings.json");
    let meta = serde_json::to_string_pretty(s)?;
    if path.exists() && meta_path.exists() {
        let old: AnswerSettings = serde_json::from_str(&std::fs::read_to_string(&meta_path)?)
            .with_context(|| format!("parsing {}", meta_path.display()))?;
        // compared as saved (batch size is not part of the result)
        if serde_json::to_string(&old)? != serde_json::to_string(s)? {
            bail!(
                "{} was made with other answering settings ({}); delete it (or use another run folder) to answer again",
                path.display(),
                meta_path.display()
            );
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    candor_model::checkpoint::write_atomic(&meta_path, meta.as_bytes())?;
    let mut done: HashMap<String, Answered> = read_answers(path)?
        .into_iter()
        .map(|a| (a.item.id.clone(), a))
        .collect();
    let todo: Vec<&Item> = items
        .iter()
        .filter(|it| !done.contains_key(&it.id))
        .collect();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let style = prompt_style(s.style);
    let base = GenConfig {
        max_new_tokens: s.max_new_tokens,
        temperature: 0.0,
        top_p: 1.0,
        top_logprobs: s.top_logprobs,
        seed: s.seed,
        stop_ids: tok.stop_ids.clone(),
        stop_strings: vec!["\n".into()],
        row_seeds: vec![],
    };
    let t0 = Instant::now();
    let mut progress = Progress {
        done: items.len() - todo.len(),
        total: items.len(),
        new_tokens: 0,
        elapsed_s: 0.0,
    };
    on_progress(&progress);
    for batch in todo.chunks(s.batch_size.max(1)) {
        let prompts: Vec<String> = batch
            .iter()
            .map(|it| tok.prompt(&it.question, style))
            .collect::<Result<_>>()?;
        let ids: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| tok.encode(p, false))
            .collect::<Result<_>>()?;
        let greedy = generate(model, tok, &ids, &base, device)?;
        let mut sampled: Vec<Vec<Sample>> = vec![vec![]; batch.len()];
        if s.samples > 0 {
            let mut rows = vec![];
            let mut seeds = vec![];
            for (i, it) in batch.iter().enumerate() {
                for k in 0..s.samples {
                    rows.push(ids[i].clone());
                    seeds.push(row_seed(s.seed, &it.id, k));
                }
            }
            let cfg = GenConfig {
                temperature: s.temperature as f32,
                top_p: s.top_p as f32,
                row_seeds: seeds,
                ..base.clone()
            };
            let gens = generate(model, tok, &rows, &cfg, device)?;
            for (r, g) in gens.into_iter().enumerate() {
                sampled[r / s.samples].push(to_sample(g));
            }
        }
        let mut out = String::new();
        for (((it, p), g), samples) in batch.iter().zip(&prompts).zip(greedy).zip(sampled) {
            progress.new_tokens +=
                g.tokens.len() + samples.iter().map(|x| x.tokens.len()).sum::<usize>();
            let a = Answered {
                item: (*it).clone(),
                prompt: p.clone(),
                prompt_tokens: tok.encode(p, false)?.len(),
                greedy: to_sample(g),
                samples,
            };
            out.push_str(&serde_json::to_string(&a)?);
            out.push('\n');
            done.insert(it.id.clone(), a);
        }
        file.write_all(out.as_bytes())?;
        file.sync_data()?;
        progress.done += batch.len();
        progress.elapsed_s = t0.elapsed().as_secs_f64();
        on_progress(&progress);
    }
    items
        .iter()
        .map(|it| {
            done.remove(&it.id)
                .with_context(|| format!("question {} has no answer", it.id))
        })
        .collect()
}
