//! HuggingFace checkpoints in and out: `model.safetensors` (or sharded with
//! `model.safetensors.index.json`), HF tensor names written out at the load site.

use crate::config::ModelConfig;
use crate::model::{Attention, Block, Linear, Llama, Mlp, RmsNorm};
use crate::tokenizer::Tokenizer;
use anyhow::{anyhow, bail, Context, Result};
use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// Storage dtype of an exported checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveDtype {
    F32,
    Bf16,
}

impl SaveDtype {
    pub fn torch_name(self) -> &'static str {
        match self {
            SaveDtype::F32 => "float32",
            SaveDtype::Bf16 => "bfloat16",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "f32" | "float32" => Ok(SaveDtype::F32),
            "bf16" | "bfloat16" => Ok(SaveDtype::Bf16),
            other => bail!("dtype `{other}` is not supported for export (allowed: f32, bf16)"),
        }
    }
}

/// A tensor read from disk, converted to f32.
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Every tensor of a folder's safetensors file(s), by name, as f32.
pub fn read_safetensors_dir(dir: &Path) -> Result<BTreeMap<String, HostTensor>> {
    let mut out = BTreeMap::new();
    for f in weight_files(dir)? {
        out.append(&mut read_safetensors_file(&f)?);
    }
    Ok(out)
}

/// The safetensors files of an HF folder: `model.safetensors`, or the shards its
/// `model.safetensors.index.json` names.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    if single.exists() {
        Ok(vec![single])
    } else if index.exists() {
        let text = std::fs::read_to_string(&index)
            .with_context(|| format!("reading {}", index.display()))?;
        let idx: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", index.display()))?;
        let map = idx["weight_map"]
            .as_object()
            .ok_or_else(|| anyhow!("{}: no weight_map", index.display()))?;
        let set: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
        Ok(set.into_iter().map(|f| dir.join(f)).collect())
    } else {
        bail!(
            "{}: neither model.safetensors nor model.safetensors.index.json found",
            dir.display()
        );
    }
}

/// Each tensor's shape, read from the safetensors headers alone (no weight is read), so that a
/// config can be checked against what the files hold before anything is allocated for it.
pub fn read_safetensors_shapes(files: &[PathBuf]) -> Result<BTreeMap<String, Vec<usize>>> {
    let mut out = BTreeMap::new();
    for f in files {
        let file = std::fs::File::open(f).with_context(|| format!("opening {}", f.display()))?;
        // SAFETY: the file is opened read-only and not modified while mapped.
        let mmap = unsafe { memmap2::Mmap::map(&file) }
            .with_context(|| format!("mapping {}", f.display()))?;
        let (_, meta) = SafeTensors::read_metadata(&mmap)
            .with_context(|| format!("{} is not a valid safetensors file", f.display()))?;
        for (name, info) in meta.tensors() {
            out.insert(name, info.shape.clone());
        }
    }
    Ok(out)
}

/// Every float tensor of one safetensors file, by name, as f32.
pub fn read_safetensors_file(f: &Path) -> Result<BTreeMap<String, HostTensor>> {
    let file = std::fs::File::open(f).with_context(|| format!("opening {}", f.display()))?;
    // SAFETY: the file is opened read-only and not modified while mapped.
    let mmap =
        unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("mapping {}", f.display()))?;
    safetensors_from_bytes(&mmap).with_context(|| format!("reading {}", f.display()))
}

