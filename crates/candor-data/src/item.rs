//! One question from any source, with what makes an answer correct: the unit that answering
//! runs, teachers and datasets pass along.

use crate::calibratedmath::{self, Check, Grade, Group};
use crate::config::{DataConfig, Source};
use crate::qa::{self, Match, QaItem};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// Unique within the source (CalibratedMath: `<sub-task>#<n>`; QA: the file's id).
    pub id: String,
    /// `calibratedmath` or the JSONL file's stem (`triviaqa-2000`).
    pub source: String,
    /// CalibratedMath group; for QA the source name.
    pub group: String,
    /// CalibratedMath task; for QA the source name.
    pub task: String,
    /// CalibratedMath sub-task id (`+:1:4,`); for QA the source name.
    pub subtask: String,
    /// The question text as the model sees it (options included for multiple choice).
    pub question: String,
    pub gold: Gold,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Gold {
    Math { answer: String, check: Check },
    Qa(QaItem),
}

impl Item {
    /// Grade a model answer. QA answers that are empty after normalisation are `Unparseable`.
    pub fn grade(&self, answer: &str, how: Match) -> Grade {
        match &self.gold {
            Gold::Math { check, .. } => calibratedmath::grade(check, answer),
            Gold::Qa(q) => {
                if qa::normalize(answer).is_empty() {
                    Grade::Unparseable
                } else if qa::is_correct(q, answer, how) {
                    Grade::Correct
                } else {
                    Grade::Wrong
                }
            }
        }
    }

    /// The reference answer written into training targets.
    pub fn gold_answer(&self) -> String {
        match &self.gold {
            Gold::Math { answer, .. } => answer.clone(),
            Gold::Qa(q) => match &q.answer_key {
                Some(k) => k.clone(),
                None => q.answers[0].clone(),
            },
        }
    }
}

/// The questions a data section selects, in a stable order.
pub fn load_items(cfg: &DataConfig) -> Result<Vec<Item>> {
    if !cfg.template.contains("{question}") {
        bail!(
            "data.template = {:?} must contain `{{question}}`",
            cfg.template
        );
    }
    let mut items = load_raw(cfg)?;
    for it in items.iter_mut() {
        it.question = cfg.template.replace("{question}", &it.question);
    }
    Ok(items)
}

/// The most questions one set may hold (data, a rehearsal set, an evaluation set): a recipe
/// asking for more is refused before anything is generated or read.
pub const MAX_QUESTIONS: usize = 1_000_000;

/// How many questions a set will hold, checked against [`MAX_QUESTIONS`] without generating
/// them: exact for CalibratedMath; for a JSONL file, `limit` when set, else not known
/// (`None`; the file's reader bounds each line).
pub fn count_items(cfg: &DataConfig) -> Result<Option<usize>> {
    match cfg.source {
        Source::Calibratedmath => check_count(cfg, &chosen_subtasks(cfg)?).map(Some),
        Source::Jsonl => Ok((cfg.limit > 0).then_some(cfg.limit)),
    }
}

/// Questions of sub-task `st`: its override, or `per_subtask`.
fn per_subtask(cfg: &DataConfig, st: &calibratedmath::SubTask) -> usize {
    cfg.per_subtask_overrides
        .get(&st.id())
        .copied()
        .unwrap_or(cfg.per_subtask)
}

/// The question count of the chosen sub-tasks, refused over [`MAX_QUESTIONS`].
fn check_count(cfg: &DataConfig, chosen: &[calibratedmath::SubTask]) -> Result<usize> {
    let n = chosen
        .iter()
        .fold(0usize, |n, st| n.saturating_add(per_subtask(cfg, st)));
    if n > MAX_QUESTIONS {
        bail!(
            "{n} questions (per_subtask = {} over the chosen sub-tasks, with overrides) is over \
             the limit of {MAX_QUESTIONS} per set; lower per_subtask",
            cfg.per_subtask
        );
    }
    Ok(n)
}

