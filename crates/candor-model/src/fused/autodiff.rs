//! The fused ops on the CPU backend, with and without autodiff: forward and backward each one
//! [`kernels`] pass. Burn's own custom-op API (`Backward`, `OpsKind`), as in its
//! custom-kernel example: the op records its inputs and its backward step on the graph.

use super::gemm::matmul;
use super::{kernels, HeadLayout};
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::{Autodiff, Flex};
use burn::tensor::ops::{FloatTensor, FloatTensorOps, ModuleOps};
use burn::tensor::{Int, Shape, Tensor, TensorData, TensorPrimitive};
use burn_flex::{FlexTensor, Layout};

/// The CPU backend, and the same with autodiff (what training on the CPU runs).
pub type Cpu = Flex;
pub type CpuAd = Autodiff<Flex>;
type AdPrimitive = FloatTensor<CpuAd>;

/// A contiguous `f32` view of a tensor (copied only when it is a strided view).
fn contiguous(t: FlexTensor) -> FlexTensor {
    match t.as_slice::<f32>() {
        Some(_) => t,
        None => swapped_heads(&t).unwrap_or_else(|| t.to_contiguous()),
    }
}

/// A `[b, a, c, d]` view of a contiguous `[b, c, a, d]` f32 tensor (axes 1 and 2 swapped: a
/// projection's `[batch, seq, heads, head_dim]` seen head-first, as attention reads queries and
/// keys) made contiguous by [`kernels::swap_axes_1_2`], a row copy per (batch, head, position);
/// Flex's element-by-element strided copy took 9% of MiniLM's time. `None` for any other view.
fn swapped_heads(t: &FlexTensor) -> Option<FlexTensor> {
    let layout = t.layout();
    let dims = layout.shape().as_slice();
    let strides = layout.strides();
    if t.dtype() != burn::tensor::DType::F32 || dims.len() != 4 {
        return None;
    }
    let [b, a, c, d] = [dims[0], dims[1], dims[2], dims[3]];
    let want = [a * c * d, d, a * d, 1].map(|s| s as isize);
    if strides != want.as_slice() {
        return None;
    }
    let data: &[f32] = t.storage();
    let x = data.get(layout.start_offset()..layout.start_offset() + b * a * c * d)?;
    Some(flex(kernels::swap_axes_1_2(x, [b, c, a, d]), [b, a, c, d]))
}

fn slice(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("fused ops run on contiguous f32 tensors")
}

fn flex(values: Vec<f32>, shape: impl Into<Shape>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape.into()))
}

fn plain<const D: usize>(t: Tensor<Cpu, D>) -> FlexTensor {
    contiguous(t.into_primitive().tensor())
}

fn from_plain<const D: usize>(t: FlexTensor) -> Tensor<Cpu, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

fn tracked<const D: usize>(t: Tensor<CpuAd, D>) -> AdPrimitive {
    let mut p = t.into_primitive().tensor();
    p.primitive = contiguous(p.primitive);
    p
}

fn from_tracked<const D: usize>(t: AdPrimitive) -> Tensor<CpuAd, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// Put `out` on the autodiff graph as the result of `op` on `parents`. `state` (what `op`'s
/// backward needs) is built only when a parent takes a gradient.
fn record<Op: Backward<Cpu, N>, const N: usize, const D: usize>(
    op: Op,
    parents: [&AdPrimitive; N],
    state: impl FnOnce() -> Op::State,
    out: FlexTensor,
) -> Tensor<CpuAd, D> {
    let nodes = parents.map(|p| p.node.clone());
    let out = match op
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(state(), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    from_tracked(out)
}

/// The host values of a table that takes no gradient (RoPE's), on either CPU backend.
pub fn table(t: Tensor<Cpu, 2>) -> FlexTensor {
    plain(t)
}

pub fn table_ad(t: Tensor<CpuAd, 2>) -> FlexTensor {
    contiguous(t.into_primitive().tensor().primitive)
}

// ---- RMSNorm ----

pub fn rms_norm(x: Tensor<Cpu, 3>, w: Tensor<Cpu, 1>, eps: f64) -> Tensor<Cpu, 3> {
    let shape = x.shape();
    let (x, w) = (plain(x), plain(w));
    let (y, _) = kernels::rms_norm(slice(&x), slice(&w), eps as f32);
    from_plain(flex(y, shape))
}

#[derive(Debug)]
struct RmsNormBackward;

impl Backward<Cpu, 2> for RmsNormBackward {
    /// `x`, `w`, and `r = 1/√(mean(x²) + eps)` per row.
    type State = (FlexTensor, FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w] = ops.parents;
        let g = contiguous(grads.consume::<Cpu>(&ops.node));
        let (x, w, r) = ops.state;
        let (dx, dw) = kernels::rms_norm_backward(slice(&x), slice(&w), slice(&r), slice(&g));
        if let Some(node) = node_x {
            grads.register::<Cpu>(node.id, flex(dx, x.layout().shape().clone()));
        }
        if let Some(node) = node_w {
            grads.register::<Cpu>(node.id, flex(dw, w.layout().shape().clone()));
        }
    }
}

