//! gcl: long-tailed image classification with Gaussian Clouded Logit adjustment.
//!
//! Li, Cheung, Lu, "Long-tailed Visual Recognition via Gaussian Clouded Logit
//! Adjustment", CVPR 2022; "Adjusting Logit in Gaussian Form for Long-Tailed Visual
//! Recognition", IEEE TAI 2024.
//!
//! Layers, each using only those below it: `cli` (arguments) -> the commands (`train`,
//! `compare`, `bench`, `inspect`) -> `eval`, `model`, `loss`, `data` -> `runtime`, `kernels`
//! (our C++ kernels) -> `config`, `util`.
pub mod bench;
pub mod cli;
pub mod compare;
pub mod config;
pub mod data;
pub mod eval;
pub mod inspect;
pub mod kernels;
pub mod loss;
pub mod model;
pub mod runtime;
pub mod train;
pub mod util;
