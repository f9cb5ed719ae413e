//! `import-gguf MODEL.gguf OUT_DIR`: turn a llama-architecture GGUF into an HF folder.

use anyhow::Result;
use candor_model::{gguf::import_gguf, SaveDtype};
use clap::Parser;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    about = "Import a llama-architecture GGUF (llama.cpp / Ollama) into a HuggingFace folder"
)]
struct Args {
    /// The .gguf file.
    gguf: PathBuf,
    /// Output folder (created): config.json, model.safetensors, tokenizer files.
    out: PathBuf,
    /// Storage dtype of model.safetensors: f32 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
}

fn main() -> Result<()> {
    let a = Args::parse();
    let t = std::time::Instant::now();
    let cfg = import_gguf(&a.gguf, &a.out, SaveDtype::parse(&a.dtype)?)?;
    println!(
        "imported {} → {} ({} layers, hidden {}, {} heads / {} kv, vocab {}, tied {}) in {:.1}s",
        a.gguf.display(),
        a.out.display(),
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.vocab_size,
        cfg.tie_word_embeddings,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
