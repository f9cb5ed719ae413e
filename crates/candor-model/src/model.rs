//! The Llama-family decoder: embeddings → N × (RMSNorm, GQA attention with rotate-half RoPE,
//! RMSNorm, SwiGLU MLP) → RMSNorm → output head (tied or untied).
//!
//! Weights keep HF's names and shapes, except that `Linear` holds its weight transposed
//! (`[in, out]`, see [`Linear`]); `checkpoint.rs` has the HF tensor names and transposes at the
//! load and export sites.

use crate::config::ModelConfig;
use crate::fused;
use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, Distribution, Int, Tensor, TensorData};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// Random weights drawn on the host from one seeded generator, in a fixed order, then uploaded:
/// a seed gives the same model on every backend and whatever else draws random numbers.
/// (`Tensor::random` draws from the device's generator, which differs between backends and,
/// on the CPU backend, is one global generator shared by every thread.)
pub struct HostRng(StdRng);

impl HostRng {
    pub fn new(seed: u64) -> Self {
        Self(StdRng::seed_from_u64(seed))
    }

    fn tensor<B: Backend, const D: usize>(
        &mut self,
        shape: [usize; D],
        dist: impl rand_distr::Distribution<f32>,
        device: &B::Device,
    ) -> Tensor<B, D> {
        let n = shape.iter().product();
        let data: Vec<f32> = (&mut self.0).sample_iter(dist).take(n).collect();
        Tensor::from_data(TensorData::new(data, shape), device)
    }

    /// Normal(0, std), as HF's `initializer_range`.
    pub fn normal<B: Backend, const D: usize>(
        &mut self,
        shape: [usize; D],
        std: f32,
        device: &B::Device,
    ) -> Tensor<B, D> {
        let dist = rand_distr::Normal::new(0.0, std).expect("a finite, non-negative std");
        self.tensor(shape, dist, device)
    }

    /// Uniform on [-bound, bound).
    pub fn uniform<B: Backend, const D: usize>(
        &mut self,
        shape: [usize; D],
        bound: f32,
        device: &B::Device,
    ) -> Tensor<B, D> {
        self.tensor(
            shape,
            rand_distr::Uniform::new(-bound, bound).unwrap(),
            device,
        )
    }
}

/// `t` in `dtype`; `t` itself, with no cast in the autodiff graph, when it already is. The
/// weights are f32 (the optimizer's precision); a bf16 model ([`Llama::compute`]) casts each
/// one to its activations' dtype where it is used, as `torch.autocast` does, so gradients
/// come back to the f32 weights through the cast.
pub fn to_dtype<B: Backend, const D: usize>(t: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if t.dtype() == dtype {
        t
    } else {
        t.cast(dtype)
    }
}

/// `y = x Wᵀ + b` (`W` is HF's `[out, in]` weight), plus an optional LoRA adapter.
///
/// The weight is held transposed, as a contiguous `[in, out]` tensor, so that the forward pass
/// is `x · weight` with a row-major right-hand side: with the `gemm` crate's AVX-512 kernels a
/// transposed right-hand side is slow at small batch (decode). Measured on the 2-core dev VM
/// with 2 threads: 16×1536×576 (down_proj, 16 rows) 14 GFLOP/s transposed vs 57 row-major,
/// 32×1536×576 31 vs 77.
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    /// `[in, out]`: HF's `weight` transposed.
    pub weight: Param<Tensor<B, 2>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
    pub lora: Option<Lora<B>>,
}

/// A LoRA adapter (Hu et al. 2021): `Δy = (alpha/rank) · dropout(x) Aᵀ Bᵀ`, `A` `[rank, in]`
/// initialised like PEFT (uniform ±1/√in), `B` `[out, rank]` zero, so training starts from the
/// base model. Dropout is active only on autodiff backends (training).
#[derive(Module, Debug)]
pub struct Lora<B: Backend> {
    pub a: Param<Tensor<B, 2>>,
    pub b: Param<Tensor<B, 2>>,
    #[module(skip)]
    pub scale: f64,
    #[module(skip)]
    pub dropout: f64,
}