/// Every float tensor of a safetensors file's bytes, by name, as f32. The `safetensors` crate
/// checks every offset against the buffer, so what is allocated is bounded by the input: at
/// most twice its size (bf16 → f32).
pub fn safetensors_from_bytes(bytes: &[u8]) -> Result<BTreeMap<String, HostTensor>> {
    let st = SafeTensors::deserialize(bytes).context("not a valid safetensors file")?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let bytes = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            // Integer buffers (BERT's `position_ids`) are not weights.
            Dtype::I64 | Dtype::I32 if name.ends_with("_ids") => continue,
            other => bail!("tensor `{name}` has dtype {other:?} (allowed: F32, BF16, F16)"),
        };
        out.insert(
            name,
            HostTensor {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    Ok(out)
}

/// The HF name and shape of every tensor the model has, in a stable order.
pub fn expected_tensors(c: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (d, qd, kvd, ff) = (
        c.hidden_size,
        c.num_attention_heads * c.head_dim,
        c.num_key_value_heads * c.head_dim,
        c.intermediate_size,
    );
    let mut v = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![c.vocab_size, d],
    )];
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        v.push((format!("{p}.input_layernorm.weight"), vec![d]));
        for (n, out, inp, bias) in [
            ("q_proj", qd, d, c.qkv_bias),
            ("k_proj", kvd, d, c.qkv_bias),
            ("v_proj", kvd, d, c.qkv_bias),
            ("o_proj", d, qd, c.o_bias),
        ] {
            v.push((format!("{p}.self_attn.{n}.weight"), vec![out, inp]));
            if bias {
                v.push((format!("{p}.self_attn.{n}.bias"), vec![out]));
            }
        }
        v.push((format!("{p}.post_attention_layernorm.weight"), vec![d]));
        for (n, out, inp) in [
            ("gate_proj", ff, d),
            ("up_proj", ff, d),
            ("down_proj", d, ff),
        ] {
            v.push((format!("{p}.mlp.{n}.weight"), vec![out, inp]));
            if c.mlp_bias {
                v.push((format!("{p}.mlp.{n}.bias"), vec![out]));
            }
        }
    }
    v.push(("model.norm.weight".into(), vec![d]));
    if !c.tie_word_embeddings {
        v.push(("lm_head.weight".into(), vec![c.vocab_size, d]));
    }
    v
}

/// How many problems an error lists before it only counts the rest.
const SHOWN_PROBLEMS: usize = 10;

/// `problems`, one per line, the first [`SHOWN_PROBLEMS`] shown and the rest counted, so an
/// error about a hostile file stays a few lines long.
pub fn list_problems(problems: &[String]) -> String {
    let mut s = problems
        .iter()
        .take(SHOWN_PROBLEMS)
        .map(|p| format!("\n  {p}"))
        .collect::<String>();
    if problems.len() > SHOWN_PROBLEMS {
        s += &format!("\n  … and {} more", problems.len() - SHOWN_PROBLEMS);
    }
    s
}

/// Check that `tensors` holds exactly what `config` needs; one error lists the problems.
pub fn check_tensors(c: &ModelConfig, tensors: &BTreeMap<String, HostTensor>) -> Result<()> {
    let shapes: BTreeMap<String, Vec<usize>> = tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.shape.clone()))
        .collect();
    check_shapes(c, &shapes)
}

