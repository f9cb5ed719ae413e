//! Fused ops: matmul, RMSNorm, SwiGLU's gate, RoPE, attention and the output layer + NLL, each
//! one op for any backend; and the embedding lookup, whose CPU backward adds into the tied
//! output layer's gradient in place.
//!
//! Written as tensor ops ([`reference`]), each of these is a chain of 4–6 elementwise passes
//! forward and about twice that backward. On the CPU backend (Flex) every pass is a separate
//! single-threaded loop over memory, and a strided or broadcast operand sends some of them down
//! a slow element-by-element path; at SmolLM2's training shapes that was most of a step. So on
//! the CPU backend, with or without autodiff, each op is one rayon-parallel pass forward and one
//! backward ([`kernels`]), hooked into Burn's autodiff as a custom op ([`autodiff`]). Other
//! backends (CUDA, WGPU) run [`reference`], where the ops are fused or cheap anyway. The
//! matmuls on the CPU backend call the `gemm` crate directly ([`gemm`] says why).
//!
//! For inference only, [`feed_forward`] runs a whole feed-forward block in tiles of rows.
//!
//! Also here: [`update_on_host`] and [`sum_of_squares`], the host passes of the fused AdamW;
//! [`add`] (residuals, biases) and [`append`] (the KV cache), in place or in one copy where
//! Burn's ops would copy twice on one thread; and [`exp_shifted`], the host side of a
//! decoding step.
//!
//! Rust has no specialisation, so the choice is made at run time by the backend's type:
//! [`cast`] moves a value to the CPU backend's own type when `B` is that type (a `TypeId`
//! check through `Any`, no `unsafe`). This keeps every model signature generic over
//! `B: Backend`.

mod autodiff;
mod decode;
mod ffn;
mod gemm;
mod kernels;

use autodiff::{Cpu, CpuAd};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, Int, Tensor};
pub use ffn::Activation;
/// The host side of a decoding step: `exp(s · (x − max))` over a row and its sum in f64.
pub use kernels::exp_shifted;
use std::any::Any;

/// `a` as a `T` when `A` and `T` are the same type; `a` back otherwise.
fn cast<A: 'static, T: 'static>(a: A) -> Result<T, A> {
    let mut slot = Some(a);
    if let Some(t) = (&mut slot as &mut dyn Any).downcast_mut::<Option<T>>() {
        return Ok(t.take().expect("filled above"));
    }
    Err(slot.expect("not taken"))
}

/// [`cast`] where the types are known to match (the result of an op run on the cast inputs).
fn same<A: 'static, T: 'static>(a: A) -> T {
    cast(a).unwrap_or_else(|_| unreachable!("the CPU backend's result has the caller's type"))
}

/// Whether the fused CPU path applies: `f32` values (other dtypes take the reference path).
fn fusable<B: Backend, const D: usize>(x: &Tensor<B, D>) -> bool {
    x.dtype() == DType::F32
}

/// `a · b` for `[m, k]` and `[k, n]` (transposed views included). On the CPU backend, the
/// product and both gradient products go straight to the `gemm` crate ([`gemm`]).
pub fn matmul<B: Backend>(a: Tensor<B, 2>, b: Tensor<B, 2>) -> Tensor<B, 2> {
    if !fusable(&a) {
        return a.matmul(b);
    }
    let (a, b) = match cast::<_, (Tensor<CpuAd, 2>, Tensor<CpuAd, 2>)>((a, b)) {
        Ok((a, b)) => return same(autodiff::matmul_ad(a, b)),
        Err(v) => v,
    };
    match cast::<_, (Tensor<Cpu, 2>, Tensor<Cpu, 2>)>((a, b)) {
        Ok((a, b)) => same(autodiff::matmul_plain(a, b)),
        Err((a, b)) => a.matmul(b),
    }
}

/// Embedding lookup, `table[ids]`: `[vocab, hidden]` and `[batch, seq]` → `[batch, seq,
/// hidden]`. On the CPU backend with autodiff, the backward adds the looked-up rows' gradients
/// into the gradient the table already has (a tied output layer's) in place.
pub fn embedding<B: Backend>(table: Tensor<B, 2>, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
    if !fusable(&table) {
        return burn::tensor::module::embedding(table, ids);
    }
    match cast::<_, (Tensor<CpuAd, 2>, Tensor<CpuAd, 2, Int>)>((table, ids)) {
        Ok((table, ids)) => same(autodiff::embedding_ad(table, ids)),
        Err((table, ids)) => burn::tensor::module::embedding(table, ids),
    }
}

