//! Landmark accuracy: normalised mean error (NME), failure rate, and the cumulative error
//! distribution (CED) with its area under the curve (AUC), as in the PIPNet paper.

use crate::scheme::Scheme;
use crate::{Error, Point, Result};

/// Mean point-to-point error of one face divided by the scheme's normalising distance
/// (outer eye corners for 300w-68 and wflw-98, measured on the ground truth).
pub fn nme(predicted: &[Point], truth: &[Point], scheme: Scheme) -> Result<f32> {
    let n = scheme.num_landmarks();
    for (what, got) in [
        ("predicted points", predicted.len()),
        ("true points", truth.len()),
    ] {
        if got != n {
            return Err(Error::SizeMismatch {
                what,
                got,
                expected: n,
            });
        }
    }
    let (a, b) = scheme.normalizer();
    let norm = distance(truth[a], truth[b]);
    if !(norm > 0.0 && norm.is_finite()) {
        return Err(Error::Invalid {
            what: "NME normaliser",
            detail: format!("points {a} and {b} of the ground truth are {norm} apart"),
        });
    }
    let total: f64 = predicted
        .iter()
        .zip(truth)
        .map(|(&p, &t)| f64::from(distance(p, t)))
        .sum();
    Ok((total / n as f64) as f32 / norm)
}

fn distance(p: Point, q: Point) -> f32 {
    ((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2)).sqrt()
}

/// Fraction of faces whose NME exceeds `threshold` (FR@0.1 uses 0.1); a NaN error counts as
/// a failure.
pub fn failure_rate(nmes: &[f32], threshold: f32) -> f32 {
    if nmes.is_empty() {
        return 0.0;
    }
    nmes.iter()
        .filter(|&&e| e.is_nan() || e > threshold)
        .count() as f32
        / nmes.len() as f32
}

/// The CED curve: for `steps + 1` thresholds evenly spaced in `[0, max_error]`, the fraction of
/// faces with NME at or below the threshold.
pub fn ced_curve(nmes: &[f32], max_error: f32, steps: usize) -> Vec<(f32, f32)> {
    let mut sorted: Vec<f32> = nmes.to_vec();
    sorted.sort_by(f32::total_cmp);
    let n = sorted.len().max(1) as f32;
    (0..=steps)
        .map(|i| {
            let t = max_error * i as f32 / steps as f32;
            let below = sorted.partition_point(|&e| e <= t);
            (t, below as f32 / n)
        })
        .collect()
}

/// Area under the CED curve up to `max_error`, normalised to 0..1 (trapezoid rule on a fine
/// grid). AUC@0.1 uses 0.1.
pub fn auc(nmes: &[f32], max_error: f32) -> f32 {
    const STEPS: usize = 1000;
    let curve = ced_curve(nmes, max_error, STEPS);
    let area: f32 = curve.windows(2).map(|w| (w[0].1 + w[1].1) / 2.0).sum();
    area / STEPS as f32
}

/// Summary of an evaluation run.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Summary {
    pub faces: usize,
    pub nme: f32,
    pub failure_rate: f32,
    pub auc: f32,
    pub threshold: f32,
}

impl Summary {
    pub fn new(nmes: &[f32], threshold: f32) -> Self {
        let mean = if nmes.is_empty() {
            f32::NAN
        } else {
            (nmes.iter().map(|&e| f64::from(e)).sum::<f64>() / nmes.len() as f64) as f32
        };
        Self {
            faces: nmes.len(),
            nme: mean,
            failure_rate: failure_rate(nmes, threshold),
            auc: auc(nmes, threshold),
            threshold,
        }
    }
}

/// The value at quantile `q` (0..=1) of `values` by nearest rank: the sorted values' element
/// `round((n - 1) * q)`, so 0.5 is the median (the upper one of an even count); `NaN` when
/// `values` is empty.
pub fn quantile(values: &[f32], q: f32) -> f32 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f32::total_cmp);
    let rank = ((sorted.len() as f32 - 1.0) * q).round();
    sorted.get(rank as usize).copied().unwrap_or(f32::NAN)
}

