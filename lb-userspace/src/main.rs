//! The `xdpvs` command: the director daemon and its tools.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use lb_userspace::{
    daemon::{self, OnExit, Options},
    pins,
};

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
        /// Directory on bpffs where the maps and links are pinned, so the data path
        /// outlives the daemon and the next one adopts it.
        #[arg(long, default_value = pins::DEFAULT_DIR)]
        bpf_dir: PathBuf,
        /// What a stop (SIGTERM, SIGINT) does with the data path.
        #[arg(long, value_enum, default_value_t = OnExit::Keep)]
        on_exit: OnExit,
    },
    /// Detach the program and remove what a stopped daemon left running (pinned maps and
    /// links, `lo` forwarding, neighbour entries). Refused while a daemon runs.
    Teardown {
        /// The daemon's --bpf-dir.
        #[arg(long, default_value = pins::DEFAULT_DIR)]
        bpf_dir: PathBuf,
    },
    /// Check a configuration file without touching the kernel.
    CheckConfig {
        /// Configuration file (YAML; see docs/CONFIG.md).
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    // netlink_proto warns about every event that arrives for a closed request; those are
    // expected (a request's answer and an event can cross) and say nothing to an operator.
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,netlink_proto=error"),
    )
    .init();
    let cli = Cli::parse();
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| {
                eprintln!("xdpvs: cannot start the runtime: {e}");
                1
            })
    };
    let result = match cli.command {
        Command::Daemon {
            config,
            bpf_dir,
            on_exit,
        } => {
            let options = Options { bpf_dir, on_exit };
            runtime().and_then(|rt| {
                rt.block_on(daemon::run(&config, &options))
                    .map_err(|e| report(&e))
            })
        }
        Command::Teardown { bpf_dir } => runtime().and_then(|rt| {
            rt.block_on(daemon::teardown(&bpf_dir))
                .map(|summary| println!("{summary}"))
                .map_err(|e| report(&e))
        }),
        Command::CheckConfig { config } => daemon::check_config(&config)
            .map(|summary| println!("{summary}"))
            .map_err(|e| report(&e)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => ExitCode::from(code),
    }
}

/// Prints the error with every cause under it that its message does not already say,
/// and returns the exit status: 2 for a refused configuration, 1 otherwise.
fn report(e: &daemon::DaemonError) -> u8 {
    let mut line = format!("xdpvs: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    eprintln!("{line}");
    e.exit_code() as u8
}