impl<B: Backend> Linear<B> {
    /// From HF's `[out, in]` weight (transposed here, once, into a contiguous `[in, out]`).
    pub fn new(weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Self {
        let device = weight.device();
        let weight = Tensor::from_data(weight.transpose().into_data(), &device);
        Self {
            weight: Param::from_tensor(weight),
            bias: bias.map(Param::from_tensor),
            lora: None,
        }
    }

    /// Attach a fresh LoRA adapter (the base weight should be frozen by the caller).
    pub fn add_lora(
        &mut self,
        rank: usize,
        alpha: f64,
        dropout: f64,
        rng: &mut HostRng,
        device: &B::Device,
    ) {
        let [d_in, d_out] = self.weight.dims();
        let bound = 1.0 / (d_in as f32).sqrt();
        self.lora = Some(Lora {
            a: Param::from_tensor(rng.uniform([rank, d_in], bound, device)),
            b: Param::from_tensor(Tensor::zeros([d_out, rank], device)),
            scale: alpha / rank as f64,
            dropout,
        });
    }

    /// Fold the adapter into the weight: `W += scale · B A` (here `weight += scale · Aᵀ Bᵀ`,
    /// the weight being transposed); the adapter is removed.
    pub fn merge_lora(&mut self) {
        if let Some(l) = self.lora.take() {
            let delta = l.a.val().transpose().matmul(l.b.val().transpose()) * l.scale;
            let w = self.weight.val().detach() + delta.detach();
            self.weight = Param::from_tensor(w);
        }
    }

    /// Random init (normal, std 0.02 as HF's `initializer_range`), zero bias.
    pub fn init(
        d_in: usize,
        d_out: usize,
        bias: bool,
        rng: &mut HostRng,
        device: &B::Device,
    ) -> Self {
        let w = rng.normal([d_out, d_in], 0.02, device);
        Self::new(w, bias.then(|| Tensor::zeros([d_out], device)))
    }

    /// `down(act(ups(x)))` in one tiled pass where [`fused::feed_forward`] takes it (inference
    /// on the CPU backend, no LoRA adapter, more rows than a decoding step); `x` back
    /// otherwise, for the caller's op-by-op path.
    pub fn feed_forward<const D: usize, const U: usize>(
        x: Tensor<B, D>,
        ups: [&Self; U],
        down: &Self,
        act: fused::Activation,
    ) -> Result<Tensor<B, D>, Tensor<B, D>> {
        let projection = |l: &Self| (l.weight.val(), l.bias.as_ref().map(|b| b.val()));
        // an adapter's product is not in the block (fused::feed_forward checks the dtypes)
        if ups.iter().chain([&down]).any(|l| l.lora.is_some()) {
            return Err(x);
        }
        let dims = x.dims();
        let d_in = dims[D - 1];
        let rows = x.shape().num_elements() / d_in;
        let ups: Vec<_> = ups.iter().map(|l| projection(l)).collect();
        match fused::feed_forward(x.reshape([rows, d_in]), &ups, &projection(down), act) {
            Ok(y) => {
                let mut out = dims;
                out[D - 1] = y.dims()[1];
                Ok(y.reshape(out))
            }
            Err(x) => Err(x.reshape(dims)),
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dims = x.dims();
        let d_in = dims[D - 1];
        let rows = x.shape().num_elements() / d_in;
        let dt = x.dtype();
        let w = to_dtype(self.weight.val(), dt);
        let d_out = w.dims()[1];
        let x = x.reshape([rows, d_in]);
        let mut y = fused::matmul(x.clone(), w);
        if let Some(b) = &self.bias {
            y = fused::add(y, to_dtype(b.val(), dt).unsqueeze_dim(0));
        }
        if let Some(l) = &self.lora {
            let x = if l.dropout > 0.0 && B::ad_enabled(&x.device()) {
                let keep = 1.0 - l.dropout;
                let mask = x.random_like(Distribution::Bernoulli(keep));
                x * mask / keep
            } else {
                x
            };
            // the scale goes on the small `[r, out]` factor, not on the `[rows, out]` product
            let (a, b) = (to_dtype(l.a.val(), dt), to_dtype(l.b.val(), dt));
            let low = fused::matmul(fused::matmul(x, a.transpose()), b.transpose() * l.scale);
            y = y + low;
        }
        let mut out = dims;
        out[D - 1] = d_out;
        y.reshape(out)
    }
}

/// Root-mean-square norm, `x / sqrt(mean(x²) + eps) * weight`.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    #[module(skip)]
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    pub fn new(weight: Tensor<B, 1>, eps: f64) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            eps,
        }
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let w = to_dtype(self.weight.val(), x.dtype());
        fused::rms_norm(x, w, self.eps)
    }
}

