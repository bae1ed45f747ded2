//! Image -> faces with landmarks: detect (or take the caller's boxes), crop with the model's
//! rule (turned to the face's roll), run every face of every image as one batch, and give a
//! second pass to the faces that need it ([`SecondPass`]): crop again from the first pass's
//! landmarks, turned to their eye line, and run once more, which undoes most of the first
//! crop's error. A detected face whose first pass shows little of a face is looked for again
//! on the photo turned by quarter turns, for faces rolled past what the detector's keypoints
//! get right.

use std::f32::consts::{FRAC_PI_2, FRAC_PI_4};
use std::path::Path;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, sync_channel};

use image::RgbImage;
use pipnet_core::detection::{Detection, wrap_angle};
use pipnet_core::formats::FaceAnnotation;
use pipnet_core::{
    CropChange, CropRule, FaceBox, FaceCrop, Point, Scheme, SecondPass, SecondPassGate,
    five_points, head_pose, landmark_crop,
};

use crate::detect::{FaceDetector, FoundFace, RollSearch};
use crate::error::{Error, Result};
use crate::model::{FaceLandmarks, LandmarkModel};
use crate::options::SessionOptions;

/// Where the faces of an image come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Faces {
    /// Run the face detector.
    Detect,
    /// The image is one pre-cropped face: the centred square around its longest side.
    WholeImage,
    /// Tight landmark boxes in image pixels (the 300-W protocol), cropped with the model's rule.
    LandmarkBoxes(Vec<FaceBox>),
}

/// One face found in an image.
#[derive(Debug, Clone, PartialEq)]
pub struct Face {
    /// The detector's output, when the face came from the detector.
    pub detection: Option<Detection>,
    pub landmarks: FaceLandmarks,
    /// Whether the landmarks come from a second pass ([`SecondPass`]).
    pub second_pass: bool,
}

impl Face {
    /// The box reported for this face: the detector's box, else the crop's bounds.
    pub fn face_box(&self) -> FaceBox {
        self.detection
            .map_or_else(|| self.landmarks.crop.bounds(), |d| d.face_box)
    }

    /// The detector's score, or 1 for faces the caller declared.
    pub fn score(&self) -> f32 {
        self.detection.map_or(1.0, |d| d.score)
    }

    /// Face presence, the mean landmark score ([`pipnet_core::presence`]).
    pub fn presence(&self) -> f32 {
        pipnet_core::presence(&self.landmarks.scores())
    }

    /// The face as outputs record it, with its five points and head pose where `scheme` has
    /// them; no chip.
    pub fn annotation(&self, scheme: Scheme) -> FaceAnnotation {
        self.annotation_with(scheme, &self.landmarks.in_image)
    }

    /// [`Self::annotation`] with `points` (a tracker's smoothed ones) in place of the face's
    /// own landmarks, its five points and pose fitted to them.
    pub fn annotation_with(&self, scheme: Scheme, points: &[Point]) -> FaceAnnotation {
        let scores = self.landmarks.scores();
        FaceAnnotation {
            face_box: self.face_box(),
            score: self.score(),
            landmarks: points.to_vec(),
            presence: pipnet_core::presence(&scores),
            landmark_scores: scores,
            five_points: five_points(scheme, points).ok(),
            pose: head_pose(scheme, points),
            chip: None,
        }
    }
}

/// What a face's first landmark pass said about its crop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FirstPass {
    /// How far the crop made from the first landmarks lies from the first crop (`None` when
    /// the landmarks make no crop).
    pub change: Option<CropChange>,
    /// The first pass's presence.
    pub presence: f32,
    /// Whether the face got the second pass.
    pub second_pass: bool,
}

/// A detected face whose first pass has a presence under this gets other crops tried, other ways
/// up ([`Pipeline::landmarks_with_passes`]). On the validation split turned by 90 and 180
/// degrees, the faces the detector found with its keypoints far out scored 0.17-0.44 (5th to
/// 95th percentile), the others 0.51-0.79; the second pass's gate uses the same bar
/// (`docs/experiments.md`, "Tilted and turned faces").
pub const REORIENT_BELOW: f32 = 0.6;

