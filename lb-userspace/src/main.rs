//! The `xdpvs` command: the director daemon and its tools.

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser as _};
use lb_userspace::{
    cli::{self, Cli, Command},
    daemon::{self, Options},
};

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
            metrics,
            trace,
        } => {
            let options = Options {
                bpf_dir,
                on_exit,
                socket: cli.socket,
                metrics: metrics.0,
                trace,
            };
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
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "xdpvs", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .map_err(|e| {
                eprintln!("xdpvs: {e}");
                1
            }),
        command => runtime().and_then(|rt| {
            rt.block_on(cli::run(&cli.socket, command))
                .map(|out| print!("{out}"))
                .map_err(|f| {
                    eprintln!("xdpvs: {}", f.message);
                    f.code
                })
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => ExitCode::from(code),
    }
}

/// Prints the error with its causes and returns the exit status: 2 for a refused
/// configuration, 1 otherwise.
fn report(e: &daemon::DaemonError) -> u8 {
    eprintln!("xdpvs: {}", daemon::with_causes(e));
    e.exit_code() as u8
}
