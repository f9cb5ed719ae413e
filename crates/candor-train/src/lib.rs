//! candor-train: the recipe (one TOML file drives the pipeline), the pipeline stages, and
//! fine-tuning — one file per idea: the loop (`trainer`), the LR schedule (`schedule`), the
//! optimizer (`optim`), curriculum (`curriculum`), loss weights (`weighting`), checkpoints
//! (`checkpoint`), TensorBoard scalars (`tb`), the run folder's lock (`lock`).

pub mod checkpoint;
pub mod curriculum;
pub mod evaluate;
pub mod lock;
pub mod optim;
pub mod pipeline;
pub mod recipe;
pub mod run;
pub mod schedule;
pub mod tb;
pub mod trainer;
pub mod weighting;

pub use recipe::Recipe;
