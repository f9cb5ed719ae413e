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
//!
//! A weight multiplied at decode shapes a second time is packed once ([`packed_weight`]):
//! each task's columns become one contiguous panel, `[in, width]`, so a task streams its part
//! of the weight front to back instead of reading a slice of every row (rows 2–6 KB apart, a
//! new page every row or two). On the 2-core AMD VM of 2026-12-05 that took these products
//! from 82–131 to 107–180 GFLOP/s (a standalone test of both layouts, weights read cold).

use rayon::prelude::*;
use std::mem::MaybeUninit;

/// From this many rows up to [`MAX_ROWS`] a product goes through [`matmul`]; the rest are
/// gemm's (one row: gemm's own matrix-vector path reads the weight faster, 11.8 against 9.0
/// GB/s in `bench --matmul`; at 512 rows gemm's packed kernels win).
pub const MIN_ROWS: usize = 2;
pub const MAX_ROWS: usize = 32;

/// Against a packed weight the kernel takes products up to this many rows (a SAR batch's
/// greedy answers and samples, 16 questions × 6 rows, while their histories differ): the
/// panel being multiplied stays in cache while every 8-row tile passes over it.
pub const MAX_PACKED_ROWS: usize = 128;

/// Output columns of one register tile (two AVX-512 vectors).
const COLS: usize = 32;

/// Output columns one task computes (a weight row's slice of it is 1 KB).
const BLOCK: usize = 256;

/// Weight rows per pass over a block (the accumulators go back to the output in between).
const KB: usize = 64;

/// Rows of the weight prefetched ahead of use.
const AHEAD: usize = 8;

/// A packed panel's columns at most (narrower panels stream better: 64–96 columns measured
/// 1.1–1.4× faster than 256 at 16–32 rows).
const PANEL: usize = 96;

/// Weight rows per pass over a packed panel, and rows of it prefetched ahead.
const PANEL_KB: usize = 256;
const PANEL_AHEAD: usize = 16;

/// Packed weights kept at most (the oldest live ones stay; past this, products run unpacked).
const MAX_PACKED_BYTES: usize = 1 << 30;

/// `CANDOR_NO_SMALL_M=1` leaves decode-shaped products to gemm (to compare the two paths).
fn disabled() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OFF.get_or_init(|| std::env::var_os("CANDOR_NO_SMALL_M").is_some_and(|v| v == "1"))
}

/// `CANDOR_NO_PACK=1` streams every weight unpacked (to compare the two layouts).
fn no_packing() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OFF.get_or_init(|| std::env::var_os("CANDOR_NO_PACK").is_some_and(|v| v == "1"))
}

/// Whether [`matmul`] takes this product on this machine with the weight unpacked.
pub fn applies(m: usize, n: usize) -> bool {
    rows_apply(m, n, MAX_ROWS)
}

/// Whether [`matmul`] takes this product on this machine with the weight packed.
pub fn applies_packed(m: usize, n: usize) -> bool {
    rows_apply(m, n, MAX_PACKED_ROWS)
}

