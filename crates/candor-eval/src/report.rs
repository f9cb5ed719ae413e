//! `report.json` and `report.md` from per-question readouts: every metric per readout, per
//! evaluation set and model (before/after), bootstrap intervals, the decision table, and the
//! figures. Deterministic: the same inputs give byte-identical files (ordered maps, seeded
//! bootstrap, fixed float formatting).

use crate::figures::{confidence_histogram_svg, reliability_svg, risk_coverage_svg, Series};
use crate::metrics::{auroc, bootstrap_ci, ece, Metrics};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One question's outcome under one model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    pub id: String,
    pub group: String,
    /// CalibratedMath task (QA: the source); metrics are also reported per task.
    #[serde(default)]
    pub task: String,
    pub correct: bool,
    /// Readout name → confidence in [0, 1]; a readout missing here failed for this question
    /// (e.g. no parseable verbalized confidence).
    pub conf: BTreeMap<String, f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReadoutResult {
    /// Questions with a value for this readout.
    pub n: usize,
    pub metrics: Metrics,
    pub ece_10_ci: Option<(f64, f64)>,
    pub auroc_ci: Option<(f64, f64)>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SetResult {
    pub set: String,
    /// `before`, `after`, or a model name.
    pub model: String,
    pub n: usize,
    pub accuracy: f64,
    /// 95% bootstrap interval of the accuracy.
    #[serde(default)]
    pub accuracy_ci: Option<(f64, f64)>,
    /// Share of answers with a parseable verbalized confidence.
    pub parse_rate: f64,
    pub parse_failures: BTreeMap<String, usize>,
    /// Up to five unparseable generations.
    pub parse_examples: Vec<String>,
    pub accuracy_by_group: BTreeMap<String, (usize, f64)>,
    pub readouts: BTreeMap<String, ReadoutResult>,
    /// The same metrics per task (no bootstrap).
    pub by_task: BTreeMap<String, TaskResult>,
    /// Questions of the set that are also in the training data, left out of everything above.
    #[serde(default)]
    pub left_out_seen: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    pub n: usize,
    pub accuracy: f64,
    pub readouts: BTreeMap<String, Metrics>,
}

/// Every readout's values over some questions: readout name → (confidences, correctness) of
/// the questions that have a value for it, in question order.
fn per_readout(scored: &[&Scored]) -> BTreeMap<String, (Vec<f64>, Vec<bool>)> {
    let mut m: BTreeMap<String, (Vec<f64>, Vec<bool>)> = BTreeMap::new();
    for s in scored {
        for (k, &c) in &s.conf {
            let e = m.entry(k.clone()).or_default();
            e.0.push(c);
            e.1.push(s.correct);
        }
    }
    m
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub models: BTreeMap<String, String>,
    pub recipe_hash: Option<String>,
    pub seed: u64,
    pub bootstrap: usize,
    pub results: Vec<SetResult>,
    /// Accuracy after training minus before, per set (when both models were evaluated).
    #[serde(default)]
    pub accuracy_changes: Vec<AccuracyChange>,
}

/// How accuracy moved on one set between two models that answered the same questions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AccuracyChange {
    pub set: String,
    /// Questions both models answered (matched by id).
    pub n: usize,
    pub before: f64,
    pub after: f64,
    /// after − before, and its 95% interval from a paired bootstrap over the questions.
    pub diff: f64,
    pub diff_ci: Option<(f64, f64)>,
}

