//! `pipnet annotate`: folders of real and broken photos, reruns and resumes, shards, outputs.

use super::*;

/// EXIF block (big-endian TIFF) holding only Orientation = 6: "rotate 90 degrees clockwise".
fn exif_rotate_90() -> Vec<u8> {
    vec![
        0x4D, 0x4D, 0x00, 0x2A, 0x00, 0x00, 0x00, 0x08, // header, IFD at 8
        0x00, 0x01, // one entry
        0x01, 0x12, 0x00, 0x03, 0x00, 0x00, 0x00, 0x01, 0x00, 0x06, 0x00, 0x00, // orientation
        0x00, 0x00, 0x00, 0x00, // no next IFD
    ]
}

/// A folder mixing good photos with every kind of bad and awkward input.
fn mixed_folder(root: &Path) -> (Vec<&'static str>, Vec<&'static str>) {
    let photos = real_photos();
    std::fs::create_dir_all(root.join("nested/deeper")).unwrap();
    std::fs::copy(&photos[0], root.join("photo_a.jpg")).unwrap();
    std::fs::copy(&photos[1], root.join("nested/deeper/photo_b.jpg")).unwrap();

    let photo = image::open(&photos[2]).unwrap();
    photo.to_luma8().save(root.join("gray.png")).unwrap();
    let wide: ImageBuffer<Rgb<u16>, Vec<u16>> = photo.to_rgb16();
    wide.save(root.join("sixteen_bit.png")).unwrap();
    ImageBuffer::<Rgba<u8>, _>::from_pixel(50, 40, Rgba([200, 100, 50, 128]))
        .save(root.join("rgba.png"))
        .unwrap();
    ImageBuffer::<Luma<u16>, _>::from_pixel(30, 30, Luma([40000u16]))
        .save(root.join("gray16.png"))
        .unwrap();

    // Stored as 60x30 landscape pixels with "rotate 90": upright it is 30 wide, 60 high.
    let upright = RgbImage::from_fn(30, 60, |_, y| Rgb([(y * 4) as u8, 90, 40]));
    std::fs::write(root.join("exif_rotated.jpg"), exif_rotated_jpeg(&upright)).unwrap();

    let bad = bad_files(root, &photos[0]);

    let good = vec![
        "photo_a.jpg",
        "nested/deeper/photo_b.jpg",
        "gray.png",
        "sixteen_bit.png",
        "rgba.png",
        "gray16.png",
        "exif_rotated.jpg",
    ];
    (good, bad)
}

/// A corrupt and a truncated JPEG and a truncated PNG made from the real photo `photo`, a
/// text file named `.jpg`, and a text file that is not an image by its name (ignored). Returns
/// the bad names.
fn bad_files(root: &Path, photo: &Path) -> Vec<&'static str> {
    let real = std::fs::read(photo).unwrap();
    let mut corrupt = real.clone();
    // Headers overwritten right after the start-of-image marker.
    for b in corrupt.iter_mut().skip(2).take(400) {
        *b = 0xFF;
    }
    corrupt.truncate(real.len() / 3);
    std::fs::write(root.join("corrupt.jpg"), &corrupt).unwrap();
    // Headers intact, cut inside the image data: decoders would fill the rest with grey.
    std::fs::write(root.join("truncated.jpg"), &real[..real.len() * 2 / 3]).unwrap();
    let mut png = Vec::new();
    image::open(photo)
        .unwrap()
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    std::fs::write(root.join("truncated.png"), &png[..png.len() / 2]).unwrap();
    std::fs::write(root.join("notes.jpg"), "this is a text file, not a JPEG\n").unwrap();
    std::fs::write(root.join("readme.txt"), "ignored: not an image extension\n").unwrap();
    vec!["corrupt.jpg", "truncated.jpg", "truncated.png", "notes.jpg"]
}

/// A JPEG of `upright` stored turned a quarter with EXIF Orientation 6, so that applying the
/// orientation gives back `upright`.
fn exif_rotated_jpeg(upright: &RgbImage) -> Vec<u8> {
    let stored = image::imageops::rotate270(upright);
    let mut jpeg = Vec::new();
    let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 92);
    encoder.set_exif_metadata(exif_rotate_90()).unwrap();
    encoder
        .write_image(
            stored.as_raw(),
            stored.width(),
            stored.height(),
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    jpeg
}

