//! AdamW with PyTorch's semantics (decoupled weight decay `p ← p·(1 − lr·wd)`, bias-corrected
//! moments, eps added outside the square root) and PyTorch's *global* grad-norm clipping.
//! Written here rather than using burn-optim's AdamW because Burn's defaults, per-tensor
//! clipping and ParamId-keyed state (new ids on every load) do not give PyTorch-equal,
//! resumable steps. Moments are kept per trainable parameter in module visiting order, which
//! is stable for a given model structure, so they can be saved and restored by index.

use crate::recipe::OptimSection;
use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;

/// First and second moments of one parameter, flattened.
pub type Moments<B> = (Tensor<B, 1>, Tensor<B, 1>);

pub struct AdamW<B: AutodiffBackend> {
    pub cfg: OptimSection,
    /// Optimizer steps taken.
    pub t: usize,
    /// First and second moments of each trainable parameter (flattened), by visiting index.
    pub moments: Vec<Option<Moments<B::InnerBackend>>>,
}

struct NormVisitor<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    sum_sq: f64,
    _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for NormVisitor<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let s: f32 = g.square().sum().into_scalar().elem();
            self.sum_sq += s as f64;
        }
    }
}

/// The global L2 norm of all gradients.
pub fn grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: &GradientsParams,
) -> f64 {
    let mut v = NormVisitor::<B> {
        grads,
        sum_sq: 0.0,
        _b: Default::default(),
    };
    model.visit(&mut v);
    v.sum_sq.sqrt()
}

struct StepMapper<'a, B: AutodiffBackend> {
    opt: &'a mut AdamW<B>,
    grads: &'a mut GradientsParams,
    lr: f64,
    clip: f64,
    index: usize,
}

use burn::tensor::ElementConversion;

impl<B: AutodiffBackend> ModuleMapper<B> for StepMapper<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(g) = self.grads.remove::<B::InnerBackend, D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let i = self.index;
        self.index += 1;
        let c = &self.opt.cfg;
        let (b1, b2) = (c.betas[0], c.betas[1]);
        let t = self.opt.t as i32;
        let dims = g.dims();
        let n: usize = dims.iter().product();
        let g = g.reshape([n]) * self.clip;
        if self.opt.moments.len() <= i {
            self.opt.moments.resize(i + 1, None);
        }
        let (m, v) = match self.opt.moments[i].take() {
            Some((m, v)) => (m, v),
            None => (g.zeros_like(), g.zeros_like()),
        };
        let m = m * b1 + g.clone() * (1.0 - b1);
        let v = v * b2 + g.square() * (1.0 - b2);
        let m_hat = m.clone() / (1.0 - b1.powi(t));
        let v_hat = v.clone() / (1.0 - b2.powi(t));
        let update = m_hat / (v_hat.sqrt() + c.eps);
        let p = tensor.inner().reshape([n]);
        let p = if c.weight_decay > 0.0 {
            p * (1.0 - self.lr * c.weight_decay)
        } else {
            p
        };
        let p = (p - update * self.lr).reshape(dims);
        self.opt.moments[i] = Some((m, v));
        Param::from_mapped_value(id, Tensor::from_inner(p).require_grad(), mapper)
    }
}

impl<B: AutodiffBackend> AdamW<B> {
    pub fn new(cfg: OptimSection) -> Self {
        Self {
            cfg,
            t: 0,
            moments: vec![],
        }
    }

    /// One update with learning rate `lr`; returns the gradient norm before clipping.
    pub fn step<M: AutodiffModule<B>>(
        &mut self,
        model: M,
        mut grads: GradientsParams,
        lr: f64,
    ) -> (M, f64) {
        let norm = grad_norm::<B, M>(&model, &grads);
        let clip = if self.cfg.grad_clip > 0.0 && norm > self.cfg.grad_clip {
            self.cfg.grad_clip / (norm + 1e-6)
        } else {
            1.0
        };
        self.t += 1;
        let mut mapper = StepMapper {
            opt: self,
            grads: &mut grads,
            lr,
            clip,
            index: 0,
        };
        let model = model.map(&mut mapper);
        (model, norm)
    }
}

/// Host copies of the moments, for checkpoints: `(m, v)` per index.
pub fn moments_to_host<B: Backend>(
    moments: &[Option<Moments<B>>],
) -> Vec<Option<(Vec<f32>, Vec<f32>)>> {
    moments
        .iter()
        .map(|mv| {
            mv.as_ref().map(|(m, v)| {
                (
                    m.clone().into_data().into_vec::<f32>().expect("f32"),
                    v.clone().into_data().into_vec::<f32>().expect("f32"),
                )
            })
        })
        .collect()
}