pub fn rms_norm_ad(x: Tensor<CpuAd, 3>, w: Tensor<CpuAd, 1>, eps: f64) -> Tensor<CpuAd, 3> {
    let shape = x.shape();
    let rows = shape.num_elements() / w.dims()[0];
    let (x, w) = (tracked(x), tracked(w));
    let (y, r) = kernels::rms_norm(slice(&x.primitive), slice(&w.primitive), eps as f32);
    let state = || (x.primitive.clone(), w.primitive.clone(), flex(r, [rows]));
    record(RmsNormBackward, [&x, &w], state, flex(y, shape))
}

// ---- GELU and LayerNorm (MiniLM's; inference only, no backward) ----

pub fn gelu(x: Tensor<Cpu, 3>) -> Tensor<Cpu, 3> {
    let shape = x.shape();
    let x = plain(x);
    from_plain(flex(kernels::gelu(slice(&x)), shape))
}

pub fn layer_norm(
    x: Tensor<Cpu, 3>,
    w: Tensor<Cpu, 1>,
    b: Tensor<Cpu, 1>,
    eps: f64,
) -> Tensor<Cpu, 3> {
    let shape = x.shape();
    let (x, w, b) = (plain(x), plain(w), plain(b));
    from_plain(flex(
        kernels::layer_norm(slice(&x), slice(&w), slice(&b), eps as f32),
        shape,
    ))
}

// ---- the tiled feed-forward (inference) ----

/// A projection's weight `[in, out]` and bias as the CPU backend's tensors.
pub type CpuProjection = (Tensor<Cpu, 2>, Option<Tensor<Cpu, 1>>);

/// [`super::ffn::feed_forward`] on the CPU backend's tensors: `x` `[rows, d]`; `None` when a
/// weight or bias is not contiguous (the caller runs the ops one by one).
pub fn feed_forward(
    x: Tensor<Cpu, 2>,
    ups: &[CpuProjection],
    down: &CpuProjection,
    act: super::ffn::Activation,
) -> Option<Tensor<Cpu, 2>> {
    let [rows, d] = x.dims();
    let host = |(w, b): &CpuProjection| {
        let w = w.clone().into_primitive().tensor();
        let b = b.as_ref().map(|b| b.clone().into_primitive().tensor());
        let ok = w.as_slice::<f32>().is_some()
            && b.as_ref().is_none_or(|b| b.as_slice::<f32>().is_some());
        ok.then_some((w, b))
    };
    let ups: Vec<_> = ups.iter().map(host).collect::<Option<_>>()?;
    let down = host(down)?;
    fn projection((w, b): &(FlexTensor, Option<FlexTensor>)) -> super::ffn::Projection<'_> {
        super::ffn::Projection {
            weight: slice(w),
            bias: b.as_ref().map(slice),
            out: w.layout().shape().dims::<2>()[1],
        }
    }
    let x = plain(x);
    let y = super::ffn::feed_forward(
        slice(&x),
        d,
        &ups.iter().map(projection).collect::<Vec<_>>(),
        &projection(&down),
        act,
    );
    let n = y.len() / rows.max(1);
    Some(from_plain(flex(y, [rows, n])))
}

// ---- SwiGLU ----

