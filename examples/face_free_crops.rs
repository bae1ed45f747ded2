//! Face-free crops for measuring false detections (the face-presence threshold of
//! `docs/experiments.md`): from each labeled photo, the largest strip beside the face that stays
//! clear of its landmark box grown by a fifth on every side, when at least 48 x 48 pixels.
//!
//! `cargo run --release --example face_free_crops -- LABELED_DIR OUT_DIR`

use std::path::PathBuf;

use pipnet::core::FaceBox;
use pipnet::infer::image_io::{DEFAULT_MAX_PIXELS, load_rgb};
use pipnet::infer::labeled::read_pts_folder;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    let [data, out] = args.as_slice() else {
        return Err("usage: face_free_crops LABELED_DIR OUT_DIR".into());
    };
    std::fs::create_dir_all(out)?;
    let (mut written, mut faces) = (0, 0);
    for face in read_pts_folder(data)? {
        faces += 1;
        let image = load_rgb(&face.image, DEFAULT_MAX_PIXELS)?;
        let (w, h) = (image.width() as f32, image.height() as f32);
        let b = FaceBox::around(&face.points)?;
        let grow = 0.2 * b.width().max(b.height());
        let (x0, y0) = ((b.x0 - grow).max(0.0), (b.y0 - grow).max(0.0));
        let (x1, y1) = ((b.x1 + grow).min(w), (b.y1 + grow).min(h));
        // Above, below, left of and right of the grown box: [x, y, width, height].
        let strips = [
            [0.0, 0.0, w, y0],
            [0.0, y1, w, h - y1],
            [0.0, 0.0, x0, h],
            [x1, 0.0, w - x1, h],
        ];
        let best = strips
            .into_iter()
            .filter(|s| s[2] >= 48.0 && s[3] >= 48.0)
            .max_by(|a, b| (a[2] * a[3]).total_cmp(&(b[2] * b[3])));
        if let Some([x, y, sw, sh]) = best {
            let strip = image::imageops::crop_imm(&image, x as u32, y as u32, sw as u32, sh as u32);
            strip
                .to_image()
                .save(out.join(format!("{}.png", face.name)))?;
            written += 1;
        }
    }
    println!(
        "{written} face-free crops from {faces} labeled faces in {}",
        out.display()
    );
    Ok(())
}
