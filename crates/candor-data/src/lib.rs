//! candor-data: the teacher side of the pipeline. Question sources (the CalibratedMath
//! generator, QA JSONL), grading, answering runs with the base model, confidence labels
//! (empirical accuracy, SAR), the distillation filter and the dataset files the trainer reads.
//!
//! Flow: [`item::load_items`] → [`answering::run_answers`] → [`dataset::label`] → [`dataset::write`].

pub mod answering;
pub mod calibratedmath;
pub mod config;
pub mod dataset;
pub mod item;
pub mod numbers;
pub mod qa;
pub mod teacher;

pub use config::{DataConfig, LabelsConfig};
pub use dataset::{Example, Summary};
pub use item::{load_items, Item};