#[test]
fn test_annotate_crops_folder_annotates_good_lists_bad_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::seeded_model(tmp.path(), tiny_spec());
    let input = tmp.path().join("photos");
    let out = tmp.path().join("out");
    let (good, bad) = mixed_folder(&input);
    let args = |extra: &[&'static str]| {
        let mut a = vec![
            "annotate".to_string(),
            input.display().to_string(),
            "--model".into(),
            model.display().to_string(),
            "--out".into(),
            out.display().to_string(),
            "--crops".into(),
            "--batch".into(),
            "3".into(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = |extra: &[&'static str]| {
        let a = args(extra);
        run_pipnet(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };

    let (code, _, stderr) = run(&[]);
    assert_eq!(code, 1, "some images failed, so exit 1: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for name in &good {
        let a = read_annotation(&out, name);
        assert_eq!(a.image, *name);
        assert_eq!(a.faces.len(), 1);
        assert_eq!(a.faces[0].landmarks.len(), 68);
        assert!(a.faces[0].landmarks.iter().flatten().all(|v| v.is_finite()));
    }
    let rotated = read_annotation(&out, "exif_rotated.jpg");
    assert_eq!(
        (rotated.width, rotated.height),
        (30, 60),
        "EXIF orientation applied"
    );
    let failures = std::fs::read_to_string(out.join("failures.jsonl")).unwrap();
    assert_eq!(failures.lines().count(), bad.len(), "{failures}");
    for name in &bad {
        assert!(
            failures.contains(&format!("\"image\":\"{name}\"")),
            "{name} in {failures}"
        );
        assert!(!out.join(format!("{name}.json")).exists());
    }
    assert!(!out.join("readme.txt.json").exists());
    assert!(
        stderr.contains("11 images: 7 annotated (7 faces), 0 already done, 4 failed"),
        "{stderr}"
    );

    // A second run skips finished work but still reports the bad files.
    let before = std::fs::metadata(out.join("photo_a.jpg.json"))
        .unwrap()
        .modified()
        .unwrap();
    let (code, _, stderr) = run(&[]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("0 annotated (0 faces), 7 already done, 4 failed"),
        "{stderr}"
    );
    let after = std::fs::metadata(out.join("photo_a.jpg.json"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after);

    // --force redoes everything, with the same results (deterministic).
    let first = read_annotation(&out, "gray.png");
    let (_, _, stderr) = run(&["--force"]);
    assert!(stderr.contains("7 annotated"), "{stderr}");
    assert_eq!(read_annotation(&out, "gray.png"), first);

    // Only complete JSON files in the output: no temporaries left behind.
    for entry in walk(&out) {
        let name = entry.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.ends_with(".json") || name == "failures.jsonl",
            "stray file {name}"
        );
    }
}

#[test]
fn test_max_pixels_guard_reports_the_file_and_the_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::seeded_model(tmp.path(), tiny_spec());
    let image = tmp.path().join("big.png");
    RgbImage::from_pixel(100, 100, Rgb([1, 2, 3]))
        .save(&image)
        .unwrap();
    let out = tmp.path().join("out");
    let (code, _, stderr) = run_pipnet(&[
        "annotate",
        image.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--crops",
        "--max-pixels",
        "5000",
    ]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("100x100 = 10000 pixels is over the limit of 5000"),
        "{stderr}"
    );
}

fn faces_boxes(a: &ImageAnnotation) -> Vec<pipnet_core::detection::Detection> {
    a.faces
        .iter()
        .map(|f| pipnet_core::detection::Detection {
            face_box: f.face_box,
            score: f.score,
            keypoints: Default::default(),
        })
        .collect()
}

#[test]
fn test_annotate_sample_photos_with_detector_lists_bad_files_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("photos");
    let out = tmp.path().join("out");
    std::fs::create_dir_all(input.join("more")).unwrap();
    let samples = common::sample_face_boxes();
    for (file, _) in &samples {
        std::fs::copy(common::sample_photos().join(file), input.join(file)).unwrap();
    }
    // A grayscale and an EXIF-rotated copy of the six-face photo, in a subfolder.
    let group = common::sample_photos().join("2008_002470.jpg");
    let upright = image::open(&group).unwrap().to_rgb8();
    image::DynamicImage::ImageRgb8(upright.clone())
        .to_luma8()
        .save(input.join("more/gray.png"))
        .unwrap();
    std::fs::write(input.join("more/rotated.jpg"), exif_rotated_jpeg(&upright)).unwrap();
    let bad = bad_files(&input, &group);

    let model = common::shipped_model();
    let args = [
        "annotate",
        input.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--preview",
    ];
    let (code, _, stderr) = run_pipnet(&args);
    assert_eq!(code, 1, "some images failed, so exit 1: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("15 images: 11 annotated"), "{stderr}");

    // Every hand-drawn face of the sample photos is found (dlib's boxes, IoU > 0.3), with 68
    // landmarks inside the image, and a preview of the photo's size.
    let (mut matched, mut total, mut extra) = (0, 0, 0);
    for (file, boxes) in &samples {
        let a = read_annotation(&out, file);
        let (m, t, e) = common::match_boxes(&faces_boxes(&a), boxes);
        (matched, total, extra) = (matched + m, total + t, extra + e);
        for face in &a.faces {
            assert_eq!(face.landmarks.len(), 68);
            assert!(face.score > 0.5 && face.score <= 1.0);
            for p in &face.landmarks {
                assert!(p[0] > -5.0 && p[0] < a.width as f32 + 5.0, "{file}: {p:?}");
                assert!(p[1] > -5.0 && p[1] < a.height as f32 + 5.0, "{file}: {p:?}");
            }
            // The landmarks lie on the detected face: their centre is inside its box.
            let n = face.landmarks.len() as f32;
            let cx = face.landmarks.iter().map(|p| p[0]).sum::<f32>() / n;
            let cy = face.landmarks.iter().map(|p| p[1]).sum::<f32>() / n;
            let b = face.face_box;
            assert!(cx > b.x0 && cx < b.x1 && cy > b.y0 && cy < b.y1, "{file}");
        }
        let preview = image::open(out.join("preview").join(file)).unwrap();
        assert_eq!((preview.width(), preview.height()), (a.width, a.height));
    }
    assert_eq!(total, 43);
    assert!(matched >= 41, "recall {matched}/{total}");
    assert!(
        extra <= 3,
        "{extra} faces found where dlib's boxes have none"
    );

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("2008_002470.jpg.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o644,
            0o644,
            "outputs are readable by others: {mode:o}"
        );
    }

    // Grayscale and EXIF-rotated copies: same size as the upright photo, same faces.
    let original = read_annotation(&out, "2008_002470.jpg");
    for name in ["more/gray.png", "more/rotated.jpg"] {
        let a = read_annotation(&out, name);
        assert_eq!(
            (a.width, a.height),
            (original.width, original.height),
            "{name}"
        );
        let (m, _, e) = common::match_boxes(
            &faces_boxes(&a),
            &original
                .faces
                .iter()
                .map(|f| f.face_box.into())
                .collect::<Vec<_>>(),
        );
        assert!(
            m + 1 >= original.faces.len() && e <= 1,
            "{name}: {m} of {}",
            original.faces.len()
        );
    }
    assert!(out.join("preview/more/gray.png.jpg").is_file());

    let failures = std::fs::read_to_string(out.join("failures.jsonl")).unwrap();
    assert_eq!(failures.lines().count(), bad.len(), "{failures}");
    for name in &bad {
        assert!(
            failures.contains(&format!("\"image\":\"{name}\"")),
            "{failures}"
        );
    }

    // A second run does nothing new.
    let (code, _, stderr) = run_pipnet(&args);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("0 annotated (0 faces), 11 already done, 4 failed"),
        "{stderr}"
    );
}

