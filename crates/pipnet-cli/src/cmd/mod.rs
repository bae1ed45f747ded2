pub mod annotate;
pub mod bench;
pub mod calibrate;
pub mod data;
pub mod eval;
#[cfg(feature = "train")]
pub mod export;
pub mod info;
pub mod peer;
pub mod pose_shape;
mod python_reference;
pub mod track;
#[cfg(feature = "train")]
pub mod train;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use pipnet_core::SecondPass;
use pipnet_infer::detect::{DetectorSettings, FaceDetector};
use pipnet_infer::labeled::{LabeledFace, read_labeled, split_validation};
use pipnet_infer::runtime::Runtime;
use pipnet_infer::session::GraphSource;
use pipnet_infer::{Device, LandmarkModel, SessionOptions};

/// Exit codes (README "Exit codes"): 0 everything done; 1 some images failed (their reasons in
/// OUT/failures.jsonl); 2 a usage error or nothing could run (clap's usage errors are 2 too).
pub const EXIT_IMAGES_FAILED: u8 = 1;
pub const EXIT_ERROR: u8 = 2;

/// 0 when nothing failed (or failures are allowed), else [`EXIT_IMAGES_FAILED`].
pub fn exit_for_failures(failed: bool) -> ExitCode {
    if failed {
        ExitCode::from(EXIT_IMAGES_FAILED)
    } else {
        ExitCode::SUCCESS
    }
}

/// `n` and the noun, plural unless `n` is 1: "1 face", "0 faces", "2 faces".
pub fn count(n: usize, noun: &str) -> String {
    match n {
        1 => format!("1 {noun}"),
        n => format!("{n} {noun}s"),
    }
}

/// The arguments of a command this build leaves out (`train`, `export` without the `train`
/// feature): taken as they come, answered with how to get the command.
#[cfg(not(feature = "train"))]
#[derive(clap::Args)]
pub struct NotBuilt {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    args: Vec<String>,
}

#[cfg(not(feature = "train"))]
impl NotBuilt {
    pub fn error() -> anyhow::Result<std::process::ExitCode> {
        anyhow::bail!(
            "this pipnet was built without training (`pipnet train`, `pipnet export`), to keep \
             the annotating binary small; build one with it: cargo build --release -p \
             pipnet-cli --features train"
        )
    }
}

/// Loads ONNX Runtime (the build `options.device` needs), saying so when it has to be fetched.
pub fn runtime(options: &SessionOptions) -> anyhow::Result<&'static Runtime> {
    Ok(pipnet_infer::runtime::runtime(options, |what| {
        eprintln!("pipnet: ONNX Runtime not found; fetching {what} from PyPI with pip (once)")
    })?)
}

/// Loads a landmark model file, warning when `--device auto` fell back to the CPU.
pub fn load_model(path: &Path, options: &SessionOptions) -> anyhow::Result<LandmarkModel> {
    open_model(GraphSource::File(path), options)
}

fn open_model(source: GraphSource<'_>, options: &SessionOptions) -> anyhow::Result<LandmarkModel> {
    let name = source.name().display().to_string();
    let model = LandmarkModel::open(source, options, runtime(options)?)
        .with_context(|| format!("failed to load model {name}"))?;
    if let Some(reason) = model.device_fallback() {
        eprintln!(
            "pipnet: warning: --device auto: CUDA unavailable, running on the CPU ({reason})"
        );
    }
    Ok(model)
}

/// Which landmark model runs.
#[derive(clap::Args)]
pub struct ModelArgs {
    /// The landmark model (an ONNX graph with PIPNet metadata); default: the built-in one,
    /// models/pipnet-mbv2-256-face68.onnx.
    #[arg(long, value_name = "MODEL")]
    pub model: Option<PathBuf>,
}

impl ModelArgs {
    pub fn load(&self, options: &SessionOptions) -> anyhow::Result<LandmarkModel> {
        match &self.model {
            Some(path) => load_model(path, options),
            None => open_model(GraphSource::builtin_landmarks(), options),
        }
    }
}

/// Where and how inference runs.
#[derive(clap::Args)]
pub struct SessionArgs {
    /// Execution provider: cpu, cuda or auto.
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// Faces per inference run.
    #[arg(long, default_value_t = pipnet_infer::model::DEFAULT_BATCH)]
    batch: usize,
    /// ONNX Runtime intra-op threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl SessionArgs {
    pub fn options(&self) -> anyhow::Result<SessionOptions> {
        anyhow::ensure!(self.batch > 0, "--batch must be at least 1");
        Ok(SessionOptions {
            device: self.device,
            threads: self.threads,
            batch_size: Some(self.batch),
            ..Default::default()
        })
    }
}

