//! `generate --model DIR`: answer prompts (one per line of a file, one `--prompt`, or typed in
//! as a chat) with any HF folder.

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use candor_model::{
    generate, load_model_and_tokenizer, run_on, BackendTask, DeviceSpec, GenConfig, PromptStyle,
};
use clap::Parser;
use std::io::BufRead;
use std::path::PathBuf;

#[derive(Parser, Clone)]
#[command(about = "Generate answers with a HuggingFace-format model folder")]
struct Args {
    /// HF folder (config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// One prompt. Without --prompt or --prompts, reads prompts from stdin (interactive chat).
    #[arg(long)]
    prompt: Option<String>,
    /// A file with one prompt per line.
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Prompt style: chat (the model's chat template) or plain (`Q: …\nA:`); raw sends the text as is.
    #[arg(long, default_value = "chat")]
    style: String,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Print one JSON object per answer (tokens, log-probs, top-k) instead of text.
    #[arg(long)]
    json: bool,
    /// cpu, wgpu[:N] or cuda[:N].
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
}

impl BackendTask for Args {
    type Output = ();
    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        let (model, tok) = load_model_and_tokenizer::<B>(&self.model, &device)?;
        let cfg = GenConfig {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
            stop_ids: tok.stop_ids.clone(),
            ..Default::default()
        };
        let render = |q: &str| -> Result<String> {
            match self.style.as_str() {
                "chat" => tok.prompt(q, PromptStyle::Chat),
                "plain" => tok.prompt(q, PromptStyle::Plain),
                "raw" => Ok(q.to_string()),
                other => anyhow::bail!("--style `{other}` is not one of chat, plain, raw"),
            }
        };
        let questions: Vec<String> = match (&self.prompt, &self.prompts) {
            (Some(p), _) => vec![p.clone()],
            (None, Some(f)) => std::fs::read_to_string(f)
                .with_context(|| format!("reading {}", f.display()))?
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(String::from)
                .collect(),
            (None, None) => {
                eprintln!("(type a prompt per line; Ctrl-D ends)");
                for line in std::io::stdin().lock().lines() {
                    let q = line?;
                    let ids = tok.encode(&render(&q)?, false)?;
                    let g = generate(&model, &tok, &[ids], &cfg, &device)?;
                    println!("{}", g[0].text.trim());
                }
                return Ok(());
            }
        };
        let t = std::time::Instant::now();
        let mut n_tokens = 0;
        for chunk in questions.chunks(self.batch_size.max(1)) {
            let ids: Vec<Vec<u32>> = chunk
                .iter()
                .map(|q| tok.encode(&render(q)?, false))
                .collect::<Result<_>>()?;
            for (q, g) in chunk
                .iter()
                .zip(generate(&model, &tok, &ids, &cfg, &device)?)
            {
                n_tokens += g.tokens.len();
                if self.json {
                    println!("{}", serde_json::json!({"prompt": q, "generation": g}));
                } else {
                    println!("Q: {q}\nA: {}\n", g.text.trim());
                }
            }
        }
        let s = t.elapsed().as_secs_f64();
        eprintln!(
            "{} prompts, {n_tokens} tokens in {s:.1}s ({:.1} tokens/s)",
            questions.len(),
            n_tokens as f64 / s
        );
        Ok(())
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    run_on(args.device, args)
}