/// The image outputs of a run so far: each `.json` file under `out` (not the run record) with
/// its modification time.
fn outputs_with_times(out: &Path) -> std::collections::BTreeMap<PathBuf, std::time::SystemTime> {
    if !out.exists() {
        return Default::default();
    }
    walk(out)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "json") && !p.ends_with(RUN_RECORD))
        .map(|p| {
            let modified = std::fs::metadata(&p).unwrap().modified().unwrap();
            (p, modified)
        })
        .collect()
}

#[test]
fn test_kill_9_soak_every_image_once_nothing_redone_no_temporaries() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("faces");
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&input).unwrap();
    let photos = face_photos(240);
    for (i, photo) in photos.iter().enumerate() {
        std::fs::copy(photo, input.join(format!("face_{i:03}.jpg"))).unwrap();
    }
    let args = [
        "annotate",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--crops",
        "--batch",
        "4",
        "--threads",
        "1",
    ];
    // Kill -9 at a random moment after a random amount of new work, five times; every output
    // that existed before a restart must come through it untouched.
    let mut kept = std::collections::BTreeMap::new();
    let mut kills = 0;
    for _ in 0..5 {
        let before = outputs_with_times(&out);
        for (path, modified) in &before {
            if let Some(earlier) = kept.get(path) {
                assert_eq!(earlier, modified, "{} was redone", path.display());
            }
        }
        kept = before;
        let target = kept.len() + rand::random_range(1..30);
        let mut child = Command::new(pipnet_bin()).args(args).spawn().unwrap();
        let start = std::time::Instant::now();
        while outputs_with_times(&out).len() < target && start.elapsed().as_secs() < 120 {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(rand::random_range(1..40)));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
    }
    assert!(
        kills >= 3,
        "only {kills} kills landed before the run finished"
    );
    let before = outputs_with_times(&out);
    assert!(before.len() < photos.len(), "the kills left work to do");

    let (code, _, stderr) = run_pipnet(&args);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains(&format!("{} already done", before.len())),
        "{stderr}"
    );
    let after = outputs_with_times(&out);
    for (path, modified) in &before {
        assert_eq!(after.get(path), Some(modified), "{} redone", path.display());
    }
    // Exactly one complete, parseable output per image, and nothing else left behind.
    assert_eq!(after.len(), photos.len());
    for i in 0..photos.len() {
        let annotation = read_annotation(&out, &format!("face_{i:03}.jpg"));
        assert_eq!(annotation.faces.len(), 1);
        assert_eq!(annotation.faces[0].landmarks.len(), 68);
    }
    for path in walk(&out) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.ends_with(".json") || name == "failures.jsonl",
            "stray file {name}"
        );
    }
}

