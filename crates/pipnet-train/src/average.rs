//! An exponential moving average of the network's weights and BatchNorm statistics
//! (`train.ema`): after every optimizer step each value moves a fraction `1 - decay` of the way
//! towards the trained network's. Fine-tuning at batch 16 leaves the weights, and so the
//! validation NME, shaking from epoch to epoch by as much as a model generation is worth; the
//! average follows the same trajectory without the shake, and is what the run validates and
//! writes as `last.onnx` / `best.onnx`.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;

use crate::model::PipNet;

/// The averaged network and its decay per step.
#[derive(Debug)]
pub struct WeightAverage {
    net: PipNet,
    decay: f64,
}

impl WeightAverage {
    /// Starts the average at `model` (detached from autodiff).
    pub fn new(model: &PipNet, decay: f64) -> Self {
        Self::resume(model.valid(), decay)
    }

    /// Continues an average saved with a checkpoint.
    pub fn resume(net: PipNet, decay: f64) -> Self {
        Self { net, decay }
    }

    /// The averaged network.
    pub fn net(&self) -> &PipNet {
        &self.net
    }

    /// Moves the average towards `model` after optimizer step `step` (0-based, counted from the
    /// run's start). Early steps use a smaller decay, `(1 + step) / (10 + step)`, so the
    /// starting weights do not linger when the run is short.
    pub fn update(&mut self, model: &PipNet, step: usize) {
        let keep = self.decay.min((1.0 + step as f64) / (10.0 + step as f64));
        let mut current = Flatten(Vec::new());
        // `valid()` syncs the BatchNorm statistics and drops the autodiff graph.
        model.valid().visit(&mut current);
        let mut blend = Blend {
            current: current.0.into_iter(),
            keep,
        };
        self.net = self.net.clone().map(&mut blend);
    }
}

/// Every float value of a network (weights and running statistics), flattened, in the order
/// the network's fields are declared.
struct Flatten(Vec<Tensor<1>>);

impl ModuleVisitor for Flatten {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push(param.val().reshape([-1]));
    }
}

/// Replaces each value `a` of the average with `keep * a + (1 - keep) * current`, taking the
/// current values in the same order. Both networks are one `PipNet` type of one spec, so the
/// orders and sizes agree.
struct Blend {
    current: std::vec::IntoIter<Tensor<1>>,
    keep: f64,
}

impl ModuleMapper for Blend {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(current) = self.current.next() else {
            return param;
        };
        let keep = self.keep;
        param.map(|avg| {
            let shape = avg.shape();
            avg.mul_scalar(keep)
                .add(current.reshape(shape).mul_scalar(1.0 - keep))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seeded::tiny_spec;

    fn values(net: &PipNet) -> Vec<f32> {
        let mut flat = Flatten(Vec::new());
        net.visit(&mut flat);
        flat.0
            .into_iter()
            .flat_map(|t| {
                t.into_data()
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn test_the_average_moves_towards_the_network_by_one_minus_its_decay() {
        let device = Device::flex();
        let spec = tiny_spec();
        let a = PipNet::seeded(&spec, 0, &device, 1).unwrap();
        let b = PipNet::seeded(&spec, 0, &device, 2).unwrap();
        let (va, vb) = (values(&a), values(&b));
        assert!(
            va.iter().zip(&vb).any(|(x, y)| x != y),
            "seeds 1 and 2 differ"
        );

        // A late step uses the configured decay: 0.75 a + 0.25 b, value for value.
        let mut average = WeightAverage::new(&a, 0.75);
        average.update(&b, 1000);
        let got = values(average.net());
        assert_eq!(got.len(), va.len());
        for ((g, x), y) in got.iter().zip(&va).zip(&vb) {
            let want = 0.75 * x + 0.25 * y;
            assert!(
                (g - want).abs() <= 1e-5 * (1.0 + want.abs()),
                "{g} vs {want}"
            );
        }

        // The first step keeps only 1/10 of the start, whatever the decay.
        let mut average = WeightAverage::new(&a, 0.999);
        average.update(&b, 0);
        for ((g, x), y) in values(average.net()).iter().zip(&va).zip(&vb) {
            let want = 0.1 * x + 0.9 * y;
            assert!(
                (g - want).abs() <= 1e-5 * (1.0 + want.abs()),
                "{g} vs {want}"
            );
        }
    }
}
