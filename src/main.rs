use clap::Parser;

fn main() {
    set_signal_actions();
    keep_freed_memory();
    // Ctrl-C: training stops at the next step with a message saying what is kept; a second
    // Ctrl-C ends the process at once.
    let _ = ctrlc::set_handler(|| {
        if gcl::util::interrupted() {
            std::process::exit(130);
        }
        gcl::util::interrupt();
        eprintln!("\ngcl: stopping after this step (Ctrl-C again to quit at once)");
    });
    if let Err(e) = gcl::cli::run(gcl::cli::Cli::parse()) {
        eprintln!("gcl: error: {e:#}");
        std::process::exit(1);
    }
}

/// Rust ignores SIGPIPE, so `gcl split ... | head` would end in a "broken pipe" panic once
/// `head` exits; with the default action the process just ends quietly, as other Unix tools do.
/// SIGXFSZ (a write beyond the file-size limit, `ulimit -f`) is ignored instead: the write then
/// fails with EFBIG and gcl reports which file could not be written whole, keeping the earlier
/// version, where the default action would kill the process and dump core.
fn set_signal_actions() {
    #[cfg(target_os = "linux")]
    {
        extern "C" {
            fn signal(signum: i32, handler: usize) -> usize;
        }
        const SIGPIPE: i32 = 13;
        const SIGXFSZ: i32 = 25;
        const SIG_DFL: usize = 0;
        const SIG_IGN: usize = 1;
        // SAFETY: libc's signal(), setting actions before any other thread runs.
        unsafe {
            signal(SIGPIPE, SIG_DFL);
            signal(SIGXFSZ, SIG_IGN);
        }
    }
}

/// Batches are large (64 x 3 x 224 x 224 floats: 38 MB) and made anew for every step; glibc
/// maps blocks that large fresh each time and unmaps them when freed, so every batch pays
/// ~9,000 page faults and the kernel's zeroing. Raising the mmap and trim thresholds keeps
/// freed blocks in the heap for the next batch (the process keeps what it peaked at, which
/// a training run does anyway).
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        // SAFETY: glibc's mallopt(), called before any other thread allocates.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 512 << 20);
            mallopt(M_TRIM_THRESHOLD, 1 << 30);
        }
    }
}
