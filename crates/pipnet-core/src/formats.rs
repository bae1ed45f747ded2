//! Annotation formats: iBUG `.pts` files, WFLW annotation lines, and the JSON that
//! `pipnet annotate` writes. Text in, text out: reading and writing files is the caller's job.

use serde::{Deserialize, Serialize};

use crate::chip::FaceChip;
use crate::crop::FaceBox;
use crate::pose::HeadPose;
use crate::{Error, Point, Result};

/// Parses an iBUG `.pts` file (`version: 1`, `n_points: N`, `{`, N lines `x y`, `}`).
/// Values are returned as written (1-based in 300-W; subtract 1 for 0-based pixel centres).
pub fn parse_pts(text: &str) -> Result<Vec<Point>> {
    let err = |line: usize, detail: String| Error::Parse {
        format: ".pts",
        line,
        detail,
    };
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty());
    let mut count = None;
    for (no, line) in lines.by_ref() {
        if line == "{" {
            break;
        }
        if let Some(n) = line.strip_prefix("n_points:") {
            let n = n.trim().parse::<usize>();
            count = Some(n.map_err(|e| err(no, format!("bad n_points: {e}")))?);
        } else if !line.starts_with("version:") {
            return Err(err(no, format!("unexpected header line {line:?}")));
        }
    }
    let count = count.ok_or_else(|| err(1, "no n_points header".into()))?;
    let mut points = Vec::with_capacity(count);
    for (no, line) in lines {
        if line == "}" {
            if points.len() != count {
                return Err(err(
                    no,
                    format!("{} points, header says {count}", points.len()),
                ));
            }
            return Ok(points);
        }
        let mut values = line.split_whitespace().map(str::parse::<f32>);
        match (values.next(), values.next(), values.next()) {
            (Some(Ok(x)), Some(Ok(y)), None) if x.is_finite() && y.is_finite() => {
                points.push([x, y])
            }
            _ => {
                return Err(err(
                    no,
                    format!("expected two finite numbers, got {line:?}"),
                ));
            }
        }
    }
    Err(err(text.lines().count(), "missing closing '}'".into()))
}

/// Writes points as an iBUG `.pts` file (values as given: add 1 for the 300-W convention).
pub fn format_pts(points: &[Point]) -> String {
    let mut text = format!("version: 1\nn_points: {}\n{{\n", points.len());
    for p in points {
        text.push_str(&format!("{:.3} {:.3}\n", p[0], p[1]));
    }
    text.push_str("}\n");
    text
}

/// One face of a WFLW annotation list: 98 points, the face box, six attribute flags
/// (pose, expression, illumination, make-up, occlusion, blur) and the image path.
#[derive(Debug, Clone, PartialEq)]
pub struct WflwRecord {
    pub points: Vec<Point>,
    pub face_box: FaceBox,
    pub attributes: [u8; 6],
    pub image: String,
}

/// Parses one line of `list_98pt_rect_attr_*.txt`: 196 coordinates, 4 box values, 6 flags, path.
pub fn parse_wflw_line(line: &str, line_no: usize) -> Result<WflwRecord> {
    const POINTS: usize = 98;
    let fields: Vec<&str> = line.split_whitespace().collect();
    let expected = 2 * POINTS + 4 + 6 + 1;
    let err = |detail: String| Error::Parse {
        format: "WFLW list",
        line: line_no,
        detail,
    };
    if fields.len() != expected {
        return Err(err(format!("{} fields, expected {expected}", fields.len())));
    }
    let numbers: Vec<f32> = fields[..2 * POINTS + 4]
        .iter()
        .map(|f| {
            f.parse::<f32>()
                .map_err(|_| err(format!("{f:?} is not a number")))
        })
        .collect::<Result<_>>()?;
    let mut attributes = [0u8; 6];
    for (a, f) in attributes
        .iter_mut()
        .zip(&fields[2 * POINTS + 4..2 * POINTS + 10])
    {
        *a = f
            .parse()
            .map_err(|_| err(format!("attribute {f:?} is not 0 or 1")))?;
    }
    let b = &numbers[2 * POINTS..];
    Ok(WflwRecord {
        points: numbers[..2 * POINTS]
            .chunks_exact(2)
            .map(|c| [c[0], c[1]])
            .collect(),
        face_box: FaceBox::from([b[0], b[1], b[2], b[3]]),
        attributes,
        image: fields[expected - 1].to_string(),
    })
}

