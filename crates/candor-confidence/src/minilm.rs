//! all-MiniLM-L6-v2 sentence embeddings in Burn: a BERT encoder (post-norm, erf GELU, absolute
//! positions), mean pooling over the attention mask, L2 normalisation — what
//! sentence-transformers computes. Loaded from an HF folder (`scripts/fetch-minilm.sh`); the HF
//! tensor names are written where they are loaded.

use crate::similarity::Similarity;
use anyhow::{anyhow, bail, Context, Result};
use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use candor_model::checkpoint::{read_safetensors_dir, HostTensor};
use candor_model::model::Linear;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// sentence-transformers' `max_seq_length` for this model.
const MAX_TOKENS: usize = 256;

#[derive(serde::Deserialize)]
struct BertConfig {
    hidden_size: usize,
    num_attention_heads: usize,
    num_hidden_layers: usize,
    layer_norm_eps: f64,
    #[serde(default)]
    hidden_act: Option<String>,
}

#[derive(Module, Debug)]
struct LayerNorm<B: Backend> {
    weight: Param<Tensor<B, 1>>,
    bias: Param<Tensor<B, 1>>,
    #[module(skip)]
    eps: f64,
}

impl<B: Backend> LayerNorm<B> {
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        candor_model::fused::layer_norm(x, self.weight.val(), self.bias.val(), self.eps)
    }
}

#[derive(Module, Debug)]
struct Layer<B: Backend> {
    query: Linear<B>,
    key: Linear<B>,
    value: Linear<B>,
    attn_out: Linear<B>,
    attn_norm: LayerNorm<B>,
    intermediate: Linear<B>,
    output: Linear<B>,
    out_norm: LayerNorm<B>,
}

#[derive(Module, Debug)]
pub struct Encoder<B: Backend> {
    word: Param<Tensor<B, 2>>,
    position: Param<Tensor<B, 2>>,
    token_type: Param<Tensor<B, 2>>,
    emb_norm: LayerNorm<B>,
    layers: Vec<Layer<B>>,
    #[module(skip)]
    heads: usize,
}

/// The embedding model with its tokenizer.
pub struct MiniLm<B: Backend> {
    encoder: Encoder<B>,
    tokenizer: tokenizers::Tokenizer,
    device: B::Device,
    /// Embeddings already computed, by text (SAR compares the same texts many times).
    cache: HashMap<String, Vec<f32>>,
    pub batch_size: usize,
}

struct Weights(BTreeMap<String, HostTensor>);

impl Weights {
    fn take<B: Backend, const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
        device: &B::Device,
    ) -> Result<Tensor<B, D>> {
        let t = self
            .0
            .remove(name)
            .or_else(|| self.0.remove(&format!("bert.{name}")))
            .ok_or_else(|| anyhow!("MiniLM checkpoint: tensor `{name}` is missing"))?;
        if t.shape != shape {
            bail!(
                "MiniLM checkpoint: tensor `{name}` has shape {:?}, expected {:?}",
                t.shape,
                shape
            );
        }
        Ok(Tensor::from_data(TensorData::new(t.data, shape), device))
    }
    fn linear<B: Backend>(
        &mut self,
        name: &str,
        d_in: usize,
        d_out: usize,
        device: &B::Device,
    ) -> Result<Linear<B>> {
        let w = self.take(&format!("{name}.weight"), [d_out, d_in], device)?;
        let b = self.take(&format!("{name}.bias"), [d_out], device)?;
        Ok(Linear::new(w, Some(b)))
    }
    fn norm<B: Backend>(
        &mut self,
        name: &str,
        d: usize,
        eps: f64,
        device: &B::Device,
    ) -> Result<LayerNorm<B>> {
        // Old BERT checkpoints name LayerNorm parameters gamma/beta.
        let (w, b) = if self.0.contains_key(&format!("{name}.gamma")) {
            ("gamma", "beta")
        } else {
            ("weight", "bias")
        };
        Ok(LayerNorm {
            weight: Param::from_tensor(self.take(&format!("{name}.{w}"), [d], device)?),
            bias: Param::from_tensor(self.take(&format!("{name}.{b}"), [d], device)?),
            eps,
        })
    }
}