impl AccuracyChange {
    /// Paired bootstrap of `after − before` accuracy over the questions both sets share.
    pub fn new(set: &str, before: &[Scored], after: &[Scored], reps: usize, seed: u64) -> Self {
        let by_id: BTreeMap<&str, bool> =
            after.iter().map(|s| (s.id.as_str(), s.correct)).collect();
        let pairs: Vec<(bool, bool)> = before
            .iter()
            .filter_map(|b| by_id.get(b.id.as_str()).map(|&a| (b.correct, a)))
            .collect();
        let n = pairs.len();
        let acc = |f: &dyn Fn(&(bool, bool)) -> bool| {
            pairs.iter().filter(|p| f(p)).count() as f64 / n.max(1) as f64
        };
        let (b, a) = (acc(&|p| p.0), acc(&|p| p.1));
        // the per-question difference (−1, 0, 1) as a "confidence" column: its mean is the
        // accuracy change, resampled with the same seeded bootstrap as the metrics
        let d: Vec<f64> = pairs
            .iter()
            .map(|p| p.1 as u8 as f64 - p.0 as u8 as f64)
            .collect();
        let dummy = vec![false; n];
        let diff_ci = bootstrap_ci(&d, &dummy, reps, seed, |d, _| {
            Some(d.iter().sum::<f64>() / d.len() as f64)
        });
        Self {
            set: set.into(),
            n,
            before: b,
            after: a,
            diff: a - b,
            diff_ci,
        }
    }

    /// True when accuracy after is lower beyond the interval (its upper end below 0).
    pub fn fell(&self) -> bool {
        self.diff_ci.is_some_and(|(_, hi)| hi < 0.0)
    }

    /// One line for people: the change, its interval, and a warning when it fell.
    pub fn describe(&self) -> String {
        let ci = self
            .diff_ci
            .map(|(a, b)| format!(" [95% CI {:+.1}, {:+.1}]", 100.0 * a, 100.0 * b))
            .unwrap_or_default();
        let mut o = format!(
            "{}: accuracy {:.1}% → {:.1}% ({:+.1} points{ci}, {} questions)",
            self.set,
            100.0 * self.before,
            100.0 * self.after,
            100.0 * self.diff,
            self.n
        );
        if self.fell() {
            o += " — WARNING: training lowered accuracy beyond the interval; the confidences it learned describe answers the model no longer gives";
        }
        o
    }
}

pub struct ParseStats {
    pub parsed: usize,
    pub failures: BTreeMap<String, usize>,
    pub examples: Vec<String>,
}

/// Metrics of every readout on one set.
pub fn set_result(
    set: &str,
    model: &str,
    scored: &[Scored],
    parse: ParseStats,
    bootstrap: usize,
    seed: u64,
) -> SetResult {
    let n = scored.len();
    let correct: Vec<bool> = scored.iter().map(|s| s.correct).collect();
    let all: Vec<&Scored> = scored.iter().collect();
    let mut readouts = BTreeMap::new();
    for (name, (c, y)) in per_readout(&all) {
        readouts.insert(
            name,
            ReadoutResult {
                n: c.len(),
                metrics: Metrics::compute(&c, &y),
                ece_10_ci: bootstrap_ci(&c, &y, bootstrap, seed, |c, y| Some(ece(c, y, 10))),
                auroc_ci: bootstrap_ci(&c, &y, bootstrap, seed, auroc),
            },
        );
    }
    let mut tasks: BTreeMap<&str, Vec<&Scored>> = BTreeMap::new();
    for s in scored {
        tasks.entry(s.task.as_str()).or_default().push(s);
    }
    let by_task = tasks
        .into_iter()
        .map(|(t, v)| {
            let acc = v.iter().filter(|s| s.correct).count() as f64 / v.len() as f64;
            let readouts = per_readout(&v)
                .into_iter()
                .map(|(k, (c, y))| (k, Metrics::compute(&c, &y)))
                .collect();
            (
                t.to_string(),
                TaskResult {
                    n: v.len(),
                    accuracy: acc,
                    readouts,
                },
            )
        })
        .collect();
    let mut by_group: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for s in scored {
        let e = by_group.entry(s.group.clone()).or_default();
        e.0 += 1;
        e.1 += s.correct as usize;
    }
    let ones: Vec<f64> = correct.iter().map(|&c| c as u8 as f64).collect();
    SetResult {
        set: set.into(),
        model: model.into(),
        n,
        accuracy: correct.iter().filter(|&&b| b).count() as f64 / n.max(1) as f64,
        accuracy_ci: bootstrap_ci(&ones, &correct, bootstrap, seed, |c, _| {
            Some(c.iter().sum::<f64>() / c.len() as f64)
        }),
        parse_rate: parse.parsed as f64 / n.max(1) as f64,
        parse_failures: parse.failures,
        parse_examples: parse.examples,
        accuracy_by_group: by_group
            .into_iter()
            .map(|(g, (n, c))| (g, (n, c as f64 / n.max(1) as f64)))
            .collect(),
        readouts,
        by_task,
        left_out_seen: 0,
    }
}

