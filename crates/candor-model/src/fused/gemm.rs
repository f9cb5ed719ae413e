//! Matrix products on the CPU backend's tensors through the `gemm` crate, into a fresh output
//! that is written once.
//!
//! Why not Flex's own `float_matmul` (which calls the same crate): it allocates its output with
//! `FlexTensor::empty`, which zero-fills a `Vec<u8>` and then, in `Bytes::from_bytes_vec`,
//! copies it into a second allocation to raise the alignment. On a SmolLM2 training step that
//! zero-fill, copy and the page faults of both buffers were a third of the main thread's work,
//! all of it single-threaded while the gemm itself runs on every core.

use burn::tensor::ops::FloatTensorOps;
use burn::tensor::{DType, TensorData};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

/// Below this many multiply-adds one matrix product runs on one thread (as Flex does).
const PARALLEL_MACS: usize = 192 * 192 * 192;

/// A strided matrix operand: element `(i, j)` of batch `b` is `data[base(b) + i·rs + j·cs]`.
struct Operand<'a> {
    data: &'a [f32],
    bases: Vec<usize>,
    rs: isize,
    cs: isize,
}

/// `t`'s batch offsets and matrix strides, or `None` if a stride is negative or the view
/// would read outside its storage (left to Flex's matmul).
fn operand<'a>(t: &'a FlexTensor, batch: &[usize]) -> Option<Operand<'a>> {
    if t.dtype() != DType::F32 {
        return None;
    }
    let layout = t.layout();
    let (dims, strides) = (layout.shape().as_slice(), layout.strides());
    if strides.iter().any(|&s| s < 0) {
        return None;
    }
    let data: &[f32] = t.storage();
    let nd = dims.len();
    let last = layout.start_offset()
        + dims
            .iter()
            .zip(strides)
            .map(|(&d, &s)| d.saturating_sub(1) * s as usize)
            .sum::<usize>();
    if dims.contains(&0) || last >= data.len() {
        return None;
    }
    let mut bases = vec![layout.start_offset()];
    for (d, &size) in batch.iter().enumerate() {
        let stride = strides[d] as usize;
        bases = bases
            .iter()
            .flat_map(|&b| (0..size).map(move |i| b + i * stride))
            .collect();
    }
    Some(Operand {
        data,
        bases,
        rs: strides[nd - 2],
        cs: strides[nd - 1],
    })
}

/// `a · b` for f32 tensors `[..., m, k]` and `[..., k, n]` with the same batch dimensions and
/// any non-negative strides (transposed views included); the result is contiguous.
pub fn matmul(a: FlexTensor, b: FlexTensor) -> FlexTensor {
    product_of(a, b, false)
}

/// [`matmul`] for inference: a right-hand side multiplied at decode shapes a second time is
/// packed once and read packed from then on ([`super::decode::packed_weight`]). Training's
/// products do not pack: their weights change every step.
pub fn matmul_packing(a: FlexTensor, b: FlexTensor) -> FlexTensor {
    product_of(a, b, true)
}