/// One face in an annotation: its box and landmarks in image pixels (0-based pixel centres).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaceAnnotation {
    /// Where the face was found: the detector's box, the given box (`--boxes`) or the crop's
    /// bounds (`--crops`); not the landmarks' extent.
    #[serde(rename = "box")]
    pub face_box: FaceBox,
    /// Detector confidence (0..1); 1.0 where the box was given rather than detected.
    pub score: f32,
    pub landmarks: Vec<Point>,
    /// The `cls` score of each landmark's winning cell, not normalised: trained towards 1 at
    /// the landmark's cell and 0 elsewhere, so about 0..1 but it can overshoot (1.25 seen);
    /// `--flip` averages the two runs' scores.
    pub landmark_scores: Vec<f32>,
    /// The mean of `landmark_scores` ([`crate::chip::presence`]): low for false detections.
    #[serde(default)]
    pub presence: f32,
    /// Eye centres, nose tip, mouth corners ([`crate::chip::five_points`]), when the scheme
    /// has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub five_points: Option<[Point; 5]>,
    /// The head pose fitted to the landmarks ([`crate::pose`]), where the scheme has a mean
    /// shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pose: Option<HeadPose>,
    /// The aligned chip written for this face (`--chips`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chip: Option<ChipRecord>,
}

/// The CSV columns of one face after a file's own key columns (`image,face` for `annotate`,
/// `frame,time,id` for `track`): `score,presence,box_x0,box_y0,box_x1,box_y1`, then
/// the head pose `yaw,pitch,roll,pose_residual` (degrees; empty without a pose), then
/// `x0,y0,...` for `points` landmarks and, with `scores`, the landmark scores `s0,...`.
pub fn csv_face_columns(points: usize, scores: bool) -> String {
    let mut columns =
        String::from("score,presence,box_x0,box_y0,box_x1,box_y1,yaw,pitch,roll,pose_residual");
    for i in 0..points {
        columns.push_str(&format!(",x{i},y{i}"));
    }
    if scores {
        for i in 0..points {
            columns.push_str(&format!(",s{i}"));
        }
    }
    columns
}

impl FaceAnnotation {
    /// This face's values in the columns of [`csv_face_columns`].
    pub fn csv_values(&self, scores: bool) -> String {
        let b = self.face_box;
        let mut values = format!(
            "{:.4},{:.4},{:.2},{:.2},{:.2},{:.2}",
            self.score, self.presence, b.x0, b.y0, b.x1, b.y1
        );
        match &self.pose {
            Some(p) => values.push_str(&format!(
                ",{:.2},{:.2},{:.2},{:.4}",
                p.yaw, p.pitch, p.roll, p.residual
            )),
            None => values.push_str(",,,,"),
        }
        for p in &self.landmarks {
            values.push_str(&format!(",{:.3},{:.3}", p[0], p[1]));
        }
        if scores {
            for s in &self.landmark_scores {
                values.push_str(&format!(",{s:.4}"));
            }
        }
        values
    }
}

/// Where a face's chip was written and how it maps to the image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChipRecord {
    /// Path relative to the output folder.
    pub file: String,
    #[serde(flatten)]
    pub chip: FaceChip,
}

/// A graph an output was made with: its file name (or built-in name), the SHA-256 of its
/// bytes, and the landmark scheme it predicts (detectors: none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphId {
    pub name: String,
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
}

/// The settings of a folder run that change its results. Two runs with equal settings produce
/// the same landmarks, so a rerun may keep the other's outputs; graphs compare by checksum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    pub model: GraphId,
    /// How faces were found: `detector`, `boxes` (a boxes file) or `crops` (each image one
    /// face).
    pub faces: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detector: Option<GraphId>,
    /// SHA-256 of the boxes file, with `faces = "boxes"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boxes_sha256: Option<String>,
    /// Smallest face searched for, in pixels (`None`: the detector's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_face: Option<f32>,
    /// Which faces got the second landmark pass ([`crate::SecondPass`]: `off`, `auto`,
    /// `always`); empty in records from before it had three settings.
    #[serde(default)]
    pub second_pass: String,
    /// Where the detector searched photos turned by quarter turns (`off`,
    /// `where-needed`, `always`); empty with given faces and in older records.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub roll_search: String,
    pub flip: bool,
    /// Detected faces below this presence were dropped.
    #[serde(default)]
    pub min_presence: f32,
    /// With `pipnet track`: the video and how faces were followed; `None` for `annotate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track: Option<TrackSettings>,
}

