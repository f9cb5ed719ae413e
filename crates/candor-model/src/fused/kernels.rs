//! The loops behind the fused ops, on contiguous row-major `f32` slices, parallel over rows
//! (rayon). Each is one pass over its inputs; the matching tensor-op versions are in
//! [`super::reference`] and the tests check one against the other.

use rayon::prelude::*;

/// Rows per rayon task: enough elements that a task outweighs its scheduling.
fn rows_per_task(row_len: usize) -> usize {
    (16 * 1024 / row_len.max(1)).max(1)
}

/// RMSNorm forward over rows of `w.len()`: `y = x · r · w` with `r = 1/√(mean(x²) + eps)`.
/// Returns `y` and `r` per row (kept for the backward pass).
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let h = w.len();
    let rows = x.len() / h;
    let mut y = vec![0f32; x.len()];
    let mut r = vec![0f32; rows];
    let per = rows_per_task(h);
    y.par_chunks_mut(per * h)
        .zip(r.par_chunks_mut(per))
        .zip(x.par_chunks(per * h))
        .for_each(|((y, r), x)| {
            for ((y, r), x) in y.chunks_mut(h).zip(r.iter_mut()).zip(x.chunks(h)) {
                let ms = x.iter().map(|v| v * v).sum::<f32>() / h as f32;
                *r = 1.0 / (ms + eps).sqrt();
                for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
                    *y = x * *r * w;
                }
            }
        });
    (y, r)
}

/// RMSNorm backward: with `x̂ = x·r` and `d = g·w`, `dx = r·(d − x̂·mean(d·x̂))` and
/// `dw = Σ_rows g·x̂`.
pub fn rms_norm_backward(x: &[f32], w: &[f32], r: &[f32], g: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let h = w.len();
    let mut dx = vec![0f32; x.len()];
    let per = rows_per_task(h);
    let dw = dx
        .par_chunks_mut(per * h)
        .zip(x.par_chunks(per * h))
        .zip(g.par_chunks(per * h))
        .zip(r.par_chunks(per))
        .map(|(((dx, x), g), r)| {
            let mut dw = vec![0f32; h];
            for (((dx, x), g), &r) in dx.chunks_mut(h).zip(x.chunks(h)).zip(g.chunks(h)).zip(r) {
                let mut dot = 0f32;
                for (((&x, &g), &w), dw) in x.iter().zip(g).zip(w).zip(dw.iter_mut()) {
                    let xh = x * r;
                    *dw += g * xh;
                    dot += g * w * xh;
                }
                let mean = dot / h as f32;
                for (((dx, &x), &g), &w) in dx.iter_mut().zip(x).zip(g).zip(w) {
                    *dx = r * (g * w - x * r * mean);
                }
            }
            dw
        })
        .reduce(
            || vec![0f32; h],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            },
        );
    (dx, dw)
}

/// `eˣ` in f32 without a libm call, so that the loops below vectorise (libm's `expf` is one
/// scalar call per element: 3–5% of a SmolLM2 training step's CPU time went there). Cephes'
/// `expf`: `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2`, a degree-6 polynomial for `eʳ`, and `2ⁿ` built
/// in the exponent bits; relative error within 2·10⁻⁷ (checked against `f64::exp` in the
/// tests below). Below −87.3 it returns 0 (masked scores are −∞), above 88.7 infinity; NaN
/// stays NaN. Written with selects and integer bit operations only (no `clamp`, `round` or
/// float-to-int cast, which keep the compiler from vectorising on baseline x86-64): a row sum
/// of `exp` over SmolLM2's vocabulary runs 1.8× faster than with libm (2 threads, dev VM).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // adding 1.5·2²³ rounds to an integer, which then sits in the low mantissa bits
    const SHIFT: f32 = 12_582_912.0;
    // not `clamp`: its NaN handling and assertion keep the loop scalar
    #[allow(clippy::manual_clamp)]
    let c = if x < -87.0 {
        -87.0
    } else if x > 88.0 {
        88.0
    } else {
        x
    };
    let t = c * std::f32::consts::LOG2_E + SHIFT;
    let n = t - SHIFT;
    let n_int = (t.to_bits() as i32).wrapping_sub(SHIFT.to_bits() as i32);
    let r = c - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = (p * r * r + r + 1.0) * f32::from_bits((n_int.wrapping_add(127) << 23) as u32);
    if x < -87.3 {
        0.0
    } else if x > 88.7 {
        f32::INFINITY
    } else if x.is_nan() {
        x
    } else {
        y
    }
}

