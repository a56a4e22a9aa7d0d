//! The running director: load the configuration, program the maps, keep the reals'
//! neighbour entries, attach, wait for signals, and undo it all on the way out.

use std::{net::IpAddr, path::Path};

use tokio::signal::unix::{SignalKind, signal};

use crate::{
    config::{Config, ConfigError},
    dataplane::{Dataplane, DataplaneError},
    forwarding::{ForwardingError, ForwardingGuard},
    neighbour::{ManagedNeighbours, NeighbourError, Netlink},
    plan::{self, Plan, PlanError},
    stats,
};

/// How long start-up waits for the reals' neighbour entries to resolve.
const NEIGHBOUR_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Line printed on standard output once the program is attached and the maps are filled.
pub const READY: &str = "xdpvs: ready";

/// Why the daemon could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{path}:{source}")]
    Plan {
        path: String,
        #[source]
        source: PlanError,
    },
    #[error(transparent)]
    Neighbour(#[from] NeighbourError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("enabling IPv4 forwarding: {0}")]
    Forwarding(#[from] ForwardingError),
    #[error("signal handling: {0}")]
    Signal(#[source] std::io::Error),
}

impl DaemonError {
    /// Exit status: 2 for a configuration the daemon refuses, 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            DaemonError::Config(_) | DaemonError::Plan { .. } => 2,
            _ => 1,
        }
    }
}

/// Everything that must be undone when the daemon stops. Dropping it detaches the program
/// (the bpf_link goes with its descriptor) and removes the managed neighbour entries, on
/// every path out, errors and panics included.
struct Running {
    dataplane: Dataplane,
    neighbours: ManagedNeighbours,
    forwarding: ForwardingGuard,
    plan: Plan,
}

fn start(config_path: &Path) -> Result<Running, DaemonError> {
    let config = Config::load(config_path)?;
    let mut netlink = Netlink::open()?;
    let plan = plan::compile(&config, |a: IpAddr| netlink.route(a)).map_err(|source| {
        DaemonError::Plan {
            path: config_path.display().to_string(),
            source,
        }
    })?;
    let mut dataplane = Dataplane::load(config.limits)?;
    dataplane.apply(&plan)?;
    let mut neighbours = ManagedNeighbours::new(netlink);
    let mut forwarding = ForwardingGuard::default();
    for r in plan.services.iter().flat_map(|s| &s.reals) {
        neighbours.ensure(r.value.ifindex, r.address)?;
        forwarding.ensure(r.value.ifindex)?;
    }
    // Attach only once the reals' MACs are known, so the first packets are not dropped
    // as drop_no_neighbour. A real that does not answer ARP does not hold up the start.
    for address in neighbours.wait_resolved(NEIGHBOUR_WAIT) {
        log::warn!(
            "real server {address} does not answer ARP/ND yet; its packets are dropped until it does"
        );
    }
    for interface in &config.director.interfaces {
        dataplane.attach(interface, config.director.xdp_mode)?;
        log::info!(
            "attached to {interface} ({:?} mode)",
            config.director.xdp_mode
        );
    }
    Ok(Running {
        dataplane,
        neighbours,
        forwarding,
        plan,
    })
}

/// Unblocks the signals the daemon acts on. A signal mask is inherited across exec, so a
/// parent that blocked them (a test harness, a supervisor) would leave the daemon deaf.
fn unblock_signals() {
    // SAFETY: sigset manipulation on a zeroed, owned set; pthread_sigmask on this thread,
    // which is the one the runtime's signal handling is set up from.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGUSR1] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config_path: &Path) -> Result<(), DaemonError> {
    unblock_signals();
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;
    let mut usr1 = signal(SignalKind::user_defined1()).map_err(DaemonError::Signal)?;
    let mut running = start(config_path)?;
    let reals: usize = running.plan.services.iter().map(|s| s.reals.len()).sum();
    println!(
        "{READY} services={} reals={}",
        running.plan.services.len(),
        reals
    );
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = usr1.recv() => print_report(&running),
        }
    }
    log::info!("stopping");
    running.dataplane.detach_all();
    running.neighbours.release();
    running.forwarding.restore();
    print_report(&running);
    Ok(())
}

fn print_report(running: &Running) {
    match running.dataplane.snapshot(&running.plan) {
        Ok(snapshot) => print!("{}", stats::report(&running.plan, &snapshot)),
        Err(e) => log::warn!("reading counters: {e}"),
    }
}

/// Validates a configuration file without touching the kernel; returns a summary.
pub fn check_config(config_path: &Path) -> Result<String, DaemonError> {
    let config = Config::load(config_path)?;
    let reals: usize = config.services.iter().map(|s| s.reals.len()).sum();
    Ok(format!(
        "{}: ok, {} services, {} reals, interfaces {}",
        config_path.display(),
        config.services.len(),
        reals,
        config.director.interfaces.join(",")
    ))
}