/// Check tensor names and shapes (from the weights, or their headers alone) against the
/// config. A config asking for more layers than the weights hold is refused before the
/// expected list is built, so a hostile `num_hidden_layers` costs nothing.
pub fn check_shapes(c: &ModelConfig, shapes: &BTreeMap<String, Vec<usize>>) -> Result<()> {
    let held = shapes
        .keys()
        .filter_map(|n| {
            n.strip_prefix("model.layers.")?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .map_or(0, |i| i + 1);
    if c.num_hidden_layers > held {
        bail!(
            "config.json says num_hidden_layers = {}, but the weights hold {held} layers \
             ({} tensors in all)",
            c.num_hidden_layers,
            shapes.len()
        );
    }
    let expected = expected_tensors(c);
    let names: BTreeSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    let mut problems = vec![];
    for (name, shape) in &expected {
        match shapes.get(name) {
            None => problems.push(format!(
                "missing tensor `{name}` (expected shape {shape:?})"
            )),
            Some(s) if s != shape => problems.push(format!(
                "tensor `{name}` has shape {s:?}, expected {shape:?}"
            )),
            _ => {}
        }
    }
    for (name, shape) in shapes {
        let tolerated = name.ends_with("rotary_emb.inv_freq")
            || (name == "lm_head.weight" && c.tie_word_embeddings);
        if !names.contains(name.as_str()) && !tolerated {
            problems.push(format!("unexpected tensor `{name}` (shape {shape:?})"));
        }
    }
    if !problems.is_empty() {
        bail!(
            "checkpoint does not match the config ({} problems):{}",
            problems.len(),
            list_problems(&problems)
        );
    }
    Ok(())
}

/// The environment variable that lets a model with NaN or infinite weights load anyway.
pub const ALLOW_NON_FINITE: &str = "CANDOR_ALLOW_NON_FINITE";

/// Refuse weights holding NaN or ±Inf (they give meaningless answers with finite-looking
/// log-probs), naming each tensor; `CANDOR_ALLOW_NON_FINITE=1` loads them anyway.
pub fn check_finite(tensors: &BTreeMap<String, HostTensor>) -> Result<()> {
    let problems: Vec<String> = tensors
        .iter()
        .filter_map(|(name, t)| {
            // one pass over the values (a load reads every weight once more, no more)
            let (nan, inf) = t.data.iter().fold((0usize, 0usize), |(n, i), x| {
                (n + x.is_nan() as usize, i + x.is_infinite() as usize)
            });
            (nan + inf > 0).then(|| {
                format!(
                    "tensor `{name}`: {nan} NaN and {inf} infinite of {} values",
                    t.data.len()
                )
            })
        })
        .collect();
    if problems.is_empty() || std::env::var(ALLOW_NON_FINITE).is_ok_and(|v| v == "1") {
        return Ok(());
    }
    bail!(
        "{} tensor(s) hold non-finite weights (a damaged or hostile checkpoint):{}\n\
         set {ALLOW_NON_FINITE}=1 to load it anyway",
        problems.len(),
        list_problems(&problems)
    )
}

/// Move one (already checked) tensor out of the map onto the device.
fn take<B: Backend, const D: usize>(
    t: &mut BTreeMap<String, HostTensor>,
    name: &str,
    device: &B::Device,
) -> Tensor<B, D> {
    let h = t.remove(name).expect("checked");
    Tensor::from_data(TensorData::new(h.data, h.shape), device)
}

/// Build the model from HF-named host tensors (checked first).
pub fn model_from_tensors<B: Backend>(
    c: &ModelConfig,
    mut t: BTreeMap<String, HostTensor>,
    device: &B::Device,
) -> Result<Llama<B>> {
    check_tensors(c, &t)?;
    check_finite(&t)?;
    let t = &mut t;
    // `check_tensors` rejects unexpected tensors, so a bias is present exactly when the config has it.
    let linear = |t: &mut BTreeMap<String, HostTensor>, p: &str| {
        let bias = format!("{p}.bias");
        let bias = t.contains_key(&bias).then(|| take(t, &bias, device));
        Linear::new(take(t, &format!("{p}.weight"), device), bias)
    };
    let norm = |t: &mut BTreeMap<String, HostTensor>, name: &str| {
        RmsNorm::new(take(t, name, device), c.rms_norm_eps)
    };
    let layers = (0..c.num_hidden_layers)
        .map(|i| {
            let p = format!("model.layers.{i}");
            Block {
                input_layernorm: norm(t, &format!("{p}.input_layernorm.weight")),
                self_attn: Attention {
                    q_proj: linear(t, &format!("{p}.self_attn.q_proj")),
                    k_proj: linear(t, &format!("{p}.self_attn.k_proj")),
                    v_proj: linear(t, &format!("{p}.self_attn.v_proj")),
                    o_proj: linear(t, &format!("{p}.self_attn.o_proj")),
                },
                post_attention_layernorm: norm(t, &format!("{p}.post_attention_layernorm.weight")),
                mlp: Mlp {
                    gate_proj: linear(t, &format!("{p}.mlp.gate_proj")),
                    up_proj: linear(t, &format!("{p}.mlp.up_proj")),
                    down_proj: linear(t, &format!("{p}.mlp.down_proj")),
                },
            }
        })
        .collect();
    Ok(Llama {
        embed_tokens: Param::from_tensor(take(t, "model.embed_tokens.weight", device)),
        layers,
        norm: norm(t, "model.norm.weight"),
        lm_head: (!c.tie_word_embeddings).then(|| linear(t, "lm_head")),
        config: c.clone(),
        compute: burn::tensor::DType::F32,
    })
}

/// The error for a model folder that is not there: what it should hold and where to get the
/// ones the recipes use.
pub fn no_model_folder(dir: &Path) -> String {
    format!(
        "no model folder at {} (an HF folder with config.json, model.safetensors and \
         tokenizer.json; checkpoints/README.md says how to make the ones the recipes use)",
        dir.display()
    )
}

/// Load `config.json` + safetensors from an HF folder (a folder that is not there is an error
/// saying what it should hold).
pub fn load_model<B: Backend>(dir: &Path, device: &B::Device) -> Result<Llama<B>> {
    if !dir.is_dir() {
        bail!("{}", no_model_folder(dir));
    }
    let config = ModelConfig::from_hf_file(&dir.join("config.json"))?;
    let files = weight_files(dir)?;
    // the config against the headers first: nothing is read or allocated for a config the
    // weights cannot back
    check_shapes(&config, &read_safetensors_shapes(&files)?)
        .with_context(|| format!("loading {}", dir.display()))?;
    let mut tensors = BTreeMap::new();
    for f in &files {
        tensors.append(&mut read_safetensors_file(f)?);
    }
    model_from_tensors(&config, tensors, device)
        .with_context(|| format!("loading {}", dir.display()))
}

/// Load an HF folder's model and its `tokenizer.json` together, refusing a tokenizer whose ids
/// go past the model's embedding rows ([`Tokenizer::check_fits`]).
pub fn load_model_and_tokenizer<B: Backend>(
    dir: &Path,
    device: &B::Device,
) -> Result<(Llama<B>, Tokenizer)> {
    let model = load_model::<B>(dir, device)?;
    let tok = Tokenizer::load(dir)?;
    tok.check_fits(model.config.vocab_size)
        .with_context(|| format!("loading {}", dir.display()))?;
    Ok((model, tok))
}

fn host<B: Backend, const D: usize>(p: &Param<Tensor<B, D>>) -> HostTensor {
    host_tensor(p.val())
}

fn host_tensor<B: Backend, const D: usize>(t: Tensor<B, D>) -> HostTensor {
    HostTensor {
        shape: t.dims().to_vec(),
        data: t.into_data().iter::<f32>().collect(),
    }
}

/// The model's tensors under their HF names (the inverse of [`model_from_tensors`]).
pub fn model_to_tensors<B: Backend>(m: &Llama<B>) -> BTreeMap<String, HostTensor> {
    let mut out = BTreeMap::new();
    out.insert("model.embed_tokens.weight".into(), host(&m.embed_tokens));
    let lin = |out: &mut BTreeMap<String, HostTensor>, p: String, l: &Linear<B>| {
        // `Linear` holds `[in, out]`; HF's `weight` is `[out, in]`
        out.insert(
            format!("{p}.weight"),
            host_tensor(l.weight.val().transpose()),
        );
        if let Some(b) = &l.bias {
            out.insert(format!("{p}.bias"), host(b));
        }
    };
    for (i, layer) in m.layers.iter().enumerate() {
        let p = format!("model.layers.{i}");
        out.insert(
            format!("{p}.input_layernorm.weight"),
            host(&layer.input_layernorm.weight),
        );
        out.insert(
            format!("{p}.post_attention_layernorm.weight"),
            host(&layer.post_attention_layernorm.weight),
        );
        lin(
            &mut out,
            format!("{p}.self_attn.q_proj"),
            &layer.self_attn.q_proj,
        );
        lin(
            &mut out,
            format!("{p}.self_attn.k_proj"),
            &layer.self_attn.k_proj,
        );
        lin(
            &mut out,
            format!("{p}.self_attn.v_proj"),
            &layer.self_attn.v_proj,
        );
        lin(
            &mut out,
            format!("{p}.self_attn.o_proj"),
            &layer.self_attn.o_proj,
        );
        lin(&mut out, format!("{p}.mlp.gate_proj"), &layer.mlp.gate_proj);
        lin(&mut out, format!("{p}.mlp.up_proj"), &layer.mlp.up_proj);
        lin(&mut out, format!("{p}.mlp.down_proj"), &layer.mlp.down_proj);
    }
    out.insert("model.norm.weight".into(), host(&m.norm.weight));
    if let Some(head) = &m.lm_head {
        lin(&mut out, "lm_head".into(), head);
    }
    out
}

/// Write `tensors` as one safetensors file with metadata `format=pt` (HF refuses others),
/// atomically (temp file + rename).
pub fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, HostTensor>,
    dtype: SaveDtype,
) -> Result<()> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, t)| {
            let b = match dtype {
                SaveDtype::F32 => t.data.iter().flat_map(|x| x.to_le_bytes()).collect(),
                SaveDtype::Bf16 => t
                    .data
                    .iter()
                    .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                    .collect(),
            };
            (n.clone(), t.shape.clone(), b)
        })
        .collect();
    let st_dtype = match dtype {
        SaveDtype::F32 => Dtype::F32,
        SaveDtype::Bf16 => Dtype::BF16,
    };
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(n, s, b)| {
            Ok((
                n.clone(),
                safetensors::tensor::TensorView::new(st_dtype, s.clone(), b)?,
            ))
        })
        .collect::<Result<_>>()?;
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let data = safetensors::serialize(views, Some(meta))?;
    write_atomic(path, &data)
}