/// `Σ f(x)` over a row with eight partial sums, so that the loop vectorises (one running f32
/// sum is a serial dependency the compiler may not reorder).
#[inline(always)]
fn sum_of(row: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = row.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|&x| f(x)).sum();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += f(x);
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn sum(row: &[f32]) -> f32 {
    sum_of(row, |x| x)
}

/// `Σ exp(x − max)` over a row.
fn sum_exp(row: &[f32], max: f32) -> f32 {
    sum_of(row, |x| exp(x - max))
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `erf(x)` by Abramowitz & Stegun 7.1.26 (their bound: absolute error ≤ 1.5e-7, about f32's
/// own rounding near 1) with [`exp`]: a loop of these vectorizes, where the `libm` crate's scalar `erff`
/// (Burn's GELU) took a third of MiniLM's time in SAR labelling.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let mut p = 1.061_405_4f32;
    p = p * t - 1.453_152_1;
    p = p * t + 1.421_413_7;
    p = p * t - 0.284_496_74;
    p = p * t + 0.254_829_6;
    let y = 1.0 - p * t * exp(-a * a);
    if x < 0.0 {
        -y
    } else {
        y
    }
}

/// GELU with the exact (erf) form, `x · (1 + erf(x / √2)) / 2` (BERT's and MiniLM's).
pub fn gelu(x: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(16 * 1024)
        .zip(x.par_chunks(16 * 1024))
        .for_each(|(o, x)| gelu_chunk(o, x));
    out
}

#[inline(always)]
fn gelu_loop(o: &mut [f32], x: &[f32]) {
    for (o, &x) in o.iter_mut().zip(x) {
        *o = 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// `$vis fn $name(args) -> ret` calling the `#[inline(always)]` fn `$inner` compiled for the
/// widest vectors the machine has (AVX-512 or AVX2, detected at run time), for loops that
/// vectorise: the build itself targets baseline x86-64 (SSE2). The same operations run in the
/// same order on every path, so the values do not depend on the machine.
macro_rules! widest {
    ($vis:vis fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty = $inner:ident) => {
        $vis fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn wide($($arg: $ty),*) -> $ret {
                    $inner($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) -> $ret {
                    $inner($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the feature was just detected
                    return unsafe { wide($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: as above
                    return unsafe { avx2($($arg),*) };
                }
            }
            $inner($($arg),*)
        }
    };
}

// GELU took a seventh of MiniLM's time beside gemm's AVX-512 when compiled for SSE2 only.
widest!(fn gelu_chunk(o: &mut [f32], x: &[f32]) -> () = gelu_loop);

#[inline(always)]
fn gelu_in_place_loop(x: &mut [f32]) {
    for x in x.iter_mut() {
        let v = *x;
        *x = 0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

// [`gelu`]'s formula over a tile in place, on this thread (the tiled feed-forward's).
widest!(pub fn gelu_in_place(x: &mut [f32]) -> () = gelu_in_place_loop);

#[inline(always)]
fn swiglu_in_place_loop(g: &mut [f32], u: &[f32]) {
    for (g, &u) in g.iter_mut().zip(u) {
        let v = *g;
        *g = v * sigmoid(v) * u;
    }
}

// [`swiglu`]'s formula, `g ← silu(g) · u`, over a tile in place, on this thread.
widest!(pub fn swiglu_in_place(g: &mut [f32], u: &[f32]) -> () = swiglu_in_place_loop);

#[inline(always)]
fn exp_shifted_loop(x: &[f32], max: f32, s: f32, out: &mut [f32]) -> f64 {
    for (o, &x) in out.iter_mut().zip(x) {
        *o = exp((x - max) * s);
    }
    let mut acc = [0f64; 8];
    let chunks = out.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(|&w| w as f64).sum();
    for c in chunks {
        for (a, &w) in acc.iter_mut().zip(c) {
            *a += w as f64;
        }
    }
    acc.iter().sum::<f64>() + tail
}

// `out[i] = exp(s · (x[i] − max))` over a row, and `Σ out` accumulated in f64 (eight partial
// sums, so the loop vectorises): a decoding step's log-sum-exp (`s = 1`) and its sampling
// weights at temperature `1/s`, one pass over the vocabulary each.
widest!(pub fn exp_shifted(x: &[f32], max: f32, s: f32, out: &mut [f32]) -> f64 = exp_shifted_loop);

/// LayerNorm over rows of `w.len()`: `(x − mean) / √(var + eps) · w + b`, the variance
/// biased (divided by the row length), as PyTorch's.
pub fn layer_norm(x: &[f32], w: &[f32], b: &[f32], eps: f32) -> Vec<f32> {
    let h = w.len();
    let mut y = vec![0f32; x.len()];
    let per = rows_per_task(h);
    y.par_chunks_mut(per * h)
        .zip(x.par_chunks(per * h))
        .for_each(|(y, x)| layer_norm_chunk(y, x, w, b, eps));
    y
}

#[inline(always)]
fn layer_norm_rows(y: &mut [f32], x: &[f32], w: &[f32], b: &[f32], eps: f32) {
    let h = w.len();
    for (y, x) in y.chunks_mut(h).zip(x.chunks(h)) {
        let mean = sum(x) / h as f32;
        let var = sum_of(x, |v| (v - mean) * (v - mean)) / h as f32;
        let r = 1.0 / (var + eps).sqrt();
        for (((y, &x), &w), &b) in y.iter_mut().zip(x).zip(w).zip(b) {
            *y = (x - mean) * r * w + b;
        }
    }
}

widest!(fn layer_norm_chunk(y: &mut [f32], x: &[f32], w: &[f32], b: &[f32], eps: f32) -> () = layer_norm_rows);

/// `y += b` in place, in parallel: `b` either as long as `y` (a residual) or one row that every
/// row of `y` gets (a bias; `y.len()` a multiple of `b.len()`).
pub fn add_assign(y: &mut [f32], b: &[f32]) {
    if b.len() == y.len() {
        y.par_chunks_mut(16 * 1024)
            .zip(b.par_chunks(16 * 1024))
            .for_each(|(y, b)| y.iter_mut().zip(b).for_each(|(y, b)| *y += b));
    } else {
        let h = b.len();
        y.par_chunks_mut(rows_per_task(h) * h).for_each(|c| {
            for row in c.chunks_mut(h) {
                row.iter_mut().zip(b).for_each(|(y, b)| *y += b);
            }
        });
    }
}

/// SwiGLU's gate: `silu(g) · u`.
pub fn swiglu(g: &[f32], u: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; g.len()];
    out.par_chunks_mut(16 * 1024)
        .zip(g.par_chunks(16 * 1024))
        .zip(u.par_chunks(16 * 1024))
        .for_each(|((o, g), u)| {
            for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                *o = g * sigmoid(g) * u;
            }
        });
    out
}

/// SwiGLU backward: `du = d·silu(g)`, `dg = d·u·σ(g)·(1 + g·(1 − σ(g)))`.
pub fn swiglu_backward(g: &[f32], u: &[f32], d: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let mut dg = vec![0f32; g.len()];
    let mut du = vec![0f32; g.len()];
    dg.par_chunks_mut(16 * 1024)
        .zip(du.par_chunks_mut(16 * 1024))
        .zip(g.par_chunks(16 * 1024))
        .zip(u.par_chunks(16 * 1024).zip(d.par_chunks(16 * 1024)))
        .for_each(|(((dg, du), g), (u, d))| {
            for ((((dg, du), &g), &u), &d) in dg.iter_mut().zip(du.iter_mut()).zip(g).zip(u).zip(d)
            {
                let s = sigmoid(g);
                *du = d * g * s;
                *dg = d * u * s * (1.0 + g * (1.0 - s));
            }
        });
    (dg, du)
}

/// Rotate-half RoPE with the head axis moved in front of the sequence axis:
/// `x` `[b, t, h, d]` → `[b, h, t, d]`, `y = x·cos + rotate_half(x)·sin` where
/// `rotate_half(x) = [−x₂, x₁]` over the two halves of `d`. `cos`/`sin` are `[b·t, d]`.
pub fn rope(x: &[f32], cos: &[f32], sin: &[f32], [b, t, h, d]: [usize; 4]) -> Vec<f32> {
    let half = d / 2;
    let mut y = vec![0f32; x.len()];
    // one task per (batch row, head): its `[t, d]` block of the output is contiguous
    y.par_chunks_mut(t * d).enumerate().for_each(|(bh, out)| {
        let (bi, hi) = (bh / h, bh % h);
        for (ti, out) in out.chunks_mut(d).enumerate() {
            let p = bi * t + ti;
            let src = &x[(p * h + hi) * d..][..d];
            let (c, s) = (&cos[p * d..][..d], &sin[p * d..][..d]);
            for i in 0..half {
                out[i] = src[i] * c[i] - src[i + half] * s[i];
                out[i + half] = src[i + half] * c[i + half] + src[i] * s[i + half];
            }
        }
    });
    debug_assert_eq!(y.len(), b * h * t * d);
    y
}

/// RoPE backward (the transpose of [`rope`]): `dy` `[b, h, t, d]` → `dx` `[b, t, h, d]`,
/// `dx = dy·cos − rotate_half(dy·sin)`.
pub fn rope_backward(dy: &[f32], cos: &[f32], sin: &[f32], [b, t, h, d]: [usize; 4]) -> Vec<f32> {
    let half = d / 2;
    let mut dx = vec![0f32; dy.len()];
    // one task per position: its `[h, d]` block of the input gradient is contiguous
    dx.par_chunks_mut(h * d).enumerate().for_each(|(p, out)| {
        let (bi, ti) = (p / t, p % t);
        let (c, s) = (&cos[p * d..][..d], &sin[p * d..][..d]);
        for (hi, out) in out.chunks_mut(d).enumerate() {
            let g = &dy[((bi * h + hi) * t + ti) * d..][..d];
            for i in 0..half {
                out[i] = g[i] * c[i] + g[i + half] * s[i + half];
                out[i + half] = g[i + half] * c[i + half] - g[i] * s[i];
            }
        }
    });
    debug_assert_eq!(dx.len(), b * t * h * d);
    dx
}

/// `x` `[b, a, c, d]` → `[b, c, a, d]` (axes 1 and 2 swapped), one task per output
/// `[a, d]` block. Attention's layout changes: heads-first for its products, the projections'
/// `[b, t, heads, d]` outside.
pub fn swap_axes_1_2(x: &[f32], [b, a, c, d]: [usize; 4]) -> Vec<f32> {
    debug_assert_eq!(x.len(), b * a * c * d);
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(a * d).enumerate().for_each(|(bc, out)| {
        let (bi, ci) = (bc / c, bc % c);
        for (ai, out) in out.chunks_mut(d).enumerate() {
            out.copy_from_slice(&x[((bi * a + ai) * c + ci) * d..][..d]);
        }
    });
    y
}

/// Attention probabilities in place: each row of `scores` (`t` keys) becomes
/// `softmax(scale · s)` over the keys that `masked` leaves in. Rows of `s`
/// are `[b, kv, nq]`; `masked` is `[b, nq, t]` (non-zero = masked out), shared by the `kv`
/// heads of a batch row.
pub fn masked_softmax(s: &mut [f32], masked: &[u8], scale: f32, [b, kv, nq, t]: [usize; 4]) {
    debug_assert_eq!(s.len(), b * kv * nq * t);
    s.par_chunks_mut(nq * t)
        .enumerate()
        .for_each(|(bk, block)| {
            let m = &masked[(bk / kv) * nq * t..][..nq * t];
            masked_softmax_chunk(block, m, scale, t)
        });
}

#[inline(always)]
fn masked_softmax_rows(block: &mut [f32], m: &[u8], scale: f32, t: usize) {
    for (row, m) in block.chunks_mut(t).zip(m.chunks(t)) {
        // scale and mask, and the row's max over 16 lanes (a running `f32::max` keeps the loop
        // scalar; short rows such as MiniLM's 30–60 keys are most of its time otherwise)
        let mask = |v: f32, m: u8| if m != 0 { f32::NEG_INFINITY } else { v * scale };
        let mut lanes = [f32::NEG_INFINITY; 16];
        let mut vs = row.chunks_exact_mut(16);
        let mut ms = m.chunks_exact(16);
        for (vc, mc) in (&mut vs).zip(&mut ms) {
            for ((v, &m), l) in vc.iter_mut().zip(mc).zip(lanes.iter_mut()) {
                *v = mask(*v, m);
                *l = if *v > *l { *v } else { *l };
            }
        }
        let mut max = f32::NEG_INFINITY;
        for (v, &m) in vs.into_remainder().iter_mut().zip(ms.remainder()) {
            *v = mask(*v, m);
            max = max.max(*v);
        }
        let max = lanes.iter().fold(max, |a, &l| a.max(l));
        if max == f32::NEG_INFINITY {
            row.fill(0.0); // every key masked: attend to nothing
            continue;
        }
        row.iter_mut().for_each(|v| *v = exp(*v - max));
        let inv = 1.0 / sum(row);
        row.iter_mut().for_each(|v| *v *= inv);
    }
}

widest!(fn masked_softmax_chunk(block: &mut [f32], m: &[u8], scale: f32, t: usize) -> () = masked_softmax_rows);

/// Softmax backward in place, scale included: `dp` (`∂L/∂P`) becomes
/// `∂L/∂s = scale · P ⊙ (dP − Σ_keys dP ⊙ P)`, row by row.
pub fn softmax_backward(dp: &mut [f32], p: &[f32], scale: f32, t: usize) {
    let per = rows_per_task(t);
    dp.par_chunks_mut(per * t)
        .zip(p.par_chunks(per * t))
        .for_each(|(dp, p)| {
            for (dp, p) in dp.chunks_mut(t).zip(p.chunks(t)) {
                let dot: f32 = dp.iter().zip(p).map(|(a, b)| a * b).sum();
                for (d, &p) in dp.iter_mut().zip(p) {
                    *d = scale * p * (*d - dot);
                }
            }
        });
}

/// Log-sum-exp of each row of `logits` (`v` columns), and `Σ_i w_i · (lse_i − logits[i, t_i])`,
/// the weighted negative log-likelihood of the targets.
pub fn nll(logits: &[f32], v: usize, targets: &[u32], weights: &[f32]) -> (Vec<f32>, f64) {
    let lse: Vec<f32> = logits
        .par_chunks(v)
        .map(|row| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            max + sum_exp(row, max).ln()
        })
        .collect();
    let loss = logits
        .chunks(v)
        .zip(&lse)
        .zip(targets.iter().zip(weights))
        .map(|((row, &lse), (&t, &w))| w as f64 * (lse - row[t as usize]) as f64)
        .sum();
    (lse, loss)
}

/// NLL backward in place: `logits` becomes `∂L/∂logits = g · w_i · (softmax_i − onehot(t_i))`.
pub fn nll_backward(
    logits: &mut [f32],
    v: usize,
    lse: &[f32],
    targets: &[u32],
    weights: &[f32],
    g: f32,
) {
    logits
        .par_chunks_mut(v)
        .zip(lse.par_iter())
        .zip(targets.par_iter().zip(weights.par_iter()))
        .for_each(|((row, &lse), (&t, &w))| {
            let s = g * w;
            row.iter_mut().for_each(|x| *x = s * exp(*x - lse));
            row[t as usize] -= s;
        });
}

/// `table[rows[i]] += d[i]` for each row `i` of `d` (rows of `table`'s width; a row may repeat).
pub fn add_rows(table: &mut [f32], d: &[f32], rows: &[usize]) {
    let width = d.len() / rows.len().max(1);
    for (&r, src) in rows.iter().zip(d.chunks_exact(width)) {
        let dst = &mut table[r * width..(r + 1) * width];
        dst.iter_mut().zip(src).for_each(|(t, s)| *t += s);
    }
}

/// `Σ x²`, accumulated in f64 per chunk.
pub fn sum_of_squares(x: &[f32]) -> f64 {
    x.par_chunks(16 * 1024)
        .map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>())
        .sum()
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_is_within_two_tenths_of_a_millionth_of_the_true_value() {
        let mut worst = 0f64;
        for i in 0..=2_000_000 {
            let x = -87.0 + 175.0 * i as f32 / 2_000_000.0;
            let (got, want) = (super::exp(x) as f64, (x as f64).exp());
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 2e-7, "largest relative error {worst}");
        assert_eq!(super::exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(super::exp(-100.0), 0.0);
        assert_eq!(super::exp(0.0), 1.0);
        assert_eq!(super::exp(f32::INFINITY), f32::INFINITY);
        assert!(super::exp(f32::NAN).is_nan());
    }
}