/// Under this presence a face gets every other way up tried ([`Pipeline::landmarks_with_passes`]);
/// from here to [`REORIENT_BELOW`], unless other turns of the photo found it too, only the half
/// turn (its crop and the detector in a tile turned so). Small upright faces often score
/// 0.5-0.6 (trying every way up on those of the crowded sample photos cost a third more landmark
/// runs, before other faces of a photo could confirm its way up); faces the detector saw upside
/// down reach 0.6 too, and the half turn is what they need (`docs/experiments.md`, "Faces at
/// any roll, judged by the landmarks").
pub const REORIENT_FULLY_BELOW: f32 = 0.5;

/// The smallest presence a detected face may have to be kept (`--min-presence`), chosen on
/// the validation split and on face-free crops (`docs/experiments.md`, "Face presence").
pub const DEFAULT_MIN_PRESENCE: f32 = 0.3;

/// A face to run the landmark model on: what the detector found (if it came from the detector)
/// and its crop.
pub type LocatedFace = (Option<FoundFace>, FaceCrop);

/// Finds the faces of one image: `detector` (down to `min_face` pixels, turning the photo as
/// `roll_search` says) for [`Faces::Detect`], else the crops `faces` declares, made with the
/// model's crop `rule`. A declared box that cannot be a face in this image
/// ([`FaceBox::check_in_image`]) fails the image.
pub fn locate(
    detector: Option<&mut FaceDetector>,
    rule: &CropRule,
    (min_face, roll_search): (Option<f32>, RollSearch),
    image: &RgbImage,
    faces: &Faces,
) -> Result<Vec<LocatedFace>> {
    Ok(match faces {
        Faces::WholeImage => vec![(None, FaceCrop::whole_image(image.width(), image.height()))],
        Faces::LandmarkBoxes(boxes) => {
            let (w, h) = image.dimensions();
            boxes
                .iter()
                .enumerate()
                .map(|(k, b)| {
                    b.check_in_image(w, h)
                        .map_err(|e| Error::InvalidInput(format!("box {}: {e}", k + 1)))?;
                    Ok((None, rule.crop(b)))
                })
                .collect::<Result<_>>()?
        }
        Faces::Detect => {
            let detector = detector.ok_or_else(|| {
                Error::InvalidInput(
                    "face detection asked for, but the pipeline has no detector".into(),
                )
            })?;
            let found = detector.detect_any_roll(image, min_face, roll_search)?;
            found
                .into_iter()
                .map(|f| (Some(f), detector.crop(&f.detection, rule)))
                .collect()
        }
    })
}

/// The detector sessions of the loader threads of a run over many photos
/// ([`FaceDetector::for_loaders`]), one thread each; one thread without a detector when
/// faces are not detected.
pub(crate) fn loader_detectors(sessions: &mut [FaceDetector]) -> Vec<Option<&mut FaceDetector>> {
    if sessions.is_empty() {
        vec![None]
    } else {
        sessions.iter_mut().map(Some).collect()
    }
}

/// Runs `load` on every item, on one thread per entry of `detectors` (each thread takes the
/// next unclaimed item and uses its own detector), while `consume` takes the results on the
/// caller's thread in the order they finish. The channel between them holds `capacity`
/// results, so memory stays flat however many items there are; when `consume` returns early
/// the loaders stop at their next result.
pub(crate) fn fan_out<I: Send, T: Send, R>(
    items: Vec<I>,
    detectors: Vec<Option<&mut FaceDetector>>,
    capacity: usize,
    load: impl Fn(I, Option<&mut FaceDetector>) -> T + Sync,
    consume: impl FnOnce(Receiver<T>) -> R,
) -> R {
    let queue = Mutex::new(items.into_iter());
    let (send, receive) = sync_channel(capacity);
    std::thread::scope(|scope| {
        for mut detector in detectors {
            let (send, queue, load) = (send.clone(), &queue, &load);
            scope.spawn(move || {
                // A poisoned queue means another loader panicked; stop taking items.
                while let Some(item) = queue.lock().ok().and_then(|mut q| q.next()) {
                    if send.send(load(item, detector.as_deref_mut())).is_err() {
                        return;
                    }
                }
            });
        }
        drop(send);
        consume(receive)
    })
}