#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub o_proj: Linear<B>,
}

#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub gate_proj: Linear<B>,
    pub up_proj: Linear<B>,
    pub down_proj: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = match Linear::feed_forward(
            x,
            [&self.gate_proj, &self.up_proj],
            &self.down_proj,
            fused::Activation::SwiGlu,
        ) {
            Ok(y) => return y,
            Err(x) => x,
        };
        let gate = fused::swiglu(self.gate_proj.forward(x.clone()), self.up_proj.forward(x));
        self.down_proj.forward(gate)
    }
}

#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    pub input_layernorm: RmsNorm<B>,
    pub self_attn: Attention<B>,
    pub post_attention_layernorm: RmsNorm<B>,
    pub mlp: Mlp<B>,
}

impl<B: Backend> Block<B> {
    /// This layer's projections by HF name, in the order `Llama::linears_mut` lists them.
    fn linears_mut(&mut self) -> [(&'static str, &mut Linear<B>); 7] {
        let (a, m) = (&mut self.self_attn, &mut self.mlp);
        [
            ("q_proj", &mut a.q_proj),
            ("k_proj", &mut a.k_proj),
            ("v_proj", &mut a.v_proj),
            ("o_proj", &mut a.o_proj),
            ("gate_proj", &mut m.gate_proj),
            ("up_proj", &mut m.up_proj),
            ("down_proj", &mut m.down_proj),
        ]
    }
}

/// The decoder. Field names follow HF (`model.embed_tokens`, `model.layers.N.…`, `lm_head`).
#[derive(Module, Debug)]
pub struct Llama<B: Backend> {
    pub embed_tokens: Param<Tensor<B, 2>>,
    pub layers: Vec<Block<B>>,
    pub norm: RmsNorm<B>,
    /// `None` when the output head is tied to `embed_tokens`.
    pub lm_head: Option<Linear<B>>,
    #[module(skip)]
    pub config: ModelConfig,
    /// The dtype the forward pass computes in: `F32`, or `BF16` for mixed precision (the
    /// weights stay f32; see [`to_dtype`]). Set with [`Llama::with_compute`].
    #[module(skip)]
    pub compute: DType,
}

/// Keys and values of the positions already seen, per layer: keys `[batch, kv_heads, seq,
/// head_dim]` (RoPE's output layout), values `[batch, seq, kv_heads, head_dim]` (the
/// projection's), each as attention reads it.
#[derive(Clone, Debug)]
pub struct KvCache<B: Backend> {
    pub layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    /// The cached rows the next forward continues, in order (a repeat copies a row; `None`:
    /// every row as it is). Applied with the new positions' keys and values in one copy
    /// ([`fused::append`]).
    pub rows: Option<Vec<usize>>,
    /// Positions to leave room for when the cache is copied (the tokens a generation may
    /// still add), so that the steps after fill the room in place ([`fused::append`]). 0:
    /// exactly as long as it is.
    pub reserve: usize,
}

impl<B: Backend> KvCache<B> {
    pub fn new(n_layers: usize) -> Self {
        Self {
            layers: vec![None; n_layers],
            rows: None,
            reserve: 0,
        }
    }
    pub fn seq_len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map(|(k, _)| k.dims()[2])
            .unwrap_or(0)
    }
    /// Continue from the given rows of the cache, in order, repeats allowed (dropping finished
    /// sequences, forking a row): taken by the next forward.
    pub fn select_rows(&mut self, rows: &[usize]) {
        self.rows = Some(match &self.rows {
            Some(earlier) => rows.iter().map(|&r| earlier[r]).collect(),
            None => rows.to_vec(),
        });
    }
}

/// Per-call inputs that describe where the new tokens sit: their RoPE angles and which key
/// positions each may attend to (causal + padding).
pub struct Positions<B: Backend> {
    /// `[batch·new, head_dim]` RoPE cosines and sines, one row per new position.
    pub cos: Tensor<B, 2>,
    pub sin: Tensor<B, 2>,
    /// `[batch, 1, group * new, past + new]`, true = masked out; rows repeat per query head of a
    /// KV group (see `Attention::forward`).
    pub mask: Tensor<B, 4, Bool>,
}

