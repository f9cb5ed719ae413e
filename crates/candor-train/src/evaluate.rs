//! Evaluation: the model answers each evaluation question once (greedy, the whole reply so the
//! verbalized confidence is included), and every readout is computed from that generation:
//! verbalized confidence, answer logit (sequence probability and its length-normalised form),
//! indirect logit P(True), DeepConf token confidence, the best constant; and, teacher-forced
//! after the model's own answer, the expected confidence under its distribution over the
//! confidence values (`verbalized_expected`) and a linear probe on its hidden state there
//! (`probe`, fitted on the training set's graded answers). Then metrics, figures and the report
//! (`candor_eval::report`).

use crate::recipe::EvalSection;
use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use candor_confidence::sar::DEFAULT_T;
use candor_confidence::similarity::{sar_scores, Recorder, SarSample, Similarity};
use candor_confidence::{values, Probe, ValueSet};
use candor_data::answering::prompt_style;
use candor_data::answering::row_seed;
use candor_data::calibratedmath::Grade;
use candor_data::config::Style;
use candor_data::dataset::sar_sample_from;
use candor_data::{load_items, DataConfig, Item};
use candor_eval::report::{ParseStats, Scored};
use candor_eval::verbalized::parse_verbalized;
use candor_model::generate::{last_residuals, tail_states};
use candor_model::generate::{Finish, Generation};
use candor_model::tokenizer::Message;
use candor_model::{generate, score, GenConfig, Llama, Tokenizer};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

/// One evaluated question, as written to `<out>/generations-<set>-<model>.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalRecord {
    pub id: String,
    pub group: String,
    /// CalibratedMath task (QA: the source name); filled from the items on reuse.
    #[serde(default)]
    pub task: String,
    pub question: String,
    pub generation: String,
    pub answer: String,
    pub grade: Grade,
    pub conf: BTreeMap<String, f64>,
}

/// Tokens of the first line of a generation (the answer), by decoding growing prefixes.
fn first_line_tokens(tok: &Tokenizer, tokens: &[u32]) -> usize {
    for n in 1..=tokens.len() {
        let t = tok.decode(&tokens[..n], true).unwrap_or_default();
        if t.trim_start().contains('\n') {
            return n - 1;
        }
    }
    tokens.len()
}

/// Tokens of a generation's answer: its first line, without a closing stop token.
fn answer_tokens(tok: &Tokenizer, g: &Generation) -> usize {
    let n = first_line_tokens(tok, &g.tokens);
    if g.finish == Finish::StopToken {
        n.min(g.tokens.len().saturating_sub(1))
    } else {
        n
    }
}

/// The prompt, the answer's tokens and the shared start of the confidence line: where the
/// expected-confidence readout reads the next token, and (one position before the confidence
/// line) where the probe reads the hidden state.
pub fn answer_context(prompt: &[u32], answer: &[u32], vs: &ValueSet) -> Vec<u32> {
    [prompt, answer, &vs.prefix].concat()
}

/// A graded answer as the probe is fitted on: prompt + answer tokens, and whether it is right.
pub type GradedAnswer = (Vec<u32>, bool);

/// Fit the probe of `model` on graded answers: `(prompt + answer tokens, correct)`; the
/// feature is the final hidden state at the answer's last token. `None` when one class is
/// absent.
pub fn fit_probe<B: Backend>(
    model: &Llama<B>,
    tok: &Tokenizer,
    answered: &[GradedAnswer],
    batch: usize,
    device: &B::Device,
) -> Result<Option<Probe>> {
    let rows: Vec<Vec<u32>> = answered.iter().map(|(ids, _)| ids.clone()).collect();
    let x = probe_features(model, tok, &rows, batch, device, &mut |_| {});
    let y: Vec<bool> = answered.iter().map(|(_, c)| *c).collect();
    Ok(Probe::fit(&x, &y, PROBE_L2))
}

