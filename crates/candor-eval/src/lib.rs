//! candor-eval: calibration metrics and bootstrap intervals over `(confidence, correct)` pairs.
//! The report and figures build on these; the metrics know nothing of models.

pub mod figures;
pub mod metrics;
pub mod report;
pub mod verbalized;

pub use metrics::{bootstrap_ci, Metrics};
