//! The daemon's configuration file: YAML, read with spans so every error names the file,
//! line, column and field (`services[0].reals[2].weight`). Validation is complete before
//! anything touches the kernel: a bad file attaches nothing.
//!
//! The schema is documented with an example in docs/CONFIG.md.

use std::{
    collections::HashSet,
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::scheduler::{DEFAULT_MAGLEV_SIZE, MAGLEV_SIZES, is_prime};

mod check;
use check::RawCheck;
pub use check::{
    Check, CheckKind, DNS_TYPES, DnsCheck, ExecCheck, HttpCheck, OnFailure, ProbeSpec, TlsCheck,
    UdpCheck,
};

/// Highest weight a real server may have, as in ipvsadm.
pub const MAX_WEIGHT: u32 = 65_535;

/// A configuration error, worded for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Larger than any configuration the limits allow (an endless or wrong file).
    #[error("{path}: larger than {limit} bytes; not a configuration file")]
    TooLarge { path: PathBuf, limit: u64 },
    /// YAML syntax, an unknown field, or a value of the wrong type.
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A well-formed value that is not allowed.
    #[error("{path}:{at}: {message}")]
    Invalid {
        path: PathBuf,
        at: Origin,
        message: String,
    },
}

/// Where a value came from: line, column and field path, for error messages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    pub line: u32,
    pub column: u32,
    pub field: String,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.field)
    }
}

/// Transport protocol of a virtual service.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => lb_common::IPPROTO_TCP,
            Protocol::Udp => lb_common::IPPROTO_UDP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// Scheduler, by its LVS name.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Scheduler {
    /// Round robin: the weighted reals in turn.
    Rr,
    /// Weighted round robin: IPVS's interleaving, each real in proportion to its weight.
    Wrr,
    /// Source hashing: the client address picks the real.
    Sh,
    /// Destination hashing: the destination address picks the real.
    Dh,
    /// Maglev hashing of the client address.
    Mh,
    /// Least connections.
    Lc,
    /// Weighted least connections.
    Wlc,
    /// Shortest expected delay.
    Sed,
    /// Never queue.
    Nq,
}

impl Scheduler {
    /// Whether a hash of the flow picks the real from a Maglev table (`table_size`).
    pub fn hashes(self) -> bool {
        matches!(self, Scheduler::Sh | Scheduler::Dh | Scheduler::Mh)
    }

    /// Whether the real's live connection counts pick it (`lc`, `wlc`, `sed`, `nq`).
    pub fn counts_connections(self) -> bool {
        matches!(
            self,
            Scheduler::Lc | Scheduler::Wlc | Scheduler::Sed | Scheduler::Nq
        )
    }
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scheduler::Rr => "rr",
            Scheduler::Wrr => "wrr",
            Scheduler::Sh => "sh",
            Scheduler::Dh => "dh",
            Scheduler::Mh => "mh",
            Scheduler::Lc => "lc",
            Scheduler::Wlc => "wlc",
            Scheduler::Sed => "sed",
            Scheduler::Nq => "nq",
        })
    }
}

/// Forwarding method, by its LVS name.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Forwarding {
    /// Direct routing (`ipvsadm -g`): the real answers the client directly.
    #[default]
    Dr,
    /// Masquerading (`ipvsadm -m`): the destination becomes the real's address and
    /// port; the real routes its answers through the director.
    Nat,
    /// Full NAT: as `nat`, and the source becomes an address and port of the SNAT pool,
    /// so the reals answer the director whatever their routes.
    Fullnat,
}

impl fmt::Display for Forwarding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Forwarding::Dr => "dr",
            Forwarding::Nat => "nat",
            Forwarding::Fullnat => "fullnat",
        })
    }
}

/// Source addresses and ports for full-NAT flows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnatPool {
    /// Addresses of the director (checked against its interfaces when applied).
    pub addresses: Vec<IpAddr>,
    pub first_port: u16,
    pub last_port: u16,
    pub origin: Origin,
}

/// Default full-NAT source ports.
pub const DEFAULT_SNAT_PORTS: (u16, u16) = (1024, 65535);

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// In the driver (native XDP): the fast path. Fails if the driver lacks XDP.
    #[default]
    Driver,
    /// In the generic (skb) path: works on any interface, much slower. For testing.
    Generic,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub director: Director,
    pub limits: Limits,
    pub services: Vec<Service>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Director {
    /// Interfaces the XDP program is attached to.
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    /// Seed of the flow hash. Directors that share it (and the services) choose alike.
    pub hash_seed: u32,
    /// Connection-table timeouts for services that set none.
    pub timeouts: Timeouts,
    /// Flood guard: new entries per second per CPU (0 = no limit).
    pub flood_rate: u32,
    /// ICMP time exceeded messages per second per CPU (0 = none sent).
    pub icmp_rate: u32,
    /// LVS `expire_nodest_conn` for services that do not say.
    pub expire_nodest_conn: bool,
    /// The SNAT pool of full-NAT services that name none.
    pub snat_pool: Option<SnatPool>,
}

/// Idle timeouts of connection-table entries, in seconds (`ipvsadm --set tcp tcpfin udp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp: u32,
    pub tcpfin: u32,
    pub udp: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        use lb_common::conntrack::{
            DEFAULT_TIMEOUTS, STATE_TCP_ESTABLISHED, STATE_TCP_FIN, STATE_UDP,
        };
        Timeouts {
            tcp: DEFAULT_TIMEOUTS[STATE_TCP_ESTABLISHED as usize],
            tcpfin: DEFAULT_TIMEOUTS[STATE_TCP_FIN as usize],
            udp: DEFAULT_TIMEOUTS[STATE_UDP as usize],
        }
    }
}

/// Longest timeout accepted: a week (LVS takes any u32; a longer idle flow is a leak).
pub const MAX_TIMEOUT: u32 = 7 * 24 * 3600;

/// Map capacities, fixed when the program is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_services: u32,
    pub max_reals: u32,
    /// Entries of the IPv4 connection table.
    pub max_flows: u32,
    /// Fragmented datagrams tracked at once (first fragment seen, later ones to come).
    pub max_fragments: u32,
    /// Persistence templates (clients of persistent services) kept at once.
    pub max_persistent: u32,
}

/// Kernel memory of one persistence template (`memlock`, LRU hash, 8-byte key, 16-byte
/// value), measured on 6.18.
const PERSIST_BYTES: u64 = 88;

impl Limits {
    /// Kernel memory the maps of these limits pin, in bytes, on a host with `cpus`
    /// possible CPUs: the kernel's own count (`memlock` in /proc/PID/fdinfo) per entry,
    /// measured on 6.18 (docs/CONFIG.md, "Kernel memory"). Scheduling tables are not
    /// in it: each configured service's is made at its own size when it is applied.
    pub fn kernel_bytes(&self, cpus: u64) -> u64 {
        let per_cpu = 8 + 24 * cpus;
        let rr_cursor = 8 + 8 * cpus;
        let service = 8 + 148 + 100 + 56 + per_cpu + rr_cursor + 8;
        let real = 120 + per_cpu;
        u64::from(self.max_services) * service
            + u64::from(self.max_reals) * real
            + 128 * u64::from(self.max_flows)
            + 128 * u64::from(self.max_fragments)
            + PERSIST_BYTES * u64::from(self.max_persistent)
            + 256 * 1024
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_services: lb_common::maps::MAX_SERVICES,
            max_reals: lb_common::maps::MAX_REALS,
            max_flows: lb_common::maps::MAX_FLOWS,
            max_fragments: lb_common::maps::MAX_FRAGMENTED,
            max_persistent: lb_common::maps::MAX_PERSISTENT,
        }
    }
}

