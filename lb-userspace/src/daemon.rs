//! The running director: load the configuration, program the maps, keep the reals'
//! next hops current, attach, serve signals (SIGHUP reloads), and undo it all on the way
//! out.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use lb_common::{
    NH_OFFLINK, NH_RESOLVED,
    conntrack::{Flow, FlowKeyV4, Settings},
};
use sd_notify::NotifyState;
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    time::Instant,
};

use crate::{
    api::{self, Answer, Call, Refusal, Request},
    config::{Config, ConfigError, OnFailure},
    dataplane::{Dataplane, DataplaneError, Snapshot},
    document::{self, Document, EditError},
    health::{Checkers, Health, HealthChange, Probe, QuorumChange, Target},
    host::{HostError, InstanceLock, LoForwarding, LockError, STATE_DIR},
    nexthop::{Change, Events, Link, ManagedNeighbours, Netlink, NextHop, NexthopError, Route},
    pins::{self, Found},
    plan::{self, Ids, Plan, PlanError},
    slow_start::Ramps,
    stats,
};

/// How long start-up waits for the reals' neighbour entries to resolve.
const NEIGHBOUR_WAIT: Duration = Duration::from_secs(3);
/// Every next hop is re-read this often, whatever the events said.
const RESYNC_PERIOD: Duration = Duration::from_secs(5);
/// How long a start waits for the kernel to release a link it unpinned (to attach in
/// another XDP mode).
const LINK_RELEASE_WAIT: Duration = Duration::from_secs(2);
/// Live connections are recounted from the connection table this often, while a service
/// uses `lc`, `wlc`, `sed` or `nq`...
const RECOUNT_PERIOD: Duration = Duration::from_secs(1);
/// ... or less often, so that the walk takes at most one part in this many of a CPU (a
/// full table of 1M entries takes about 0.37 s to walk and count here).
const RECOUNT_SHARE: u32 = 10;
/// After an event, wait this long for more before re-reading next hops.
const EVENT_DEBOUNCE: Duration = Duration::from_millis(20);

/// Line printed on standard output once the program is attached and the maps are filled.
pub const READY: &str = "xdpvs: ready";
/// Line printed on standard output when a reload has been applied.
pub const RELOADED: &str = "xdpvs: reloaded";

