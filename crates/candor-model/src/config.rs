//! HuggingFace `config.json` → the runtime [`ModelConfig`] the decoder is built from.
//!
//! One decoder covers Llama 2/3.x, SmolLM/SmolLM2, Qwen2/2.5 and Mistral; what differs between
//! them (biases, tied head, RoPE scaling, head dim) is a field here, not a code path elsewhere.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// RoPE frequency scaling, as HF's `rope_scaling` object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// No scaling (HF writes `{"rope_type": "default"}` for some models).
    Default,
    /// Positions divided by `factor`.
    Linear { factor: f64 },
    /// Llama 3.1+: frequencies between the two wavelength bands are interpolated.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

/// Everything the decoder needs to know about its shape. Built from HF `config.json`
/// ([`ModelConfig::from_hf_json`]) or a preset ([`ModelConfig::preset`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// HF `model_type`: `llama`, `qwen2`, `mistral`.
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v projections (Qwen2 always; Llama when `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the attention output projection (Llama `attention_bias`).
    pub o_bias: bool,
    /// Biases on gate/up/down (Llama `mlp_bias`).
    pub mlp_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

/// The subset of HF's `config.json` that we read. Unknown keys are ignored (HF configs carry
/// many that do not change the computation), but the ones that would change it are rejected.
#[derive(Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    architectures: Option<Vec<String>>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    hidden_act: Option<String>,
    bos_token_id: Option<serde_json::Value>,
    eos_token_id: Option<serde_json::Value>,
}

fn ids(v: &Option<serde_json::Value>) -> Vec<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => {
            n.as_u64().map(|x| vec![x as u32]).unwrap_or_default()
        }
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => vec![],
    }
}

impl ModelConfig {
    pub fn from_hf_file(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_hf_json(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn from_hf_json(text: &str) -> Result<Self> {
        let hf: HfConfig =
            serde_json::from_str(text).context("config.json is not a Llama-family HF config")?;
        let model_type = hf
            .model_type
            .clone()
            .or_else(|| {
                hf.architectures
                    .as_ref()
                    .and_then(|a| a.first())
                    .map(|a| a.to_lowercase())
            })
            .unwrap_or_else(|| "llama".into());
        let (qkv_bias, o_bias) = match model_type.as_str() {
            "llama" | "mistral" => {
                let b = hf.attention_bias.unwrap_or(false);
                (b, b)
            }
            "qwen2" => (true, false),
            other => {
                bail!("model_type `{other}` is not supported (allowed: llama, mistral, qwen2)")
            }
        };
        if let Some(act) = &hf.hidden_act {
            if act != "silu" {
                bail!("hidden_act `{act}` is not supported (allowed: silu)");
            }
        }
        let kv = hf.num_key_value_heads.unwrap_or(hf.num_attention_heads);
        let head_dim = hf.head_dim.unwrap_or(
            hf.hidden_size
                .checked_div(hf.num_attention_heads)
                .unwrap_or(0),
        );
        let rope_scaling = match &hf.rope_scaling {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => {
                let mut v = v.clone();
                // Older configs spell the key `type`.
                if let Some(obj) = v.as_object_mut() {
                    if !obj.contains_key("rope_type") {
                        if let Some(t) = obj.remove("type") {
                            obj.insert("rope_type".into(), t);
                        }
                    }
                }
                let s: RopeScaling = serde_json::from_value(v.clone()).with_context(|| {
                    format!("rope_scaling {v} is not supported (allowed rope_type: default, linear, llama3)")
                })?;
                if s == RopeScaling::Default {
                    None
                } else {
                    Some(s)
                }
            }
        };
        let c = ModelConfig {
            model_type,
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_hidden_layers: hf.num_hidden_layers,
            num_attention_heads: hf.num_attention_heads,
            num_key_value_heads: kv,
            head_dim,
            rms_norm_eps: hf.rms_norm_eps.unwrap_or(1e-6),
            rope_theta: hf.rope_theta.unwrap_or(10_000.0),
            rope_scaling,
            max_position_embeddings: hf.max_position_embeddings.unwrap_or(2048),
            tie_word_embeddings: hf.tie_word_embeddings.unwrap_or(false),
            qkv_bias,
            o_bias,
            mlp_bias: hf.mlp_bias.unwrap_or(false),
            bos_token_id: ids(&hf.bos_token_id).first().copied(),
            eos_token_ids: ids(&hf.eos_token_id),
        };
        c.validate()?;
        Ok(c)
    }

    /// The values the decoder cannot run with (from config.json or GGUF metadata, both
    /// untrusted): sizes must be positive, heads must divide evenly, eps and RoPE numbers must
    /// be positive and finite. Sizes are checked against the weights separately
    /// (`checkpoint::check_shapes`).
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                bail!("{name} must be positive, got 0");
            }
        }
        // far above any published model, low enough that nothing sized from them overflows
        // or allocates absurdly before the weights are checked (RoPE tables, the expected
        // tensor list)
        for (name, v, max) in [
            ("vocab_size", self.vocab_size, 1 << 24),
            ("hidden_size", self.hidden_size, 1 << 20),
            ("intermediate_size", self.intermediate_size, 1 << 22),
            ("num_hidden_layers", self.num_hidden_layers, 1 << 16),
            ("num_attention_heads", self.num_attention_heads, 1 << 16),
            ("num_key_value_heads", self.num_key_value_heads, 1 << 16),
            ("head_dim", self.head_dim, 1 << 16),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                1 << 28,
            ),
        ] {
            if v > max {
                bail!("{name} = {v} is out of range (allowed: at most {max})");
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            bail!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.num_attention_heads,
                self.num_key_value_heads
            );
        }
        if !self.head_dim.is_multiple_of(2) {
            bail!("head_dim must be even for RoPE, got {}", self.head_dim);
        }
        let factor = match &self.rope_scaling {
            None | Some(RopeScaling::Default) => 1.0,
            Some(RopeScaling::Linear { factor }) | Some(RopeScaling::Llama3 { factor, .. }) => {
                *factor
            }
        };
        for (name, v) in [
            ("rms_norm_eps", self.rms_norm_eps),
            ("rope_theta", self.rope_theta),
            ("rope_scaling.factor", factor),
        ] {
            if !(v.is_finite() && v > 0.0) {
                bail!("{name} = {v} is out of range (allowed: a positive finite number)");
            }
        }
        Ok(())
    }

    /// HF `config.json` for this model, loadable by `transformers`.
    pub fn to_hf_json(&self, torch_dtype: &str) -> serde_json::Value {
        let arch = match self.model_type.as_str() {
            "qwen2" => "Qwen2ForCausalLM",
            "mistral" => "MistralForCausalLM",
            _ => "LlamaForCausalLM",
        };
        let mut v = serde_json::json!({
            "architectures": [arch],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": torch_dtype,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": match self.eos_token_ids.as_slice() {
                [] => serde_json::Value::Null,
                [one] => serde_json::json!(one),
                many => serde_json::json!(many),
            },
        });
        if self.model_type != "qwen2" {
            v["attention_bias"] = serde_json::json!(self.qkv_bias);
            v["mlp_bias"] = serde_json::json!(self.mlp_bias);
        } else {
            v["use_sliding_window"] = serde_json::json!(false);
        }
        v
    }

    /// Small models initialised from scratch. `tiny` (~3M parameters) is for tests and the demo.
    pub fn preset(name: &str, vocab_size: usize) -> Result<Self> {
        let (hidden, inter, layers, heads, kv) = match name {
            "tiny" => (192, 512, 4, 6, 2),
            "small" => (384, 1024, 8, 6, 2),
            "smollm2-135m" => (576, 1536, 30, 9, 3),
            other => bail!("unknown preset `{other}` (allowed: tiny, small, smollm2-135m)"),
        };
        Ok(ModelConfig {
            model_type: "llama".into(),
            vocab_size,
            hidden_size: hidden,
            intermediate_size: inter,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim: hidden / heads,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: None,
            max_position_embeddings: 2048,
            tie_word_embeddings: true,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            bos_token_id: None,
            eos_token_ids: vec![],
        })
    }

    /// RoPE inverse frequencies for `head_dim / 2` pairs, computed in f32 as HF does, with
    /// `rope_scaling` applied.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim;
        let base = self.rope_theta as f32;
        let mut inv: Vec<f32> = (0..d / 2)
            .map(|i| 1.0 / base.powf((2 * i) as f32 / d as f32))
            .collect();
        match &self.rope_scaling {
            Some(RopeScaling::Linear { factor }) => {
                inv.iter_mut().for_each(|f| *f /= *factor as f32)
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                let old = *original_max_position_embeddings as f64;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                for f in inv.iter_mut() {
                    let freq = *f as f64;
                    let wavelen = 2.0 * std::f64::consts::PI / freq;
                    let new = if wavelen < high_wavelen {
                        freq
                    } else if wavelen > low_wavelen {
                        freq / factor
                    } else {
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * freq / factor + smooth * freq
                    };
                    *f = new as f32;
                }
            }
            _ => {}
        }
        inv
    }
}
