//! The recipe sections this crate owns: `[data]` (which questions, how they are prompted and
//! graded; also each `[[eval.sets]]` entry) and `[labels]` (how answers are sampled and turned
//! into confidence labels). Every field has a default; unknown keys, wrong types and
//! out-of-range values are deserialisation errors, which the TOML parser reports with the line.
//! The reference for users is `recipes/README.md`.

use crate::calibratedmath::Group;
use serde::{de::Error as _, Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Range-checked numbers, so that an out-of-range value is an error at its line.
pub mod bounded {
    use super::*;
    fn check<'de, D: Deserializer<'de>>(
        d: D,
        lo: f64,
        hi: f64,
        what: &str,
    ) -> Result<f64, D::Error> {
        let v = f64::deserialize(d)?;
        if !(lo..=hi).contains(&v) || v.is_nan() {
            return Err(D::Error::custom(format!(
                "{v} is out of range (allowed: {what})"
            )));
        }
        Ok(v)
    }
    /// A number in [0, 1].
    pub fn fraction<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        check(d, 0.0, 1.0, "0 to 1")
    }
    /// A percentage in [0, 100].
    pub fn percent<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        check(d, 0.0, 100.0, "0 to 100")
    }
    /// A number > 0.
    pub fn positive<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        let v = f64::deserialize(d)?;
        if v.is_nan() || v <= 0.0 {
            return Err(D::Error::custom(format!(
                "{v} is out of range (allowed: > 0)"
            )));
        }
        Ok(v)
    }
    /// A number ≥ 0.
    pub fn non_negative<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        check(d, 0.0, f64::INFINITY, ">= 0")
    }
    /// An integer ≥ 1.
    pub fn at_least_one<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        let v = usize::deserialize(d)?;
        if v == 0 {
            return Err(D::Error::custom("0 is out of range (allowed: 1 or more)"));
        }
        Ok(v)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Generated arithmetic questions (`groups`, `tasks`, `subtasks`, `per_subtask`).
    Calibratedmath,
    /// A JSONL file of open or multiple-choice questions (`path`, `limit`, `offset`).
    Jsonl,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Style {
    /// The model's chat template (instruct models).
    Chat,
    /// `Q: …\nA:` (base models).
    Plain,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Grading {
    /// Normalised answer equals a normalised alias.
    Exact,
    /// A normalised alias appears as whole words in the answer.
    Contains,
    /// ROUGE-L F1 against the best alias ≥ `rouge_threshold`.
    RougeL,
}

/// `[data]`: which questions, and how they are prompted and graded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// A name for reports (eval sets); defaults to the group/file name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub source: Source,
    /// JSONL file (source = "jsonl"); relative paths are relative to the working directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// CalibratedMath groups (empty = all): "Add-subtract", "Multiply-divide", "Multi-answer".
    pub groups: Vec<Group>,
    /// CalibratedMath tasks by name ("Addition") or op ("+"); empty = all in the groups.
    pub tasks: Vec<String>,
    /// CalibratedMath sub-task ids ("+:1:4,"); empty = all in the tasks.
    pub subtasks: Vec<String>,
    /// CalibratedMath questions per sub-task.
    #[serde(deserialize_with = "bounded::at_least_one")]
    pub per_subtask: usize,
    /// Questions for particular sub-tasks instead of `per_subtask`, by id:
    /// `{ "+:1:1" = 3000 }`. A sub-task named here must be in the selection.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub per_subtask_overrides: BTreeMap<String, usize>,
    /// JSONL: skip the first `offset` questions, then keep `limit` (0 = all).
    pub offset: usize,
    pub limit: usize,
    /// Seed of the CalibratedMath generator.
    pub seed: u64,
    pub style: Style,
    /// How the question is put to the model; `{question}` is replaced by the question.
    /// E.g. "{question} Answer with the number only."
    pub template: String,
    pub grading: Grading,
    #[serde(deserialize_with = "bounded::fraction")]
    pub rouge_threshold: f64,
    /// Training examples longer than this many tokens (prompt + target) are dropped.
    #[serde(deserialize_with = "bounded::at_least_one")]
    pub max_length: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            name: None,
            source: Source::Calibratedmath,
            path: None,
            groups: vec![],
            tasks: vec![],
            subtasks: vec![],
            per_subtask: 20,
            per_subtask_overrides: BTreeMap::new(),
            offset: 0,
            limit: 0,
            seed: 0,
            style: Style::Chat,
            template: "{question}".into(),
            grading: Grading::Exact,
            rouge_threshold: 0.5,
            max_length: 256,
        }
    }
}

