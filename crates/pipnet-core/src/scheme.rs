//! Landmark schemes: how many points, how they mirror, and how NME is normalised.

use crate::{Error, Result};

/// A landmark annotation scheme (docs/model-contract.md, "Landmark schemes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Scheme {
    /// iBUG / 300-W 68 points, 0-based.
    W300_68,
    /// WFLW 98 points.
    Wflw98,
}

impl Scheme {
    pub const ALL: [Scheme; 2] = [Scheme::W300_68, Scheme::Wflw98];

    /// The name used in `pipnet.scheme` metadata.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::W300_68 => "300w-68",
            Scheme::Wflw98 => "wflw-98",
        }
    }

    /// Parses a `pipnet.scheme` value.
    pub fn from_name(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| Error::Invalid {
                what: "landmark scheme",
                detail: format!("{name:?} (known: 300w-68, wflw-98)"),
            })
    }

    pub fn num_landmarks(self) -> usize {
        match self {
            Scheme::W300_68 => 68,
            Scheme::Wflw98 => 98,
        }
    }

    /// The two landmarks whose distance normalises NME (outer eye corners).
    pub fn normalizer(self) -> (usize, usize) {
        match self {
            Scheme::W300_68 => (36, 45),
            Scheme::Wflw98 => (60, 72),
        }
    }

    /// `perm[i]` is the landmark that point `i` becomes after a horizontal flip. It is an
    /// involution: applying it twice gives the identity.
    pub fn flip_permutation(self) -> Vec<usize> {
        let pairs: &[(usize, usize)] = match self {
            Scheme::W300_68 => W300_68_PAIRS,
            Scheme::Wflw98 => WFLW98_PAIRS,
        };
        let mut perm: Vec<usize> = (0..self.num_landmarks()).collect();
        for &(a, b) in pairs {
            perm[a] = b;
            perm[b] = a;
        }
        perm
    }
}

/// A run of consecutive landmarks drawn as one line (a jaw, a brow, an eye), as people draw the
/// face of a scheme: `first..=last`, with the last joined back to the first when `closed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Contour {
    pub first: usize,
    pub last: usize,
    pub closed: bool,
}

const fn open(first: usize, last: usize) -> Contour {
    Contour {
        first,
        last,
        closed: false,
    }
}

const fn closed(first: usize, last: usize) -> Contour {
    Contour {
        first,
        last,
        closed: true,
    }
}

impl Scheme {
    /// The face's lines: jaw, brows, nose, eyes and lips (points in none, such as WFLW's
    /// pupils, are drawn as points only).
    pub fn contours(self) -> &'static [Contour] {
        match self {
            Scheme::W300_68 => W300_68_CONTOURS,
            Scheme::Wflw98 => WFLW98_CONTOURS,
        }
    }

    /// The scheme with `n` landmarks, if there is one.
    pub fn with_landmarks(n: usize) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.num_landmarks() == n)
    }
}

impl std::fmt::Display for Scheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

const W300_68_CONTOURS: &[Contour] = &[
    open(0, 16),    // jaw
    open(17, 21),   // brows
    open(22, 26),   //
    open(27, 30),   // nose ridge
    open(31, 35),   // nostrils
    closed(36, 41), // eyes
    closed(42, 47), //
    closed(48, 59), // outer lips
    closed(60, 67), // inner lips
];

const WFLW98_CONTOURS: &[Contour] = &[
    open(0, 32),    // jaw
    closed(33, 41), // brows
    closed(42, 50), //
    open(51, 54),   // nose ridge
    open(55, 59),   // nostrils
    closed(60, 67), // eyes
    closed(68, 75), //
    closed(76, 87), // outer lips
    closed(88, 95), // inner lips
];

/// Mirror pairs of the iBUG 68-point layout; points not listed (nose ridge, centre of the lips)
/// map to themselves.
#[rustfmt::skip]
const W300_68_PAIRS: &[(usize, usize)] = & [
    // jaw 0..=16
    (0, 16), (1, 15), (2, 14), (3, 13), (4, 12), (5, 11), (6, 10), (7, 9),
    // eyebrows 17..=26
    (17, 26), (18, 25), (19, 24), (20, 23), (21, 22),
    // nostrils 31..=35
    (31, 35), (32, 34),
    // eyes 36..=47
    (36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46),
    // outer lips 48..=59
    (48, 54), (49, 53), (50, 52), (55, 59), (56, 58),
    // inner lips 60..=67
    (60, 64), (61, 63), (65, 67),
];

/// Mirror pairs of the WFLW 98-point layout.
#[rustfmt::skip]
const WFLW98_PAIRS: &[(usize, usize)] = & [
    // jaw 0..=32
    (0, 32), (1, 31), (2, 30), (3, 29), (4, 28), (5, 27), (6, 26), (7, 25), (8, 24),
    (9, 23), (10, 22), (11, 21), (12, 20), (13, 19), (14, 18), (15, 17),
    // eyebrows 33..=50
    (33, 46), (34, 45), (35, 44), (36, 43), (37, 42), (38, 50), (39, 49), (40, 48), (41, 47),
    // nostrils 55..=59
    (55, 59), (56, 58),
    // eyes 60..=75
    (60, 72), (61, 71), (62, 70), (63, 69), (64, 68), (65, 75), (66, 74), (67, 73),
    // outer lips 76..=87
    (76, 82), (77, 81), (78, 80), (83, 87), (84, 86),
    // inner lips 88..=95
    (88, 92), (89, 91), (93, 95),
    // pupils
    (96, 97),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_flip_is_an_involution_and_a_permutation() {
        for scheme in Scheme::ALL {
            let perm = scheme.flip_permutation();
            assert_eq!(perm.len(), scheme.num_landmarks());
            let mut seen = vec![false; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                assert_eq!(perm[p], i, "{scheme}: flip of flip of {i}");
                assert!(!seen[p], "{scheme}: {p} is the image of two points");
                seen[p] = true;
            }
        }
    }

    #[test]
    fn test_flip_swaps_the_normaliser_eye_corners() {
        for scheme in Scheme::ALL {
            let (a, b) = scheme.normalizer();
            assert_eq!(scheme.flip_permutation()[a], b);
        }
    }

    #[test]
    fn test_contours_are_disjoint_and_mirror_onto_contours() {
        for scheme in Scheme::ALL {
            let mut seen = vec![false; scheme.num_landmarks()];
            for c in scheme.contours() {
                assert!(c.first < c.last && c.last < scheme.num_landmarks(), "{c:?}");
                let points = seen.iter_mut().enumerate();
                for (i, seen) in points.take(c.last + 1).skip(c.first) {
                    assert!(!*seen, "{scheme}: {i} in two contours");
                    *seen = true;
                }
            }
            // A mirrored face draws the same lines: each contour's points flip into one contour.
            let perm = scheme.flip_permutation();
            let owner = |i: usize| {
                scheme
                    .contours()
                    .iter()
                    .position(|c| (c.first..=c.last).contains(&i))
            };
            for c in scheme.contours() {
                let targets: Vec<_> = (c.first..=c.last).map(|i| owner(perm[i])).collect();
                assert!(targets.windows(2).all(|w| w[0] == w[1]), "{scheme}: {c:?}");
            }
            assert_eq!(Scheme::with_landmarks(scheme.num_landmarks()), Some(scheme));
        }
    }

    #[test]
    fn test_names_round_trip() {
        for scheme in Scheme::ALL {
            assert_eq!(Scheme::from_name(scheme.name()).unwrap(), scheme);
        }
        assert!(Scheme::from_name("cofw-29").is_err());
    }
}
