//! `pipnet train --config train.toml [--stc UNLABELED_DIR] [--resume]`

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressStyle};
use pipnet_train::Backbone;
use pipnet_train::config::{StcConfig, TrainConfig};
use pipnet_train::pack::{PackOptions, pack_run};
use pipnet_train::trainer::{Event, train};

#[derive(clap::Args)]
pub struct Args {
    /// Training configuration (TOML); see configs/ for examples.
    #[arg(long, required_unless_present = "bench")]
    config: Option<PathBuf>,
    /// Measure training images/s (forward + backward + Adam, batch 16) of the networks in
    /// toolchain-notes.md instead of training.
    #[arg(long)]
    bench: bool,
    /// burn device, instead of the config's `train.device`: flex (CPU) or wgpu (a GPU through
    /// Vulkan; needs pipnet built with `--features wgpu`). With --bench, the device measured.
    #[arg(long)]
    device: Option<String>,
    /// Continue from the run folder's checkpoint.
    #[arg(long)]
    resume: bool,
    /// Override the number of epochs of the config.
    #[arg(long)]
    epochs: Option<usize>,
    /// Self-train (STC) on the unlabeled face images of these folders, with the config's
    /// `[stc]` settings or, without that section, the defaults (rounds at 40% and 60% of the
    /// epochs).
    #[arg(long, num_args = 1.., value_name = "UNLABELED_DIR")]
    stc: Vec<PathBuf>,
    /// Stop within this many minutes: the run is shortened to the epochs that fit (and its
    /// learning-rate schedule with it). Overrides the config's `train.max_minutes`.
    #[arg(long)]
    max_minutes: Option<f64>,
    /// Instead of training, pack the run for another machine into this folder: the training
    /// faces cut to what augmentation reaches, the ImageNet weights if used, and a train.toml
    /// (see scripts/gpu-train/).
    #[arg(long, value_name = "DIR")]
    pack: Option<PathBuf>,
    /// With --pack: packed pixels per network input pixel (below 1 saves bytes, loses detail).
    #[arg(long, default_value_t = 1.0, requires = "pack")]
    pack_resolution: f32,
    /// With --pack: JPEG quality of the packed faces.
    #[arg(long, default_value_t = 90, requires = "pack", value_parser = clap::value_parser!(u8).range(1..=100))]
    pack_quality: u8,
}

