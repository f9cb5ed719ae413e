//! Helpers shared by the training tests.

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use candor_model::Llama;

pub type A = Autodiff<Flex>;

pub struct Ids(pub Vec<ParamId>);
impl<B: Backend> ModuleVisitor<B> for Ids {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
        self.0.push(p.id);
    }
}

/// Every parameter's gradient in `g`, flattened, in the model's visiting order (parameters
/// without a gradient are skipped).
pub fn grads_of(model: &Llama<A>, g: &GradientsParams) -> Vec<Vec<f32>> {
    let mut ids = Ids(vec![]);
    model.visit(&mut ids);
    ids.0
        .into_iter()
        .filter_map(|id| grad(g, id))
        .map(|d| d.into_vec::<f32>().unwrap())
        .collect()
}

/// The gradient of parameter `id` in `g`, if it has one (every parameter of these models is
/// 1-D or 2-D).
pub fn grad(g: &GradientsParams, id: ParamId) -> Option<TensorData> {
    g.get::<Flex, 2>(id)
        .map(|t| t.into_data())
        .or_else(|| g.get::<Flex, 1>(id).map(|t| t.into_data()))
}

/// Backpropagate two losses of `model` and assert that every parameter's gradient agrees
/// within `tol` of the largest gradient of the second (which must not be all zero).
pub fn assert_same_gradients(
    model: &Llama<A>,
    fast: Tensor<A, 1>,
    slow: Tensor<A, 1>,
    tol: f32,
    what: &str,
) {
    let gf = grads_of(model, &GradientsParams::from_grads(fast.backward(), model));
    let gs = grads_of(model, &GradientsParams::from_grads(slow.backward(), model));
    assert_eq!(gf.len(), gs.len());
    let scale = gs.iter().flatten().fold(0f32, |m, x| m.max(x.abs()));
    assert!(scale > 0.0, "{what}: no gradient");
    for (i, (a, b)) in gf.iter().zip(&gs).enumerate() {
        for (p, q) in a.iter().zip(b) {
            assert!(
                (p - q).abs() <= tol * scale,
                "{what} parameter {i}: {p} vs {q}"
            );
        }
    }
}