/// A virtual service.
#[derive(Clone, Debug)]
pub struct Service {
    pub name: Option<String>,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub scheduler: Scheduler,
    /// `sh`, `dh`, `mh`: positions in the Maglev table (a prime).
    pub table_size: u32,
    /// `sh`, `mh`: the client's port is hashed with its address (IPVS `sh-port`, `mh-port`).
    pub hash_port: bool,
    /// LVS persistence (`-p`, `-M`).
    pub persistence: Option<Persistence>,
    /// Slow start of reals that begin taking new flows.
    pub slow_start: Option<SlowStart>,
    pub forwarding: Forwarding,
    /// The director's timeouts unless the service sets its own.
    pub timeouts: Timeouts,
    /// LVS `expire_nodest_conn`: an entry whose real was removed is deleted at its next
    /// packet (true) or its packets are dropped until it times out (false).
    pub expire_nodest_conn: bool,
    /// Full-NAT: the service's own pool, or the director's.
    pub snat_pool: Option<SnatPool>,
    /// The reals' health check, if any (a real may have its own).
    pub check: Option<Check>,
    /// Least total weight of live reals the service needs (keepalived's `quorum`);
    /// `None`: no quorum is kept.
    pub quorum: Option<u32>,
    /// The quorum is lost below `quorum - hysteresis` and regained at
    /// `quorum + hysteresis`.
    pub hysteresis: u32,
    /// Takes the new flows while the quorum is lost.
    pub sorry: Option<Sorry>,
    /// Set by the daemon while the quorum is lost (not read from the file).
    pub quorum_lost: bool,
    pub reals: Vec<Real>,
    pub origin: Origin,
}

/// A service's sorry server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sorry {
    pub address: IpAddr,
    pub port: u16,
}

impl Service {
    /// The check a real of this service gets: its own, or the service's.
    pub fn check_of<'a>(&'a self, real: &'a Real) -> Option<&'a Check> {
        real.check.as_ref().or(self.check.as_ref())
    }
}

/// Persistence: each client (its address under `netmask`) stays on one real while it has
/// flows and for `timeout` seconds after their last packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Persistence {
    pub timeout: u32,
    pub netmask: std::net::Ipv4Addr,
}

/// Slow start: a real that begins taking new flows reaches its weight in `steps` equal
/// steps over `period` seconds (docs/SCHEDULERS.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlowStart {
    pub period: u32,
    pub steps: u32,
}

/// ipvsadm's default persistence timeout, in seconds.
pub const DEFAULT_PERSISTENCE_TIMEOUT: u32 = 300;
/// The longest persistence timeout accepted: a year.
pub const MAX_PERSISTENCE_TIMEOUT: u32 = 366 * 86_400;

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}:{}", self.protocol, self.address, self.port)
    }
}

/// A real server of a virtual service.
#[derive(Clone, Debug)]
pub struct Real {
    pub address: IpAddr,
    pub port: u16,
    pub weight: u32,
    /// Drained (`xdpvs real drain`): no new flows, its weight kept for `undrain`.
    pub drained: bool,
    /// Its own health check, in place of the service's.
    pub check: Option<Check>,
    /// Down by its health check (set by the daemon, not read from the file): no new
    /// flows, as drained.
    pub down: bool,
    /// Its check's answer asked for a drain (HTTP 503): no new flows, no alarm (set by
    /// the daemon).
    pub draining: bool,
    /// Held out of scheduling while its service's quorum is lost (set by the daemon).
    pub held: bool,
    /// The service's sorry server, put in by the daemon while the quorum is lost.
    pub sorry: bool,
    pub origin: Origin,
}

impl Real {
    /// The weight the scheduler uses: 0 while drained, down, draining or held.
    pub fn scheduling_weight(&self) -> u32 {
        if self.drained || self.down || self.draining || self.held {
            0
        } else {
            self.weight
        }
    }
}

// ---- the file as written ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    director: RawDirector,
    #[serde(default)]
    limits: Option<RawLimits>,
    #[serde(default)]
    services: Vec<Spanned<RawService>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDirector {
    interfaces: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    xdp_mode: XdpMode,
    #[serde(default)]
    hash_seed: u32,
    #[serde(default)]
    timeouts: Option<Spanned<RawTimeouts>>,
    #[serde(default)]
    flood_rate: Option<u32>,
    #[serde(default)]
    icmp_rate: Option<u32>,
    #[serde(default)]
    expire_nodest_conn: Option<bool>,
    #[serde(default)]
    snat_pool: Option<Spanned<RawSnatPool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSnatPool {
    addresses: Spanned<Vec<Spanned<IpAddr>>>,
    #[serde(default)]
    ports: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlowStart {
    period: Spanned<u32>,
    #[serde(default)]
    steps: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPersistence {
    #[serde(default)]
    timeout: Option<Spanned<u32>>,
    #[serde(default)]
    netmask: Option<Spanned<std::net::Ipv4Addr>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    tcp: Option<Spanned<u32>>,
    tcpfin: Option<Spanned<u32>>,
    udp: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_services: Option<Spanned<u32>>,
    max_reals: Option<Spanned<u32>>,
    max_flows: Option<Spanned<u32>>,
    max_fragments: Option<Spanned<u32>>,
    max_persistent: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    #[serde(default)]
    name: Option<String>,
    address: Spanned<IpAddr>,
    port: Spanned<u16>,
    protocol: Protocol,
    scheduler: Scheduler,
    #[serde(default)]
    table_size: Option<Spanned<u32>>,
    #[serde(default)]
    hash_port: Option<Spanned<bool>>,
    #[serde(default)]
    persistence: Option<Spanned<RawPersistence>>,
    #[serde(default)]
    slow_start: Option<Spanned<RawSlowStart>>,
    #[serde(default)]
    forwarding: Forwarding,
    #[serde(default)]
    timeouts: Option<Spanned<RawTimeouts>>,
    #[serde(default)]
    expire_nodest_conn: Option<bool>,
    #[serde(default)]
    snat_pool: Option<Spanned<RawSnatPool>>,
    #[serde(default)]
    reals: Vec<Spanned<RawReal>>,
    #[serde(default)]
    check: Option<Spanned<RawCheck>>,
    #[serde(default)]
    quorum: Option<Spanned<u32>>,
    #[serde(default)]
    hysteresis: Option<Spanned<u32>>,
    #[serde(default)]
    sorry: Option<Spanned<RawSorry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSorry {
    address: Spanned<IpAddr>,
    #[serde(default)]
    port: Option<Spanned<u16>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReal {
    address: Spanned<IpAddr>,
    #[serde(default)]
    port: Option<Spanned<u16>>,
    #[serde(default = "default_weight")]
    weight: Spanned<u32>,
    #[serde(default)]
    drained: bool,
    #[serde(default)]
    check: Option<Spanned<RawCheck>>,
}

fn default_weight() -> Spanned<u32> {
    Spanned::new(
        1,
        serde_saphyr::Location::UNKNOWN,
        serde_saphyr::Location::UNKNOWN,
    )
}

/// Largest configuration file read: 64 MiB, far above the largest configuration the
/// limits allow written out in YAML, so an endless input (`/dev/zero`) or a wrong file
/// ends here instead of in memory.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// The YAML parser's budget: the library's defaults (nesting depth 64, 50,000 aliases
/// and anchors, alias expansion bounded), with room for as many nodes and events as a
/// file of `MAX_FILE_BYTES` can hold.
pub(crate) fn yaml_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = 32 << 20;
    budget.max_events = 64 << 20;
    budget.max_total_scalar_bytes = MAX_FILE_BYTES as usize;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options
}

/// A parser budget breach in the operator's words.
fn budget_message(breach: &serde_saphyr::budget::BudgetBreach) -> String {
    use serde_saphyr::budget::BudgetBreach as B;
    match breach {
        B::Depth { depth } => format!("nested {depth} levels deep; the limit is 64"),
        B::Aliases { aliases } => format!("{aliases} aliases (*name); the limit is 50,000"),
        B::Anchors { anchors } => format!("{anchors} anchors (&name); the limit is 50,000"),
        B::Nodes { nodes } => format!("{nodes} YAML nodes; the limit is {}", 32 << 20),
        B::Events { events } => format!("{events} YAML events; the limit is {}", 64 << 20),
        other => format!(
            "a YAML parsing limit was exceeded ({other:?}): aliases expanding \
                          too far, or a file too large"
        ),
    }
}

impl Config {
    /// Reads (at most `MAX_FILE_BYTES`) and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::parse(&Config::read_text(path)?, path)
    }

    /// Reads a configuration file's text, at most `MAX_FILE_BYTES`.
    pub fn read_text(path: &Path) -> Result<String, ConfigError> {
        use std::io::Read as _;
        let read = |source| ConfigError::Read {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read)?;
        let mut bytes = Vec::new();
        file.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(read)?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_owned(),
                limit: MAX_FILE_BYTES,
            });
        }
        let text = String::from_utf8(bytes).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
        })?;
        Ok(text)
    }

    /// Parses and validates configuration text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig =
            serde_saphyr::from_str_with_options(text, yaml_options()).map_err(|e| {
                let message = match &e {
                    serde_saphyr::Error::Budget { breach, location } => format!(
                        "line {} column {}: {}",
                        location.line(),
                        location.column(),
                        budget_message(breach)
                    ),
                    _ => e.to_string(),
                };
                ConfigError::Parse {
                    path: path.to_owned(),
                    message,
                }
            })?;
        Validator { path }.config(raw)
    }
}

