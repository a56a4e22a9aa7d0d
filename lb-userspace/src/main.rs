//! The `xdpvs` command: the director daemon and its tools.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use lb_userspace::daemon;

#[derive(Parser)]
#[command(
    name = "xdpvs",
    version,
    about = "XDP Virtual Server: an L4 load balancer on the XDP fast path"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the director: attach the XDP program and program it from the configuration.
    Daemon {
        /// Configuration file (YAML; see docs/CONFIG.md).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a configuration file without touching the kernel.
    CheckConfig {
        /// Configuration file (YAML; see docs/CONFIG.md).
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Daemon { config } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| {
                eprintln!("xdpvs: cannot start the runtime: {e}");
                1
            })
            .and_then(|rt| rt.block_on(daemon::run(&config)).map_err(|e| report(&e))),
        Command::CheckConfig { config } => daemon::check_config(&config)
            .map(|summary| println!("{summary}"))
            .map_err(|e| report(&e)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => ExitCode::from(code),
    }
}

/// Prints the error (each error's message already carries its cause) and returns the
/// exit status: 2 for a refused configuration, 1 otherwise.
fn report(e: &daemon::DaemonError) -> u8 {
    eprintln!("xdpvs: {e}");
    e.exit_code() as u8
}
