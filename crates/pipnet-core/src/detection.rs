//! Face detection logic without the network: BlazeFace's SSD anchor decoding, weighted
//! non-maximum suppression, the tiles a large photo is searched in, and the calibrated map from
//! a detector box to the crop the landmark model expects.
//!
//! Coordinates inside one detector input are crop-normalised (0..1 across the input square, the
//! convention of [`crate::crop`]), so a tile's [`FaceCrop`] maps them to image pixels.

use crate::crop::{TurnedBox, turn};
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

    /// The angle of the line from the first eye keypoint to the second ([`crate::roll`]'s
    /// convention); `None` when they coincide or are not finite.
    pub fn roll(&self) -> Option<f32> {
        let [from, to, ..] = self.keypoints;
        let (dx, dy) = (to[0] - from[0], to[1] - from[1]);
        let angle = dy.atan2(dx);
        (dx.hypot(dy) > 0.0 && angle.is_finite()).then_some(angle)
    }

    /// The detection seen in the frame turned by `-angle` about the origin ([`TurnedBox`]):
    /// keypoints turned, the box of the same size about its turned centre.
    pub fn levelled(&self, angle: f32) -> Self {
        let [cx, cy] = turn(self.face_box.center(), -angle);
        let (hw, hh) = (self.face_box.width() / 2.0, self.face_box.height() / 2.0);
        Self {
            face_box: FaceBox::from([cx - hw, cy - hh, cx + hw, cy + hh]),
            score: self.score,
            keypoints: self.keypoints.map(|p| turn(p, -angle)),
        }
    }
}

/// `angle` brought into `(-pi, pi]`.
pub fn wrap_angle(angle: f32) -> f32 {
    use std::f32::consts::{PI, TAU};
    let a = angle.rem_euclid(TAU);
    if a > PI { a - TAU } else { a }
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

/// Maps a detection to the square the landmark model crops from, standing in for the tight
/// landmark box, since detectors and landmark boxes disagree. Fitted on labeled faces (see
/// `pipnet calibrate`) two ways: from the box alone, a box of side `scale * sqrt(w * h)` whose
/// centre is the detector box's centre shifted by `(shift_x, shift_y)` times that side; and,
/// when `keypoints` is set, from the detector's keypoints, which say where the face looks and so
/// where its landmarks lie (on the validation split they cut the crop's centre and size errors by
/// about a quarter: `docs/experiments.md`). The keypoint map is used whenever it is set.
///
/// With `roll_offset` set, the face's roll is the detector's eye line plus that offset, both maps
/// work in the face's upright frame ([`TurnedBox`]) and were fitted there
/// ([`Self::fit_turned`]), and crops turn with the face; without it (settings from before roll
/// calibration) boxes and crops stay upright.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BoxCalibration {
    pub scale: f32,
    pub shift_x: f32,
    pub shift_y: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keypoints: Option<KeypointMap>,
    /// True roll minus the detector's eye-line angle (median on labeled faces), radians.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roll_offset: Option<f32>,
}

impl Default for BoxCalibration {
    /// The identity: the detector box is taken as the landmark box.
    fn default() -> Self {
        Self {
            scale: 1.0,
            shift_x: 0.0,
            shift_y: 0.0,
            keypoints: None,
            roll_offset: None,
        }
    }
}

/// Faces a keypoint map needs to be fitted: four per coefficient of each output.
pub const KEYPOINT_MAP_MIN_FACES: usize = 4 * KEYPOINT_FEATURES;

impl BoxCalibration {
    /// The landmark box predicted for a detection: from its keypoints when the map is set (and
    /// they are usable), no further from the box-only prediction than
    /// [`MAX_KEYPOINT_CORRECTION`]; else from its box.
    ///
    /// The box is in the face's upright frame, turned by [`Self::roll`].
    pub fn landmark_box(&self, detection: &Detection) -> TurnedBox {
        let angle = self.roll(detection);
        let detection = &detection.levelled(angle);
        let base = self.box_offsets();
        let offsets = match self.keypoints.and_then(|map| map.predict(detection)) {
            Some(p) => std::array::from_fn(|i| {
                p[i].clamp(
                    base[i] - MAX_KEYPOINT_CORRECTION[i],
                    base[i] + MAX_KEYPOINT_CORRECTION[i],
                )
            }),
            None => base,
        };
        TurnedBox {
            face_box: box_from_offsets(&detection.face_box, offsets),
            angle,
        }
    }

