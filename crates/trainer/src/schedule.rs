//! Learning-rate schedules: linear warmup, then cosine decay to zero.

use std::f64::consts::PI;

/// Learning rate at global step `step` (0-based).
///
/// The schedule starts at `start_step` (the student's wait; 0 for the teacher): before it the
/// rate is 0. From there it rises linearly from 0 to `base_lr` over `warmup_steps` steps, then
/// follows half a cosine from `base_lr` down to 0, reached at `total_steps` and kept after it.
/// When the warmup does not fit before `total_steps`, the warmup alone is used.
pub fn warmup_cosine(
    step: u64,
    start_step: u64,
    warmup_steps: u64,
    total_steps: u64,
    base_lr: f64,
) -> f64 {
    if step < start_step || step >= total_steps {
        return 0.0;
    }
    let since_start = (step - start_step) as f64;
    let warmup = warmup_steps as f64;
    if since_start < warmup {
        return base_lr * since_start / warmup;
    }
    let decay_steps = total_steps.saturating_sub(start_step + warmup_steps).max(1) as f64;
    let progress = ((since_start - warmup) / decay_steps).min(1.0);
    base_lr * 0.5 * (1.0 + (PI * progress).cos())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LR: f64 = 0.05;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn the_rate_is_zero_before_the_schedule_starts() {
        assert_eq!(warmup_cosine(0, 100, 10, 1_000, LR), 0.0);
        assert_eq!(warmup_cosine(99, 100, 10, 1_000, LR), 0.0);
    }

    #[test]
    fn warmup_is_linear_from_zero_and_peaks_at_its_end() {
        assert_eq!(warmup_cosine(100, 100, 10, 1_000, LR), 0.0);
        assert!(close(warmup_cosine(103, 100, 10, 1_000, LR), LR * 0.3));
        assert!(close(warmup_cosine(105, 100, 10, 1_000, LR), LR * 0.5));
        assert!(close(warmup_cosine(110, 100, 10, 1_000, LR), LR));
    }

    #[test]
    fn cosine_is_at_half_the_peak_midway_and_zero_at_the_total() {
        // Decay runs from step 110 to 1000: 890 steps, midpoint 110 + 445.
        assert!(close(warmup_cosine(555, 100, 10, 1_000, LR), LR / 2.0));
        // A quarter of the way the cosine gives (1 + cos(pi / 4)) / 2.
        let quarter = LR * 0.5 * (1.0 + (PI / 4.0).cos());
        assert!((warmup_cosine(110 + 890 / 4, 100, 10, 1_000, LR) - quarter).abs() < 1e-4);
        assert_eq!(warmup_cosine(1_000, 100, 10, 1_000, LR), 0.0);
        assert_eq!(warmup_cosine(5_000, 100, 10, 1_000, LR), 0.0);
        assert!(warmup_cosine(999, 100, 10, 1_000, LR) > 0.0);
    }

    #[test]
    fn without_warmup_the_first_step_gets_the_peak() {
        assert!(close(warmup_cosine(0, 0, 0, 100, LR), LR));
        assert!(close(warmup_cosine(50, 0, 0, 100, LR), LR / 2.0));
    }

    #[test]
    fn the_rate_never_leaves_zero_to_peak() {
        for step in 0..300 {
            let lr = warmup_cosine(step, 20, 50, 250, LR);
            assert!((0.0..=LR).contains(&lr), "step {step}: {lr}");
        }
    }
}
