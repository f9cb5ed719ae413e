//! Learning rate: linear warmup from 0 over `warmup · total` steps, then cosine decay to `min_lr`.

use crate::recipe::OptimSection;

/// LR for optimizer step `step` (0-based) of `total`.
pub fn lr_at(o: &OptimSection, step: usize, total: usize) -> f64 {
    let warm = (o.warmup * total as f64).round() as usize;
    if step < warm {
        return o.lr * (step + 1) as f64 / warm as f64;
    }
    let span = total.saturating_sub(warm).max(1);
    let t = ((step - warm) as f64 / span as f64).min(1.0);
    o.min_lr + 0.5 * (o.lr - o.min_lr) * (1.0 + (std::f64::consts::PI * t).cos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine() {
        let o = OptimSection {
            lr: 1.0,
            min_lr: 0.1,
            warmup: 0.1,
            ..Default::default()
        };
        assert!((lr_at(&o, 0, 100) - 0.1).abs() < 1e-12);
        assert!((lr_at(&o, 9, 100) - 1.0).abs() < 1e-12);
        assert!((lr_at(&o, 10, 100) - 1.0).abs() < 1e-12);
        assert!(
            (lr_at(&o, 55, 100) - 0.55).abs() < 1e-12,
            "midpoint of the cosine"
        );
        assert!(lr_at(&o, 99, 100) > 0.1 && lr_at(&o, 99, 100) < 0.11);
    }
}
