//! `gcl data`: tools for image datasets. `check` reads every file of a list or folder
//! dataset and reports what it holds and what is broken; `make` writes image datasets
//! from data that is here (Fashion-MNIST, MNIST, photos) for tests and benchmarks.
pub mod check;
pub mod make;