/// How a pipeline finds faces and their landmarks. One type for every front end: the CLI's
/// flags, the C `PipnetOptions` and Python's keyword arguments each map onto it, and
/// [`Pipeline::with_options`] checks it, so the defaults and the checks live here only.
/// `Default` is `pipnet annotate`'s defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PipelineOptions {
    /// Smallest face searched for, in image pixels (`None`: the detector's default).
    pub min_face: Option<f32>,
    /// Where the detector also searches the photo turned by quarter turns.
    pub roll_search: RollSearch,
    /// Which faces get a second landmark pass on a crop made from their first landmarks.
    pub second_pass: SecondPass,
    /// Where [`SecondPass::Auto`] runs the second pass.
    pub gate: SecondPassGate,
    /// Detected faces whose presence is below this are dropped as false detections, and above
    /// 0 so are those that repeat a face of higher presence ([`pipnet_core::repeated_faces`]);
    /// faces the caller gave are always kept; 0 keeps all.
    pub min_presence: f32,
    /// Also run every crop mirrored and average the two ([`LandmarkModel::set_flip_average`]).
    pub flip: bool,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            min_face: None,
            roll_search: RollSearch::default(),
            second_pass: SecondPass::default(),
            gate: SecondPassGate::default(),
            min_presence: DEFAULT_MIN_PRESENCE,
            flip: false,
        }
    }
}

impl PipelineOptions {
    /// Options that keep every face the detector reports (no presence cut), e.g. to score
    /// landmarks against known faces.
    pub fn keep_every_face() -> Self {
        Self {
            min_presence: 0.0,
            ..Self::default()
        }
    }

    /// Fails, naming the option, where a value is out of range.
    pub fn check(&self) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidInput(what));
        if let Some(m) = self.min_face.filter(|m| !(m.is_finite() && *m > 0.0)) {
            return bad(format!(
                "min_face {m}: the smallest face must be a positive number of pixels"
            ));
        }
        if !(self.min_presence.is_finite() && self.min_presence >= 0.0) {
            return bad(format!(
                "min_presence {}: must be a number >= 0 (0 keeps every face)",
                self.min_presence
            ));
        }
        let g = &self.gate;
        if ![g.shift, g.scale, g.turn, g.presence]
            .iter()
            .all(|v| v.is_finite() && *v >= 0.0)
        {
            return bad(format!(
                "second-pass gate {g:?}: every threshold must be a number >= 0"
            ));
        }
        Ok(())
    }
}

/// A landmark model, with a face detector when faces must be found, run as its
/// [`PipelineOptions`] say.
#[derive(Debug)]
pub struct Pipeline {
    pub(crate) model: LandmarkModel,
    pub(crate) detector: Option<FaceDetector>,
    pub(crate) options: PipelineOptions,
}

impl Pipeline {
    /// A pipeline over models already opened, after checking `options`.
    pub fn with_options(
        model: LandmarkModel,
        detector: Option<FaceDetector>,
        options: PipelineOptions,
    ) -> Result<Self> {
        let mut pipeline = Self {
            model,
            detector,
            options: PipelineOptions::default(),
        };
        pipeline.set_options(options)?;
        Ok(pipeline)
    }

    /// Opens the landmark model and, when `detect` is set, the face detector: the graph files
    /// named, else the built-in ones.
    pub fn open(
        landmark_model: Option<&Path>,
        detector: Option<&Path>,
        detect: bool,
        session: &SessionOptions,
        options: PipelineOptions,
    ) -> Result<Self> {
        options.check()?;
        let model = LandmarkModel::load_or_builtin(landmark_model, session)?;
        let detector = match (detect, detector) {
            (false, _) => None,
            (true, Some(path)) => Some(FaceDetector::load(path, session)?),
            (true, None) => Some(FaceDetector::builtin(session)?),
        };
        Self::with_options(model, detector, options)
    }

    pub fn options(&self) -> &PipelineOptions {
        &self.options
    }

    /// Runs from now on as `options` say, once they pass [`PipelineOptions::check`].
    pub fn set_options(&mut self, options: PipelineOptions) -> Result<()> {
        options.check()?;
        self.model.set_flip_average(options.flip);
        self.options = options;
        Ok(())
    }

    pub fn model(&self) -> &LandmarkModel {
        &self.model
    }

    pub fn detector(&self) -> Option<&FaceDetector> {
        self.detector.as_ref()
    }