#[test]
fn test_shards_cover_the_folder_once_and_agree_with_an_unsharded_run() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("faces");
    std::fs::create_dir_all(input.join("sub")).unwrap();
    let photos = face_photos(14);
    let mut names = Vec::new();
    for (i, photo) in photos.iter().enumerate() {
        let name = if i % 2 == 0 {
            format!("face_{i:02}.jpg")
        } else {
            format!("sub/face_{i:02}.jpg")
        };
        std::fs::copy(photo, input.join(&name)).unwrap();
        names.push(name);
    }
    let run = |out: &Path, extra: &[&str], env: &[(&str, &str)]| {
        let output = Command::new(pipnet_bin())
            .args(["annotate", input.to_str().unwrap(), "--crops", "--out"])
            .arg(out)
            .args(extra)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(0), "{stderr}");
        stderr
    };
    // No --model: the built-in model.
    let whole = tmp.path().join("whole");
    run(&whole, &[], &[]);
    let sharded = tmp.path().join("sharded");
    let mut counts = Vec::new();
    for k in 0..3 {
        let shard = format!("{k}/3");
        let stderr = if k == 2 {
            // The same shard as a Slurm array task would see it (`--array=1-3`).
            let id = (k + 1).to_string();
            run(
                &sharded,
                &[],
                &[
                    ("SLURM_ARRAY_TASK_ID", id.as_str()),
                    ("SLURM_ARRAY_TASK_COUNT", "3"),
                    ("SLURM_ARRAY_TASK_MIN", "1"),
                ],
            )
        } else {
            run(&sharded, &["--shard", &shard], &[])
        };
        assert!(stderr.contains(&format!("shard {shard}")), "{stderr}");
        let annotated: usize = stderr
            .split(" images:")
            .next()
            .and_then(|s| s.rsplit(['\n', ' ']).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no image count in {stderr}"));
        counts.push(annotated);
        assert!(sharded.join(format!("failures-{k}-of-3.jsonl")).is_file());
    }
    assert_eq!(counts.iter().sum::<usize>(), names.len(), "{counts:?}");
    assert!(!sharded.join("failures.jsonl").exists());
    for name in &names {
        let (a, b) = (
            read_annotation(&whole, name),
            read_annotation(&sharded, name),
        );
        for (p, q) in a.faces[0].landmarks.iter().zip(&b.faces[0].landmarks) {
            assert!(
                (p[0] - q[0]).abs() < 1e-3 && (p[1] - q[1]).abs() < 1e-3,
                "{name}"
            );
        }
    }
    let json_count = walk(&sharded)
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .count();
    assert_eq!(
        json_count,
        names.len() + 1,
        "one per image and the run record"
    );
    assert!(sharded.join(RUN_RECORD).is_file());
}

#[cfg(unix)]
#[test]
fn test_walk_errors_and_bad_boxes_are_failures_and_the_run_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("photos");
    std::fs::create_dir_all(input.join("sub")).unwrap();
    let samples = common::sample_face_boxes();
    let (file, faces) = &samples[0];
    for name in ["good.jpg", "inverted.jpg", "outside.jpg", "huge.jpg"] {
        std::fs::copy(common::sample_photos().join(file), input.join(name)).unwrap();
    }
    std::os::unix::fs::symlink(&input, input.join("sub/loop")).unwrap();
    std::os::unix::fs::symlink(input.join("gone.jpg"), input.join("broken.jpg")).unwrap();
    let boxes = serde_json::json!({
        "good.jpg": faces,
        "inverted.jpg": [[100.0, 100.0, 50.0, 150.0]],
        "outside.jpg": [[5000.0, 5000.0, 5100.0, 5100.0]],
        // 1e39 is beyond f32: it reads as infinity.
        "huge.jpg": [[0.0, 0.0, 1e39, 100.0]],
        "typo.jpg": [[0.0, 0.0, 10.0, 10.0]],
    });
    let boxes_file = tmp.path().join("boxes.json");
    std::fs::write(&boxes_file, boxes.to_string()).unwrap();
    let out = tmp.path().join("out");
    let (code, _, stderr) = run_pipnet(&[
        "annotate",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--boxes",
        boxes_file.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("1 annotated ({} faces)", faces.len())),
        "{stderr}"
    );
    let failures = std::fs::read_to_string(out.join("failures.jsonl")).unwrap();
    for (image, reason) in [
        ("inverted.jpg", "x0 < x1"),
        ("outside.jpg", "lies outside the"),
        ("huge.jpg", "finite"),
        ("typo.jpg", "no input holds it"),
        ("sub/loop", "symbolic link loop"),
        ("broken.jpg", "broken symbolic link"),
    ] {
        let line = failures
            .lines()
            .find(|l| l.contains(&format!("\"image\":\"{image}\"")))
            .unwrap_or_else(|| panic!("no failure for {image}: {failures}"));
        assert!(line.contains(reason), "{line}");
        // Printed once, not once per cause.
        assert_eq!(stderr.matches(reason).count(), 1, "{stderr}");
    }
    assert_eq!(failures.lines().count(), 6, "{failures}");
}