pub fn swiglu(gate: Tensor<Cpu, 3>, up: Tensor<Cpu, 3>) -> Tensor<Cpu, 3> {
    let shape = gate.shape();
    let (g, u) = (plain(gate), plain(up));
    from_plain(flex(kernels::swiglu(slice(&g), slice(&u)), shape))
}

#[derive(Debug)]
struct SwigluBackward;

impl Backward<Cpu, 2> for SwigluBackward {
    /// The gate and up projections.
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_g, node_u] = ops.parents;
        let d = contiguous(grads.consume::<Cpu>(&ops.node));
        let (g, u) = ops.state;
        let (dg, du) = kernels::swiglu_backward(slice(&g), slice(&u), slice(&d));
        let shape = g.layout().shape().clone();
        if let Some(node) = node_g {
            grads.register::<Cpu>(node.id, flex(dg, shape.clone()));
        }
        if let Some(node) = node_u {
            grads.register::<Cpu>(node.id, flex(du, shape));
        }
    }
}

pub fn swiglu_ad(gate: Tensor<CpuAd, 3>, up: Tensor<CpuAd, 3>) -> Tensor<CpuAd, 3> {
    let shape = gate.shape();
    let (g, u) = (tracked(gate), tracked(up));
    let y = flex(
        kernels::swiglu(slice(&g.primitive), slice(&u.primitive)),
        shape,
    );
    let state = || (g.primitive.clone(), u.primitive.clone());
    record(SwigluBackward, [&g, &u], state, y)
}

// ---- RoPE (with the head axis moved in front of the sequence axis) ----

pub fn rope(x: Tensor<Cpu, 4>, cos: FlexTensor, sin: FlexTensor) -> Tensor<Cpu, 4> {
    let [b, t, h, d] = x.dims();
    let x = plain(x);
    let y = kernels::rope(slice(&x), slice(&cos), slice(&sin), [b, t, h, d]);
    from_plain(flex(y, [b, h, t, d]))
}

#[derive(Debug)]
struct RopeBackward;

impl Backward<Cpu, 1> for RopeBackward {
    /// The cosine and sine tables, and the input's `[b, t, h, d]`.
    type State = (FlexTensor, FlexTensor, [usize; 4]);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let dy = contiguous(grads.consume::<Cpu>(&ops.node));
        let (cos, sin, dims) = ops.state;
        if let Some(node) = node_x {
            let dx = kernels::rope_backward(slice(&dy), slice(&cos), slice(&sin), dims);
            grads.register::<Cpu>(node.id, flex(dx, dims));
        }
    }
}

pub fn rope_ad(x: Tensor<CpuAd, 4>, cos: FlexTensor, sin: FlexTensor) -> Tensor<CpuAd, 4> {
    let [b, t, h, d] = x.dims();
    let x = tracked(x);
    let y = kernels::rope(slice(&x.primitive), slice(&cos), slice(&sin), [b, t, h, d]);
    let state = || (cos, sin, [b, t, h, d]);
    record(RopeBackward, [&x], state, flex(y, [b, h, t, d]))
}

// ---- matrix product ----

pub fn matmul_plain(a: Tensor<Cpu, 2>, b: Tensor<Cpu, 2>) -> Tensor<Cpu, 2> {
    let (a, b) = (a.into_primitive().tensor(), b.into_primitive().tensor());
    from_plain(super::gemm::matmul_packing(a, b))
}

#[derive(Debug)]
struct MatmulBackward;

impl Backward<Cpu, 2> for MatmulBackward {
    /// Both operands, as they came (strided views included).
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_a, node_b] = ops.parents;
        let d = grads.consume::<Cpu>(&ops.node);
        let (a, b) = ops.state;
        if let Some(node) = node_a {
            grads.register::<Cpu>(node.id, matmul(d.clone(), Cpu::float_transpose(b)));
        }
        if let Some(node) = node_b {
            grads.register::<Cpu>(node.id, matmul(Cpu::float_transpose(a), d));
        }
    }
}

pub fn matmul_ad(a: Tensor<CpuAd, 2>, b: Tensor<CpuAd, 2>) -> Tensor<CpuAd, 2> {
    let (a, b) = (a.into_primitive().tensor(), b.into_primitive().tensor());
    let out = matmul(a.primitive.clone(), b.primitive.clone());
    let state = || (a.primitive.clone(), b.primitive.clone());
    record(MatmulBackward, [&a, &b], state, out)
}

