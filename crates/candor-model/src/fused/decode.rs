//! Products with a few rows against a row-major weight — a decoding step's `[rows, in] · [in,
//! out]` — without packing the weight.
//!
//! gemm packs the whole right-hand side into its own layout on every call. At a few rows that
//! copy costs more than the product: `bench --matmul` measured 16 and 32 rows against SmolLM2's
//! 576 × 1536 weight at 4–5 GB/s of weight read, where one row reads it at 12 GB/s. Here each
//! task owns a block of up to 256 output columns (narrower where that shares the columns more
//! evenly among the threads, [`block_width`]) and walks the weight 64 rows at a time: it prefetches
//! each row's 1 KB slice of the block a few rows ahead (contiguous, so memory and TLB are used
//! well), then computes the block 32 columns × up to 8 rows at a time with the 2 × 8 output
//! vectors in AVX-512 registers over those 64 rows, the slice staying in cache for the next rows
//! and columns. Written here because gemm has no "packed once" or unpacked small-M entry.

use rayon::prelude::*;

/// From this many rows up to [`MAX_ROWS`] a product goes through [`matmul`]; the rest are
/// gemm's (one row: gemm's own matrix-vector path reads the weight faster, 11.8 against 9.0
/// GB/s in `bench --matmul`; at 512 rows gemm's packed kernels win).
pub const MIN_ROWS: usize = 2;
pub const MAX_ROWS: usize = 32;

/// Output columns of one register tile (two AVX-512 vectors).
const COLS: usize = 32;

/// Output columns one task computes (a weight row's slice of it is 1 KB).
const BLOCK: usize = 256;

/// Weight rows per pass over a block (the accumulators go back to the output in between).
const KB: usize = 64;

/// Rows of the weight prefetched ahead of use.
const AHEAD: usize = 8;

/// `CANDOR_NO_SMALL_M=1` leaves decode-shaped products to gemm (to compare the two paths).
fn disabled() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OFF.get_or_init(|| std::env::var_os("CANDOR_NO_SMALL_M").is_some_and(|v| v == "1"))
}

/// Whether [`matmul`] takes this product on this machine.
pub fn applies(m: usize, n: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        (MIN_ROWS..=MAX_ROWS).contains(&m)
            && n >= COLS
            && !disabled()
            && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (m, n);
        false
    }
}

/// A raw output pointer shared by tasks that write disjoint column blocks.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: each task writes only its own columns of each row (see `matmul`).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// `a · b` into a new row-major `[m, n]`: `a` is `[m, k]` with rows `lda` apart (columns
/// contiguous), `b` is `[k, n]` with rows `ldb` apart (columns contiguous). Call only where
/// [`applies`] says so.
pub fn matmul(
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    m: usize,
    k: usize,
    n: usize,
) -> Vec<f32> {
    assert!(
        applies(m, n),
        "decode::matmul called where it does not apply"
    );
    assert!(
        m == 0 || a.len() >= (m - 1) * lda + k,
        "a is shorter than its view"
    );
    assert!(
        k == 0 || b.len() >= (k - 1) * ldb + n,
        "b is shorter than its view"
    );
    let mut out: Vec<f32> = vec![0.0; m * n];
    let tile = Tile {
        a,
        lda,
        b,
        ldb,
        m,
        k,
        n,
        dst: Out(out.as_mut_ptr()),
    };
    let whole = n / COLS * COLS;
    let threads = rayon::current_num_threads();
    let block = block_width(whole / COLS, threads);
    let task = |t: usize| {
        let (c0, c1) = (t * block, ((t + 1) * block).min(whole));
        // SAFETY: AVX-512F is present (`applies`); the views were checked above; the task
        // writes columns c0..c1 of each row, which no other task writes.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            block_avx512(&tile, c0, c1)
        }
    };
    let tasks = whole.div_ceil(block);
    if m * k * n >= 1 << 20 && threads > 1 {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        (0..tasks).for_each(task);
    }
    // columns past the last whole 32 (n not a multiple of 32)
    for i in 0..m {
        for j in whole..n {
            out[i * n + j] = (0..k).map(|kk| a[i * lda + kk] * b[kk * ldb + j]).sum();
        }
    }
    out
}

/// Columns per task for `tiles` tiles of [`COLS`] shared by `threads` threads: at most
/// [`BLOCK`], chosen so that the busiest thread has as few tiles as possible (ties: the widest
/// block). With 256 columns always, SmolLM2's 576 outputs are 3 tasks (one thread does 320
/// columns while the other does 256) and its 192-wide key and value products one task, on one
/// thread of two; 96-column blocks split both evenly.
fn block_width(tiles: usize, threads: usize) -> usize {
    let threads = threads.max(1);
    let most = BLOCK / COLS;
    // tiles of the busiest thread when whole blocks go round the threads and the remainder
    // block to a least loaded one
    let busiest = |per: usize| {
        let (full, rest) = (tiles / per, tiles % per);
        if full % threads == 0 {
            full / threads * per + rest
        } else {
            (full / threads + 1) * per
        }
    };
    let per = (1..=most)
        .rev()
        .min_by_key(|&per| busiest(per))
        .unwrap_or(most);
    per * COLS
}

