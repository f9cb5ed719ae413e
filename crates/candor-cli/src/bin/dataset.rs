//! `dataset RECIPE`: build the labelled dataset from a recipe's `[model]`, `[data]` and
//! `[labels]` sections alone — answer (resumable), grade, label, filter — into `<run>/data/`,
//! and print the summary.

use anyhow::Result;
use burn::tensor::backend::Backend;
use candor_model::{run_on, BackendTask};
use candor_train::{pipeline, Recipe};
use clap::Parser;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
#[command(about = "Build a labelled dataset (answers, grades, teacher confidences) from a recipe")]
struct Args {
    /// The recipe (TOML). Only [model], [data] and [labels] are used.
    #[arg(required_unless_present = "list_subtasks")]
    recipe: Option<PathBuf>,
    /// Override the recipe's run folder.
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// List the CalibratedMath sub-tasks (id, task, group) and exit.
    #[arg(long)]
    list_subtasks: bool,
}

struct Task(Recipe);

impl BackendTask for Task {
    type Output = ();
    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        let r = self.0;
        let t0 = Instant::now();
        r.check_inputs()?;
        let _lock = candor_train::lock::RunLock::acquire(&r.run_dir())?;
        let (model, tok) = pipeline::load_model::<B>(&r, &device)?;
        let (_, summary) = pipeline::build_dataset(&r, &model, &tok, &device)?;
        print!("{}", summary.render());
        println!(
            "wrote {} in {:.1}s",
            r.run_dir().join("data").display(),
            t0.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.list_subtasks {
        for st in candor_data::calibratedmath::subtasks() {
            println!("{:<14} {:<24} {}", st.id(), st.task(), st.group().name());
        }
        return Ok(());
    }
    let mut r = Recipe::load(args.recipe.as_deref().expect("required by clap"))?;
    if let Some(d) = args.run_dir {
        r.run_dir = Some(d);
    }
    let device = r.device();
    run_on(device, Task(r))
}