impl<B: Backend> Positions<B> {
    /// `valid[b][j]` says whether key position `j` (over past + new) of row `b` is a real token
    /// (false for left padding). Position ids count real tokens only, as HF does for left-padded
    /// batches. Padding queries may attend to themselves so that no softmax row is empty.
    pub fn new(
        config: &ModelConfig,
        valid: &[Vec<bool>],
        n_new: usize,
        device: &B::Device,
    ) -> Self {
        let batch = valid.len();
        let total = valid.first().map(|v| v.len()).unwrap_or(0);
        let past = total - n_new;
        let inv = config.rope_inv_freq();
        let (hd, half) = (config.head_dim, config.head_dim / 2);
        let (h, kv) = (config.num_attention_heads, config.num_key_value_heads);
        let group = h / kv;
        let mut cos = vec![0f32; batch * n_new * hd];
        let mut sin = vec![0f32; batch * n_new * hd];
        let mut mask = vec![true; batch * group * n_new * total];
        for (b, row) in valid.iter().enumerate() {
            assert_eq!(
                row.len(),
                total,
                "every row of `valid` must have the same length"
            );
            let mut pos = row[..past].iter().filter(|&&v| v).count();
            for i in 0..n_new {
                let q = past + i;
                let p = if row[q] { pos } else { 0 };
                if row[q] {
                    pos += 1;
                }
                let base = (b * n_new + i) * hd;
                for (f, &freq) in inv.iter().enumerate() {
                    let angle = p as f32 * freq;
                    let (s, c) = angle.sin_cos();
                    cos[base + f] = c;
                    cos[base + f + half] = c;
                    sin[base + f] = s;
                    sin[base + f + half] = s;
                }
                for r in 0..group {
                    let at = ((b * group + r) * n_new + i) * total;
                    for j in 0..=q {
                        mask[at + j] = !(row[j] || j == q);
                    }
                }
            }
        }
        Self {
            cos: Tensor::from_data(TensorData::new(cos, [batch * n_new, hd]), device),
            sin: Tensor::from_data(TensorData::new(sin, [batch * n_new, hd]), device),
            mask: Tensor::from_data(
                TensorData::new(mask, [batch, 1, group * n_new, total]),
                device,
            ),
        }
    }

    /// The same positions with the RoPE tables in `dtype` (what [`Llama::compute`] multiplies
    /// them with); in the same dtype, shared handles to the same tables (no copy).
    pub fn cast(&self, dtype: DType) -> Self {
        Self {
            cos: to_dtype(self.cos.clone(), dtype),
            sin: to_dtype(self.sin.clone(), dtype),
            mask: self.mask.clone(),
        }
    }

    /// The RoPE tables and mask rows of the new positions `from..` (all of them when `from` is
    /// 0), for queries at those positions only.
    fn queries_from(
        &self,
        from: usize,
        group: usize,
    ) -> (Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 4, Bool>) {
        if from == 0 {
            return (self.cos.clone(), self.sin.clone(), self.mask.clone());
        }
        let [b, _, rows, total] = self.mask.dims();
        let new = rows / group;
        let hd = self.cos.dims()[1];
        let table = |t: &Tensor<B, 2>| {
            let t = t
                .clone()
                .reshape([b, new, hd])
                .slice([0..b, from..new, 0..hd]);
            t.reshape([b * (new - from), hd])
        };
        let mask = self.mask.clone().reshape([b, group, new, total]);
        let mask = mask.slice([0..b, 0..group, from..new, 0..total]);
        (
            table(&self.cos),
            table(&self.sin),
            mask.reshape([b, 1, group * (new - from), total]),
        )
    }
}

/// `x` `[batch, seq, hidden]` at positions `from..` (`x` itself when `from` is 0).
fn positions_from<B: Backend>(x: Tensor<B, 3>, from: usize) -> Tensor<B, 3> {
    if from == 0 {
        return x;
    }
    let [b, t, d] = x.dims();
    x.slice([0..b, from..t, 0..d])
}

