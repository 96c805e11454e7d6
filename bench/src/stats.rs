//! Medians and spreads of repeated measurements.

use serde::{Deserialize, Serialize};

/// A figure from repeated runs: median, quartiles, range, mean and the
/// samples.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Stat {
    pub median: f64,
    /// Resolves differences finer than the samples' own resolution (the
    /// kernel's whole nanoseconds), which the median cannot.
    pub mean: f64,
    pub q1: f64,
    pub q3: f64,
    pub min: f64,
    pub max: f64,
    pub samples: Vec<f64>,
}

/// The `p`-quantile (0..=1) of sorted `v`, linearly interpolated.
pub fn quantile(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let pos = p.clamp(0.0, 1.0) * (n - 1) as f64;
            let lo = pos.floor() as usize;
            let hi = pos.ceil() as usize;
            sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
        }
    }
}

impl Stat {
    pub fn of(samples: &[f64]) -> Stat {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        Stat {
            median: quantile(&sorted, 0.5),
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
            q1: quantile(&sorted, 0.25),
            q3: quantile(&sorted, 0.75),
            min: sorted.first().copied().unwrap_or(f64::NAN),
            max: sorted.last().copied().unwrap_or(f64::NAN),
            samples: samples.to_vec(),
        }
    }

    /// Per-repetition ratios `a[i] / b[i]` (same repetition, same run).
    pub fn ratio(a: &[f64], b: &[f64]) -> Stat {
        let r: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
        Stat::of(&r)
    }

    /// Per-repetition differences `a[i] - b[i]`.
    pub fn difference(a: &[f64], b: &[f64]) -> Stat {
        let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
        Stat::of(&d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_quartiles_and_ratios() {
        let s = Stat::of(&[5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!((s.median, s.q1, s.q3, s.min, s.max), (3.0, 2.0, 4.0, 1.0, 5.0));
        assert_eq!(Stat::of(&[1.0, 1.0, 2.0, 2.0, 2.0]).mean, 1.6);
        assert_eq!(Stat::of(&[1.0, 2.0]).median, 1.5);
        assert_eq!(Stat::ratio(&[2.0, 9.0], &[1.0, 3.0]).samples, vec![2.0, 3.0]);
        assert!(Stat::of(&[]).median.is_nan());
        assert_eq!(
            quantile(
                &[0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0],
                0.99
            ),
            99.0
        );
    }
}