/// Why the daemon could not start, run or reload.
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
    Nexthop(#[from] NexthopError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("host settings: {0}")]
    Host(#[from] HostError),
    #[error("{0}")]
    Lock(#[from] LockError),
    #[error("signal handling: {0}")]
    Signal(#[source] std::io::Error),
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Socket(#[from] crate::api::SocketError),
    #[error("serving metrics on {address}: {source} (--metrics chooses another address, or off)")]
    Metrics {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the network namespace cookie: {0}")]
    Netns(#[source] std::io::Error),
    #[error(transparent)]
    Pins(#[from] pins::PinError),
    /// The limits would pin more kernel memory than the host has.
    #[error(
        "{path}: limits (max_services, max_reals, max_flows, max_fragments, max_persistent) would pin about \
         {need_mib} MiB of kernel memory; {available_mib} MiB is available (docs/CONFIG.md, \
         \"limits\")"
    )]
    Memory {
        path: String,
        need_mib: u64,
        available_mib: u64,
    },
    /// A reload that changes what only a restart can change.
    #[error("{path}: {what} cannot change while running; restart the daemon to apply it")]
    NeedsRestart { path: String, what: &'static str },
}

impl DaemonError {
    /// Exit status: 2 for a configuration the daemon refuses, 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            DaemonError::Config(_) | DaemonError::Plan { .. } => 2,
            DaemonError::NeedsRestart { .. } | DaemonError::Memory { .. } => 2,
            DaemonError::Pins(pins::PinError::Layout { .. }) => 2,
            _ => 1,
        }
    }
}

/// The running director. Its maps and links are pinned, so dropping it leaves the data
/// path running; `lo` forwarding is restored on drop unless [`Director::keep`] was
/// called. The managed neighbour entries are removed by [`run`] on every way out.
struct Director {
    config_path: PathBuf,
    config: Config,
    /// The configuration as programmed: `config` with the reals their checks found down
    /// marked down (before slow start scales the ramping reals' weights).
    effective: Config,
    /// Slow start: the reals whose weights ramp up.
    ramps: Ramps,
    /// Whether a check reads the data path's passive signals (kept, not looked for at
    /// each turn of the loop).
    watching_signals: bool,
    /// Health changes recorded but not yet in the data path (an apply failed).
    unapplied: Vec<(Target, OnFailure, HealthChange)>,
    /// The health checks' tasks, and each checked real's state.
    checkers: Checkers,
    health: Health,
    /// The file as a document, which API changes edit.
    doc: Document,
    /// The file's text as last read or written: an API change is refused when the file
    /// holds something else (an edit not yet reloaded would be overwritten).
    file_text: String,
    /// The configured interfaces as last seen: `None` while one is missing.
    interfaces: Vec<(String, Option<Link>)>,
    plan: Plan,
    dataplane: Dataplane,
    netlink: Netlink,
    /// Next hops by real index, as last read.
    hops: HashMap<u32, NextHop>,
    /// Cookie of the network namespace, written into the maps as their owner.
    netns: u64,
    /// Restored when the director is dropped, unless the data path is kept.
    lo: Option<LoForwarding>,
}

/// Logs a real's health change once, with its cause and its effect.
fn log_health(target: &Target, on_failure: OnFailure, change: &HealthChange) {
    use crate::health::Status;
    let cause = |c: &Option<String>| c.clone().unwrap_or_else(|| "no detail".into());
    match change {
        HealthChange::Status {
            to: Status::Up,
            after,
            ..
        } => log::info!("{target} is up after {after} good checks; it takes new flows again"),
        HealthChange::Status {
            to: Status::Draining,
            cause: c,
            ..
        } => log::info!(
            "{target} is draining: its check asked for it ({}); no new flows go to it, \
             established ones continue",
            cause(c)
        ),
        HealthChange::Status {
            to: Status::Down,
            after,
            cause: c,
            ..
        } => {
            let effect = match on_failure {
                OnFailure::Inhibit => "no new flows go to it, established ones continue",
                OnFailure::Remove => {
                    "it is taken out of the service; its established flows follow \
                     expire_nodest_conn"
                }
            };
            log::warn!(
                "{target} is down after {after} failed checks ({}); {effect}",
                cause(c)
            );
        }
        HealthChange::Weight { from, to } => log::info!(
            "{target}: its check set the weight to {} (was {})",
            to.map_or("the configured one".into(), |w| w.to_string()),
            from.map_or("the configured one".into(), |w| w.to_string())
        ),
    }
}

/// Whether a check of `config` reads the data path's passive signals.
fn watches_signals(config: &Config) -> bool {
    config.services.iter().any(|s| {
        s.reals
            .iter()
            .any(|r| s.check_of(r).is_some_and(|c| c.passive))
    })
}

/// Logs each service whose quorum was lost or regained.
fn log_quorum(changes: &[QuorumChange]) {
    for q in changes {
        if q.lost {
            log::warn!(
                "service {} lost its quorum: live weight {} is below {}; {}",
                q.service,
                q.live,
                q.threshold,
                if q.sorry {
                    "its sorry server takes the new flows"
                } else {
                    "new flows are dropped (drop_quorum_lost)"
                }
            );
        } else {
            log::info!(
                "service {} regained its quorum: live weight {} of {} needed; its reals \
                 take new flows again",
                q.service,
                q.live,
                q.threshold
            );
        }
    }
}

/// Routes to every real and SNAT pool address of a configuration, for `plan::compile`.
async fn routes(netlink: &Netlink, config: &Config) -> HashMap<IpAddr, Result<Route, String>> {
    let mut routes = HashMap::new();
    let reals = config
        .services
        .iter()
        .flat_map(|s| &s.reals)
        .map(|r| r.address);
    let pools = config
        .services
        .iter()
        .filter_map(|s| s.snat_pool.as_ref())
        .chain(&config.director.snat_pool)
        .flat_map(|p| p.addresses.iter().copied());
    for address in reals.chain(pools) {
        if let std::collections::hash_map::Entry::Vacant(slot) = routes.entry(address) {
            slot.insert(netlink.route(address).await.map_err(|e| e.to_string()));
        }
    }
    routes
}

async fn compile(
    netlink: &Netlink,
    path: &Path,
    config: &Config,
    kept: &Ids,
) -> Result<Plan, DaemonError> {
    let routes = routes(netlink, config).await;
    plan::compile_keeping(
        config,
        |a| match routes.get(&a) {
            Some(r) => r.clone(),
            None => Err(format!("no route looked up for {a}")),
        },
        kept,
    )
    .map_err(|source| DaemonError::Plan {
        path: path.display().to_string(),
        source,
    })
}

fn settings(config: &Config, owner_netns: u64, plan: &Plan) -> Settings {
    Settings {
        owner_netns,
        next_generation: plan.next_generation,
        flood_rate: config.director.flood_rate,
        frag_timeout: lb_common::conntrack::DEFAULT_FRAG_TIMEOUT,
        icmp_rate: config.director.icmp_rate,
    }
}

async fn start(
    config_path: &Path,
    options: &Options,
    netlink: &Netlink,
    neighbours: &mut ManagedNeighbours,
    probes: tokio::sync::mpsc::Sender<Probe>,
) -> Result<Director, DaemonError> {
    let text = Config::read_text(config_path)?;
    let config = Config::parse(&text, config_path)?;
    let doc = Document::parse(&text, config_path)?;
    let netns = pins::netns_cookie().map_err(DaemonError::Netns)?;
    let dir = &options.bpf_dir;
    pins::prepare(dir)?;
    let found = pins::check(dir, config.limits, netns)?;
    match &found {
        Found::Everything => {}
        Found::Nothing => check_memory(config_path, &config)?,
        Found::Partial { missing } => {
            log::warn!(
                "{} holds maps of another build (missing: {}): starting with empty maps; \
                 established flows are scheduled afresh",
                dir.display(),
                missing.join(", ")
            );
            check_memory(config_path, &config)?;
        }
    }
    let fresh = pins::FreshMaps::new(dir, &found);
    let mut dataplane = Dataplane::open(config.limits, dir, options.trace)?;
    if options.trace {
        match dataplane.take_logger() {
            Ok(logger) => {
                tokio::spawn(forward_trace(logger));
                log::info!("tracing dropped packets (--trace); logged at debug level");
            }
            Err(e) => log::warn!("--trace: the program's log cannot be read: {e}"),
        }
    }
    let kept = if found == Found::Everything {
        let ids = dataplane.adopt()?;
        log::info!(
            "adopting the data path pinned in {}: {} services and {} reals keep their ids; \
             the connection table and counters go on",
            dir.display(),
            ids.services.len(),
            ids.reals.len()
        );
        ids
    } else {
        Ids::default()
    };
    // Nothing is written into the maps before the plan compiles: a refused start leaves
    // a running data path as it was.
    // Every real starts up; a quorum the configured weights cannot reach is lost now.
    let mut health = Health::default();
    let applied = health.apply(&config);
    health.commit(&applied);
    let (effective, quorum_changes) = applied.into_parts();
    let plan = compile(netlink, config_path, &effective, &kept).await?;
    let mut interfaces: Vec<Link> = Vec::new();
    for name in &config.director.interfaces {
        interfaces.push(netlink.link_by_name(name).await?);
    }
    let mut lo = Some(LoForwarding::enable(Path::new(STATE_DIR))?);
    if found == Found::Everything
        && let Some(kept) = lo.take()
    {
        // A running data path was adopted: it needs `lo` forwarding whatever becomes of
        // this start (a refusal or a stop during start-up must not take it away).
        kept.keep();
    }
    dataplane.set_settings(settings(&config, netns, &plan))?;
    dataplane.set_interfaces(
        &interfaces
            .iter()
            .map(|l| (l.index, l.mac))
            .collect::<Vec<_>>(),
    )?;
    log_quorum(&quorum_changes);
    let mut director = Director {
        config_path: config_path.to_owned(),
        interfaces: config
            .director
            .interfaces
            .iter()
            .cloned()
            .zip(interfaces.iter().cloned().map(Some))
            .collect(),
        effective,
        ramps: Ramps::default(),
        unapplied: Vec::new(),
        watching_signals: watches_signals(&config),
        checkers: Checkers::new(probes),
        health,
        config,
        doc,
        file_text: text,
        plan,
        dataplane,
        netlink: netlink.clone(),
        hops: HashMap::new(),
        netns,
        lo,
    };
    for r in director.plan.services.iter().flat_map(|s| &s.reals) {
        neighbours
            .ensure(netlink, r.value.ifindex, r.address)
            .await?;
    }
    neighbours.forget_leftovers(netlink).await;
    // Attach only once the reals' MACs are known, so the first packets are not dropped
    // as drop_no_neighbour. A real that does not answer ARP does not hold up the start.
    let deadline = Instant::now() + NEIGHBOUR_WAIT;
    loop {
        director.read_next_hops(neighbours).await;
        let pending: Vec<IpAddr> = director
            .plan
            .services
            .iter()
            .flat_map(|s| &s.reals)
            .filter(|r| {
                director
                    .hops
                    .get(&r.index)
                    .is_none_or(|h| h.state != NH_RESOLVED)
            })
            .map(|r| r.address)
            .collect();
        if pending.is_empty() || Instant::now() >= deadline {
            for address in pending {
                log::warn!(
                    "real server {address} does not answer ARP/ND yet; its packets are dropped \
                     until it does"
                );
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    director.dataplane.apply(&director.plan, &director.hops)?;
    let mode = director.config.director.xdp_mode;
    for (interface, link) in director.interfaces.clone() {
        // A link keeps the mode it was made with: another mode needs a new link.
        let driver = mode == crate::config::XdpMode::Driver;
        if let Some(attached) = link.and_then(|l| l.xdp_driver)
            && attached != driver
            && director.dataplane.unpin_link(&interface)
        {
            log::warn!(
                "{interface}: the pinned program runs in {} mode, the file asks for {mode:?}; \
                 attaching anew (packets arriving during the switch go to the kernel)",
                if attached { "driver" } else { "generic" }
            );
            // The kernel releases an unpinned link from a work queue, a moment later; a
            // program in the other mode cannot be attached while it is there.
            let deadline = Instant::now() + LINK_RELEASE_WAIT;
            while Instant::now() < deadline {
                match director.netlink.link_by_name(&interface).await {
                    Ok(l) if l.xdp_driver.is_some() => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    _ => break,
                }
            }
        }
    }
    for interface in director.config.director.interfaces.clone() {
        if director.dataplane.attach(&interface, mode)? {
            log::info!("took over the pinned link on {interface}: program replaced atomically");
        } else {
            log::info!("attached to {interface} ({mode:?} mode)");
        }
    }
    fresh.disarm();
    for interface in director.dataplane.unpin_other_links() {
        log::info!("detached from {interface}, which the configuration no longer names");
    }
    for name in pins::foreign_pins(dir) {
        match std::fs::remove_file(dir.join(&name)) {
            Ok(()) => log::info!(
                "removed {}/{name}, a map of another build; its entries are not carried over",
                dir.display()
            ),
            Err(e) => log::warn!("removing {}/{name}: {e}", dir.display()),
        }
    }
    Ok(director)
}

impl Director {
    /// Follows the configured interfaces: one that disappeared is logged (its program and
    /// neighbour entries went with it); one that appears again, as a new device or with a
    /// new MAC, gets the program attached again and the maps that hold interfaces
    /// (`IFACES`, the redirect device map) rewritten. Returns whether anything changed.
    async fn follow_interfaces(&mut self) -> bool {
        let mut changed = false;
        let mode = self.config.director.xdp_mode;
        for i in 0..self.interfaces.len() {
            let name = self.interfaces[i].0.clone();
            let now = self.netlink.link_by_name(&name).await.ok();
            let before = self.interfaces[i].1.clone();
            match (&before, &now) {
                (Some(_), None) => {
                    log::warn!(
                        "interface {name} disappeared; its traffic is not served until it \
                         comes back"
                    );
                }
                (None, Some(link)) => {
                    log::info!("interface {name} is back (ifindex {})", link.index)
                }
                (Some(old), Some(new)) if old.index != new.index => log::info!(
                    "interface {name} was created again (ifindex {} → {})",
                    old.index,
                    new.index
                ),
                (Some(old), Some(new)) if old.mac != new.mac => {
                    log::info!("interface {name} changed its MAC to {}", mac(new.mac))
                }
                _ => continue,
            }
            changed = true;
            if let Some(link) = &now
                && before.as_ref().is_none_or(|b| b.index != link.index)
            {
                match self.dataplane.reattach(&name, mode) {
                    Ok(()) => log::info!("attached to {name} again ({mode:?} mode)"),
                    Err(e) => {
                        log::error!("attaching to {name} again: {e}");
                        continue;
                    }
                }
            }
            self.interfaces[i].1 = now;
        }
        if changed {
            let present: Vec<(u32, [u8; 6])> = self
                .interfaces
                .iter()
                .filter_map(|(_, l)| l.as_ref().map(|l| (l.index, l.mac)))
                .collect();
            if let Err(e) = self.dataplane.set_interfaces(&present) {
                log::error!("writing the interfaces: {e}");
            }
        }
        changed
    }

    /// Re-reads every real's next hop; returns how many changed. Errors are logged and
    /// leave the last known next hop in place.
    async fn read_next_hops(&mut self, neighbours: &mut ManagedNeighbours) -> usize {
        let mut links = HashMap::new();
        let mut changed = 0;
        let reals: Vec<(u32, u32, IpAddr)> = self
            .plan
            .services
            .iter()
            .flat_map(|s| &s.reals)
            .map(|r| (r.index, r.value.generation, r.address))
            .collect();
        let mut seen: HashMap<IpAddr, NextHop> = HashMap::new();
        for (index, generation, address) in reals {
            let hop = match seen.get(&address) {
                Some(h) => *h,
                None => match self.netlink.next_hop(address, &mut links).await {
                    Ok(h) => {
                        seen.insert(address, h);
                        if h.state != NH_OFFLINK
                            && let Err(e) =
                                neighbours.ensure(&self.netlink, h.ifindex, address).await
                        {
                            log::warn!("{e}");
                        }
                        h
                    }
                    Err(e) => {
                        log::warn!("next hop of real server {address}: {e}");
                        continue;
                    }
                },
            };
            let old = self.hops.insert(index, hop);
            if old != Some(hop) {
                log_change(address, old, hop);
                changed += 1;
            }
            match self.dataplane.set_next_hop(index, generation, &hop) {
                Ok(_) => {}
                Err(e) => log::warn!("writing the next hop of {address}: {e}"),
            }
        }
        changed
    }

    /// Re-reads the configuration file and applies the difference; on any error the
    /// running configuration stays in force.
    async fn reload(&mut self, neighbours: &mut ManagedNeighbours) -> Result<String, DaemonError> {
        notify(&[
            NotifyState::Reloading,
            NotifyState::monotonic_usec_now().unwrap_or(NotifyState::MonotonicUsec(0)),
        ]);
        let path = self.config_path.clone();
        let result = async {
            let text = Config::read_text(&path)?;
            let config = Config::parse(&text, &path)?;
            let doc = Document::parse(&text, &path)?;
            let summary = self.change(config, doc, false, neighbours).await?;
            self.file_text = text;
            Ok(summary)
        }
        .await;
        notify(&[NotifyState::Ready]);
        result
    }

    /// Applies a validated configuration (its document: `doc`). With `write`, the
    /// document is first written to the file atomically, once the plan compiled (so a
    /// change that cannot be applied is never written) and before the maps change (so
    /// what runs is never newer than the file). On any error nothing changes.
    async fn change(
        &mut self,
        config: Config,
        doc: Document,
        write: bool,
        neighbours: &mut ManagedNeighbours,
    ) -> Result<String, DaemonError> {
        let path = self.config_path.clone();
        let needs_restart = |what| DaemonError::NeedsRestart {
            path: path.display().to_string(),
            what,
        };
        if config.limits != self.config.limits {
            return Err(needs_restart("limits"));
        }
        if config.director.interfaces != self.config.director.interfaces {
            return Err(needs_restart("director.interfaces"));
        }
        if config.director.xdp_mode != self.config.director.xdp_mode {
            return Err(needs_restart("director.xdp_mode"));
        }
        let healthy = self.health.apply(&config);
        let mut ramps = self.ramps.clone();
        let now = std::time::Instant::now();
        ramps.begin(&self.effective, &healthy.config, now);
        let ramped = ramps.apply(&healthy.config, now);
        let plan = compile(&self.netlink, &path, &ramped, &Ids::of(&self.plan)).await?;
        let before: HashSet<(u32, u32)> = real_ids(&self.plan);
        let after: HashSet<(u32, u32)> = real_ids(&plan);
        // Everything that can fail on the way is done before the file is written; the
        // daemon's own state changes only once the maps hold the new plan.
        let mut hops = self.hops.clone();
        let mut links = HashMap::new();
        for r in plan.services.iter().flat_map(|s| &s.reals) {
            if hops.contains_key(&r.index) && before.contains(&(r.index, r.value.generation)) {
                continue;
            }
            neighbours
                .ensure(&self.netlink, r.value.ifindex, r.address)
                .await?;
            let hop = self.netlink.next_hop(r.address, &mut links).await?;
            hops.insert(r.index, hop);
        }
        hops.retain(|i, _| after.iter().any(|(j, _)| j == i));
        let text = doc.to_yaml();
        if write {
            document::write_atomically(&path, &text).map_err(|source| DaemonError::Write {
                path: path.display().to_string(),
                source,
            })?;
        }
        let applied = self
            .dataplane
            .set_settings(settings(&config, self.netns, &plan))
            .and_then(|()| self.dataplane.apply(&plan, &hops));
        if let Err(e) = applied {
            // The kernel refused a map write: put the file and the maps back as they were.
            if write && let Err(w) = document::write_atomically(&path, &self.file_text) {
                log::error!("putting {} back: {w}", path.display());
            }
            if let Err(r) = self.dataplane.apply(&self.plan, &self.hops) {
                log::error!("re-applying the running configuration: {r}");
            }
            return Err(e.into());
        }
        self.hops = hops;
        let addresses: HashSet<IpAddr> = plan
            .services
            .iter()
            .flat_map(|s| &s.reals)
            .map(|r| r.address)
            .collect();
        neighbours
            .retain(&self.netlink, |a| addresses.contains(&a))
            .await;
        let summary = format!(
            "services={} reals={} added={} removed={}",
            plan.services.len(),
            after.len(),
            after.difference(&before).count(),
            before.difference(&after).count()
        );
        self.plan = plan;
        self.checkers.follow(&config);
        self.health.retain(&config);
        self.health.commit(&healthy);
        self.watching_signals = watches_signals(&config);
        if !self.watching_signals {
            self.health.keep_signals(&[]);
        }
        let (effective, quorum_changes) = healthy.into_parts();
        // Health changes waiting for the data path are applied now: logged once, here.
        for (target, on_failure, change) in self.unapplied.drain(..) {
            log_health(&target, on_failure, &change);
        }
        log_quorum(&quorum_changes);
        self.effective = effective;
        self.ramps = ramps;
        self.config = config;
        self.doc = doc;
        if write {
            self.file_text = text;
        }
        Ok(summary)
    }

    /// Answers an API request. A change is made to a copy of the document, validated as
    /// the file it becomes, written and applied ([`Director::change`]); a refused one
    /// changes nothing.
    async fn handle(
        &mut self,
        request: Request,
        neighbours: &mut ManagedNeighbours,
    ) -> Result<Answer, Refusal> {
        let path = self.config_path.clone();
        let mut doc = self.doc.clone();
        let what = request.describe();
        let edited = match request {
            Request::List => return self.list().map(Answer::Json),
            Request::Metrics => return self.metrics().map(Answer::Metrics),
            Request::Connections => return self.connections().map(Answer::Json),
            Request::Save => return Ok(Answer::Text(self.doc.to_yaml())),
            Request::Reload => {
                return match self.reload(neighbours).await {
                    Ok(summary) => {
                        log::info!("reloaded {} (API): {summary}", path.display());
                        Ok(Answer::Json(serde_json::json!({ "applied": summary })))
                    }
                    Err(e) => Err(refusal(&e)),
                };
            }
            Request::Restore(text) => {
                if text.len() as u64 > crate::config::MAX_FILE_BYTES {
                    return Err(Refusal::new(413, "the configuration is larger than 64 MiB"));
                }
                let label = Path::new("restored configuration");
                Config::parse(&text, label).map_err(|e| refusal(&e.into()))?;
                doc = Document::parse(&text, label).map_err(|e| refusal(&e.into()))?;
                Ok(())
            }
            Request::AddService(id, new) => doc.add_service(id, &new),
            Request::EditService(id, change) => doc.edit_service(id, &change),
            Request::DeleteService(id) => doc.delete_service(id),
            Request::AddReal(id, a, p, change) => doc.add_real(id, a, p, &change),
            Request::EditReal(id, a, p, change) => doc.edit_real(id, a, p, &change),
            Request::DeleteReal(id, a, p) => doc.delete_real(id, a, p),
        };
        match Config::read_text(&path) {
            Ok(now) if now == self.file_text => {}
            Ok(_) => {
                return Err(Refusal::new(
                    409,
                    format!(
                        "{} was edited since the daemon read it; apply it first (`xdpvs \
                         reload`) or undo the edit: a change through the API would overwrite it",
                        path.display()
                    ),
                ));
            }
            Err(e) => {
                return Err(Refusal::new(
                    409,
                    format!("{e}; the daemon writes only over the file it read"),
                ));
            }
        }
        edited.map_err(|e| match e {
            EditError::NotFound(_) => Refusal::new(404, e.to_string()),
            EditError::Exists(_) => Refusal::new(409, e.to_string()),
            EditError::Invalid(_) => Refusal::new(400, e.to_string()),
        })?;
        // Positions in a refusal are those of the file as it would be written.
        let label = PathBuf::from(format!("{} as changed", path.display()));
        let config = doc.validate(&label).map_err(|e| refusal(&e.into()))?;
        match self.change(config, doc, true, neighbours).await {
            Ok(summary) => {
                log::info!("changed by the API ({what}): {summary}");
                Ok(Answer::Json(serde_json::json!({ "applied": summary })))
            }
            Err(e) => {
                log::warn!("API change refused ({what}): {e}");
                Err(refusal(&e))
            }
        }
    }

    /// Services, reals, counters and connection counts, for `xdpvs list`.
    fn list(&self) -> Result<serde_json::Value, Refusal> {
        let (snapshot, flows) = self.readings()?;
        Ok(stats::listing(
            &self.effective,
            &self.plan,
            &snapshot,
            &flows,
            &self.health,
        ))
    }

    /// The Prometheus metrics, read from the maps now.
    fn metrics(&self) -> Result<String, Refusal> {
        let (snapshot, flows) = self.readings()?;
        let tables = crate::metrics::Tables {
            flows: &flows,
            flow_capacity: self.config.limits.max_flows,
        };
        Ok(crate::metrics::render(
            &self.effective,
            &self.plan,
            &snapshot,
            &tables,
            &self.health,
        ))
    }

    /// The live connection-table entries, for `xdpvs list -c`.
    fn connections(&self) -> Result<serde_json::Value, Refusal> {
        let flows = self.dataplane.flows().map_err(|e| refusal(&e.into()))?;
        Ok(stats::connections(&self.plan, &flows))
    }

    /// The counters and the connection table's entries, read now.
    fn readings(&self) -> Result<(Snapshot, Vec<(FlowKeyV4, Flow)>), Refusal> {
        let snapshot = self
            .dataplane
            .snapshot(&self.plan)
            .map_err(|e| refusal(&e.into()))?;
        let flows = self.dataplane.flows().map_err(|e| refusal(&e.into()))?;
        Ok((snapshot, flows))
    }

    /// Records a health check's result; a real that went down, came back, asked for a
    /// drain or got a new weight is applied at once, then logged once with its cause.
    async fn on_probe(&mut self, probe: Probe, neighbours: &mut ManagedNeighbours) {
        let target = probe.target.clone();
        let Some(check) = self.checkers.check_of(&target, probe.generation) else {
            return;
        };
        let on_failure = check.on_failure;
        let Some(change) = self.health.record(probe, check) else {
            return;
        };
        // Logged once applied (by `change`): the line means what it says.
        self.unapplied.push((target.clone(), on_failure, change));
        self.apply_health(neighbours).await;
    }

    /// Applies the health changes waiting for the data path; one that cannot be applied
    /// now waits for the next try (each second) or the next change.
    async fn apply_health(&mut self, neighbours: &mut ManagedNeighbours) {
        let (config, doc) = (self.config.clone(), self.doc.clone());
        if let Err(e) = self.change(config, doc, false, neighbours).await {
            log::error!(
                "applying {} health changes (tried again each second): {e}",
                self.unapplied.len()
            );
        }
    }

    /// Reads each passively watched real's handshakes, SYN-ACKs and resets; a suspect
    /// real is checked at once.
    fn read_signals(&mut self) {
        let mut watched = Vec::new();
        for (s, plan) in self.effective.services.iter().zip(&self.plan.services) {
            for (r, rp) in s.reals.iter().zip(&plan.reals) {
                if s.check_of(r).is_some_and(|c| c.passive) {
                    watched.push((Target::of(s, r), rp.index));
                }
            }
        }
        let indices: Vec<u32> = watched.iter().map(|(_, i)| *i).collect();
        let counters = match self.dataplane.real_counters(&indices) {
            Ok(c) => c,
            Err(e) => {
                log::warn!("reading the passive health signals: {e}");
                return;
            }
        };
        for ((target, index), c) in watched.iter().zip(counters) {
            let signals = crate::health::Signals {
                real: *index,
                syns: c.syns,
                synacks: c.synacks,
                resets: c.resets,
            };
            if let Some(why) = self.health.signals(target, signals)
                && self.checkers.nudge(target)
            {
                log::info!("{target} is suspect ({why}); checking it now");
            }
        }
        let seen: Vec<Target> = watched.into_iter().map(|(t, _)| t).collect();
        self.health.keep_signals(&seen);
    }

    /// Leaves the data path running after the director is dropped: `lo` forwarding stays
    /// on (its saved value stays on disk for the next daemon or `xdpvs teardown`).
    fn keep(&mut self) {
        if let Some(lo) = self.lo.take() {
            lo.keep();
        }
    }

    /// Applies the next step of the slow-start ramps under way.
    async fn step_ramps(&mut self, neighbours: &mut ManagedNeighbours) {
        let (config, doc) = (self.config.clone(), self.doc.clone());
        if let Err(e) = self.change(config, doc, false, neighbours).await {
            log::error!("applying a slow-start step: {e}");
            // The step counts as taken, so a failing apply is not retried in a loop; the
            // next step (or change) tries again.
            let _ = self.ramps.apply(&self.effective, std::time::Instant::now());
        }
    }

    /// Whether a service schedules by live connection counts (`lc`, `wlc`, `sed`, `nq`).
    fn counts_connections(&self) -> bool {
        self.plan
            .services
            .iter()
            .any(|s| s.scheduler.counts_connections())
    }

    /// Recounts every real's live connections from the connection table for the
    /// least-connection schedulers (docs/SCHEDULERS.md).
    fn recount(&mut self) {
        let counted = self.dataplane.flows().and_then(|flows| {
            let counts = crate::stats::connection_counts(&self.plan, &flows);
            self.dataplane.write_connection_counts(&self.plan, &counts)
        });
        if let Err(e) = counted {
            log::warn!("counting connections for lc/wlc/sed/nq: {e}");
        }
    }

    fn print_report(&self) {
        match self.dataplane.snapshot(&self.plan) {
            Ok(snapshot) => say(&stats::report(&self.plan, &snapshot)),
            Err(e) => log::warn!("reading counters: {e}"),
        }
    }

    fn is_real(&self, address: IpAddr) -> bool {
        self.plan
            .services
            .iter()
            .flat_map(|s| &s.reals)
            .any(|r| r.address == address)
    }
}

fn real_ids(plan: &Plan) -> HashSet<(u32, u32)> {
    plan.services
        .iter()
        .flat_map(|s| &s.reals)
        .map(|r| (r.index, r.value.generation))
        .collect()
}

fn mac(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

fn log_change(address: IpAddr, old: Option<NextHop>, new: NextHop) {
    match (old.map(|o| o.state), new.state) {
        (_, NH_OFFLINK) => log::warn!(
            "real server {address} is now reached through a gateway; direct routing cannot \
             reach it and its packets are dropped (drop_real_offlink)"
        ),
        (Some(NH_RESOLVED), NH_RESOLVED) => log::info!(
            "real server {address}: next hop now {} on ifindex {}",
            mac(new.dmac),
            new.ifindex
        ),
        (_, NH_RESOLVED) => log::info!(
            "real server {address} resolved: {} on ifindex {}",
            mac(new.dmac),
            new.ifindex
        ),
        (Some(_), _) => log::warn!("real server {address}: next hop unresolved"),
        (None, _) => {}
    }
}

/// Unblocks the signals the daemon acts on. A signal mask is inherited across exec, so a
/// parent that blocked them (a test harness, a supervisor) would leave the daemon deaf.
fn unblock_signals() {
    // SAFETY: sigset manipulation on a zeroed, owned set; pthread_sigmask on this thread,
    // which is the one the runtime's signal handling is set up from.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGUSR1, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

struct Signals {
    term: Signal,
    int: Signal,
    usr1: Signal,
    hup: Signal,
}

fn signals() -> Result<Signals, DaemonError> {
    let s = |kind| signal(kind).map_err(DaemonError::Signal);
    Ok(Signals {
        term: s(SignalKind::terminate())?,
        int: s(SignalKind::interrupt())?,
        usr1: s(SignalKind::user_defined1())?,
        hup: s(SignalKind::hangup())?,
    })
}

/// What `xdpvs daemon` does with the data path when it stops on SIGTERM or SIGINT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnExit {
    /// Leave the program attached and the maps pinned: traffic keeps flowing with the
    /// last configuration, and the next daemon adopts them (the default).
    Keep,
    /// Detach the program and remove the pins, as `xdpvs teardown` does.
    Detach,
}

/// How the daemon is run (command-line options, not configuration).
#[derive(Clone, Debug)]
pub struct Options {
    /// Where maps and links are pinned (bpffs).
    pub bpf_dir: PathBuf,
    pub on_exit: OnExit,
    /// The API's Unix socket.
    pub socket: PathBuf,
    /// Where Prometheus metrics are served (`None`: not served).
    pub metrics: Option<std::net::SocketAddr>,
    /// The program logs dropped packets (aya-log), forwarded to the daemon's log.
    pub trace: bool,
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config_path: &Path, options: &Options) -> Result<(), DaemonError> {
    unblock_signals();
    let mut signals = signals()?;
    // Before anything is touched: a second daemon must leave the first one's state alone.
    let _lock = InstanceLock::acquire(Path::new(STATE_DIR))?;
    let listener = api::bind(&options.socket)?;
    let (calls_tx, mut calls) = tokio::sync::mpsc::channel(16);
    let metrics = match options.metrics {
        Some(at) => Some(tokio::net::TcpListener::bind(at).await.map_err(|source| {
            DaemonError::Metrics {
                address: at.to_string(),
                source,
            }
        })?),
        None => None,
    };
    if let Some(listener) = metrics {
        tokio::spawn(api::serve_metrics(listener, calls_tx.clone()));
    }
    let server = tokio::spawn(api::serve(listener, calls_tx));
    let netlink = Netlink::open()?;
    let mut neighbours = ManagedNeighbours::open(Path::new(STATE_DIR));
    let result = serve(
        config_path,
        options,
        &netlink,
        &mut neighbours,
        &mut signals,
        &mut calls,
    )
    .await;
    server.abort();
    let _ = std::fs::remove_file(&options.socket);
    neighbours.release(&netlink).await;
    result
}

async fn serve(
    config_path: &Path,
    options: &Options,
    netlink: &Netlink,
    neighbours: &mut ManagedNeighbours,
    signals: &mut Signals,
    calls: &mut tokio::sync::mpsc::Receiver<Call>,
) -> Result<(), DaemonError> {
    let mut events = Events::open()?;
    let (probe_tx, mut probes) = tokio::sync::mpsc::channel(1024);
    // A stop asked for during start-up is obeyed at once: what start() made so far is
    // dropped (`lo` forwarding restored; what is pinned stays), and `run` removes the
    // neighbour entries.
    let mut director = tokio::select! {
        director = start(config_path, options, netlink, neighbours, probe_tx) => director?,
        _ = signals.term.recv() => {
            log::info!("stopped during start-up");
            return Ok(());
        }
        _ = signals.int.recv() => {
            log::info!("stopped during start-up");
            return Ok(());
        }
    };
    let reals: usize = director.plan.services.iter().map(|s| s.reals.len()).sum();
    director.checkers.follow(&director.config);
    say(&format!(
        "{READY} services={} reals={}\n",
        director.plan.services.len(),
        reals
    ));
    notify(&[
        NotifyState::Ready,
        NotifyState::Status(&format!(
            "serving {} services, {reals} reals",
            director.plan.services.len()
        )),
    ]);
    // systemd's watchdog, when the unit sets one: pinged from this loop, so a loop that
    // stops turning is restarted.
    let mut watchdog = tokio::time::interval(
        sd_notify::watchdog_enabled().map_or(Duration::from_secs(3600), |d| d / 2),
    );
    let watching = sd_notify::watchdog_enabled().is_some();
    let mut resync = tokio::time::interval(RESYNC_PERIOD);
    let mut passive = tokio::time::interval(crate::health::SIGNAL_PERIOD);
    passive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retry = tokio::time::interval(Duration::from_secs(1));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_recount = Instant::now() + RECOUNT_PERIOD;
    let mut dirty: Option<Instant> = None;
    loop {
        let debounce = dirty.unwrap_or_else(|| Instant::now() + RESYNC_PERIOD);
        let ramp_due = director.ramps.next_due();
        tokio::select! {
            _ = signals.term.recv() => break,
            _ = signals.int.recv() => break,
            _ = signals.usr1.recv() => director.print_report(),
            Some(probe) = probes.recv() => director.on_probe(probe, neighbours).await,
            Some(call) = calls.recv() => {
                let answer = director.handle(call.request, neighbours).await;
                let _ = call.reply.send(answer);
            }
            _ = signals.hup.recv() => match director.reload(neighbours).await {
                Ok(summary) => {
                    log::info!("reloaded {}", config_path.display());
                    say(&format!("{RELOADED} {summary}\n"));
                }
                Err(e) => log::error!("reload refused, the running configuration stays: {e}"),
            },
            change = events.next() => match change {
                Some(Change::Neighbour(a)) if !director.is_real(a) => {}
                Some(_) => {
                    dirty.get_or_insert_with(|| Instant::now() + EVENT_DEBOUNCE);
                }
                None => {
                    log::warn!("rtnetlink events ended; resubscribing");
                    events = Events::open()?;
                    dirty = Some(Instant::now());
                }
            },
            _ = tokio::time::sleep_until(debounce), if dirty.is_some() => {
                dirty = None;
                director.follow_interfaces().await;
                director.read_next_hops(neighbours).await;
            }
            _ = resync.tick() => {
                director.follow_interfaces().await;
                director.read_next_hops(neighbours).await;
            }
            _ = tokio::time::sleep_until(next_recount), if director.counts_connections() => {
                let started = Instant::now();
                director.recount();
                let took = started.elapsed();
                next_recount = started + RECOUNT_PERIOD.max(took * RECOUNT_SHARE);
            }
            _ = tokio::time::sleep_until(
                ramp_due.map_or(debounce, Instant::from_std)
            ), if ramp_due.is_some() => director.step_ramps(neighbours).await,
            _ = passive.tick(), if director.watching_signals => director.read_signals(),
            _ = retry.tick(), if !director.unapplied.is_empty() => {
                director.apply_health(neighbours).await;
            }
            _ = watchdog.tick(), if watching => notify(&[NotifyState::Watchdog]),
        }
    }
    notify(&[NotifyState::Stopping]);
    director.print_report();
    match options.on_exit {
        OnExit::Keep => {
            director.keep();
            log::info!(
                "stopped; the data path stays attached and forwards with the last \
                 configuration (pinned in {}); `xdpvs teardown` removes it",
                options.bpf_dir.display()
            );
        }
        OnExit::Detach => {
            director.dataplane.detach_all();
            drop(director);
            crate::host::restore_lo_forwarding(Path::new(STATE_DIR))?;
            let removed = pins::remove_all(&options.bpf_dir)?;
            log::info!(
                "stopped; detached and removed the pins in {} ({removed})",
                options.bpf_dir.display()
            );
        }
    }
    Ok(())
}

/// Removes what a daemon left running: detaches the program, removes the pinned maps
/// (the connection table and counters go), puts `lo` forwarding back and removes the
/// neighbour entries it made. Refused while a daemon runs in this namespace.
pub async fn teardown(bpf_dir: &Path) -> Result<String, DaemonError> {
    let _lock = InstanceLock::acquire(Path::new(STATE_DIR))?;
    let netns = pins::netns_cookie().map_err(DaemonError::Netns)?;
    pins::check_owner(bpf_dir, netns)?;
    let removed = pins::remove_all(bpf_dir)?;
    crate::host::restore_lo_forwarding(Path::new(STATE_DIR))?;
    let netlink = Netlink::open()?;
    let mut neighbours = ManagedNeighbours::open(Path::new(STATE_DIR));
    neighbours.forget_leftovers(&netlink).await;
    Ok(if removed.links.is_empty() && removed.maps == 0 {
        format!("nothing pinned in {}", bpf_dir.display())
    } else {
        format!("removed from {}: {removed}", bpf_dir.display())
    })
}

/// Validates a configuration file without touching the kernel; returns a summary.
pub fn check_config(config_path: &Path) -> Result<String, DaemonError> {
    let config = Config::load(config_path)?;
    let reals: usize = config.services.iter().map(|s| s.reals.len()).sum();
    let cpus = possible_cpus();
    Ok(format!(
        "{}: ok, {} services, {} reals, interfaces {}; its limits pin about {} MiB of kernel \
         memory on this host's {cpus} CPUs",
        config_path.display(),
        config.services.len(),
        reals,
        config.director.interfaces.join(","),
        config.limits.kernel_bytes(cpus) >> 20
    ))
}

/// CPUs the kernel sizes per-CPU maps for.
fn possible_cpus() -> u64 {
    aya::util::nr_cpus().map_or(1, |n| n as u64)
}

/// `MemAvailable` of /proc/meminfo, in bytes.
fn memory_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Refuses limits whose maps would pin more kernel memory than the host has available,
/// before anything is created, naming the limits.
fn check_memory(path: &Path, config: &Config) -> Result<(), DaemonError> {
    let need = config.limits.kernel_bytes(possible_cpus());
    match memory_available() {
        Some(available) if need > available => Err(DaemonError::Memory {
            path: path.display().to_string(),
            need_mib: need >> 20,
            available_mib: available >> 20,
        }),
        _ => Ok(()),
    }
}

/// Forwards the program's log records to the daemon's log as they arrive.
async fn forward_trace(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns its ring buffer's descriptor, which stays open and the same
    // until the logger (moved into the AsyncFd) is dropped.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let mut logger = match registered {
        Ok(l) => l,
        Err(e) => {
            log::warn!("--trace: {e}");
            return;
        }
    };
    loop {
        let Ok(mut guard) = logger.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}

/// Writes to standard output, which may be gone (a closed pipe, a journal that went away):
/// the daemon goes on without it rather than panicking as `print!` would.
fn say(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if out
        .write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        log::debug!("standard output is closed");
    }
}

/// Tells the service manager (systemd, `Type=notify`) where the daemon is; nothing
/// without `NOTIFY_SOCKET`. A failure is logged: the service manager is not the director's
/// business.
fn notify(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        log::warn!("sd_notify: {e}");
    }
}

/// A daemon error as an API refusal: what the operator sent is refused with 400, what
/// failed on the director with 500.
fn refusal(e: &DaemonError) -> Refusal {
    let status = if e.exit_code() == 2 { 400 } else { 500 };
    Refusal::new(status, with_causes(e))
}

/// An error with every cause under it that its message does not already say, down to
/// the kernel's `os error`: the one line an operator reads.
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}
