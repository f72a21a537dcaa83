use clap::Parser;

fn main() {
    restore_sigpipe();
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
fn restore_sigpipe() {
    #[cfg(unix)]
    {
        extern "C" {
            fn signal(signum: i32, handler: usize) -> usize;
        }
        const SIGPIPE: i32 = 13;
        const SIG_DFL: usize = 0;
        // SAFETY: libc's signal(), setting the default action before any other thread runs.
        unsafe {
            signal(SIGPIPE, SIG_DFL);
        }
    }
}
