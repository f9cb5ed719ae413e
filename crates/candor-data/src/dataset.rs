//! From answered questions to a labelled training set: grade, compute the confidence signals
//! (answer log-prob, DeepConf, SAR), label with the configured teacher, apply the distillation
//! filter, format targets, and summarise (accuracy per group/sub-task, label histogram, filter
//! counts, AUROC of each signal against correctness).

use crate::answering::{Answered, Sample};
use crate::calibratedmath::Grade;
use crate::config::{DataConfig, LabelsConfig, MapKind, Recalibrate, SarVariant, Teacher};
use crate::teacher::{self, MonotoneMap, Verdict};
use anyhow::{Context, Result};
use candor_confidence::deepconf::{self, DeepConf};
use candor_confidence::similarity::{sar_scores, Recorder, SarSample, Similarity};
use candor_model::Tokenizer;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Per-example difficulty/confidence signals, for curriculum ordering, loss weighting and
/// baselines. Uncertainty scores (SAR) are higher = less sure; the others higher = more sure.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Signals {
    /// Sum of the greedy answer's token log-probs.
    pub answer_logprob: f64,
    /// Mean token log-prob (length-normalised).
    pub answer_logprob_mean: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deepconf: Option<DeepConf>,
    /// Share of the K samples graded correct.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_sar: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sentence_sar: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sar: Option<f64>,
    /// The starting model's cross-fitted probe probability (teacher `probe`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<f64>,
    /// The trained models' averaged expected confidence (teacher `models`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<f64>,
}

/// One labelled question. `dataset.jsonl` holds the kept ones; `labels.jsonl` all of them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Example {
    pub id: String,
    pub source: String,
    pub group: String,
    pub task: String,
    pub subtask: String,
    pub question: String,
    /// The rendered prompt (chat template or `Q: …\nA:`).
    pub prompt: String,
    /// What the model is trained to write after the prompt.
    pub target: String,
    /// The model's greedy answer.
    pub answer: String,
    /// Its tokens exactly as generated (the answer only, no stop token): what training puts
    /// after the prompt under `train.loss_on = "confidence"`, so training matches inference.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub answer_tokens: Vec<u32>,
    /// The answering model's top-k `(token, log-prob)` at each answer token: the starting
    /// model's distribution that `train.answer_kl` keeps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub answer_top: Vec<Vec<(u32, f32)>>,
    pub gold: String,
    pub grade: Grade,
    pub correct: bool,
    /// Teacher confidence, percent.
    pub confidence: f64,
    pub teacher: String,
    pub verdict: Verdict,
    /// Used to fit the SAR map; not a training example.
    pub heldout: bool,
    /// Dropped because the answer is longer than `max_answer_words`.
    pub too_long: bool,
    /// Dropped because its sub-task's accuracy is below `labels.min_subtask_accuracy`.
    #[serde(default)]
    pub below_floor: bool,
    pub signals: Signals,
}

