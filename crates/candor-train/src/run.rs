//! The whole pipeline of one recipe: dataset → evaluation before → fine-tuning → export →
//! evaluation after → report. Each stage resumes from what the run folder already holds.

use crate::evaluate::evaluate_and_report;
use crate::pipeline::{build_dataset, load_model, write_text};
use crate::recipe::Recipe;
use crate::trainer::{merged, train};
use anyhow::{Context, Result};
use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use candor_model::checkpoint::{export_model, SaveDtype};
use std::collections::BTreeMap;
use std::time::Instant;

/// FNV-1a of the resolved recipe, written into reports.
pub fn recipe_hash(r: &Recipe) -> String {
    let h = r.to_toml().bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    format!("{h:016x}")
}

pub fn run_recipe<B: Backend>(r: &Recipe, device: B::Device) -> Result<()> {
    let t0 = Instant::now();
    r.check_inputs()?;
    // before anything is written: a dtype the backend cannot compute in, or a model that is
    // not there, stops the run here
    type A<B> = Autodiff<B>;
    let (model, tok) = load_model::<A<B>>(r, &device)?;
    // a value set the tokenizer cannot write stops the run before the data stage
    let vs = r.value_set(&tok)?;
    crate::pipeline::check_layers(r, model.config.num_hidden_layers)?;
    let run = r.run_dir();
    // one writer per run folder, held until the run ends
    let _lock = crate::lock::RunLock::acquire(&run)?;
    write_text(&run.join("recipe.toml"), &r.to_toml())?;
    eprintln!(
        "run folder: {} (resolved recipe saved as recipe.toml)",
        run.display()
    );
    let base = model.valid();
    let (examples, summary) = build_dataset(r, &base, &tok, &device)?;
    eprint!("{}", summary.render());
    let train_ex: Vec<_> = examples.into_iter().filter(|e| e.kept()).collect();
    let constant = if train_ex.is_empty() {
        None
    } else {
        Some(train_ex.iter().filter(|e| e.correct).count() as f64 / train_ex.len() as f64)
    };
    let mut model = model;
    if let Some(l) = &r.lora {
        let seed = r.train.seed ^ 0x10_4A;
        model = model.with_lora(
            &l.targets, &l.layers, l.rank, l.alpha, l.dropout, seed, &device,
        );
    } else if !r.train.layers.is_empty() {
        model = model.train_only_layers(&r.train.layers);
    }
    let rehearsal = crate::pipeline::rehearsal_seqs(r, &base, &tok, &device)?;
    let trained = train(r, model, &tok, &train_ex, &rehearsal, &device)?;
    match trained.last_loss {
        Some(loss) => eprintln!(
            "trained {} steps, last loss {loss:.4}, {:.0} tokens/s",
            trained.steps, trained.tokens_per_s
        ),
        // resumed from a checkpoint at the last step: no step ran in this process
        None => eprintln!(
            "already trained: {} steps (the last checkpoint)",
            trained.steps
        ),
    }
    let after = merged(&trained.model);
    if r.labels.teacher != candor_data::config::Teacher::Gold && !train_ex.is_empty() {
        let t = Instant::now();
        let fit = crate::evaluate::training_fit(
            &after,
            &tok,
            &vs,
            &train_ex,
            r.eval.batch_size,
            &device,
        )?;
        let line = format!("{fit} [{:.0} s]", t.elapsed().as_secs_f64());
        eprintln!("{line}");
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(run.join("train.log"))
            .and_then(|mut f| writeln!(f, "{line}"))
            .with_context(|| format!("appending to {}", run.join("train.log").display()))?;
    }
    let final_dir = run.join("final");
    let dtype = match r.export.dtype {
        crate::recipe::Dtype::F32 => SaveDtype::F32,
        crate::recipe::Dtype::Bf16 => SaveDtype::Bf16,
    };
    let tok_dir = crate::pipeline::tokenizer_dir(r);
    export_model(&after, &final_dir, dtype, Some(&tok_dir))?;
    eprintln!("exported {}", final_dir.display());
    if r.eval.enabled && !r.eval.sets.is_empty() {
        let mut names = BTreeMap::new();
        let src = r
            .model
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| format!("preset {}", r.model.preset.clone().unwrap_or_default()));
        let mut models: Vec<(&str, &candor_model::Llama<B>)> = vec![];
        if r.eval.before {
            names.insert("before".to_string(), src);
            models.push(("before", &base));
        }
        names.insert("after".to_string(), final_dir.display().to_string());
        models.push(("after", &after));
        let out = run.join("report");
        let probe = probe_data(r, &tok, &train_ex)?;
        let mut sim = if r.eval.samples >= 2 {
            Some(crate::pipeline::load_similarity::<B>(r, &device)?)
        } else {
            None
        };
        let report = evaluate_and_report(
            &models,
            names,
            &tok,
            &vs,
            &r.eval.sets,
            &r.eval,
            constant,
            Some(recipe_hash(r)),
            &out,
            probe.as_deref(),
            &train_ex.iter().map(|e| e.question.clone()).collect(),
            sim.as_mut()
                .map(|s| &mut **s as &mut dyn candor_confidence::Similarity),
            &device,
        )?;
        println!("{}", headline(&report));
        println!("report: {}", out.join("report.md").display());
    }
    eprintln!("done in {:.1} min", t0.elapsed().as_secs_f64() / 60.0);
    Ok(())
}

/// What the `probe` readout is fitted on: the training examples' prompts and the model's own
/// answer tokens, with their grades. `None` for `labels.teacher = "gold"` (no answers).
pub fn probe_data(
    r: &Recipe,
    tok: &candor_model::Tokenizer,
    examples: &[candor_data::Example],
) -> Result<Option<Vec<crate::evaluate::GradedAnswer>>> {
    if r.labels.teacher == candor_data::config::Teacher::Gold {
        return Ok(None);
    }
    let rows = examples
        .iter()
        .map(|e| {
            let mut ids = tok.encode(&e.prompt, false)?;
            ids.extend(&e.answer_tokens);
            Ok((ids, e.correct))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(rows))
}

/// Before/after lines for the terminal: accuracy, parse rate, ECE, Brier, AUROC of the
/// verbalized confidence per set.
pub fn headline(rep: &candor_eval::report::Report) -> String {
    let mut o = String::from("set                  model   acc     parsed  ECE-10  Brier   AUROC   (verbalized confidence)\n");
    for r in &rep.results {
        let v = r.readouts.get("verbalized");
        let f = |x: Option<f64>| {
            x.map(|x| format!("{x:.3}"))
                .unwrap_or_else(|| "  –  ".into())
        };
        o += &format!(
            "{:<20} {:<7} {:<7.3} {:<7.3} {:<7} {:<7} {}\n",
            r.set,
            r.model,
            r.accuracy,
            r.parse_rate,
            f(v.map(|v| v.metrics.ece_10)),
            f(v.map(|v| v.metrics.brier)),
            f(v.and_then(|v| v.metrics.auroc)),
        );
    }
    for c in &rep.accuracy_changes {
        o += &c.describe();
        o += "\n";
    }
    o
}