impl<B: Backend> MiniLm<B> {
    /// Load an HF BERT sentence-embedding folder (config.json, model.safetensors, tokenizer.json).
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let c: BertConfig = serde_json::from_str(
            &std::fs::read_to_string(&cfg_path)
                .with_context(|| format!("reading {}", cfg_path.display()))?,
        )
        .with_context(|| format!("parsing {}", cfg_path.display()))?;
        if let Some(act) = c.hidden_act.as_deref().filter(|a| *a != "gelu") {
            bail!(
                "{}: hidden_act `{act}` is not supported (gelu)",
                cfg_path.display()
            );
        }
        let mut w = Weights(read_safetensors_dir(dir)?);
        let d = c.hidden_size;
        let vocab = w
            .0
            .get("embeddings.word_embeddings.weight")
            .or_else(|| w.0.get("bert.embeddings.word_embeddings.weight"))
            .map(|t| t.shape[0])
            .ok_or_else(|| anyhow!("MiniLM checkpoint: no embeddings.word_embeddings.weight"))?;
        let ffn =
            w.0.get("encoder.layer.0.intermediate.dense.weight")
                .or_else(|| w.0.get("bert.encoder.layer.0.intermediate.dense.weight"))
                .map(|t| t.shape[0])
                .ok_or_else(|| anyhow!("MiniLM checkpoint: no encoder.layer.0.intermediate"))?;
        let n_pos =
            w.0.get("embeddings.position_embeddings.weight")
                .or_else(|| w.0.get("bert.embeddings.position_embeddings.weight"))
                .map(|t| t.shape[0])
                .unwrap_or(512);
        let eps = c.layer_norm_eps;
        let word = w.take("embeddings.word_embeddings.weight", [vocab, d], device)?;
        let position = w.take("embeddings.position_embeddings.weight", [n_pos, d], device)?;
        let token_type = w.take("embeddings.token_type_embeddings.weight", [2, d], device)?;
        let emb_norm = w.norm("embeddings.LayerNorm", d, eps, device)?;
        let mut layers = vec![];
        for i in 0..c.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            layers.push(Layer {
                query: w.linear(&format!("{p}.attention.self.query"), d, d, device)?,
                key: w.linear(&format!("{p}.attention.self.key"), d, d, device)?,
                value: w.linear(&format!("{p}.attention.self.value"), d, d, device)?,
                attn_out: w.linear(&format!("{p}.attention.output.dense"), d, d, device)?,
                attn_norm: w.norm(&format!("{p}.attention.output.LayerNorm"), d, eps, device)?,
                intermediate: w.linear(&format!("{p}.intermediate.dense"), d, ffn, device)?,
                output: w.linear(&format!("{p}.output.dense"), ffn, d, device)?,
                out_norm: w.norm(&format!("{p}.output.LayerNorm"), d, eps, device)?,
            });
        }
        let mut tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| anyhow!("{}: {e}", dir.join("tokenizer.json").display()))?;
        tokenizer
            .with_truncation(None)
            .map_err(|e| anyhow!("tokenizer: {e}"))?;
        tokenizer.with_padding(None);
        Ok(Self {
            encoder: Encoder {
                word: Param::from_tensor(word),
                position: Param::from_tensor(position),
                token_type: Param::from_tensor(token_type),
                emb_norm,
                layers,
                heads: c.num_attention_heads,
            },
            tokenizer,
            device: device.clone(),
            cache: HashMap::new(),
            batch_size: 64,
        })
    }

    fn ids(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| anyhow!("MiniLM tokenizer: {e}"))?;
        let mut ids = enc.get_ids().to_vec();
        if ids.len() > MAX_TOKENS {
            let sep = *ids.last().expect("non-empty");
            ids.truncate(MAX_TOKENS - 1);
            ids.push(sep);
        }
        Ok(ids)
    }

    /// L2-normalised mean-pooled embeddings, one per text.
    pub fn embed(&mut self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let mut todo: Vec<&String> = texts
            .iter()
            .filter(|t| !self.cache.contains_key(*t))
            .collect();
        todo.sort();
        todo.dedup();
        // batches of similar length: a batch is padded to its longest text
        let mut rows: Vec<(Vec<u32>, &String)> = todo
            .into_iter()
            .map(|t| Ok((self.ids(t)?, t)))
            .collect::<Result<_>>()?;
        rows.sort_by_key(|r| r.0.len());
        // on a rayon worker: each layer is a few dozen parallel ops (see `on_cpu_pool`)
        let embedded: Vec<Vec<f32>> = candor_model::device::on_cpu_pool::<B, _>(|| {
            rows.chunks(self.batch_size.max(1))
                .flat_map(|chunk| {
                    let ids: Vec<Vec<u32>> = chunk.iter().map(|r| r.0.clone()).collect();
                    self.encode_batch(&ids)
                })
                .collect()
        });
        for ((_, t), e) in rows.iter().zip(embedded) {
            self.cache.insert((*t).clone(), e);
        }
        Ok(texts.iter().map(|t| self.cache[t].clone()).collect())
    }

    fn encode_batch(&self, rows: &[Vec<u32>]) -> Vec<Vec<f32>> {
        let e = &self.encoder;
        let dev = &self.device;
        let (b, n) = (rows.len(), rows.iter().map(|r| r.len()).max().unwrap_or(1));
        let mut ids = vec![0i64; b * n];
        for (i, r) in rows.iter().enumerate() {
            for (j, &t) in r.iter().enumerate() {
                ids[i * n + j] = t as i64;
            }
        }
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [b, n]), dev);
        let d = e.word.dims()[1];
        let pos = e.position.val().narrow(0, 0, n).unsqueeze_dim::<3>(0);
        let tt = e.token_type.val().narrow(0, 0, 1).unsqueeze_dim::<3>(0);
        let x = burn::tensor::module::embedding(e.word.val(), ids);
        let mut x = candor_model::fused::add(candor_model::fused::add(x, pos), tt);
        x = e.emb_norm.forward(x);
        let (h, hd) = (e.heads, d / e.heads);
        // key padding mask, true = masked, [b, 1, n, n] (shared by the heads): built whole here,
        // since attention reads a contiguous mask and would copy an expanded view element by
        // element in every layer
        let mut masked = vec![false; b * n * n];
        for (i, r) in rows.iter().enumerate() {
            for q in masked[i * n * n..(i + 1) * n * n].chunks_mut(n) {
                q[r.len()..].fill(true);
            }
        }
        let mask = Tensor::<B, 4, Bool>::from_data(TensorData::new(masked, [b, 1, n, n]), dev);
        for l in &e.layers {
            let heads = |t: Tensor<B, 3>| t.reshape([b, n, h, hd]);
            let q = heads(l.query.forward(x.clone())).swap_dims(1, 2);
            let k = heads(l.key.forward(x.clone())).swap_dims(1, 2);
            let v = heads(l.value.forward(x.clone()));
            // softmax(q kᵀ / √hd) v per head: on the CPU backend the products go to gemm and
            // the scale-mask-softmax is one pass (SmolLM2's attention, with as many key/value
            // heads as query heads)
            let ctx = candor_model::fused::attention(q, k, v, &mask).reshape([b, n, d]);
            x = l
                .attn_norm
                .forward(candor_model::fused::add(l.attn_out.forward(ctx), x));
            let ff = match Linear::feed_forward(
                x.clone(),
                [&l.intermediate],
                &l.output,
                candor_model::fused::Activation::Gelu,
            ) {
                Ok(ff) => ff,
                Err(x) => l
                    .output
                    .forward(candor_model::fused::gelu(l.intermediate.forward(x))),
            };
            x = l.out_norm.forward(candor_model::fused::add(ff, x));
        }
        // mean over each text's own tokens, then L2 normalisation, on the host (as tensor ops
        // these were four broadcast passes, element by element on the CPU backend)
        let x = x.into_data().into_vec::<f32>().expect("f32 hidden states");
        rows.iter()
            .enumerate()
            .map(|(i, r)| {
                let mut p = vec![0f32; d];
                for t in x[i * n * d..].chunks(d).take(r.len()) {
                    p.iter_mut().zip(t).for_each(|(p, &v)| *p += v);
                }
                let count = r.len() as f32;
                p.iter_mut().for_each(|v| *v /= count);
                let norm = p.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                p.iter_mut().for_each(|v| *v /= norm);
                p
            })
            .collect()
    }

    /// Cosine similarity of two texts.
    pub fn cosine(&mut self, a: &str, b: &str) -> Result<f64> {
        let e = self.embed(&[a.to_string(), b.to_string()])?;
        Ok(dot(&e[0], &e[1]))
    }
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

impl<B: Backend> Similarity for MiniLm<B> {
    fn similarities(&mut self, pairs: &[(String, String)]) -> Result<Vec<f64>> {
        let texts: Vec<String> = pairs
            .iter()
            .flat_map(|(a, b)| [a.clone(), b.clone()])
            .collect();
        let e = self.embed(&texts)?;
        Ok(e.chunks(2).map(|p| dot(&p[0], &p[1])).collect())
    }
    fn name(&self) -> String {
        "all-minilm-l6-v2".into()
    }
    fn prefetch(&mut self, texts: &[String]) -> Result<()> {
        self.embed(texts).map(|_| ())
    }
}
