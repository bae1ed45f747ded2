//! When a face gets a second landmark pass. The second pass crops the face again from its first
//! landmarks ([`crate::landmark_crop`]), which undoes a detector crop's error in place, size
//! and tilt; it costs a second run of the network. Where the first crop was already where the
//! landmarks put it, the second pass changes little, so [`SecondPass::Auto`] runs it only where
//! the first pass says the crop was off, or that the face is unsure.

use crate::crop::FaceCrop;
use crate::detection::wrap_angle;

/// How far the crop made from a face's first landmarks lies from the crop they came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CropChange {
    /// Centre distance over the first crop's side.
    pub shift: f32,
    /// `|ln(side ratio)|`.
    pub scale: f32,
    /// Angle between the two, radians (0..pi).
    pub turn: f32,
}

impl CropChange {
    pub fn between(first: &FaceCrop, next: &FaceCrop) -> Self {
        let [dx, dy] = [
            next.center[0] - first.center[0],
            next.center[1] - first.center[1],
        ];
        Self {
            shift: dx.hypot(dy) / first.side,
            scale: (next.side / first.side).ln().abs(),
            turn: wrap_angle(next.angle - first.angle).abs(),
        }
    }
}

/// The thresholds of [`SecondPass::Auto`]: a face gets the second pass when its first
/// landmarks' crop moved more than `shift`, rescaled more than `scale` or turned more than
/// `turn` from the first crop ([`CropChange`]), or its presence is under `presence`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SecondPassGate {
    pub shift: f32,
    pub scale: f32,
    pub turn: f32,
    pub presence: f32,
}

impl Default for SecondPassGate {
    /// Chosen on the validation split with the default model, from a one-pass and an
    /// every-face run at 0, +-20, +-40, +-60, 90 and 180 degrees and with the faces shrunk to
    /// 60 and 40 pixels: the lowest firing rate at which the NME and the most turned third's
    /// NME stay within 2% of refining every face at each (`docs/experiments.md`, "The second
    /// pass's gate on small faces"). Upright it gives 7% of faces the second pass and scores
    /// 0.0345 (every face refined: 0.0343); turned by 90 degrees it fires on 63%.
    fn default() -> Self {
        Self {
            shift: 0.06,
            scale: 0.16,
            turn: 15f32.to_radians(),
            presence: 0.6,
        }
    }
}

impl SecondPassGate {
    /// Whether a face whose first pass gave `change` and `presence` gets the second pass. A
    /// change that is not a number (a degenerate first pass) always does.
    pub fn pays(&self, change: &CropChange, presence: f32) -> bool {
        !(change.shift <= self.shift
            && change.scale <= self.scale
            && change.turn <= self.turn
            && presence >= self.presence)
    }
}

/// When faces get the second landmark pass.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum SecondPass {
    /// One pass for every face.
    Off,
    /// Where the first pass says it pays ([`SecondPassGate`]).
    #[default]
    Auto,
    /// Every face, twice.
    Always,
}

impl std::fmt::Display for SecondPass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SecondPass::Off => "off",
            SecondPass::Auto => "auto",
            SecondPass::Always => "always",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_crop_change_measures_shift_scale_and_turn() {
        let a = FaceCrop::new([100.0, 100.0], 50.0, 3.1);
        let b = FaceCrop::new([103.0, 104.0], 55.0, -3.1);
        let c = CropChange::between(&a, &b);
        assert!((c.shift - 0.1).abs() < 1e-6, "{c:?}");
        assert!((c.scale - 1.1f32.ln()).abs() < 1e-6);
        // Across the +-pi seam: 0.083 rad, not 6.2.
        assert!(
            (c.turn - (std::f32::consts::TAU - 6.2)).abs() < 1e-5,
            "{c:?}"
        );
        assert_eq!(CropChange::between(&a, &a).turn, 0.0);
    }

    #[test]
    fn test_the_gate_passes_still_confident_faces_and_refines_the_rest() {
        let gate = SecondPassGate::default();
        let still = CropChange {
            shift: 0.01,
            scale: 0.01,
            turn: 0.01,
        };
        assert!(!gate.pays(&still, 0.8));
        assert!(gate.pays(&still, 0.2));
        for moved in [
            CropChange {
                shift: 0.2,
                ..still
            },
            CropChange {
                scale: 0.3,
                ..still
            },
            CropChange { turn: 0.5, ..still },
            CropChange {
                shift: f32::NAN,
                ..still
            },
        ] {
            assert!(gate.pays(&moved, 0.8), "{moved:?}");
        }
    }
}
