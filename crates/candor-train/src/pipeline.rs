//! The stages a recipe runs, each resumable from the run folder:
//! `<run>/data/` (answers.jsonl → labels.jsonl, dataset.jsonl, summary.json), then training
//! (`crate::trainer`), export and the report.

use crate::recipe::{Dtype, Recipe};
use anyhow::{bail, Context, Result};
use burn::tensor::backend::Backend;
use burn::tensor::DType;
use candor_confidence::{Lexical, MiniLm, Similarity};
use candor_data::answering::{run_answers, AnswerSettings, Progress};
use candor_data::config::{ProbeAt, SimilarityKind, Teacher};
use candor_data::{dataset, load_items, Example, Summary};
use candor_model::{Llama, ModelConfig, Tokenizer};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};
use std::io::IsTerminal;
use std::path::Path;
use std::time::Instant;

/// The recipe's model: loaded from `model.path`, or a preset initialised from scratch (seeded).
/// It computes in `model.dtype` (an error when the backend cannot compute in bf16).
pub fn load_model<B: Backend>(r: &Recipe, device: &B::Device) -> Result<(Llama<B>, Tokenizer)> {
    let dtype = compute_dtype::<B>(r, device)?;
    let (model, tok) = load_model_f32::<B>(r, device)?;
    Ok((model.with_compute(dtype), tok))
}

/// The dtype the model computes in, checked against what the backend can do.
fn compute_dtype<B: Backend>(r: &Recipe, device: &B::Device) -> Result<DType> {
    match r.model.dtype {
        Dtype::F32 => Ok(DType::F32),
        Dtype::Bf16 if B::supports_dtype(device, DType::BF16) => Ok(DType::BF16),
        Dtype::Bf16 => anyhow::bail!(
            "model.dtype = \"bf16\": the {} backend ({device:?}) cannot compute in bf16; \
             use \"f32\", or a device that can (cuda on an Ampere or newer GPU, cpu)",
            B::name(device)
        ),
    }
}

fn load_model_f32<B: Backend>(r: &Recipe, device: &B::Device) -> Result<(Llama<B>, Tokenizer)> {
    match (&r.model.path, &r.model.preset) {
        (Some(p), _) => candor_model::load_model_and_tokenizer::<B>(p, device)
            .with_context(|| format!("model.path = {}", p.display())),
        (None, Some(preset)) => {
            let tdir = tokenizer_dir(r);
            if r.model.tokenizer.as_deref() == Some(Path::new("byte")) {
                candor_model::tokenizer::write_byte_tokenizer(&tdir)?;
            }
            let tok = Tokenizer::load(&tdir)?;
            let vocab = tok.inner.get_vocab_size(true);
            let cfg = ModelConfig::preset(preset, vocab)?;
            Ok((Llama::init(&cfg, r.train.seed, device), tok))
        }
        (None, None) => unreachable!("validated"),
    }
}

/// Where the recipe's tokenizer lives: the model folder, `model.tokenizer`, or — for
/// `tokenizer = "byte"` — the built-in byte-level tokenizer written into `<run>/tokenizer/`.
pub fn tokenizer_dir(r: &Recipe) -> std::path::PathBuf {
    match (&r.model.path, &r.model.tokenizer) {
        (Some(p), _) => p.clone(),
        (None, Some(t)) if t.as_path() == Path::new("byte") => r.run_dir().join("tokenizer"),
        (None, Some(t)) => t.clone(),
        (None, None) => unreachable!("validated"),
    }
}