    /// One landmark pass on exactly these crops, the model's input windows as the caller chose
    /// them: no crop rule, no second pass.
    pub fn landmarks_in_windows(
        &mut self,
        windows: &[(&RgbImage, FaceCrop)],
    ) -> Result<Vec<FaceLandmarks>> {
        self.model.landmarks(windows)
    }

    /// Finds the faces of one image (detections, or the crops `faces` declares).
    pub fn locate(&mut self, image: &RgbImage, faces: &Faces) -> Result<Vec<LocatedFace>> {
        let rule = self.model.metadata().crop;
        let search = (self.options.min_face, self.options.roll_search);
        locate(self.detector.as_mut(), &rule, search, image, faces)
    }

    /// Landmarks for known crops, batched, with the second pass where
    /// [`PipelineOptions::second_pass`] runs it.
    pub fn landmarks(&mut self, crops: &[(&RgbImage, FaceCrop)]) -> Result<Vec<FaceLandmarks>> {
        let faces: Vec<(&RgbImage, LocatedFace)> = crops
            .iter()
            .map(|&(image, crop)| (image, (None, crop)))
            .collect();
        let found = self.landmarks_with_passes(&faces)?;
        Ok(found.into_iter().map(|(face, _)| face.landmarks).collect())
    }

    /// Landmarks for located faces, batched: the first pass; for a detected face that shows
    /// little of a face (presence under [`REORIENT_BELOW`]), other ways up
    /// ([`Self::reorient`]); then the second pass where [`PipelineOptions::second_pass`] runs
    /// it. Returns each face with what its first pass said.
    pub fn landmarks_with_passes(
        &mut self,
        faces: &[(&RgbImage, LocatedFace)],
    ) -> Result<Vec<(Face, FirstPass)>> {
        let crops: Vec<(&RgbImage, FaceCrop)> = faces
            .iter()
            .map(|&(image, (_, crop))| (image, crop))
            .collect();
        let mut found: Vec<Face> = self
            .model
            .landmarks(&crops)?
            .into_iter()
            .zip(faces)
            .map(|(landmarks, &(_, (detector_found, _)))| Face {
                detection: detector_found.map(|f| f.detection),
                landmarks,
                second_pass: false,
            })
            .collect();
        self.reorient(faces, &mut found)?;
        let meta = self.model.metadata();
        let (rule, scheme) = (meta.crop, meta.scheme);
        let mut again = Vec::new();
        let passes: Vec<FirstPass> = found
            .iter()
            .zip(&crops)
            .map(|(face, &(image, _))| {
                let (crop, presence) = (face.landmarks.crop, face.presence());
                // Non-finite points were already rejected by the model.
                let next = landmark_crop(&rule, scheme, &face.landmarks.in_image).ok();
                let change = next.map(|next| CropChange::between(&crop, &next));
                let second_pass = match (self.options.second_pass, change) {
                    (_, None) | (SecondPass::Off, _) => false,
                    (SecondPass::Always, _) => true,
                    (SecondPass::Auto, Some(change)) => self.options.gate.pays(&change, presence),
                };
                if let (true, Some(next)) = (second_pass, next) {
                    again.push((image, next));
                }
                FirstPass {
                    change,
                    presence,
                    second_pass,
                }
            })
            .collect();
        let mut second = self.model.landmarks(&again)?.into_iter();
        for (face, pass) in found.iter_mut().zip(&passes) {
            if pass.second_pass
                && let Some(landmarks) = second.next()
            {
                face.landmarks = landmarks;
                face.second_pass = true;
            }
        }
        Ok(found.into_iter().zip(passes).collect())
    }