/// RMSNorm over the last axis: `x / √(mean(x²) + eps) · w`.
pub fn rms_norm<B: Backend>(x: Tensor<B, 3>, w: Tensor<B, 1>, eps: f64) -> Tensor<B, 3> {
    if !fusable(&x) {
        return reference::rms_norm(x, w, eps);
    }
    let (x, w) = match cast::<_, (Tensor<CpuAd, 3>, Tensor<CpuAd, 1>)>((x, w)) {
        Ok((x, w)) => return same(autodiff::rms_norm_ad(x, w, eps)),
        Err(v) => v,
    };
    match cast::<_, (Tensor<Cpu, 3>, Tensor<Cpu, 1>)>((x, w)) {
        Ok((x, w)) => same(autodiff::rms_norm(x, w, eps)),
        Err((x, w)) => reference::rms_norm(x, w, eps),
    }
}

/// GELU, exact (erf) form — BERT's activation. Inference only: on the CPU backend without
/// autodiff it is one parallel pass; elsewhere Burn's `gelu`.
pub fn gelu<B: Backend>(x: Tensor<B, 3>) -> Tensor<B, 3> {
    if !fusable(&x) {
        return reference::gelu(x);
    }
    match cast::<_, Tensor<Cpu, 3>>(x) {
        Ok(x) => same(autodiff::gelu(x)),
        Err(x) => reference::gelu(x),
    }
}

/// A projection for [`feed_forward`]: a weight `[in, out]` and an optional bias `[out]`.
pub type Projection<B> = (Tensor<B, 2>, Option<Tensor<B, 1>>);

/// A feed-forward block for inference, `down(act(ups(x)))` for `x` `[rows, d]` (see
/// [`Activation`] for `ups`). On the CPU backend without autodiff, with more rows than a
/// decoding step's, it runs in tiles of rows whose wide intermediate never leaves the cache
/// (`ffn`); otherwise `x` comes back (`Err`) and the caller runs its ops one by one.
pub fn feed_forward<B: Backend>(
    x: Tensor<B, 2>,
    ups: &[Projection<B>],
    down: &Projection<B>,
    act: Activation,
) -> Result<Tensor<B, 2>, Tensor<B, 2>> {
    // a decoding step's few rows read packed weights instead (`decode`)
    if !fusable(&x) || x.dims()[0] <= decode::MAX_PACKED_ROWS {
        return Err(x);
    }
    let on_cpu = |(w, b): &Projection<B>| -> Option<autodiff::CpuProjection> {
        let w = cast::<_, Tensor<Cpu, 2>>(w.clone()).ok()?;
        let b = match b {
            Some(b) => Some(cast::<_, Tensor<Cpu, 1>>(b.clone()).ok()?),
            None => None,
        };
        (w.dtype() == DType::F32).then_some((w, b))
    };
    let (Some(ups_cpu), Some(down_cpu)) = (
        ups.iter().map(on_cpu).collect::<Option<Vec<_>>>(),
        on_cpu(down),
    ) else {
        return Err(x);
    };
    let x = cast::<_, Tensor<Cpu, 2>>(x)?;
    match autodiff::feed_forward(x.clone(), &ups_cpu, &down_cpu, act) {
        Some(y) => Ok(same(y)),
        None => Err(same(x)),
    }
}

