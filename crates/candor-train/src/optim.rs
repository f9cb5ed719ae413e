//! AdamW with PyTorch's semantics (decoupled weight decay `p ← p·(1 − lr·wd)`, bias-corrected
//! moments, eps added outside the square root) and PyTorch's *global* grad-norm clipping.
//! Written here rather than using burn-optim's AdamW because Burn's defaults, per-tensor
//! clipping and ParamId-keyed state (new ids on every load) do not give PyTorch-equal,
//! resumable steps. Moments are kept per trainable parameter in module visiting order, which
//! is stable for a given model structure, so they can be saved and restored by index.
//!
//! On the CPU backend the update is one fused pass over host memory ([`adamw_update`]); the
//! same formula written as tensor ops costs about a dozen full passes (each op reads and writes
//! the whole parameter), which made the optimizer a quarter of a full fine-tuning step. GPU
//! backends keep the moments on the device and use the tensor ops.

use crate::recipe::OptimSection;
use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use candor_model::fused::{sum_of_squares, update_on_host};
use rayon::prelude::*;
use std::any::TypeId;

/// First and second moments of one parameter, flattened.
#[derive(Clone)]
pub enum Moments<B: Backend> {
    /// On the device, updated with tensor ops (GPU backends).
    Device(Tensor<B, 1>, Tensor<B, 1>),
    /// In host memory, updated by [`adamw_update`] (the CPU backend).
    Host(Vec<f32>, Vec<f32>),
}

/// Whether the backend's tensors live in host memory, so that the fused update applies.
pub fn host_backend<B: Backend>() -> bool {
    TypeId::of::<B>() == TypeId::of::<burn::backend::Flex>()
}

/// The scalars of one AdamW update, as f32 (Burn casts scalar operands to the element type the
/// same way, so both paths compute the same thing).
#[derive(Clone, Copy, Debug)]
pub struct Coeffs {
    /// Gradient scale from global-norm clipping (1 when not clipped).
    pub clip: f32,
    pub b1: f32,
    pub one_minus_b1: f32,
    pub b2: f32,
    pub one_minus_b2: f32,
    /// Bias corrections `1 − β₁ᵗ`, `1 − β₂ᵗ`.
    pub bc1: f32,
    pub bc2: f32,
    pub eps: f32,
    /// Decoupled weight decay factor `1 − lr·wd`.
    pub decay: f32,
    pub lr: f32,
}

impl Coeffs {
    pub fn new(cfg: &OptimSection, t: usize, lr: f64, clip: f64) -> Self {
        let (b1, b2) = (cfg.betas[0], cfg.betas[1]);
        Coeffs {
            clip: clip as f32,
            b1: b1 as f32,
            one_minus_b1: (1.0 - b1) as f32,
            b2: b2 as f32,
            one_minus_b2: (1.0 - b2) as f32,
            bc1: (1.0 - b1.powi(t as i32)) as f32,
            bc2: (1.0 - b2.powi(t as i32)) as f32,
            eps: cfg.eps as f32,
            decay: (1.0 - lr * cfg.weight_decay) as f32,
            lr: lr as f32,
        }
    }
}

/// One AdamW update of `p` in place, one pass over the four arrays (chunks in parallel):
/// `g ← clip·g; m ← β₁m + (1−β₁)g; v ← β₂v + (1−β₂)g²;
///  p ← p·(1 − lr·wd) − lr · (m / (1−β₁ᵗ)) / (√(v / (1−β₂ᵗ)) + ε)`.
pub fn adamw_update(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: Coeffs) {
    const CHUNK: usize = 1 << 14;
    p.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|(((p, g), m), v)| {
            for i in 0..p.len() {
                let g = g[i] * k.clip;
                m[i] = m[i] * k.b1 + g * k.one_minus_b1;
                v[i] = v[i] * k.b2 + g * g * k.one_minus_b2;
                let update = (m[i] / k.bc1) / ((v[i] / k.bc2).sqrt() + k.eps);
                p[i] = p[i] * k.decay - update * k.lr;
            }
        });
}