impl<B: Backend> Attention<B> {
    /// Grouped-query attention without copying keys/values per query head (see
    /// [`fused::attention`]), with queries at the new positions `from..` (keys and values at
    /// all of them).
    fn forward(
        &self,
        x: Tensor<B, 3>,
        pos: &Positions<B>,
        cache: &mut Option<(Tensor<B, 4>, Tensor<B, 4>)>,
        (rows, reserve): (Option<&[usize]>, usize),
        config: &ModelConfig,
        from: usize,
    ) -> Tensor<B, 3> {
        let [b, t, _] = x.dims();
        let (h, kv, hd) = (
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        );
        let (cos_q, sin_q, mask) = pos.queries_from(from, h / kv);
        let tq = t - from;
        let q = self
            .q_proj
            .forward(positions_from(x.clone(), from))
            .reshape([b, tq, h, hd]);
        let k = self.k_proj.forward(x.clone()).reshape([b, t, kv, hd]);
        let q = fused::rope(q, &cos_q, &sin_q);
        let k = fused::rope(k, &pos.cos, &pos.sin);
        let v = self.v_proj.forward(x).reshape([b, t, kv, hd]);
        // the cache holds keys `[b, kv, past, d]` and values `[b, past, kv, d]`; `rows`: the
        // cached rows these continue
        let (k, v) = match cache.take() {
            Some((pk, pv)) => (
                fused::append(pk, rows, k, 2, reserve),
                fused::append(pv, rows, v, 1, reserve),
            ),
            None => (k, v),
        };
        *cache = Some((k.clone(), v.clone()));
        let out = fused::attention(q, k, v, &mask); // [b, tq, h, d]
        self.o_proj.forward(out.reshape([b, tq, h * hd]))
    }
}

impl<B: Backend> Llama<B> {
    /// The projections of every layer by HF name (`q_proj` … `down_proj`).
    pub fn linears_mut(&mut self) -> Vec<(&'static str, &mut Linear<B>)> {
        self.layers
            .iter_mut()
            .flat_map(Block::linears_mut)
            .collect()
    }

    /// Freeze every weight and attach LoRA adapters to the named projections of the listed
    /// layers (0-based; empty = every layer), their `A` factors drawn from `seed` (the same on
    /// every backend). Indices past the last layer are the caller's to reject.
    #[allow(clippy::too_many_arguments)]
    pub fn with_lora(
        self,
        targets: &[String],
        layers: &[usize],
        rank: usize,
        alpha: f64,
        dropout: f64,
        seed: u64,
        device: &B::Device,
    ) -> Self {
        let mut m = self.no_grad();
        let mut rng = HostRng::new(seed);
        for (i, block) in m.layers.iter_mut().enumerate() {
            if !layers.is_empty() && !layers.contains(&i) {
                continue;
            }
            for (name, lin) in block.linears_mut() {
                if targets.iter().any(|t| t == name) {
                    lin.add_lora(rank, alpha, dropout, &mut rng, device);
                }
            }
        }
        m
    }

    /// Freeze every weight except those of the listed layers (0-based): the embeddings (and a
    /// tied head), the final norm, an untied head and the other layers stop taking gradients.
    /// Indices past the last layer are the caller's to reject.
    pub fn train_only_layers(self, layers: &[usize]) -> Self {
        let Llama {
            embed_tokens,
            layers: blocks,
            norm,
            lm_head,
            config,
            compute,
        } = self;
        let blocks = blocks
            .into_iter()
            .enumerate()
            .map(|(i, b)| if layers.contains(&i) { b } else { b.no_grad() })
            .collect();
        Llama {
            embed_tokens: embed_tokens.set_require_grad(false),
            layers: blocks,
            norm: norm.no_grad(),
            lm_head: lm_head.map(Module::no_grad),
            config,
            compute,
        }
    }

    /// Fold every LoRA adapter into its weight (for export).
    pub fn merge_lora(&mut self) {
        for (_, lin) in self.linears_mut() {
            lin.merge_lora();
        }
    }