/// Whether `name` is a name the kernel accepts for an interface (`dev_valid_name`): 1 to
/// 15 bytes, not `.` or `..`, no `/`, `:` or white space.
pub fn valid_interface_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
}

/// Longest service name.
pub const MAX_NAME_BYTES: usize = 64;

struct Validator<'a> {
    path: &'a Path,
}

fn origin<T>(value: &Spanned<T>, field: impl Into<String>) -> Origin {
    Origin {
        line: value.referenced.line() as u32,
        column: value.referenced.column() as u32,
        field: field.into(),
    }
}

impl Validator<'_> {
    fn invalid(&self, at: Origin, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            at,
            message: message.into(),
        }
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let director = self.director(raw.director)?;
        let limits = self.limits(raw.limits)?;
        let mut services = Vec::with_capacity(raw.services.len());
        let mut seen = HashSet::new();
        for (i, s) in raw.services.into_iter().enumerate() {
            let service = self.service(s, i, &director)?;
            if !seen.insert((service.address, service.port, service.protocol)) {
                return Err(self.invalid(
                    service.origin.clone(),
                    format!("virtual service {service} is defined twice"),
                ));
            }
            services.push(service);
        }
        let Some(last) = services.last() else {
            return Ok(Config {
                director,
                limits,
                services,
            });
        };
        if services.len() > limits.max_services as usize {
            return Err(self.invalid(
                last.origin.clone(),
                format!(
                    "{} services exceed limits.max_services = {}",
                    services.len(),
                    limits.max_services
                ),
            ));
        }
        let reals: usize = services.iter().map(|s| s.reals.len()).sum();
        if reals > limits.max_reals as usize {
            return Err(self.invalid(
                last.origin.clone(),
                format!(
                    "{reals} real servers in all exceed limits.max_reals = {}",
                    limits.max_reals
                ),
            ));
        }
        Ok(Config {
            director,
            limits,
            services,
        })
    }

    fn director(&self, raw: RawDirector) -> Result<Director, ConfigError> {
        if raw.interfaces.value.is_empty() {
            return Err(self.invalid(
                origin(&raw.interfaces, "director.interfaces"),
                "at least one interface is needed",
            ));
        }
        let mut interfaces = Vec::new();
        for (i, name) in raw.interfaces.value.iter().enumerate() {
            let at = origin(name, format!("director.interfaces[{i}]"));
            let n = &name.value;
            if !valid_interface_name(n) {
                return Err(self.invalid(
                    at,
                    format!(
                        "{n:?} is not a valid interface name (1 to 15 bytes, not . or .., no \
                         /, : or white space)"
                    ),
                ));
            }
            if interfaces.contains(n) {
                return Err(self.invalid(at, format!("interface {n} is listed twice")));
            }
            interfaces.push(n.clone());
        }
        let timeouts = self.timeouts(raw.timeouts, "director.timeouts", Timeouts::default())?;
        let snat_pool = match raw.snat_pool {
            Some(p) => Some(self.snat_pool(p, "director.snat_pool")?),
            None => None,
        };
        Ok(Director {
            snat_pool,
            interfaces,
            xdp_mode: raw.xdp_mode,
            hash_seed: raw.hash_seed,
            timeouts,
            flood_rate: raw
                .flood_rate
                .unwrap_or(lb_common::conntrack::DEFAULT_FLOOD_RATE),
            icmp_rate: raw
                .icmp_rate
                .unwrap_or(lb_common::conntrack::DEFAULT_ICMP_RATE),
            expire_nodest_conn: raw.expire_nodest_conn.unwrap_or(true),
        })
    }

    fn snat_pool(&self, raw: Spanned<RawSnatPool>, field: &str) -> Result<SnatPool, ConfigError> {
        let at = origin(&raw, field);
        let p = raw.value;
        let list_at = origin(&p.addresses, format!("{field}.addresses"));
        if p.addresses.value.is_empty() || p.addresses.value.len() > lb_common::POOL_ADDRS {
            return Err(self.invalid(
                list_at,
                format!(
                    "a pool holds 1 to {} addresses, not {}",
                    lb_common::POOL_ADDRS,
                    p.addresses.value.len()
                ),
            ));
        }
        let mut addresses = Vec::new();
        for (i, a) in p.addresses.value.iter().enumerate() {
            let address = a.value;
            let a_at = origin(a, format!("{field}.addresses[{i}]"));
            if !address.is_ipv4() {
                return Err(self.invalid(a_at, format!("{address}: only IPv4 pools so far")));
            }
            if unusable(address) {
                return Err(self.invalid(a_at, format!("{address} cannot be a source address")));
            }
            if addresses.contains(&address) {
                return Err(self.invalid(a_at, format!("{address} is listed twice")));
            }
            addresses.push(address);
        }
        let (first_port, last_port) = match p.ports {
            None => DEFAULT_SNAT_PORTS,
            Some(ports) => {
                let ports_at = origin(&ports, format!("{field}.ports"));
                let range = ports.value.split_once('-').and_then(|(a, b)| {
                    Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?))
                });
                match range {
                    Some((a, b)) if a >= 1 && a <= b => (a, b),
                    _ => {
                        return Err(self.invalid(
                            ports_at,
                            format!(
                                "{:?} is not a port range FIRST-LAST with 1 <= FIRST <= LAST \
                                 <= 65535",
                                ports.value
                            ),
                        ));
                    }
                }
            }
        };
        Ok(SnatPool {
            addresses,
            first_port,
            last_port,
            origin: at,
        })
    }

    fn timeouts(
        &self,
        raw: Option<Spanned<RawTimeouts>>,
        field: &str,
        base: Timeouts,
    ) -> Result<Timeouts, ConfigError> {
        let Some(raw) = raw else { return Ok(base) };
        let mut t = base;
        for (value, name, slot) in [
            (raw.value.tcp, "tcp", &mut t.tcp),
            (raw.value.tcpfin, "tcpfin", &mut t.tcpfin),
            (raw.value.udp, "udp", &mut t.udp),
        ] {
            if let Some(v) = value {
                if v.value == 0 || v.value > MAX_TIMEOUT {
                    return Err(self.invalid(
                        origin(&v, format!("{field}.{name}")),
                        format!("{} s is outside 1..={MAX_TIMEOUT} s", v.value),
                    ));
                }
                *slot = v.value;
            }
        }
        Ok(t)
    }

    fn limits(&self, raw: Option<RawLimits>) -> Result<Limits, ConfigError> {
        let mut limits = Limits::default();
        let Some(raw) = raw else { return Ok(limits) };
        if let Some(v) = raw.max_services {
            // Connection-table entries hold a service id in 16 bits.
            if v.value == 0 || v.value > 65_536 {
                return Err(self.invalid(
                    origin(&v, "limits.max_services"),
                    format!("{} is outside 1..=65536", v.value),
                ));
            }
            limits.max_services = v.value;
        }
        if let Some(v) = raw.max_reals {
            if v.value == 0 || v.value > 1 << 20 {
                return Err(self.invalid(
                    origin(&v, "limits.max_reals"),
                    format!("{} is outside 1..=1048576", v.value),
                ));
            }
            limits.max_reals = v.value;
        }
        if let Some(v) = raw.max_flows {
            // The LRU map needs at least a few entries per CPU; 64M entries is ~4 GiB.
            if v.value < 1024 || v.value > 1 << 26 {
                return Err(self.invalid(
                    origin(&v, "limits.max_flows"),
                    format!("{} is outside 1024..=67108864", v.value),
                ));
            }
            limits.max_flows = v.value;
        }
        if let Some(v) = raw.max_fragments {
            if v.value < 1024 || v.value > 1 << 20 {
                return Err(self.invalid(
                    origin(&v, "limits.max_fragments"),
                    format!("{} is outside 1024..=1048576", v.value),
                ));
            }
            limits.max_fragments = v.value;
        }
        if let Some(v) = raw.max_persistent {
            if v.value < 1024 || v.value > 1 << 24 {
                return Err(self.invalid(
                    origin(&v, "limits.max_persistent"),
                    format!("{} is outside 1024..=16777216", v.value),
                ));
            }
            limits.max_persistent = v.value;
        }
        Ok(limits)
    }

    fn service(
        &self,
        raw: Spanned<RawService>,
        i: usize,
        director: &Director,
    ) -> Result<Service, ConfigError> {
        let field = format!("services[{i}]");
        let at = origin(&raw, field.clone());
        let s = raw.value;
        let address = s.address.value;
        if !address.is_ipv4() {
            return Err(self.invalid(
                origin(&s.address, format!("{field}.address")),
                format!("{address}: IPv6 virtual services are not supported yet"),
            ));
        }
        if unusable(address) {
            return Err(self.invalid(
                origin(&s.address, format!("{field}.address")),
                format!(
                    "{address} cannot be a virtual address (unspecified, this-network, \
                     loopback, multicast or reserved)"
                ),
            ));
        }
        if let Some(name) = &s.name
            && (name.is_empty()
                || name.len() > MAX_NAME_BYTES
                || name.chars().any(char::is_control))
        {
            return Err(self.invalid(
                at.clone(),
                format!(
                    "services[{i}].name {name:?}: 1 to {MAX_NAME_BYTES} bytes without control \
                     characters"
                ),
            ));
        }
        if s.port.value == 0 {
            return Err(self.invalid(
                origin(&s.port, format!("{field}.port")),
                "port 0 (every port) is not supported yet; name the port",
            ));
        }
        let snat_pool = match (s.forwarding, s.snat_pool) {
            (Forwarding::Fullnat, Some(p)) => {
                Some(self.snat_pool(p, &format!("{field}.snat_pool"))?)
            }
            (Forwarding::Fullnat, None) => match &director.snat_pool {
                Some(p) => Some(p.clone()),
                None => {
                    return Err(self.invalid(
                        at,
                        "forwarding: fullnat needs a snat_pool (in the service or in the \
                         director section)",
                    ));
                }
            },
            (_, Some(p)) => {
                return Err(self.invalid(
                    origin(&p, format!("{field}.snat_pool")),
                    format!(
                        "a snat_pool is only used with forwarding: fullnat, not {}",
                        s.forwarding
                    ),
                ));
            }
            (_, None) => None,
        };
        for pool in [&snat_pool, &director.snat_pool].into_iter().flatten() {
            if pool.addresses.contains(&address) {
                return Err(self.invalid(
                    pool.origin.clone(),
                    format!("{address} is a virtual address and cannot be in a SNAT pool"),
                ));
            }
        }
        let table_size = match s.table_size {
            Some(v) if !s.scheduler.hashes() => {
                return Err(self.invalid(
                    origin(&v, format!("{field}.table_size")),
                    format!(
                        "table_size sizes the Maglev table of sh, dh and mh; {} has none",
                        s.scheduler
                    ),
                ));
            }
            Some(v) => {
                let (low, high) = (MAGLEV_SIZES[0], MAGLEV_SIZES[MAGLEV_SIZES.len() - 1]);
                if !(low..=high).contains(&v.value) || !is_prime(v.value) {
                    return Err(self.invalid(
                        origin(&v, format!("{field}.table_size")),
                        format!(
                            "{} is not a prime from {low} to {high} (for example {})",
                            v.value,
                            MAGLEV_SIZES.map(|s| s.to_string()).join(", ")
                        ),
                    ));
                }
                v.value
            }
            None => DEFAULT_MAGLEV_SIZE,
        };
        let hash_port = match s.hash_port {
            Some(v) if v.value && !matches!(s.scheduler, Scheduler::Sh | Scheduler::Mh) => {
                return Err(self.invalid(
                    origin(&v, format!("{field}.hash_port")),
                    format!(
                        "hash_port adds the client's port to the sh or mh hash; {} does not \
                         hash the client",
                        s.scheduler
                    ),
                ));
            }
            Some(v) => v.value,
            None => false,
        };
        let persistence = match s.persistence {
            Some(p) => Some(self.persistence(p.value, &format!("{field}.persistence"))?),
            None => None,
        };
        let slow_start = match s.slow_start {
            Some(v) => Some(self.slow_start(v.value, &format!("{field}.slow_start"))?),
            None => None,
        };
        let mut reals = Vec::with_capacity(s.reals.len());
        for (j, r) in s.reals.into_iter().enumerate() {
            let real = self.real(
                r,
                &format!("{field}.reals[{j}]"),
                s.port.value,
                address,
                s.forwarding,
            )?;
            if reals
                .iter()
                .any(|o: &Real| o.address == real.address && o.port == real.port)
            {
                return Err(self.invalid(
                    real.origin,
                    format!("real server {}:{} is listed twice", real.address, real.port),
                ));
            }
            reals.push(real);
        }
        let weighted = reals.iter().filter(|r| r.scheduling_weight() > 0).count();
        if s.scheduler.counts_connections() && weighted > lb_common::MAX_LEAST_REALS as usize {
            return Err(self.invalid(
                at.clone(),
                format!(
                    "{} compares every real for each new flow; at most {} reals with a \
                     weight above 0 ({weighted} here): use wrr or mh",
                    s.scheduler,
                    lb_common::MAX_LEAST_REALS
                ),
            ));
        }
        let timeouts =
            self.timeouts(s.timeouts, &format!("{field}.timeouts"), director.timeouts)?;
        let check = match s.check {
            Some(c) => Some(self.check(c, &format!("{field}.check"))?),
            None => None,
        };
        if s.forwarding == Forwarding::Dr
            && check
                .iter()
                .chain(reals.iter().filter_map(|r| r.check.as_ref()))
                .any(|c| c.passive)
        {
            return Err(self.invalid(
                at.clone(),
                "passive health signals need NAT or full-NAT: under direct routing the \
                 reals answer the clients directly, so the director never sees their \
                 replies",
            ));
        }
        let (quorum, hysteresis, sorry) = self.quorum(
            s.quorum,
            s.hysteresis,
            s.sorry,
            &field,
            &reals,
            address,
            s.port.value,
            s.forwarding,
        )?;
        Ok(Service {
            name: s.name,
            address,
            port: s.port.value,
            protocol: s.protocol,
            scheduler: s.scheduler,
            table_size,
            hash_port,
            persistence,
            slow_start,
            forwarding: s.forwarding,
            timeouts,
            expire_nodest_conn: s.expire_nodest_conn.unwrap_or(director.expire_nodest_conn),
            snat_pool,
            check,
            quorum,
            hysteresis,
            sorry,
            quorum_lost: false,
            reals,
            origin: at,
        })
    }

    /// A service's quorum, hysteresis and sorry server. A sorry server alone keeps a
    /// quorum of 1 (keepalived's default): it takes over when no real is left.
    #[allow(clippy::too_many_arguments)]
    fn quorum(
        &self,
        quorum: Option<Spanned<u32>>,
        hysteresis: Option<Spanned<u32>>,
        sorry: Option<Spanned<RawSorry>>,
        field: &str,
        reals: &[Real],
        vip: IpAddr,
        service_port: u16,
        forwarding: Forwarding,
    ) -> Result<(Option<u32>, u32, Option<Sorry>), ConfigError> {
        let sorry = match sorry {
            None => None,
            Some(raw) => {
                let at = origin(&raw, format!("{field}.sorry"));
                let RawSorry { address, port } = raw.value;
                let address_at = origin(&address, format!("{field}.sorry.address"));
                let address = address.value;
                if address.is_ipv4() != vip.is_ipv4() || unusable(address) || address == vip {
                    return Err(self.invalid(
                        address_at,
                        format!("{address} cannot be this service's sorry server (another family, the VIP, or unusable)"),
                    ));
                }
                let port = match port {
                    None => service_port,
                    Some(p)
                        if p.value == 0
                            || (forwarding == Forwarding::Dr && p.value != service_port) =>
                    {
                        return Err(self.invalid(
                            origin(&p, format!("{field}.sorry.port")),
                            format!(
                                "{}: a port, the service's own under direct routing",
                                p.value
                            ),
                        ));
                    }
                    Some(p) => p.value,
                };
                if reals.iter().any(|r| r.address == address && r.port == port) {
                    return Err(self.invalid(at, format!("{address}:{port} is a real of the service; a sorry server stands in for them")));
                }
                Some(Sorry { address, port })
            }
        };
        let q = match quorum {
            Some(q) if q.value == 0 => {
                return Err(self.invalid(
                    origin(&q, format!("{field}.quorum")),
                    "0: a quorum is a total weight of at least 1 (leave it out for none)",
                ));
            }
            Some(q) => Some(q.value),
            None => sorry.map(|_| 1),
        };
        let h = match (hysteresis, q) {
            (None, _) => 0,
            (Some(h), None) => {
                return Err(self.invalid(
                    origin(&h, format!("{field}.hysteresis")),
                    "hysteresis needs a quorum",
                ));
            }
            (Some(h), Some(q)) if h.value >= q => {
                return Err(self.invalid(
                    origin(&h, format!("{field}.hysteresis")),
                    format!("{}: below the quorum ({q})", h.value),
                ));
            }
            (Some(h), Some(_)) => h.value,
        };
        Ok((q, h, sorry))
    }

    fn slow_start(&self, raw: RawSlowStart, field: &str) -> Result<SlowStart, ConfigError> {
        if raw.period.value == 0 || raw.period.value > 3600 {
            return Err(self.invalid(
                origin(&raw.period, format!("{field}.period")),
                format!("{} is outside 1..=3600 seconds", raw.period.value),
            ));
        }
        let steps = match raw.steps {
            Some(v) if v.value == 0 || v.value > 100 => {
                return Err(self.invalid(
                    origin(&v, format!("{field}.steps")),
                    format!("{} is outside 1..=100", v.value),
                ));
            }
            Some(v) => v.value,
            None => 10,
        };
        Ok(SlowStart {
            period: raw.period.value,
            steps,
        })
    }

    fn persistence(&self, raw: RawPersistence, field: &str) -> Result<Persistence, ConfigError> {
        let timeout = match raw.timeout {
            Some(v) if v.value == 0 || v.value > MAX_PERSISTENCE_TIMEOUT => {
                return Err(self.invalid(
                    origin(&v, format!("{field}.timeout")),
                    format!(
                        "{} is outside 1..={MAX_PERSISTENCE_TIMEOUT} seconds (leave \
                         persistence out for none)",
                        v.value
                    ),
                ));
            }
            Some(v) => v.value,
            None => DEFAULT_PERSISTENCE_TIMEOUT,
        };
        let netmask = match raw.netmask {
            Some(v) => {
                let bits = u32::from(v.value);
                if bits.leading_ones() + bits.trailing_zeros() != 32 {
                    return Err(self.invalid(
                        origin(&v, format!("{field}.netmask")),
                        format!("{} is not a netmask (ones, then zeros)", v.value),
                    ));
                }
                v.value
            }
            None => std::net::Ipv4Addr::BROADCAST,
        };
        Ok(Persistence { timeout, netmask })
    }

    fn real(
        &self,
        raw: Spanned<RawReal>,
        field: &str,
        service_port: u16,
        vip: IpAddr,
        forwarding: Forwarding,
    ) -> Result<Real, ConfigError> {
        let at = origin(&raw, field);
        let r = raw.value;
        let address = r.address.value;
        let address_at = origin(&r.address, format!("{field}.address"));
        if address.is_ipv4() != vip.is_ipv4() {
            return Err(self.invalid(
                address_at,
                format!("real {address} is not of the virtual address's family"),
            ));
        }
        if unusable(address) {
            return Err(self.invalid(
                address_at,
                format!(
                    "{address} cannot be a real server (unspecified, this-network, loopback, \
                     multicast or reserved)"
                ),
            ));
        }
        if address == vip {
            return Err(self.invalid(address_at, "a real server cannot be the virtual address"));
        }
        let port = match r.port {
            None => service_port,
            Some(p) if p.value == 0 => {
                return Err(self.invalid(
                    origin(&p, format!("{field}.port")),
                    "port 0 is not a real server's port",
                ));
            }
            // NAT rewrites the port as well as the address.
            Some(p) if forwarding != Forwarding::Dr => p.value,
            // Direct routing leaves the packet untouched: the real must listen on the
            // virtual port (as in LVS, where -g ignores a real's port).
            Some(p) if p.value != service_port => {
                return Err(self.invalid(
                    origin(&p, format!("{field}.port")),
                    format!(
                        "direct routing cannot change the port: {} differs from the \
                         service port {service_port}",
                        p.value
                    ),
                ));
            }
            Some(p) => p.value,
        };
        if r.weight.value > MAX_WEIGHT {
            return Err(self.invalid(
                origin(&r.weight, format!("{field}.weight")),
                format!(
                    "{} is above the maximum weight {MAX_WEIGHT}",
                    r.weight.value
                ),
            ));
        }
        let check = match r.check {
            Some(c) => Some(self.check(c, &format!("{field}.check"))?),
            None => None,
        };
        Ok(Real {
            address,
            port,
            weight: r.weight.value,
            drained: r.drained,
            check,
            down: false,
            draining: false,
            held: false,
            sorry: false,
            origin: at,
        })
    }
}

