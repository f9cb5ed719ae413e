//! candor-confidence: confidence signals computed from generations. SAR (Duan et al. 2024) over
//! sampled answers, with a pluggable similarity — all-MiniLM-L6-v2 sentence embeddings
//! implemented in Burn, or a lexical fallback that needs no model — and DeepConf's token
//! confidence (mean, lowest window, tail) from top-k log-probs.

pub mod deepconf;
pub mod minilm;
pub mod sar;
pub mod similarity;

pub use deepconf::DeepConf;
pub use minilm::MiniLm;
pub use similarity::{Lexical, Similarity};
