//! Link settings for libtorch (from the PyPI wheel that scripts/setup.sh installs).
//!
//! - rpath to the libtorch folder, so `gcl` and the tests run without LD_LIBRARY_PATH;
//! - libtorch_cuda linked with --no-as-needed: nothing references it by symbol, so the
//!   linker would drop it and CUDA would stay invisible (`Cuda::is_available()` false).
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        panic!("torch-sys did not report its libtorch folder; run `bash scripts/setup.sh`, then build again");
    };
    let lib = PathBuf::from(lib);
    // Our C++ kernels (csrc/: CPU autocast, channels-last helpers, the fused BatchNorm + ReLU,
    // the Winograd convolutions), compiled against the same libtorch headers.
    // csrc/dist.cpp: the data-parallel shim on c10d (Gloo; NCCL where torch has CUDA and the
    // CUDA headers are installed).
    const SOURCES: [&str; 5] = ["csrc/ffi.cpp", "csrc/autocast.cpp", "csrc/bn_act.cpp", "csrc/winograd.cpp", "csrc/dist.cpp"];
    for f in SOURCES.iter().chain(&["csrc/ffi.h", "csrc/bn_act_kernels.inc", "csrc/winograd_kernels.inc"]) {
        println!("cargo:rerun-if-changed={f}");
    }
    let include = lib.parent().expect("libtorch lib folder has a parent").join("include");
    // ProcessGroupGloo.hpp includes gloo's headers, which the torch wheel does not ship;
    // Debian's libgloo-dev has them (headers only: the gloo code is libtorch's own).
    if !std::path::Path::new("/usr/include/gloo/context.h").exists() {
        panic!("gloo's headers are missing (/usr/include/gloo): run `bash scripts/setup.sh` (it installs Debian's libgloo-dev), then build again");
    }
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .files(SOURCES)
        // Optimised even in debug builds: the kernels are on every training step's path.
        .opt_level(3)
        // at::parallel_for is inline OpenMP; libgomp.so.1 resolves at run time to the one
        // libtorch ships (same soname), so both share one thread team.
        .flag("-fopenmp")
        // Our code gets -Wall -Wextra; libtorch's headers are system headers, whose warnings
        // are not ours to fix.
        .warnings(true)
        .extra_warnings(true)
        .flag("-isystem")
        .flag(include.to_str().expect("a UTF-8 libtorch path"))
        .flag("-isystem")
        .flag(include.join("torch/csrc/api/include").to_str().expect("a UTF-8 libtorch path"))
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .define("USE_C10D_GLOO", None);
    // NCCL (CUDA data-parallel training) where torch has CUDA and the CUDA headers that
    // ProcessGroupNCCL.hpp includes are installed (scripts/setup.sh adds the two header
    // wheels nvidia-cuda-crt and nvidia-cuda-cccl next to torch's own nvidia packages).
    let nvidia = lib.join("../../nvidia");
    let (cuda_inc, nccl_inc) = (nvidia.join("cu13/include"), nvidia.join("nccl/include"));
    let nccl = lib.join("libtorch_cuda.so").exists()
        && cuda_inc.join("crt/host_config.h").exists()
        && cuda_inc.join("cuda_runtime.h").exists()
        && nccl_inc.join("nccl.h").exists();
    println!("cargo::rustc-check-cfg=cfg(gcl_nccl)");
    if nccl {
        build.define("USE_C10D_NCCL", None).define("GCL_NCCL", None);
        for inc in [&cuda_inc, &nccl_inc] {
            build.flag("-isystem").flag(inc.to_str().expect("a UTF-8 CUDA include path"));
        }
        println!("cargo:rustc-cfg=gcl_nccl");
    }
    build.compile("gcl_kernels");
    // Tests of the Winograd kernel's AVX-512 and AVX2 paths run where the CPU has them (an
    // explicit skip elsewhere).
    println!("cargo::rustc-check-cfg=cfg(gcl_avx512)");
    println!("cargo::rustc-check-cfg=cfg(gcl_avx2)");
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") {
            println!("cargo:rustc-cfg=gcl_avx512");
        }
        if has!("avx2") && has!("fma") {
            println!("cargo:rustc-cfg=gcl_avx2");
        }
    }
    println!("cargo:rustc-link-lib=gomp");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