    /// A randomly initialised model (normal std 0.02, norms 1), for presets trained from
    /// scratch: the same weights for a seed on every backend.
    pub fn init(config: &ModelConfig, seed: u64, device: &B::Device) -> Self {
        let c = config;
        let rng = &mut HostRng::new(seed);
        // drawn in a fixed order: the embeddings, then each layer's projections, then the head
        let embed_tokens =
            Param::from_tensor(rng.normal([c.vocab_size, c.hidden_size], 0.02, device));
        let (d, kvd) = (c.hidden_size, c.num_key_value_heads * c.head_dim);
        let norm = || RmsNorm::new(Tensor::ones([d], device), c.rms_norm_eps);
        let layers = (0..c.num_hidden_layers)
            .map(|_| Block {
                input_layernorm: norm(),
                self_attn: Attention {
                    q_proj: Linear::init(
                        d,
                        c.num_attention_heads * c.head_dim,
                        c.qkv_bias,
                        rng,
                        device,
                    ),
                    k_proj: Linear::init(d, kvd, c.qkv_bias, rng, device),
                    v_proj: Linear::init(d, kvd, c.qkv_bias, rng, device),
                    o_proj: Linear::init(
                        c.num_attention_heads * c.head_dim,
                        d,
                        c.o_bias,
                        rng,
                        device,
                    ),
                },
                post_attention_layernorm: norm(),
                mlp: Mlp {
                    gate_proj: Linear::init(d, c.intermediate_size, c.mlp_bias, rng, device),
                    up_proj: Linear::init(d, c.intermediate_size, c.mlp_bias, rng, device),
                    down_proj: Linear::init(c.intermediate_size, d, c.mlp_bias, rng, device),
                },
            })
            .collect();
        Llama {
            embed_tokens,
            layers,
            norm: norm(),
            lm_head: (!c.tie_word_embeddings)
                .then(|| Linear::init(d, c.vocab_size, false, rng, device)),
            config: config.clone(),
            compute: DType::F32,
        }
    }

    /// The same model computing in `dtype` (`F32`, or `BF16` for mixed precision: activations
    /// and products in bf16, weights and their gradients in f32, logits and the loss in f32).
    pub fn with_compute(mut self, dtype: DType) -> Self {
        self.compute = dtype;
        self
    }

    /// Hidden states after the final norm, `[batch, new, hidden]`, for `tokens` `[batch, new]`.
    /// With a cache, `tokens` continue the cached sequence and the cache is extended.
    pub fn forward_hidden(
        &self,
        tokens: Tensor<B, 2, Int>,
        pos: &Positions<B>,
        cache: &mut KvCache<B>,
    ) -> Tensor<B, 3> {
        self.forward_hidden_from(tokens, pos, cache, 0)
    }

    /// [`Self::forward_hidden`] at the new positions `from..` only, `[batch, new − from,
    /// hidden]`. The last layer computes its queries, output projection and MLP only there; the
    /// keys and values of every position still feed its attention (and the cache), and the
    /// layers below need every position anyway. Training skips the prompt positions below the
    /// first one that predicts a response token, generation's prefill all but the last prompt
    /// position, and scoring those below the first scored token.
    pub fn forward_hidden_from(
        &self,
        tokens: Tensor<B, 2, Int>,
        pos: &Positions<B>,
        cache: &mut KvCache<B>,
        from: usize,
    ) -> Tensor<B, 3> {
        let n = self.layers.len();
        let x = self.run_layers(tokens, pos, cache, from, n);
        if n == 0 {
            return self.norm.forward(positions_from(x, from));
        }
        self.norm.forward(x)
    }

    /// The residual stream after the first `layers` decoder layers (no final norm), `[batch,
    /// new, hidden]`: what HF's `output_hidden_states` gives at index `layers` (below the
    /// last layer). `layers` = 0 is the embeddings; more than the model has is all of them.
    /// A probe of an intermediate layer reads it.
    pub fn residual_after(
        &self,
        tokens: Tensor<B, 2, Int>,
        pos: &Positions<B>,
        cache: &mut KvCache<B>,
        layers: usize,
    ) -> Tensor<B, 3> {
        self.run_layers(tokens, pos, cache, 0, layers.min(self.layers.len()))
    }

    /// The first `upto` decoder layers on the embedded `tokens`; when `upto` is every layer,
    /// the last one computes positions `from..` only (see [`Self::forward_hidden_from`]).
    fn run_layers(
        &self,
        tokens: Tensor<B, 2, Int>,
        pos: &Positions<B>,
        cache: &mut KvCache<B>,
        from: usize,
        upto: usize,
    ) -> Tensor<B, 3> {
        let mut x = to_dtype(
            fused::embedding(self.embed_tokens.val(), tokens),
            self.compute,
        );
        let pos = &pos.cast(self.compute);
        let n = self.layers.len();
        let rows = cache.rows.take();
        for (i, (layer, lc)) in self
            .layers
            .iter()
            .zip(cache.layers.iter_mut())
            .enumerate()
            .take(upto)
        {
            let from = if i + 1 == n { from } else { 0 };
            let h = layer.self_attn.forward(
                layer.input_layernorm.forward(x.clone()),
                pos,
                lc,
                (rows.as_deref(), cache.reserve),
                &self.config,
                from,
            );
            x = fused::add(h, positions_from(x, from));
            let h = layer
                .mlp
                .forward(layer.post_attention_layernorm.forward(x.clone()));
            x = fused::add(h, x);
        }
        x
    }

