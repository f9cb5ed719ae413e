//! Which examples make up each optimizer step. A pure function of (seed, step), so a resumed
//! run sees exactly the batches an uninterrupted run would.
//! - `none`: epochs of a seeded shuffle, read in order.
//! - `easy-to-hard` / `hard-to-easy`: examples sorted by difficulty (teacher confidence, correct
//!   before wrong at equal confidence); step s draws its batch uniformly from the first
//!   `pool(s)` of them, the pool growing linearly from `start` to all over `ramp` of the steps.

use crate::recipe::{CurriculumSection, Order};
use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};

/// Difficulty rank: easy = high confidence and correct.
pub fn order(c: &CurriculumSection, examples: &[(f64, bool)]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..examples.len()).collect();
    let easy_first = |a: &usize, b: &usize| {
        let (x, y) = (examples[*a], examples[*b]);
        y.0.total_cmp(&x.0).then(y.1.cmp(&x.1)).then(a.cmp(b))
    };
    match c.order {
        Order::None => {}
        Order::EasyToHard => idx.sort_by(easy_first),
        Order::HardToEasy => idx.sort_by(|a, b| easy_first(b, a)),
    }
    idx
}

/// How many of the ordered examples are available at `step` of `total`.
pub fn pool_size(c: &CurriculumSection, n: usize, step: usize, total: usize) -> usize {
    if c.order == Order::None {
        return n;
    }
    let ramp_steps = (c.ramp * total as f64).max(1.0);
    let frac = (c.start + (1.0 - c.start) * step as f64 / ramp_steps).min(1.0);
    ((frac * n as f64).ceil() as usize).clamp(1.min(n), n)
}

fn mix(seed: u64, a: u64) -> u64 {
    (seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xBF58_476D_1CE4_E5B9)
}

/// The example indices of optimizer step `step` (`batch` of them).
pub fn step_batch(
    c: &CurriculumSection,
    ordered: &[usize],
    seed: u64,
    step: usize,
    total: usize,
    batch: usize,
) -> Vec<usize> {
    let n = ordered.len();
    if n == 0 {
        return vec![];
    }
    if c.order == Order::None {
        let mut out = Vec::with_capacity(batch);
        let mut cache: Option<(usize, Vec<usize>)> = None;
        for j in 0..batch {
            let i = step * batch + j;
            let (epoch, pos) = (i / n, i % n);
            if cache.as_ref().map(|c| c.0) != Some(epoch) {
                let mut p: Vec<usize> = ordered.to_vec();
                p.shuffle(&mut StdRng::seed_from_u64(mix(seed, epoch as u64)));
                cache = Some((epoch, p));
            }
            out.push(cache.as_ref().expect("set").1[pos]);
        }
        return out;
    }
    let pool = pool_size(c, n, step, total);
    let mut rng = StdRng::seed_from_u64(mix(seed, 0x5EED_0000 + step as u64));
    (0..batch)
        .map(|_| ordered[rng.random_range(0..pool)])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cur(order: Order) -> CurriculumSection {
        CurriculumSection {
            order,
            start: 0.25,
            ramp: 0.5,
        }
    }

    #[test]
    fn easy_to_hard_orders_by_confidence_then_correctness() {
        let ex = [(20.0, true), (90.0, false), (90.0, true), (50.0, true)];
        assert_eq!(order(&cur(Order::EasyToHard), &ex), vec![2, 1, 3, 0]);
        assert_eq!(order(&cur(Order::HardToEasy), &ex), vec![0, 3, 1, 2]);
        assert_eq!(order(&cur(Order::None), &ex), vec![0, 1, 2, 3]);
    }

    #[test]
    fn pacing_grows_the_pool_and_batches_stay_inside_it() {
        let c = cur(Order::EasyToHard);
        let ordered: Vec<usize> = (0..100).collect();
        assert_eq!(pool_size(&c, 100, 0, 100), 25);
        assert_eq!(pool_size(&c, 100, 25, 100), 63); // 0.25 + 0.75·25/50 = 0.625 → 63
        assert_eq!(pool_size(&c, 100, 50, 100), 100);
        assert_eq!(pool_size(&c, 100, 99, 100), 100);
        for step in [0, 10, 30, 60] {
            let pool = pool_size(&c, 100, step, 100);
            let b = step_batch(&c, &ordered, 7, step, 100, 32);
            assert!(b.iter().all(|&i| i < pool), "step {step}");
        }
        // early batches are easier on average than late ones
        let mean = |s| {
            step_batch(&c, &ordered, 7, s, 100, 64)
                .iter()
                .sum::<usize>() as f64
                / 64.0
        };
        assert!(mean(0) < mean(80));
        // a pure function of (seed, step)
        assert_eq!(
            step_batch(&c, &ordered, 7, 5, 100, 8),
            step_batch(&c, &ordered, 7, 5, 100, 8)
        );
    }

    #[test]
    fn no_curriculum_is_epochs_of_a_shuffle() {
        let c = cur(Order::None);
        let ordered: Vec<usize> = (0..10).collect();
        let mut first: Vec<usize> = (0..5)
            .flat_map(|s| step_batch(&c, &ordered, 1, s, 5, 2))
            .collect();
        first.sort();
        assert_eq!(first, ordered, "one epoch visits every example once");
    }
}
