//! `convert --model DIR --out DIR [--dtype bf16]`: load an HF folder and export it again
//! (HF names, `format=pt`, f32 or bf16), tokenizer files copied.

use anyhow::Result;
use burn::backend::Flex;
use candor_model::{export_model, load_model, SaveDtype};
use clap::Parser;
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Load a HuggingFace-format folder and export it (f32 or bf16)")]
struct Args {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// f32 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
}

fn main() -> Result<()> {
    let a = Args::parse();
    let model = load_model::<Flex>(&a.model, &Default::default())?;
    export_model(&model, &a.out, SaveDtype::parse(&a.dtype)?, Some(&a.model))?;
    println!(
        "exported {} → {} ({})",
        a.model.display(),
        a.out.display(),
        a.dtype
    );
    Ok(())
}
