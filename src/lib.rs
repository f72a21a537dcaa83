//! gcl: long-tailed image classification with Gaussian Clouded Logit adjustment.
//!
//! Li, Cheung, Lu, "Long-tailed Visual Recognition via Gaussian Clouded Logit
//! Adjustment", CVPR 2022; "Adjusting Logit in Gaussian Form for Long-Tailed Visual
//! Recognition", IEEE TAI 2024.
//!
//! Layers, top to bottom; a module uses only modules of lower layers (tests/architecture.rs
//! checks it):
//!
//! | layer | modules | what |
//! |---|---|---|
//! | 8 | `cli` | parses the arguments, dispatches |
//! | 7 | `sweep` | `gcl sweep`: many trainings (methods of `compare`'s lists x grids x ratios x seeds) and their summary |
//! | 6 | `bench`, `compare`, `predict`, `report`, `export` | commands that run trainings; `gcl predict` (a run's model from its folder); `gcl report` (embedding, geometry, calibration of runs); `gcl export` (a run's ViT backbone as the library's state dict, LoRA merged) |
//! | 5 | `train`, `inspect`, `datacmd` | the two stages (`gcl train`); `gcl split`, `gcl config`; `gcl data check`, `gcl data make` |
//! | 4 | `config` | the settings: presets, files, `--set`, validation |
//! | 3 | `eval` | accuracy, results.json, tables |
//! | 2 | `loss`, `model`, `data` | losses; backbones and heads; sources (in memory, image files), decoding, transforms, split, loader |
//! | 1 | `runtime`, `dist` | the settings resolved for the device; data-parallel workers (c10d) and their launcher |
//! | 0 | `kernels`, `util` | our C++ kernels' bindings; atomic writes |
pub mod bench;
pub mod cli;
pub mod compare;
pub mod config;
pub mod data;
pub mod datacmd;
pub mod dist;
pub mod eval;
pub mod export;
pub mod inspect;
pub mod kernels;
pub mod loss;
pub mod model;
pub mod predict;
pub mod report;
pub mod runtime;
pub mod sweep;
pub mod train;
pub mod util;
