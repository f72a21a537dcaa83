//! Evaluation: accuracy overall, per class and per shot group; reports.
pub mod metrics;
pub mod report;

pub use metrics::{evaluate, Accuracy, ShotGroup};