fn f(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else {
        format!("{v:.3}")
    }
}

/// A set name as it appears in file names: lower-case alphanumerics, the rest `-`.
pub fn slug(set: &str) -> String {
    set.chars()
        .map(|c| {
            if c.is_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

fn fo(v: Option<f64>) -> String {
    v.map(f).unwrap_or_else(|| "undef.".into())
}

/// Figures of one set: a reliability diagram per readout (and a before/after overlay of the
/// verbalized readout), a confidence histogram and a risk–coverage curve. Returns
/// `(file name, svg)`.
pub fn figures(set: &str, per_model: &[(&str, &[Scored])]) -> Vec<(String, String)> {
    let slug = slug(set);
    let mut out = vec![];
    let mut overlay_data: Vec<(String, Vec<f64>, Vec<bool>)> = vec![];
    // risk–coverage: every readout of every model (verbalized alone can be too sparse to read)
    let mut rc_data: Vec<(String, Vec<f64>, Vec<bool>)> = vec![];
    for (model, scored) in per_model {
        let all: Vec<&Scored> = scored.iter().collect();
        for (name, (c, y)) in per_readout(&all) {
            let series = [Series {
                label: &name,
                confidence: &c,
                correct: &y,
            }];
            if let Ok(svg) = reliability_svg(&format!("{set} — {model} — {name}"), &series, 10)
            {
                out.push((format!("reliability-{slug}-{model}-{name}.svg"), svg));
            }
            let label = if per_model.len() > 1 {
                format!("{model} · {name}")
            } else {
                name.clone()
            };
            if name == "verbalized" {
                overlay_data.push((model.to_string(), c.clone(), y.clone()));
            }
            rc_data.push((label, c, y));
        }
    }
    let series: Vec<Series> = overlay_data
        .iter()
        .map(|(m, c, y)| Series {
            label: m,
            confidence: c,
            correct: y,
        })
        .collect();
    if !series.is_empty() {
        if let Ok(svg) = reliability_svg(&format!("{set} — verbalized confidence"), &series, 10) {
            out.push((format!("reliability-{slug}-verbalized-overlay.svg"), svg));
        }
        if let Ok(svg) =
            confidence_histogram_svg(&format!("{set} — verbalized confidence"), &series, 10)
        {
            out.push((format!("histogram-{slug}.svg"), svg));
        }
    }
    let rc: Vec<Series> = rc_data
        .iter()
        .map(|(m, c, y)| Series {
            label: m,
            confidence: c,
            correct: y,
        })
        .collect();
    if !rc.is_empty() {
        if let Ok(svg) = risk_coverage_svg(&format!("{set} — risk vs coverage"), &rc) {
            out.push((format!("risk-coverage-{slug}.svg"), svg));
        }
    }
    out
}

/// Per-task table (only when a set has more than one task): accuracy, then ECE-10 / AUROC of
/// each readout.
fn task_table(rows: &[&SetResult]) -> String {
    if rows.iter().all(|r| r.by_task.len() < 2) {
        return String::new();
    }
    let mut names: Vec<&String> = rows
        .iter()
        .flat_map(|r| r.by_task.values().flat_map(|t| t.readouts.keys()))
        .collect();
    names.sort();
    names.dedup();
    let mut o = String::from(
        "\nPer task — accuracy, then ECE-10 / AUROC of each readout:\n\n| model | task | n | acc |",
    );
    for n in &names {
        o += &format!(" {n} |");
    }
    o += &format!("\n|---|---|---|---|{}\n", "---|".repeat(names.len()));
    for r in rows {
        for (task, t) in &r.by_task {
            o += &format!("| {} | {} | {} | {} |", r.model, task, t.n, f(t.accuracy));
            for n in &names {
                match t.readouts.get(*n) {
                    Some(m) => o += &format!(" {} / {} |", f(m.ece_10), fo(m.auroc)),
                    None => o += " – |",
                }
            }
            o += "\n";
        }
    }
    o
}

impl Report {
    /// The readable summary.
    pub fn markdown(&self, figure_files: &[String]) -> String {
        let mut o = String::from("# Calibration report\n\n");
        let fell: Vec<&AccuracyChange> =
            self.accuracy_changes.iter().filter(|c| c.fell()).collect();
        if !fell.is_empty() {
            o += "**Warning: accuracy fell after training** beyond the 95% interval on ";
            o += &fell
                .iter()
                .map(|c| format!("{} ({:+.1} points)", c.set, 100.0 * c.diff))
                .collect::<Vec<_>>()
                .join(", ");
            o += ". A confidence learned for answers the model no longer gives is not calibration.\n\n";
        }
        for (k, v) in &self.models {
            o += &format!("- model ({k}): `{v}`\n");
        }
        if let Some(h) = &self.recipe_hash {
            o += &format!("- recipe hash: `{h}`\n");
        }
        o += &format!(
            "- bootstrap: {} resamples, seed {}; ECE bins are equal-width, (lo, hi] with 0 in the first bin; MAD uses 20 equal-count bins; AUROC ties count ½; accuracy at coverage takes answers tied at the cut in proportion\n\n",
            self.bootstrap, self.seed
        );
        let mut sets: Vec<&str> = self.results.iter().map(|r| r.set.as_str()).collect();
        sets.dedup();
        for set in sets {
            let rows: Vec<&SetResult> = self.results.iter().filter(|r| r.set == set).collect();
            o += &format!("## {set}\n\n");
            for r in &rows {
                let ci = r
                    .accuracy_ci
                    .map(|(a, b)| format!(" [95% CI {:.1}, {:.1}]", 100.0 * a, 100.0 * b))
                    .unwrap_or_default();
                o += &format!(
                    "- {}: {} questions, accuracy {:.1}%{ci} ({} right), verbalized confidence parsed in {:.1}%",
                    r.model,
                    r.n,
                    100.0 * r.accuracy,
                    (r.accuracy * r.n as f64).round(),
                    100.0 * r.parse_rate
                );
                if !r.parse_failures.is_empty() {
                    let fails: Vec<String> = r
                        .parse_failures
                        .iter()
                        .map(|(k, v)| format!("{k} {v}"))
                        .collect();
                    o += &format!(" (failures: {})", fails.join(", "));
                }
                if r.left_out_seen > 0 {
                    o += &format!(
                        "; {} questions also in the training data left out",
                        r.left_out_seen
                    );
                }
                o += "\n";
            }
            for c in self.accuracy_changes.iter().filter(|c| c.set == set) {
                o += &format!("- {}\n", c.describe());
            }
            o += "\n| model | readout | n | ECE-10 [95% CI] | ECE-15 | Brier | AUROC [95% CI] | MAD-20 | AURC | AUPRC |\n|---|---|---|---|---|---|---|---|---|---|\n";
            // best per column (lower is better except AUROC/AUPRC)
            let all: Vec<(&SetResult, &String, &ReadoutResult)> = rows
                .iter()
                .flat_map(|r| r.readouts.iter().map(move |(k, v)| (*r, k, v)))
                .collect();
            let best = |get: &dyn Fn(&Metrics) -> Option<f64>, higher: bool| -> Option<f64> {
                let vals = all
                    .iter()
                    .filter_map(|x| get(&x.2.metrics))
                    .filter(|v| !v.is_nan());
                if higher {
                    vals.fold(None, |a: Option<f64>, v| Some(a.map_or(v, |a| a.max(v))))
                } else {
                    vals.fold(None, |a: Option<f64>, v| Some(a.map_or(v, |a| a.min(v))))
                }
            };
            type Col<'a> = (&'a dyn Fn(&Metrics) -> Option<f64>, bool);
            let cols: [Col; 7] = [
                (&|m| Some(m.ece_10), false),
                (&|m| Some(m.ece_15), false),
                (&|m| Some(m.brier), false),
                (&|m| m.auroc, true),
                (&|m| Some(m.mad_20), false),
                (&|m| Some(m.aurc), false),
                (&|m| m.auprc, true),
            ];
            let bests: Vec<Option<f64>> = cols.iter().map(|(g, h)| best(*g, *h)).collect();
            for (r, name, rr) in &all {
                let m = &rr.metrics;
                let cell = |i: usize, v: Option<f64>| {
                    let s = fo(v);
                    if v.is_some() && v == bests[i] && all.len() > 1 {
                        format!("**{s}**")
                    } else {
                        s
                    }
                };
                let ci = |c: Option<(f64, f64)>| {
                    c.map(|(a, b)| format!(" [{a:.3}, {b:.3}]"))
                        .unwrap_or_default()
                };
                o += &format!(
                    "| {} | {} | {} | {}{} | {} | {} | {}{} | {} | {} | {} |\n",
                    r.model,
                    name,
                    rr.n,
                    cell(0, Some(m.ece_10)),
                    ci(rr.ece_10_ci),
                    cell(1, Some(m.ece_15)),
                    cell(2, Some(m.brier)),
                    cell(3, m.auroc),
                    ci(rr.auroc_ci),
                    cell(4, Some(m.mad_20)),
                    cell(5, Some(m.aurc)),
                    cell(6, m.auprc),
                );
            }
            o += "\nBest per column in bold (lower is better; AUROC and AUPRC higher). `*_rank` readouts (DeepConf token confidence, SAR) are scores, not probabilities: they are rank-normalised to [0, 1] within the set, so only AUROC, AUPRC, AURC and the decision table say something about them; their ECE, Brier and MAD do not.\n\n";
            o += "Decision table — accuracy on the answers kept when the least confident are escalated:\n\n| model | readout | keep 25% | keep 50% | keep 75% | keep 100% |\n|---|---|---|---|---|---|\n";
            for (r, name, rr) in &all {
                let a = rr.metrics.acc_at_coverage;
                o += &format!(
                    "| {} | {} | {} | {} | {} | {} |\n",
                    r.model,
                    name,
                    f(a[0]),
                    f(a[1]),
                    f(a[2]),
                    f(a[3])
                );
            }
            o += &task_table(&rows);
            for r in &rows {
                if !r.parse_examples.is_empty() {
                    o += &format!(
                        "\nUnparseable generations ({}), first {}:\n\n",
                        r.model,
                        r.parse_examples.len()
                    );
                    for e in &r.parse_examples {
                        o += &format!("- `{}`\n", e.replace('\n', "⏎").replace('`', "'"));
                    }
                }
            }
            let slug = slug(set);
            let figs: Vec<&String> = figure_files.iter().filter(|f| f.contains(&slug)).collect();
            if !figs.is_empty() {
                o += "\nFigures: ";
                o += &figs
                    .iter()
                    .map(|f| format!("[{f}]({f})"))
                    .collect::<Vec<_>>()
                    .join(" · ");
                o += "\n";
            }
            o += "\n";
        }
        o
    }
}