/// Write a file so that readers see either the old or the new content, never a torn one.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temp file in {}", dir.display()))?;
    tmp.write_all(data)
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// Export an HF folder: `config.json`, `model.safetensors`, `generation_config.json`, and the
/// tokenizer files copied from `tokenizer_from` when given.
pub fn export_model<B: Backend>(
    m: &Llama<B>,
    dir: &Path,
    dtype: SaveDtype,
    tokenizer_from: Option<&Path>,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_safetensors(&dir.join("model.safetensors"), &model_to_tensors(m), dtype)?;
    let tok = match tokenizer_from {
        Some(src) if src.join("tokenizer.json").exists() => Some(Tokenizer::load(src)?),
        _ => None,
    };
    write_config_files(&m.config, dir, dtype, tok.as_ref())?;
    if let Some(src) = tokenizer_from {
        copy_tokenizer_files(src, dir)?;
    }
    Ok(())
}

/// `config.json` and `generation_config.json`. A model config without special-token ids (a
/// preset model, trained from scratch) takes them from the tokenizer: its end-of-turn ids as
/// `eos_token_id`, its BOS, and its pad id, so that `transformers`' `generate` stops where
/// candor's does.
pub fn write_config_files(
    c: &ModelConfig,
    dir: &Path,
    dtype: SaveDtype,
    tok: Option<&Tokenizer>,
) -> Result<()> {
    let mut c = c.clone();
    let mut pad = None;
    if let Some(t) = tok {
        if c.eos_token_ids.is_empty() {
            c.eos_token_ids = t.stop_ids.clone();
        }
        if c.bos_token_id.is_none() {
            c.bos_token_id = t.bos_token.as_deref().and_then(|b| t.inner.token_to_id(b));
        }
        pad = Some(t.pad_id);
    }
    let mut hf = c.to_hf_json(dtype.torch_name());
    if let Some(p) = pad {
        hf["pad_token_id"] = p.into();
    }
    write_atomic(
        &dir.join("config.json"),
        serde_json::to_string_pretty(&hf)?.as_bytes(),
    )?;
    let mut gen = serde_json::json!({ "_from_model_config": true });
    if let Some(b) = c.bos_token_id {
        gen["bos_token_id"] = b.into();
    }
    if !c.eos_token_ids.is_empty() {
        gen["eos_token_id"] = serde_json::json!(c.eos_token_ids);
    }
    if let Some(p) = pad {
        gen["pad_token_id"] = p.into();
    }
    write_atomic(
        &dir.join("generation_config.json"),
        serde_json::to_string_pretty(&gen)?.as_bytes(),
    )
}

pub const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
];

pub fn copy_tokenizer_files(src: &Path, dst: &Path) -> Result<()> {
    if src == dst {
        return Ok(());
    }
    for f in TOKENIZER_FILES {
        let p = src.join(f);
        if p.exists() {
            std::fs::copy(&p, dst.join(f)).with_context(|| format!("copying {}", p.display()))?;
        }
    }
    Ok(())
}

/// Identity of a model folder's weights for resume checks: its path, and the size and
/// modification time of `model.safetensors` (a retrained model of the same shape has the
/// same size, so the time is needed). `None` when there is no such file.
pub fn weights_fingerprint(dir: &Path) -> Option<String> {
    let meta = std::fs::metadata(dir.join("model.safetensors")).ok()?;
    let mtime = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos();
    Some(format!(
        "{} ({} bytes, modified {mtime} ns)",
        dir.display(),
        meta.len()
    ))
}