impl Example {
    pub fn kept(&self) -> bool {
        !self.heldout
            && !self.too_long
            && !self.below_floor
            && matches!(self.verdict, Verdict::KeptCorrect | Verdict::KeptWrong)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    pub n: usize,
    pub correct: usize,
}

impl Tally {
    fn add(&mut self, ok: bool) {
        self.n += 1;
        self.correct += ok as usize;
    }
    pub fn accuracy(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.correct as f64 / self.n as f64
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub set: String,
    pub teacher: String,
    pub questions: usize,
    pub overall: Tally,
    pub unparseable: usize,
    pub by_group: BTreeMap<String, Tally>,
    pub by_subtask: BTreeMap<String, Tally>,
    /// Teacher labels of the non-held-out questions in ten 10-point bins ([0,10) … [90,100]).
    pub label_histogram: [usize; 10],
    /// The same for the kept training examples.
    pub kept_histogram: [usize; 10],
    pub kept_correct: usize,
    pub kept_wrong: usize,
    pub dropped_unsure_correct: usize,
    pub dropped_confident_wrong: usize,
    pub dropped_too_long: usize,
    /// Questions of sub-tasks below `labels.min_subtask_accuracy`.
    #[serde(default)]
    pub dropped_below_floor: usize,
    pub heldout: usize,
    /// AUROC of each signal (oriented so that higher = more confident) against correctness,
    /// over all questions; `None` when one class is absent.
    pub auroc: BTreeMap<String, Option<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub map: Option<MonotoneMap>,
    /// `labels.recalibrate` (`logistic` or `mean`): the fitted correction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recalibration: Option<teacher::Recalibration>,
}

fn hist(values: impl Iterator<Item = f64>) -> [usize; 10] {
    let mut h = [0; 10];
    for v in values {
        h[((v / 10.0).floor().max(0.0) as usize).min(9)] += 1;
    }
    h
}

/// FNV-1a: a stable 64-bit hash (std's hasher may change between Rust releases, and these
/// hashes are stored in files).
fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// Deterministic held-out split by id (FNV-1a), independent of order and of other questions.
fn is_heldout(id: &str, share: f64) -> bool {
    (fnv1a(id.bytes()) % 10_000) as f64 / 10_000.0 < share
}

/// SAR's scores of one question, as `data/sar.jsonl` keeps them so that relabelling the same
/// answers (another teacher, other thresholds, a training run that starts from copied answers)
/// does not embed every text again: on SmolLM2's 2,180 Add-subtract answers with K = 5 the
/// MiniLM pass takes 11 minutes on 2 cores, the rest of labelling under a second.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CachedSar {
    pub id: String,
    /// FNV-1a of everything the scores are computed from (the question, and each answer's
    /// text, tokens and log-probs): a row is used only for the very same answers.
    pub inputs: u64,
    pub sar: Option<f64>,
    pub token_sar: Option<f64>,
    pub sentence_sar: Option<f64>,
}

/// The fingerprint [`CachedSar::inputs`] of one answered question.
pub fn sar_inputs(a: &Answered) -> u64 {
    let mut bytes = a.item.question.as_bytes().to_vec();
    for s in std::iter::once(&a.greedy).chain(&a.samples) {
        bytes.push(1);
        bytes.extend(s.text.as_bytes());
        bytes.push(1);
        bytes.extend(s.tokens.iter().flat_map(|t| t.to_le_bytes()));
        bytes.extend(s.logprobs.iter().flat_map(|l| l.to_le_bytes()));
    }
    fnv1a(bytes)
}

/// Where labelling gets SAR's scores.
pub enum SarSource<'a> {
    /// No SAR (no similarity model, or fewer than 2 samples).
    None,
    /// Computed with this similarity.
    Compute(&'a mut dyn Similarity),
    /// Read from an earlier labelling under the same similarity and `sar_t`, by question id;
    /// a question whose answers changed (or that has no row) is an error, so check with
    /// [`sar_cache_covers`] first.
    Cached(&'a BTreeMap<String, CachedSar>),
}

/// Whether `cache` holds the scores of every answered question, for exactly these answers.
pub fn sar_cache_covers(cache: &BTreeMap<String, CachedSar>, answers: &[Answered]) -> bool {
    answers.iter().all(|a| {
        a.samples.len() < 2
            || cache
                .get(&a.item.id)
                .is_some_and(|c| c.inputs == sar_inputs(a))
    })
}

/// The cache rows of a labelling's examples (those whose SAR was computed).
pub fn sar_cache_rows(answers: &[Answered], ex: &[Example]) -> Vec<CachedSar> {
    let by_id: BTreeMap<&str, &Example> = ex.iter().map(|e| (e.id.as_str(), e)).collect();
    answers
        .iter()
        .filter_map(|a| {
            let e = by_id.get(a.item.id.as_str())?;
            e.signals.sar?;
            Some(CachedSar {
                id: a.item.id.clone(),
                inputs: sar_inputs(a),
                sar: e.signals.sar,
                token_sar: e.signals.token_sar,
                sentence_sar: e.signals.sentence_sar,
            })
        })
        .collect()
}

fn sar_sample(tok: &Tokenizer, s: &Sample) -> Result<SarSample> {
    let n = s.answer_len();
    sar_sample_from(tok, &s.text, &s.tokens[..n], &s.logprobs[..n])
}

/// What SAR needs of one answer: its text, the text with each token left out in turn, and
/// its token log-probs (`toks` and `logprobs` are the answer's tokens only).
pub fn sar_sample_from(
    tok: &Tokenizer,
    text: &str,
    toks: &[u32],
    logprobs: &[f32],
) -> Result<SarSample> {
    let without = (0..toks.len())
        .map(|i| {
            let rest: Vec<u32> = toks
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, &t)| t)
                .collect();
            tok.decode(&rest, true).map(|t| t.trim().to_string())
        })
        .collect::<Result<_>>()?;
    Ok(SarSample {
        text: text.to_string(),
        without,
        logprobs: logprobs.iter().map(|&l| l as f64).collect(),
    })
}