fn rows_apply(m: usize, n: usize, most: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        (MIN_ROWS..=most).contains(&m)
            && n >= COLS
            && !disabled()
            && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (m, n, most);
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
/// contiguous), `b` is `[k, n]` with element `(i, j)` at `b[i·rs + j·cs]`; `packed`, if any, is
/// `b` packed by [`Packed::new`] (then read instead of `b`'s whole 32-column tiles). Without
/// it `b`'s columns must be contiguous (`cs = 1`). Call only where [`applies`] says so.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    a: &[f32],
    lda: usize,
    b: &[f32],
    [rs, cs]: [usize; 2],
    m: usize,
    k: usize,
    n: usize,
    packed: Option<&Packed>,
) -> Vec<f32> {
    assert!(
        applies(m, n) || (packed.is_some() && applies_packed(m, n)),
        "decode::matmul called where it does not apply"
    );
    assert!(
        m == 0 || a.len() >= (m - 1) * lda + k,
        "a is shorter than its view"
    );
    assert!(
        k == 0 || b.len() > (k - 1) * rs + (n - 1) * cs,
        "b is shorter than its view"
    );
    assert!(
        cs == 1 || packed.is_some(),
        "an unpacked b needs contiguous columns"
    );
    if k == 0 {
        return vec![0.0; m * n];
    }
    // written whole below, each element once: the first pass over the weight stores its tile,
    // the tail loop the columns past the last whole 32
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    let tile = Tile {
        a,
        lda,
        m,
        k,
        n,
        dst: Out(out.as_mut_ptr()),
    };
    let whole = n / COLS * COLS;
    let threads = rayon::current_num_threads();
    if let Some(p) = packed {
        assert!(p.k == k && p.n == n, "packed weight of another shape");
    }
    let block = packed.map_or_else(|| block_width(whole / COLS, threads), |p| p.width);
    let task = |t: usize| {
        let (c0, c1) = (t * block, ((t + 1) * block).min(whole));
        // the task's columns: a packed panel (rows `c1 - c0` apart) or a slice of `b`'s rows
        let (src, ld, kb, ahead) = match packed {
            Some(p) => (p.panel(t).as_ptr(), c1 - c0, PANEL_KB, PANEL_AHEAD),
            // SAFETY: c0 < n, within b's first row
            None => (unsafe { b.as_ptr().add(c0) }, rs, KB, AHEAD),
        };
        // SAFETY: AVX-512F is present (`applies`); the views were checked above (a panel is
        // `[k, c1 - c0]`); the task writes columns c0..c1 of each row, which no other task
        // writes.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            block_avx512(
                &tile,
                Cols {
                    src,
                    ld,
                    c0,
                    c1,
                    kb,
                    ahead,
                },
            )
        }
    };
    let tasks = whole.div_ceil(block);
    if m * k * n >= 1 << 20 && threads > 1 {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        (0..tasks).for_each(task);
    }
    // columns past the last whole 32 (n not a multiple of 32)
    let dst = out.spare_capacity_mut();
    for i in 0..m {
        for j in whole..n {
            dst[i * n + j].write((0..k).map(|kk| a[i * lda + kk] * b[kk * rs + j * cs]).sum());
        }
    }
    // SAFETY: every element was written: columns 0..whole of every row by the tasks (k > 0,
    // so each tile has a first pass, which stores without reading), the rest just above.
    unsafe { out.set_len(m * n) };
    out
}

/// A `[k, n]` weight's whole 32-column tiles as panels of `width` columns (the last one
/// narrower if the tiles do not divide evenly), each panel `[k, its width]` contiguous: the
/// layout [`matmul`]'s tasks stream.
pub struct Packed {
    /// The allocation; only `start..` is written (the floats before the 2 MiB boundary are
    /// never touched, so their pages never count in the resident memory).
    data: Vec<MaybeUninit<f32>>,
    /// Where the panels start in `data` (a 2 MiB boundary).
    start: usize,
    k: usize,
    n: usize,
    width: usize,
}

impl Packed {
    /// `b` (`[k, n]`, element `(i, j)` at `b[i·rs + j·cs]`: row-major, or a transposed
    /// view such as a tied output layer's) packed for products on this machine's threads.
    pub fn new(b: &[f32], [rs, cs]: [usize; 2], k: usize, n: usize) -> Self {
        assert!(
            k == 0 || n == 0 || b.len() > (k - 1) * rs + (n - 1) * cs,
            "b is shorter than its view"
        );
        let whole = n / COLS * COLS;
        let width = panel_width(whole / COLS, rayon::current_num_threads());
        let len = k * whole;
        let (mut data, start) = huge_capacity(len);
        // SAFETY: `MaybeUninit` needs no initialising; the capacity is at least `start + len`.
        unsafe { data.set_len(start + len) };
        // panels of `width` columns: `k · width` floats each (the last one narrower), written
        // once (no zeroing first)
        data[start..start + len]
            .par_chunks_mut(k * width)
            .enumerate()
            .for_each(|(t, panel)| {
                let (c0, c1) = (t * width, ((t + 1) * width).min(whole));
                for (i, dst) in panel.chunks_mut(c1 - c0).enumerate() {
                    for (j, d) in (c0..c1).zip(dst) {
                        d.write(b[i * rs + j * cs]);
                    }
                }
            });
        Packed {
            data,
            start,
            k,
            n,
            width,
        }
    }

    /// Panel `t`: columns `t·width..` of every weight row, rows one after the other.
    fn panel(&self, t: usize) -> &[f32] {
        let whole = self.n / COLS * COLS;
        let start = self.start + t * self.width * self.k;
        let len = self.width.min(whole - t * self.width) * self.k;
        let panel = &self.data[start..start + len];
        // SAFETY: every float from `self.start` on was written by `new` (the panels cover
        // `k · whole` floats exactly), and `MaybeUninit<f32>` has `f32`'s layout.
        unsafe { std::slice::from_raw_parts(panel.as_ptr().cast::<f32>(), panel.len()) }
    }