pub struct AdamW<B: AutodiffBackend> {
    pub cfg: OptimSection,
    /// Optimizer steps taken.
    pub t: usize,
    /// First and second moments of each trainable parameter (flattened), by visiting index.
    pub moments: Vec<Option<Moments<B::InnerBackend>>>,
    /// Update in host memory with [`adamw_update`] (default: when the backend is the CPU one).
    pub fused_host: bool,
}

struct NormVisitor<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    sum_sq: f64,
    _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for NormVisitor<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            self.sum_sq += sum_of_squares(g);
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

impl<B: AutodiffBackend> ModuleMapper<B> for StepMapper<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(g) = self.grads.remove::<B::InnerBackend, D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let i = self.index;
        self.index += 1;
        if self.opt.moments.len() <= i {
            self.opt.moments.resize(i + 1, None);
        }
        let c = &self.opt.cfg;
        let k = Coeffs::new(c, self.opt.t, self.lr, self.clip);
        let dims = g.dims();
        let n: usize = dims.iter().product();
        let p = tensor.inner();
        let p = if self.opt.fused_host {
            let (mut m, mut v) = match self.opt.moments[i].take() {
                Some(Moments::Host(m, v)) => (m, v),
                Some(Moments::Device(m, v)) => (to_host(m), to_host(v)),
                None => (vec![0.0; n], vec![0.0; n]),
            };
            // in place in the parameter's own storage on the CPU backend, through host
            // vectors elsewhere
            let update = |p: &mut [f32], g: &[f32]| adamw_update(p, g, &mut m, &mut v, k);
            let p = match update_on_host(p, g, update) {
                Ok(p) => p,
                Err((p, g)) => {
                    let device = p.device();
                    let (mut p, g) = (to_host(p), to_host(g));
                    adamw_update(&mut p, &g, &mut m, &mut v, k);
                    Tensor::from_data(TensorData::new(p, dims), &device)
                }
            };
            self.opt.moments[i] = Some(Moments::Host(m, v));
            p
        } else {
            let g = g.reshape([n]) * k.clip;
            let (m, v) = match self.opt.moments[i].take() {
                Some(Moments::Device(m, v)) => (m, v),
                Some(Moments::Host(m, v)) => {
                    let device = g.device();
                    (from_host(m, &device), from_host(v, &device))
                }
                None => (g.zeros_like(), g.zeros_like()),
            };
            let m = m * k.b1 + g.clone() * k.one_minus_b1;
            let v = v * k.b2 + g.square() * k.one_minus_b2;
            let update = (m.clone() / k.bc1) / ((v.clone() / k.bc2).sqrt() + k.eps);
            let p = p.reshape([n]);
            let p = if c.weight_decay > 0.0 { p * k.decay } else { p };
            self.opt.moments[i] = Some(Moments::Device(m, v));
            (p - update * k.lr).reshape(dims)
        };
        Param::from_mapped_value(id, Tensor::from_inner(p).require_grad(), mapper)
    }
}

fn to_host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("f32 data")
}

fn from_host<B: Backend>(x: Vec<f32>, device: &B::Device) -> Tensor<B, 1> {
    let n = x.len();
    Tensor::from_data(TensorData::new(x, [n]), device)
}

impl<B: AutodiffBackend> AdamW<B> {
    pub fn new(cfg: OptimSection) -> Self {
        Self {
            cfg,
            t: 0,
            moments: vec![],
            fused_host: host_backend::<B::InnerBackend>(),
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
            mv.as_ref().map(|mv| match mv {
                Moments::Host(m, v) => (m.clone(), v.clone()),
                Moments::Device(m, v) => (to_host(m.clone()), to_host(v.clone())),
            })
        })
        .collect()
}
