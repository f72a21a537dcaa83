//! gcl: long-tailed image classification with Gaussian Clouded Logit adjustment.
//!
//! Li, Cheung, Lu, "Long-tailed Visual Recognition via Gaussian Clouded Logit
//! Adjustment", CVPR 2022; "Adjusting Logit in Gaussian Form for Long-Tailed Visual
//! Recognition", IEEE TAI 2024.
pub mod bench;
pub mod cli;
pub mod compare;
pub mod config;
pub mod data;
pub mod device;
pub mod eval;
pub mod loss;
pub mod precision;
pub mod model;
pub mod train;
pub mod util;