/// LayerNorm over the last axis with weight and bias (BERT's). Inference only: on the CPU
/// backend without autodiff it is one parallel pass; elsewhere the tensor ops.
pub fn layer_norm<B: Backend>(
    x: Tensor<B, 3>,
    w: Tensor<B, 1>,
    b: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, 3> {
    if !fusable(&x) {
        return reference::layer_norm(x, w, b, eps);
    }
    match cast::<_, (Tensor<Cpu, 3>, Tensor<Cpu, 1>, Tensor<Cpu, 1>)>((x, w, b)) {
        Ok((x, w, b)) => same(autodiff::layer_norm(x, w, b, eps)),
        Err((x, w, b)) => reference::layer_norm(x, w, b, eps),
    }
}

/// SwiGLU's gate, `silu(gate) · up`.
pub fn swiglu<B: Backend>(gate: Tensor<B, 3>, up: Tensor<B, 3>) -> Tensor<B, 3> {
    if !fusable(&gate) {
        return reference::swiglu(gate, up);
    }
    let (g, u) = match cast::<_, (Tensor<CpuAd, 3>, Tensor<CpuAd, 3>)>((gate, up)) {
        Ok((g, u)) => return same(autodiff::swiglu_ad(g, u)),
        Err(v) => v,
    };
    match cast::<_, (Tensor<Cpu, 3>, Tensor<Cpu, 3>)>((g, u)) {
        Ok((g, u)) => same(autodiff::swiglu(g, u)),
        Err((g, u)) => reference::swiglu(g, u),
    }
}

/// Rotate-half RoPE (HF's layout) on `x` `[batch, seq, heads, head_dim]`, returned with the
/// head axis first, `[batch, heads, seq, head_dim]` (what attention takes). `cos`/`sin` are
/// `[batch·seq, head_dim]`.
pub fn rope<B: Backend>(x: Tensor<B, 4>, cos: &Tensor<B, 2>, sin: &Tensor<B, 2>) -> Tensor<B, 4> {
    if !fusable(&x) || !fusable(cos) {
        return reference::rope(x, cos, sin);
    }
    let x = match cast::<_, Tensor<CpuAd, 4>>(x) {
        Ok(x) => {
            let table = |t: &Tensor<B, 2>| autodiff::table_ad(same(t.clone()));
            return same(autodiff::rope_ad(x, table(cos), table(sin)));
        }
        Err(x) => x,
    };
    match cast::<_, Tensor<Cpu, 4>>(x) {
        Ok(x) => {
            let table = |t: &Tensor<B, 2>| autodiff::table(same(t.clone()));
            same(autodiff::rope(x, table(cos), table(sin)))
        }
        Err(x) => reference::rope(x, cos, sin),
    }
}

/// Scaled dot-product attention with grouped-query heads, `softmax(q kᵀ / √d) v` over the keys
/// `mask` leaves in, for `q` `[b, h, t, d]` (RoPE's output), `k` `[b, kv, T, d]` and `v`
/// `[b, T, kv, d]` (the projection's own layout), `h` a multiple of `kv`. `mask` is
/// `[b, 1, (h/kv)·t, T]` (true = masked out): the `h/kv` query heads of a KV head are stacked
/// along the query axis, `[b, h, t, d]` → `[b, kv, (h/kv)·t, d]` (a free reshape of HF's head
/// order), and share the mask across the `kv` heads. Returns `[b, t, h, d]`, the layout the
/// output projection reads. On the CPU backend the products go to gemm per KV head, `v` is
/// read through its strides, and the scale-mask-softmax (and its backward) is one pass.
pub fn attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: &Tensor<B, 4, Bool>,
) -> Tensor<B, 4> {
    if !fusable(&q) {
        return reference::attention(q, k, v, mask);
    }
    let scale = 1.0 / (q.dims()[3] as f32).sqrt();
    let qkv = match cast::<_, [Tensor<CpuAd, 4>; 3]>([q, k, v]) {
        Ok([q, k, v]) => {
            let m = same::<_, Tensor<CpuAd, 4, Bool>>(mask.clone()).into_primitive();
            return same(autodiff::attention_ad(q, k, v, m, scale));
        }
        Err(v) => v,
    };
    match cast::<_, [Tensor<Cpu, 4>; 3]>(qkv) {
        Ok([q, k, v]) => {
            let m = same::<_, Tensor<Cpu, 4, Bool>>(mask.clone()).into_primitive();
            same(autodiff::attention(q, k, v, m, scale))
        }
        Err([q, k, v]) => reference::attention(q, k, v, mask),
    }
}

/// `f(values of t, values of other)` with `t`'s values updated in place, when `B` is the CPU
/// backend and both are `f32`: no copy out of or back into the tensor (a copy only if `t` is
/// shared or strided). Hands both tensors back untouched otherwise. The fused AdamW update
/// runs through this.
#[allow(clippy::type_complexity)]
pub fn update_on_host<B: Backend, const D: usize>(
    t: Tensor<B, D>,
    other: Tensor<B, D>,
    f: impl FnOnce(&mut [f32], &[f32]),
) -> Result<Tensor<B, D>, (Tensor<B, D>, Tensor<B, D>)> {
    if !fusable(&t) || !fusable(&other) {
        return Err((t, other));
    }
    match cast::<_, (Tensor<Cpu, D>, Tensor<Cpu, D>)>((t, other)) {
        Ok((t, other)) => Ok(same(autodiff::update_on_host(t, other, f))),
        Err(v) => Err(v),
    }
}

/// `y + b`, `b` either `y`'s shape (a residual) or `y`'s trailing axes after leading 1s (a
/// bias `[1, …, 1, n]`, positions `[1, seq, d]`), repeated over `y`'s leading axes: on the CPU
/// backend without autodiff one parallel pass in place over `y` (Flex's add is one thread into
/// a new buffer, element by element where it broadcasts); a tensor op elsewhere. Same values
/// either way.
pub fn add<B: Backend, const D: usize>(y: Tensor<B, D>, b: Tensor<B, D>) -> Tensor<B, D> {
    let (dy, db) = (y.dims(), b.dims());
    let ones = db.iter().take_while(|&&d| d == 1).count().min(D - 1);
    if db[ones..] != dy[ones..] {
        return y + b;
    }
    match update_on_host(y, b, kernels::add_assign) {
        Ok(y) => y,
        Err((y, b)) => y + b,
    }
}