/// The settings of a `pipnet track` run beyond the pipeline's: its input and how faces were
/// followed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrackSettings {
    /// The video file or frame folder, as an absolute path.
    pub input: String,
    /// Frames per second: the video's, or `--fps` for a frame folder.
    pub fps: f64,
    pub detect_every: usize,
    pub max_missed: usize,
    /// The One Euro filter's `min_cutoff` (Hz) and `beta`; `None`: no smoothing.
    pub smoothing: Option<[f64; 2]>,
}

impl RunSettings {
    /// What differs between `self` (an earlier run's) and `other`, one phrase each, e.g.
    /// `flip: off before, on now`; empty when the results would be the same.
    pub fn differences(&self, other: &RunSettings) -> Vec<String> {
        let graph = |g: &GraphId| format!("{} (sha256 {:.12})", g.name, g.sha256);
        let same_graph = |a: &GraphId, b: &GraphId| a.sha256 == b.sha256 && a.scheme == b.scheme;
        let on_off = |b: bool| if b { "on" } else { "off" };
        let mut diffs = Vec::new();
        let mut differ = |what: &str, before: String, now: String| {
            diffs.push(format!("{what}: {before} before, {now} now"));
        };
        if !same_graph(&self.model, &other.model) {
            differ("model", graph(&self.model), graph(&other.model));
        }
        if self.faces != other.faces {
            differ("faces", self.faces.clone(), other.faces.clone());
        }
        let same_detector = match (&self.detector, &other.detector) {
            (Some(a), Some(b)) => same_graph(a, b),
            (a, b) => a == b,
        };
        if !same_detector {
            let name = |d: &Option<GraphId>| d.as_ref().map_or("none".into(), graph);
            differ("detector", name(&self.detector), name(&other.detector));
        }
        if self.boxes_sha256 != other.boxes_sha256 {
            differ(
                "boxes file",
                format!("{:?}", self.boxes_sha256),
                format!("{:?}", other.boxes_sha256),
            );
        }
        if self.min_face != other.min_face {
            let px = |m: Option<f32>| m.map_or("default".into(), |m| format!("{m} px"));
            differ("min face", px(self.min_face), px(other.min_face));
        }
        // Settings recorded as words; an empty one says what the record lacked.
        for (what, before, now, empty) in [
            (
                "second pass",
                &self.second_pass,
                &other.second_pass,
                "unrecorded",
            ),
            ("roll search", &self.roll_search, &other.roll_search, "none"),
        ] {
            if before != now {
                let word = |s: &str| if s.is_empty() { empty } else { s }.to_string();
                differ(what, word(before), word(now));
            }
        }
        if self.flip != other.flip {
            differ("flip", on_off(self.flip).into(), on_off(other.flip).into());
        }
        if self.min_presence != other.min_presence {
            differ(
                "min presence",
                self.min_presence.to_string(),
                other.min_presence.to_string(),
            );
        }
        if let (Some(a), Some(b)) = (&self.track, &other.track) {
            if a.input != b.input {
                differ("input", a.input.clone(), b.input.clone());
            }
            if a.fps != b.fps {
                differ("fps", a.fps.to_string(), b.fps.to_string());
            }
            if (a.detect_every, a.max_missed) != (b.detect_every, b.max_missed) {
                let both = |t: &TrackSettings| {
                    format!("every {}, max missed {}", t.detect_every, t.max_missed)
                };
                differ("detection", both(a), both(b));
            }
            if a.smoothing != b.smoothing {
                let filter = |s: Option<[f64; 2]>| {
                    s.map_or("off".into(), |[c, b]| format!("min cutoff {c}, beta {b}"))
                };
                differ("smoothing", filter(a.smoothing), filter(b.smoothing));
            }
        }
        diffs
    }
}

/// What made an output: the settings that decide its results, and pipnet's version (recorded,
/// not compared).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    pub pipnet: String,
    #[serde(flatten)]
    pub settings: RunSettings,
}

/// The JSON document `pipnet annotate` writes for one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageAnnotation {
    pub image: String,
    pub width: u32,
    pub height: u32,
    pub faces: Vec<FaceAnnotation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub made_by: Option<Provenance>,
}