#[test]
fn test_boxes_file_and_csv_and_pts_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("photos");
    std::fs::create_dir_all(&input).unwrap();
    let samples = common::sample_face_boxes();
    let mut boxes = serde_json::Map::new();
    for (file, faces) in samples.iter().take(2) {
        std::fs::copy(common::sample_photos().join(file), input.join(file)).unwrap();
        boxes.insert(file.clone(), serde_json::json!(faces));
    }
    // In the folder but not in the boxes file: a failure that says so.
    std::fs::copy(
        common::sample_photos().join(&samples[2].0),
        input.join("unlisted.jpg"),
    )
    .unwrap();
    let boxes_file = tmp.path().join("boxes.json");
    std::fs::write(&boxes_file, serde_json::Value::Object(boxes).to_string()).unwrap();
    let expected_faces: usize = samples.iter().take(2).map(|(_, b)| b.len()).sum();

    for format in ["csv", "pts"] {
        let out = tmp.path().join(format);
        let (code, _, stderr) = run_pipnet(&[
            "annotate",
            input.to_str().unwrap(),
            "--model",
            common::shipped_model().to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--boxes",
            boxes_file.to_str().unwrap(),
            "--format",
            format,
        ]);
        assert_eq!(code, 1, "{stderr}");
        assert!(
            stderr.contains(&format!("2 annotated ({expected_faces} faces)")),
            "{stderr}"
        );
        assert!(
            stderr.contains("unlisted.jpg: invalid input: no entry"),
            "{stderr}"
        );
        for (file, faces) in samples.iter().take(2) {
            let stem = file.trim_end_matches(".jpg");
            if format == "csv" {
                let csv = std::fs::read_to_string(out.join(format!("{file}.csv"))).unwrap();
                let rows: Vec<&str> = csv.lines().collect();
                assert_eq!(rows.len(), faces.len() + 1, "{csv}");
                // image, face, score, presence, the box, the pose; x and y, then the score,
                // per point.
                assert_eq!(rows[1].split(',').count(), 12 + 3 * 68);
                let header: Vec<&str> = rows[0].split(',').collect();
                let row: Vec<&str> = rows[1].split(',').collect();
                let yaw = header.iter().position(|c| *c == "yaw").unwrap();
                let residual: f32 = row[header.iter().position(|c| *c == "pose_residual").unwrap()]
                    .parse()
                    .unwrap();
                assert!(row[yaw].parse::<f32>().unwrap().abs() < 90.0 && residual < 0.2);
                assert_eq!(rows[0].split(',').count(), rows[1].split(',').count());
            } else {
                for k in 1..=faces.len() {
                    let path = out.join(format!("{stem}_{k}.pts"));
                    let text = std::fs::read_to_string(&path).unwrap();
                    let points = pipnet_core::formats::parse_pts(&text).unwrap();
                    assert_eq!(points.len(), 68);
                }
                assert!(!out.join(format!("{stem}_{}.pts", faces.len() + 1)).exists());
            }
        }
    }
}