impl DataConfig {
    pub fn matcher(&self) -> crate::qa::Match {
        match self.grading {
            Grading::Exact => crate::qa::Match::Exact,
            Grading::Contains => crate::qa::Match::Contains,
            Grading::RougeL => crate::qa::Match::RougeL {
                threshold: self.rouge_threshold,
            },
        }
    }

    /// The set's display name: `name`, else the groups, else the file stem.
    pub fn display_name(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        match self.source {
            Source::Calibratedmath if !self.groups.is_empty() => self
                .groups
                .iter()
                .map(|g| g.name())
                .collect::<Vec<_>>()
                .join("+"),
            Source::Calibratedmath => "CalibratedMath".into(),
            Source::Jsonl => self
                .path
                .as_ref()
                .and_then(|p| p.file_stem())
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "jsonl".into()),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Teacher {
    /// CalibratedMath (Lin et al.): floor(100·accuracy) of the question's sub-task.
    EmpiricalSubtask,
    /// Fraction of the K samples that are correct, ×100.
    EmpiricalQuestion,
    /// SAR over the K samples, mapped to a probability on a held-out slice (UaIT).
    Sar,
    /// The model's own probability for its greedy answer (the log-probability summed over the
    /// answer's tokens: the `answer_logit` readout), mapped to a probability on a held-out
    /// slice like SAR's (`map`, `heldout`). Needs no samples; per-question labels that rank
    /// as the starting model's answer logit does.
    AnswerLogit,
    /// A linear probe of the starting model (logistic regression on its final hidden state
    /// after its greedy answer, the `probe` readout, or where `probe_at` and `probe_layer`
    /// say) fitted on the greedy grades of the questions the run trains on, cross-fitted in 5
    /// folds so that no question's label comes from a probe that saw its grade (a question
    /// drawn twice has both copies in one fold). What the model knows about its answer, as the
    /// number it should learn to say. Needs no samples.
    Probe,
    /// An output ensemble of trained models (`models`, each a `final/` export of an earlier
    /// run): the mean over them of the expected confidence Σ q(v)·v, teacher-forced after the
    /// starting model's greedy answer and `\nConfidence: ` (knowledge distillation from the
    /// ensemble into one model). Needs no samples.
    Models,
    /// No answering run, no confidence: targets are the gold answers (pre-training a model
    /// such as checkpoints/tiny-arith to answer).
    Gold,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SimilarityKind {
    /// all-MiniLM-L6-v2 cosine (`minilm_path`, fetched by scripts/fetch-minilm.sh).
    Minilm,
    /// ROUGE-L F1; no model needed.
    RougeL,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SarVariant {
    Sar,
    TokenSar,
    SentenceSar,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MapKind {
    /// Isotonic regression (pool-adjacent-violators), linear between fitted points.
    Isotonic,
    /// `map_bins` equal-count bins of the score → accuracy of the bin.
    Bins,
    /// No map: the score is already a probability (`answer-logit`: the probability the model
    /// gave its own answer, exp of the summed log-prob). No questions are held out.
    None,
}

/// A fitted correction of `empirical-question` labels toward the greedy answer's accuracy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Recalibrate {
    /// The labels as the teacher gives them.
    None,
    /// Platt scaling: P(greedy right) = σ(a·logit(label) + b), (a, b) fitted by logistic
    /// regression on the training questions' greedy grades. Two parameters: the labels keep
    /// their order (and AUROC); their level moves to the greedy answers' accuracy.
    Logistic,
    /// Calibration in the large: the same with a = 1, so every label's log-odds moves by the
    /// one b that makes the mean label the greedy accuracy; the spread stays the teacher's (a
    /// student that ranks less sharply than its teacher is not pushed further apart).
    Mean,
}

impl Teacher {
    /// The name a recipe writes.
    pub fn name(self) -> &'static str {
        match self {
            Self::EmpiricalSubtask => "empirical-subtask",
            Self::EmpiricalQuestion => "empirical-question",
            Self::Sar => "sar",
            Self::AnswerLogit => "answer-logit",
            Self::Probe => "probe",
            Self::Models => "models",
            Self::Gold => "gold",
        }
    }
}

impl Recalibrate {
    /// The name a recipe writes.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Logistic => "logistic",
            Self::Mean => "mean",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfidenceFormat {
    /// `Confidence: 61%`
    Percent,
    /// `Confidence: medium` (lowest/low/medium/high/highest = 0.2-wide bins)
    Words,
}

/// `[labels]`: answering (greedy + K samples) and the teacher that labels each answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LabelsConfig {
    pub teacher: Teacher,
    /// Sampled answers per question besides the greedy one (K). SAR needs ≥ 2.
    pub samples: usize,
    #[serde(deserialize_with = "bounded::positive")]
    pub temperature: f64,
    #[serde(deserialize_with = "bounded::fraction")]
    pub top_p: f64,
    pub seed: u64,
    #[serde(deserialize_with = "bounded::at_least_one")]
    pub max_new_tokens: usize,
    /// Questions per generation batch.
    #[serde(deserialize_with = "bounded::at_least_one")]
    pub batch_size: usize,
    /// Top log-probs kept per generated token (DeepConf reads them).
    #[serde(deserialize_with = "bounded::at_least_one")]
    pub top_logprobs: usize,
    pub similarity: SimilarityKind,
    pub minilm_path: PathBuf,
    pub sar_variant: SarVariant,
    /// SAR's temperature t.
    #[serde(deserialize_with = "bounded::positive")]
    pub sar_t: f64,
    pub map: MapKind,
    #[serde(deserialize_with = "bounded::at_least_one")]
    pub map_bins: usize,
    /// Share of questions held out to fit the score → confidence map of the `sar` and
    /// `answer-logit` teachers (not used for training).
    #[serde(deserialize_with = "bounded::fraction")]
    pub heldout: f64,
    /// Distillation: keep correct answers with confidence ≥ tau_hi (percent).
    #[serde(deserialize_with = "bounded::percent")]
    pub tau_hi: f64,
    /// Distillation: keep wrong answers with confidence ≤ tau_lo (percent).
    #[serde(deserialize_with = "bounded::percent")]
    pub tau_lo: f64,
    pub format: ConfidenceFormat,
    /// DeepConf window (tokens) for lowest-group and tail confidence.
    #[serde(deserialize_with = "bounded::at_least_one")]
    pub deepconf_window: usize,
    /// Skip answers longer than this many words (UaIT uses 6; 0 = no limit).
    pub max_answer_words: usize,
    /// Leave out of training the questions of sub-tasks whose greedy accuracy (percent) is
    /// below this (Lin et al. leave out sub-tasks the model never gets right); 0 = keep all.
    #[serde(deserialize_with = "bounded::percent")]
    pub min_subtask_accuracy: f64,
    /// `empirical-question` only: shrink each question's share of right samples toward its
    /// sub-task's greedy accuracy with this many pseudo-samples (a Beta prior whose mean is the
    /// sub-task accuracy; empirical Bayes). 0 = the plain share.
    #[serde(deserialize_with = "bounded::non_negative")]
    pub subtask_prior: f64,
    /// `empirical-question` only: the greedy answer's own grade counts as this many of the K
    /// samples in the question's share (the share then estimates the chance that the answer
    /// the model gives, the greedy one, is right). 0 = the samples alone.
    #[serde(deserialize_with = "bounded::non_negative")]
    pub greedy_weight: f64,
    /// `empirical-question` only: map the labels to the greedy answers' accuracy (the K
    /// samples are drawn at a temperature, so their share right runs below the greedy
    /// answer's chance of being right).
    pub recalibrate: Recalibrate,
    /// `models` only: the trained models whose averaged expected confidence is the label
    /// (folders holding an HF export, such as `runs/<name>/final`).
    pub models: Vec<PathBuf>,
    /// `probe` only: where the probe reads the starting model: after the greedy answer's last
    /// token (`answer`, the `probe` readout's place) or after the confidence line's start
    /// (`confidence`: the position whose next token is the value the model will write).
    pub probe_at: ProbeAt,
    /// `probe` only: the layer whose output it reads (HF's `hidden_states[probe_layer]`: the
    /// residual stream after that many decoder layers; at the layer count, before the final
    /// norm); 0 = the final hidden state after the last norm (the `probe` readout's).
    pub probe_layer: usize,
    /// `probe` only: also give the probe the greedy answer's log-probability, summed over its
    /// tokens and per token (two features beside the hidden state), the signal the
    /// `answer_logit` readout ranks by.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub probe_logprob: bool,
}

/// Where the `probe` teacher reads the starting model's hidden state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProbeAt {
    /// The greedy answer's last token.
    Answer,
    /// The end of `\nConfidence: ` after the answer: where the value token is predicted.
    Confidence,
}

impl Default for LabelsConfig {
    fn default() -> Self {
        Self {
            teacher: Teacher::EmpiricalSubtask,
            samples: 0,
            temperature: 0.5,
            top_p: 1.0,
            seed: 0,
            max_new_tokens: 32,
            batch_size: 16,
            top_logprobs: 20,
            similarity: SimilarityKind::Minilm,
            minilm_path: PathBuf::from("checkpoints/all-minilm-l6-v2"),
            sar_variant: SarVariant::Sar,
            sar_t: 0.001,
            map: MapKind::Isotonic,
            map_bins: 10,
            heldout: 0.2,
            tau_hi: 0.0,
            tau_lo: 100.0,
            format: ConfidenceFormat::Percent,
            deepconf_window: 8,
            max_answer_words: 0,
            min_subtask_accuracy: 0.0,
            subtask_prior: 0.0,
            greedy_weight: 0.0,
            recalibrate: Recalibrate::None,
            models: vec![],
            probe_at: ProbeAt::Answer,
            probe_layer: 0,
            probe_logprob: false,
        }
    }
}

impl LabelsConfig {
    /// Whether labelling compares answers with each other (SAR, or several samples), so needs
    /// the answer similarity (`similarity`). The gold teacher answers nothing.
    pub fn needs_similarity(&self) -> bool {
        self.teacher != Teacher::Gold && (self.teacher == Teacher::Sar || self.samples >= 2)
    }

    /// Whether the teacher's score goes through a fitted map (`map`), so that a share of the
    /// questions (`heldout`) is kept out of training to fit it: SAR always, the answer logit
    /// unless `map = "none"`.
    pub fn fits_map(&self) -> bool {
        matches!(self.teacher, Teacher::Sar | Teacher::AnswerLogit) && self.map != MapKind::None
    }

    /// Checks across fields (single fields are checked while parsing).
    pub fn validate(&self) -> anyhow::Result<()> {
        match self.teacher {
            Teacher::Sar if self.samples < 2 => anyhow::bail!(
                "labels.samples = {}: teacher \"sar\" needs at least 2 samples (UaIT uses 5)",
                self.samples
            ),
            Teacher::Sar if self.map == MapKind::None => anyhow::bail!(
                "labels.map = \"none\": SAR is a score, not a probability; teacher \"sar\" needs map = \"isotonic\" or \"bins\""
            ),
            Teacher::Models if self.models.is_empty() => anyhow::bail!(
                "labels.models is empty: teacher \"models\" needs at least one trained model folder (e.g. models = [\"runs/R0/final\", \"runs/R1/final\"])"
            ),
            _ if !self.models.is_empty() && self.teacher != Teacher::Models => anyhow::bail!(
                "labels.models: applies to teacher \"models\" only (teacher is \"{}\")",
                self.teacher.name()
            ),
            _ if (self.probe_at != ProbeAt::Answer || self.probe_layer > 0 || self.probe_logprob)
                && self.teacher != Teacher::Probe =>
            {
                anyhow::bail!(
                    "labels.probe_at / labels.probe_layer / labels.probe_logprob: apply to teacher \"probe\" only (teacher is \"{}\")",
                    self.teacher.name()
                )
            }
            Teacher::EmpiricalQuestion if self.samples < 1 => anyhow::bail!(
                "labels.samples = 0: teacher \"empirical-question\" needs at least 1 sample"
            ),
            _ if self.recalibrate != Recalibrate::None
                && self.teacher != Teacher::EmpiricalQuestion =>
            {
                anyhow::bail!(
                    "labels.recalibrate = \"{}\": applies to teacher \"empirical-question\" only (allowed: \"none\" for the others; \"sar\" and \"answer-logit\" are mapped by labels.map)",
                    self.recalibrate.name()
                )
            }
            _ if self.subtask_prior > 0.0 && self.teacher != Teacher::EmpiricalQuestion => {
                anyhow::bail!(
                    "labels.subtask_prior = {}: applies to teacher \"empirical-question\" only (it shrinks the per-question share toward the sub-task's accuracy)",
                    self.subtask_prior
                )
            }
            _ if self.greedy_weight > 0.0 && self.teacher != Teacher::EmpiricalQuestion => {
                anyhow::bail!(
                    "labels.greedy_weight = {}: applies to teacher \"empirical-question\" only (it counts the greedy answer's grade among the samples)",
                    self.greedy_weight
                )
            }
            _ if self.greedy_weight.is_nan() || self.greedy_weight > 1e6 => anyhow::bail!(
                "labels.greedy_weight = {} is out of range (allowed: 0 to 1000000 samples)",
                self.greedy_weight
            ),
            _ if self.subtask_prior.is_nan() || self.subtask_prior > 1e6 => anyhow::bail!(
                "labels.subtask_prior = {} is out of range (allowed: 0 to 1000000 pseudo-samples)",
                self.subtask_prior
            ),
            _ => Ok(()),
        }
    }
}
