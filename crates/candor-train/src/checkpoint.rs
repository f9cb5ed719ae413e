//! Resumable training state in `<run>/step-NNNNNN/`: the whole module (LoRA adapters included)
//! as a Burn record at full precision, the AdamW moments as safetensors (by parameter index),
//! and `state.json` (step, optimizer step count, recipe fingerprint). Written into a temporary
//! folder and renamed, so a kill leaves either the old or the new checkpoint, never half of
//! one; the last `keep` are kept. Batches and dropout masks are functions of (seed, step), so
//! the step is the whole data position and RNG state.

use crate::optim::{moments_to_host, AdamW, Moments};
use crate::recipe::Recipe;
use anyhow::{bail, Context, Result};
use burn::module::Module;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use burn::tensor::backend::AutodiffBackend;
use candor_model::checkpoint::{
    read_safetensors_file, write_atomic, write_safetensors, HostTensor, SaveDtype,
};
use candor_model::Llama;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainState {
    pub step: usize,
    pub optimizer_steps: usize,
    /// The training-relevant part of the recipe; a resume with other settings is refused.
    pub fingerprint: String,
    /// Layout of the saved module ([`FORMAT`]); absent in checkpoints older than the field.
    #[serde(default)]
    pub format: u32,
}

/// Checkpoint layout version. 1: `Linear` weights are held `[in, out]` (before, `[out, in]`;
/// such checkpoints are refused, since square weights would load transposed without an error).
pub const FORMAT: u32 = 1;

/// What must not change between a run and its resumption.
pub fn fingerprint(r: &Recipe) -> String {
    serde_json::json!({
        "model": r.model, "train": r.train, "optim": r.optim, "lora": r.lora,
        "curriculum": r.curriculum, "weighting": r.weighting, "max_length": r.data.max_length,
    })
    .to_string()
}

pub fn check_compatible(s: &TrainState, r: &Recipe) -> Result<()> {
    if s.format != FORMAT {
        bail!(
            "the run folder {} holds checkpoints in layout {} but this build reads layout {FORMAT} (an older candor wrote them); start the run afresh: move the folder away or set checkpoint.resume = false",
            r.run_dir().display(),
            s.format
        );
    }
    if s.fingerprint != fingerprint(r) {
        bail!(
            "the run folder {} holds checkpoints of a run with other [model]/[train]/[optim]/[lora]/[curriculum]/[weighting] settings; use another run_dir or set checkpoint.resume = false",
            r.run_dir().display()
        );
    }
    Ok(())
}

fn step_dirs(run: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let mut out = vec![];
    if !run.exists() {
        return Ok(out);
    }
    for e in std::fs::read_dir(run)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(n) = name
            .strip_prefix("step-")
            .and_then(|n| n.parse::<usize>().ok())
        {
            if e.path().join("state.json").exists() {
                out.push((n, e.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The newest complete checkpoint.
pub fn latest(run: &Path) -> Result<Option<(PathBuf, TrainState)>> {
    match step_dirs(run)?.pop() {
        None => Ok(None),
        Some((_, dir)) => {
            let s: TrainState =
                serde_json::from_str(&std::fs::read_to_string(dir.join("state.json"))?)
                    .with_context(|| format!("parsing {}", dir.join("state.json").display()))?;
            Ok(Some((dir, s)))
        }
    }
}

pub fn save<B: AutodiffBackend>(
    run: &Path,
    r: &Recipe,
    model: &Llama<B>,
    opt: &AdamW<B>,
    step: usize,
) -> Result<()> {
    let name = format!("step-{step:06}");
    let tmp = run.join(format!(".{name}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let rec = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    model
        .clone()
        .save_file(tmp.join("model"), &rec)
        .map_err(|e| anyhow::anyhow!("saving the model record: {e}"))?;
    let mut t = BTreeMap::new();
    for (i, mv) in moments_to_host(&opt.moments).into_iter().enumerate() {
        if let Some((m, v)) = mv {
            t.insert(
                format!("m.{i}"),
                HostTensor {
                    shape: vec![m.len()],
                    data: m,
                },
            );
            t.insert(
                format!("v.{i}"),
                HostTensor {
                    shape: vec![v.len()],
                    data: v,
                },
            );
        }
    }
    write_safetensors(&tmp.join("optimizer.safetensors"), &t, SaveDtype::F32)?;
    let state = TrainState {
        step,
        optimizer_steps: opt.t,
        fingerprint: fingerprint(r),
        format: FORMAT,
    };
    write_atomic(
        &tmp.join("state.json"),
        serde_json::to_string_pretty(&state)?.as_bytes(),
    )?;
    let dst = run.join(&name);
    if dst.exists() {
        std::fs::remove_dir_all(&dst)?;
    }
    std::fs::rename(&tmp, &dst)
        .with_context(|| format!("renaming {} to {}", tmp.display(), dst.display()))?;
    let dirs = step_dirs(run)?;
    if dirs.len() > r.checkpoint.keep {
        for (_, d) in &dirs[..dirs.len() - r.checkpoint.keep] {
            std::fs::remove_dir_all(d)?;
        }
    }
    Ok(())
}

/// Restore the module and optimizer state from a checkpoint folder.
pub fn load<B: AutodiffBackend>(
    dir: &Path,
    model: Llama<B>,
    opt: &mut AdamW<B>,
    device: &B::Device,
) -> Result<Llama<B>> {
    let rec = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    let model = model
        .load_file(dir.join("model"), &rec, device)
        .map_err(|e| anyhow::anyhow!("loading {}: {e}", dir.join("model.mpk").display()))?;
    let state: TrainState =
        serde_json::from_str(&std::fs::read_to_string(dir.join("state.json"))?)?;
    let mut t = read_safetensors_file(&dir.join("optimizer.safetensors"))?;
    let n = t.keys().filter(|k| k.starts_with("m.")).count();
    let mut moments = vec![];
    for i in 0..n {
        let mut get = |k: String| -> Result<Vec<f32>> {
            let h = t
                .remove(&k)
                .with_context(|| format!("optimizer state: `{k}` is missing"))?;
            Ok(h.data)
        };
        // host moments; the first step moves them to the device on GPU backends
        moments.push(Some(Moments::Host(
            get(format!("m.{i}"))?,
            get(format!("v.{i}"))?,
        )));
    }
    opt.moments = moments;
    opt.t = state.optimizer_steps;
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_of_another_layout_are_refused() {
        let r = Recipe::parse("[model]\npreset = \"tiny\"\ntokenizer = \"byte\"\n").unwrap();
        let mut s = TrainState {
            step: 5,
            optimizer_steps: 5,
            fingerprint: fingerprint(&r),
            format: FORMAT,
        };
        assert!(check_compatible(&s, &r).is_ok());
        // a state.json from before the field existed
        let old: TrainState = serde_json::from_str(&format!(
            "{{\"step\":5,\"optimizer_steps\":5,\"fingerprint\":{}}}",
            serde_json::to_string(&s.fingerprint).unwrap()
        ))
        .unwrap();
        let err = check_compatible(&old, &r).unwrap_err().to_string();
        assert!(
            err.contains("layout 0") && err.contains("resume = false"),
            "{err}"
        );
        s.fingerprint.push('x');
        assert!(check_compatible(&s, &r).is_err());
    }
}
