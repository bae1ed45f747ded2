//! The PIPNet loss: `cls_weight * MSE(cls)` over every cell, plus `reg_weight *` L1 of the
//! own and neighbour offsets at each landmark's positive cell only (means over N*L and N*L*C
//! selected values, as the official implementation). Self-training leaves some samples out of
//! some heads: only the `active` samples count, and the means are over them.

use burn::prelude::*;

use crate::model::PipOutputs;

/// A batch of targets as tensors, in the output layouts.
#[derive(Debug, Clone)]
pub struct TargetBatch {
    pub cls: Tensor<4>,
    pub off_x: Tensor<4>,
    pub off_y: Tensor<4>,
    pub nb_x: Tensor<4>,
    pub nb_y: Tensor<4>,
    /// `mask` and `nb_mask` are zero for inactive samples.
    pub mask: Tensor<4>,
    pub nb_mask: Tensor<4>,
    /// `[N, 1, 1, 1]`: 1 for the samples this head learns from, 0 for the others.
    pub weight: Tensor<4>,
    /// How many samples have weight 1 (at least 1: a head with none is skipped).
    pub active: usize,
}

/// Loss weights.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossWeights {
    pub cls: f32,
    pub reg: f32,
}

impl Default for LossWeights {
    fn default() -> Self {
        Self {
            cls: 10.0,
            reg: 1.0,
        }
    }
}

/// The total loss (a scalar tensor) and its parts, for logging.
pub fn pip_loss(out: PipOutputs, t: TargetBatch, w: LossWeights) -> Tensor<1> {
    let [_, l, g, _] = t.cls.dims();
    let [_, lc, _, _] = t.nb_x.dims();
    let n = t.active.max(1);
    let cls = ((out.cls - t.cls).powf_scalar(2.0) * t.weight)
        .sum()
        .div_scalar((n * l * g * g) as f32);
    let masked_l1 = |pred: Tensor<4>, target: Tensor<4>, mask: Tensor<4>, count: usize| {
        ((pred - target).abs() * mask)
            .sum()
            .div_scalar(count as f32)
    };
    let own = masked_l1(out.off_x, t.off_x, t.mask.clone(), n * l)
        + masked_l1(out.off_y, t.off_y, t.mask, n * l);
    let neighbors = masked_l1(out.nb_x, t.nb_x, t.nb_mask.clone(), n * lc)
        + masked_l1(out.nb_y, t.nb_y, t.nb_mask, n * lc);
    cls.mul_scalar(w.cls) + (own + neighbors).mul_scalar(w.reg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(values: Vec<f32>, shape: [usize; 4]) -> Tensor<4> {
        Tensor::from_data(TensorData::new(values, shape), &Device::flex())
    }

    #[test]
    fn test_loss_weighs_cls_everywhere_and_offsets_at_the_mask_only() {
        // N=1, L=1, C=1, G=2: cls off by 1 in one cell of four; x off by 0.5 where the mask is 1
        // and by 100 where it is 0 (ignored); nb_y off by 0.25 at the mask.
        let shape = [1, 1, 2, 2];
        let zeros = || tensor(vec![0.0; 4], shape);
        let out = PipOutputs {
            cls: tensor(vec![1.0, 0.0, 0.0, 0.0], shape),
            off_x: tensor(vec![0.0, 0.5, 100.0, 0.0], shape),
            off_y: zeros(),
            nb_x: zeros(),
            nb_y: tensor(vec![0.0, 0.25, 0.0, 0.0], shape),
        };
        let mask = tensor(vec![0.0, 1.0, 0.0, 0.0], shape);
        let targets = TargetBatch {
            cls: zeros(),
            off_x: zeros(),
            off_y: zeros(),
            nb_x: zeros(),
            nb_y: zeros(),
            mask: mask.clone(),
            nb_mask: mask,
            weight: tensor(vec![1.0], [1, 1, 1, 1]),
            active: 1,
        };
        let value = scalar(pip_loss(out, targets, LossWeights::default()));
        let expected = 10.0 * (1.0 / 4.0) + 0.5 + 0.25;
        assert!((value - expected).abs() < 1e-6, "{value} vs {expected}");
    }

    fn scalar(t: Tensor<1>) -> f32 {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()[0]
    }

    #[test]
    fn test_inactive_samples_add_nothing() {
        // Two samples, L=1, C=1, G=1: the second is wrong everywhere but inactive (weight 0,
        // masks 0), so the loss is that of the first alone.
        let shape = [2, 1, 1, 1];
        let t = |v: [f32; 2]| tensor(v.to_vec(), shape);
        let out = PipOutputs {
            cls: t([0.5, 9.0]),
            off_x: t([0.25, 9.0]),
            off_y: t([0.0, 9.0]),
            nb_x: t([0.0, 9.0]),
            nb_y: t([0.0, 9.0]),
        };
        let targets = TargetBatch {
            cls: t([1.0, 0.0]),
            off_x: t([0.0, 0.0]),
            off_y: t([0.0, 0.0]),
            nb_x: t([0.0, 0.0]),
            nb_y: t([0.0, 0.0]),
            mask: t([1.0, 0.0]),
            nb_mask: t([1.0, 0.0]),
            weight: t([1.0, 0.0]),
            active: 1,
        };
        let value = scalar(pip_loss(out, targets, LossWeights::default()));
        let expected = 10.0 * 0.25 + 0.25;
        assert!((value - expected).abs() < 1e-6, "{value} vs {expected}");
    }
}
