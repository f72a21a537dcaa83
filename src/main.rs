use clap::Parser;

fn main() {
    if let Err(e) = gcl::cli::run(gcl::cli::Cli::parse()) {
        eprintln!("gcl: error: {e:#}");
        std::process::exit(1);
    }
}
