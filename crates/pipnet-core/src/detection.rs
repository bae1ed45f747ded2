//! Face detection logic without the network: BlazeFace's SSD anchor decoding, weighted
//! non-maximum suppression, the tiles a large photo is searched in, and the calibrated map from
//! a detector box to the crop the landmark model expects.
//!
//! Coordinates inside one detector input are crop-normalised (0..1 across the input square, the
//! convention of [`crate::crop`]), so a tile's [`FaceCrop`] maps them to image pixels.

use crate::{Error, FaceBox, FaceCrop, Point, Result};

/// Keypoints BlazeFace predicts per face: right eye, left eye (from the viewer's side: the
/// subject's right eye first), nose tip, mouth centre, right ear tragion, left ear tragion.
pub const KEYPOINTS: usize = 6;
/// Values per anchor in the regression outputs: box centre offset, size, then the keypoints.
pub const VALUES_PER_ANCHOR: usize = 4 + 2 * KEYPOINTS;

/// One face found by the detector.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    pub face_box: FaceBox,
    /// Sigmoid of the logit, 0..1.
    pub score: f32,
    pub keypoints: [Point; KEYPOINTS],
}

impl Detection {
    /// The same detection with every coordinate mapped by `f`.
    pub fn map(&self, f: impl Fn(Point) -> Point) -> Self {
        let [x0, y0] = f([self.face_box.x0, self.face_box.y0]);
        let [x1, y1] = f([self.face_box.x1, self.face_box.y1]);
        Self {
            face_box: FaceBox::from([x0.min(x1), y0.min(y1), x0.max(x1), y0.max(y1)]),
            score: self.score,
            keypoints: self.keypoints.map(f),
        }
    }

    /// Intersection over union of the two boxes (0 when either is empty).
    pub fn iou(&self, other: &Self) -> f32 {
        self.face_box.iou(&other.face_box)
    }
}

/// One SSD output layer: a square grid of cells with a fixed number of anchors per cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnchorLayer {
    pub cells: usize,
    pub anchors_per_cell: usize,
}

impl AnchorLayer {
    pub fn anchors(&self) -> usize {
        self.cells * self.cells * self.anchors_per_cell
    }
}

/// BlazeFace's two layers (16x16 cells x 2 anchors, 8x8 x 6), the same for the 128 "front" and
/// the 256 "back" graphs; anchors are unit-sized, so box sizes are read directly.
pub const BLAZEFACE_LAYERS: [AnchorLayer; 2] = [
    AnchorLayer {
        cells: 16,
        anchors_per_cell: 2,
    },
    AnchorLayer {
        cells: 8,
        anchors_per_cell: 6,
    },
];

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Decodes one anchor layer: `logits` has one value per anchor, `regressions`
/// [`VALUES_PER_ANCHOR`] per anchor, both in (row, column, anchor) order; offsets are in input
/// pixels of an `input_size` square. Keeps detections whose score exceeds `threshold`; NaN
/// logits never pass.
pub fn decode_anchor_layer(
    layer: AnchorLayer,
    logits: &[f32],
    regressions: &[f32],
    input_size: usize,
    threshold: f32,
    out: &mut Vec<Detection>,
) -> Result<()> {
    let n = layer.anchors();
    if logits.len() != n {
        return Err(Error::SizeMismatch {
            what: "detector scores",
            got: logits.len(),
            expected: n,
        });
    }
    if regressions.len() != n * VALUES_PER_ANCHOR {
        return Err(Error::SizeMismatch {
            what: "detector boxes",
            got: regressions.len(),
            expected: n * VALUES_PER_ANCHOR,
        });
    }
    let scale = 1.0 / input_size as f32;
    for (i, (&logit, r)) in logits
        .iter()
        .zip(regressions.chunks_exact(VALUES_PER_ANCHOR))
        .enumerate()
    {
        let score = sigmoid(logit);
        if score.is_nan() || score <= threshold || r.iter().any(|v| !v.is_finite()) {
            continue;
        }
        let cell = i / layer.anchors_per_cell;
        let anchor = [
            ((cell % layer.cells) as f32 + 0.5) / layer.cells as f32,
            ((cell / layer.cells) as f32 + 0.5) / layer.cells as f32,
        ];
        let at = |k: usize| [anchor[0] + r[k] * scale, anchor[1] + r[k + 1] * scale];
        let [cx, cy] = at(0);
        let (w, h) = (r[2].abs() * scale, r[3].abs() * scale);
        out.push(Detection {
            face_box: FaceBox::from([cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0]),
            score,
            keypoints: std::array::from_fn(|k| at(4 + 2 * k)),
        });
    }
    Ok(())
}