/// Spearman's rank correlation of paired values (ties get their mean rank): +1 when `b` rises
/// whenever `a` does, -1 when it falls; `NaN` with fewer than two pairs or a constant side.
pub fn spearman(a: &[f32], b: &[f32]) -> f32 {
    fn ranks(v: &[f32]) -> Vec<f64> {
        let mut order: Vec<usize> = (0..v.len()).collect();
        order.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
        let mut ranks = vec![0.0; v.len()];
        let mut start = 0;
        while start < order.len() {
            let mut end = start + 1;
            while end < order.len() && v[order[end]] == v[order[start]] {
                end += 1;
            }
            let mean = (start + end - 1) as f64 / 2.0;
            for &k in &order[start..end] {
                ranks[k] = mean;
            }
            start = end;
        }
        ranks
    }
    let n = a.len().min(b.len());
    let (ra, rb) = (ranks(&a[..n]), ranks(&b[..n]));
    let mean = (n as f64 - 1.0) / 2.0;
    let (mut cov, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        cov += (x - mean) * (y - mean);
        va += (x - mean).powi(2);
        vb += (y - mean).powi(2);
    }
    (cov / (va * vb).sqrt()) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face_68(offset: f32) -> Vec<Point> {
        (0..68).map(|i| [i as f32 + offset, 0.0]).collect()
    }

    #[test]
    fn test_nme_divides_mean_error_by_eye_corner_distance() {
        let truth = face_68(0.0);
        // Eye corners 36 and 45 are 9 apart; every point off by 0.9 -> NME 0.1.
        let e = nme(&face_68(0.9), &truth, Scheme::W300_68).unwrap();
        assert!((e - 0.1).abs() < 1e-6, "{e}");
        assert!(nme(&truth[..10], &truth, Scheme::W300_68).is_err());
        let flat = vec![[0.0, 0.0]; 68];
        assert!(
            nme(&flat, &flat, Scheme::W300_68).is_err(),
            "zero normaliser"
        );
    }

    #[test]
    fn test_failure_rate_counts_errors_above_threshold() {
        assert_eq!(failure_rate(&[0.05, 0.1, 0.2, f32::NAN], 0.1), 0.5);
        assert_eq!(failure_rate(&[], 0.1), 0.0);
    }

    #[test]
    fn test_auc_of_perfect_and_uniform_errors() {
        assert!((auc(&[0.0; 5], 0.1) - 1.0).abs() < 1e-3);
        assert_eq!(auc(&[0.5; 5], 0.1), 0.0);
        // Errors uniform in [0, 0.1]: CED is the diagonal, area one half.
        let uniform: Vec<f32> = (0..1000).map(|i| (i as f32 + 0.5) / 10_000.0).collect();
        assert!((auc(&uniform, 0.1) - 0.5).abs() < 2e-3);
    }

    #[test]
    fn test_ced_is_monotone_and_ends_at_the_share_below_max() {
        let curve = ced_curve(&[0.01, 0.02, 0.5], 0.1, 10);
        assert_eq!(curve.len(), 11);
        assert!(curve.windows(2).all(|w| w[0].1 <= w[1].1));
        assert!((curve[10].1 - 2.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn quantile_is_the_nearest_rank() {
        let v = [5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(quantile(&v, 0.5), 3.0);
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert_eq!(quantile(&v, 1.0), 5.0);
        assert_eq!(quantile(&v, 0.95), 5.0);
        assert_eq!(quantile(&[1.0, 2.0], 0.5), 2.0);
        assert!(quantile(&[], 0.5).is_nan());
    }

    #[test]
    fn spearman_follows_order_not_size() {
        let a = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert!((spearman(&a, &[1.0, 8.0, 27.0, 64.0, 125.0]) - 1.0).abs() < 1e-6);
        assert!((spearman(&a, &[5.0, 4.0, 3.0, 2.0, 1.0]) + 1.0).abs() < 1e-6);
        let tied = spearman(&a, &[1.0, 1.0, 2.0, 2.0, 3.0]);
        assert!(tied > 0.9 && tied < 1.0, "{tied}");
        assert!(spearman(&a, &[2.0; 5]).is_nan());
    }
}
