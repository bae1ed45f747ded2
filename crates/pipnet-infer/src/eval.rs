//! Accuracy on labeled faces: crop each face from its true landmark box with the model's own
//! crop rule (the 300-W protocol), run the model, and score with the scheme's NME.

use pipnet_core::metrics::{Summary, nme};
use pipnet_core::{FaceBox, Point};

use crate::error::{Error, Result};
use crate::image_io::load_rgb;
use crate::labeled::LabeledFace;
use crate::model::LandmarkModel;

/// One evaluated face.
#[derive(Debug, Clone, PartialEq)]
pub struct FaceResult {
    pub name: String,
    pub nme: f32,
    pub predicted: Vec<Point>,
}

/// Runs `model` on every face and returns per-face results and the summary at `threshold`
/// (0.1 for FR@0.1 and AUC@0.1).
pub fn evaluate(
    model: &mut LandmarkModel,
    faces: &[LabeledFace],
    threshold: f32,
    max_pixels: u64,
) -> Result<(Vec<FaceResult>, Summary)> {
    let meta = model.metadata().clone();
    let mut results = Vec::with_capacity(faces.len());
    for chunk in faces.chunks(model.batch_size()) {
        let images = chunk
            .iter()
            .map(|f| load_rgb(&f.image, max_pixels))
            .collect::<Result<Vec<_>>>()?;
        let crops = chunk
            .iter()
            .map(|f| {
                FaceBox::around(&f.points)
                    .map(|b| meta.crop.crop(&b))
                    .map_err(|e| Error::InvalidInput(format!("{}: {e}", f.name)))
            })
            .collect::<Result<Vec<_>>>()?;
        let pairs: Vec<_> = images.iter().zip(crops).collect();
        for (face, found) in chunk.iter().zip(model.landmarks(&pairs)?) {
            let error = nme(&found.in_image, &face.points, meta.scheme)
                .map_err(|e| Error::InvalidInput(format!("{}: {e}", face.name)))?;
            results.push(FaceResult {
                name: face.name.clone(),
                nme: error,
                predicted: found.in_image,
            });
        }
    }
    let nmes: Vec<f32> = results.iter().map(|r| r.nme).collect();
    Ok((results, Summary::new(&nmes, threshold)))
}