/// A KV cache extended by new positions: `cat([cache[rows], new], axis)` (`rows`: the cached
/// rows each new row continues, repeats allowed; `None`: row `i` continues row `i`). On the
/// CPU backend without autodiff the result is a view of a buffer with room for `reserve` more
/// positions, which the next call fills in place when it continues the same rows, and one
/// parallel copy otherwise (a row selection and a concatenation were two copies of the whole
/// cache per decoding step, on one thread); tensor ops elsewhere (`reserve` unused).
pub fn append<B: Backend>(
    cache: Tensor<B, 4>,
    rows: Option<&[usize]>,
    new: Tensor<B, 4>,
    axis: usize,
    reserve: usize,
) -> Tensor<B, 4> {
    let (dc, dn) = (cache.dims(), new.dims());
    let fits = (1..4).all(|a| a == axis || dc[a] == dn[a])
        && rows.map_or(dc[0] == dn[0], |r| {
            r.len() == dn[0] && r.iter().all(|&i| i < dc[0])
        });
    if fits && fusable(&cache) && fusable(&new) {
        match cast::<_, (Tensor<Cpu, 4>, Tensor<Cpu, 4>)>((cache, new)) {
            Ok((c, n)) => return same(autodiff::append(c, rows, n, axis, reserve)),
            Err((c, n)) => return reference::append(c, rows, n, axis),
        }
    }
    reference::append(cache, rows, new, axis)
}

/// `Σ x²` over a tensor, in f64: one parallel pass over host memory on the CPU backend (the
/// global gradient norm), a tensor op elsewhere.
pub fn sum_of_squares<B: Backend, const D: usize>(t: Tensor<B, D>) -> f64 {
    use burn::tensor::ElementConversion;
    if fusable(&t) {
        if let Ok(t) = cast::<_, Tensor<Cpu, D>>(t.clone()) {
            return autodiff::sum_of_squares(t);
        }
    }
    t.square().sum().into_scalar().elem::<f64>()
}

/// How an output layer's weight is laid out: `[vocab, hidden]` (tied to the embeddings,
/// `logits = h Wᵀ`) or `[hidden, vocab]` (`Linear`'s `[in, out]`, `logits = h W`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadLayout {
    VocabFirst,
    VocabLast,
}

/// The output layer and the loss in one op: `Σ_i weights_i · −log softmax(logits_i)[targets_i]`
/// for hidden states `h` `[n, hidden]`, with `logits = h Wᵀ` or `h W` (see [`HeadLayout`]).
/// Returns a one-element tensor. On the CPU backend the logits are made once, never
/// log-softmaxed as a tensor, and the weight's gradient comes out in its own layout.
pub fn nll<B: Backend>(
    h: Tensor<B, 2>,
    w: Tensor<B, 2>,
    layout: HeadLayout,
    targets: &[u32],
    weights: &[f32],
) -> Tensor<B, 1> {
    assert_eq!(targets.len(), h.dims()[0], "one target per hidden state");
    assert_eq!(weights.len(), targets.len(), "one weight per target");
    let vocab = w.dims()[if layout == HeadLayout::VocabFirst {
        0
    } else {
        1
    }];
    if let Some(t) = targets.iter().find(|&&t| t as usize >= vocab) {
        panic!("target token {t} is outside the vocabulary ({vocab} tokens)");
    }
    if !fusable(&h) {
        return reference::nll(h, w, layout, targets, weights);
    }
    let (h, w) = match cast::<_, (Tensor<CpuAd, 2>, Tensor<CpuAd, 2>)>((h, w)) {
        Ok((h, w)) => return same(autodiff::nll_ad(h, w, layout, targets, weights)),
        Err(v) => v,
    };
    match cast::<_, (Tensor<Cpu, 2>, Tensor<Cpu, 2>)>((h, w)) {
        Ok((h, w)) => same(autodiff::nll(h, w, layout, targets, weights)),
        Err((h, w)) => reference::nll(h, w, layout, targets, weights),
    }
}

/// The same ops as chains of tensor ops: what non-CPU backends run, and what the tests hold
/// the fused versions to.
pub mod reference {
    use super::HeadLayout;
    use burn::tensor::activation::{log_softmax, silu};
    use burn::tensor::backend::Backend;
    use burn::tensor::module::attention as sdpa;
    use burn::tensor::ops::AttentionModuleOptions;
    use burn::tensor::{Bool, Int, Tensor, TensorData};