// ---- embedding lookup ----

#[derive(Debug)]
struct EmbeddingBackward;

impl Backward<Cpu, 1> for EmbeddingBackward {
    /// The table (its autodiff node finds the gradient it already has) and the looked-up rows.
    type State = (AdPrimitive, Vec<usize>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_table] = ops.parents;
        let d = contiguous(grads.consume::<Cpu>(&ops.node));
        let (table, rows) = ops.state;
        let Some(node) = node_table else { return };
        // A tied output layer has registered its dense gradient for the same table already
        // (it runs later in the forward pass, so earlier in the backward pass): the looked-up
        // rows go into that one in place. Burn's own backward builds a dense zero-filled table
        // for them and adds it to the other, two passes over vocabulary × hidden floats.
        let mut g = match grads.remove::<Cpu>(&table) {
            Some(g) => owned(g),
            None => flex(
                vec![0.0; table.primitive.layout().num_elements()],
                table.primitive.layout().shape().clone(),
            ),
        };
        kernels::add_rows(g.storage_mut::<f32>(), slice(&d), &rows);
        grads.register::<Cpu>(node.id, g);
    }
}

pub fn embedding_ad(table: Tensor<CpuAd, 2>, ids: Tensor<CpuAd, 2, Int>) -> Tensor<CpuAd, 3> {
    let table = tracked(table);
    let out = Cpu::embedding(table.primitive.clone(), ids.clone().into_primitive());
    // the ids on the host, read only when the table takes a gradient
    let state = || {
        let rows = ids.to_data().iter::<i64>().map(|i| i as usize).collect();
        (table.clone(), rows)
    };
    record(EmbeddingBackward, [&table], state, out)
}

// ---- in-place host update ----

pub fn update_on_host<const D: usize>(
    t: Tensor<Cpu, D>,
    other: Tensor<Cpu, D>,
    f: impl FnOnce(&mut [f32], &[f32]),
) -> Tensor<Cpu, D> {
    let mut t = owned(t.into_primitive().tensor());
    let other = plain(other);
    f(t.storage_mut::<f32>(), slice(&other));
    from_plain(t)
}

/// The positions `t`'s axis `axis` has room for, when `t` is the first positions of a buffer
/// laid out as a contiguous tensor with `cap` positions on that axis (offset 0, nothing else in
/// the storage): what [`append`] leaves behind. A contiguous tensor has room for its own length.
fn room(t: &FlexTensor, axis: usize) -> Option<usize> {
    let layout = t.layout();
    let dims = layout.shape().dims::<4>();
    let inner: usize = dims[axis + 1..].iter().product();
    let cap = match axis {
        0 => dims[0],
        _ => layout.strides()[axis - 1].max(0) as usize / inner.max(1),
    };
    let mut full = dims;
    full[axis] = cap;
    let whole = Layout::contiguous(Shape::new(full));
    let fits = cap >= dims[axis]
        && t.dtype() == burn::tensor::DType::F32
        && layout.start_offset() == 0
        && layout.strides() == whole.strides()
        && t.bytes().len() == 4 * full.iter().product::<usize>();
    fits.then_some(cap)
}

