//! The recipe: one TOML file that drives model → questions → answers → labels → fine-tuning →
//! export → report. Every section and field has a default (see `Recipe::default`); the field
//! reference for users is `recipes/README.md`, and `train --print-recipe` shows a recipe with
//! every default filled in. Unknown keys, wrong types and out-of-range values are errors that
//! name the key, the line and what is allowed.

use anyhow::{bail, Context, Result};
use candor_data::config::bounded;
use candor_data::{DataConfig, LabelsConfig};
use candor_model::DeviceSpec;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Where the run writes everything (answers, dataset, checkpoints, final model, report).
    /// Default: `runs/<recipe file stem>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_dir: Option<PathBuf>,
    pub model: ModelSection,
    #[serde(default)]
    pub data: DataConfig,
    #[serde(default)]
    pub labels: LabelsConfig,
    #[serde(default)]
    pub train: TrainSection,
    #[serde(default)]
    pub optim: OptimSection,
    /// Absent = full fine-tuning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraSection>,
    #[serde(default)]
    pub curriculum: CurriculumSection,
    #[serde(default)]
    pub weighting: WeightingSection,
    #[serde(default)]
    pub checkpoint: CheckpointSection,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub eval: EvalSection,
    #[serde(default)]
    pub export: ExportSection,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    F32,
    Bf16,
}

/// `[model]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// HF folder (config.json, model.safetensors, tokenizer.json). Relative to the working dir.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Initialise from scratch with a preset (`tiny`, `small`, `smollm2-135m`) instead of `path`;
    /// needs `tokenizer`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// Folder with tokenizer.json (and tokenizer_config.json) for a preset, or "byte" for the
    /// built-in byte-level tokenizer (259 tokens).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<PathBuf>,
    /// `cpu`, `wgpu[:N]` or `cuda[:N]`.
    pub device: String,
    /// The precision the model computes in: `f32`, or `bf16` (mixed precision: activations and
    /// matmuls in bf16; weights, gradients, AdamW state, logits and the loss in f32). bf16 is
    /// for GPUs (CUDA, Ampere or newer); the CPU backend runs it too, several times slower than
    /// f32 (recipes/README.md has figures); WGPU cannot.
    pub dtype: Dtype,
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            path: None,
            preset: None,
            tokenizer: None,
            device: "cpu".into(),
            dtype: Dtype::F32,
        }
    }
}

/// Leave a weight out of the serialised recipe (and so out of its hash) while it is off.
fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

/// Leave a setting out of the serialised recipe while it has its default of 1.
fn is_one(x: &f64) -> bool {
    *x == 1.0
}