#[test]
fn test_an_output_folder_inside_the_input_is_never_annotated() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::seeded_model(tmp.path(), tiny_spec());
    let nest = tmp.path().join("nest");
    photo_copies(&nest, &["a.jpg"]);
    // An older run's output folder inside the input: skipped too.
    photo_copies(&nest, &["old/a.jpg"]);
    std::fs::write(nest.join("old").join(RUN_RECORD), "{}").unwrap();
    let out = nest.join("out");
    for round in 0..3 {
        let (code, stderr) = annotate_crops(&model, &[&nest], &out, &["--preview"]);
        assert_eq!(code, 0, "{stderr}");
        let done = if round == 0 {
            "1 annotated"
        } else {
            "0 annotated"
        };
        assert!(
            stderr.contains(&format!("1 image: {done}")),
            "round {round}: {stderr}"
        );
        assert!(
            stderr.contains("skipped") && stderr.contains("old"),
            "{stderr}"
        );
    }
    assert!(out.join("preview/a.jpg").is_file());
    assert!(
        !out.join("preview/out").exists(),
        "previews were walked as photos"
    );
    assert!(!out.join("old").exists());
    // Naming the output folder itself as input is refused, not walked.
    let (code, stderr) = annotate_crops(&model, &[&out], &tmp.path().join("o2"), &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("holds the outputs of a pipnet run"),
        "{stderr}"
    );
}

#[test]
fn test_inputs_that_would_write_one_output_are_refused_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::seeded_model(tmp.path(), tiny_spec());
    let (d1, d2) = (tmp.path().join("d1"), tmp.path().join("d2"));
    photo_copies(&d1, &["a.jpg", "a.png"]);
    photo_copies(&d2, &["a.jpg"]);
    let out = tmp.path().join("out");
    let (code, stderr) = annotate_crops(&model, &[&d1, &d2], &out, &[]);
    assert_eq!(code, 2, "{stderr}");
    let (a1, a2) = (d1.join("a.jpg"), d2.join("a.jpg"));
    assert!(
        stderr.contains(a1.to_str().unwrap()) && stderr.contains(a2.to_str().unwrap()),
        "names both: {stderr}"
    );
    assert!(!out.join("a.jpg.json").exists(), "nothing written");
    // The same folder twice is each file once.
    let (code, stderr) = annotate_crops(&model, &[&d1, &d1], &out, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("2 images: 2 annotated"), "{stderr}");
    // .pts files are named by stem: a.jpg and a.png would share a_1.pts.
    let (code, stderr) = annotate_crops(
        &model,
        &[&d1],
        &tmp.path().join("pts"),
        &["--format", "pts"],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("a.png") && stderr.contains("a_"),
        "{stderr}"
    );
}