/// A KV cache extended by `new`'s positions along `axis`: `cat([cache[rows], new], axis)`.
/// The result is a view of the first positions of a buffer with room for more: when the next
/// step continues the same rows and the room is there, its positions are written in place (no
/// copy of the cache); otherwise one parallel copy makes a new buffer with room for `reserve`
/// more positions (the rest of a generation). A decoding step with every row going on thus
/// copies nothing; one where a row finished or forked copies the cache once.
pub fn append(
    cache: Tensor<Cpu, 4>,
    rows: Option<&[usize]>,
    new: Tensor<Cpu, 4>,
    axis: usize,
    reserve: usize,
) -> Tensor<Cpu, 4> {
    use rayon::prelude::*;
    let (dc, dn) = (cache.dims(), new.dims());
    let new = plain(new);
    let n = slice(&new);
    let mut cache = cache.into_primitive().tensor();
    // per batch row: `outer` runs of `len` cached then `add` new positions, `inner` values each
    let outer: usize = dc[1..axis].iter().product();
    let inner: usize = dc[axis + 1..].iter().product();
    let (len, add) = (dc[axis], dn[axis]);
    let row_n = outer * add * inner;
    let view = |cap: usize, batch: usize| {
        let mut full = dc;
        full[0] = batch;
        full[axis] = cap;
        Layout::contiguous(Shape::new(full)).narrow(axis, 0, len + add)
    };
    let same_rows = rows.is_none_or(|r| r.iter().copied().eq(0..dc[0]));
    if same_rows {
        if let Some(cap) = room(&cache, axis).filter(|&cap| len + add <= cap) {
            let row_c = outer * cap * inner;
            if let Some(c) = cache.try_storage_mut::<f32>() {
                c.par_chunks_mut(row_c)
                    .zip(n.par_chunks(row_n))
                    .for_each(|(c, n)| {
                        for (c, n) in c.chunks_mut(cap * inner).zip(n.chunks(add * inner)) {
                            c[len * inner..(len + add) * inner].copy_from_slice(n);
                        }
                    });
                return from_plain(cache.with_layout(view(cap, dc[0])));
            }
        }
    }
    // a new buffer: the cache as it is laid out (a view of a larger one, or contiguous)
    let cache = if room(&cache, axis).is_some() {
        cache
    } else {
        cache.to_contiguous()
    };
    let c_cap = room(&cache, axis).expect("contiguous has room for itself");
    let c = cache.storage::<f32>();
    let c_row = outer * c_cap * inner;
    let cap = len + add + reserve;
    let row_o = outer * cap * inner;
    let mut out: Vec<f32> = Vec::with_capacity(dn[0] * row_o);
    out.spare_capacity_mut()[..dn[0] * row_o]
        .par_chunks_mut(row_o)
        .enumerate()
        .for_each(|(i, o)| {
            let src = rows.map_or(i, |r| r[i]);
            let (c, n) = (&c[src * c_row..][..c_row], &n[i * row_n..][..row_n]);
            for ((o, c), n) in o
                .chunks_mut(cap * inner)
                .zip(c.chunks(c_cap * inner))
                .zip(n.chunks(add * inner))
            {
                o[..len * inner].write_copy_of_slice(&c[..len * inner]);
                o[len * inner..(len + add) * inner].write_copy_of_slice(n);
                // the room is written too (never read before it is overwritten)
                o[(len + add) * inner..].fill(std::mem::MaybeUninit::new(0.0));
            }
        });
    // SAFETY: the chunks above cover all `dn[0]·row_o` elements, each written once
    unsafe { out.set_len(dn[0] * row_o) };
    let mut full = dc;
    full[0] = dn[0];
    full[axis] = cap;
    from_plain(flex(out, full).with_layout(view(cap, dn[0])))
}

pub fn sum_of_squares<const D: usize>(t: Tensor<Cpu, D>) -> f64 {
    kernels::sum_of_squares(slice(&plain(t)))
}

// ---- attention ----

/// A tensor's values as one mutable contiguous slice, copying only if it is shared or strided.
fn owned(t: FlexTensor) -> FlexTensor {
    let n = t.layout().num_elements();
    match t.layout().contiguous_offsets() {
        Some((0, end)) if end == n && t.is_unique() && t.bytes().len() == 4 * n => t,
        _ => t.to_contiguous(),
    }
}

/// The attention mask's bytes (non-zero = masked out), `[b, 1, nq, t]` contiguous.
fn mask_bytes(mask: &FlexTensor) -> Vec<u8> {
    let m = mask.to_contiguous();
    let (start, end) = m.layout().contiguous_offsets().expect("contiguous");
    m.storage::<u8>()[start..end].to_vec()
}

fn swap_last(t: &FlexTensor) -> FlexTensor {
    Cpu::float_swap_dims(t.clone(), 2, 3)
}

/// `[b, a, c, d]` → `[b, c, a, d]` for a contiguous `t` (one parallel pass).
fn swap_axes_1_2(t: &FlexTensor) -> FlexTensor {
    let [b, a, c, d] = t.layout().shape().dims::<4>();
    flex(kernels::swap_axes_1_2(slice(t), [b, a, c, d]), [b, c, a, d])
}