/// `[train]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    /// Passes over the kept examples (ignored when `max_steps` > 0).
    #[serde(deserialize_with = "bounded::at_least_one")]
    pub epochs: usize,
    /// Optimizer steps; 0 = as many as `epochs` give.
    pub max_steps: usize,
    /// Examples per forward/backward pass.
    #[serde(deserialize_with = "bounded::at_least_one")]
    pub micro_batch: usize,
    /// Examples per optimizer step; must be a multiple of `micro_batch`
    /// (gradient accumulation = global_batch / micro_batch).
    #[serde(deserialize_with = "bounded::at_least_one")]
    pub global_batch: usize,
    /// Seed of shuffling, dropout and LoRA initialisation.
    pub seed: u64,
    /// Which tokens carry the loss in a labelled run: `confidence` (the answer is context, only
    /// the confidence line and the end of turn are trained) or `response` (answer and
    /// confidence, the whole response). Runs with `labels.teacher = "gold"` always train the
    /// response (there is no confidence).
    pub loss_on: LossOn,
    /// The answer put before the confidence under `loss_on = "confidence"`: `own` (what the
    /// model itself wrote, greedy, right or wrong: training matches inference) or
    /// `gold-for-correct` (UaIT: the reference answer for correct examples).
    pub answer: AnswerSource,
    /// The loss at the token that decides the confidence value: `ce` (cross-entropy on the
    /// written label), `brier` (Σ q(v)·(v − target)² over the model's distribution q over the
    /// value set) or `log` (log loss of the expected value Σ q(v)·v against the target).
    pub confidence_loss: ConfidenceLoss,
    /// What `brier` and `log` score against: `teacher` (the teacher's probability) or
    /// `correct` (0/1 correctness of the answer).
    pub confidence_target: ConfidenceTarget,
    /// Weight of the answer-keeping term under `loss_on = "confidence"`: KL from the starting
    /// model's distribution (its top-k log-probs, kept by the answering run) to the model's at
    /// every answer token. 0 = off.
    #[serde(deserialize_with = "bounded::non_negative")]
    pub answer_kl: f64,
    /// What the answer-keeping term (`answer_kl`) pulls each answer token towards:
    /// `distribution` (the starting model's top-k distribution there: a KL) or `greedy` (the
    /// token the starting model wrote, as a cross-entropy target: its greedy answers kept and
    /// their margins widened, so that a small drift cannot flip a near tie).
    pub answer_target: AnswerTarget,
    /// Under `loss_on = "confidence"`: weight of the loss at the token that decides the
    /// confidence value (the scoring rule, or its cross-entropy under `ce`) against the line's
    /// other tokens and the answer-keeping term. The Brier score of a label set skewed towards
    /// 0% is small everywhere (moving all mass from 20% to 0% for a 4% label gains 0.04), so
    /// at weight 1 its gradient is a few percent of one cross-entropy token's and the model
    /// writes one value for every question; 10–30 gives it a say.
    #[serde(deserialize_with = "bounded::positive")]
    pub value_weight: f64,
    /// Under `brier` and `log`: weight of a cross-entropy on the written label's deciding
    /// token, added to the scoring rule there. The scoring rule's gradient towards a value is
    /// proportional to the probability the model already gives it, so once the model has put
    /// nearly all its mass on one value (SmolLM2 picks `2` for 20% early, whatever the label)
    /// no label moves it; this term keeps every label's value within reach. 0 = off.
    #[serde(deserialize_with = "bounded::non_negative")]
    pub value_ce: f64,
    /// 0 = `value_ce` holds for the whole run; f in (0, 1]: it falls linearly from its value at
    /// the first step to `value_ce_floor` (0 by default) at the share f of the steps, and at 0
    /// the scoring rule alone trains the value token after. Cross-entropy fits the labels'
    /// distribution, so greedy decoding writes its mode; the Brier score is lowest with all
    /// mass on the value nearest the mean label, which is what a written confidence should be.
    #[serde(deserialize_with = "bounded::fraction")]
    pub value_ce_decay: f64,
    /// With `value_ce_decay`: the weight `value_ce` falls to and then holds (0 = falls to 0).
    /// The Brier score moves a value's logit in proportion to the probability the model gives
    /// that value, so a value it stopped writing (60% once the mass sits on 30% and 90%) is
    /// never written again; a cross-entropy that stays on keeps every label's value in reach.
    #[serde(
        deserialize_with = "bounded::non_negative",
        skip_serializing_if = "is_zero"
    )]
    pub value_ce_floor: f64,
    /// What `value_ce`'s cross-entropy aims at: `written`, the token of the value nearest the
    /// label (its optimum is the distribution of the rounded labels, whose mean sits under the
    /// labels' where most labels lie just above a value: 4% → 0%); `two-hot`, the label spread
    /// over the two values around it so that the spread's mean is the label (24% → 60% on
    /// 20%, 40% on 30%), whose optimum keeps the labels' mean and gives both neighbours a pull
    /// at full strength.
    #[serde(skip_serializing_if = "ValueCeTarget::is_written")]
    pub value_ce_target: ValueCeTarget,
    /// Under `brier`: weight of the log loss of the expected value ē = Σ_v q(v)·v against the
    /// label, added to the Brier score at the deciding token. A student that starts with its
    /// mass on 0% fits its high labels slowly under the Brier score and writes below them; the
    /// log loss's gradient grows as 1/(ē(1 − ē)), so it pulls hardest where ē sits near 0
    /// under a high label. Both are lowest when ē is the label. 0 = off.
    #[serde(deserialize_with = "bounded::non_negative")]
    pub value_log: f64,
    /// Under `brier` and `log`: weight of the squared gap between the expected value ē and
    /// the label, averaged over each micro-batch before squaring: λ·(Σ w·(ē − y))² / Σ w. Per
    /// answer the scoring rules are lowest at the label, but a student that starts at the
    /// labels' mode (0%) and cannot fit every answer stays under them on average (SmolLM2's
    /// right answers: ē 0.44 against labels of 0.64); this term pulls the batch's mean to the
    /// labels' wherever that is cheapest for the scoring rule and leaves each answer's own
    /// target alone. On SmolLM2 the cheapest answers were the wrong ones at 0% (to 10%), so
    /// the level rose and the ranking fell (docs/smollm2.md, 2026-12-07 midday). 0 = off.
    #[serde(
        deserialize_with = "bounded::non_negative",
        skip_serializing_if = "is_zero"
    )]
    pub value_level: f64,
    /// The percent values the confidence line is trained to write (each label goes to the
    /// nearest), also the set the evaluation's expected readout reads. Empty = the deciles,
    /// where two share their first token keeping the one farther from 50% (digit tokenizers
    /// such as SmolLM2's: 0, 20, 30, …, 100).
    pub values: Vec<u32>,
    /// Digits the confidence line is trained to write: 1 (each label goes to the nearest of
    /// `values`) or 2 (the label rounded to a whole percent, `NN%`: the first digit is the
    /// value token, the second is trained with the same loss over the digit tokens, its
    /// target the label's place within its decade; labels under 10 go to 0% or 10%). Two
    /// digits need `values` = 0, 10, …, 90 and a tokenizer that writes one token per digit.
    pub value_digits: u8,
    /// Under `loss_on = "confidence"`: stop the confidence loss's gradient at the keys and
    /// values of the prompt and answer (computed once, held fixed while the confidence line
    /// attends to them), so the confidence is learned from what the model computes there
    /// rather than by reshaping the answer positions.
    pub detach_context: bool,
    /// Rehearsal sets (each shaped like `[data]`, `[[train.rehearsal]]`): questions the
    /// starting model answers once (greedy, top-k kept), whose answer tokens carry only the
    /// `answer_kl` term, followed by the confidence line's opening (`\nConfidence: `, with
    /// cross-entropy; no value, no confidence label). Each step adds a batch of them beside the
    /// calibration batch, so the answers stay put, and end in the trained format, beyond the
    /// calibration set's questions.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rehearsal: Vec<DataConfig>,
    /// `label-bin`: weight each example by 1 / (examples in its 10-point teacher-label bin),
    /// normalised to mean 1, so every label bin weighs the same; `none`: no balancing.
    pub balance: Balance,
    /// Under `balance = "label-bin"`: how far to balance, each example weighing
    /// 1 / (examples in its bin)^balance_power (normalised to mean 1). 1 = every occupied bin
    /// weighs the same; 0.5 = a bin's total weight grows as the square root of its count
    /// (a bin with 16 times the examples weighs 4 times as much); 0 = no balancing.
    #[serde(deserialize_with = "bounded::fraction", skip_serializing_if = "is_one")]
    pub balance_power: f64,
    /// Full fine-tuning of these decoder layers only (0-based): their projections and norms
    /// train, every other weight (embeddings and the tied head, the final norm, the other
    /// layers) stays as loaded. Empty = every weight trains. Not with `[lora]`, whose own
    /// `layers` says where the adapters go.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossOn {
    Confidence,
    Response,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AnswerTarget {
    Distribution,
    Greedy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ValueCeTarget {
    Written,
    TwoHot,
}

impl ValueCeTarget {
    fn is_written(&self) -> bool {
        *self == ValueCeTarget::Written
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AnswerSource {
    Own,
    GoldForCorrect,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConfidenceLoss {
    Ce,
    Brier,
    Log,
    TwoHot,
}

impl Recipe {
    /// The values the confidence line writes under this recipe's tokenizer
    /// (`train.values`, or the default set).
    pub fn value_set(&self, tok: &candor_model::Tokenizer) -> Result<candor_confidence::ValueSet> {
        use candor_confidence::ValueSet;
        if self.train.values.is_empty() {
            ValueSet::new(tok)
        } else {
            ValueSet::exact(tok, &self.train.values).context("train.values")
        }
    }
}

impl ConfidenceLoss {
    /// The name a recipe writes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ce => "ce",
            Self::Brier => "brier",
            Self::Log => "log",
            Self::TwoHot => "two-hot",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConfidenceTarget {
    Teacher,
    Correct,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    None,
    LabelBin,
}

impl Default for TrainSection {
    fn default() -> Self {
        Self {
            epochs: 1,
            max_steps: 0,
            micro_batch: 8,
            global_batch: 32,
            seed: 0,
            loss_on: LossOn::Confidence,
            answer: AnswerSource::Own,
            confidence_loss: ConfidenceLoss::Brier,
            confidence_target: ConfidenceTarget::Teacher,
            answer_kl: 1.0,
            value_weight: 1.0,
            value_ce: 0.0,
            value_ce_decay: 0.0,
            value_ce_floor: 0.0,
            value_ce_target: ValueCeTarget::Written,
            value_log: 0.0,
            value_level: 0.0,
            values: vec![],
            value_digits: 1,
            answer_target: AnswerTarget::Distribution,
            detach_context: true,
            rehearsal: vec![],
            balance: Balance::None,
            balance_power: 1.0,
            layers: vec![],
        }
    }
}

impl TrainSection {
    pub fn accumulation(&self) -> usize {
        self.global_batch / self.micro_batch
    }
}

/// `[optim]`: AdamW (PyTorch semantics: decoupled weight decay, eps outside the sqrt),
/// linear warmup then cosine decay to `min_lr`, global grad-norm clipping.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimSection {
    #[serde(deserialize_with = "bounded::positive")]
    pub lr: f64,
    #[serde(deserialize_with = "bounded::non_negative")]
    pub min_lr: f64,
    pub betas: [f64; 2],
    #[serde(deserialize_with = "bounded::positive")]
    pub eps: f64,
    #[serde(deserialize_with = "bounded::non_negative")]
    pub weight_decay: f64,
    /// Share of the steps spent warming up linearly from 0.
    #[serde(deserialize_with = "bounded::fraction")]
    pub warmup: f64,
    /// Clip the global gradient norm to this (0 = off).
    #[serde(deserialize_with = "bounded::non_negative")]
    pub grad_clip: f64,
}

impl Default for OptimSection {
    fn default() -> Self {
        Self {
            lr: 1e-4,
            min_lr: 1e-5,
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.0,
            warmup: 0.03,
            grad_clip: 1.0,
        }
    }
}

/// `[lora]`: low-rank adapters on the named projections; the base weights stay frozen and the
/// adapters are merged into them on export.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraSection {
    #[serde(deserialize_with = "bounded::at_least_one")]
    pub rank: usize,
    #[serde(deserialize_with = "bounded::positive")]
    pub alpha: f64,
    #[serde(deserialize_with = "bounded::fraction")]
    pub dropout: f64,
    /// Any of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj.
    pub targets: Vec<String>,
    /// The layers (0-based) that get adapters; empty = every layer (PEFT's
    /// `layers_to_transform`).
    pub layers: Vec<usize>,
}

impl Default for LoraSection {
    fn default() -> Self {
        Self {
            rank: 16,
            alpha: 32.0,
            dropout: 0.05,
            targets: ["q_proj", "k_proj", "v_proj", "o_proj"]
                .map(String::from)
                .to_vec(),
            layers: vec![],
        }
    }
}

pub const LORA_TARGETS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Order {
    None,
    EasyToHard,
    HardToEasy,
}

/// `[curriculum]`: order examples by difficulty (teacher confidence, correct before wrong at
/// equal confidence) and grow the pool the sampler draws from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CurriculumSection {
    pub order: Order,
    /// Share of the (ordered) examples available at step 0.
    #[serde(deserialize_with = "bounded::fraction")]
    pub start: f64,
    /// Share of the steps over which the pool grows linearly to all examples.
    #[serde(deserialize_with = "bounded::fraction")]
    pub ramp: f64,
}

impl Default for CurriculumSection {
    fn default() -> Self {
        Self {
            order: Order::None,
            start: 0.3,
            ramp: 0.5,
        }
    }
}

/// `[weighting]`: per-example loss weights from teacher confidence c ∈ [0,1] and correctness y:
/// correct: `w = 1 + a·(0.5 − c)` (unsure-correct up, easy down); wrong: `w = 1 + b·c`
/// (confident errors highest); clipped to [w_min, w_max], then normalised to mean 1 over the
/// dataset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WeightingSection {
    pub enabled: bool,
    #[serde(deserialize_with = "bounded::non_negative")]
    pub correct_slope: f64,
    #[serde(deserialize_with = "bounded::non_negative")]
    pub wrong_slope: f64,
    #[serde(deserialize_with = "bounded::positive")]
    pub w_min: f64,
    #[serde(deserialize_with = "bounded::positive")]
    pub w_max: f64,
}

impl Default for WeightingSection {
    fn default() -> Self {
        Self {
            enabled: false,
            correct_slope: 1.0,
            wrong_slope: 2.0,
            w_min: 0.25,
            w_max: 4.0,
        }
    }
}

/// `[checkpoint]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointSection {
    /// Save every N optimizer steps (0 = only at the end).
    pub every: usize,
    /// Keep the last N checkpoints.
    #[serde(deserialize_with = "bounded::at_least_one")]
    pub keep: usize,
    /// Continue from the newest checkpoint in the run folder when there is one.
    pub resume: bool,
}