/// Columns `c0..c1` (whole 32s) of every output row.
///
/// # Safety
/// AVX-512F must be available; `t.a`, `t.b` must hold the views `matmul` checked; `t.dst` must
/// point at `m·n` floats of which this call alone writes columns `c0..c1`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn block_avx512(t: &Tile, c0: usize, c1: usize) {
    let (m, k) = (t.m, t.k);
    for kb in (0..k).step_by(KB) {
        let ke = (kb + KB).min(k);
        for c in (c0..c1).step_by(COLS) {
            let mut i = 0;
            while i < m {
                let rows = (m - i).min(8);
                // the first tile of a pass reads the weight from memory: prefetch the task's
                // columns ahead
                let p = (c == c0 && i == 0).then_some(c1 - c0);
                match rows {
                    8 => t.run::<8>(kb, ke, c, i, p),
                    7 => t.run::<7>(kb, ke, c, i, p),
                    6 => t.run::<6>(kb, ke, c, i, p),
                    5 => t.run::<5>(kb, ke, c, i, p),
                    4 => t.run::<4>(kb, ke, c, i, p),
                    3 => t.run::<3>(kb, ke, c, i, p),
                    2 => t.run::<2>(kb, ke, c, i, p),
                    _ => t.run::<1>(kb, ke, c, i, p),
                }
                i += rows;
            }
        }
    }
}

/// The product every task works on: `a` `[m, k]` (rows `lda` apart), `b` `[k, n]` (rows `ldb`
/// apart), the output `dst` `[m, n]`.
struct Tile<'a> {
    a: &'a [f32],
    lda: usize,
    b: &'a [f32],
    ldb: usize,
    m: usize,
    k: usize,
    n: usize,
    dst: Out,
}

impl Tile<'_> {
    /// Rows `i..i + R`, columns `c..c + 32`, weight rows `kb..ke`: `2·R` accumulators in
    /// registers, added to what earlier passes left in the output. `prefetch`: the width of the
    /// task's columns to prefetch, weight row by weight row, [`AHEAD`] rows on.
    ///
    /// # Safety
    /// As [`block_avx512`]; `i + R ≤ m`; `c` is one of the task's columns.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn run<const R: usize>(
        &self,
        kb: usize,
        ke: usize,
        c: usize,
        i: usize,
        prefetch: Option<usize>,
    ) {
        use std::arch::x86_64::*;
        let out = |r: usize| self.dst.0.add((i + r) * self.n + c);
        let mut acc0 = [_mm512_setzero_ps(); R];
        let mut acc1 = [_mm512_setzero_ps(); R];
        if kb > 0 {
            for r in 0..R {
                acc0[r] = _mm512_loadu_ps(out(r));
                acc1[r] = _mm512_loadu_ps(out(r).add(16));
            }
        }
        let ap = self.a.as_ptr().add(i * self.lda);
        let bp = self.b.as_ptr().add(c);
        for kk in kb..ke {
            if let Some(width) = prefetch.filter(|_| kk + AHEAD < self.k) {
                // the task's whole slice of a weight row AHEAD rows on
                let ahead = bp.add((kk + AHEAD) * self.ldb) as *const i8;
                for line in (0..width * 4).step_by(64) {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.add(line));
                }
            }
            let row = bp.add(kk * self.ldb);
            let b0 = _mm512_loadu_ps(row);
            let b1 = _mm512_loadu_ps(row.add(16));
            for r in 0..R {
                let x = _mm512_set1_ps(*ap.add(r * self.lda + kk));
                acc0[r] = _mm512_fmadd_ps(x, b0, acc0[r]);
                acc1[r] = _mm512_fmadd_ps(x, b1, acc1[r]);
            }
        }
        for r in 0..R {
            _mm512_storeu_ps(out(r), acc0[r]);
            _mm512_storeu_ps(out(r).add(16), acc1[r]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_split_smollm2_widths_evenly_over_two_threads() {
        // 1536 outputs: 48 tiles, 6 blocks of 256 (3 per thread)
        assert_eq!(block_width(48, 2), 256);
        // 576: 18 tiles, 6 blocks of 96 rather than 3 of 256 (one thread 320 columns)
        assert_eq!(block_width(18, 2), 96);
        // 192 (SmolLM2's key and value): 2 blocks of 96 rather than 1 of 192
        assert_eq!(block_width(6, 2), 96);
        // one thread: the widest block
        assert_eq!(block_width(18, 1), 256);
        // four threads on 1536 outputs: 8 blocks of 192 (2 each) rather than 6 of 256
        assert_eq!(block_width(48, 4), 192);
    }
}