    /// Detected faces whose first pass shows little of a face, unless another face of the same
    /// photo shows one the same way up as their crop, get other crops tried: their
    /// first crop turned by each quarter turn, the crops of the same face's detections in the
    /// other turns of the photo ([`FoundFace::seen_turned`]) and of the detector's finds in
    /// tiles around it turned by none to three quarter turns
    /// ([`FaceDetector::redetect_turned`]); the crop whose landmarks show most of a face is
    /// kept. Past about 45 degrees of roll the detector still finds faces upright, but its eye
    /// keypoints, and so the crop's angle, can be far out (upside down, it marks the eyes of an
    /// upright face); the landmark model's presence tells the right way up from the wrong ones.
    fn reorient(&mut self, faces: &[(&RgbImage, LocatedFace)], found: &mut [Face]) -> Result<()> {
        let Some(detector) = self.detector.as_mut() else {
            return Ok(());
        };
        let meta = self.model.metadata();
        let (rule, scheme) = (meta.crop, meta.scheme);
        // The eye line of each face whose first pass shows a face: the way up of its photo.
        let way_up: Vec<Option<f32>> = found
            .iter()
            .map(|face| {
                let roll = pipnet_core::roll(scheme, &face.landmarks.in_image).ok();
                roll.filter(|_| face.presence() >= REORIENT_BELOW)
            })
            .collect();
        let mut retry = Vec::new();
        for (i, face) in found.iter().enumerate() {
            let (image, (Some(detector_found), crop)) = faces[i] else {
                continue;
            };
            let presence = face.presence();
            if presence >= REORIENT_BELOW {
                continue;
            }
            // A face cropped the way up that another face of its photo confirms is small,
            // blurred or hidden, not turned: photos hold their faces one way up, and in a
            // crowded photo such faces are many (8 crops tried for nothing on the sample
            // photos' 43 faces).
            let confirmed = faces.iter().zip(&way_up).any(|(&(other, _), roll)| {
                std::ptr::eq(other, image)
                    && roll.is_some_and(|r| wrap_angle(r - crop.angle).abs() < FRAC_PI_4)
            });
            if confirmed {
                continue;
            }
            let detection = detector_found.detection;
            let turn = |k: u8| {
                let angle = wrap_angle(crop.angle + f32::from(k) * FRAC_PI_2);
                (i, detection, (image, FaceCrop { angle, ..crop }))
            };
            // Between the bars: mostly small or blurred faces the right way up, and faces the
            // detector saw upside down, which the half turn (crop and tile) rights.
            let half_turn_only =
                presence >= REORIENT_FULLY_BELOW && detector_found.seen_turned == [None; 3];
            let turns: &[u8] = if half_turn_only { &[2] } else { &[0, 1, 2, 3] };
            retry.extend(turns.iter().filter(|&&k| k > 0).map(|&k| turn(k)));
            let seen_turned = detector_found.seen_turned.into_iter().flatten();
            for other in seen_turned.chain(detector.redetect_turned(image, &detection, turns)?) {
                retry.push((i, other, (image, detector.crop(&other, &rule))));
            }
        }
        let again: Vec<(&RgbImage, FaceCrop)> = retry.iter().map(|r| r.2).collect();
        for ((i, detection, _), landmarks) in retry.into_iter().zip(self.model.landmarks(&again)?) {
            let retried = Face {
                detection: Some(detection),
                landmarks,
                second_pass: false,
            };
            if retried.presence() > found[i].presence() {
                found[i] = retried;
            }
        }
        Ok(())
    }

    /// All faces of several images, every face in shared landmark batches.
    pub fn faces(&mut self, images: &[(&RgbImage, &Faces)]) -> Result<Vec<Vec<Face>>> {
        let mut located = Vec::with_capacity(images.len());
        for (image, faces) in images {
            located.push(self.locate(image, faces)?);
        }
        let images: Vec<&RgbImage> = images.iter().map(|(image, _)| *image).collect();
        let located: Vec<&[LocatedFace]> = located.iter().map(Vec::as_slice).collect();
        let mut found = self.landmarks_of(&images, &located)?;
        for faces in &mut found {
            self.drop_false_detections(faces);
        }
        Ok(found)
    }

    /// Drops the detected faces that are not there or not new: presence below
    /// [`PipelineOptions::min_presence`], or (when it is above 0) landmarks over a face of
    /// higher presence; returns how many.
    pub fn drop_false_detections(&self, faces: &mut Vec<Face>) -> usize {
        let before = faces.len();
        let min_presence = self.options.min_presence;
        faces.retain(|f| f.detection.is_none() || f.presence() >= min_presence);
        if min_presence > 0.0 {
            let boxes: Vec<FaceBox> = faces
                .iter()
                .map(|f| FaceBox::around(&f.landmarks.in_image).unwrap_or_else(|_| f.face_box()))
                .collect();
            let presence: Vec<f32> = faces.iter().map(Face::presence).collect();
            let mut repeated = pipnet_core::repeated_faces(&boxes, &presence).into_iter();
            faces.retain(|f| {
                let repeats = repeated.next().unwrap_or(false);
                !repeats || f.detection.is_none()
            });
        }
        before - faces.len()
    }