impl Default for CheckpointSection {
    fn default() -> Self {
        Self {
            every: 50,
            keep: 2,
            resume: true,
        }
    }
}

/// `[log]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// Log scalars every N optimizer steps.
    #[serde(deserialize_with = "bounded::at_least_one")]
    pub every: usize,
    /// Write TensorBoard scalars to `<run>/tb/`.
    pub tensorboard: bool,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            every: 10,
            tensorboard: true,
        }
    }
}

/// `[eval]`: evaluation sets (each like `[data]`) run on the model before and after training.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSection {
    pub enabled: bool,
    pub sets: Vec<DataConfig>,
    #[serde(deserialize_with = "bounded::at_least_one")]
    pub max_new_tokens: usize,
    #[serde(deserialize_with = "bounded::at_least_one")]
    pub batch_size: usize,
    /// Also evaluate the model before training.
    pub before: bool,
    /// Bootstrap resamples for the 95% intervals.
    pub bootstrap: usize,
    pub seed: u64,
    /// Sampled answers per question for the SAR readout (0 = no SAR; otherwise at least 2).
    pub samples: usize,
    /// Sampling temperature of those answers.
    #[serde(deserialize_with = "bounded::positive")]
    pub temperature: f64,
    /// Leave the evaluation sets' questions out of the training data (by question text), so
    /// that every evaluation question counts. Off: a training question that an evaluation set
    /// also asks is left out of that set's metrics instead.
    pub exclude_from_training: bool,
}

