//! PIP training targets (the inverse of decoding): for each landmark, the cell that holds it
//! scores 1, and the regression targets at that cell are its own offset and its neighbours'
//! offsets, in cell units from the cell's top-left corner (model-contract.md).

use pipnet_core::{NeighborIndex, Point};

/// Targets of one face, in the layouts of the model outputs: `cls`, `off_*` and `mask` are
/// `[L, G, G]`; `nb_*` are `[L*C, G, G]`. Offsets are zero away from the positive cell.
#[derive(Debug, Clone, PartialEq)]
pub struct PipTargets {
    pub cls: Vec<f32>,
    pub off_x: Vec<f32>,
    pub off_y: Vec<f32>,
    pub nb_x: Vec<f32>,
    pub nb_y: Vec<f32>,
    /// 1 at each landmark's positive cell: selects where the offset losses apply.
    pub mask: Vec<f32>,
    /// The same selection for the neighbour channels, `[L*C, G, G]`.
    pub nb_mask: Vec<f32>,
}

impl PipTargets {
    /// No faces yet: [`Self::append`] adds them one by one into a batch.
    pub fn empty() -> Self {
        Self {
            cls: Vec::new(),
            off_x: Vec::new(),
            off_y: Vec::new(),
            nb_x: Vec::new(),
            nb_y: Vec::new(),
            mask: Vec::new(),
            nb_mask: Vec::new(),
        }
    }

    /// Appends one face's targets. An inactive face (one this head must not learn from) keeps
    /// its place in the batch with zero masks; the loss also gives its `cls` no weight.
    pub fn append(&mut self, face: PipTargets, active: bool) {
        let masks = |m: Vec<f32>| if active { m } else { vec![0.0; m.len()] };
        self.cls.extend(face.cls);
        self.off_x.extend(face.off_x);
        self.off_y.extend(face.off_y);
        self.nb_x.extend(face.nb_x);
        self.nb_y.extend(face.nb_y);
        self.mask.extend(masks(face.mask));
        self.nb_mask.extend(masks(face.nb_mask));
    }
}

/// The cell holding a crop-normalised coordinate, clamped into the grid so landmarks just
/// outside the crop still get a target (with an offset outside 0..1).
fn cell_of(v: f32, grid: usize) -> usize {
    ((v * grid as f32).floor().max(0.0) as usize).min(grid - 1)
}