/// A progress bar in the house style: `{msg} [bar] pos/len (eta)`. When stderr is not a
/// terminal (a log file, CI), the same line is printed at most every 30 seconds instead.
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = if std::io::stderr().is_terminal() {
        ProgressBar::new(len)
    } else {
        ProgressBar::with_draw_target(
            Some(len),
            ProgressDrawTarget::term_like_with_hz(Box::new(LogLines::default()), 1),
        )
    };
    pb.set_style(
        ProgressStyle::with_template(&format!(
            "{what} [{{bar:30}}] {{pos}}/{{len}} {{msg}} (eta {{eta}})"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb
}

/// indicatif's terminal, redrawn in place, becomes plain log lines: every 30 s at most.
#[derive(Debug, Default)]
struct LogLines {
    last: std::sync::Mutex<Option<std::time::Instant>>,
}

impl TermLike for LogLines {
    fn width(&self) -> u16 {
        120
    }
    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.write_str(s)
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        let mut last = self.last.lock().expect("not poisoned");
        let due = last.is_none_or(|t| t.elapsed().as_secs() >= 30);
        if due && !s.trim().is_empty() {
            *last = Some(std::time::Instant::now());
            eprintln!("{}", s.trim_end());
        }
        Ok(())
    }
    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Which model answers (`AnswerSettings::model`): the weights' fingerprint, or the preset, so
/// that new weights mean new answers.
fn answering_model(r: &Recipe) -> String {
    match (&r.model.path, &r.model.preset) {
        (Some(p), _) => candor_model::checkpoint::weights_fingerprint(p)
            .unwrap_or_else(|| p.display().to_string()),
        (None, p) => format!("preset {}", p.clone().unwrap_or_default()),
    }
}

/// Build (or finish building) the labelled dataset of a recipe in `<run>/data/`.
pub fn build_dataset<B: Backend>(
    r: &Recipe,
    model: &Llama<B>,
    tok: &Tokenizer,
    device: &B::Device,
) -> Result<(Vec<Example>, Summary)> {
    // before any answering (`train` checks it before the run folder too)
    check_layers(r, model.config.num_hidden_layers)?;
    let dir = r.run_dir().join("data");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let items = training_items(r)?;
    if r.labels.teacher == Teacher::Gold {
        let ex = dataset::gold_examples(&items, tok, r.data.style)?;
        let mut s = Summary {
            set: r.data.display_name(),
            teacher: "gold".into(),
            questions: ex.len(),
            kept_correct: ex.len(),
            ..Default::default()
        };
        s.overall.n = ex.len();
        s.overall.correct = ex.len();
        dataset::write(&dir, &ex, &s)?;
        eprintln!(
            "dataset: {} gold-answer examples (no answering run)",
            ex.len()
        );
        return Ok((ex, s));
    }
    let who = answering_model(r);
    let settings = AnswerSettings::new(&who, &r.data, &r.labels);
    eprintln!(
        "answering {} questions ({}; greedy + {} samples at T={}) → {}",
        items.len(),
        r.data.display_name(),
        settings.samples,
        settings.temperature,
        dir.join("answers.jsonl").display()
    );
    let pb = bar(items.len() as u64, "answering");
    let t0 = Instant::now();
    let mut last = (0usize, 0.0f64);
    let answers = run_answers(
        model,
        tok,
        &items,
        &settings,
        &dir.join("answers.jsonl"),
        device,
        &mut |p: &Progress| {
            pb.set_position(p.done as u64);
            if p.elapsed_s > 0.0 {
                pb.set_message(format!("{:.1} tok/s", p.new_tokens as f64 / p.elapsed_s));
            }
            last = (p.new_tokens, p.elapsed_s);
        },
    )?;
    pb.finish();
    let answer_s = t0.elapsed().as_secs_f64();
    if last.0 > 0 {
        eprintln!(
            "answered in {answer_s:.1}s: {} new tokens generated ({:.1} tokens/s)",
            last.0,
            last.0 as f64 / last.1.max(1e-9)
        );
    }
    let cache = if r.labels.needs_similarity() {
        read_sar_cache(r, &dir, &answers)
    } else {
        None
    };
    let mut sim = if r.labels.needs_similarity() && cache.is_none() {
        Some(load_similarity::<B>(r, device)?)
    } else {
        None
    };
    let sar = match (&cache, sim.as_mut()) {
        (Some(c), _) => dataset::SarSource::Cached(c),
        (None, Some(s)) => dataset::SarSource::Compute(&mut **s as &mut dyn Similarity),
        (None, None) => dataset::SarSource::None,
    };
    let read = match r.labels.teacher {
        Teacher::Probe => Some(cross_fitted_probe(model, tok, &answers, r, device)?),
        Teacher::Models => Some(ensemble_confidence::<B>(tok, &answers, r, device)?),
        _ => None,
    };
    let pb = bar(answers.len() as u64, "labelling");
    let (ex, s) = dataset::label_with(
        &answers,
        &r.data,
        &r.labels,
        tok,
        sar,
        read.as_deref(),
        &mut |d, _| {
            if d == 0 {
                // after SAR's similarity prefetch: its time is not the labelling rate
                pb.reset_eta();
            }
            pb.set_position(d as u64)
        },
    )?;
    pb.finish_and_clear();
    if sim.is_some() {
        write_sar_cache(r, &dir, &dataset::sar_cache_rows(&answers, &ex))?;
    }
    dataset::write(&dir, &ex, &s)?;
    Ok((ex, s))
}

/// The questions of `[data]`, less those an evaluation set asks when
/// `eval.exclude_from_training` (matched by question text, as the evaluation matches).
fn training_items(r: &Recipe) -> Result<Vec<candor_data::Item>> {
    let mut items = load_items(&r.data)?;
    if r.eval.exclude_from_training {
        let mut asked = std::collections::HashSet::new();
        for set in &r.eval.sets {
            asked.extend(load_items(set)?.into_iter().map(|it| it.question));
        }
        let before = items.len();
        items.retain(|it| !asked.contains(&it.question));
        eprintln!(
            "data: {} of {before} questions are also in the evaluation sets; left out of training (eval.exclude_from_training)",
            before - items.len()
        );
        anyhow::ensure!(
            !items.is_empty(),
            "eval.exclude_from_training: every question of [data] is in an evaluation set; nothing is left to train on"
        );
    }
    Ok(items)
}

/// Every layer index of the recipe (`labels.probe_layer`, `lora.layers`, `train.layers`)
/// against the model's `layers`.
pub fn check_layers(r: &Recipe, layers: usize) -> Result<()> {
    anyhow::ensure!(
        r.labels.probe_layer <= layers,
        "labels.probe_layer = {}: the model has {layers} layers (allowed: 0 for the final hidden state, or 1 to {layers})",
        r.labels.probe_layer
    );
    let lists = [
        (
            "lora.layers",
            r.lora.as_ref().map(|l| &l.layers[..]).unwrap_or(&[]),
        ),
        ("train.layers", &r.train.layers[..]),
    ];
    for (name, list) in lists {
        if let Some(&bad) = list.iter().find(|&&i| i >= layers) {
            bail!(
                "{name}: {bad} is out of range (the model has {layers} layers, allowed: 0–{})",
                layers.saturating_sub(1)
            );
        }
    }
    Ok(())
}

/// Teacher `probe`: each answer's probability under a logistic-regression probe of the starting
/// model's final hidden state after its greedy answer (the `probe` readout), or where
/// `labels.probe_at` and `labels.probe_layer` say (with `labels.probe_logprob`, beside the
/// answer's log-probability: [`logprob_features`]), fitted on the
/// greedy grades of the other four folds ([`candor_confidence::probe::cross_fitted`]) of the questions above
/// the sub-task accuracy floor; a question never gets its label from a probe that saw its
/// grade (a question drawn twice has both copies in one fold). Questions below the floor are
/// not trained on and not probed: their label is their sub-task's accuracy.
pub fn cross_fitted_probe<B: Backend>(
    model: &Llama<B>,
    tok: &Tokenizer,
    answers: &[candor_data::answering::Answered],
    r: &Recipe,
    device: &B::Device,
) -> Result<Vec<f64>> {
    use candor_data::calibratedmath::Grade;
    const FOLDS: usize = 5;
    let how = r.data.matcher();
    let correct: Vec<bool> = answers
        .iter()
        .map(|a| a.item.grade(&a.greedy.text, how) == Grade::Correct)
        .collect();
    let acc = candor_data::teacher::empirical_subtask(
        answers
            .iter()
            .zip(&correct)
            .map(|(a, &c)| (a.item.subtask.as_str(), c)),
    );
    let kept: Vec<usize> = (0..answers.len())
        .filter(|&i| acc[&answers[i].item.subtask] >= r.labels.min_subtask_accuracy)
        .collect();
    let t0 = Instant::now();
    let pb = bar(kept.len() as u64, "probe teacher: hidden states");
    let prefix = match r.labels.probe_at {
        ProbeAt::Answer => vec![],
        ProbeAt::Confidence => r.value_set(tok)?.prefix,
    };
    let rows = kept
        .iter()
        .map(|&i| {
            let a = &answers[i];
            let mut ids = tok.encode(&a.prompt, false)?;
            ids.extend(&a.greedy.tokens[..a.greedy.answer_len()]);
            ids.extend(&prefix);
            Ok(ids)
        })
        .collect::<Result<Vec<_>>>()?;
    let layer = (r.labels.probe_layer > 0).then_some(r.labels.probe_layer);
    let mut xs = crate::evaluate::probe_features_at(
        model,
        tok,
        &rows,
        layer,
        r.labels.batch_size,
        device,
        &mut |n| pb.inc(n as u64),
    );
    pb.finish_and_clear();
    if r.labels.probe_logprob {
        for (x, &i) in xs.iter_mut().zip(&kept) {
            x.extend(logprob_features(&answers[i].greedy));
        }
    }
    let ys: Vec<bool> = kept.iter().map(|&i| correct[i]).collect();
    // a question drawn twice (small sub-tasks repeat) keeps both copies in one fold
    let keys: Vec<&str> = kept.iter().map(|&i| answers[i].prompt.as_str()).collect();
    let l2 = crate::evaluate::PROBE_L2;
    let one_class = |f: usize| {
        anyhow::anyhow!(
            "labels.teacher = \"probe\": outside fold {f}, the {} questions above the sub-task accuracy floor have only right or only wrong greedy answers; add questions",
            kept.len()
        )
    };
    let out =
        candor_confidence::probe::cross_fitted(&xs, &ys, &keys, FOLDS, l2).map_err(one_class)?;
    let mut p: Vec<f64> = answers
        .iter()
        .map(|a| acc[&a.item.subtask] / 100.0)
        .collect();
    for (&i, q) in kept.iter().zip(out) {
        p[i] = q;
    }
    let place = match (r.labels.probe_at, layer) {
        (ProbeAt::Answer, None) => "final hidden state after the answer".to_string(),
        (ProbeAt::Confidence, None) => "final hidden state before the value".to_string(),
        (ProbeAt::Answer, Some(l)) => format!("layer {l} after the answer"),
        (ProbeAt::Confidence, Some(l)) => format!("layer {l} before the value"),
    };
    let with = if r.labels.probe_logprob {
        ", and the answer's log-probability"
    } else {
        ""
    };
    let mut asked = std::collections::HashMap::<&str, usize>::new();
    for k in &keys {
        *asked.entry(k).or_default() += 1;
    }
    let repeats = asked.values().filter(|&&n| n > 1);
    let (questions, copies) = repeats.fold((0, 0), |(q, c), &n| (q + 1, c + n));
    eprintln!(
        "probe teacher: the starting model's probe ({place}{with}) on {} answers above the sub-task floor, {FOLDS}-fold cross-fitted by question ({copies} answers to {questions} questions asked more than once share a fold), in {:.1} s",
        kept.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(p)
}

/// `labels.probe_logprob`'s two features of a greedy answer: its log-probability summed over
/// its tokens and per token (0 for an empty answer).
pub fn logprob_features(greedy: &candor_data::answering::Sample) -> [f32; 2] {
    [
        greedy.answer_logprob() as f32,
        greedy.answer_logprob_mean() as f32,
    ]
}

/// Teacher `models`: each answer's expected confidence Σ q(v)·v/100 under each trained model
/// of `labels.models` (the `verbalized_expected` readout, teacher-forced after the starting
/// model's greedy answer and the confidence line's start), averaged over the models: an
/// output ensemble as the teacher. The models must write the recipe's value set.
pub fn ensemble_confidence<B: Backend>(
    tok: &Tokenizer,
    answers: &[candor_data::answering::Answered],
    r: &Recipe,
    device: &B::Device,
) -> Result<Vec<f64>> {
    let vs = r.value_set(tok)?;
    let rows = answers
        .iter()
        .map(|a| {
            let prompt = tok.encode(&a.prompt, false)?;
            let answer = &a.greedy.tokens[..a.greedy.answer_len()];
            Ok(crate::evaluate::answer_context(&prompt, answer, &vs))
        })
        .collect::<Result<Vec<_>>>()?;
    let t0 = Instant::now();
    let mut sum = vec![0.0; answers.len()];
    for path in &r.labels.models {
        let (model, _) = candor_model::load_model_and_tokenizer::<B>(path, device)
            .with_context(|| format!("labels.models: {}", path.display()))?;
        let pb = bar(
            rows.len() as u64,
            &format!("models teacher: {}", path.display()),
        );
        let batch = r.labels.batch_size.max(1);
        for (chunk, out) in rows.chunks(batch).zip(sum.chunks_mut(batch)) {
            let (_, lps) =
                candor_model::generate::tail_states(&model, chunk, 1, tok.pad_id, device);
            for (o, lp) in out.iter_mut().zip(&lps) {
                *o += candor_confidence::values::expected(&vs, lp);
            }
            pb.inc(chunk.len() as u64);
        }
        pb.finish_and_clear();
    }
    let k = r.labels.models.len() as f64;
    let p: Vec<f64> = sum.into_iter().map(|s| s / k).collect();
    eprintln!(
        "models teacher: {} answers read by {} models in {:.1} s (mean label {:.1}%)",
        p.len(),
        r.labels.models.len(),
        t0.elapsed().as_secs_f64(),
        100.0 * p.iter().sum::<f64>() / p.len().max(1) as f64
    );
    Ok(p)
}

/// What SAR's scores depend on besides the answers themselves (which each cache row
/// fingerprints): the similarity (MiniLM's weights) and SAR's temperature.
fn sar_cache_key(r: &Recipe) -> String {
    let weights = (r.labels.similarity == SimilarityKind::Minilm)
        .then(|| candor_model::checkpoint::weights_fingerprint(&r.labels.minilm_path))
        .flatten();
    serde_json::json!({
        "similarity": r.labels.similarity,
        "weights": weights,
        "sar_t": r.labels.sar_t,
    })
    .to_string()
}

/// `data/sar.jsonl` of an earlier labelling of these answers under the same similarity and
/// `sar_t`, when it covers every question; otherwise `None` (SAR is computed again).
fn read_sar_cache(
    r: &Recipe,
    dir: &Path,
    answers: &[candor_data::answering::Answered],
) -> Option<std::collections::BTreeMap<String, dataset::CachedSar>> {
    let key = std::fs::read_to_string(dir.join("sar.settings.json")).ok()?;
    if key != sar_cache_key(r) {
        return None;
    }
    let text = std::fs::read_to_string(dir.join("sar.jsonl")).ok()?;
    let cache: std::collections::BTreeMap<_, _> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<dataset::CachedSar>(l).ok())
        .map(|c| (c.id.clone(), c))
        .collect();
    if !dataset::sar_cache_covers(&cache, answers) {
        return None;
    }
    eprintln!(
        "similarity: SAR scores of {} questions read from {} (same answers, similarity and sar_t)",
        cache.len(),
        dir.join("sar.jsonl").display()
    );
    Some(cache)
}

fn write_sar_cache(r: &Recipe, dir: &Path, rows: &[dataset::CachedSar]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut o = String::new();
    for c in rows {
        o += &serde_json::to_string(c)?;
        o.push('\n');
    }
    write_text(&dir.join("sar.jsonl"), &o)?;
    write_text(&dir.join("sar.settings.json"), &sar_cache_key(r))
}

/// The rehearsal rows of `train.rehearsal`: each set answered by the starting model (greedy,
/// top-k kept; resumable, in `<run>/data/rehearsal-<set>.jsonl`), as rows whose answer tokens
/// carry only the answer-keeping term, followed by the confidence line's opening
/// ([`crate::trainer::rehearsal_seq`]).
pub fn rehearsal_seqs<B: Backend>(
    r: &Recipe,
    model: &Llama<B>,
    tok: &Tokenizer,
    device: &B::Device,
) -> Result<Vec<crate::trainer::Seq>> {
    let mut out = vec![];
    let who = answering_model(r);
    // the confidence line's opening, where the labels write percent values
    let line_start = if r.labels.format == candor_data::config::ConfidenceFormat::Percent {
        r.value_set(tok)?.prefix
    } else {
        vec![]
    };
    for set in &r.train.rehearsal {
        let items = load_items(set)?;
        let labels = candor_data::LabelsConfig {
            samples: 0,
            ..r.labels.clone()
        };
        let settings = AnswerSettings::new(&who, set, &labels);
        let path = r.run_dir().join("data").join(format!(
            "rehearsal-{}.jsonl",
            candor_eval::report::slug(&set.display_name())
        ));
        eprintln!(
            "rehearsal: answering {} questions ({}) → {}",
            items.len(),
            set.display_name(),
            path.display()
        );
        let pb = bar(items.len() as u64, "rehearsal");
        let answers = run_answers(
            model,
            tok,
            &items,
            &settings,
            &path,
            device,
            &mut |p: &Progress| pb.set_position(p.done as u64),
        )?;
        pb.finish_and_clear();
        for a in &answers {
            let n = a.greedy.answer_len();
            if n == 0 {
                continue;
            }
            let prompt = tok.encode(&a.prompt, false)?;
            if prompt.len() + n + line_start.len() > set.max_length {
                continue;
            }
            out.push(crate::trainer::rehearsal_seq(
                prompt,
                &a.greedy.tokens[..n],
                &a.greedy.top[..n],
                r.train.answer_target,
                &line_start,
            ));
        }
    }
    Ok(out)
}

/// The recipe's answer similarity (`labels.similarity`): MiniLM embeddings or ROUGE-L.
pub fn load_similarity<B: Backend>(r: &Recipe, device: &B::Device) -> Result<Box<dyn Similarity>> {
    Ok(if r.labels.similarity == SimilarityKind::Minilm {
        Box::new(MiniLm::<B>::load(&r.labels.minilm_path, device).with_context(|| {
            format!(
                "labels.minilm_path = {}: run scripts/fetch-minilm.sh, or set labels.similarity = \"rouge-l\"",
                r.labels.minilm_path.display()
            )
        })?)
    } else {
        Box::new(Lexical)
    })
}

/// Write `text` to `path` atomically.
pub fn write_text(path: &Path, text: &str) -> Result<()> {
    candor_model::checkpoint::write_atomic(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_indices_past_the_last_layer_are_named() {
        let base = "[model]\npath = \"x\"\n";
        let r = Recipe::parse(&format!("{base}[train]\nlayers = [2, 30]\n")).unwrap();
        let e = check_layers(&r, 30).unwrap_err().to_string();
        assert!(e.contains("train.layers: 30") && e.contains("0–29"), "{e}");
        let r = Recipe::parse(&format!("{base}[lora]\nlayers = [31]\n")).unwrap();
        let e = check_layers(&r, 30).unwrap_err().to_string();
        assert!(
            e.contains("lora.layers: 31") && e.contains("30 layers"),
            "{e}"
        );
        let r = Recipe::parse(&format!("{base}[train]\nlayers = [22, 29]\n")).unwrap();
        check_layers(&r, 30).unwrap();
    }

    #[test]
    fn the_probe_reads_the_answer_tokens_log_probabilities_not_the_stop_token() {
        use candor_data::answering::Sample;
        use candor_model::generate::Finish;
        let s = |finish| Sample {
            text: "12".into(),
            tokens: vec![5, 6, 2],
            logprobs: vec![-0.5, -1.5, -7.0],
            top: vec![vec![]; 3],
            finish,
        };
        // the last token ended the line: two answer tokens
        assert_eq!(logprob_features(&s(Finish::StopToken)), [-2.0, -1.0]);
        // cut at the length limit: all three are the answer
        assert_eq!(logprob_features(&s(Finish::Length)), [-9.0, -3.0]);
        let empty = Sample {
            tokens: vec![2],
            logprobs: vec![-0.1],
            top: vec![vec![]],
            ..s(Finish::StopToken)
        };
        assert_eq!(logprob_features(&empty), [0.0, 0.0]);
        // a recipe error under another teacher
        let e =
            Recipe::parse("[model]\npath = \"x\"\n[labels]\nprobe_logprob = true\n").unwrap_err();
        assert!(
            format!("{e:#}")
                .contains("labels.probe_at / labels.probe_layer / labels.probe_logprob"),
            "{e:#}"
        );
    }
}
