//! candor-train: the recipe (one TOML file drives the pipeline), the pipeline stages, and
//! fine-tuning.

pub mod pipeline;
pub mod recipe;

pub use recipe::Recipe;