/// Builds the targets of one face from its crop-normalised points.
pub fn pip_targets(points: &[Point], index: &NeighborIndex, grid: usize) -> PipTargets {
    let (l_count, c_count) = (index.num_landmarks(), index.num_neighbors());
    let cells = grid * grid;
    let g = grid as f32;
    let mut t = PipTargets {
        cls: vec![0.0; l_count * cells],
        off_x: vec![0.0; l_count * cells],
        off_y: vec![0.0; l_count * cells],
        nb_x: vec![0.0; l_count * c_count * cells],
        nb_y: vec![0.0; l_count * c_count * cells],
        mask: vec![0.0; l_count * cells],
        nb_mask: vec![0.0; l_count * c_count * cells],
    };
    for (l, p) in points.iter().enumerate().take(l_count) {
        let (c, r) = (cell_of(p[0], grid), cell_of(p[1], grid));
        let at = l * cells + r * grid + c;
        t.cls[at] = 1.0;
        t.mask[at] = 1.0;
        t.off_x[at] = p[0] * g - c as f32;
        t.off_y[at] = p[1] * g - r as f32;
        for (k, &j) in index.neighbors_of(l).iter().enumerate() {
            let q = points[j as usize];
            let nb_at = (l * c_count + k) * cells + r * grid + c;
            t.nb_x[nb_at] = q[0] * g - c as f32;
            t.nb_y[nb_at] = q[1] * g - r as f32;
            t.nb_mask[nb_at] = 1.0;
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seeded::synthetic_mean_face;
    use pipnet_core::decode::{Landmark, PipMaps, decode_pip_scalar};

    #[test]
    fn test_targets_decode_back_to_the_points() {
        let mean = synthetic_mean_face(68);
        let index = NeighborIndex::from_mean_face(&mean, 10).unwrap();
        // Some points slightly outside the crop, as rotations produce.
        let points: Vec<Point> = mean
            .iter()
            .enumerate()
            .map(|(i, p)| [p[0] * 1.2 - 0.1 + 0.003 * i as f32, p[1] * 1.1 - 0.05])
            .collect();
        for grid in [4, 8, 16] {
            let t = pip_targets(&points, &index, grid);
            let maps =
                PipMaps::new(&t.cls, &t.off_x, &t.off_y, &t.nb_x, &t.nb_y, 68, 10, grid).unwrap();
            let mut out = vec![Landmark::default(); 68];
            decode_pip_scalar(&maps, &index, &mut out).unwrap();
            for (p, d) in points.iter().zip(&out) {
                assert!(
                    (p[0] - d.x).abs() < 1e-5 && (p[1] - d.y).abs() < 1e-5,
                    "G={grid}: {p:?} vs {d:?}"
                );
                assert_eq!(d.score, 1.0);
            }
            assert_eq!(t.mask.iter().sum::<f32>(), 68.0);
            assert_eq!(t.nb_mask.iter().sum::<f32>(), 680.0);
        }
    }

    #[test]
    fn test_coarse_grid_targets_decode_back_within_their_cells() {
        // The curriculum heads' grids (G/2, G/4 of an 8x8 head): the positive cell holds the
        // point (the coarse grid's precision), and cell + offsets give the point back.
        let mean = synthetic_mean_face(68);
        let index = NeighborIndex::from_mean_face(&mean, 10).unwrap();
        for grid in [4, 2] {
            let t = pip_targets(&mean, &index, grid);
            let g = grid as f32;
            for (l, p) in mean.iter().enumerate() {
                let cells = &t.cls[l * grid * grid..(l + 1) * grid * grid];
                let hot = cells.iter().position(|&v| v == 1.0).unwrap();
                let (r, c) = ((hot / grid) as f32, (hot % grid) as f32);
                assert!(c / g <= p[0] && p[0] < (c + 1.0) / g, "G={grid} x of {l}");
                assert!(r / g <= p[1] && p[1] < (r + 1.0) / g, "G={grid} y of {l}");
            }
            let maps =
                PipMaps::new(&t.cls, &t.off_x, &t.off_y, &t.nb_x, &t.nb_y, 68, 10, grid).unwrap();
            let mut out = vec![Landmark::default(); 68];
            decode_pip_scalar(&maps, &index, &mut out).unwrap();
            for (p, d) in mean.iter().zip(&out) {
                assert!((p[0] - d.x).abs() < 1e-5 && (p[1] - d.y).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn test_inactive_faces_keep_their_place_with_zero_masks() {
        let mean = synthetic_mean_face(68);
        let index = NeighborIndex::from_mean_face(&mean, 10).unwrap();
        let mut batch = PipTargets::empty();
        batch.append(pip_targets(&mean, &index, 4), true);
        batch.append(pip_targets(&mean, &index, 4), false);
        assert_eq!(batch.cls.len(), 2 * 68 * 16);
        assert_eq!(batch.mask.iter().sum::<f32>(), 68.0);
        assert_eq!(batch.nb_mask.iter().sum::<f32>(), 680.0);
        assert_eq!(batch.mask[..68 * 16], batch.cls[..68 * 16]);
    }

    #[test]
    fn test_cells_clamp_at_the_grid_edges() {
        assert_eq!(cell_of(-0.2, 8), 0);
        assert_eq!(cell_of(0.0, 8), 0);
        assert_eq!(cell_of(0.999, 8), 7);
        assert_eq!(cell_of(1.3, 8), 7);
        assert_eq!(cell_of(0.5, 8), 4);
    }
}