/// Which face detector to use.
#[derive(clap::Args, Default)]
pub struct DetectorArgs {
    /// A BlazeFace ONNX graph with its settings beside it (`GRAPH.json`); default: the
    /// built-in full-range 256x256 graph.
    #[arg(long = "detector", value_name = "GRAPH")]
    graph: Option<PathBuf>,
}

impl DetectorArgs {
    pub fn load(&self, options: &SessionOptions) -> anyhow::Result<FaceDetector> {
        let rt = runtime(options)?;
        let detector = match &self.graph {
            Some(path) => FaceDetector::load_with_runtime(path, options, rt),
            None => FaceDetector::open(
                GraphSource::builtin_detector(),
                DetectorSettings::builtin(),
                options,
                rt,
            ),
        };
        detector.context("failed to load the face detector")
    }
}

/// How many landmark passes a face gets, as `annotate` runs it. By default a face gets a
/// second pass, on a crop made from its first landmarks, only where its first pass says the
/// crop was off (moved, rescaled or turned) or the face is unsure (docs/experiments.md, "A
/// second pass where it pays").
#[derive(clap::Args)]
pub struct RefineArgs {
    /// A second landmark pass for every face.
    #[arg(long, overrides_with = "no_refine")]
    refine: bool,
    /// One landmark pass for every face.
    #[arg(long, overrides_with = "refine")]
    no_refine: bool,
}

impl RefineArgs {
    /// Which faces get the second pass (the last of `--refine` / `--no-refine` given wins).
    pub fn second_pass(&self) -> SecondPass {
        match (self.refine, self.no_refine) {
            (true, _) => SecondPass::Always,
            (_, true) => SecondPass::Off,
            _ => SecondPass::Auto,
        }
    }
}

/// Labeled faces on disk, as `pipnet eval` and `pipnet calibrate` read them.
#[derive(clap::Args)]
pub struct LabeledArgs {
    /// A folder of images with `.pts` files beside them, or a WFLW annotation list file.
    data: PathBuf,
    /// With a WFLW list: the folder its image paths are relative to (default: the list's).
    #[arg(long, value_name = "DIR")]
    images: Option<PathBuf>,
}

impl LabeledArgs {
    pub fn read(&self) -> anyhow::Result<Vec<LabeledFace>> {
        Ok(read_labeled(&self.data, self.images.as_deref())?)
    }
}

/// A labeled folder split as a training config splits it (`--split FRACTION:SEED`): for the
/// commands that fit something on the training part and check it on the validation part.
#[derive(clap::Args)]
pub struct SplitLabeledArgs {
    #[command(flatten)]
    data: LabeledArgs,
    /// Fit on the training part of this split, check on its validation part (the faces
    /// `pipnet eval --split` scores).
    #[arg(long, value_parser = parse_split, default_value = "0.1:1")]
    pub split: (f64, u64),
}

impl SplitLabeledArgs {
    /// The faces as (training part, validation part).
    pub fn read(&self) -> anyhow::Result<(Vec<LabeledFace>, Vec<LabeledFace>)> {
        let (fraction, seed) = self.split;
        Ok(split_validation(self.data.read()?, fraction, seed))
    }
}

/// Comma-separated angles in degrees, e.g. `0,20,-20,90`, as radians.
pub fn parse_rolls(text: &str) -> Result<Vec<f32>, String> {
    text.split(',')
        .map(|a| match a.trim().parse::<f32>() {
            Ok(d) if d.is_finite() => Ok(d.to_radians()),
            _ => Err(format!(
                "bad angle {a:?}: expected degrees, e.g. 0,20,-20,90"
            )),
        })
        .collect()
}

/// `FRACTION:SEED` of a training config's validation split, e.g. `0.1:1`.
pub fn parse_split(text: &str) -> Result<(f64, u64), String> {
    let (f, s) = text
        .split_once(':')
        .ok_or("expected FRACTION:SEED, e.g. 0.1:1")?;
    Ok((
        f.parse().map_err(|_| format!("bad fraction {f:?}"))?,
        s.parse().map_err(|_| format!("bad seed {s:?}"))?,
    ))
}

/// A command's arguments parsed from `argv` (the command's name first), for unit tests of how
/// flags map onto library options.
#[cfg(test)]
pub fn parse_args<A: clap::Args>(argv: &[&str]) -> A {
    #[derive(clap::Parser)]
    struct Cli<A: clap::Args> {
        #[command(flatten)]
        args: A,
    }
    <Cli<A> as clap::Parser>::parse_from(argv).args
}