/// The networks of toolchain-notes.md with PyTorch's training rate there (2 threads, batch 16):
/// name, backbone, input, ResNet widths, last stage stride, PyTorch img/s.
type BenchNetwork = (&'static str, Backbone, usize, [usize; 4], usize, f64);
const BENCH_NETWORKS: [BenchNetwork; 5] = [
    (
        "ResNet-18 256, full (64..512), stride 32",
        Backbone::Resnet18,
        256,
        [64, 128, 256, 512],
        2,
        10.0,
    ),
    (
        "ResNet-18 128, full (64..512), stride 16",
        Backbone::Resnet18,
        128,
        [64, 128, 256, 512],
        1,
        42.0,
    ),
    (
        "ResNet-18 128, half (32..256), stride 16",
        Backbone::Resnet18,
        128,
        [32, 64, 128, 256],
        1,
        117.0,
    ),
    (
        "MobileNetV2 256, stride 32",
        Backbone::MobilenetV2,
        256,
        [0; 4],
        2,
        12.0,
    ),
    (
        "MobileNetV2 128, stride 16",
        Backbone::MobilenetV2,
        128,
        [0; 4],
        1,
        45.0,
    ),
];

fn bench(device: &str) -> anyhow::Result<ExitCode> {
    println!("| network | burn {device} img/s | PyTorch img/s (toolchain-notes) | ratio |");
    println!("|---|---|---|---|");
    for (name, backbone, input_size, widths, last_stage_stride, torch) in BENCH_NETWORKS {
        let spec = pipnet_train::NetworkSpec {
            input_size,
            backbone,
            widths,
            last_stage_stride,
            num_landmarks: 68,
            num_neighbors: 10,
        };
        let rate = pipnet_train::trainer::bench_training(&spec, device, 16, 3, 10.0)?;
        println!("| {name} | {rate:.1} | {torch:.0} | {:.2} |", rate / torch);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Some(config_path) = args.config.filter(|_| !args.bench) else {
        return bench(args.device.as_deref().unwrap_or("flex"));
    };
    let mut config = TrainConfig::load(&config_path)?;
    if let Some(device) = args.device {
        config.train.device = device;
    }
    if let Some(minutes) = args.max_minutes {
        config.train.max_minutes = Some(minutes);
    }
    if let Some(dir) = args.pack {
        let options = PackOptions {
            resolution: args.pack_resolution,
            jpeg_quality: args.pack_quality,
        };
        let pack = pack_run(&config, &dir, options)?;
        println!(
            "packed {} training faces ({:.1} MB, {} with detector crops) into {}; config {}{}",
            pack.faces,
            pack.face_bytes as f64 / 1e6,
            pack.detector_crops,
            dir.display(),
            pack.config.display(),
            pack.weights
                .map(|w| format!(", ImageNet weights {}", w.display()))
                .unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(epochs) = args.epochs {
        config.train.epochs = epochs;
    }
    if !args.stc.is_empty() {
        let first = (config.train.epochs * 2 / 5).max(1);
        let second = (config.train.epochs * 3 / 5).max(first + 1);
        let stc = config.stc.get_or_insert_with(|| StcConfig {
            rounds: vec![first, second],
            ..StcConfig::default()
        });
        stc.unlabeled.extend(args.stc);
    }
    let out = config.train.out.clone();
    let mut progress = Progress::new(&out)?;
    let state = train(&config, args.resume, |event| progress.show(event))?;
    eprintln!(
        "done: {} epochs; best graph {}, metrics {}",
        state.epoch,
        out.join("best.onnx").display(),
        out.join("metrics.csv").display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Training progress on stderr: a bar per epoch and per labeling round, a line per epoch.
struct Progress {
    bar: ProgressBar,
    epoch_style: ProgressStyle,
    label_style: ProgressStyle,
    out: PathBuf,
}

impl Progress {
    fn new(out: &Path) -> anyhow::Result<Self> {
        let epoch_style = ProgressStyle::with_template(
            "epoch {prefix:>3} [{bar:30}] {pos}/{len} {per_sec} eta {eta} loss {msg}",
        )?
        .progress_chars("=> ");
        let label_style = ProgressStyle::with_template(
            "round {prefix} pseudo-labels [{bar:30}] {pos}/{len} {per_sec} eta {eta}",
        )?
        .progress_chars("=> ");
        Ok(Self {
            bar: ProgressBar::hidden(),
            epoch_style,
            label_style,
            out: out.to_path_buf(),
        })
    }

    fn show(&mut self, event: Event) {
        match event {
            Event::Loaded {
                train_faces,
                val_faces,
            } => eprintln!(
                "training on {train_faces} faces, validating on {val_faces}; run folder {}",
                self.out.display()
            ),
            Event::Labeling {
                round,
                done,
                images,
            } => {
                if self.bar.length() != Some(images as u64) {
                    self.bar = ProgressBar::new(images as u64).with_style(self.label_style.clone());
                    self.bar.set_prefix(round.to_string());
                }
                self.bar.set_position(done as u64);
            }
            Event::PseudoLabels {
                round,
                images,
                found,
                kept,
                reused,
                seconds,
            } => {
                self.bar.finish_and_clear();
                let how = if reused {
                    "read from the run folder"
                } else {
                    "labeled"
                };
                eprintln!(
                    "round {round}: {found} of {images} unlabeled images have a face, {kept} kept \
                     ({how}, {seconds:.0}s)"
                );
            }
            Event::EpochStart { epoch, steps } => {
                self.bar = ProgressBar::new(steps as u64).with_style(self.epoch_style.clone());
                self.bar.set_prefix(epoch.to_string());
            }
            Event::Step { loss } => {
                self.bar.set_message(format!("{loss:.4}"));
                self.bar.inc(1);
            }
            Event::EpochEnd(r) => {
                self.bar.finish_and_clear();
                let raw = r
                    .raw_val_nme
                    .map(|v| format!(" (average; network {v:.4})"))
                    .unwrap_or_default();
                eprintln!(
                    "epoch {:>3}  loss {:.4}  val NME {:.4}{raw}  FR@0.1 {:.3}  lr {:.2e}  {:.0}s  \
                     {:.1} img/s",
                    r.epoch,
                    r.train_loss,
                    r.val_nme,
                    r.val_failure_rate,
                    r.lr,
                    r.seconds,
                    r.images_per_second
                );
            }
        }
    }
}
