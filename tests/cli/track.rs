//! `pipnet track`: frame folders and video files, reruns, damaged input.

use super::*;

/// Encodes `frames/f000.png, ...` at 30 frames/s into `video` with ffmpeg and `codec`'s options.
fn encode_video(frames: &Path, codec: &[&str], video: &Path) {
    let made = Command::new("ffmpeg")
        .args(["-v", "error", "-framerate", "30", "-i"])
        .arg(frames.join("f%03d.png"))
        .args(codec)
        .arg(video)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
}

/// `pipnet track` on a folder of frames made from a real photo: one line per frame, one id,
/// smoothed and raw points; CSV too; a missing input and a folder without frames are errors.
#[test]
fn test_track_follows_a_face_through_a_frame_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::repo_root().join("../shared/data/face68-train");
    let face = &pipnet_infer::labeled::read_labeled(&data, None).unwrap()[3];
    let photo = pipnet_infer::image_io::load_rgb(&face.image, 1 << 26).unwrap();
    let frames = tmp.path().join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    for (t, (frame, _)) in common::synthetic_video(&photo, &face.points, 12, 256, 1.0, 4.0, 9)
        .iter()
        .enumerate()
    {
        frame.save(frames.join(format!("f{t:03}.png"))).unwrap();
    }
    let out = tmp.path().join("out");
    let (code, _, stderr) = run_pipnet(&[
        "track",
        frames.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--preview",
        "--pose-axes",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("12 frames: 12 faces, 1 id,"), "{stderr}");
    let text = std::fs::read_to_string(out.join("landmarks.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 12);
    for (t, line) in lines.iter().enumerate() {
        assert_eq!(line["frame"], t);
        assert_eq!(line["image"], format!("f{t:03}.png"));
        let faces = line["faces"].as_array().unwrap();
        assert_eq!(faces.len(), 1);
        assert_eq!(faces[0]["id"], 1);
        assert_eq!(faces[0]["landmarks"].as_array().unwrap().len(), 68);
        assert_eq!(faces[0]["raw_landmarks"].as_array().unwrap().len(), 68);
        // The pose is the smoothed points' pose.
        let smoothed: Vec<[f32; 2]> =
            serde_json::from_value(faces[0]["landmarks"].clone()).unwrap();
        let want = pipnet_core::head_pose(pipnet_core::Scheme::W300_68, &smoothed).unwrap();
        let roll = faces[0]["pose"]["roll"].as_f64().unwrap() as f32;
        assert!(
            (roll - want.roll).abs() < 1e-3,
            "frame {t}: roll {roll} vs {}",
            want.roll
        );
    }
    assert!(
        out.join("preview/f011.png.jpg").is_file(),
        "named after the frame"
    );

    // Other settings in the same folder: refused, naming them; --force replaces the run.
    let csv_run = |extra: &[&str]| {
        let mut args = vec![
            "track",
            frames.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--format",
            "csv",
            "--no-smooth",
        ];
        args.extend(extra);
        run_pipnet(&args)
    };
    let (code, _, stderr) = csv_run(&[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("smoothing: min cutoff 1, beta 2 before, off now")
            && stderr.contains("--force"),
        "{stderr}"
    );
    let (code, _, stderr) = csv_run(&["--force"]);
    assert_eq!(code, 0, "{stderr}");
    let csv = std::fs::read_to_string(out.join("landmarks.csv")).unwrap();
    assert_eq!(csv.lines().count(), 13, "a header and a row per frame");
    assert!(csv.starts_with("frame,time,id,score,presence,box_x0"));
    // Nothing of the first run is left beside the second's.
    let mut left: Vec<String> = walk(&out)
        .iter()
        .map(|p| p.strip_prefix(&out).unwrap().display().to_string())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [".pipnet-run.json", "failures.jsonl", "landmarks.csv"]
    );
    // Another input needs --force too; an annotate run cannot take a track folder.
    let copy = tmp.path().join("copy");
    std::fs::create_dir_all(&copy).unwrap();
    for file in std::fs::read_dir(&frames).unwrap().flatten() {
        std::fs::copy(file.path(), copy.join(file.file_name())).unwrap();
    }
    let (code, _, stderr) = run_pipnet(&[
        "track",
        copy.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--format",
        "csv",
        "--no-smooth",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("input: "), "{stderr}");
    let (code, _, stderr) = run_pipnet(&[
        "annotate",
        copy.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--force",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("holds the outputs of pipnet track"),
        "{stderr}"
    );

    // A frame that cannot be read is reported, and the others are tracked.
    std::fs::write(
        copy.join("f005.png"),
        &std::fs::read(frames.join("f005.png")).unwrap()[..200],
    )
    .unwrap();
    let damaged = tmp.path().join("damaged");
    let (code, _, stderr) = run_pipnet(&[
        "track",
        copy.to_str().unwrap(),
        "--out",
        damaged.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("11 frames: 11 faces, 1 id, 1 failed"),
        "{stderr}"
    );
    let failures = std::fs::read_to_string(damaged.join("failures.jsonl")).unwrap();
    assert!(failures.contains("f005.png"), "{failures}");
    let frames_written: Vec<u64> = std::fs::read_to_string(damaged.join("landmarks.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["frame"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        frames_written,
        [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11],
        "the frame's place kept"
    );

    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    for input in [empty, tmp.path().join("missing.mp4")] {
        let (code, _, stderr) = run_pipnet(&["track", input.to_str().unwrap(), "--out", "o"]);
        assert_eq!(code, 2, "{stderr}");
    }

    // The same frames as a video file (lossless FFV1 at 30 frames/s), decoded by ffmpeg: the
    // same face, id and times. `.ci/run` installs ffmpeg; elsewhere this part needs it.
    let ffmpeg = Command::new("ffmpeg").arg("-version").output();
    if ffmpeg.is_err() {
        eprintln!("ffmpeg not installed: the video-file part was not run (apt-get install ffmpeg)");
        return;
    }
    let video = tmp.path().join("clip.mkv");
    encode_video(&frames, &["-c:v", "ffv1", "-pix_fmt", "bgr0"], &video);
    let from_video = tmp.path().join("video");
    let (code, _, stderr) = run_pipnet(&[
        "track",
        video.to_str().unwrap(),
        "--out",
        from_video.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("12 frames: 12 faces, 1 id, 0 failed"),
        "{stderr}"
    );
    let decoded = std::fs::read_to_string(from_video.join("landmarks.jsonl")).unwrap();
    for (t, (line, want)) in decoded.lines().zip(&lines).enumerate() {
        let line: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(line["image"], serde_json::Value::Null);
        assert!((line["time"].as_f64().unwrap() - t as f64 / 30.0).abs() < 1e-9);
        let (a, b) = (
            &line["faces"][0]["landmarks"][30],
            &want["faces"][0]["landmarks"][30],
        );
        for k in 0..2 {
            let d = a[k].as_f64().unwrap() - b[k].as_f64().unwrap();
            assert!(
                d.abs() < 1.0,
                "frame {t}: nose tip {a} from the video, {b} from the frames"
            );
        }
    }

    // An MP4 with its index in front (`+faststart`), cut in half: ffmpeg decodes what is there
    // and exits 0; the frames are kept and the cut is reported against the header's count.
    let mp4 = tmp.path().join("clip.mp4");
    let codec = ["-c:v", "mpeg4", "-q:v", "2", "-movflags", "+faststart"];
    encode_video(&frames, &codec, &mp4);
    let bytes = std::fs::read(&mp4).unwrap();
    std::fs::write(&mp4, &bytes[..bytes.len() / 2]).unwrap();
    let cut = tmp.path().join("cut");
    let (code, _, stderr) = run_pipnet(&[
        "track",
        mp4.to_str().unwrap(),
        "--out",
        cut.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("of the 12 frames its header lists were decoded"),
        "{stderr}"
    );
    let kept = std::fs::read_to_string(cut.join("landmarks.jsonl")).unwrap();
    assert!((1..12).contains(&kept.lines().count()), "{kept}");
    let failures = std::fs::read_to_string(cut.join("failures.jsonl")).unwrap();
    assert!(failures.contains("clip.mp4"), "{failures}");
}