/// `[b, h, t, d]` → `[b, kv, (h/kv)·t, d]` for a contiguous `t`: the query heads that share a
/// KV head become one block of rows (a free reshape of HF's head order).
fn group_heads(t: FlexTensor, kv: usize) -> FlexTensor {
    let [b, h, s, d] = t.layout().shape().dims::<4>();
    Cpu::float_reshape(t, Shape::new([b, kv, h / kv * s, d]))
}

/// `P = softmax(scale · q kᵀ)` over the unmasked keys and `out = P v`, for `q` `[b, h, t, d]`
/// (contiguous), `k` `[b, kv, T, d]` and `v` `[b, T, kv, d]` (any non-negative strides).
/// The `h / kv` query heads of a KV head are one `[(h/kv)·t, d]` block of `q`, so each
/// product runs per KV head without copying keys or values. Returns `out` `[b, t, h, d]` and `P`
/// `[b, kv, (h/kv)·t, T]`.
fn attention_forward(
    q: &FlexTensor,
    k: &FlexTensor,
    v: &FlexTensor,
    masked: &[u8],
    scale: f32,
) -> (FlexTensor, FlexTensor) {
    let kv = k.layout().shape().dims::<4>()[1];
    let mut p = owned(matmul(group_heads(q.clone(), kv), swap_last(k)));
    let [b, _, nq, tk] = p.layout().shape().dims::<4>();
    kernels::masked_softmax(p.storage_mut::<f32>(), masked, scale, [b, kv, nq, tk]);
    let out = matmul(p.clone(), Cpu::float_swap_dims(v.clone(), 1, 2)); // [b, kv, nq, d]
    let out = Cpu::float_reshape(out, q.layout().shape().clone());
    (swap_axes_1_2(&out), p)
}

pub fn attention(
    q: Tensor<Cpu, 4>,
    k: Tensor<Cpu, 4>,
    v: Tensor<Cpu, 4>,
    mask: FlexTensor,
    scale: f32,
) -> Tensor<Cpu, 4> {
    // `k` and `v` are read through their strides: a KV cache is a view of a longer buffer
    let (q, k, v) = (
        plain(q),
        k.into_primitive().tensor(),
        v.into_primitive().tensor(),
    );
    let (out, _) = attention_forward(&q, &k, &v, &mask_bytes(&mask), scale);
    from_plain(out)
}

#[derive(Debug)]
struct AttentionBackward;

impl Backward<Cpu, 3> for AttentionBackward {
    /// `q`, `k`, `v`, the probabilities `P` and the scale.
    type State = (FlexTensor, FlexTensor, FlexTensor, FlexTensor, f32);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_q, node_k, node_v] = ops.parents;
        let (q, k, v, p, scale) = ops.state;
        let [_, kv, tk, _] = k.layout().shape().dims::<4>();
        // ∂L/∂out `[b, t, h, d]` → `[b, h, t, d]` → `[b, kv, nq, d]`, the layout of `P v`
        let d_out = swap_axes_1_2(&contiguous(grads.consume::<Cpu>(&ops.node)));
        let d_out = group_heads(d_out, kv);
        if let Some(node) = node_v {
            // `[b, kv, T, d]` → `v`'s own `[b, T, kv, d]`
            grads.register::<Cpu>(
                node.id,
                swap_axes_1_2(&matmul(swap_last(&p), d_out.clone())),
            );
        }
        // ∂L/∂P = dOut vᵀ, then ∂L/∂s (scale folded in) in place
        let v_heads = Cpu::float_swap_dims(v, 1, 2);
        let mut ds = owned(matmul(d_out, swap_last(&v_heads)));
        kernels::softmax_backward(ds.storage_mut::<f32>(), slice(&p), scale, tk);
        if let Some(node) = node_q {
            let dq = Cpu::float_reshape(matmul(ds.clone(), k), q.layout().shape().clone());
            grads.register::<Cpu>(node.id, dq);
        }
        if let Some(node) = node_k {
            grads.register::<Cpu>(node.id, matmul(swap_last(&ds), group_heads(q, kv)));
        }
    }
}

