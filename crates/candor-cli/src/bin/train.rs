//! `train RECIPE`: the whole pipeline from one recipe — answers, labels, fine-tuning, export,
//! before/after report. The field reference is recipes/README.md.

use anyhow::Result;
use burn::tensor::backend::Backend;
use candor_model::{run_on, BackendTask};
use candor_train::Recipe;
use clap::Parser;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    about = "Calibrate a model's verbalized confidence: dataset → fine-tuning → export → report, from one recipe",
    after_help = "Recipe fields (type, default, meaning): recipes/README.md. Runs resume from their run folder."
)]
struct Args {
    /// The recipe (TOML), e.g. recipes/quickstart.toml.
    recipe: PathBuf,
    /// Print the recipe with every default filled in, and exit.
    #[arg(long)]
    print_recipe: bool,
    /// Override the recipe's run folder.
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Override the recipe's `train.seed` (one recipe, several training seeds: pair it with
    /// `--run-dir`).
    #[arg(long)]
    seed: Option<u64>,
}

struct Task(Recipe);

impl BackendTask for Task {
    type Output = ();
    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        candor_train::run::run_recipe::<B>(&self.0, device)
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut r = Recipe::load(&args.recipe)?;
    if let Some(d) = args.run_dir {
        r.run_dir = Some(d);
    }
    if let Some(s) = args.seed {
        r.train.seed = s;
    }
    if args.print_recipe {
        print!("{}", r.to_toml());
        return Ok(());
    }
    let device = r.device();
    run_on(device, Task(r))
}