impl Default for EvalSection {
    fn default() -> Self {
        Self {
            enabled: true,
            sets: vec![],
            max_new_tokens: 32,
            batch_size: 16,
            before: true,
            bootstrap: 1000,
            seed: 0,
            samples: 0,
            temperature: 0.5,
            exclude_from_training: false,
        }
    }
}

/// `[export]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportSection {
    pub dtype: Dtype,
}

impl Default for ExportSection {
    fn default() -> Self {
        Self { dtype: Dtype::F32 }
    }
}

impl Recipe {
    /// Parse a recipe file: TOML errors carry the line and the key; cross-field rules follow.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut r = Self::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if r.run_dir.is_none() {
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "run".into());
            r.run_dir = Some(PathBuf::from("runs").join(stem));
        }
        Ok(r)
    }

    pub fn parse(text: &str) -> Result<Self> {
        let r: Recipe = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        r.validate()?;
        Ok(r)
    }

    /// Rules that involve more than one field, and the bounds on sizes.
    pub fn validate(&self) -> Result<()> {
        self.check_bounds()?;
        let m = &self.model;
        match (&m.path, &m.preset) {
            (None, None) => {
                bail!("[model]: set `path` (an HF folder) or `preset` (tiny, small, smollm2-135m)")
            }
            (Some(_), Some(_)) => bail!("[model]: set only one of `path` and `preset`"),
            (None, Some(p)) => {
                candor_model::config::ModelConfig::preset(p, 256)
                    .map_err(|e| anyhow::anyhow!("model.preset: {e}"))?;
                if m.tokenizer.is_none() {
                    bail!("model.tokenizer: required with `preset` (a folder with tokenizer.json)");
                }
            }
            _ => {}
        }
        m.device
            .parse::<DeviceSpec>()
            .map_err(|e| anyhow::anyhow!("model.device: {e}"))?;
        if !self
            .train
            .global_batch
            .is_multiple_of(self.train.micro_batch)
        {
            bail!(
                "train.global_batch = {} is not a multiple of train.micro_batch = {} (gradient accumulation must be a whole number)",
                self.train.global_batch,
                self.train.micro_batch
            );
        }
        if !self.train.rehearsal.is_empty() && self.train.answer_kl == 0.0 {
            bail!("train.rehearsal keeps answers through train.answer_kl, which is 0: set answer_kl > 0 or drop the rehearsal sets");
        }
        if self.train.value_ce > 0.0 && self.train.confidence_loss == ConfidenceLoss::Ce {
            bail!("train.value_ce adds a cross-entropy to the brier or log score; under confidence_loss = \"ce\" the deciding token already has one (scale it with train.value_weight)");
        }
        if self.train.value_level > 0.0
            && !matches!(
                self.train.confidence_loss,
                ConfidenceLoss::Brier | ConfidenceLoss::Log
            )
        {
            bail!("train.value_level = {} matches the batch's mean expected value to its mean label; confidence_loss is \"{}\" (allowed with value_level > 0: \"brier\", \"log\")", self.train.value_level, self.train.confidence_loss.name());
        }
        if self.train.value_log > 0.0 && self.train.confidence_loss != ConfidenceLoss::Brier {
            bail!("train.value_log = {} adds the log loss of the expected value beside the brier score; confidence_loss is \"{}\" (allowed with value_log > 0: \"brier\"; under \"log\" it is the loss already)", self.train.value_log, self.train.confidence_loss.name());
        }
        if self.train.value_ce_decay > 0.0 && self.train.value_ce == 0.0 {
            bail!("train.value_ce_decay = {} schedules train.value_ce, which is 0: set value_ce > 0 or drop value_ce_decay", self.train.value_ce_decay);
        }
        if self.train.value_ce_floor > 0.0 && self.train.value_ce_decay == 0.0 {
            bail!("train.value_ce_floor = {} is where train.value_ce_decay takes value_ce, and value_ce_decay is 0 (value_ce holds for the whole run): set value_ce_decay > 0 or drop value_ce_floor", self.train.value_ce_floor);
        }
        if self.train.balance_power != 1.0 && self.train.balance == Balance::None {
            bail!("train.balance_power = {} says how far train.balance = \"label-bin\" balances, and balance is \"none\": set balance = \"label-bin\" or drop balance_power", self.train.balance_power);
        }
        if self.train.value_ce_target == ValueCeTarget::TwoHot && self.train.value_ce == 0.0 {
            bail!("train.value_ce_target = \"two-hot\" says what train.value_ce's cross-entropy aims at, and value_ce is 0: set value_ce > 0 or drop value_ce_target");
        }
        if self.train.value_ce_floor > self.train.value_ce {
            bail!("train.value_ce_floor = {} is above train.value_ce = {} (allowed: 0 to value_ce; value_ce falls to the floor)", self.train.value_ce_floor, self.train.value_ce);
        }
        if !self.train.values.is_empty() {
            let mut v = self.train.values.clone();
            v.sort_unstable();
            if let Some(&bad) = v.iter().find(|&&x| x > 100) {
                bail!("train.values: {bad} is out of range (allowed: 0 to 100, percent)");
            }
            if v.len() < 2 {
                bail!(
                    "train.values: {:?} has fewer than two values",
                    self.train.values
                );
            }
            if let Some(w) = v.windows(2).find(|w| w[0] == w[1]) {
                bail!("train.values: {} is listed twice", w[0]);
            }
        }
        if !(1..=2).contains(&self.train.value_digits) {
            bail!(
                "train.value_digits = {} (allowed: 1 or 2)",
                self.train.value_digits
            );
        }
        if self.train.value_digits == 2 && {
            let mut v = self.train.values.clone();
            v.sort_unstable();
            v != candor_confidence::values::DECILES[..10]
        } {
            bail!("train.value_digits = 2 writes NN% with the first digit as the value token: it needs train.values = [0, 10, 20, 30, 40, 50, 60, 70, 80, 90]");
        }
        if self.eval.samples == 1 {
            bail!("eval.samples = 1: SAR compares samples with each other; use 0 (no SAR) or at least 2");
        }
        if self.optim.min_lr > self.optim.lr {
            bail!(
                "optim.min_lr = {} is above optim.lr = {}",
                self.optim.min_lr,
                self.optim.lr
            );
        }
        for (i, b) in self.optim.betas.iter().enumerate() {
            if !(0.0..1.0).contains(b) {
                bail!("optim.betas[{i}] = {b} is out of range (allowed: 0 ≤ beta < 1)");
            }
        }
        if self.lora.is_some() && !self.train.layers.is_empty() {
            bail!("train.layers trains the listed layers' weights in full, and [lora] is set (it freezes every weight and trains adapters on lora.layers): keep one of the two");
        }
        if let Some(l) = &self.lora {
            if l.targets.is_empty() {
                bail!("lora.targets: empty (allowed: {})", LORA_TARGETS.join(", "));
            }
            for t in &l.targets {
                if !LORA_TARGETS.contains(&t.as_str()) {
                    bail!(
                        "lora.targets: `{t}` is not one of {}",
                        LORA_TARGETS.join(", ")
                    );
                }
            }
        }
        if self.weighting.w_min > self.weighting.w_max {
            bail!(
                "weighting.w_min = {} is above weighting.w_max = {}",
                self.weighting.w_min,
                self.weighting.w_max
            );
        }
        if self.train.loss_on == LossOn::Confidence
            && self.train.confidence_loss != ConfidenceLoss::Ce
            && self.labels.format != candor_data::config::ConfidenceFormat::Percent
        {
            bail!(
                "train.confidence_loss = \"{}\" scores a distribution over percent values; it needs labels.format = \"percent\" (or use confidence_loss = \"ce\")",
                self.train.confidence_loss.name()
            );
        }
        self.labels.validate()?;
        Ok(())
    }

    /// Every question set of the recipe with its name in errors: `data`,
    /// `train.rehearsal[i]`, `eval.sets[i]`.
    fn question_sets(&self) -> Vec<(String, &DataConfig)> {
        let rehearsal = self.train.rehearsal.iter().enumerate();
        let eval = self.eval.sets.iter().enumerate();
        std::iter::once(("data".to_string(), &self.data))
            .chain(rehearsal.map(|(i, s)| (format!("train.rehearsal[{i}]"), s)))
            .chain(eval.map(|(i, s)| (format!("eval.sets[{i}]"), s)))
            .collect()
    }

    /// Every size a recipe sets is bounded, so no count built from them can overflow or ask
    /// for absurd memory: an error names the field, its value and the allowed range.
    fn check_bounds(&self) -> Result<()> {
        let (t, l, e) = (&self.train, &self.labels, &self.eval);
        let mut fields: Vec<(String, usize, usize, usize)> = vec![
            ("train.epochs".into(), t.epochs, 1, 10_000),
            ("train.max_steps".into(), t.max_steps, 0, 100_000_000),
            ("train.micro_batch".into(), t.micro_batch, 1, 65_536),
            ("train.global_batch".into(), t.global_batch, 1, 65_536),
            ("labels.samples".into(), l.samples, 0, 1_024),
            ("labels.max_new_tokens".into(), l.max_new_tokens, 1, 65_536),
            ("labels.batch_size".into(), l.batch_size, 1, 65_536),
            ("labels.top_logprobs".into(), l.top_logprobs, 0, 1_024),
            ("eval.samples".into(), e.samples, 0, 1_024),
            ("eval.max_new_tokens".into(), e.max_new_tokens, 1, 65_536),
            ("eval.batch_size".into(), e.batch_size, 1, 65_536),
            ("eval.bootstrap".into(), e.bootstrap, 0, 1_000_000),
            (
                "checkpoint.every".into(),
                self.checkpoint.every,
                0,
                100_000_000,
            ),
            ("log.every".into(), self.log.every, 0, 100_000_000),
        ];
        if let Some(lora) = &self.lora {
            fields.push(("lora.rank".into(), lora.rank, 1, 65_536));
        }
        for (name, set) in self.question_sets() {
            fields.push((format!("{name}.max_length"), set.max_length, 1, 1 << 20));
            candor_data::item::count_items(set).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        }
        for (name, v, lo, hi) in fields {
            if v < lo || v > hi {
                bail!("{name} = {v} is out of range (allowed: {lo} to {hi})");
            }
        }
        Ok(())
    }

    /// Everything the recipe refers to on disk, checked before any work (a missing eval set
    /// must not be found after an hour of answering and training): the model and tokenizer
    /// folders, every JSONL question file, the MiniLM folder when a stage needs it. One error
    /// lists every problem.
    pub fn check_inputs(&self) -> Result<()> {
        use candor_data::config::{SimilarityKind, Source};
        let mut problems = vec![];
        let m = &self.model;
        if let Some(p) = &m.path {
            if !p.is_dir() {
                problems.push(format!(
                    "model.path = {}: {}",
                    p.display(),
                    candor_model::checkpoint::no_model_folder(p)
                ));
            } else {
                for f in ["config.json", "tokenizer.json"] {
                    if !p.join(f).is_file() {
                        problems.push(format!("model.path = {}: no {f}", p.display()));
                    }
                }
                if let Err(e) = candor_model::checkpoint::weight_files(p) {
                    problems.push(format!("model.path: {e}"));
                }
            }
        }
        if let (None, Some(t)) = (&m.path, &m.tokenizer) {
            if t.as_path() != Path::new("byte") && !t.join("tokenizer.json").is_file() {
                problems.push(format!(
                    "model.tokenizer = {}: no tokenizer.json there",
                    t.display()
                ));
            }
        }
        for (name, set) in self.question_sets() {
            if set.source != Source::Jsonl {
                continue;
            }
            match &set.path {
                None => problems.push(format!("{name}.path: required when source = \"jsonl\"")),
                Some(p) => {
                    if let Err(e) = std::fs::File::open(p) {
                        problems.push(format!("{name}.path = {}: {e}", p.display()));
                    } else if p.is_dir() {
                        problems.push(format!(
                            "{name}.path = {}: a folder, not a JSONL file",
                            p.display()
                        ));
                    }
                }
            }
        }
        let needs_minilm = self.labels.similarity == SimilarityKind::Minilm
            && (self.labels.needs_similarity() || (self.eval.enabled && self.eval.samples >= 2));
        if needs_minilm && !self.labels.minilm_path.join("config.json").is_file() {
            problems.push(format!(
                "labels.minilm_path = {}: no MiniLM model there (run scripts/fetch-minilm.sh, or set labels.similarity = \"rouge-l\")",
                self.labels.minilm_path.display()
            ));
        }
        if !problems.is_empty() {
            bail!(
                "the recipe refers to {} missing or unreadable input(s):{}",
                problems.len(),
                candor_model::checkpoint::list_problems(&problems)
            );
        }
        Ok(())
    }

    pub fn run_dir(&self) -> PathBuf {
        self.run_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("runs/run"))
    }

    pub fn device(&self) -> DeviceSpec {
        self.model.device.parse().expect("validated")
    }

    /// The recipe with every default filled in, as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a recipe serialises")
    }
}