impl ImageAnnotation {
    pub fn to_json(&self) -> String {
        // Serialising plain structs of numbers and strings cannot fail; NaN becomes null.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// One CSV row per face, faces numbered from 1: `image,face`, then [`csv_face_columns`]
    /// with landmark scores. The header names `points` landmarks whatever the face count, so
    /// every file of a run has the same columns.
    pub fn to_csv(&self, points: usize) -> String {
        let mut csv = format!("image,face,{}\n", csv_face_columns(points, true));
        // Quote the image name only when it needs it.
        let name = if self.image.contains([',', '"', '\n']) {
            format!("\"{}\"", self.image.replace('"', "\"\""))
        } else {
            self.image.clone()
        };
        for (k, face) in self.faces.iter().enumerate() {
            csv.push_str(&format!("{name},{},{}\n", k + 1, face.csv_values(true)));
        }
        csv
    }

    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::Parse {
            format: "annotation JSON",
            line: e.line(),
            detail: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A valid 68-point `.pts` file.
    fn pts_text() -> String {
        let points: Vec<Point> = (0..68).map(|i| [i as f32 + 0.5, 2.0 * i as f32]).collect();
        format_pts(&points)
    }

    /// `text` with random characters overwritten and the end cut off.
    fn mangled(text: String) -> impl Strategy<Value = String> {
        let len = text.len();
        (
            0..=len,
            prop::collection::vec((0..len.max(1), any::<char>()), 0..6),
        )
            .prop_map(move |(keep, edits)| {
                let mut chars: Vec<char> = text.chars().collect();
                for (at, c) in edits {
                    if let Some(slot) = chars.get_mut(at) {
                        *slot = c;
                    }
                }
                chars.truncate(keep);
                chars.into_iter().collect()
            })
    }

    fn wflw_text() -> String {
        let mut fields: Vec<String> = (0..196).map(|i| format!("{}.5", i % 90)).collect();
        fields.extend(["1", "2", "90", "95", "0", "1", "0", "0", "0", "1"].map(String::from));
        fields.push("dir/a.jpg".into());
        fields.join(" ")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// `.pts` text, random or a real file damaged: points or a parse error, never a panic.
        #[test]
        fn damaged_pts_files_parse_or_fail_cleanly(
            text in prop_oneof![".{0,200}", mangled(pts_text())],
        ) {
            match parse_pts(&text) {
                Ok(points) => prop_assert!(points.iter().flatten().all(|v| !v.is_nan())),
                Err(e) => prop_assert!(e.to_string().contains(".pts"), "{e}"),
            }
        }

        #[test]
        fn damaged_wflw_lines_parse_or_fail_cleanly(
            line in prop_oneof![".{0,200}", mangled(wflw_text())],
        ) {
            if let Err(e) = parse_wflw_line(&line, 3) {
                prop_assert!(e.to_string().contains("line 3"), "{e}");
            }
        }
    }

    #[test]
    fn test_csv_has_a_row_per_face_and_quotes_odd_names() {
        let face = |x: f32| FaceAnnotation {
            face_box: FaceBox::from([x, 1.0, x + 10.0, 11.0]),
            score: 0.9,
            landmarks: vec![[x, 2.0], [x + 1.0, 3.0]],
            landmark_scores: vec![1.0, 0.5],
            presence: 0.75,
            five_points: None,
            pose: None,
            chip: None,
        };
        let a = ImageAnnotation {
            image: "a,b.jpg".into(),
            width: 20,
            height: 20,
            faces: vec![
                face(0.0),
                FaceAnnotation {
                    pose: Some(HeadPose {
                        yaw: 10.0,
                        pitch: -5.0,
                        roll: 2.5,
                        rotation: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
                        translation: [8.0, 6.0],
                        scale: 4.0,
                        residual: 0.04,
                    }),
                    ..face(5.0)
                },
            ],
            made_by: None,
        };
        let csv = a.to_csv(2);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].ends_with(",box_y1,yaw,pitch,roll,pose_residual,x0,y0,x1,y1,s0,s1"),
            "{}",
            lines[0]
        );
        // Without a pose its columns are empty.
        assert!(lines[1].contains(",10.00,11.00,,,,,0.000,"), "{}", lines[1]);
        assert_eq!(
            lines[2],
            "\"a,b.jpg\",2,0.9000,0.7500,5.00,1.00,15.00,11.00,10.00,-5.00,2.50,0.0400,5.000,2.000,\
             6.000,3.000,1.0000,0.5000"
        );
        // No faces: the same header, no rows.
        let empty = ImageAnnotation {
            faces: Vec::new(),
            ..a
        };
        assert_eq!(empty.to_csv(2), format!("{}\n", lines[0]));
    }

    fn settings() -> RunSettings {
        RunSettings {
            model: GraphId {
                name: "m.onnx".into(),
                sha256: "ab".repeat(32),
                scheme: Some("300w-68".into()),
            },
            faces: "detector".into(),
            detector: None,
            boxes_sha256: None,
            min_face: None,
            second_pass: "always".into(),
            roll_search: "where-needed".into(),
            flip: false,
            min_presence: 0.3,
            track: None,
        }
    }