    /// The roll a detection's crop is turned to: its eye line plus [`Self::roll_offset`]; 0
    /// when the calibration has no roll or the keypoints give none.
    pub fn roll(&self, detection: &Detection) -> f32 {
        match (self.roll_offset, detection.roll()) {
            (Some(offset), Some(roll)) => wrap_angle(roll + offset),
            _ => 0.0,
        }
    }

    /// The landmark box predicted from the detector box alone.
    pub fn from_box(&self, detected: &FaceBox) -> FaceBox {
        box_from_offsets(detected, self.box_offsets())
    }

    /// The box-only map as [`KeypointMap::predict`]'s offsets.
    fn box_offsets(&self) -> [f32; 3] {
        [
            self.shift_x * self.scale,
            self.shift_y * self.scale,
            self.scale.ln(),
        ]
    }

    /// Fits both maps to pairs of (detection, true landmark box): scale and shift with medians,
    /// so a few wrong matches do not drag the fit; the keypoint map by [`KeypointMap::fit`]
    /// when there are at least [`KEYPOINT_MAP_MIN_FACES`] pairs. The target side is `max(w, h)`
    /// of the landmark box, which is what the crop rule scales.
    pub fn fit(pairs: &[(Detection, FaceBox)]) -> Result<Self> {
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
        let scale = median(
            pairs
                .iter()
                .map(|(d, l)| landmark_side(l) / box_size(&d.face_box))
                .collect(),
        );
        let shift = |axis: usize| {
            median(
                pairs
                    .iter()
                    .map(|(d, l)| {
                        (l.center()[axis] - d.face_box.center()[axis])
                            / (scale * box_size(&d.face_box))
                    })
                    .collect(),
            )
        };
        let keypoints = if pairs.len() >= KEYPOINT_MAP_MIN_FACES {
            Some(KeypointMap::fit(pairs)?)
        } else {
            None
        };
        let fitted = Self {
            scale,
            shift_x: shift(0),
            shift_y: shift(1),
            keypoints,
            roll_offset: None,
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

impl BoxCalibration {
    /// Fits a calibration whose crops turn with the face, from (detection, true landmarks,
    /// true roll) triples: the roll offset as the median of each true roll minus the detector's
    /// eye line, then [`Self::fit`] on every pair seen in the frame that offset turns it to,
    /// the frame a crop will be made in.
    pub fn fit_turned(matched: &[(Detection, Vec<Point>, f32)]) -> Result<Self> {
        let mut offsets: Vec<f32> = matched
            .iter()
            .filter_map(|(d, _, truth)| Some(wrap_angle(truth - d.roll()?)))
            .collect();
        if offsets.is_empty() {
            return Err(Error::Invalid {
                what: "roll calibration",
                detail: "no detection with usable eye keypoints".into(),
            });
        }
        offsets.sort_by(f32::total_cmp);
        let offset = offsets[offsets.len() / 2];
        let turned = Self {
            roll_offset: Some(offset),
            ..Self::default()
        };
        let pairs = matched
            .iter()
            .map(|(d, points, _)| {
                let angle = turned.roll(d);
                Ok((
                    d.levelled(angle),
                    TurnedBox::around(points, angle)?.face_box,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            roll_offset: Some(offset),
            ..Self::fit(&pairs)?
        })
    }
}

/// The most the keypoint map may move the landmark box from the box-only prediction, against
/// keypoints unlike any it was fitted on: centre x and y in units of the detector box size, and
/// the log of the side. The largest true departures on the 2,012 faces of `face68-train` are
/// 0.17, 0.17 and 0.31.
pub const MAX_KEYPOINT_CORRECTION: [f32; 3] = [0.2, 0.2, 0.35];

/// Coefficients per output of a [`KeypointMap`]: a constant, then x and y of each keypoint.
pub const KEYPOINT_FEATURES: usize = 1 + 2 * KEYPOINTS;

/// A linear map from a detection's keypoints to its landmark box. With `S = sqrt(w * h)` of the
/// detector box and each keypoint taken relative to the box centre in units of `S`, the
/// landmark box's centre offset from the box centre and the log of its side over `S` are each
/// the dot product of their coefficients with `[1, k0x, k0y, ..., k5x, k5y]`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KeypointMap {
    pub center_x: [f32; KEYPOINT_FEATURES],
    pub center_y: [f32; KEYPOINT_FEATURES],
    pub log_side: [f32; KEYPOINT_FEATURES],
}

impl KeypointMap {
    /// The map's inputs for a detection; `None` for an empty box or non-finite values.
    fn features(detection: &Detection) -> Option<[f64; KEYPOINT_FEATURES]> {
        let size = f64::from(box_size(&detection.face_box));
        let [cx, cy] = detection.face_box.center().map(f64::from);
        let mut features = [1.0; KEYPOINT_FEATURES];
        for (k, [x, y]) in detection.keypoints.iter().enumerate() {
            features[1 + 2 * k] = (f64::from(*x) - cx) / size;
            features[2 + 2 * k] = (f64::from(*y) - cy) / size;
        }
        (size > 0.0 && features.iter().all(|v| v.is_finite())).then_some(features)
    }

    /// The map's outputs for a pair: centre offset and log side, in units of the box size.
    fn targets(detection: &Detection, truth: &FaceBox) -> [f64; 3] {
        let size = f64::from(box_size(&detection.face_box));
        let [dx, dy] = detection.face_box.center();
        let [tx, ty] = truth.center();
        [
            f64::from(tx - dx) / size,
            f64::from(ty - dy) / size,
            (f64::from(landmark_side(truth)) / size).ln(),
        ]
    }

    /// The landmark box's centre offset from the detector box's centre (x, y) and the log of
    /// its side, in units of the box size; `None` where the detection or the result is unusable.
    pub fn predict(&self, detection: &Detection) -> Option<[f32; 3]> {
        let features = Self::features(detection)?;
        let apply = |w: &[f32; KEYPOINT_FEATURES]| -> f32 {
            w.iter()
                .zip(&features)
                .map(|(w, f)| f64::from(*w) * f)
                .sum::<f64>() as f32
        };
        let offsets = [
            apply(&self.center_x),
            apply(&self.center_y),
            apply(&self.log_side),
        ];
        offsets.iter().all(|v| v.is_finite()).then_some(offsets)
    }

    /// Least squares over the pairs, reweighted ten times by the inverse of each pair's
    /// residual (floored at the median) so that a few wrong matches pull it little, with a
    /// small ridge (1e-3) against collinear keypoints.
    pub fn fit(pairs: &[(Detection, FaceBox)]) -> Result<Self> {
        let rows: Vec<([f64; KEYPOINT_FEATURES], [f64; 3])> = pairs
            .iter()
            .filter_map(|(d, t)| Some((Self::features(d)?, Self::targets(d, t))))
            .filter(|(_, y)| y.iter().all(|v| v.is_finite()))
            .collect();
        if rows.len() < KEYPOINT_MAP_MIN_FACES {
            return Err(Error::Invalid {
                what: "keypoint calibration",
                detail: format!(
                    "{} usable faces; the fit needs {KEYPOINT_MAP_MIN_FACES}",
                    rows.len()
                ),
            });
        }
        let x = nalgebra::DMatrix::from_fn(rows.len(), KEYPOINT_FEATURES, |i, j| rows[i].0[j]);
        let y = nalgebra::DMatrix::from_fn(rows.len(), 3, |i, j| rows[i].1[j]);
        let mut weights = nalgebra::DVector::from_element(rows.len(), 1.0);
        let mut beta = nalgebra::DMatrix::zeros(KEYPOINT_FEATURES, 3);
        for _ in 0..10 {
            let weighted = nalgebra::DMatrix::from_fn(rows.len(), KEYPOINT_FEATURES, |i, j| {
                x[(i, j)] * weights[i]
            });
            let normal = weighted.transpose() * &x
                + nalgebra::DMatrix::identity(KEYPOINT_FEATURES, KEYPOINT_FEATURES) * 1e-3;
            beta = normal
                .cholesky()
                .ok_or_else(|| Error::Invalid {
                    what: "keypoint calibration",
                    detail: "the keypoints are degenerate (all faces alike?)".into(),
                })?
                .solve(&(weighted.transpose() * &y));
            let residuals: Vec<f64> = (&x * &beta - &y)
                .row_iter()
                .map(|r| r.iter().map(|v| v.abs()).sum())
                .collect();
            let mut sorted = residuals.clone();
            sorted.sort_by(f64::total_cmp);
            let floor = sorted[sorted.len() / 2].max(1e-9);
            weights = nalgebra::DVector::from_iterator(
                rows.len(),
                residuals.iter().map(|r| 1.0 / r.max(floor)),
            );
        }
        let column =
            |j: usize| -> [f32; KEYPOINT_FEATURES] { std::array::from_fn(|i| beta[(i, j)] as f32) };
        let map = Self {
            center_x: column(0),
            center_y: column(1),
            log_side: column(2),
        };
        let finite = [map.center_x, map.center_y, map.log_side]
            .iter()
            .flatten()
            .all(|v| v.is_finite());
        if finite {
            Ok(map)
        } else {
            Err(Error::Invalid {
                what: "keypoint calibration",
                detail: "the fit is not finite".into(),
            })
        }
    }
}

/// How far a predicted landmark box is from the true one: the centre distance over the true
/// side, and `|ln(side ratio)|` (sides as [`BoxCalibration`] scales them, `max(w, h)`).
pub fn landmark_box_error(predicted: &FaceBox, truth: &FaceBox) -> [f32; 2] {
    let [px, py] = predicted.center();
    let [tx, ty] = truth.center();
    let side = landmark_side(truth);
    [
        (px - tx).hypot(py - ty) / side,
        (landmark_side(predicted) / side).ln().abs(),
    ]
}

/// `sqrt(w * h)` of a detector box: its size, whatever its aspect.
fn box_size(b: &FaceBox) -> f32 {
    (b.width() * b.height()).max(0.0).sqrt()
}

/// `max(w, h)` of a landmark box: the side the crop rule scales.
fn landmark_side(b: &FaceBox) -> f32 {
    b.width().max(b.height())
}

/// The square a detector box maps to under [`KeypointMap::predict`]-style offsets.
fn box_from_offsets(detected: &FaceBox, [dx, dy, log_side]: [f32; 3]) -> FaceBox {
    let size = box_size(detected);
    let [cx, cy] = detected.center();
    square(cx + dx * size, cy + dy * size, size * log_side.exp())
}

/// The square of side `side` centred on `(cx, cy)`.
fn square(cx: f32, cy: f32, side: f32) -> FaceBox {
    FaceBox::from([
        cx - side / 2.0,
        cy - side / 2.0,
        cx + side / 2.0,
        cy + side / 2.0,
    ])
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
            keypoints: None,
            roll_offset: None,
        };
        let pairs: Vec<(Detection, FaceBox)> = (0..9)
            .map(|i| {
                let s = 40.0 + 10.0 * i as f32;
                let d = det([i as f32 * 7.0, 5.0, i as f32 * 7.0 + s, 5.0 + s], 0.9);
                let l = truth.landmark_box(&d).face_box;
                (d, l)
            })
            .collect();
        let fit = BoxCalibration::fit(&pairs).unwrap();
        assert!(
            fit.keypoints.is_none(),
            "too few faces for the keypoint map"
        );
        for (a, b) in [
            (fit.scale, truth.scale),
            (fit.shift_x, truth.shift_x),
            (fit.shift_y, truth.shift_y),
        ] {
            assert!((a - b).abs() < 1e-4, "{fit:?}");
        }
        assert!(BoxCalibration::fit(&[]).is_err());
    }

    #[test]
    fn turned_fit_recovers_the_roll_offset_and_the_map_in_the_face_frame() {
        let truth = BoxCalibration {
            scale: 1.2,
            shift_x: 0.03,
            shift_y: 0.08,
            keypoints: None,
            roll_offset: Some(0.05),
        };
        // Faces at rolls from -170 to +150 degrees: the detector's eyes on the face's axis
        // turned by the roll less the offset, the true landmark box in the frame of the roll.
        let matched: Vec<(Detection, Vec<Point>, f32)> = (0..9)
            .map(|i| {
                let (s, roll) = (40.0 + 10.0 * i as f32, -3.0 + 0.7 * i as f32);
                let mut d = det(
                    [100.0 * i as f32, 50.0, 100.0 * i as f32 + s, 50.0 + s],
                    0.9,
                );
                let [cx, cy] = d.face_box.center();
                let eye = turn([0.2 * s, 0.0], roll - 0.05);
                d.keypoints[0] = [cx - eye[0], cy - eye[1]];
                d.keypoints[1] = [cx + eye[0], cy + eye[1]];
                let b = truth.landmark_box(&d);
                assert!((wrap_angle(b.angle - roll)).abs() < 1e-5);
                let f = b.face_box;
                let corners = [[f.x0, f.y0], [f.x1, f.y1]].map(|p| turn(p, b.angle));
                (d, corners.to_vec(), wrap_angle(roll))
            })
            .collect();
        let fit = BoxCalibration::fit_turned(&matched).unwrap();
        let offset = fit.roll_offset.unwrap();
        assert!((offset - 0.05).abs() < 1e-5, "{fit:?}");
        for (a, b) in [
            (fit.scale, truth.scale),
            (fit.shift_x, truth.shift_x),
            (fit.shift_y, truth.shift_y),
        ] {
            assert!((a - b).abs() < 1e-3, "{fit:?}");
        }
        // Without keypoints a detection has no roll: upright.
        let mut blind = matched[0].0;
        blind.keypoints = Default::default();
        assert_eq!(fit.landmark_box(&blind).angle, 0.0);
        assert!(BoxCalibration::fit_turned(&[(blind, vec![[0.0, 0.0]], 0.0)]).is_err());
    }

    #[test]
    fn keypoint_fit_recovers_a_known_map_despite_wrong_matches() {
        // A map in which the landmark box follows the eyes and the nose.
        let mut truth = KeypointMap {
            center_x: [0.0; KEYPOINT_FEATURES],
            center_y: [0.0; KEYPOINT_FEATURES],
            log_side: [0.0; KEYPOINT_FEATURES],
        };
        truth.center_x[5] = 0.5; // nose x
        truth.center_y[0] = 0.1;
        truth.center_y[2] = 0.5; // right eye y
        truth.log_side[0] = -0.05;
        truth.log_side[3] = 0.3; // left eye x
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut uniform = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f32 / (1u64 << 53) as f32
        };
        let pairs: Vec<(Detection, FaceBox)> = (0..200)
            .map(|i| {
                let (x, y, s) = (
                    500.0 * uniform(),
                    300.0 * uniform(),
                    40.0 + 200.0 * uniform(),
                );
                let mut d = det([x, y, x + s, y + s], 0.9);
                for k in &mut d.keypoints {
                    *k = [
                        x + s * (0.2 + 0.6 * uniform()),
                        y + s * (0.2 + 0.6 * uniform()),
                    ];
                }
                let mut l = box_from_offsets(&d.face_box, truth.predict(&d).unwrap());
                if i % 10 == 0 {
                    // A wrong match: another face's box.
                    l = square(l.center()[0] + s, l.center()[1], landmark_side(&l));
                }
                (d, l)
            })
            .collect();
        let fit = BoxCalibration::fit(&pairs).unwrap();
        let map = fit.keypoints.expect("200 faces fit the keypoint map");
        for (d, l) in pairs.iter().skip(1).step_by(10) {
            let [centre, scale] = landmark_box_error(&fit.landmark_box(d).face_box, l);
            assert!(centre < 0.01 && scale < 0.01, "{centre} {scale}: {map:?}");
        }
        // Keypoints it cannot use: the box map instead.
        let mut odd = pairs[1].0;
        odd.keypoints[0] = [f32::NAN, 0.0];
        assert_eq!(fit.landmark_box(&odd).face_box, fit.from_box(&odd.face_box));
        // Keypoints far outside the box: no further from the box map than allowed.
        odd.keypoints = [[-1e4, 1e4]; KEYPOINTS];
        let (bounded, base) = (fit.landmark_box(&odd).face_box, fit.from_box(&odd.face_box));
        let [centre, scale] = landmark_box_error(&bounded, &base);
        let size = box_size(&odd.face_box) / landmark_side(&base);
        assert!(centre <= 0.2f32.hypot(0.2) * size * 1.001, "{centre}");
        assert!(scale <= 0.35 * 1.001 && scale > 0.3, "{scale}");
        assert!(KeypointMap::fit(&pairs[..KEYPOINT_MAP_MIN_FACES - 1]).is_err());
    }
}