/// Addresses no service, real or pool can have: unspecified, 0.0.0.0/8 ("this network"),
/// loopback, multicast, and 240.0.0.0/4 (reserved, the limited broadcast included).
fn unusable(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => {
            let first = v4.octets()[0];
            first == 0 || v4.is_loopback() || v4.is_multicast() || first >= 240
        }
        IpAddr::V6(v6) => v6.is_unspecified() || v6.is_loopback() || v6.is_multicast(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
director:
  interfaces: [eth0]
  hash_seed: 7
services:
  - name: web
    address: 192.0.2.100
    port: 80
    protocol: tcp
    scheduler: sh
    reals:
      - address: 192.0.2.11
        weight: 2
      - address: 192.0.2.12
  - address: 192.0.2.100
    port: 53
    protocol: udp
    scheduler: dh
    forwarding: dr
    reals: []
";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.yaml"))
    }

    fn error(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("config was accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn good_config_parses_with_defaults() {
        let c = parse(GOOD).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.director.interfaces, ["eth0"]);
        assert_eq!(c.director.xdp_mode, XdpMode::Driver);
        assert_eq!(c.director.hash_seed, 7);
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.services.len(), 2);
        let web = &c.services[0];
        assert_eq!(web.name.as_deref(), Some("web"));
        assert_eq!(
            (web.port, web.protocol, web.scheduler),
            (80, Protocol::Tcp, Scheduler::Sh)
        );
        assert_eq!(web.reals[0].weight, 2);
        assert_eq!(web.reals[1].weight, 1, "weight defaults to 1");
        assert_eq!(
            web.reals[1].port, 80,
            "a DR real's port defaults to the service port"
        );
        assert_eq!(web.reals[1].origin.line, 13);
        assert_eq!(c.services[1].scheduler, Scheduler::Dh);
    }

    /// Replaces `from` in the good config and expects an error containing each of `want`.
    fn expect_error(from: &str, to: &str, want: &[&str]) {
        assert!(GOOD.contains(from), "{from:?} not in the base config");
        let e = error(&GOOD.replacen(from, to, 1));
        for w in want {
            assert!(e.contains(w), "error {e:?} should contain {w:?}");
        }
    }

    #[test]
    fn health_checks_are_read_and_checked_with_field_names() {
        let with = |check: &str| {
            GOOD.replacen(
                "    scheduler: sh\n    reals:",
                &format!("    scheduler: sh\n    check: {check}\n    reals:"),
                1,
            )
        };
        let read = |check: &str| {
            parse(&with(check))
                .unwrap_or_else(|e| panic!("{e}"))
                .services[0]
                .check
                .clone()
                .unwrap_or_else(|| panic!("no check"))
        };
        let check = read("{type: http, port: 8080, path: /ok, expect: \"200, 300-302\", rise: 1}");
        assert_eq!(check.kind(), CheckKind::Http);
        assert_eq!(
            (
                check.interval,
                check.timeout,
                check.rise,
                check.fall,
                check.jitter
            ),
            (2, 1, 1, 3, 10)
        );
        let ProbeSpec::Http(h) = &check.probe else {
            panic!("{check:?}")
        };
        assert_eq!(h.expect, vec![(200, 200), (300, 302)]);
        assert_eq!(h.drain, vec![(503, 503)]);
        let check = read("{type: https, sni: www.example.com, drain: none, method: head}");
        let ProbeSpec::Http(h) = &check.probe else {
            panic!("{check:?}")
        };
        assert_eq!((h.method.as_str(), h.drain.len()), ("HEAD", 0));
        assert_eq!(
            h.tls,
            Some(TlsCheck {
                verify: false,
                sni: Some("www.example.com".into()),
                ca: None
            })
        );
        let check = read("{type: udp, payload: \"70 69 6e 67\", reply: 706f6e67, max_reply: 16}");
        assert_eq!(
            check.probe,
            ProbeSpec::Udp(UdpCheck {
                payload: b"ping".to_vec(),
                require_reply: true,
                reply: b"pong".to_vec(),
                min_reply: 4,
                max_reply: 16,
            })
        );
        let check = read("{type: dns, query: example.com, query_type: a}");
        assert_eq!(
            check.probe,
            ProbeSpec::Dns(DnsCheck {
                name: "example.com".into(),
                qtype: "A".into()
            })
        );
        let check =
            read("{type: exec, command: \"test -e /tmp\", dynamic: true, timeout: 2, interval: 5}");
        assert_eq!(
            check.probe,
            ProbeSpec::Exec(ExecCheck {
                argv: vec!["/bin/sh".into(), "-c".into(), "test -e /tmp".into()],
                dynamic: true
            })
        );
        let check = read("{type: exec, command: [/bin/true, x], on_failure: remove}");
        assert_eq!(check.on_failure, OnFailure::Remove);
        for (bad, want) in [
            (
                "{type: tcp, interval: 2, timeout: 3}",
                "check.timeout: 3: 1 second to the interval",
            ),
            ("{type: tcp, fall: 0}", "check.fall: 0: 1 to 100"),
            (
                "{type: tcp, jitter: 60}",
                "check.jitter: 60: 0 to 50 percent",
            ),
            (
                "{type: tcp, path: /x}",
                "check.path: path is for http and https checks, not tcp",
            ),
            (
                "{type: http, sni: a.example}",
                "check.sni: sni is for https checks",
            ),
            ("{type: http, path: x}", "check.path"),
            ("{type: http, expect: \"600\"}", "check.expect"),
            ("{type: http, drain: \"200\"}", "200 is both healthy"),
            (
                "{type: http, method: POST}",
                "check.method: \"POST\": GET or HEAD",
            ),
            (
                "{type: http, method: HEAD, body: x}",
                "HEAD answer has no body",
            ),
            ("{type: https, sni: 192.0.2.1}", "check.sni"),
            (
                "{type: https, ca: /nonexistent/ca.pem}",
                "check.ca: /nonexistent/ca.pem",
            ),
            (
                "{type: udp, payload: abc}",
                "check.payload: \"abc\": hex digits",
            ),
            ("{type: udp, payload: zz}", "check.payload"),
            (
                "{type: udp, require_reply: false, reply: 00}",
                "check.require_reply",
            ),
            (
                "{type: udp, reply: 0000, max_reply: 1}",
                "check.reply: 2 bytes",
            ),
            (
                "{type: dns, query_type: AXFR}",
                "check.query_type: \"AXFR\": one of",
            ),
            ("{type: dns, query: \"a..b\"}", "check.query"),
            (
                "{type: exec}",
                "check.command: an exec check needs a command",
            ),
            ("{type: exec, command: []}", "check.command"),
            (
                "{type: exec, command: 5}",
                "a command: a line for /bin/sh -c, or a list",
            ),
            ("{type: exec, command: \" \"}", "check.command"),
            (
                "{type: tcp, command: x}",
                "check.command: command is for exec checks",
            ),
            ("{type: icmp}", "icmp"),
        ] {
            let e = error(&with(bad));
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn a_real_may_have_its_own_check_and_a_service_a_quorum_and_sorry_server() {
        let text = GOOD
            .replacen(
                "    scheduler: sh\n    reals:",
                "    scheduler: sh\n    check: {type: tcp}\n    quorum: 2\n    hysteresis: 1\n    \
                 sorry: {address: 192.0.2.50}\n    reals:",
                1,
            )
            .replacen(
                "      - address: 192.0.2.12\n",
                "      - address: 192.0.2.12\n        check: {type: exec, command: /bin/true}\n",
                1,
            );
        let c = parse(&text).unwrap_or_else(|e| panic!("{e}"));
        let s = &c.services[0];
        assert_eq!((s.quorum, s.hysteresis), (Some(2), 1));
        assert_eq!(
            s.sorry,
            Some(Sorry {
                address: "192.0.2.50".parse().unwrap_or_else(|e| panic!("{e}")),
                port: 80
            })
        );
        assert_eq!(
            s.check_of(&s.reals[0]).map(Check::kind),
            Some(CheckKind::Tcp)
        );
        assert_eq!(
            s.check_of(&s.reals[1]).map(Check::kind),
            Some(CheckKind::Exec)
        );
        // A sorry server alone keeps keepalived's quorum of 1.
        let alone = GOOD.replacen(
            "    scheduler: sh\n    reals:",
            "    scheduler: sh\n    sorry: {address: 192.0.2.50}\n    reals:",
            1,
        );
        let c = parse(&alone).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.services[0].quorum, Some(1));
        for (bad, want) in [
            (
                "quorum: 0",
                "quorum: 0: a quorum is a total weight of at least 1",
            ),
            ("hysteresis: 1", "hysteresis: hysteresis needs a quorum"),
            (
                "quorum: 2\n    hysteresis: 2",
                "hysteresis: 2: below the quorum (2)",
            ),
            (
                "sorry: {address: 192.0.2.100}",
                "sorry.address: 192.0.2.100 cannot be",
            ),
            ("sorry: {address: 192.0.2.50, port: 81}", "sorry.port: 81"),
            ("sorry: {address: 192.0.2.11}", "is a real of the service"),
        ] {
            let text = GOOD.replacen(
                "    scheduler: sh\n    reals:",
                &format!("    scheduler: sh\n    {bad}\n    reals:"),
                1,
            );
            let e = error(&text);
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn nat_methods_ports_and_snat_pools_are_checked() {
        let nat = GOOD.replace(
            "    scheduler: sh\n    reals:",
            "    scheduler: sh\n    forwarding: nat\n    reals:",
        );
        let c = parse(&nat.replacen(
            "address: 192.0.2.12",
            "address: 192.0.2.12\n        port: 8080",
            1,
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.services[0].forwarding, Forwarding::Nat);
        assert_eq!(c.services[0].reals[1].port, 8080, "NAT maps the port");
        // One address on two ports is two reals under NAT.
        let twice = nat.replacen(
            "address: 192.0.2.12",
            "address: 192.0.2.11\n        port: 8080",
            1,
        );
        assert!(parse(&twice).is_ok());
        let fullnat = GOOD.replace(
            "    scheduler: sh\n    reals:",
            "    scheduler: sh\n    forwarding: fullnat\n    reals:",
        );
        let e = error(&fullnat);
        assert!(
            e.contains("services[0]") && e.contains("needs a snat_pool"),
            "{e}"
        );
        let pool = |p: &str| {
            fullnat.replace(
                "  hash_seed: 7\n",
                &format!("  hash_seed: 7\n  snat_pool: {p}\n"),
            )
        };
        let c = parse(&pool("{addresses: [192.0.2.1]}")).unwrap_or_else(|e| panic!("{e}"));
        let p = c.services[0]
            .snat_pool
            .clone()
            .unwrap_or_else(|| panic!("no pool"));
        assert_eq!((p.first_port, p.last_port), DEFAULT_SNAT_PORTS);
        for (bad, want) in [
            ("{addresses: []}", "1 to 16 addresses"),
            ("{addresses: [192.0.2.1, 192.0.2.1]}", "listed twice"),
            ("{addresses: [2001:db8::1]}", "only IPv4"),
            ("{addresses: [127.0.0.1]}", "cannot be a source address"),
            ("{addresses: [192.0.2.100]}", "is a virtual address"),
            (
                "{addresses: [192.0.2.1], ports: 2000-1000}",
                "not a port range",
            ),
            ("{addresses: [192.0.2.1], ports: 0-10}", "not a port range"),
            (
                "{addresses: [192.0.2.1], ports: 1-70000}",
                "not a port range",
            ),
            ("{addresses: [192.0.2.1], ports: many}", "not a port range"),
            ("{addresses: [192.0.2.1], porst: 1-2}", "unknown field"),
        ] {
            let e = error(&pool(bad));
            assert!(e.contains(want), "{bad}: {e}");
        }
        let seventeen: Vec<String> = (1..=17).map(|i| format!("192.0.2.{i}")).collect();
        let e = error(&pool(&format!("{{addresses: [{}]}}", seventeen.join(", "))));
        assert!(
            e.contains("director.snat_pool.addresses") && e.contains("not 17"),
            "{e}"
        );
        // A pool on a service that does not use it is a mistake, said so.
        let e = error(&GOOD.replace(
            "    forwarding: dr\n",
            "    forwarding: dr\n    snat_pool: {addresses: [192.0.2.1]}\n",
        ));
        assert!(
            e.contains("services[1].snat_pool") && e.contains("only used with"),
            "{e}"
        );
    }

    #[test]
    fn hostile_files_and_names_end_with_a_clear_error() {
        // Endless input stops at the size bound, in bounded memory.
        let e = Config::load(Path::new("/dev/zero"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("larger than") && e.contains("not a configuration"),
            "{e}"
        );
        // Deep nesting, an alias bomb, too many anchors.
        // Deep nesting is refused at its first level (the schema has no lists of lists)
        // or by the depth limit: either way with the line, in a short message.
        for deep in [
            format!("director: {}{}", "[".repeat(10_000), "]".repeat(10_000)),
            format!("{}director: 1", "- ".repeat(10_000)),
        ] {
            let e = error(&deep);
            assert!(e.contains("line 1") && e.len() < 2_000, "{e}");
        }
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..12 {
            bomb.push_str(&format!(
                "b{i}: &b{i} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n",
                p = if i == 0 {
                    "a".to_string()
                } else {
                    format!("b{}", i - 1)
                }
            ));
        }
        let started = std::time::Instant::now();
        let e = error(&bomb);
        assert!(!e.is_empty());
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{e}"
        );
        // Names that would forge report lines, interface names the kernel refuses,
        // addresses no service can have.
        expect_error(
            "name: web",
            "name: \"web\\nreason forged\"",
            &["services[0]", "control"],
        );
        for bad in [
            "\"eth\\t0\"",
            "..",
            "\"a:b\"",
            "\"eth 0\"",
            "sixteen-chars-xx",
        ] {
            expect_error(
                "[eth0]",
                &format!("[{bad}]"),
                &["director.interfaces[0]", "not a valid"],
            );
        }
        for vip in ["127.0.0.1", "240.0.0.1", "0.1.2.3", "224.0.0.1"] {
            expect_error(
                "  - name: web\n    address: 192.0.2.100",
                &format!("  - name: web\n    address: {vip}"),
                &["services[0].address", "cannot be a virtual address"],
            );
        }
        expect_error(
            "address: 192.0.2.12",
            "address: 250.0.2.12",
            &["services[0].reals[1].address", "cannot be a real server"],
        );
    }

    #[test]
    fn a_config_with_30000_services_parses() {
        // The parser's default budget (250,000 nodes) refused about 17,900 services.
        let mut text = String::from(
            "director: {interfaces: [eth0]}\nlimits: {max_services: 30000, max_reals: 30000}\n\
             services:\n",
        );
        for n in 0..30_000u32 {
            text.push_str(&format!(
                "  - {{address: 10.{}.{}.1, port: 80, protocol: tcp, scheduler: sh, reals: \
                 [{{address: 192.0.2.11, weight: 1}}]}}\n",
                n / 256,
                n % 256
            ));
        }
        let c = parse(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.services.len(), 30_000);
    }

    #[test]
    fn kernel_memory_follows_the_measured_per_entry_sizes() {
        let d = Limits::default();
        // 256 services, 4096 reals, 1M flows, 16k fragments, 256k persistence templates
        // on 2 CPUs: the connection table's 128 MiB dominates.
        let mib = d.kernel_bytes(2) >> 20;
        assert!((150..=157).contains(&mib), "{mib} MiB");
        let services = Limits {
            max_services: 65_536,
            ..d
        };
        let per_service = (services.kernel_bytes(2) - d.kernel_bytes(2)) / (65_536 - 256);
        assert_eq!(per_service, 8 + 148 + 100 + 56 + 56 + 24 + 8);
        let flows = Limits {
            max_flows: 16 << 20,
            ..d
        };
        assert!(flows.kernel_bytes(2) > 2 << 30, "16M flows pin over 2 GiB");
    }

    #[test]
    fn persistence_takes_ipvsadm_defaults_and_refuses_what_it_cannot_mean() {
        let with = |p: &str| {
            GOOD.replace(
                "    scheduler: sh\n",
                &format!("    scheduler: sh\n    persistence: {p}\n"),
            )
        };
        let c = parse(&with("{}")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.services[0].persistence,
            Some(Persistence {
                timeout: DEFAULT_PERSISTENCE_TIMEOUT,
                netmask: std::net::Ipv4Addr::BROADCAST
            })
        );
        let c =
            parse(&with("{timeout: 60, netmask: 255.255.0.0}")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.services[0]
                .persistence
                .map(|p| (p.timeout, p.netmask.to_string())),
            Some((60, "255.255.0.0".into()))
        );
        assert!(c.services[1].persistence.is_none());
        for (bad, words) in [
            (
                "{timeout: 0}",
                ["services[0].persistence.timeout", "outside 1..="],
            ),
            (
                "{timeout: 40000000}",
                ["services[0].persistence.timeout", "outside 1..="],
            ),
            (
                "{netmask: 255.0.255.0}",
                ["services[0].persistence.netmask", "not a netmask"],
            ),
            ("{netmask: 2001:db8::}", ["test.yaml", "IPv4"]),
            ("{timout: 5}", ["timout", "persistence"]),
        ] {
            let e = error(&with(bad));
            for w in words {
                assert!(e.contains(w), "{bad}: {w:?} not in {e}");
            }
        }
    }

    #[test]
    fn slow_start_defaults_to_ten_steps_and_refuses_what_it_cannot_mean() {
        let with = |p: &str| {
            GOOD.replace(
                "    scheduler: sh\n",
                &format!("    scheduler: sh\n    slow_start: {p}\n"),
            )
        };
        let c = parse(&with("{period: 30}")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.services[0].slow_start,
            Some(SlowStart {
                period: 30,
                steps: 10
            })
        );
        for (bad, field) in [
            ("{period: 0}", "services[0].slow_start.period"),
            ("{period: 4000}", "services[0].slow_start.period"),
            ("{period: 30, steps: 0}", "services[0].slow_start.steps"),
            ("{period: 30, steps: 101}", "services[0].slow_start.steps"),
            ("{steps: 4}", "period"),
        ] {
            let e = error(&with(bad));
            assert!(e.contains(field), "{bad}: {field:?} not in {e}");
        }
    }

    #[test]
    fn least_connection_services_take_at_most_256_weighted_reals() {
        let service = |n: usize, drained: usize| {
            let reals: Vec<String> = (0..n)
                .map(|i| {
                    let weight = if i < drained { 0 } else { 1 };
                    format!(
                        "{{address: 10.1.{}.{}, weight: {weight}}}",
                        i / 200,
                        i % 200 + 1
                    )
                })
                .collect();
            format!(
                "director: {{interfaces: [eth0]}}\nservices:\n  - {{address: 192.0.2.100, \
                 port: 80, protocol: tcp, scheduler: wlc, reals: [{}]}}\n",
                reals.join(", ")
            )
        };
        assert!(parse(&service(256, 0)).is_ok());
        assert!(
            parse(&service(300, 44)).is_ok(),
            "weight-0 reals are not compared"
        );
        let e = error(&service(257, 0));
        assert!(e.contains("at most 256") && e.contains("257 here"), "{e}");
    }

    #[test]
    fn semantic_errors_name_file_line_and_field() {
        expect_error(
            "weight: 2",
            "weight: 70000",
            &[
                "test.yaml:12:",
                "services[0].reals[0].weight",
                "70000 is above",
            ],
        );
        expect_error(
            "port: 53",
            "port: 0",
            &["test.yaml:15:", "services[1].port", "port 0"],
        );
        expect_error(
            "address: 192.0.2.12",
            "address: 192.0.2.11",
            &["test.yaml:13:", "services[0].reals[1]", "listed twice"],
        );
        expect_error(
            "address: 192.0.2.12",
            "address: 192.0.2.12\n        port: 8080",
            &["services[0].reals[1].port", "cannot change the port"],
        );
        expect_error(
            "address: 192.0.2.12",
            "address: 2001:db8::12",
            &["services[0].reals[1].address", "family"],
        );
        expect_error(
            "  - address: 192.0.2.100\n    port: 53",
            "  - address: 2001:db8::100\n    port: 53",
            &["test.yaml:14:", "services[1].address", "IPv6"],
        );
        expect_error(
            "port: 53\n    protocol: udp",
            "port: 80\n    protocol: tcp",
            &["services[1]", "defined twice"],
        );
        expect_error(
            "[eth0]",
            "[]",
            &["test.yaml:2:", "director.interfaces", "at least one"],
        );
        expect_error(
            "[eth0]",
            "[eth0, eth0]",
            &["director.interfaces[1]", "twice"],
        );
        expect_error(
            "[eth0]",
            "[a-very-long-interface-name]",
            &["director.interfaces[0]", "not a valid interface name"],
        );
        expect_error(
            "address: 192.0.2.11",
            "address: 192.0.2.100",
            &[
                "services[0].reals[0].address",
                "cannot be the virtual address",
            ],
        );
    }

    #[test]
    fn schema_errors_name_the_line() {
        for (from, to, want) in [
            ("scheduler: sh", "scheduler: lblc", "lblc"),
            ("protocol: tcp", "protocol: sctp", "sctp"),
            ("weight: 2", "weight: -1", "weight"),
            ("weight: 2", "wieght: 2", "wieght"),
            ("address: 192.0.2.11", "address: 192.0.2.311", "192.0.2.311"),
            ("port: 80", "port: 65536", "65536"),
        ] {
            let e = error(&GOOD.replacen(from, to, 1));
            assert!(e.starts_with("test.yaml: "), "{e}");
            assert!(e.contains(want), "error {e:?} should mention {want:?}");
            assert!(e.contains("line"), "error {e:?} should give the line");
        }
        let e = error("director: [");
        assert!(e.contains("line"), "{e}");
    }

    #[test]
    fn connection_table_settings_default_inherit_and_are_checked() {
        let c = parse(GOOD).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.director.timeouts,
            Timeouts {
                tcp: 900,
                tcpfin: 120,
                udp: 300
            }
        );
        assert_eq!(c.director.flood_rate, 125_000);
        assert_eq!(c.director.icmp_rate, 1000);
        assert!(c.services[0].expire_nodest_conn);
        let tuned = GOOD
            .replace(
                "  hash_seed: 7",
                "  hash_seed: 7\n  timeouts: {tcp: 60}\n  expire_nodest_conn: false",
            )
            .replace(
                "    forwarding: dr",
                "    forwarding: dr\n    timeouts: {udp: 5}\n    expire_nodest_conn: true",
            );
        let c = parse(&tuned).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.services[0].timeouts,
            Timeouts {
                tcp: 60,
                tcpfin: 120,
                udp: 300
            }
        );
        assert!(!c.services[0].expire_nodest_conn);
        assert_eq!(
            c.services[1].timeouts,
            Timeouts {
                tcp: 60,
                tcpfin: 120,
                udp: 5
            }
        );
        assert!(c.services[1].expire_nodest_conn);
        for (bad, want) in [
            ("timeouts: {tcp: 0}", "director.timeouts.tcp"),
            ("timeouts: {udp: 604801}", "director.timeouts.udp"),
            ("timeouts: {tcpfn: 5}", "tcpfn"),
        ] {
            let e = error(&GOOD.replace("  hash_seed: 7", &format!("  hash_seed: 7\n  {bad}")));
            assert!(e.contains(want), "{bad}: {e}");
        }
        let e = error(&GOOD.replace("services:", "limits:\n  max_fragments: 10\nservices:"));
        assert!(
            e.contains("limits.max_fragments") && e.contains("outside"),
            "{e}"
        );
        let e = error(&GOOD.replace("services:", "limits:\n  max_flows: 10\nservices:"));
        assert!(
            e.contains("limits.max_flows") && e.contains("outside"),
            "{e}"
        );
    }

    #[test]
    fn limits_are_enforced() {
        let tight = GOOD.replace(
            "services:",
            "limits:\n  max_services: 1\n  max_reals: 8\nservices:",
        );
        let e = error(&tight);
        assert!(e.contains("limits.max_services = 1"), "{e}");
        let e = error(&GOOD.replace("services:", "limits:\n  max_reals: 1\nservices:"));
        assert!(e.contains("limits.max_reals = 1"), "{e}");
        let e = error(&GOOD.replace("services:", "limits:\n  max_services: 0\nservices:"));
        assert!(
            e.contains("limits.max_services") && e.contains("outside"),
            "{e}"
        );
    }
}

#[cfg(test)]
mod shipped {
    use super::*;

    #[test]
    fn the_example_in_deploy_is_valid() {
        let text = include_str!("../../deploy/xdpvs.yaml");
        let c =
            Config::parse(text, Path::new("deploy/xdpvs.yaml")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.services.len(), 2);
        assert_eq!(c.services[0].reals[2].weight, 0);
        assert_eq!(c.limits.max_flows, 1 << 20);
        assert_eq!(c.services[0].timeouts.tcp, 900);
        assert_eq!(c.services[1].timeouts.udp, 30);
        assert_eq!(
            c.services[1].timeouts.tcpfin, 120,
            "unset fields keep the director's"
        );
    }
}
