//! Evaluation: accuracy overall, per class and per shot group; results and their tables.
pub mod calibration;
pub mod collapse;
pub mod geometry;
pub mod metrics;
pub mod plots;
pub mod report;
pub mod table;
pub mod tensorboard;

pub use metrics::{evaluate, Accuracy, ShotGroup};
pub use table::Table;