/// The CalibratedMath sub-tasks a set selects (groups, tasks, sub-task ids), checked.
fn chosen_subtasks(cfg: &DataConfig) -> Result<Vec<calibratedmath::SubTask>> {
    let groups: &[Group] = &cfg.groups;
    let all = calibratedmath::subtasks();
    for t in &cfg.tasks {
        if !all.iter().any(|s| s.task() == t || s.op == *t) {
            let names: Vec<&str> = calibratedmath::TASKS.iter().map(|t| t.1).collect();
            bail!(
                "data.tasks: unknown CalibratedMath task `{t}` (allowed: {})",
                names.join(", ")
            );
        }
    }
    for id in &cfg.subtasks {
        if !all.iter().any(|s| s.id() == *id) {
            bail!("data.subtasks: unknown CalibratedMath sub-task `{id}` (ids look like `+:1:4,` = op:digits:digits:separator; see `dataset --list-subtasks`)");
        }
    }
    let chosen: Vec<_> = all
        .into_iter()
        .filter(|s| groups.is_empty() || groups.contains(&s.group()))
        .filter(|s| cfg.tasks.is_empty() || cfg.tasks.iter().any(|t| s.task() == t || s.op == *t))
        .filter(|s| cfg.subtasks.is_empty() || cfg.subtasks.contains(&s.id()))
        .collect();
    if chosen.is_empty() {
        bail!("data: the selection (groups {:?}, tasks {:?}, subtasks {:?}) matches no CalibratedMath sub-task", cfg.groups, cfg.tasks, cfg.subtasks);
    }
    if let Some(k) = cfg
        .per_subtask_overrides
        .keys()
        .find(|k| !chosen.iter().any(|s| &s.id() == *k))
    {
        bail!("data.per_subtask_overrides: sub-task {k:?} is not in the selection (see `dataset --list-subtasks`)");
    }
    Ok(chosen)
}

fn load_raw(cfg: &DataConfig) -> Result<Vec<Item>> {
    match cfg.source {
        Source::Calibratedmath => {
            let chosen = chosen_subtasks(cfg)?;
            check_count(cfg, &chosen)?;
            Ok(chosen
                .iter()
                .flat_map(|st| calibratedmath::generate(st, per_subtask(cfg, st), cfg.seed))
                .map(|q| Item {
                    id: q.id,
                    source: "calibratedmath".into(),
                    group: q.group.name().into(),
                    task: q.task,
                    subtask: q.subtask,
                    question: q.question,
                    gold: Gold::Math {
                        answer: q.answer,
                        check: q.check,
                    },
                })
                .collect())
        }
        Source::Jsonl => {
            let Some(path) = &cfg.path else {
                bail!("data.path: required when data.source = \"jsonl\"");
            };
            let loaded = qa::load_jsonl(path)?;
            if !loaded.malformed.is_empty() {
                eprintln!("warning: {}: {}", path.display(), loaded.summary());
            }
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "qa".into());
            let mut items: Vec<Item> = loaded
                .items
                .into_iter()
                .map(|q| Item {
                    id: q.id.clone(),
                    source: name.clone(),
                    group: name.clone(),
                    task: name.clone(),
                    subtask: name.clone(),
                    question: q.prompt_text(),
                    gold: Gold::Qa(q),
                })
                .collect();
            // ids must be unique (answers are stored by id): repeats get `#2`, `#3`, …
            let mut seen = std::collections::HashMap::<String, usize>::new();
            for it in items.iter_mut() {
                let n = seen.entry(it.id.clone()).or_insert(0);
                *n += 1;
                if *n > 1 {
                    it.id = format!("{}#{n}", it.id);
                }
            }
            if cfg.offset > 0 {
                items.drain(..cfg.offset.min(items.len()));
            }
            if cfg.limit > 0 {
                items.truncate(cfg.limit);
            }
            if items.is_empty() {
                bail!(
                    "data: {} has no questions left after offset/limit",
                    path.display()
                );
            }
            Ok(items)
        }
    }
}