pub fn attention_ad(
    q: Tensor<CpuAd, 4>,
    k: Tensor<CpuAd, 4>,
    v: Tensor<CpuAd, 4>,
    mask: FlexTensor,
    scale: f32,
) -> Tensor<CpuAd, 4> {
    // `v` is read through its strides (no copy); `q` and `k` are contiguous
    let (q, k, v) = (tracked(q), tracked(k), v.into_primitive().tensor());
    let (out, p) = attention_forward(
        &q.primitive,
        &k.primitive,
        &v.primitive,
        &mask_bytes(&mask),
        scale,
    );
    let state = || {
        let (pq, pk, pv) = (
            q.primitive.clone(),
            k.primitive.clone(),
            v.primitive.clone(),
        );
        (pq, pk, pv, p, scale)
    };
    record(AttentionBackward, [&q, &k, &v], state, out)
}

// ---- output layer + negative log-likelihood ----

fn head_logits(h: &FlexTensor, w: &FlexTensor, layout: HeadLayout) -> FlexTensor {
    match layout {
        HeadLayout::VocabFirst => matmul(h.clone(), Cpu::float_transpose(w.clone())),
        HeadLayout::VocabLast => matmul(h.clone(), w.clone()),
    }
}

fn scalar(x: f64) -> FlexTensor {
    flex(vec![x as f32], [1])
}

pub fn nll(
    h: Tensor<Cpu, 2>,
    w: Tensor<Cpu, 2>,
    layout: HeadLayout,
    targets: &[u32],
    weights: &[f32],
) -> Tensor<Cpu, 1> {
    let (h, w) = (plain(h), plain(w));
    let logits = contiguous(head_logits(&h, &w, layout));
    let v = logits.layout().shape().dims::<2>()[1];
    let (_, loss) = kernels::nll(slice(&logits), v, targets, weights);
    from_plain(scalar(loss))
}

#[derive(Debug)]
struct NllBackward;

/// The backward state of [`nll_ad`].
#[derive(Clone, Debug)]
struct NllState {
    h: FlexTensor,
    w: FlexTensor,
    layout: HeadLayout,
    logits: FlexTensor,
    lse: Vec<f32>,
    targets: Vec<u32>,
    weights: Vec<f32>,
}

impl Backward<Cpu, 2> for NllBackward {
    type State = NllState;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_h, node_w] = ops.parents;
        let g = slice(&contiguous(grads.consume::<Cpu>(&ops.node)))[0];
        let s = ops.state;
        let mut d = owned(s.logits);
        let v = d.layout().shape().dims::<2>()[1];
        kernels::nll_backward(d.storage_mut::<f32>(), v, &s.lse, &s.targets, &s.weights, g);
        let vocab_first = s.layout == HeadLayout::VocabFirst;
        if let Some(node) = node_h {
            let w = if vocab_first {
                s.w.clone()
            } else {
                Cpu::float_transpose(s.w.clone())
            };
            grads.register::<Cpu>(node.id, matmul(d.clone(), w));
        }
        if let Some(node) = node_w {
            // written in the weight's own layout, so it adds to the embedding gradient
            // (tied weights) without a strided pass
            let dw = if vocab_first {
                matmul(Cpu::float_transpose(d), s.h)
            } else {
                matmul(Cpu::float_transpose(s.h), d)
            };
            grads.register::<Cpu>(node.id, dw);
        }
    }
}

pub fn nll_ad(
    h: Tensor<CpuAd, 2>,
    w: Tensor<CpuAd, 2>,
    layout: HeadLayout,
    targets: &[u32],
    weights: &[f32],
) -> Tensor<CpuAd, 1> {
    let (h, w) = (tracked(h), tracked(w));
    let logits = contiguous(head_logits(&h.primitive, &w.primitive, layout));
    let v = logits.layout().shape().dims::<2>()[1];
    let (lse, loss) = kernels::nll(slice(&logits), v, targets, weights);
    let state = || NllState {
        h: h.primitive.clone(),
        w: w.primitive.clone(),
        layout,
        logits,
        lse,
        targets: targets.to_vec(),
        weights: weights.to_vec(),
    };
    record(NllBackward, [&h, &w], state, scalar(loss))
}