/// The probe's feature of each row (prompt + answer tokens): the final hidden state at its
/// last token, in batches of `batch`; `done(n)` after each batch.
pub fn probe_features<B: Backend>(
    model: &Llama<B>,
    tok: &Tokenizer,
    rows: &[Vec<u32>],
    batch: usize,
    device: &B::Device,
    done: &mut dyn FnMut(usize),
) -> Vec<Vec<f32>> {
    probe_features_at(model, tok, rows, None, batch, device, done)
}

/// [`probe_features`] read at `layer` (the residual stream after that many decoder layers,
/// HF's `hidden_states[layer]`) instead of the final hidden state when `layer` is given.
pub fn probe_features_at<B: Backend>(
    model: &Llama<B>,
    tok: &Tokenizer,
    rows: &[Vec<u32>],
    layer: Option<usize>,
    batch: usize,
    device: &B::Device,
    done: &mut dyn FnMut(usize),
) -> Vec<Vec<f32>> {
    let mut x = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(batch.max(1)) {
        match layer {
            Some(l) => x.extend(last_residuals(model, chunk, l, tok.pad_id, device)),
            None => {
                let (states, _) = tail_states(model, chunk, 1, tok.pad_id, device);
                x.extend(
                    states
                        .into_iter()
                        .map(|st| st.into_iter().next().expect("k = 1")),
                );
            }
        }
        done(chunk.len());
    }
    x
}