    /// Runs the landmark stage on faces already located in `images` (one list per image).
    pub fn landmarks_of(
        &mut self,
        images: &[&RgbImage],
        located: &[&[LocatedFace]],
    ) -> Result<Vec<Vec<Face>>> {
        let faces: Vec<(&RgbImage, LocatedFace)> = images
            .iter()
            .zip(located)
            .flat_map(|(image, faces)| faces.iter().map(|face| (*image, *face)))
            .collect();
        let mut found = self.landmarks_with_passes(&faces)?.into_iter();
        let mut found: Vec<Vec<Face>> = located
            .iter()
            .map(|faces| found.by_ref().take(faces.len()).map(|f| f.0).collect())
            .collect();
        for ((image, located), faces) in images.iter().zip(located).zip(&mut found) {
            self.add_turned_faces(image, located, faces)?;
        }
        Ok(found)
    }

    /// [`RollSearch::WhereNeeded`] in the landmark stage, for an image whose faces the upright
    /// search found: where none of them is a face its landmarks confirm (presence at least
    /// [`DEFAULT_MIN_PRESENCE`]), or one is rolled past 45 degrees, the photo is searched
    /// turned by each quarter turn too, and the faces found only there are added to `faces`.
    fn add_turned_faces(
        &mut self,
        image: &RgbImage,
        located: &[LocatedFace],
        faces: &mut Vec<Face>,
    ) -> Result<()> {
        let searched_upright_only = !located.is_empty()
            && located
                .iter()
                .all(|(found, _)| found.is_some_and(|f| f.upright));
        if self.options.roll_search != RollSearch::WhereNeeded || !searched_upright_only {
            return Ok(());
        }
        let scheme = self.model.metadata().scheme;
        let rolled = |f: &&Face| {
            pipnet_core::roll(scheme, &f.landmarks.in_image).is_ok_and(|r| r.abs() > FRAC_PI_4)
        };
        let confirmed: Vec<&Face> = faces
            .iter()
            .filter(|f| f.presence() >= DEFAULT_MIN_PRESENCE)
            .collect();
        if !confirmed.is_empty() && !confirmed.iter().any(rolled) {
            return Ok(());
        }
        let Some(detector) = self.detector.as_mut() else {
            return Ok(());
        };
        let mut found: Vec<FoundFace> = located.iter().filter_map(|(found, _)| *found).collect();
        detector.detect_turns(image, self.options.min_face, &mut found)?;
        let rule = self.model.metadata().crop;
        let more: Vec<(&RgbImage, LocatedFace)> = found
            .into_iter()
            .filter(|f| !f.upright)
            .map(|f| (image, (Some(f), detector.crop(&f.detection, &rule))))
            .collect();
        let more = self.landmarks_with_passes(&more)?;
        faces.extend(more.into_iter().map(|(face, _)| face));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fan_out_loads_every_item_once_on_every_loader() {
        let items: Vec<u32> = (0..500).collect();
        let threads = std::sync::Mutex::new(std::collections::HashSet::new());
        let load = |item: u32, detector: Option<&mut FaceDetector>| {
            assert!(detector.is_none());
            threads.lock().unwrap().insert(std::thread::current().id());
            std::thread::yield_now();
            item
        };
        let mut got: Vec<u32> = fan_out(items.clone(), vec![None, None, None], 2, load, |r| {
            r.into_iter().collect()
        });
        got.sort_unstable();
        assert_eq!(got, items);
        assert!(
            threads.lock().unwrap().len() > 1,
            "one loader did all the work"
        );
    }

    #[test]
    fn fan_out_stops_the_loaders_when_the_consumer_ends_early() {
        let loaded = std::sync::atomic::AtomicUsize::new(0);
        let load = |item: u32, _: Option<&mut FaceDetector>| {
            loaded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            item
        };
        let first = fan_out((0..10_000).collect(), vec![None, None], 4, load, |r| {
            r.into_iter().take(3).count()
        });
        assert_eq!(first, 3);
        // Each loader may finish one result after the channel (4) is full and closed.
        assert!(loaded.into_inner() <= 3 + 4 + 2);
    }
}
