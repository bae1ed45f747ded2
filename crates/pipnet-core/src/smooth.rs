//! Smoothing landmarks over video frames with the One Euro filter (Casiez, Roussel & Vogel,
//! CHI 2012): a low-pass filter whose cutoff rises with the signal's speed, so a still face
//! stops jittering while a moving one is followed without lag.
//!
//! Written here rather than taken from a crate: the two on crates.io are `one-euro-rs` 0.2
//! (2019, Rust 2015, no release since) and `one-euro` 0.8 (pins nalgebra 0.34, a second copy
//! beside ours); the filter itself is a few lines of arithmetic.

use crate::Point;

/// The filter's parameters. Cutoffs are in Hz, `beta` in 1/(pixel) units of speed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OneEuroSettings {
    /// Cutoff at rest: lower removes more jitter from a still face, and adds lag.
    pub min_cutoff: f64,
    /// How fast the cutoff rises with speed: higher follows motion with less lag.
    pub beta: f64,
    /// Cutoff of the speed estimate itself.
    pub derivative_cutoff: f64,
}

impl Default for OneEuroSettings {
    /// Chosen on synthetic sequences of the validation faces (`docs/experiments.md`, "Video").
    fn default() -> Self {
        Self {
            min_cutoff: 1.0,
            beta: 2.0,
            derivative_cutoff: 1.0,
        }
    }
}

/// The smoothing factor of an exponential filter with cutoff `cutoff` at time step `dt`.
fn alpha(cutoff: f64, dt: f64) -> f64 {
    let tau = 1.0 / (2.0 * std::f64::consts::PI * cutoff);
    1.0 / (1.0 + tau / dt)
}

/// One coordinate's filter state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OneEuro {
    settings: OneEuroSettings,
    /// Last time, filtered value and filtered speed; `None` before the first sample.
    last: Option<(f64, f64, f64)>,
}

impl OneEuro {
    pub fn new(settings: OneEuroSettings) -> Self {
        Self {
            settings,
            last: None,
        }
    }

    /// Filters `value` seen at `time` seconds. The first sample, and one whose time does not
    /// move forward, passes through (and restarts the speed estimate).
    pub fn filter(&mut self, value: f64, time: f64) -> f64 {
        let s = self.settings;
        let Some((t0, x0, dx0)) = self.last.filter(|&(t0, ..)| time > t0) else {
            self.last = Some((time, value, 0.0));
            return value;
        };
        let dt = time - t0;
        let dx = (value - x0) / dt;
        let dx = dx0 + alpha(s.derivative_cutoff, dt) * (dx - dx0);
        let cutoff = s.min_cutoff + s.beta * dx.abs();
        let x = x0 + alpha(cutoff, dt) * (value - x0);
        self.last = Some((time, x, dx));
        x
    }
}

/// A One Euro filter per coordinate of a landmark set.
#[derive(Debug, Clone, PartialEq)]
pub struct LandmarkSmoother {
    settings: OneEuroSettings,
    filters: Vec<[OneEuro; 2]>,
}

impl LandmarkSmoother {
    pub fn new(points: usize, settings: OneEuroSettings) -> Self {
        Self {
            settings,
            filters: vec![[OneEuro::new(settings); 2]; points],
        }
    }

    /// The smoothed positions of `points` seen at `time` seconds.
    pub fn smooth(&mut self, points: &[Point], time: f64) -> Vec<Point> {
        if points.len() != self.filters.len() {
            // A different scheme: start over rather than mix points.
            *self = Self::new(points.len(), self.settings);
        }
        points
            .iter()
            .zip(&mut self.filters)
            .map(|(p, [fx, fy])| {
                [
                    fx.filter(f64::from(p[0]), time) as f32,
                    fy.filter(f64::from(p[1]), time) as f32,
                ]
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_still_noisy_signal_is_calmed_and_a_ramp_is_followed() {
        // A low beta: the filter's behaviour at rest shows clearly on one-pixel noise.
        let calm = OneEuroSettings {
            beta: 0.05,
            ..OneEuroSettings::default()
        };
        let mut still = OneEuro::new(calm);
        let mut ramp = OneEuro::new(OneEuroSettings::default());
        let (mut raw_jitter, mut smooth_jitter) = (0.0, 0.0);
        let (mut prev_raw, mut prev_smooth) = (100.0, 100.0);
        let mut last_ramp = 0.0;
        for k in 0..300 {
            let t = k as f64 / 30.0;
            // Deterministic noise of +-1 pixel around 100.
            let noise = ((k * 7919) % 13) as f64 / 6.0 - 1.0;
            let raw = 100.0 + noise;
            let smooth = still.filter(raw, t);
            if k > 0 {
                raw_jitter += (raw - prev_raw).abs();
                smooth_jitter += (smooth - prev_smooth).abs();
            }
            (prev_raw, prev_smooth) = (raw, smooth);
            last_ramp = ramp.filter(200.0 * t, t);
        }
        assert!(
            smooth_jitter < 0.5 * raw_jitter,
            "{smooth_jitter} vs {raw_jitter}"
        );
        // 200 px/s with the default beta: the lag stays within a few frames' motion.
        let lag = 200.0 * 299.0 / 30.0 - last_ramp;
        assert!(lag > 0.0 && lag < 30.0, "lag {lag}");
    }

    #[test]
    fn the_first_sample_and_a_repeated_time_pass_through() {
        let mut f = OneEuro::new(OneEuroSettings::default());
        assert_eq!(f.filter(5.0, 1.0), 5.0);
        assert_eq!(f.filter(9.0, 1.0), 9.0);
        let mut s = LandmarkSmoother::new(2, OneEuroSettings::default());
        assert_eq!(
            s.smooth(&[[1.0, 2.0], [3.0, 4.0]], 0.0),
            [[1.0, 2.0], [3.0, 4.0]]
        );
        assert_eq!(
            s.smooth(&[[1.0, 2.0]], 0.1),
            [[1.0, 2.0]],
            "another point count restarts"
        );
    }
}
