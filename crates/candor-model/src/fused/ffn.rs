//! A feed-forward block for inference, `down(act(up(x)))`, in tiles of rows: each tile's wide
//! intermediate (`[rows, 1536]` for MiniLM and SmolLM2) is made, activated and multiplied out
//! while it sits in cache, where op by op it went through memory five to seven times (the
//! product written, its bias added, the activation read and written into a fresh zero-filled
//! buffer, then read again by the next product). SAR's MiniLM stage: 74.5 → 71.0 s. SmolLM2's
//! prefill takes the same path (SwiGLU) without a measurable change: its intermediates were
//! already small enough to stay in cache.
//!
//! The values are those of the op-by-op path: the same products (gemm computes each output row
//! from its own input row whatever the tile), the bias added after the product and the same
//! activation formulas ([`kernels`]).

use super::kernels;
use rayon::prelude::*;
use std::cell::RefCell;
use std::mem::MaybeUninit;

/// Rows per tile at most (a batch is cut into equal tiles, a multiple of the threads in
/// number). gemm packs the weight again for every product, so a tile must be tall
/// enough to pay for that: at 64 rows (the intermediate in L2) packing took what the saved
/// memory traffic gave back (SAR's MiniLM stage 74.5 s, as op by op); at 128, 256 and 512 rows
/// (0.75–3 MiB intermediates, in L3) 71.0–71.4 s; at 1024 a batch has too few tiles to share
/// between the threads (77.8 s). 2-core AMD VM, 2026-12-06, `bench-data`'s SAR slice.
pub const TILE_ROWS: usize = 256;

/// The activation between the two products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `gelu(x W₁ + b₁)`, erf form (BERT, MiniLM): one up-projection.
    Gelu,
    /// `silu(x W_gate + b) · (x W_up + b)` (Llama, SmolLM2): two up-projections, gate first.
    SwiGlu,
}

/// One projection: a row-major `[in, out]` weight and an optional bias `[out]`.
pub struct Projection<'a> {
    pub weight: &'a [f32],
    pub bias: Option<&'a [f32]>,
    pub out: usize,
}

thread_local! {
    /// Per-thread scratch for a tile's intermediates, reused across tiles and calls.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `down(act(ups(x)))` for `x` `[rows, d]` row-major; `ups` holds one projection for
/// [`Activation::Gelu`] and two (gate, up) for [`Activation::SwiGlu`], each `[d, f]`, and
/// `down` is `[f, out]`. Tiles run in parallel, each product on its tile's thread.
pub fn feed_forward(
    x: &[f32],
    d: usize,
    ups: &[Projection],
    down: &Projection,
    act: Activation,
) -> Vec<f32> {
    let rows = x.len() / d;
    let f = ups[0].out;
    let n = down.out;
    let want = if act == Activation::Gelu { 1 } else { 2 };
    assert_eq!(ups.len(), want, "{act:?} takes {want} up-projections");
    assert!(ups.iter().all(|p| p.out == f && p.weight.len() == d * f));
    assert_eq!(down.weight.len(), f * n);
    // as many tiles of at most TILE_ROWS as a multiple of the threads, all of one size, so
    // that no thread waits for another's last tile
    let threads = rayon::current_num_threads().max(1);
    let tiles = threads * rows.div_ceil(threads * TILE_ROWS).max(1);
    let tile = rows.div_ceil(tiles).max(1);
    let mut out: Vec<f32> = Vec::with_capacity(rows * n);
    out.spare_capacity_mut()[..rows * n]
        .par_chunks_mut(tile * n)
        .enumerate()
        .for_each(|(t, o)| {
            let m = o.len() / n;
            let xt = &x[t * tile * d..][..m * d];
            SCRATCH.with_borrow_mut(|s| {
                s.resize(ups.len() * tile * f, 0.0);
                let (h, rest) = s.split_at_mut(tile * f);
                let h = &mut h[..m * f];
                project(h, xt, &ups[0], m, d);
                match act {
                    Activation::Gelu => kernels::gelu_in_place(h),
                    Activation::SwiGlu => {
                        let u = &mut rest[..m * f];
                        project(u, xt, &ups[1], m, d);
                        kernels::swiglu_in_place(h, u);
                    }
                }
                // SAFETY: `project` writes every element of `o` (`m` rows of `n`)
                let o = unsafe { &mut *(o as *mut [MaybeUninit<f32>] as *mut [f32]) };
                project(o, h, down, m, f);
            });
        });
    // SAFETY: every tile wrote its `m·n` outputs above
    unsafe { out.set_len(rows * n) };
    out
}

/// `dst = a p.weight (+ p.bias)` for `a` `[m, k]`, on this thread.
fn project(dst: &mut [f32], a: &[f32], p: &Projection, m: usize, k: usize) {
    let n = p.out;
    // SAFETY: `dst` holds `m·n` f32s, `a` `m·k` and the weight `k·n`, all row-major and
    // contiguous; with `read_dst = false` gemm only writes `dst`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            p.weight.as_ptr(),
            1,
            n as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    if let Some(b) = p.bias {
        for row in dst.chunks_mut(n) {
            row.iter_mut().zip(b).for_each(|(y, b)| *y += b);
        }
    }
}