fn product_of(a: FlexTensor, b: FlexTensor, packing: bool) -> FlexTensor {
    let (da, db) = (a.layout().shape().to_vec(), b.layout().shape().to_vec());
    let nd = da.len();
    let fallback = |a: &FlexTensor, b: &FlexTensor| Flex::float_matmul(a.clone(), b.clone());
    if nd < 2 || db.len() != nd || da[..nd - 2] != db[..nd - 2] || da[nd - 1] != db[nd - 2] {
        return fallback(&a, &b);
    }
    let batch = da[..nd - 2].to_vec();
    let (m, k, n) = (da[nd - 2], da[nd - 1], db[nd - 1]);
    let (Some(lhs), Some(rhs)) = (operand(&a, &batch), operand(&b, &batch)) else {
        return fallback(&a, &b);
    };
    let count = lhs.bases.len();
    let mut shape = da.clone();
    shape[nd - 1] = n;
    // a decoding step's products: the weight streamed (row-major) or packed once (either
    // layout, the tied output layer's transposed view included)
    let (rs, cs) = (rhs.rs as usize, rhs.cs as usize);
    let unpacked = cs == 1 && super::decode::applies(m, n);
    let packable = packing && (cs == 1 || rs == 1) && super::decode::applies_packed(m, n);
    if count == 1 && lhs.cs == 1 && (unpacked || packable) {
        let packed = packable
            .then(|| {
                super::decode::packed_weight(b.data_arc(), rhs.data, rhs.bases[0], [rs, cs], k, n)
            })
            .flatten();
        if unpacked || packed.is_some() {
            let out = super::decode::matmul(
                &lhs.data[lhs.bases[0]..],
                lhs.rs as usize,
                &rhs.data[rhs.bases[0]..],
                [rs, cs],
                m,
                k,
                n,
                packed.as_deref(),
            );
            return FlexTensor::from_data(TensorData::new(out, shape));
        }
    }
    let macs = m * n * k;
    let threads = rayon::current_num_threads();
    if count == 1 && macs >= PARALLEL_MACS && k >= 8 * m.max(n) && threads > 1 {
        return FlexTensor::from_data(TensorData::new(
            split_k(&lhs, &rhs, m, k, n, threads),
            shape,
        ));
    }
    let mut out: Vec<f32> = Vec::with_capacity(count * m * n);
    // SAFETY (both calls below): `dst` is a chunk of `m·n` f32s of `out`'s spare capacity that
    // no other task touches.
    let one = |dst: *mut f32, i: usize, par: gemm::Parallelism| unsafe {
        product(dst, &lhs, &rhs, i, [m, n], (0, k), par)
    };
    let spare = &mut out.spare_capacity_mut()[..count * m * n];
    if count > 1 && macs < PARALLEL_MACS {
        // many small products (attention): one per task
        spare
            .par_chunks_mut(m * n)
            .enumerate()
            .for_each(|(i, c)| one(c.as_mut_ptr().cast(), i, gemm::Parallelism::None));
    } else {
        let par = if macs >= PARALLEL_MACS {
            gemm::Parallelism::Rayon(0)
        } else {
            gemm::Parallelism::None
        };
        for (i, c) in spare.chunks_mut(m * n).enumerate() {
            one(c.as_mut_ptr().cast(), i, par);
        }
    }
    // SAFETY: every one of the `count·m·n` elements was written by gemm above.
    unsafe { out.set_len(count * m * n) };
    FlexTensor::from_data(TensorData::new(out, shape))
}

/// One product with a long inner dimension and a small output (the output layer's input
/// gradient at calibration-SFT shapes: `[96, 49152] · [49152, 576]`): each thread multiplies
/// one slice of `k` into its own partial output, and the partials are summed. gemm splits only
/// the output between threads, which leaves little to share here: 61 GFLOP/s for that product
/// on 2 threads, 124 split this way (a loop of `gemm::gemm` calls on the 2-core dev VM).
fn split_k(lhs: &Operand, rhs: &Operand, m: usize, k: usize, n: usize, parts: usize) -> Vec<f32> {
    let chunk = k.div_ceil(parts);
    let mut partials: Vec<Vec<f32>> = (0..k.div_ceil(chunk))
        .into_par_iter()
        .map(|p| {
            let (k0, len) = (p * chunk, chunk.min(k - p * chunk));
            let mut part: Vec<f32> = Vec::with_capacity(m * n);
            // SAFETY: `part` has room for `m·n` f32s, all written by `product` before `set_len`.
            unsafe {
                product(
                    part.as_mut_ptr(),
                    lhs,
                    rhs,
                    0,
                    [m, n],
                    (k0, len),
                    gemm::Parallelism::None,
                );
                part.set_len(m * n);
            }
            part
        })
        .collect();
    let rest = partials.split_off(1);
    let mut out = partials.pop().expect("k > 0");
    out.par_chunks_mut(16 * 1024)
        .enumerate()
        .for_each(|(i, o)| {
            for p in &rest {
                o.iter_mut()
                    .zip(&p[i * 16 * 1024..])
                    .for_each(|(o, v)| *o += v);
            }
        });
    out
}

/// `dst = lhs[i] · rhs[i]` (batch entry `i` of each operand) over the slice `k0..k0 + len` of
/// the inner dimension, written row-major into `dst` (`[m, n]`).
///
/// # Safety
/// `dst` must point at `m·n` writable f32s that nothing else reads or writes meanwhile, and
/// `k0 + len` must not exceed the inner dimension the operands were built for (`operand`
/// checked that every element of both views lies inside its storage). With `read_dst =
/// false` gemm only writes `dst`.
unsafe fn product(
    dst: *mut f32,
    lhs: &Operand,
    rhs: &Operand,
    i: usize,
    [m, n]: [usize; 2],
    (k0, len): (usize, usize),
    par: gemm::Parallelism,
) {
    let a = lhs
        .data
        .as_ptr()
        .add(lhs.bases[i])
        .offset(k0 as isize * lhs.cs);
    let b = rhs
        .data
        .as_ptr()
        .add(rhs.bases[i])
        .offset(k0 as isize * rhs.rs);
    gemm::gemm(
        m, n, len, dst, 1, n as isize, false, a, lhs.cs, lhs.rs, b, rhs.cs, rhs.rs, 0.0f32, 1.0f32,
        false, false, false, par,
    )
}
