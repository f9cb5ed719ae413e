//! Evaluation: the model answers each evaluation question once (greedy, the whole reply so the
//! verbalized confidence is included), and every readout is computed from that generation:
//! verbalized confidence, answer logit (sequence probability and its length-normalised form),
//! indirect logit P(True), DeepConf token confidence, and the best constant. Then metrics,
//! figures and the report (`candor_eval::report`).

use crate::recipe::EvalSection;
use anyhow::Result;
use burn::tensor::backend::Backend;
use candor_data::answering::prompt_style;
use candor_data::calibratedmath::Grade;
use candor_data::config::Style;
use candor_data::{load_items, DataConfig, Item};
use candor_eval::report::{ParseStats, Scored};
use candor_eval::verbalized::parse_verbalized;
use candor_model::tokenizer::Message;
use candor_model::{generate, score, GenConfig, Llama, Tokenizer};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One evaluated question, as written to `<out>/generations-<set>-<model>.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalRecord {
    pub id: String,
    pub group: String,
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

/// Evaluate one set; `constant` is the best constant confidence (training accuracy).
pub fn evaluate_set<B: Backend>(
    model: &Llama<B>,
    tok: &Tokenizer,
    set: &DataConfig,
    ev: &EvalSection,
    constant: Option<f64>,
    device: &B::Device,
    pb: &indicatif::ProgressBar,
) -> Result<(Vec<EvalRecord>, ParseStats)> {
    let items: Vec<Item> = load_items(set)?;
    let style = prompt_style(set.style);
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
    let mut parse = ParseStats {
        parsed: 0,
        failures: BTreeMap::new(),
        examples: vec![],
    };
    pb.set_length(items.len() as u64);
    for chunk in items.chunks(ev.batch_size.max(1)) {
        let prompts: Vec<Vec<u32>> = chunk
            .iter()
            .map(|it| tok.prompt_ids(&it.question, style))
            .collect::<Result<_>>()?;
        let gens = generate(model, tok, &prompts, &cfg, device)?;
        let mut answers = vec![];
        for (it, g) in chunk.iter().zip(&gens) {
            let text = g.text.trim().to_string();
            let first = text.lines().next().unwrap_or("").trim().to_string();
            let (answer, verbal) = match parse_verbalized(&text) {
                Ok(v) => {
                    parse.parsed += 1;
                    let a = if v.answer.trim().is_empty() {
                        first.clone()
                    } else {
                        v.answer.lines().next().unwrap_or("").trim().to_string()
                    };
                    (a, Some(v.confidence))
                }
                Err(e) => {
                    *parse
                        .failures
                        .entry(format!("{e:?}").to_lowercase())
                        .or_default() += 1;
                    if parse.examples.len() < 5 {
                        parse.examples.push(text.chars().take(160).collect());
                    }
                    (first.clone(), None)
                }
            };
            let n = first_line_tokens(tok, &g.tokens);
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
                }
            }
            if let Some(c) = constant {
                conf.insert("constant".into(), c);
            }
            answers.push(answer.clone());
            out.push(EvalRecord {
                id: it.id.clone(),
                group: it.group.clone(),
                question: it.question.clone(),
                generation: text,
                answer,
                grade: it.grade(&answers[answers.len() - 1], how),
                conf,
            });
        }
        // indirect logit: P(True) after the answer, from the next-token distribution
        let base = out.len() - chunk.len();
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
        pb.inc(chunk.len() as u64);
    }
    // DeepConf is a score, not a probability: rank-normalise it within the set
    for key in ["deepconf_mean", "deepconf_lowest"] {
        let have: Vec<usize> = (0..out.len())
            .filter(|&i| out[i].conf.contains_key(key))
            .collect();
        let v: Vec<f64> = have.iter().map(|&i| out[i].conf[key]).collect();
        for (&i, r) in have.iter().zip(ranks(&v)) {
            out[i].conf.remove(key);
            out[i].conf.insert(format!("{key}_rank"), r);
        }
    }
    Ok((out, parse))
}

pub fn to_scored(recs: &[EvalRecord]) -> Vec<Scored> {
    recs.iter()
        .map(|r| Scored {
            id: r.id.clone(),
            group: r.group.clone(),
            correct: r.grade == Grade::Correct,
            conf: r.conf.clone(),
        })
        .collect()
}

/// Evaluate every model on every set and write `<out>/report.json`, `report.md`, the SVG
/// figures and one `generations-*.jsonl` per set and model.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_and_report<B: Backend>(
    models: &[(&str, &Llama<B>)],
    model_paths: BTreeMap<String, String>,
    tok: &Tokenizer,
    sets: &[DataConfig],
    ev: &EvalSection,
    constant: Option<f64>,
    recipe_hash: Option<String>,
    out: &std::path::Path,
    device: &B::Device,
) -> Result<candor_eval::report::Report> {
    use candor_eval::report::{figures, set_result, Report};
    use candor_model::checkpoint::write_atomic;
    std::fs::create_dir_all(out)?;
    let mut results = vec![];
    let mut figure_files = vec![];
    for set in sets {
        let name = set.display_name();
        let slug: String = name
            .chars()
            .map(|c| {
                if c.is_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        let mut per_model: Vec<(String, Vec<Scored>)> = vec![];
        for (label, model) in models {
            let pb = crate::pipeline::bar(0, &format!("eval {name} ({label})"));
            let (recs, parse) = evaluate_set(*model, tok, set, ev, constant, device, &pb)?;
            pb.finish_and_clear();
            let mut lines = String::new();
            for r in &recs {
                lines += &serde_json::to_string(r)?;
                lines.push('\n');
            }
            write_atomic(
                &out.join(format!("generations-{slug}-{label}.jsonl")),
                lines.as_bytes(),
            )?;
            let scored = to_scored(&recs);
            results.push(set_result(
                &name,
                label,
                &scored,
                parse,
                ev.bootstrap,
                ev.seed,
            ));
            per_model.push((label.to_string(), scored));
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
