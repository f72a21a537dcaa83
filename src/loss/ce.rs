//! Plain (optionally class-weighted) cross-entropy.
use super::{finish, Criterion};
use tch::Tensor;

pub struct CrossEntropy {
    pub weight: Option<Tensor>,
}

impl Criterion for CrossEntropy {
    fn loss(&self, logits: &Tensor, target: &Tensor, _noise: Option<&Tensor>) -> Tensor {
        finish(logits, target, self.weight.as_ref(), None)
    }
}
