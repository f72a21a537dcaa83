//! SGD with momentum and weight decay, as torch.optim.SGD (dampening 0, no Nesterov).
//!
//! The parameters are re-seated as views of one flat buffer, and the gradients are taken
//! with autograd's functional form and concatenated, so an update is a handful of tensor
//! ops rather than several per parameter: that matters when kernel launches dominate (a
//! small network on a GPU). Momentum is one flat buffer too; a checkpoint stores it per
//! parameter, so a resumed run continues exactly.
use crate::dist::Dist;
use anyhow::Result;
use std::sync::Arc;
use tch::{Kind, Tensor};

/// Whether a 4-d tensor is laid out channels-last (NHWC in memory).
pub fn is_channels_last(t: &Tensor) -> bool {
    if t.dim() != 4 {
        return false;
    }
    let (s, st) = (t.size(), t.stride());
    let (c, h, w) = (s[1], s[2], s[3]);
    c > 1 && st[1] == 1 && st[3] == c && st[2] == w * c && st[0] == h * w * c
}

/// A parameter's values (or gradient) flattened in the parameter's memory order.
fn flatten_like(t: &Tensor, channels_last: bool) -> Tensor {
    if channels_last {
        t.permute([0, 2, 3, 1]).flatten(0, -1)
    } else {
        t.flatten(0, -1)
    }
}

/// The part `span` (offset, numel) of the flat buffer `buf` as a tensor of `shape`, with
/// channels-last strides when `channels_last` (the inverse of `flatten_like`).
fn span_view(buf: &Tensor, (o, n): (i64, i64), shape: &[i64], channels_last: bool) -> Tensor {
    let part = buf.narrow(0, o, n);
    if channels_last {
        part.view([shape[0], shape[2], shape[3], shape[1]]).permute([0, 3, 1, 2])
    } else {
        part.view(shape)
    }
}

pub struct Sgd {
    names: Vec<String>,
    /// Channels-last parameters keep that layout as views of `flat`.
    channels_last: Vec<bool>,
    params: Vec<Tensor>,
    /// (offset, numel) of each parameter in `flat`.
    spans: Vec<(i64, i64)>,
    flat: Tensor,
    /// The parameters' gradients, laid out as `flat`; each parameter's `.grad` is a view of it
    /// (made at the first step), so backward adds into it and no second copy is made.
    grad: Option<Tensor>,
    momentum_buffer: Option<Tensor>,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Data-parallel workers whose gradients are averaged before each step (None: one process).
    pub dist: Option<Arc<Dist>>,
}

impl Sgd {
    pub fn new(params: Vec<(String, Tensor)>, momentum: f64, weight_decay: f64) -> Self {
        let (names, mut tensors): (Vec<String>, Vec<Tensor>) = params.into_iter().unzip();
        let channels_last: Vec<bool> = tensors.iter().map(is_channels_last).collect();
        let mut spans = Vec::with_capacity(tensors.len());
        let mut off = 0;
        for t in &tensors {
            let n = t.numel() as i64;
            spans.push((off, n));
            off += n;
        }
        let flat = if tensors.is_empty() {
            Tensor::zeros([0], (Kind::Float, tch::Device::Cpu))
        } else {
            tch::no_grad(|| {
                let parts: Vec<Tensor> = tensors.iter().zip(&channels_last).map(|(t, &cl)| flatten_like(&t.detach(), cl)).collect();
                Tensor::cat(&parts, 0)
            })
        };
        tch::no_grad(|| {
            for ((t, &span), &cl) in tensors.iter_mut().zip(&spans).zip(&channels_last) {
                let view = span_view(&flat, span, &t.size(), cl);
                t.set_data(&view);
            }
        });
        Self { names, channels_last, params: tensors, spans, flat, grad: None, momentum_buffer: None, momentum, weight_decay, dist: None }
    }

    /// Gradients of `loss` for the parameters, concatenated like `flat` (a copy of them).
    pub fn flat_grad(&mut self, loss: &Tensor) -> Result<Tensor> {
        Ok(self.backward(loss)?.copy())
    }