    fn bytes(&self) -> usize {
        (self.data.len() - self.start) * 4
    }
}

/// An empty vector with room for `len` floats from a 2 MiB boundary (the index returned with
/// it), that range advised to the kernel as transparent huge pages: the packed weights are
/// read once per decoding step, and with 4 KiB pages both the first touch (a page fault per 4
/// KiB) and the TLB cost more.
fn huge_capacity(len: usize) -> (Vec<MaybeUninit<f32>>, usize) {
    const HUGE: usize = 2 << 20;
    let data: Vec<MaybeUninit<f32>> = Vec::with_capacity(len + HUGE / 4);
    let addr = data.as_ptr() as usize;
    let start = (addr.next_multiple_of(HUGE) - addr) / 4;
    #[cfg(target_os = "linux")]
    // SAFETY: the range lies within `data`'s allocation (capacity `len + HUGE/4` floats from
    // `addr`); madvise only advises, it does not change the memory's contents or validity.
    unsafe {
        libc::madvise(
            (addr + start * 4) as *mut libc::c_void,
            len * 4,
            libc::MADV_HUGEPAGE,
        );
    }
    (data, start)
}

/// Columns per panel for `tiles` tiles of [`COLS`]: as [`block_width`], at most [`PANEL`].
fn panel_width(tiles: usize, threads: usize) -> usize {
    balanced_width(tiles, threads, PANEL / COLS)
}

/// Weights seen at decode shapes, by storage: packed from the second product on.
struct Seen {
    /// The storage, held weakly: a dead one means the entry is stale (the weight was
    /// dropped, or written, which Flex does copy-on-write while a weak reference exists).
    source: std::sync::Weak<dyn std::any::Any + Send + Sync>,
    packed: Option<std::sync::Arc<Packed>>,
}

type SeenKey = (usize, usize, [usize; 2], usize, usize);

fn seen() -> &'static std::sync::Mutex<std::collections::HashMap<SeenKey, Seen>> {
    static SEEN: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<SeenKey, Seen>>> =
        std::sync::OnceLock::new();
    SEEN.get_or_init(Default::default)
}

/// The packed form of a right-hand side `b` (`[k, n]` at `offset` in `storage`'s floats, with
/// strides `[rs, cs]`) used at decode shapes, if it was used so before: the first product with a
/// storage only records it (activations and other one-off operands are never packed), the
/// second packs it, later ones reuse that. Entries whose storage has been dropped or written
/// since are dropped; at most [`MAX_PACKED_BYTES`] are kept.
///
/// The packing itself runs with the registry unlocked: it is a parallel op, and a rayon worker
/// waiting in one may pick up another whole job (another question batch's decoding, started
/// with [`crate::device::on_cpu_pool`]) that asks for a packed weight on the same thread; with
/// the lock held across the packing that second request waited for itself forever (CI hung in
/// `tests/answering.rs`, two tests decoding side by side). Two threads packing the same weight
/// at once both pack it; the first to register wins and the other's copy is dropped (so
/// concurrent first packings may pass the budget by what they pack at that moment).
pub fn packed_weight(
    storage: std::sync::Arc<dyn std::any::Any + Send + Sync>,
    floats: &[f32],
    offset: usize,
    strides: [usize; 2],
    k: usize,
    n: usize,
) -> Option<std::sync::Arc<Packed>> {
    use std::sync::Arc;
    if no_packing() {
        return None;
    }
    let key = (
        Arc::as_ptr(&storage) as *const () as usize,
        offset,
        strides,
        k,
        n,
    );
    let live = |s: &Seen| {
        s.source
            .upgrade()
            .is_some_and(|a| Arc::ptr_eq(&a, &storage))
    };
    {
        let mut map = seen().lock().unwrap_or_else(|e| e.into_inner());
        match map.get(&key) {
            Some(s) if live(s) => {
                if let Some(p) = &s.packed {
                    return Some(p.clone());
                }
            }
            _ => {
                map.retain(|_, s| s.source.strong_count() > 0);
                map.insert(
                    key,
                    Seen {
                        source: Arc::downgrade(&storage),
                        packed: None,
                    },
                );
                return None;
            }
        }
        // the second product with this weight: pack it, within the budget
        let held: usize = map
            .values()
            .filter_map(|s| s.packed.as_ref())
            .map(|p| p.bytes())
            .sum();
        if held + k * n * 4 > MAX_PACKED_BYTES {
            return None;
        }
    }
    // unlocked (see above)
    let packed = Arc::new(Packed::new(&floats[offset..], strides, k, n));
    let mut map = seen().lock().unwrap_or_else(|e| e.into_inner());
    match map.get_mut(&key) {
        Some(s) if live(s) => Some(s.packed.get_or_insert(packed).clone()),
        // not expected (`storage` is held here, so its entry stays live); serve this copy
        _ => Some(packed),
    }
}

