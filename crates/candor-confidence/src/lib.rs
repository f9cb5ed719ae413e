//! candor-confidence: confidence signals computed from generations. SAR (Duan et al. 2024) over
//! sampled answers, with a pluggable similarity — all-MiniLM-L6-v2 sentence embeddings
//! implemented in Burn, or a lexical fallback that needs no model — and DeepConf's token
//! confidence (mean, lowest window, tail) from top-k log-probs, and the model's distribution over the
//! confidence values it writes (`values`: the value set, the expected-confidence readout).

pub mod deepconf;
pub mod minilm;
pub mod probe;
pub mod sar;
pub mod similarity;
pub mod values;

pub use deepconf::DeepConf;
pub use minilm::MiniLm;
pub use probe::Probe;
pub use similarity::{Lexical, Similarity};
pub use values::ValueSet;