    /// Back-propagates `loss` into the gradient buffer; the buffer (not a copy).
    fn backward(&mut self, loss: &Tensor) -> Result<Tensor> {
        if self.grad.is_none() {
            let g = self.flat.zeros_like();
            for ((p, &span), &cl) in self.params.iter_mut().zip(&self.spans).zip(&self.channels_last) {
                let view = span_view(&g, span, &p.size(), cl);
                crate::kernels::layout::set_grad(p, &view)?;
            }
            self.grad = Some(g);
        }
        let g = self.grad.as_ref().expect("made above").shallow_clone();
        let _ = tch::no_grad(|| g.shallow_clone().zero_());
        loss.f_backward()?;
        Ok(g)
    }

    /// Back-propagates `loss` and takes one step: buf <- momentum * buf + (grad + wd * p),
    /// p <- p - lr * buf, where grad is the mean over the data-parallel workers (if any).
    /// Returns the gradient's L2 norm (a scalar tensor, not read here, so the device is not
    /// waited for).
    pub fn backward_step(&mut self, loss: &Tensor, lr: f64) -> Result<Tensor> {
        if self.params.is_empty() {
            return Ok(Tensor::zeros([], (Kind::Float, loss.device())));
        }
        let g = self.backward(loss)?;
        if let Some(d) = &self.dist {
            d.average_gradient(&g)?;
        }
        Ok(self.apply(g, lr))
    }

    /// One step with the flat gradient `g` (as `flat_grad` gives it); returns its L2 norm.
    pub fn apply(&mut self, g: Tensor, lr: f64) -> Tensor {
        let norm = tch::no_grad(|| g.norm());
        tch::no_grad(|| {
            let first = self.momentum_buffer.is_none();
            let b = self.momentum_buffer.get_or_insert_with(|| g.zeros_like());
            // In slices of 4M values: the temporaries stay small next to a large model's
            // parameters (whole-vector ones would be three more copies of them at the peak).
            let len = g.size()[0];
            let chunk = 1 << 22;
            for o in (0..len).step_by(chunk as usize) {
                let n = chunk.min(len - o);
                let (gs, ps, mut bs) = (g.narrow(0, o, n), self.flat.narrow(0, o, n), b.narrow(0, o, n));
                let d = if self.weight_decay != 0.0 { &gs + &ps * self.weight_decay } else { gs };
                if first {
                    let _ = bs.copy_(&d);
                } else {
                    let _ = bs.g_mul_scalar_(self.momentum).g_add_(&d);
                }
                let _ = ps.shallow_clone().g_sub_(&(&bs * lr));
            }
        });
        norm
    }

    /// The parameters, concatenated in the optimiser's order.
    pub fn flat_params(&self) -> Tensor {
        self.flat.detach().copy()
    }

    /// Named momentum buffers (empty before the first step), for a checkpoint.
    pub fn named_buffers(&self) -> Vec<(String, Tensor)> {
        match &self.momentum_buffer {
            None => Vec::new(),
            Some(b) => self
                .names
                .iter()
                .zip(self.params.iter().zip(&self.spans).zip(&self.channels_last))
                .map(|(n, ((p, &(o, len)), &cl))| {
                    let s = p.size();
                    let v = if cl { b.narrow(0, o, len).view([s[0], s[2], s[3], s[1]]).permute([0, 3, 1, 2]) } else { b.narrow(0, o, len).view(s.as_slice()) };
                    (n.clone(), v)
                })
                .collect(),
        }
    }

    /// Restores one parameter's momentum; false when no parameter has that name.
    pub fn set_buffer(&mut self, name: &str, value: &Tensor) -> bool {
        let Some(i) = self.names.iter().position(|n| n == name) else { return false };
        let (o, len) = self.spans[i];
        if value.numel() as i64 != len {
            return false;
        }
        let flat = &self.flat;
        let cl = self.channels_last[i] && value.dim() == 4;
        let buf = self.momentum_buffer.get_or_insert_with(|| flat.zeros_like());
        tch::no_grad(|| {
            let v = flatten_like(&value.to_kind(flat.kind()).to_device(flat.device()), cl);
            let _ = buf.narrow(0, o, len).copy_(&v);
        });
        true
    }

    pub fn len(&self) -> usize {
        self.params.len()
    }
    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }
}