    pub fn append<B: Backend>(
        cache: Tensor<B, 4>,
        rows: Option<&[usize]>,
        new: Tensor<B, 4>,
        axis: usize,
    ) -> Tensor<B, 4> {
        let cache = match rows {
            Some(r) => {
                let idx: Vec<i64> = r.iter().map(|&i| i as i64).collect();
                let dev = cache.device();
                cache.select(
                    0,
                    Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [r.len()]), &dev),
                )
            }
            None => cache,
        };
        Tensor::cat(vec![cache, new], axis)
    }

    pub fn attention<B: Backend>(
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        mask: &Tensor<B, 4, Bool>,
    ) -> Tensor<B, 4> {
        let [b, h, t, d] = q.dims();
        let [_, kv, tk, _] = k.dims();
        let nq = h / kv * t;
        let mask = mask.clone().expand([b, kv, nq, tk]);
        let opts = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: false,
        };
        let q = q.reshape([b, kv, nq, d]);
        sdpa(q, k, v.swap_dims(1, 2), Some(mask), None, opts)
            .reshape([b, h, t, d])
            .swap_dims(1, 2)
    }

    pub fn nll<B: Backend>(
        h: Tensor<B, 2>,
        w: Tensor<B, 2>,
        layout: HeadLayout,
        targets: &[u32],
        weights: &[f32],
    ) -> Tensor<B, 1> {
        let logits = match layout {
            HeadLayout::VocabFirst => h.matmul(w.transpose()),
            HeadLayout::VocabLast => h.matmul(w),
        };
        nll_of_logits(logits, targets, weights)
    }

    /// The weighted NLL of `targets` under `logits` `[n, vocab]`.
    pub fn nll_of_logits<B: Backend>(
        logits: Tensor<B, 2>,
        targets: &[u32],
        weights: &[f32],
    ) -> Tensor<B, 1> {
        let (n, device) = (targets.len(), logits.device());
        let targets: Vec<i64> = targets.iter().map(|&t| t as i64).collect();
        let targets = Tensor::<B, 2, Int>::from_data(TensorData::new(targets, [n, 1]), &device);
        // the log-softmax in f32 whatever the logits' dtype (as PyTorch's autocast does)
        let logits = crate::model::to_dtype(logits, burn::tensor::DType::F32);
        let picked = log_softmax(logits, 1).gather(1, targets).reshape([n]);
        let weights = Tensor::<B, 1>::from_data(TensorData::new(weights.to_vec(), [n]), &device);
        -(picked * weights).sum()
    }

    pub fn rms_norm<B: Backend>(x: Tensor<B, 3>, w: Tensor<B, 1>, eps: f64) -> Tensor<B, 3> {
        let var = x.clone().square().mean_dim(2);
        let x = x * (var + eps).sqrt().recip();
        x * w.unsqueeze_dims(&[0, 1])
    }

    pub fn swiglu<B: Backend>(gate: Tensor<B, 3>, up: Tensor<B, 3>) -> Tensor<B, 3> {
        silu(gate) * up
    }

    pub fn gelu<B: Backend>(x: Tensor<B, 3>) -> Tensor<B, 3> {
        burn::tensor::activation::gelu(x)
    }

    pub fn layer_norm<B: Backend>(
        x: Tensor<B, 3>,
        w: Tensor<B, 1>,
        b: Tensor<B, 1>,
        eps: f64,
    ) -> Tensor<B, 3> {
        let mean = x.clone().mean_dim(2);
        let x = x - mean;
        let var = x.clone().square().mean_dim(2);
        let x = x * (var + eps).sqrt().recip();
        x * w.unsqueeze_dims(&[0, 1]) + b.unsqueeze_dims(&[0, 1])
    }

    pub fn rope<B: Backend>(
        x: Tensor<B, 4>,
        cos: &Tensor<B, 2>,
        sin: &Tensor<B, 2>,
    ) -> Tensor<B, 4> {
        let [b, t, _, d] = x.dims();
        // per-position tables broadcast over the heads
        let table = |c: &Tensor<B, 2>| c.clone().reshape([b, t, 1, d]);
        // rotate_half(x) = [−x₂, x₁] over the two halves of the head dimension
        let half = d / 2;
        let rotated = Tensor::cat(
            vec![
                -x.clone().narrow(3, half, half),
                x.clone().narrow(3, 0, half),
            ],
            3,
        );
        (x * table(cos) + rotated * table(sin)).swap_dims(1, 2)
    }
}