#[test]
fn test_a_rerun_with_other_settings_stops_and_force_redoes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::seeded_model(tmp.path(), tiny_spec());
    let photos = tmp.path().join("photos");
    photo_copies(&photos, &["a.jpg", "b.jpg"]);
    let out = tmp.path().join("out");
    let (code, stderr) = annotate_crops(&model, &[&photos], &out, &[]);
    assert_eq!(code, 0, "{stderr}");
    let first = read_annotation(&out, "a.jpg");
    let made_by = first.made_by.clone().expect("outputs say what made them");
    assert_eq!(made_by.settings.model.name, "seeded.onnx");
    assert_eq!(made_by.settings.model.sha256.len(), 64);
    assert_eq!(made_by.settings.faces, "crops");
    assert!(!made_by.settings.flip);
    assert_eq!(
        made_by.settings.second_pass, "auto",
        "a second pass where it pays by default"
    );

    // Another option: refused, naming it; nothing rewritten.
    let (code, stderr) = annotate_crops(&model, &[&photos], &out, &["--flip"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("flip: off before, on now") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(read_annotation(&out, "a.jpg"), first);
    // Another model (other bytes): refused too.
    let other_model = tmp.path().join("other.onnx");
    pipnet_train::seeded::write_seeded_model(&other_model, tiny_spec(), 12).unwrap();
    let (code, stderr) = annotate_crops(&other_model, &[&photos], &out, &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("model: seeded.onnx"), "{stderr}");

    // --force redoes every image with the new settings, and records them.
    let (code, stderr) = annotate_crops(&model, &[&photos], &out, &["--flip", "--force"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("2 annotated"), "{stderr}");
    assert!(
        read_annotation(&out, "a.jpg")
            .made_by
            .unwrap()
            .settings
            .flip
    );
    // Same settings plus previews: the previews are made, not "already done".
    let (code, stderr) = annotate_crops(&model, &[&photos], &out, &["--flip", "--preview"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("2 annotated"), "{stderr}");
    assert!(out.join("preview/b.jpg").is_file());
    let (_, stderr) = annotate_crops(&model, &[&photos], &out, &["--flip", "--preview"]);
    assert!(
        stderr.contains("0 annotated (0 faces), 2 already done"),
        "{stderr}"
    );
    // The last of --refine / --no-refine wins.
    let (code, stderr) = annotate_crops(&model, &[&photos], &out, &["--flip", "--refine"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("second pass: auto before, always now"),
        "{stderr}"
    );
    let both = ["--flip", "--preview", "--refine", "--no-refine"];
    let (code, stderr) = annotate_crops(&model, &[&photos], &out, &both);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("second pass: auto before, off now"),
        "{stderr}"
    );
}

/// The false detection between two faces of a sample photo is dropped by default (its landmarks
/// show little of a face, or lie over those two faces; `--min-presence 0` keeps it); `--chips`
/// writes an upright chip per face with its transforms.
#[test]
fn test_false_detections_are_dropped_and_chips_are_written() {
    let tmp = tempfile::tempdir().unwrap();
    let photo = common::sample_photos().join("2008_004176.jpg");
    let run = |out: &str, extra: &[&str]| {
        let out = tmp.path().join(out);
        let mut args = vec![
            "annotate",
            photo.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        let (code, _, stderr) = run_pipnet(&args);
        assert_eq!(code, 0, "{stderr}");
        (read_annotation(&out, "2008_004176.jpg"), stderr, out)
    };
    let (all, _, _) = run("all", &["--min-presence", "0"]);
    let (kept, stderr, out) = run("kept", &["--chips", "arcface112"]);
    // The one detection dropped is the box between two faces: it overlaps two kept faces
    // (those faces confirm the photo's way up, so its crop is not tried other ways up).
    let dropped: Vec<_> = all
        .faces
        .iter()
        .filter(|f| !kept.faces.iter().any(|k| k.face_box == f.face_box))
        .collect();
    assert_eq!(dropped.len(), 1, "{dropped:?}");
    assert_eq!(kept.faces.len(), all.faces.len() - 1);
    let neighbours = kept
        .faces
        .iter()
        .filter(|k| k.face_box.overlap_of_smaller(&dropped[0].face_box) > 0.2)
        .count();
    assert_eq!(neighbours, 2, "{:?}", dropped[0].face_box);
    assert!(stderr.contains("1 detected face dropped"), "{stderr}");
    for face in &kept.faces {
        let mean = face.landmark_scores.iter().sum::<f32>() / 68.0;
        assert!((face.presence - mean).abs() < 1e-5);
        let five = face.five_points.expect("68 points have five points");
        let chip = face.chip.as_ref().expect("a chip per face");
        let png = image::open(out.join(&chip.file)).unwrap();
        assert_eq!((png.width(), png.height()), (112, 112));
        let (l, r) = (
            chip.chip.to_chip.apply(five[0]),
            chip.chip.to_chip.apply(five[1]),
        );
        let tilt = (r[1] - l[1]).atan2(r[0] - l[0]).to_degrees();
        // The similarity fits all five points, so an eye line within a few degrees of level.
        assert!(tilt.abs() < 10.0, "eye line at {tilt} degrees in the chip");
        let back = chip
            .chip
            .to_image
            .apply(chip.chip.to_chip.apply(face.landmarks[0]));
        assert!((back[0] - face.landmarks[0][0]).abs() < 1e-3);
    }
    assert!(out.join("chips/2008_004176.jpg/1.png").is_file());
    let beside: Vec<pipnet_core::formats::ChipRecord> = serde_json::from_str(
        &std::fs::read_to_string(out.join("chips/2008_004176.jpg/chips.json")).unwrap(),
    )
    .unwrap();
    let in_json: Vec<_> = kept.faces.iter().filter_map(|f| f.chip.clone()).collect();
    assert_eq!(
        beside, in_json,
        "chips.json holds what the image's JSON does"
    );
    // A bad spec is a usage error.
    let (code, _, stderr) = run_pipnet(&[
        "annotate",
        photo.to_str().unwrap(),
        "--out",
        "x",
        "--chips",
        "9:x",
    ]);
    assert_eq!(code, 2, "{stderr}");
}

#[test]
fn test_reruns_leave_exactly_one_current_set_of_outputs_per_image() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    let name = "2008_004176.jpg";
    std::fs::copy(common::sample_photos().join(name), photos.join(name)).unwrap();
    let out = tmp.path().join("out");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "annotate",
            photos.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        let (code, _, stderr) = run_pipnet(&args);
        assert_eq!(code, 0, "{stderr}");
    };
    // The image's outputs, relative to `out`, sorted.
    let outputs = || {
        let mut files: Vec<String> = walk(&out)
            .iter()
            .map(|p| p.strip_prefix(&out).unwrap().display().to_string())
            .filter(|p| p != ".pipnet-run.json" && p != "failures.jsonl")
            .collect();
        files.sort();
        files
    };
    let pts_set = |faces: usize| {
        let mut files: Vec<String> = (1..=faces)
            .flat_map(|k| {
                [
                    format!("2008_004176_{k}.pts"),
                    format!("chips/{name}/{k}.png"),
                ]
            })
            .chain([
                format!("preview/{name}"),
                format!("chips/{name}/chips.json"),
            ])
            .collect();
        files.sort();
        files
    };
    let with_extras = ["--format", "pts", "--chips", "arcface112", "--preview"];

    // Every detection kept (one of them is no face).
    run(&[&with_extras[..], &["--min-presence", "0"]].concat());
    let all = outputs().iter().filter(|f| f.ends_with(".pts")).count();
    assert!(all >= 3, "{:?}", outputs());
    assert_eq!(outputs(), pts_set(all));
    // The default presence cut, forced over the old settings: the dropped face's files go.
    run(&[&with_extras[..], &["--force"]].concat());
    assert_eq!(outputs(), pts_set(all - 1));
    // .pts has no room for the chips' transforms: they are beside the chips.
    let chips_json = std::fs::read_to_string(out.join(format!("chips/{name}/chips.json")));
    let records: Vec<pipnet_core::formats::ChipRecord> =
        serde_json::from_str(&chips_json.unwrap()).unwrap();
    let files: Vec<String> = records.iter().map(|r| r.file.clone()).collect();
    let want: Vec<String> = (1..all).map(|k| format!("chips/{name}/{k}.png")).collect();
    assert_eq!(files, want);
    // Same settings as JSON without previews or chips: the image's older files all go.
    run(&["--format", "json"]);
    assert_eq!(outputs(), [format!("{name}.json")]);
    let annotation = read_annotation(&out, name);
    let settings = annotation.made_by.unwrap().settings;
    assert_eq!(
        settings.min_face,
        Some(40.0),
        "the detector's default, recorded"
    );
    // A record from before sizes were always recorded (no min_face) is the same settings.
    let record_path = out.join(".pipnet-run.json");
    let mut record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&record_path).unwrap()).unwrap();
    record.as_object_mut().unwrap().remove("min_face");
    std::fs::write(&record_path, record.to_string()).unwrap();
    run(&["--format", "json"]);
    let faces = annotation.faces;
    // The photo cut down to the face farthest from the others: redone (it is newer than its
    // outputs) with one face, and the other faces' files go.
    let center = |f: &pipnet_core::formats::FaceAnnotation| {
        let b = f.face_box;
        [(b.x0 + b.x1) / 2.0, (b.y0 + b.y1) / 2.0]
    };
    let alone = faces
        .iter()
        .max_by(|a, b| {
            let nearest = |f| {
                faces
                    .iter()
                    .filter(|o| *o != f)
                    .map(|o| {
                        let (p, q) = (center(f), center(o));
                        (p[0] - q[0]).hypot(p[1] - q[1])
                    })
                    .fold(f32::INFINITY, f32::min)
            };
            nearest(a).total_cmp(&nearest(b))
        })
        .unwrap();
    let photo = image::open(photos.join(name)).unwrap().to_rgb8();
    let [cx, cy] = center(alone);
    let half = (alone.face_box.x1 - alone.face_box.x0) * 0.9;
    let x0 = (cx - half).max(0.0) as u32;
    let y0 = (cy - half).max(0.0) as u32;
    let side = (2.0 * half) as u32;
    let cut = image::imageops::crop_imm(
        &photo,
        x0,
        y0,
        side.min(photo.width() - x0),
        side.min(photo.height() - y0),
    )
    .to_image();
    cut.save(photos.join(name)).unwrap();
    run(&["--format", "pts"]);
    assert_eq!(outputs(), ["2008_004176_1.pts"]);
}

#[test]
fn test_inputs_without_images_are_one_error_for_annotate_and_track() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("notes.txt"), "no photos here").unwrap();
    let out = tmp.path().join("out");
    let (out_arg, empty_arg) = (out.to_str().unwrap(), empty.to_str().unwrap());
    let (code, _, stderr) = run_pipnet(&["annotate", empty_arg, "--out", out_arg]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("no images in") && stderr.contains(".jpg"),
        "{stderr}"
    );
    assert!(!out.join(".pipnet-run.json").exists(), "nothing claimed");
    let (code, _, stderr) = run_pipnet(&["track", empty_arg, "--out", out_arg]);
    assert_eq!(code, 2, "{stderr}");

    // A missing input beside a photo is one of two images named, and the one that failed.
    let photos = tmp.path().join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    std::fs::copy(&real_photos()[0], photos.join("a.jpg")).unwrap();
    let missing = tmp.path().join("nope.jpg");
    let (code, _, stderr) = run_pipnet(&[
        "annotate",
        photos.to_str().unwrap(),
        missing.to_str().unwrap(),
        "--out",
        out_arg,
        "--crops",
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("2 images: 1 annotated (1 face), 0 already done, 1 failed"),
        "{stderr}"
    );
}