/// MediaPipe's weighted NMS: take the best remaining detection, blend it with every detection
/// overlapping it by at least `iou_threshold` (coordinates weighted by score, the best score
/// kept), and drop those. Output is sorted by score, best first.
pub fn weighted_nms(mut detections: Vec<Detection>, iou_threshold: f32) -> Vec<Detection> {
    detections.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept = Vec::new();
    let mut used = vec![false; detections.len()];
    for i in 0..detections.len() {
        if used[i] {
            continue;
        }
        let best = detections[i];
        let mut acc = [0.0f32; 4 + 2 * KEYPOINTS];
        let mut weight = 0.0;
        for j in i..detections.len() {
            if used[j] || (j != i && best.iou(&detections[j]) < iou_threshold) {
                continue;
            }
            used[j] = true;
            let d = &detections[j];
            let b = d.face_box;
            let values = [b.x0, b.y0, b.x1, b.y1]
                .into_iter()
                .chain(d.keypoints.iter().flatten().copied());
            for (a, v) in acc.iter_mut().zip(values) {
                *a += v * d.score;
            }
            weight += d.score;
        }
        let v = acc.map(|a| a / weight);
        kept.push(Detection {
            face_box: FaceBox::from([v[0], v[1], v[2], v[3]]),
            score: best.score,
            keypoints: std::array::from_fn(|k| [v[4 + 2 * k], v[5 + 2 * k]]),
        });
    }
    kept
}

/// Square tiles of side `tile` pixels covering a `width` x `height` image, overlapping by at
/// least half a tile so every face up to `tile / 2` wide lies wholly inside one of them. One
/// centred tile when the image fits.
pub fn tiles(width: u32, height: u32, tile: f32) -> Vec<FaceCrop> {
    let axis = |len: f32| -> Vec<f32> {
        if len <= tile {
            return vec![(len - 1.0) / 2.0];
        }
        let n = ((len - tile) / (tile / 2.0)).ceil() as usize + 1;
        let step = (len - tile) / (n - 1) as f32;
        (0..n).map(|i| tile / 2.0 - 0.5 + i as f32 * step).collect()
    };
    let (xs, ys) = (axis(width as f32), axis(height as f32));
    ys.iter()
        .flat_map(|&y| xs.iter().map(move |&x| FaceCrop::new([x, y], tile, 0.0)))
        .collect()
}

/// The tile sides (photo pixels) a `width` x `height` photo is searched in for faces down to
/// `min_face` pixels by a detector with an `input_size` square input that finds faces of
/// `min_detectable` input pixels: the whole photo first, then finer levels, each twice as fine,
/// down to where a `min_face` face reaches `min_detectable` pixels. Tiles are enlarged at most
/// twice (smaller faces hold too little detail to find, and the tile count grows with the
/// square of the enlargement), so faces below `min_detectable / 2` pixels are not searched for.
pub fn search_levels(
    width: u32,
    height: u32,
    min_face: f32,
    input_size: usize,
    min_detectable: f32,
) -> Vec<f32> {
    let longest = width.max(height) as f32;
    let s = input_size as f32;
    let seen_whole = min_detectable * longest / s;
    let mut levels = vec![longest];
    if min_face.is_nan() || min_face <= 0.0 || min_face >= seen_whole {
        return levels;
    }
    let mut tile = (s * min_face / min_detectable).max(s / 2.0);
    let mut finer = Vec::new();
    while tile < longest {
        finer.push(tile);
        // Each level sees faces up to tile / 2 whole; stop once the coarser levels take over.
        if tile / 2.0 >= seen_whole {
            break;
        }
        tile *= 2.0;
    }
    levels.extend(finer.into_iter().rev());
    levels
}

/// True when `face` (crop-normalised in `tile`) touches a side of the tile that lies inside
/// the image: the face is probably cut there, and a neighbouring tile sees it whole.
pub fn cut_by_tile(face: &FaceBox, tile: &FaceCrop, width: u32, height: u32) -> bool {
    const MARGIN: f32 = 0.01;
    let b = tile.bounds();
    let inside = |edge: f32, limit: f32| (edge - limit).abs() > 1.0;
    (face.x0 < MARGIN && inside(b.x0, -0.5))
        || (face.y0 < MARGIN && inside(b.y0, -0.5))
        || (face.x1 > 1.0 - MARGIN && inside(b.x1, width as f32 - 0.5))
        || (face.y1 > 1.0 - MARGIN && inside(b.y1, height as f32 - 0.5))
}