    /// Output logits for hidden states of any leading shape: `[..., hidden]` → `[..., vocab]`,
    /// in f32 whatever the compute dtype. Call it only on the positions whose logits are needed
    /// (the vocabulary matmul dominates).
    pub fn logits<const D: usize>(&self, hidden: Tensor<B, D>) -> Tensor<B, D> {
        let logits = match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => {
                let dims = hidden.dims();
                let d = dims[D - 1];
                let rows = hidden.shape().num_elements() / d;
                let table = to_dtype(self.embed_tokens.val(), hidden.dtype());
                let y = fused::matmul(hidden.reshape([rows, d]), table.transpose());
                let mut out = dims;
                out[D - 1] = self.config.vocab_size;
                y.reshape(out)
            }
        };
        to_dtype(logits, DType::F32)
    }

    /// `Σ_i weights_i · −log p(targets_i | hidden_i)` for hidden states `[n, hidden]`: the output
    /// layer and the loss as one op ([`fused::nll`]), so that no `[n, vocab]` log-softmax is
    /// materialised as a tensor. A one-element tensor.
    pub fn nll(&self, hidden: Tensor<B, 2>, targets: &[u32], weights: &[f32]) -> Tensor<B, 1> {
        use fused::HeadLayout;
        let dt = hidden.dtype();
        match &self.lm_head {
            None => fused::nll(
                hidden,
                to_dtype(self.embed_tokens.val(), dt),
                HeadLayout::VocabFirst,
                targets,
                weights,
            ),
            Some(head) if head.bias.is_none() && head.lora.is_none() => fused::nll(
                hidden,
                to_dtype(head.weight.val(), dt),
                HeadLayout::VocabLast,
                targets,
                weights,
            ),
            // a head with a bias or an adapter: its own forward, then the loss
            Some(head) => fused::reference::nll_of_logits(head.forward(hidden), targets, weights),
        }
    }

    /// Full-sequence logits `[batch, seq, vocab]` for unpadded (or left-padded, with `valid`)
    /// token rows. Convenience for tests and scoring.
    pub fn forward_logits(&self, rows: &[Vec<u32>], device: &B::Device) -> Tensor<B, 3> {
        let (tokens, valid) = left_pad(rows, 0);
        let n = valid[0].len();
        let pos = Positions::new(&self.config, &valid, n, device);
        let t = tokens_tensor::<B>(&tokens, device);
        let mut cache = KvCache::new(self.config.num_hidden_layers);
        self.logits(self.forward_hidden(t, &pos, &mut cache))
    }
}

/// Left-pad token rows to one length with `pad`; returns the rows and the validity mask.
pub fn left_pad(rows: &[Vec<u32>], pad: u32) -> (Vec<Vec<u32>>, Vec<Vec<bool>>) {
    let n = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let mut toks = Vec::with_capacity(rows.len());
    let mut valid = Vec::with_capacity(rows.len());
    for r in rows {
        let p = n - r.len();
        let mut t = vec![pad; p];
        t.extend_from_slice(r);
        let mut v = vec![false; p];
        v.extend(std::iter::repeat_n(true, r.len()));
        toks.push(t);
        valid.push(v);
    }
    (toks, valid)
}

/// `[batch, seq]` int tensor from equal-length rows.
pub fn tokens_tensor<B: Backend>(rows: &[Vec<u32>], device: &B::Device) -> Tensor<B, 2, Int> {
    let b = rows.len();
    let t = rows.first().map(|r| r.len()).unwrap_or(0);
    let flat: Vec<i64> = rows
        .iter()
        .flat_map(|r| r.iter().map(|&x| x as i64))
        .collect();
    Tensor::from_data(TensorData::new(flat, [b, t]), device)
}