    #[test]
    fn test_run_settings_differences_name_what_changed() {
        let before = settings();
        let mut renamed = before.clone();
        renamed.model.name = "copy.onnx".into();
        assert!(before.differences(&renamed).is_empty(), "same bytes");
        let mut now = before.clone();
        now.flip = true;
        now.model.sha256 = "cd".repeat(32);
        now.min_face = Some(80.0);
        let diffs = before.differences(&now);
        assert_eq!(diffs.len(), 3, "{diffs:?}");
        assert!(
            diffs.iter().any(|d| d == "flip: off before, on now"),
            "{diffs:?}"
        );
        assert!(
            diffs.iter().any(|d| d.starts_with("model: m.onnx")),
            "{diffs:?}"
        );
        assert!(
            diffs
                .iter()
                .any(|d| d == "min face: default before, 80 px now"),
            "{diffs:?}"
        );
    }

    #[test]
    fn test_pts_round_trip() {
        let points = vec![[1.5, 2.25], [300.125, 4.0], [0.0, 0.5]];
        let text = format_pts(&points);
        assert!(text.starts_with("version: 1\nn_points: 3\n{\n"));
        assert_eq!(parse_pts(&text).unwrap(), points);
    }

    #[test]
    fn test_pts_errors_name_the_line() {
        let cases = [
            ("version: 1\nn_points: 2\n{\n1 2\n}\n", 5, "1 points"),
            (
                "version: 1\nn_points: 1\n{\n1 x\n}\n",
                4,
                "two finite numbers",
            ),
            ("version: 1\nn_points: 1\n{\n1 2\n", 4, "closing"),
            ("version: 1\n{\n1 2\n}\n", 1, "n_points"),
            ("garbage\n", 1, "header"),
        ];
        for (text, line, needle) in cases {
            match parse_pts(text) {
                Err(Error::Parse {
                    line: got, detail, ..
                }) => {
                    assert_eq!(got, line, "{text:?}: {detail}");
                    assert!(detail.contains(needle), "{detail}");
                }
                other => panic!("{text:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn test_wflw_line_parses_points_box_attributes_and_path() {
        let mut fields: Vec<String> = (0..196).map(|i| format!("{}.5", i)).collect();
        fields.extend(["10", "20", "110", "120"].map(String::from));
        fields.extend(["0", "1", "0", "0", "1", "0"].map(String::from));
        fields.push("51--Dresses/img.jpg".into());
        let record = parse_wflw_line(&fields.join(" "), 7).unwrap();
        assert_eq!(record.points.len(), 98);
        assert_eq!(record.points[1], [2.5, 3.5]);
        assert_eq!(record.face_box, FaceBox::from([10.0, 20.0, 110.0, 120.0]));
        assert_eq!(record.attributes, [0, 1, 0, 0, 1, 0]);
        assert_eq!(record.image, "51--Dresses/img.jpg");
        fields.pop();
        assert!(parse_wflw_line(&fields.join(" "), 7).is_err());
    }

    #[test]
    fn test_annotation_json_matches_the_documented_schema() {
        let annotation = ImageAnnotation {
            image: "a.jpg".into(),
            width: 640,
            height: 480,
            faces: vec![FaceAnnotation {
                face_box: FaceBox::from([1.0, 2.0, 3.0, 4.0]),
                score: 0.5,
                landmarks: vec![[1.0, 2.0]],
                landmark_scores: vec![0.25],
                presence: 0.25,
                five_points: None,
                pose: None,
                chip: None,
            }],
            made_by: Some(Provenance {
                pipnet: "0.1.0".into(),
                settings: settings(),
            }),
        };
        let value: serde_json::Value = serde_json::from_str(&annotation.to_json()).unwrap();
        assert_eq!(
            value["faces"][0]["box"],
            serde_json::json!([1.0, 2.0, 3.0, 4.0])
        );
        assert_eq!(
            value["faces"][0]["landmarks"][0],
            serde_json::json!([1.0, 2.0])
        );
        assert_eq!(value["width"], 640);
        assert_eq!(value["made_by"]["model"]["scheme"], "300w-68");
        assert_eq!(value["made_by"]["flip"], false);
        assert_eq!(
            ImageAnnotation::from_json(&annotation.to_json()).unwrap(),
            annotation
        );
    }
}