/// SAR, sentenceSAR and the greedy answer's tokenSAR of one question (when it has ≥ 2
/// samples), into `signals`.
fn sar_signals(
    sim: &mut dyn Similarity,
    tok: &Tokenizer,
    a: &Answered,
    t: f64,
    signals: &mut Signals,
) -> Result<()> {
    if a.samples.len() < 2 {
        return Ok(());
    }
    let samples: Vec<SarSample> = a
        .samples
        .iter()
        .map(|s| sar_sample(tok, s))
        .collect::<Result<_>>()?;
    let sc = sar_scores(sim, &a.item.question, &samples, t)
        .with_context(|| format!("SAR of question {}", a.item.id))?;
    let greedy = sar_sample(tok, &a.greedy)?;
    let r = candor_confidence::similarity::token_relevance(sim, &a.item.question, &greedy)?;
    signals.token_sar = Some(candor_confidence::sar::token_sar(&greedy.logprobs, &r));
    signals.sentence_sar = Some(sc.sentence_sar);
    signals.sar = Some(sc.sar);
    Ok(())
}

/// The alias the answer matched best (what a kept-correct target shows), else the first gold.
fn gold_for_target(a: &Answered) -> String {
    use crate::item::Gold;
    match &a.item.gold {
        Gold::Qa(q) if q.answer_key.is_none() => q
            .answers
            .iter()
            .max_by(|x, y| {
                let sx = candor_confidence::similarity::rouge_l(&a.greedy.text, x);
                let sy = candor_confidence::similarity::rouge_l(&a.greedy.text, y);
                sx.total_cmp(&sy)
            })
            .cloned()
            .unwrap_or_else(|| a.item.gold_answer()),
        _ => a.item.gold_answer(),
    }
}