/// How the trained model's confidence fits its own training answers, as one line for the log:
/// the expected value Σ q(v)·v (teacher-forced after each answer and `\nConfidence: `) of right
/// against wrong answers beside the teacher's labels, its AUROC, its mean distance to the
/// labels, how many answers each value is the most likely for (what greedy decoding writes)
/// beside how many labels each value is nearest, and a warning for each value that at least
/// 5% of the labels are nearest and no answer writes. One forward pass per example: it says
/// within a minute whether the value token learned the labels, before the evaluation's
/// generations.
pub fn training_fit<B: Backend>(
    model: &Llama<B>,
    tok: &Tokenizer,
    vs: &ValueSet,
    examples: &[candor_data::Example],
    batch: usize,
    device: &B::Device,
) -> Result<String> {
    let mut expected = vec![];
    let mut modes = vec![0usize; vs.values.len()];
    for chunk in examples.chunks(batch.max(1)) {
        let rows = chunk
            .iter()
            .map(|e| {
                Ok(answer_context(
                    &tok.encode(&e.prompt, false)?,
                    &e.answer_tokens,
                    vs,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let (_, lps) = tail_states(model, &rows, 1, tok.pad_id, device);
        for lp in &lps {
            let (q, _) = values::distribution(vs, lp);
            let top = (0..q.len()).fold(0, |b, i| if q[i] > q[b] { i } else { b });
            modes[top] += 1;
            expected.push(values::expected(vs, lp));
        }
    }
    let correct: Vec<bool> = examples.iter().map(|e| e.correct).collect();
    let teacher: Vec<f64> = examples.iter().map(|e| e.confidence / 100.0).collect();
    let mean_of = |v: &[f64], right: bool| {
        let xs: Vec<f64> = v
            .iter()
            .zip(&correct)
            .filter(|(_, &c)| c == right)
            .map(|(x, _)| *x)
            .collect();
        if xs.is_empty() {
            "–".to_string()
        } else {
            format!("{:.3}", xs.iter().sum::<f64>() / xs.len() as f64)
        }
    };
    let auroc = |v: &[f64]| {
        candor_eval::metrics::auroc(v, &correct)
            .map(|a| format!("{a:.3}"))
            .unwrap_or_else(|| "–".into())
    };
    let gap = expected
        .iter()
        .zip(&teacher)
        .map(|(e, t)| (e - t).abs())
        .sum::<f64>()
        / expected.len().max(1) as f64;
    let mut nearest = vec![0usize; vs.values.len()];
    for e in examples {
        nearest[vs.nearest(e.confidence)] += 1;
    }
    let counts = |c: &[usize]| {
        vs.values
            .iter()
            .zip(c)
            .filter(|(_, &n)| n > 0)
            .map(|(v, n)| format!("{v}%: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (written, labelled) = (counts(&modes), counts(&nearest));
    // A value that many labels round to and no answer writes has lost its mass, and the Brier
    // score, whose pull on a value is proportional to its probability, cannot bring it back
    // (SmolLM2 seed 1 lost 0% and wrote 10% for every wrong answer: docs/smollm2.md,
    // 2026-12-07 night).
    let lost: String = (0..vs.values.len())
        .filter(|&i| modes[i] == 0 && nearest[i] * 20 >= examples.len().max(1))
        .map(|i| {
            format!(
                "; no answer writes {}%, which {} labels are nearest (a value the Brier score cannot bring back: train.value_ce_floor keeps it)",
                vs.values[i], nearest[i]
            )
        })
        .collect();
    Ok(format!(
        "training-set fit ({} answers): expected confidence right {} / wrong {} (teacher {} / {}); AUROC {} (teacher {}); mean |expected − teacher| {gap:.3}; most likely value {written}; labels nearest {labelled}{lost}",
        examples.len(),
        mean_of(&expected, true),
        mean_of(&expected, false),
        mean_of(&teacher, true),
        mean_of(&teacher, false),
        auroc(&expected),
        auroc(&teacher),
    ))
}

/// The probe's L2 penalty on standardised features.
pub const PROBE_L2: f64 = 1.0;

/// Rank-normalise scores to [0, 1] (average ranks for ties): for readouts that only rank.
fn ranks(v: &[f64]) -> Vec<f64> {
    let n = v.len();
    if n < 2 {
        return vec![0.5; n];
    }
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; n];
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 / (n - 1) as f64;
        for k in i..=j {
            r[idx[k]] = avg;
        }
        i = j + 1;
    }
    r
}

/// P(True) prompts: the question, the model's answer, and a True/False question after it.
fn ptrue_prompt(tok: &Tokenizer, style: Style, question: &str, answer: &str) -> Result<String> {
    let ask = "Is the answer above correct? Reply True or False.";
    match style {
        Style::Chat => tok.apply_chat_template(
            &[
                Message {
                    role: "user".into(),
                    content: question.into(),
                },
                Message {
                    role: "assistant".into(),
                    content: answer.into(),
                },
                Message {
                    role: "user".into(),
                    content: ask.into(),
                },
            ],
            true,
        ),
        Style::Plain => Ok(format!("Q: {question}\nA: {answer}\n{ask}\nAnswer:")),
    }
}

/// Tokens an evaluation needs beyond prompt and answer: the P(True) question and the
/// confidence line read after the answer.
const EVAL_SLACK: usize = 64;

/// Evaluate one set; `constant` is the best constant confidence (training accuracy).
#[allow(clippy::too_many_arguments)]
pub fn evaluate_set<B: Backend>(
    model: &Llama<B>,
    tok: &Tokenizer,
    vs: &ValueSet,
    set: &DataConfig,
    ev: &EvalSection,
    constant: Option<f64>,
    probe: Option<&Probe>,
    mut sim: Option<&mut dyn Similarity>,
    device: &B::Device,
    pb: &indicatif::ProgressBar,
) -> Result<Vec<EvalRecord>> {
    let style = prompt_style(set.style);
    // prompts that cannot fit the context with the answer and the P(True) question around it
    // (`EVAL_SLACK` tokens) are skipped and counted, never allocated
    let context = model.config.max_position_embeddings;
    let mut too_long = vec![];
    let mut items: Vec<(Item, Vec<u32>)> = vec![];
    for it in load_items(set)? {
        let ids = tok.prompt_ids(&it.question, style)?;
        if ids.len() + ev.max_new_tokens + EVAL_SLACK > context {
            too_long.push((it.id.clone(), ids.len()));
        } else {
            items.push((it, ids));
        }
    }
    if !too_long.is_empty() {
        eprintln!(
            "{}: {}",
            set.display_name(),
            candor_data::answering::describe_too_long(
                &too_long,
                context,
                ev.max_new_tokens + EVAL_SLACK
            )
        );
    }
    let how = set.matcher();
    let cfg = GenConfig {
        max_new_tokens: ev.max_new_tokens,
        stop_ids: tok.stop_ids.clone(),
        ..Default::default()
    };
    let (t_id, f_id) = {
        let lead = if set.style == Style::Plain { " " } else { "" };
        let t = tok.encode(&format!("{lead}True"), false)?;
        let f = tok.encode(&format!("{lead}False"), false)?;
        (t, f)
    };
    let mut out = vec![];
    pb.set_length(items.len() as u64);
    for rows in items.chunks(ev.batch_size.max(1)) {
        let chunk: Vec<&Item> = rows.iter().map(|(it, _)| it).collect();
        let prompts: Vec<Vec<u32>> = rows.iter().map(|(_, ids)| ids.clone()).collect();
        let gens = generate(model, tok, &prompts, &cfg, device)?;
        let mut answers = vec![];
        let mut after_answer = vec![];
        for ((it, g), prompt) in chunk.iter().zip(&gens).zip(&prompts) {
            let text = g.text.trim().to_string();
            let first = text.lines().next().unwrap_or("").trim().to_string();
            let (answer, verbal) = match parse_verbalized(&text) {
                Ok(v) if !v.answer.trim().is_empty() => (
                    v.answer.lines().next().unwrap_or("").trim().to_string(),
                    Some(v.confidence),
                ),
                Ok(v) => (first.clone(), Some(v.confidence)),
                Err(_) => (first.clone(), None),
            };
            let n = answer_tokens(tok, g);
            after_answer.push(answer_context(prompt, &g.tokens[..n], vs));
            let lp: Vec<f64> = g.logprobs[..n].iter().map(|&l| l as f64).collect();
            let mut conf = BTreeMap::new();
            if let Some(v) = verbal {
                conf.insert("verbalized".to_string(), v);
            }
            if !lp.is_empty() {
                let s: f64 = lp.iter().sum();
                conf.insert("answer_logit".into(), s.exp());
                conf.insert("answer_logit_norm".into(), (s / lp.len() as f64).exp());
                let tops: Vec<Vec<f32>> = g.top[..n]
                    .iter()
                    .map(|t| t.iter().map(|p| p.1).collect())
                    .collect();
                if let Some(d) = candor_confidence::deepconf::from_top_logprobs(&tops, 8) {
                    conf.insert("deepconf_mean".into(), d.mean);
                    conf.insert("deepconf_lowest".into(), d.lowest_group);
                    conf.insert("deepconf_tail".into(), d.tail);
                }
            }
            if let Some(c) = constant {
                conf.insert("constant".into(), c);
            }
            answers.push(answer.clone());
            out.push(EvalRecord {
                id: it.id.clone(),
                group: it.group.clone(),
                task: it.task.clone(),
                question: it.question.clone(),
                generation: text,
                answer,
                grade: it.grade(&answers[answers.len() - 1], how),
                conf,
            });
        }
        let base = out.len() - chunk.len();
        // teacher-forced after the answer: the expected confidence and the probe
        let (states, lps) = tail_states(
            model,
            &after_answer,
            vs.prefix.len() + 1,
            tok.pad_id,
            device,
        );
        for (k, (st, lp)) in states.iter().zip(&lps).enumerate() {
            let conf = &mut out[base + k].conf;
            conf.insert("verbalized_expected".into(), values::expected(vs, lp));
            if let Some(p) = probe {
                conf.insert("probe".into(), p.predict(&st[0]));
            }
        }
        // indirect logit: P(True) after the answer, from the next-token distribution
        let mut pp = vec![];
        let mut cont = vec![];
        for (it, a) in chunk.iter().zip(&answers) {
            let p = tok.encode(&ptrue_prompt(tok, set.style, &it.question, a)?, false)?;
            pp.push(p.clone());
            pp.push(p);
            cont.push(t_id.clone());
            cont.push(f_id.clone());
        }
        let sc = score(model, &pp, &cont, tok.pad_id, device);
        for (k, pair) in sc.chunks(2).enumerate() {
            let lt: f64 = pair[0].iter().map(|&x| x as f64).sum();
            let lf: f64 = pair[1].iter().map(|&x| x as f64).sum();
            let m = lt.max(lf);
            let p = (lt - m).exp() / ((lt - m).exp() + (lf - m).exp());
            out[base + k].conf.insert("p_true".into(), p);
        }
        // SAR over K sampled answers (negated: higher = more sure)
        if let (Some(sim), true) = (sim.as_deref_mut(), ev.samples >= 2) {
            let mut rows = vec![];
            let mut seeds = vec![];
            for (p, it) in prompts.iter().zip(&chunk) {
                for k in 0..ev.samples {
                    rows.push(p.clone());
                    seeds.push(row_seed(ev.seed, &it.id, k));
                }
            }
            let scfg = GenConfig {
                temperature: ev.temperature as f32,
                row_seeds: seeds,
                ..cfg.clone()
            };
            let sampled = generate(model, tok, &rows, &scfg, device)?;
            let per_question: Vec<Vec<SarSample>> = sampled
                .chunks(ev.samples)
                .map(|gs| {
                    gs.iter()
                        .map(|g| {
                            let n = answer_tokens(tok, g);
                            let text = g.text.trim().lines().next().unwrap_or("").trim();
                            sar_sample_from(tok, text, &g.tokens[..n], &g.logprobs[..n])
                        })
                        .collect::<Result<_>>()
                })
                .collect::<Result<_>>()?;
            // the texts SAR will compare, embedded in a few batches first
            let mut rec = Recorder::default();
            for (q, samples) in per_question.iter().enumerate() {
                sar_scores(&mut rec, &chunk[q].question, samples, DEFAULT_T)?;
            }
            sim.prefetch(&rec.texts)?;
            for (q, samples) in per_question.iter().enumerate() {
                let sc = sar_scores(sim, &chunk[q].question, samples, DEFAULT_T)?;
                out[base + q].conf.insert("sar".into(), -sc.sar);
            }
        }
        pb.inc(chunk.len() as u64);
    }
    // DeepConf and SAR are scores, not probabilities: rank-normalise them within the set
    for key in ["deepconf_mean", "deepconf_lowest", "deepconf_tail", "sar"] {
        let have: Vec<usize> = (0..out.len())
            .filter(|&i| out[i].conf.contains_key(key))
            .collect();
        let v: Vec<f64> = have.iter().map(|&i| out[i].conf[key]).collect();
        for (&i, r) in have.iter().zip(ranks(&v)) {
            out[i].conf.remove(key);
            out[i].conf.insert(format!("{key}_rank"), r);
        }
    }
    Ok(out)
}

/// Verbalized-confidence parse statistics of a set's generations: failures by kind and the
/// first five unparseable generations.
pub fn parse_stats(recs: &[EvalRecord]) -> ParseStats {
    let mut parse = ParseStats {
        parsed: 0,
        failures: BTreeMap::new(),
        examples: vec![],
    };
    for r in recs {
        match parse_verbalized(&r.generation) {
            Ok(_) => parse.parsed += 1,
            Err(e) => {
                *parse
                    .failures
                    .entry(format!("{e:?}").to_lowercase())
                    .or_default() += 1;
                if parse.examples.len() < 5 {
                    parse
                        .examples
                        .push(r.generation.chars().take(160).collect());
                }
            }
        }
    }
    parse
}

pub fn to_scored(recs: &[EvalRecord]) -> Vec<Scored> {
    recs.iter()
        .map(|r| Scored {
            id: r.id.clone(),
            group: r.group.clone(),
            task: r.task.clone(),
            correct: r.grade == Grade::Correct,
            conf: r.conf.clone(),
        })
        .collect()
}

/// What a set's generations depend on; a `generations-*.jsonl` written under the same
/// settings is reused instead of generating again (so a report can be re-rendered, and an
/// interrupted evaluation keeps the sets it finished). `None` (no model file to fingerprint,
/// e.g. a preset) disables reuse.
fn generation_key(
    model_path: &str,
    set: &DataConfig,
    ev: &EvalSection,
    constant: Option<f64>,
    probe: &Option<String>,
    values: &Option<Vec<u32>>,
) -> Option<String> {
    let model = candor_model::checkpoint::weights_fingerprint(std::path::Path::new(model_path))?;
    let mut key = serde_json::json!({
        // bump when the readouts computed from a generation change
        "readouts_version": 3,
        "probe_data": probe,
        "model": model,
        "set": set,
        "max_new_tokens": ev.max_new_tokens,
        "samples": ev.samples,
        "temperature": ev.temperature,
        "seed": ev.seed,
        "constant": constant,
    });
    // only a value set other than the default enters the key, so that earlier keys still match
    if let Some(v) = values {
        key["values"] = serde_json::json!(v);
    }
    serde_json::to_string_pretty(&key).ok()
}

/// The records of an earlier evaluation of the same set under the same settings, if any.
fn reuse_generations(
    path: &std::path::Path,
    key: &Option<String>,
    set: &DataConfig,
) -> Result<Option<Vec<EvalRecord>>> {
    let Some(key) = key else { return Ok(None) };
    let settings = path.with_extension("settings.json");
    match std::fs::read_to_string(&settings) {
        Ok(old) if old == *key => {}
        Ok(_) => {
            eprintln!(
                "{}: model or settings changed, generating again",
                settings.display()
            );
            return Ok(None);
        }
        Err(_) => return Ok(None),
    }
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(None);
    };
    let mut recs: Vec<EvalRecord> = vec![];
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str(line) {
            Ok(r) => recs.push(r),
            Err(_) => return Ok(None),
        }
    }
    // the records follow the set's questions in order; questions too long for the context
    // have none (the same ones under the same key)
    let mut items = load_items(set)?.into_iter();
    for r in recs.iter_mut() {
        match items.find(|i| i.id == r.id) {
            Some(i) => r.task = i.task,
            None => return Ok(None),
        }
    }
    Ok(Some(recs))
}

/// Evaluate every model on every set and write `<out>/report.json`, `report.md`, the SVG
/// figures and one `generations-*.jsonl` per set and model. `sim` is the similarity for the
/// SAR readout (used when `ev.samples >= 2`).
#[allow(clippy::too_many_arguments)]
pub fn evaluate_and_report<B: Backend>(
    models: &[(&str, &Llama<B>)],
    model_paths: BTreeMap<String, String>,
    tok: &Tokenizer,
    vs: &ValueSet,
    sets: &[DataConfig],
    ev: &EvalSection,
    constant: Option<f64>,
    recipe_hash: Option<String>,
    out: &std::path::Path,
    probe_data: Option<&[GradedAnswer]>,
    seen: &HashSet<String>,
    mut sim: Option<&mut dyn Similarity>,
    device: &B::Device,
) -> Result<candor_eval::report::Report> {
    use candor_eval::report::{figures, set_result, AccuracyChange, Report};
    use candor_model::checkpoint::write_atomic;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut results = vec![];
    let mut accuracy_changes = vec![];
    let mut figure_files = vec![];
    // each model's probe, fitted the first time a set is evaluated afresh
    let mut probes: BTreeMap<String, Option<Probe>> = BTreeMap::new();
    let probe_key = probe_data.map(|d| {
        let h = d.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, (ids, c)| {
            ids.iter()
                .chain(std::iter::once(&(*c as u32)))
                .fold(h, |h, &x| (h ^ x as u64).wrapping_mul(0x100_0000_01b3))
        });
        format!("{}:{h:016x}", d.len())
    });
    let custom_values = (ValueSet::new(tok).ok().map(|d| d.values) != Some(vs.values.clone()))
        .then(|| vs.values.clone());
    for set in sets {
        let name = set.display_name();
        let slug = candor_eval::report::slug(&name);
        let mut per_model: Vec<(String, Vec<Scored>)> = vec![];
        for (label, model) in models {
            let path = out.join(format!("generations-{slug}-{label}.jsonl"));
            let key = model_paths
                .get(*label)
                .and_then(|p| generation_key(p, set, ev, constant, &probe_key, &custom_values));
            let recs = match reuse_generations(&path, &key, set)? {
                Some(recs) => {
                    eprintln!("eval {name} ({label}): reusing {}", path.display());
                    recs
                }
                None => {
                    if !probes.contains_key(*label) {
                        let p = match probe_data {
                            Some(d) => fit_probe(*model, tok, d, ev.batch_size, device)?,
                            None => None,
                        };
                        if let Some(p) = &p {
                            eprintln!(
                                "probe ({label}): logistic regression on the hidden state after the answer, fitted on {} training answers",
                                p.fitted_on
                            );
                        }
                        probes.insert(label.to_string(), p);
                    }
                    let pb = crate::pipeline::bar(0, &format!("eval {name} ({label})"));
                    let recs = evaluate_set(
                        *model,
                        tok,
                        vs,
                        set,
                        ev,
                        constant,
                        probes[*label].as_ref(),
                        sim.as_mut().map(|s| &mut **s as &mut dyn Similarity),
                        device,
                        &pb,
                    )?;
                    pb.finish_and_clear();
                    let mut lines = String::new();
                    for r in &recs {
                        lines += &serde_json::to_string(r)?;
                        lines.push('\n');
                    }
                    write_atomic(&path, lines.as_bytes())?;
                    if let Some(k) = &key {
                        write_atomic(&path.with_extension("settings.json"), k.as_bytes())?;
                    }
                    recs
                }
            };
            // a question the run trained on is not held out: left out of the metrics (the
            // generations file keeps it, so the same file serves another training set)
            let total = recs.len();
            let recs: Vec<EvalRecord> = recs
                .into_iter()
                .filter(|r| !seen.contains(&r.question))
                .collect();
            let left_out = total - recs.len();
            anyhow::ensure!(
                !recs.is_empty(),
                "eval set {name}: all {total} of its questions are in the training data, so none is held out; give it another seed or other sub-tasks"
            );
            if left_out > 0 && *label == models[0].0 {
                eprintln!(
                    "eval {name}: {left_out} of {total} questions are also in the training data; left out of the metrics"
                );
            }
            let scored = to_scored(&recs);
            let mut result = set_result(
                &name,
                label,
                &scored,
                parse_stats(&recs),
                ev.bootstrap,
                ev.seed,
            );
            result.left_out_seen = left_out;
            results.push(result);
            per_model.push((label.to_string(), scored));
        }
        let find = |l: &str| per_model.iter().find(|(m, _)| m == l).map(|(_, s)| s);
        if let (Some(b), Some(a)) = (find("before"), find("after")) {
            accuracy_changes.push(AccuracyChange::new(&name, b, a, ev.bootstrap, ev.seed));
        }
        let refs: Vec<(&str, &[Scored])> = per_model
            .iter()
            .map(|(l, s)| (l.as_str(), s.as_slice()))
            .collect();
        for (file, svg) in figures(&name, &refs) {
            write_atomic(&out.join(&file), svg.as_bytes())?;
            figure_files.push(file);
        }
    }
    let report = Report {
        models: model_paths,
        recipe_hash,
        seed: ev.seed,
        bootstrap: ev.bootstrap,
        results,
        accuracy_changes,
    };
    write_atomic(
        &out.join("report.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    write_atomic(
        &out.join("report.md"),
        report.markdown(&figure_files).as_bytes(),
    )?;
    Ok(report)
}
