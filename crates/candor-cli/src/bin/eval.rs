//! `eval RECIPE`: evaluate a model folder on the recipe's `[eval]` sets — answers with
//! verbalized confidence plus the baseline readouts — and write report.json, report.md and the
//! SVG figures.

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use candor_model::{run_on, BackendTask};
use candor_train::Recipe;
use clap::Parser;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Evaluate calibration of one or two model folders on a recipe's [eval] sets")]
struct Args {
    /// The recipe (TOML); its [model].path is the model unless --model is given.
    recipe: PathBuf,
    /// Model folder to evaluate (overrides [model].path).
    #[arg(long)]
    model: Option<PathBuf>,
    /// A second model (e.g. a fine-tuned one) evaluated side by side as "after".
    #[arg(long)]
    after: Option<PathBuf>,
    /// Output folder (default: <run>/eval).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Best-constant readout value (e.g. the training accuracy), 0..1.
    #[arg(long)]
    constant: Option<f64>,
}

struct Task(Args, Recipe);

impl BackendTask for Task {
    type Output = ();
    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        let (a, r) = (self.0, self.1);
        let path = a
            .model
            .clone()
            .or(r.model.path.clone())
            .ok_or_else(|| anyhow::anyhow!("no model: give --model DIR or set [model].path"))?;
        let (m, tok) = candor_model::load_model_and_tokenizer::<B>(&path, &device)?;
        let after = match &a.after {
            Some(p) => {
                let am = candor_model::load_model::<B>(p, &device)?;
                tok.check_fits(am.config.vocab_size)
                    .with_context(|| format!("--after {}", p.display()))?;
                Some(am)
            }
            None => None,
        };
        let label = if after.is_some() { "before" } else { "model" };
        let mut names = BTreeMap::from([(label.to_string(), path.display().to_string())]);
        let mut models = vec![(label, &m)];
        if let (Some(p), Some(am)) = (&a.after, &after) {
            names.insert("after".into(), p.display().to_string());
            models.push(("after", am));
        }
        if r.eval.sets.is_empty() {
            anyhow::bail!("the recipe has no [[eval.sets]]");
        }
        let out = a.out.clone().unwrap_or_else(|| r.run_dir().join("eval"));
        let t0 = std::time::Instant::now();
        let mut sim = if r.eval.samples >= 2 {
            Some(candor_train::pipeline::load_similarity::<B>(&r, &device)?)
        } else {
            None
        };
        // the probe is fitted on the run's training set when the run folder has one
        let ds = r.run_dir().join("data").join("dataset.jsonl");
        // … and the questions it trained on are left out of the eval sets
        let (probe, seen) = if ds.exists() {
            let ex = candor_data::dataset::read(&ds)?; // the kept examples only
            let seen = ex.iter().map(|e| e.question.clone()).collect();
            (candor_train::run::probe_data(&r, &tok, &ex)?, seen)
        } else {
            (None, Default::default())
        };
        let rep = candor_train::evaluate::evaluate_and_report(
            &models,
            names,
            &tok,
            &r.value_set(&tok)?,
            &r.eval.sets,
            &r.eval,
            a.constant,
            Some(candor_train::run::recipe_hash(&r)),
            &out,
            probe.as_deref(),
            &seen,
            sim.as_mut()
                .map(|s| &mut **s as &mut dyn candor_confidence::Similarity),
            &device,
        )?;
        print!("{}", candor_train::run::headline(&rep));
        println!(
            "wrote {} in {:.1}s",
            out.join("report.md").display(),
            t0.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let r = Recipe::load(&args.recipe)?;
    let device = r.device();
    run_on(device, Task(args, r))
}