/// Label every answered question. `sim` is needed for the SAR teacher (and computes SAR
/// signals whenever given and K ≥ 2).
pub fn label(
    answers: &[Answered],
    data: &DataConfig,
    labels: &LabelsConfig,
    tok: &Tokenizer,
    sim: Option<&mut dyn Similarity>,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<(Vec<Example>, Summary)> {
    let sar = match sim {
        Some(s) => SarSource::Compute(s),
        None => SarSource::None,
    };
    label_with(answers, data, labels, tok, sar, None, on_progress)
}

/// [`label`], with SAR's scores computed or read from a cache ([`SarSource`]), and `read`:
/// one probability per answer from a teacher that reads a model (`probe`, `models`), which
/// the pipeline computes.
pub fn label_with(
    answers: &[Answered],
    data: &DataConfig,
    labels: &LabelsConfig,
    tok: &Tokenizer,
    mut sar: SarSource<'_>,
    read: Option<&[f64]>,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<(Vec<Example>, Summary)> {
    labels.validate()?;
    if let Some(p) = read {
        anyhow::ensure!(
            p.len() == answers.len(),
            "{} probabilities from teacher \"{}\" for {} answers",
            p.len(),
            labels.teacher.name(),
            answers.len()
        );
    }
    let read_by = |t: Teacher, i: usize| read.filter(|_| labels.teacher == t).map(|p| p[i]);
    let how = data.matcher();
    if let SarSource::Compute(sim) = &mut sar {
        // learn every text SAR will compare, so that the model embeds them in a few batches
        let mut rec = Recorder::default();
        for a in answers {
            sar_signals(&mut rec, tok, a, labels.sar_t, &mut Signals::default())?;
        }
        let t0 = std::time::Instant::now();
        sim.prefetch(&rec.texts)?;
        if !rec.texts.is_empty() {
            let distinct: std::collections::HashSet<&String> = rec.texts.iter().collect();
            eprintln!(
                "similarity ({}): the {} texts SAR compares ({} distinct) prepared in {:.1} s",
                sim.name(),
                rec.texts.len(),
                distinct.len(),
                t0.elapsed().as_secs_f64()
            );
        }
        // labelling proper starts now (a progress bar's rate must not include the embedding)
        on_progress(0, answers.len());
    }
    let mut ex: Vec<Example> = Vec::with_capacity(answers.len());
    for (i, a) in answers.iter().enumerate() {
        let grade = a.item.grade(&a.greedy.text, how);
        let n = a.greedy.answer_len();
        let sample_ok: Vec<bool> = a
            .samples
            .iter()
            .map(|s| a.item.grade(&s.text, how) == Grade::Correct)
            .collect();
        let mut signals = Signals {
            answer_logprob: a.greedy.answer_logprob(),
            answer_logprob_mean: a.greedy.answer_logprob_mean(),
            deepconf: {
                let tops: Vec<Vec<f32>> = a.greedy.top[..n]
                    .iter()
                    .map(|t| t.iter().map(|p| p.1).collect())
                    .collect();
                deepconf::from_top_logprobs(&tops, labels.deepconf_window)
            },
            sample_accuracy: teacher::empirical_question(&sample_ok).map(|p| p / 100.0),
            probe: read_by(Teacher::Probe, i),
            models: read_by(Teacher::Models, i),
            ..Default::default()
        };
        match &mut sar {
            SarSource::None => {}
            SarSource::Compute(sim) => sar_signals(*sim, tok, a, labels.sar_t, &mut signals)?,
            SarSource::Cached(cache) if a.samples.len() >= 2 => {
                let c = cache
                    .get(&a.item.id)
                    .filter(|c| c.inputs == sar_inputs(a))
                    .with_context(|| {
                        format!(
                            "the SAR cache has no scores for these answers of question {}",
                            a.item.id
                        )
                    })?;
                signals.sar = c.sar;
                signals.token_sar = c.token_sar;
                signals.sentence_sar = c.sentence_sar;
            }
            SarSource::Cached(_) => {}
        }
        let correct = grade == Grade::Correct;
        let words = a.greedy.text.split_whitespace().count();
        ex.push(Example {
            id: a.item.id.clone(),
            source: a.item.source.clone(),
            group: a.item.group.clone(),
            task: a.item.task.clone(),
            subtask: a.item.subtask.clone(),
            question: a.item.question.clone(),
            prompt: a.prompt.clone(),
            target: String::new(),
            answer: a.greedy.text.clone(),
            answer_tokens: a.greedy.tokens[..n].to_vec(),
            answer_top: a.greedy.top[..n].to_vec(),
            gold: gold_for_target(a),
            grade,
            correct,
            confidence: 0.0,
            teacher: String::new(),
            verdict: Verdict::KeptCorrect,
            heldout: labels.fits_map() && is_heldout(&a.item.id, labels.heldout),
            too_long: labels.max_answer_words > 0 && words > labels.max_answer_words,
            below_floor: false,
            signals,
        });
        on_progress(i + 1, answers.len());
    }

    // teacher confidence
    let mut map = None;
    let mut recalibration = None;
    // each sub-task's greedy accuracy (percent): the CalibratedMath label, the per-question
    // label's prior and the accuracy floor
    let subtask_acc =
        teacher::empirical_subtask(ex.iter().map(|e| (e.subtask.as_str(), e.correct)));
    for e in ex.iter_mut() {
        e.below_floor = subtask_acc[&e.subtask] < labels.min_subtask_accuracy;
    }
    match labels.teacher {
        Teacher::EmpiricalSubtask => {
            for e in ex.iter_mut() {
                e.confidence = subtask_acc[&e.subtask];
                e.teacher = "empirical-subtask".into();
            }
        }
        Teacher::Gold => {
            anyhow::bail!("labels.teacher = \"gold\" needs no answers: use dataset::gold_examples")
        }
        Teacher::EmpiricalQuestion => {
            for (e, a) in ex.iter_mut().zip(answers) {
                let share = e.signals.sample_accuracy.unwrap_or(0.0);
                e.confidence = teacher::empirical_question_shrunk(
                    share,
                    a.samples.len(),
                    (e.correct, labels.greedy_weight),
                    subtask_acc[&e.subtask] / 100.0,
                    labels.subtask_prior,
                );
                e.teacher = "empirical-question".into();
            }
            if labels.recalibrate != Recalibrate::None {
                // fitted on the questions the run trains on, as the maps are
                let fit: Vec<&Example> = ex.iter().filter(|e| !e.below_floor).collect();
                let l: Vec<f64> = fit.iter().map(|e| e.confidence).collect();
                let c: Vec<bool> = fit.iter().map(|e| e.correct).collect();
                let r = teacher::Recalibration::fit(labels.recalibrate, &l, &c).context(
                    "labels.recalibrate: the training questions' greedy answers are all right or all wrong, so there is nothing to fit; use \"none\"",
                )?;
                for e in ex.iter_mut() {
                    e.confidence = r.apply(e.confidence);
                }
                recalibration = Some(r);
            }
        }
        t @ (Teacher::Probe | Teacher::Models) => {
            // the probabilities `read` holds, kept in the teacher's own signal above
            for e in ex.iter_mut() {
                let p = match t {
                    Teacher::Probe => e.signals.probe,
                    _ => e.signals.models,
                }
                .with_context(|| {
                    format!(
                        "labels.teacher = \"{}\": no probabilities were given (the pipeline reads the model; `label` alone cannot)",
                        t.name()
                    )
                })?;
                e.confidence = (100.0 * p).round();
                e.teacher = t.name().into();
            }
        }
        Teacher::AnswerLogit if !labels.fits_map() => {
            for e in ex.iter_mut() {
                e.confidence = (100.0 * e.signals.answer_logprob.exp()).round();
                e.teacher = "answer-logit".into();
            }
        }
        Teacher::Sar | Teacher::AnswerLogit => {
            // a score that falls as confidence rises, and the teacher's name
            let score = |e: &Example| match labels.teacher {
                Teacher::Sar => match labels.sar_variant {
                    SarVariant::Sar => e.signals.sar,
                    SarVariant::TokenSar => e.signals.token_sar,
                    SarVariant::SentenceSar => e.signals.sentence_sar,
                }
                .expect("SAR computed"),
                _ => -e.signals.answer_logprob,
            };
            let name = match labels.teacher {
                Teacher::Sar => format!("{:?}", labels.sar_variant).to_lowercase(),
                _ => "answer-logit".to_string(),
            };
            // the map is fitted on the questions the run trains on: a sub-task below the
            // accuracy floor would pull every label towards its accuracy
            let fit: Vec<&Example> = ex.iter().filter(|e| e.heldout && !e.below_floor).collect();
            anyhow::ensure!(
                !fit.is_empty(),
                "labels.heldout = {}: no question of a sub-task above labels.min_subtask_accuracy fell in the held-out slice that fits the {name} map; raise it or add questions",
                labels.heldout
            );
            let s: Vec<f64> = fit.iter().map(|e| score(e)).collect();
            let c: Vec<bool> = fit.iter().map(|e| e.correct).collect();
            let m = match labels.map {
                MapKind::Isotonic => MonotoneMap::isotonic(&s, &c),
                MapKind::Bins => MonotoneMap::bins(&s, &c, labels.map_bins),
                MapKind::None => anyhow::bail!(
                    "labels.map = \"none\" needs a probability (teacher \"answer-logit\")"
                ),
            };
            for e in ex.iter_mut() {
                e.confidence = (100.0 * m.apply(score(e))).round();
                e.teacher = name.clone();
            }
            map = Some(m);
        }
    }
    for e in ex.iter_mut() {
        e.verdict = teacher::distill(e.correct, e.confidence, labels.tau_hi, labels.tau_lo);
        let answer = if e.correct { &e.gold } else { &e.answer };
        e.target = teacher::target(answer, e.confidence, labels.format);
    }

    // summary
    let mut s = Summary {
        set: data.display_name(),
        teacher: ex.first().map(|e| e.teacher.clone()).unwrap_or_default(),
        questions: ex.len(),
        map,
        recalibration,
        ..Default::default()
    };
    for e in &ex {
        s.overall.add(e.correct);
        s.unparseable += (e.grade == Grade::Unparseable) as usize;
        s.by_group
            .entry(e.group.clone())
            .or_default()
            .add(e.correct);
        s.by_subtask
            .entry(e.subtask.clone())
            .or_default()
            .add(e.correct);
        // each question counted once: below the floor first (neither trained on nor fitting
        // the map), then the map's held-out slice
        if e.below_floor {
            s.dropped_below_floor += 1;
            continue;
        }
        if e.heldout {
            s.heldout += 1;
            continue;
        }
        if e.too_long {
            s.dropped_too_long += 1;
            continue;
        }
        match e.verdict {
            Verdict::KeptCorrect => s.kept_correct += 1,
            Verdict::KeptWrong => s.kept_wrong += 1,
            Verdict::DroppedUnsureCorrect => s.dropped_unsure_correct += 1,
            Verdict::DroppedConfidentWrong => s.dropped_confident_wrong += 1,
        }
    }
    s.label_histogram = hist(ex.iter().filter(|e| !e.heldout).map(|e| e.confidence));
    s.kept_histogram = hist(ex.iter().filter(|e| e.kept()).map(|e| e.confidence));
    let correct: Vec<bool> = ex.iter().map(|e| e.correct).collect();
    let mut signal = |name: &str, f: &dyn Fn(&Example) -> Option<f64>| {
        let v: Vec<Option<f64>> = ex.iter().map(f).collect();
        if v.iter().all(|x| x.is_some()) {
            let v: Vec<f64> = v.into_iter().map(|x| x.unwrap()).collect();
            s.auroc
                .insert(name.into(), candor_eval::metrics::auroc(&v, &correct));
        }
    };
    signal("teacher", &|e| Some(e.confidence));
    signal("answer_logprob", &|e| Some(e.signals.answer_logprob));
    signal("answer_logprob_mean", &|e| {
        Some(e.signals.answer_logprob_mean)
    });
    signal("deepconf_mean", &|e| e.signals.deepconf.map(|d| d.mean));
    signal("deepconf_lowest_group", &|e| {
        e.signals.deepconf.map(|d| d.lowest_group)
    });
    signal("sample_accuracy", &|e| e.signals.sample_accuracy);
    signal("probe (cross-fitted)", &|e| e.signals.probe);
    signal("models (ensemble)", &|e| e.signals.models);
    signal("sar (negated)", &|e| e.signals.sar.map(|x| -x));
    signal("token_sar (negated)", &|e| e.signals.token_sar.map(|x| -x));
    signal("sentence_sar (negated)", &|e| {
        e.signals.sentence_sar.map(|x| -x)
    });
    Ok((ex, s))
}

impl Summary {
    /// The human-readable summary the dataset command prints.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let pct = |t: &Tally| format!("{:5.1}% ({}/{})", 100.0 * t.accuracy(), t.correct, t.n);
        o += &format!(
            "set {}: {} questions, teacher {}\n",
            self.set, self.questions, self.teacher
        );
        if self.teacher == "gold" {
            // no answering run: the reference answers are the targets; there is no accuracy to
            // report and nothing to label, filter or rank
            o += "labels: none (teacher gold trains on the reference answers)\n";
            return o;
        }
        o += &format!(
            "accuracy {}; unparseable answers {}\n",
            pct(&self.overall),
            self.unparseable
        );
        if self.by_group.len() > 1 {
            for (g, t) in &self.by_group {
                o += &format!("  {g:<20} {}\n", pct(t));
            }
        }
        if self.by_subtask.len() > 1 && self.by_subtask.len() != self.by_group.len() {
            o += "accuracy per sub-task:\n";
            let mut line = String::new();
            for (i, (st, t)) in self.by_subtask.iter().enumerate() {
                line += &format!("  {st:<12} {:5.1}%", 100.0 * t.accuracy());
                if i % 5 == 4 {
                    o += &line;
                    o += "\n";
                    line.clear();
                }
            }
            if !line.is_empty() {
                o += &line;
                o += "\n";
            }
        }
        let h = |h: &[usize; 10]| {
            h.iter()
                .enumerate()
                .map(|(i, c)| format!("{}-{}:{c}", i * 10, if i == 9 { 100 } else { i * 10 + 9 }))
                .collect::<Vec<_>>()
                .join(" ")
        };
        o += &format!("teacher labels   {}\n", h(&self.label_histogram));
        o += &format!("kept labels      {}\n", h(&self.kept_histogram));
        o += &format!(
            "filter: kept {} correct + {} wrong; dropped {} unsure-correct, {} confident-wrong, {} too long, {} below the sub-task accuracy floor; {} held out for the map\n",
            self.kept_correct,
            self.kept_wrong,
            self.dropped_unsure_correct,
            self.dropped_confident_wrong,
            self.dropped_too_long,
            self.dropped_below_floor,
            self.heldout
        );
        o += "AUROC vs correctness:";
        for (k, v) in &self.auroc {
            match v {
                Some(v) => o += &format!(" {k} {v:.3};"),
                None => o += &format!(" {k} undefined (one class);"),
            }
        }
        o += "\n";
        if let Some(r) = &self.recalibration {
            o += &format!("{r}\n");
        }
        if let Some(m) = &self.map {
            o += &format!(
                "SAR → confidence map ({}, fitted on {} held-out answers):",
                m.kind, m.fitted_on
            );
            let step = (m.points.len() / 8).max(1);
            for (i, (x, y)) in m.points.iter().enumerate() {
                if i % step == 0 || i + 1 == m.points.len() {
                    o += &format!(" {x:.2}→{:.0}%", 100.0 * y);
                }
            }
            o += "\n";
        }
        o
    }
}

/// Teacher `gold`: one example per question whose target is the gold answer alone.
pub fn gold_examples(
    items: &[crate::Item],
    tok: &Tokenizer,
    style: crate::config::Style,
) -> Result<Vec<Example>> {
    let style = crate::answering::prompt_style(style);
    items
        .iter()
        .map(|it| {
            let gold = it.gold_answer();
            Ok(Example {
                id: it.id.clone(),
                source: it.source.clone(),
                group: it.group.clone(),
                task: it.task.clone(),
                subtask: it.subtask.clone(),
                question: it.question.clone(),
                prompt: tok.prompt(&it.question, style)?,
                target: gold.clone(),
                answer: gold.clone(),
                answer_tokens: vec![],
                answer_top: vec![],
                gold,
                grade: Grade::Correct,
                correct: true,
                confidence: 100.0,
                teacher: "gold".into(),
                verdict: Verdict::KeptCorrect,
                heldout: false,
                too_long: false,
                below_floor: false,
                signals: Signals::default(),
            })
        })
        .collect()
}

/// Write `labels.jsonl` (all), `dataset.jsonl` (kept), `summary.json` and, for SAR,
/// `confidence_map.json`, each atomically.
pub fn write(dir: &Path, ex: &[Example], s: &Summary) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let lines = |keep: &dyn Fn(&Example) -> bool| -> Result<String> {
        let mut o = String::new();
        for e in ex.iter().filter(|e| keep(e)) {
            o += &serde_json::to_string(e)?;
            o.push('\n');
        }
        Ok(o)
    };
    use candor_model::checkpoint::write_atomic;
    write_atomic(&dir.join("labels.jsonl"), lines(&|_| true)?.as_bytes())?;
    write_atomic(&dir.join("dataset.jsonl"), lines(&|e| e.kept())?.as_bytes())?;
    write_atomic(
        &dir.join("summary.json"),
        serde_json::to_string_pretty(s)?.as_bytes(),
    )?;
    if let Some(m) = &s.map {
        write_atomic(
            &dir.join("confidence_map.json"),
            serde_json::to_string_pretty(m)?.as_bytes(),
        )?;
    }
    Ok(())
}

/// Read a `dataset.jsonl` / `labels.jsonl`.
pub fn read(path: &Path) -> Result<Vec<Example>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{}: line {}", path.display(), i + 1))
        })
        .collect()
}