/// Columns per task for `tiles` tiles of [`COLS`] shared by `threads` threads: at most
/// [`BLOCK`], chosen so that the busiest thread has as few tiles as possible (ties: the widest
/// block). With 256 columns always, SmolLM2's 576 outputs are 3 tasks (one thread does 320
/// columns while the other does 256) and its 192-wide key and value products one task, on one
/// thread of two; 96-column blocks split both evenly.
fn block_width(tiles: usize, threads: usize) -> usize {
    balanced_width(tiles, threads, BLOCK / COLS)
}

/// Columns per task for `tiles` tiles shared by `threads` threads, at most `most` tiles each.
fn balanced_width(tiles: usize, threads: usize, most: usize) -> usize {
    let threads = threads.max(1);
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

/// One task's output columns `c0..c1` (whole 32s) and where it reads them: `src` is weight
/// row 0 of column `c0`, rows `ld` apart; `kb` weight rows per pass, `ahead` rows prefetched.
struct Cols {
    src: *const f32,
    ld: usize,
    c0: usize,
    c1: usize,
    kb: usize,
    ahead: usize,
}

/// Columns `c0..c1` of every output row.
///
/// # Safety
/// AVX-512F must be available; `t.a` and `cols.src` must hold the views `matmul` checked;
/// `t.dst` must point at `m·n` floats of which this call alone writes columns `c0..c1`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn block_avx512(t: &Tile, cols: Cols) {
    let (m, k) = (t.m, t.k);
    let (c0, c1) = (cols.c0, cols.c1);
    for kb in (0..k).step_by(cols.kb) {
        let ke = (kb + cols.kb).min(k);
        for c in (c0..c1).step_by(COLS) {
            let w = cols.src.add(c - c0);
            let mut i = 0;
            while i < m {
                let rows = (m - i).min(8);
                // the first tile of a pass reads the weight from memory: prefetch the task's
                // columns ahead
                let p = (c == c0 && i == 0).then_some((c1 - c0, cols.ahead));
                let run = Run {
                    w,
                    ld: cols.ld,
                    c,
                    kb,
                    ke,
                    i,
                    prefetch: p,
                };
                match rows {
                    8 => t.run::<8>(run),
                    7 => t.run::<7>(run),
                    6 => t.run::<6>(run),
                    5 => t.run::<5>(run),
                    4 => t.run::<4>(run),
                    3 => t.run::<3>(run),
                    2 => t.run::<2>(run),
                    _ => t.run::<1>(run),
                }
                i += rows;
            }
        }
    }
}

/// One register tile's work: weight rows `kb..ke` of 32 columns at `w` (rows `ld` apart),
/// output rows `i..` at columns `c..c + 32`; `prefetch`: the task's width to prefetch, weight
/// row by weight row, and how many rows on.
#[derive(Clone, Copy)]
struct Run {
    w: *const f32,
    ld: usize,
    c: usize,
    kb: usize,
    ke: usize,
    i: usize,
    prefetch: Option<(usize, usize)>,
}

/// The product every task works on: `a` `[m, k]` (rows `lda` apart), the output `dst`
/// `[m, n]`.
struct Tile<'a> {
    a: &'a [f32],
    lda: usize,
    m: usize,
    k: usize,
    n: usize,
    dst: Out,
}

impl Tile<'_> {
    /// Rows `i..i + R` of one [`Run`]: `2·R` accumulators in registers, added to what earlier
    /// passes left in the output.
    ///
    /// # Safety
    /// As [`block_avx512`]; `i + R ≤ m`; `c` is one of the task's columns.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn run<const R: usize>(&self, run: Run) {
        use std::arch::x86_64::*;
        let Run {
            w: bp,
            ld,
            c,
            kb,
            ke,
            i,
            prefetch,
        } = run;
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
        for kk in kb..ke {
            if let Some((width, rows)) = prefetch.filter(|&(_, rows)| kk + rows < self.k) {
                // the task's whole slice of a weight row `rows` rows on
                let ahead = bp.add((kk + rows) * ld) as *const i8;
                for line in (0..width * 4).step_by(64) {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.add(line));
                }
            }
            let row = bp.add(kk * ld);
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
