//! SGD with momentum and weight decay, as torch.optim.SGD (dampening 0, no Nesterov),
//! over an explicit list of parameters. Its momentum buffers are part of a checkpoint,
//! so a resumed run continues exactly.
use tch::Tensor;

pub struct Sgd {
    pub params: Vec<(String, Tensor)>,
    pub momentum: f64,
    pub weight_decay: f64,
    pub buffers: Vec<Option<Tensor>>,
}

impl Sgd {
    pub fn new(params: Vec<(String, Tensor)>, momentum: f64, weight_decay: f64) -> Self {
        let buffers = (0..params.len()).map(|_| None).collect();
        Self { params, momentum, weight_decay, buffers }
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in self.params.iter_mut() {
            p.zero_grad();
        }
    }

    /// p <- p - lr * buf, buf <- momentum * buf + (grad + weight_decay * p).
    pub fn step(&mut self, lr: f64) {
        tch::no_grad(|| {
            for ((_, p), buf) in self.params.iter_mut().zip(self.buffers.iter_mut()) {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let d = if self.weight_decay != 0.0 { g + &*p * self.weight_decay } else { g };
                match buf {
                    Some(b) => {
                        let _ = b.g_mul_scalar_(self.momentum).g_add_(&d);
                    }
                    None => *buf = Some(d.detach().copy()),
                }
                let _ = p.g_sub_(&(buf.as_ref().unwrap() * lr));
            }
        })
    }

    /// Named momentum buffers (only those that exist yet), for a checkpoint.
    pub fn named_buffers(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .zip(&self.buffers)
            .filter_map(|((n, _), b)| b.as_ref().map(|b| (n.clone(), b.shallow_clone())))
            .collect()
    }

    pub fn set_buffer(&mut self, name: &str, value: &Tensor) -> bool {
        match self.params.iter().position(|(n, _)| n == name) {
            Some(i) => {
                let like = &self.params[i].1;
                self.buffers[i] = Some(value.to_kind(like.kind()).to_device(like.device()));
                true
            }
            None => false,
        }
    }
}
