//! candor-model: the Llama-family decoder on Burn; HF config and safetensors in and out; GGUF
//! import; tokenizer and chat template; generation and scoring with log-probs.

pub mod checkpoint;
pub mod config;
pub mod device;
pub mod fused;
pub mod generate;
pub mod gguf;
pub mod model;
pub mod tokenizer;

pub use checkpoint::{export_model, load_model, load_model_and_tokenizer, SaveDtype};
pub use config::ModelConfig;
pub use device::{run_on, BackendTask, DeviceSpec};
pub use generate::{generate, score, GenConfig, Generation};
pub use model::Llama;
pub use tokenizer::{PromptStyle, Tokenizer};
