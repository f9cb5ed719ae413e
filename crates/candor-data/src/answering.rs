//! Answering runs: the base model answers every question greedily plus K samples, batched, with
//! per-token log-probs and top-k log-probs kept. Results are appended to a JSONL file one
//! question per line (fsynced per batch); a restarted run skips the questions already there, so
//! a kill loses at most the batch in flight. A torn last line is dropped on restart, and the
//! batch a kill cut is answered again whole, so a resumed run's records are bit-identical to an
//! uninterrupted run's (batches are fixed slices of the question list ordered by prompt length,
//! so that a batch pads little: same `batch_size`, same batches). Questions whose prompt does
//! not fit the model's context are skipped and counted.

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

    /// The answer's log-probability under the model that wrote it: the sum over its
    /// [`answer_len`](Self::answer_len) tokens (the `answer_logit` readout's log).
    pub fn answer_logprob(&self) -> f64 {
        self.logprobs[..self.answer_len()]
            .iter()
            .map(|&l| l as f64)
            .sum()
    }

    /// [`answer_logprob`](Self::answer_logprob) per answer token (0 for an empty answer).
    pub fn answer_logprob_mean(&self) -> f64 {
        match self.answer_len() {
            0 => 0.0,
            n => self.answer_logprob() / n as f64,
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
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .with_context(|| format!("opening {}", path.display()))?;
                f.set_len(good_len as u64)
                    .with_context(|| format!("truncating {}", path.display()))?;
                f.sync_all()
                    .with_context(|| format!("truncating {}", path.display()))?;
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
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    candor_model::checkpoint::write_atomic(&meta_path, meta.as_bytes())?;
    let mut done: HashMap<String, Answered> = read_answers(path)?
        .into_iter()
        .map(|a| (a.item.id.clone(), a))
        .collect();
    let todo = items.iter().filter(|it| !done.contains_key(&it.id)).count();
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
        ..Default::default()
    };
    let context = model.config.max_position_embeddings;
    let mut too_long: Vec<(String, usize)> = vec![];
    let t0 = Instant::now();
    let mut progress = Progress {
        done: items.len() - todo,
        total: items.len(),
        new_tokens: 0,
        elapsed_s: 0.0,
    };
    on_progress(&progress);
    let mut answered = 0;
    // every prompt first: those too long for the context are skipped, the rest ordered by
    // length (stable) so that a batch's prompts pad to about the same length
    let mut encoded: Vec<(&Item, String, Vec<u32>)> = vec![];
    for it in items {
        let p = tok.prompt(&it.question, style)?;
        let t = tok.encode(&p, false)?;
        if t.len() + s.max_new_tokens > context {
            too_long.push((it.id.clone(), t.len()));
        } else {
            encoded.push((it, p, t));
        }
    }
    encoded.sort_by_key(|(_, _, t)| t.len());
    // Batches are fixed slices of that order, whatever is already done: a batch cut by a kill
    // is answered again whole (its finished records are not written twice), so every record is
    // computed in the same batch as in an uninterrupted run, bit for bit.
    for chunk in encoded.chunks(s.batch_size.max(1)) {
        if chunk.iter().all(|(it, _, _)| done.contains_key(&it.id)) {
            continue;
        }
        // one call: each question's greedy row, then its K sample rows, all decoding from one
        // prefill of its prompt
        let k = s.samples;
        let mut rows: Vec<Vec<u32>> = chunk.iter().map(|(_, _, t)| t.clone()).collect();
        let mut seeds = vec![0; chunk.len()];
        let mut temps = vec![0.0; chunk.len()];
        for (it, _, t) in chunk {
            for j in 0..k {
                rows.push(t.clone());
                seeds.push(row_seed(s.seed, &it.id, j));
                temps.push(s.temperature as f32);
            }
        }
        let cfg = GenConfig {
            top_p: s.top_p as f32,
            row_seeds: seeds,
            row_temperatures: temps,
            ..base.clone()
        };
        let mut gens = generate(model, tok, &rows, &cfg, device)?.into_iter();
        let greedy: Vec<_> = gens.by_ref().take(chunk.len()).collect();
        let mut sampled: Vec<Vec<Sample>> = vec![vec![]; chunk.len()];
        for (r, g) in gens.enumerate() {
            sampled[r / k].push(to_sample(g));
        }
        let mut out = String::new();
        for (((it, p, t), g), samples) in chunk.iter().zip(greedy).zip(sampled) {
            if done.contains_key(&it.id) {
                continue; // written before the kill; recomputed only to keep the batch whole
            }
            answered += 1;
            progress.new_tokens +=
                g.tokens.len() + samples.iter().map(|x| x.tokens.len()).sum::<usize>();
            let a = Answered {
                item: (*it).clone(),
                prompt: p.clone(),
                prompt_tokens: t.len(),
                greedy: to_sample(g),
                samples,
            };
            out.push_str(&serde_json::to_string(&a)?);
            out.push('\n');
            done.insert(it.id.clone(), a);
        }
        file.write_all(out.as_bytes())
            .and_then(|_| file.sync_data())
            .with_context(|| format!("writing {}", path.display()))?;
        // this run's questions only (a copied answers file may hold others): those done
        // before, those answered since, those skipped as too long
        progress.done = items.len() - todo + answered + too_long.len();
        progress.elapsed_s = t0.elapsed().as_secs_f64();
        on_progress(&progress);
    }
    if !too_long.is_empty() {
        eprintln!(
            "{}",
            describe_too_long(&too_long, context, s.max_new_tokens)
        );
    }
    // the questions too long for the context have no record
    Ok(items.iter().filter_map(|it| done.remove(&it.id)).collect())
}

/// The warning for questions skipped because prompt + answer would not fit the model's
/// context: how many, and their ids (the first ten, then a count).
pub fn describe_too_long(skipped: &[(String, usize)], context: usize, new: usize) -> String {
    let ids: Vec<String> = skipped
        .iter()
        .map(|(id, n)| format!("{id} ({n} tokens)"))
        .collect();
    format!(
        "warning: skipped {} question(s) whose prompt plus {new} answer tokens does not fit the \
         model's context of {context} tokens (not answered, not allocated):{}",
        skipped.len(),
        candor_model::checkpoint::list_problems(&ids)
    )
}