/// Maps a detector box to the square the landmark model crops from: a box of side
/// `scale * sqrt(w * h)` whose centre is the detector box's centre shifted by
/// `(shift_x, shift_y)` times that side, standing in for the tight landmark box. Fitted on
/// labeled faces (see `pipnet calibrate`), since detectors and landmark boxes disagree.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BoxCalibration {
    pub scale: f32,
    pub shift_x: f32,
    pub shift_y: f32,
}

impl Default for BoxCalibration {
    /// The identity: the detector box is taken as the landmark box.
    fn default() -> Self {
        Self {
            scale: 1.0,
            shift_x: 0.0,
            shift_y: 0.0,
        }
    }
}

impl BoxCalibration {
    /// The landmark box predicted for a detector box.
    pub fn landmark_box(&self, detected: &FaceBox) -> FaceBox {
        let side = self.scale * (detected.width() * detected.height()).max(0.0).sqrt();
        let [cx, cy] = detected.center();
        let (cx, cy) = (cx + self.shift_x * side, cy + self.shift_y * side);
        FaceBox::from([
            cx - side / 2.0,
            cy - side / 2.0,
            cx + side / 2.0,
            cy + side / 2.0,
        ])
    }

    /// Fits scale and shift to pairs of (detector box, true landmark box) with medians, so a
    /// few wrong matches do not drag the fit. The target side is `max(w, h)` of the landmark
    /// box, which is what the crop rule scales.
    pub fn fit(pairs: &[(FaceBox, FaceBox)]) -> Result<Self> {
        if pairs.is_empty() {
            return Err(Error::Invalid {
                what: "box calibration",
                detail: "needs at least one detector box matched to a labeled face".into(),
            });
        }
        let median = |mut v: Vec<f32>| {
            v.sort_by(f32::total_cmp);
            v[v.len() / 2]
        };
        let size = |b: &FaceBox| (b.width() * b.height()).max(0.0).sqrt();
        let scale = median(
            pairs
                .iter()
                .map(|(d, l)| l.width().max(l.height()) / size(d))
                .collect(),
        );
        let shift = |axis: usize| {
            median(
                pairs
                    .iter()
                    .map(|(d, l)| (l.center()[axis] - d.center()[axis]) / (scale * size(d)))
                    .collect(),
            )
        };
        let fitted = Self {
            scale,
            shift_x: shift(0),
            shift_y: shift(1),
        };
        if [fitted.scale, fitted.shift_x, fitted.shift_y]
            .iter()
            .all(|v| v.is_finite())
            && fitted.scale > 0.0
        {
            Ok(fitted)
        } else {
            Err(Error::Invalid {
                what: "box calibration",
                detail: format!("degenerate fit {fitted:?} (empty boxes?)"),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(b: [f32; 4], score: f32) -> Detection {
        Detection {
            face_box: FaceBox::from(b),
            score,
            keypoints: [[b[0], b[1]]; KEYPOINTS],
        }
    }

    #[test]
    fn anchor_decoding_places_boxes_at_their_cells() {
        let layer = AnchorLayer {
            cells: 4,
            anchors_per_cell: 2,
        };
        let mut logits = vec![-10.0; layer.anchors()];
        let mut regs = vec![0.0; layer.anchors() * VALUES_PER_ANCHOR];
        // Cell (row 1, column 2), second anchor: centre shifted by (+8, -4) px on a 64 input,
        // size 16 x 32 px, nose keypoint at the anchor.
        let i = (4 + 2) * 2 + 1;
        logits[i] = 3.0;
        regs[i * VALUES_PER_ANCHOR..][..4].copy_from_slice(&[8.0, -4.0, 16.0, 32.0]);
        let mut out = Vec::new();
        decode_anchor_layer(layer, &logits, &regs, 64, 0.5, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        let d = out[0];
        let (cx, cy) = (2.5 / 4.0 + 8.0 / 64.0, 1.5 / 4.0 - 4.0 / 64.0);
        assert!((d.face_box.center()[0] - cx).abs() < 1e-6);
        assert!((d.face_box.center()[1] - cy).abs() < 1e-6);
        assert!((d.face_box.width() - 0.25).abs() < 1e-6);
        assert!((d.face_box.height() - 0.5).abs() < 1e-6);
        assert!((d.keypoints[2][0] - 2.5 / 4.0).abs() < 1e-6);
        assert!((d.score - sigmoid(3.0)).abs() < 1e-6);
    }

    #[test]
    fn anchor_decoding_rejects_wrong_sizes_and_nan() {
        let layer = BLAZEFACE_LAYERS[1];
        let mut out = Vec::new();
        let err = decode_anchor_layer(layer, &[0.0; 10], &[], 128, 0.5, &mut out).unwrap_err();
        assert!(err.to_string().contains("expected 384"), "{err}");
        let logits = vec![f32::NAN; layer.anchors()];
        let regs = vec![0.0; layer.anchors() * VALUES_PER_ANCHOR];
        decode_anchor_layer(layer, &logits, &regs, 128, 0.5, &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn weighted_nms_blends_overlaps_and_keeps_separate_faces() {
        let dets = vec![
            det([0.0, 0.0, 10.0, 10.0], 0.9),
            det([20.0, 20.0, 30.0, 30.0], 0.6),
            det([1.0, 1.0, 11.0, 11.0], 0.9),
        ];
        let kept = weighted_nms(dets, 0.3);
        assert_eq!(kept.len(), 2);
        let close = |b: FaceBox, want: [f32; 4]| {
            let got: [f32; 4] = b.into();
            got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-4)
        };
        assert!(close(kept[0].face_box, [0.5, 0.5, 10.5, 10.5]), "{kept:?}");
        assert_eq!(kept[0].score, 0.9);
        assert!(
            close(kept[1].face_box, [20.0, 20.0, 30.0, 30.0]),
            "{kept:?}"
        );
    }

    #[test]
    fn tiles_cover_the_image_with_half_tile_overlap() {
        let t = tiles(1000, 300, 400.0);
        // 300 fits in one row; 1000 needs ceil(600 / 200) + 1 = 4 columns.
        assert_eq!(t.len(), 4);
        let b: Vec<FaceBox> = t.iter().map(FaceCrop::bounds).collect();
        assert!((b[0].x0 + 0.5).abs() < 1e-3 && (b[3].x1 - 999.5).abs() < 1e-3);
        for w in b.windows(2) {
            assert!(w[0].x1 - w[1].x0 >= 200.0 - 1e-3, "{w:?}");
        }
        assert_eq!(tiles(200, 100, 400.0).len(), 1);
    }

    #[test]
    fn search_levels_reach_the_smallest_face_and_stop_there() {
        // A 500 px photo: the whole photo shows a 40 px face at 20 detector pixels, below 24,
        // so one finer level of 256 * 40 / 24 = 427 px tiles is added.
        let levels = search_levels(500, 375, 40.0, 256, 24.0);
        assert_eq!(levels.len(), 2);
        assert!((levels[1] - 256.0 * 40.0 / 24.0).abs() < 1e-3, "{levels:?}");
        assert_eq!(search_levels(500, 375, 60.0, 256, 24.0), vec![500.0]);
        // A 4000 px photo: levels double from the finest until the whole photo takes over,
        // each level seeing faces from its smallest to half a tile.
        let levels = search_levels(4000, 3000, 40.0, 256, 24.0);
        assert_eq!(levels[0], 4000.0);
        for pair in levels[1..].windows(2) {
            assert_eq!(pair[0], 2.0 * pair[1]);
        }
        assert!(levels[1] / 2.0 >= 24.0 * 4000.0 / 256.0);
        // Tiny faces are floored: tiles are enlarged at most twice.
        let tiny = search_levels(4000, 3000, 1.0, 256, 24.0);
        assert_eq!(*tiny.last().unwrap(), 128.0);
        assert_eq!(search_levels(4000, 3000, f32::NAN, 256, 24.0), vec![4000.0]);
    }

    #[test]
    fn only_interior_tile_edges_cut_faces() {
        let t = tiles(1000, 400, 400.0);
        let left = FaceBox::from([0.0, 0.4, 0.2, 0.6]);
        let right = FaceBox::from([0.8, 0.4, 1.0, 0.6]);
        // The first tile's left side is the image's edge; its right side is inside.
        assert!(!cut_by_tile(&left, &t[0], 1000, 400));
        assert!(cut_by_tile(&right, &t[0], 1000, 400));
        assert!(!cut_by_tile(&right, &t[t.len() - 1], 1000, 400));
    }

    #[test]
    fn calibration_fit_recovers_a_known_map() {
        let truth = BoxCalibration {
            scale: 1.3,
            shift_x: 0.02,
            shift_y: 0.1,
        };
        let pairs: Vec<(FaceBox, FaceBox)> = (0..9)
            .map(|i| {
                let s = 40.0 + 10.0 * i as f32;
                let d = FaceBox::from([i as f32 * 7.0, 5.0, i as f32 * 7.0 + s, 5.0 + s]);
                (d, truth.landmark_box(&d))
            })
            .collect();
        let fit = BoxCalibration::fit(&pairs).unwrap();
        for (a, b) in [
            (fit.scale, truth.scale),
            (fit.shift_x, truth.shift_x),
            (fit.shift_y, truth.shift_y),
        ] {
            assert!((a - b).abs() < 1e-4, "{fit:?}");
        }
        assert!(BoxCalibration::fit(&[]).is_err());
    }
}
