//! The `xdpvs` command line: its definition (also the source of the shell completions and
//! the man page) and the commands that talk to a running daemon through the API.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use crate::{
    api,
    config::Protocol,
    daemon::OnExit,
    document::{Document, RealChange, ServiceFields, ServiceId},
    pins,
};

#[derive(Parser)]
#[command(
    name = "xdpvs",
    version,
    about = "XDP Virtual Server: an L4 load balancer on the XDP fast path",
    after_help = "Docs: docs/OPERATIONS.md (commands, signals, restarts), docs/CONFIG.md (the file)."
)]
pub struct Cli {
    /// The daemon's API socket.
    #[arg(long, global = true, env = "XDPVS_SOCKET", default_value = api::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the director: attach the XDP program and program it from the configuration.
    Daemon {
        /// Configuration file (YAML; see docs/CONFIG.md). API changes are written to it.
        #[arg(long, short)]
        config: PathBuf,
        /// Directory on bpffs where the maps and links are pinned, so the data path
        /// outlives the daemon and the next one adopts it.
        #[arg(long, default_value = pins::DEFAULT_DIR)]
        bpf_dir: PathBuf,
        /// What a stop (SIGTERM, SIGINT) does with the data path.
        #[arg(long, value_enum, default_value_t = OnExit::Keep)]
        on_exit: OnExit,
        /// Log each packet the program drops, with its reason (debug level; costs a log
        /// record per dropped packet: for diagnosis, not for production).
        #[arg(long)]
        trace: bool,
        /// Address of the Prometheus metrics (`/metrics`), or `off`.
        #[arg(long, default_value = crate::metrics::DEFAULT_ADDRESS, value_parser = metrics_address)]
        metrics: Metrics,
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
    /// List virtual services and their reals, as `ipvsadm -Ln`.
    List {
        /// Packet and byte counters instead of weights and connections.
        #[arg(long, conflicts_with = "rate")]
        stats: bool,
        /// Per-second rates (connections, packets, bytes), from two readings a second
        /// apart.
        #[arg(long)]
        rate: bool,
        /// The connection table's entries (`ipvsadm -Lnc`).
        #[arg(short = 'c', long)]
        connections: bool,
        /// The API's JSON as it comes.
        #[arg(long)]
        json: bool,
    },
    /// Add, change or delete a virtual service (`ipvsadm -A/-E/-D`).
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Add, change, drain or delete a real server (`ipvsadm -a/-e/-d`).
    #[command(subcommand)]
    Real(RealCommand),
    /// Print the running configuration as YAML (`ipvsadm -S`).
    Save,
    /// Replace the running configuration with FILE (`ipvsadm -R`), validated first.
    Restore {
        /// Configuration file (YAML).
        file: PathBuf,
    },
    /// Re-read the configuration file, as SIGHUP does.
    Reload,
    /// Read an `ipvsadm -S` dump: print it as a configuration (or, with --apply, make it
    /// the running director's services); says which lines it cannot express.
    ImportIpvsadm {
        /// The dump (`ipvsadm -Sn > FILE`).
        file: PathBuf,
        /// The director's interfaces for the printed configuration.
        #[arg(long = "interface", default_value = "eth0")]
        interfaces: Vec<String>,
        /// Replace the running director's services with the imported ones.
        #[arg(long)]
        apply: bool,
    },
    /// Print shell completions.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    Man,
}

/// `--metrics`: an address, or `off`.
#[derive(Clone, Debug)]
pub struct Metrics(pub Option<SocketAddr>);

fn metrics_address(text: &str) -> Result<Metrics, String> {
    if text == "off" {
        return Ok(Metrics(None));
    }
    text.parse()
        .map(|a| Metrics(Some(a)))
        .map_err(|_| format!("{text:?}: ADDRESS:PORT or off"))
}

/// A virtual service, as ipvsadm names it.
#[derive(Args, Clone, Debug)]
#[group(required = true, multiple = false)]
pub struct ServiceArg {
    /// A TCP service, ADDRESS:PORT (`[v6]:port` for IPv6).
    #[arg(short = 't', long = "tcp-service", value_name = "ADDRESS:PORT")]
    tcp: Option<SocketAddr>,
    /// A UDP service, ADDRESS:PORT.
    #[arg(short = 'u', long = "udp-service", value_name = "ADDRESS:PORT")]
    udp: Option<SocketAddr>,
}

impl ServiceArg {
    fn id(&self) -> ServiceId {
        let (protocol, at) = match (self.tcp, self.udp) {
            (Some(a), _) => (Protocol::Tcp, a),
            (None, Some(a)) => (Protocol::Udp, a),
            // clap requires one of them.
            (None, None) => (Protocol::Tcp, SocketAddr::from(([0, 0, 0, 0], 0))),
        };
        ServiceId {
            protocol,
            address: at.ip(),
            port: at.port(),
        }
    }
}

/// The forwarding method, by ipvsadm's flags.
#[derive(Args, Clone, Debug, Default)]
#[group(multiple = false)]
pub struct MethodArg {
    /// Direct routing (gatewaying).
    #[arg(short = 'g', long = "gatewaying")]
    dr: bool,
    /// NAT (masquerading).
    #[arg(short = 'm', long = "masquerading")]
    nat: bool,
    /// Full NAT (source from the SNAT pool too).
    #[arg(long)]
    fullnat: bool,
}

impl MethodArg {
    fn name(&self) -> Option<String> {
        if self.dr {
            Some("dr".into())
        } else if self.nat {
            Some("nat".into())
        } else if self.fullnat {
            Some("fullnat".into())
        } else {
            None
        }
    }
}

/// Scheduler options (docs/SCHEDULERS.md).
#[derive(Args, Clone, Debug, Default)]
pub struct SchedArg {
    /// Scheduler flags, comma-separated, as ipvsadm's: `sh-port` / `mh-port` (hash the
    /// client's port too), `sh-fallback` / `mh-fallback` (always so in xdpvs), `none`
    /// (clear `-port`).
    #[arg(short = 'b', long = "sched-flags", value_delimiter = ',', value_parser = [
        "sh-port", "mh-port", "sh-fallback", "mh-fallback", "none"])]
    flags: Vec<String>,
    /// Maglev table size for sh, dh and mh: a prime from 251 to 131071 (default 4093).
    #[arg(long)]
    table_size: Option<u32>,
    /// Persistence: keep each client on one real for TIMEOUT seconds after its last
    /// packet (default 300; 0 with `service edit` removes persistence).
    #[arg(short = 'p', long = "persistent", value_name = "TIMEOUT", num_args = 0..=1,
        default_missing_value = "300")]
    persistent: Option<u32>,
    /// Persistence granularity: clients whose addresses agree under this netmask share
    /// a real (e.g. 255.255.255.0).
    #[arg(short = 'M', long = "netmask")]
    netmask: Option<std::net::Ipv4Addr>,
}

impl SchedArg {
    fn hash_port(&self) -> Option<bool> {
        if self.flags.iter().any(|f| f.ends_with("-port")) {
            Some(true)
        } else if self.flags.iter().any(|f| f == "none") {
            Some(false)
        } else {
            None
        }
    }
}

#[derive(Subcommand)]
pub enum ServiceCommand {
    /// Add a service (no reals yet).
    Add {
        #[command(flatten)]
        service: ServiceArg,
        /// Scheduler (LVS name).
        #[arg(short = 's', long, default_value = "sh")]
        scheduler: String,
        #[command(flatten)]
        sched: SchedArg,
        #[command(flatten)]
        method: MethodArg,
        /// A name for reports.
        #[arg(long)]
        name: Option<String>,
    },
    /// Change a service's scheduler, method or name.
    Edit {
        #[command(flatten)]
        service: ServiceArg,
        #[arg(short = 's', long)]
        scheduler: Option<String>,
        #[command(flatten)]
        sched: SchedArg,
        #[command(flatten)]
        method: MethodArg,
        #[arg(long)]
        name: Option<String>,
    },
    /// Delete a service and its reals.
    Delete {
        #[command(flatten)]
        service: ServiceArg,
    },
}

#[derive(Subcommand)]
pub enum RealCommand {
    /// Add a real server to a service.
    Add {
        #[command(flatten)]
        service: ServiceArg,
        /// The real: ADDRESS, or ADDRESS:PORT under NAT.
        #[arg(short = 'r', long = "real-server", value_name = "ADDRESS[:PORT]")]
        real: String,
        /// Weight (0 to 65535; 0 takes no new flows).
        #[arg(short = 'w', long)]
        weight: Option<u32>,
    },
    /// Change a real server's weight.
    Edit {
        #[command(flatten)]
        service: ServiceArg,
        #[arg(short = 'r', long = "real-server", value_name = "ADDRESS[:PORT]")]
        real: String,
        #[arg(short = 'w', long)]
        weight: u32,
    },
    /// Stop sending new flows to a real (its flows stay; its weight is kept).
    Drain {
        #[command(flatten)]
        service: ServiceArg,
        #[arg(short = 'r', long = "real-server", value_name = "ADDRESS[:PORT]")]
        real: String,
    },
    /// Let a drained real take new flows again, with its weight.
    Undrain {
        #[command(flatten)]
        service: ServiceArg,
        #[arg(short = 'r', long = "real-server", value_name = "ADDRESS[:PORT]")]
        real: String,
    },
    /// Delete a real server from a service.
    Delete {
        #[command(flatten)]
        service: ServiceArg,
        #[arg(short = 'r', long = "real-server", value_name = "ADDRESS[:PORT]")]
        real: String,
    },
}

/// A command's failure: the line for standard error and the exit status (2: the
/// daemon refused the request; 1: it could not be asked or failed).
pub struct Failure {
    pub message: String,
    pub code: u8,
}

fn failure(message: impl Into<String>, code: u8) -> Failure {
    Failure {
        message: message.into(),
        code,
    }
}

/// ADDRESS or ADDRESS:PORT (`[v6]:port`); no port means the service's.
fn real_arg(text: &str, service: &ServiceId) -> Result<(IpAddr, u16), Failure> {
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Ok((a.ip(), a.port()));
    }
    text.parse::<IpAddr>()
        .map(|a| (a, service.port))
        .map_err(|_| failure(format!("-r {text:?}: ADDRESS or ADDRESS:PORT"), 2))
}

fn service_path(id: &ServiceId) -> String {
    format!("/v1/services/{}/{}/{}", id.protocol, id.address, id.port)
}

fn json_body<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

async fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<Vec<u8>, Failure> {
    let reply = api::call(socket, method, path, body)
        .await
        .map_err(|e| failure(e, 1))?;
    // One line for the operator; a parser's annotated snippet follows its first line.
    let line = || reply.error().lines().next().unwrap_or("").to_owned();
    match reply.status {
        200..=299 => Ok(reply.body),
        400..=499 => Err(failure(line(), 2)),
        _ => Err(failure(line(), 1)),
    }
}

/// Runs a command that talks to the daemon; returns what to print.
pub async fn run(socket: &Path, command: Command) -> Result<String, Failure> {
    match command {
        Command::List {
            stats,
            rate,
            connections,
            json,
        } => {
            let path = if connections {
                "/v1/connections"
            } else {
                "/v1/services"
            };
            let read = || async {
                let body = request(socket, "GET", path, Vec::new()).await?;
                serde_json::from_slice::<Value>(&body)
                    .map_err(|e| failure(format!("the daemon's answer: {e}"), 1))
            };
            let mut value = read().await?;
            let mut stats = stats;
            if rate && !connections {
                let start = std::time::Instant::now();
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                let later = read().await?;
                value = rates(&value, &later, start.elapsed().as_secs_f64());
                stats = true;
            }
            Ok(if json {
                format!(
                    "{}\n",
                    serde_json::to_string_pretty(&value).unwrap_or_default()
                )
            } else if connections {
                format_connections(&value)
            } else {
                format_services(&value, stats, rate)
            })
        }
        Command::Save => {
            let body = request(socket, "GET", "/v1/config", Vec::new()).await?;
            Ok(String::from_utf8_lossy(&body).into_owned())
        }
        Command::Restore { file } => {
            let text =
                crate::config::Config::read_text(&file).map_err(|e| failure(e.to_string(), 2))?;
            applied(request(socket, "PUT", "/v1/config", text.into_bytes()).await?)
        }
        Command::Reload => applied(request(socket, "POST", "/v1/reload", Vec::new()).await?),
        Command::Service(c) => {
            let (method, id, body) = match c {
                ServiceCommand::Add {
                    service,
                    scheduler,
                    sched,
                    method,
                    name,
                } => (
                    "POST",
                    service.id(),
                    json_body(&ServiceFields {
                        name,
                        scheduler: Some(scheduler),
                        forwarding: method.name(),
                        hash_port: sched.hash_port(),
                        table_size: sched.table_size,
                        persistent: sched.persistent,
                        netmask: sched.netmask.map(|m| m.to_string()),
                    }),
                ),
                ServiceCommand::Edit {
                    service,
                    scheduler,
                    sched,
                    method,
                    name,
                } => (
                    "PATCH",
                    service.id(),
                    json_body(&ServiceFields {
                        name,
                        scheduler,
                        forwarding: method.name(),
                        hash_port: sched.hash_port(),
                        table_size: sched.table_size,
                        persistent: sched.persistent,
                        netmask: sched.netmask.map(|m| m.to_string()),
                    }),
                ),
                ServiceCommand::Delete { service } => ("DELETE", service.id(), Vec::new()),
            };
            applied(request(socket, method, &service_path(&id), body).await?)
        }
        Command::Real(c) => {
            let (method, service, real, change) = match c {
                RealCommand::Add {
                    service,
                    real,
                    weight,
                } => (
                    "POST",
                    service,
                    real,
                    RealChange {
                        weight,
                        drained: None,
                    },
                ),
                RealCommand::Edit {
                    service,
                    real,
                    weight,
                } => (
                    "PATCH",
                    service,
                    real,
                    RealChange {
                        weight: Some(weight),
                        drained: None,
                    },
                ),
                RealCommand::Drain { service, real } => (
                    "PATCH",
                    service,
                    real,
                    RealChange {
                        weight: None,
                        drained: Some(true),
                    },
                ),
                RealCommand::Undrain { service, real } => (
                    "PATCH",
                    service,
                    real,
                    RealChange {
                        weight: None,
                        drained: Some(false),
                    },
                ),
                RealCommand::Delete { service, real } => {
                    ("DELETE", service, real, RealChange::default())
                }
            };
            let id = service.id();
            let (address, port) = real_arg(&real, &id)?;
            let path = format!("{}/reals/{address}/{port}", service_path(&id));
            applied(request(socket, method, &path, json_body(&change)).await?)
        }
        Command::ImportIpvsadm {
            file,
            interfaces,
            apply,
        } => {
            let text =
                crate::config::Config::read_text(&file).map_err(|e| failure(e.to_string(), 2))?;
            let import = crate::import::ipvsadm(&text);
            for note in &import.notes {
                eprintln!("xdpvs: {}: {note}", file.display());
            }
            let reals: usize = import
                .services
                .iter()
                .filter_map(|s| s.get("reals").and_then(Value::as_array))
                .map(Vec::len)
                .sum();
            let plural = |n: usize, one: &str, many: &str| {
                format!("{n} {}", if n == 1 { one } else { many })
            };
            eprintln!(
                "xdpvs: {}: {} and {} imported; {} not expressed (above)",
                file.display(),
                plural(import.services.len(), "service", "services"),
                plural(reals, "real", "reals"),
                plural(import.notes.len(), "line or option", "lines or options"),
            );
            if apply {
                let running = request(socket, "GET", "/v1/config", Vec::new()).await?;
                let running = String::from_utf8_lossy(&running).into_owned();
                let mut doc = Document::parse(&running, Path::new("running configuration"))
                    .map_err(|e| failure(e.to_string(), 1))?;
                doc.set_services(import.services)
                    .map_err(|e| failure(e.to_string(), 1))?;
                applied(request(socket, "PUT", "/v1/config", doc.to_yaml().into_bytes()).await?)
            } else {
                let doc = Document::new(&interfaces, import.services);
                doc.validate(Path::new("imported configuration"))
                    .map_err(|e| {
                        failure(e.to_string().lines().next().unwrap_or("").to_owned(), 2)
                    })?;
                Ok(doc.to_yaml())
            }
        }
        Command::Daemon { .. }
        | Command::Teardown { .. }
        | Command::CheckConfig { .. }
        | Command::Completions { .. }
        | Command::Man => Err(failure("not an API command", 1)),
    }
}

/// The daemon's summary of an applied change.
fn applied(body: Vec<u8>) -> Result<String, Failure> {
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Ok(match value.get("applied").and_then(Value::as_str) {
        Some(s) => format!("applied: {s}\n"),
        None => String::new(),
    })
}

fn forward_name(method: &str) -> &'static str {
    match method {
        "nat" => "Masq",
        "fullnat" => "FullNat",
        _ => "Route",
    }
}

fn endpoint(address: &str, port: u64) -> String {
    if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn number(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// Per-second rates between two readings of `/v1/services` (`seconds` apart): the later
/// reading with each counter replaced by its rate (services and reals matched by place;
/// a change in between shows as the later reading's own counters).
pub fn rates(before: &Value, after: &Value, seconds: f64) -> Value {
    let mut out = after.clone();
    let rate = |a: &Value, b: &Value, key: &str| -> Value {
        let (x, y) = (number(a, key), number(b, key));
        let same =
            text(a, "address") == text(b, "address") && number(a, "port") == number(b, "port");
        let delta = if same { y.saturating_sub(x) } else { y };
        Value::from((delta as f64 / seconds.max(1e-3)).round() as u64)
    };
    let none = Vec::new();
    let old = before
        .get("services")
        .and_then(Value::as_array)
        .unwrap_or(&none);
    if let Some(services) = out.get_mut("services").and_then(Value::as_array_mut) {
        for (i, s) in services.iter_mut().enumerate() {
            let prev = old.get(i).cloned().unwrap_or(Value::Null);
            let now = s.clone();
            for key in ["connections", "packets", "bytes"] {
                s[key] = rate(&prev, &now, key);
            }
            let prev_reals = prev
                .get("reals")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if let Some(reals) = s.get_mut("reals").and_then(Value::as_array_mut) {
                for (j, r) in reals.iter_mut().enumerate() {
                    let p = prev_reals.get(j).cloned().unwrap_or(Value::Null);
                    let n = r.clone();
                    for key in ["connections", "packets", "bytes"] {
                        r[key] = rate(&p, &n, key);
                    }
                }
            }
        }
    }
    out
}

/// The `ipvsadm -Ln` layout (with `--stats`, its counters instead).
pub fn format_services(value: &Value, stats: bool, rate: bool) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "IP Virtual Server version {} (xdpvs)\n",
        env!("CARGO_PKG_VERSION")
    );
    if rate {
        out.push_str("Prot LocalAddress:Port                 CPS       PPS          BPS\n");
        out.push_str("  -> RemoteAddress:Port\n");
    } else if stats {
        out.push_str("Prot LocalAddress:Port               Conns   Packets        Bytes\n");
        out.push_str("  -> RemoteAddress:Port\n");
    } else {
        out.push_str("Prot LocalAddress:Port Scheduler Flags\n");
        out.push_str("  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n");
    }
    let none = Vec::new();
    let services = value
        .get("services")
        .and_then(Value::as_array)
        .unwrap_or(&none);
    for s in services {
        let local = endpoint(text(s, "address"), number(s, "port"));
        let prot = text(s, "protocol").to_uppercase();
        if stats {
            let _ = writeln!(
                out,
                "{prot:<4} {local:<28} {:>8} {:>9} {:>12}",
                number(s, "connections"),
                number(s, "packets"),
                number(s, "bytes")
            );
        } else {
            let flags: Vec<&str> = s
                .get("sched_flags")
                .and_then(Value::as_array)
                .unwrap_or(&none)
                .iter()
                .filter_map(Value::as_str)
                .collect();
            let flags = if flags.is_empty() {
                String::new()
            } else {
                format!(" ({})", flags.join(","))
            };
            let persistent = match s.get("persistence").filter(|p| p.is_object()) {
                Some(p) => {
                    let mask = text(p, "netmask");
                    let mask = if mask == "255.255.255.255" {
                        String::new()
                    } else {
                        format!(" mask {mask}")
                    };
                    format!(" persistent {}{mask}", number(p, "timeout"))
                }
                None => String::new(),
            };
            let _ = writeln!(
                out,
                "{prot:<4} {local} {}{flags}{persistent}",
                text(s, "scheduler")
            );
        }
        let quorum_lost = s
            .get("quorum")
            .and_then(|q| q.get("lost"))
            .and_then(Value::as_bool)
            == Some(true);
        for r in s.get("reals").and_then(Value::as_array).unwrap_or(&none) {
            let remote = endpoint(text(r, "address"), number(r, "port"));
            if stats {
                let _ = writeln!(
                    out,
                    "  -> {remote:<28} {:>6} {:>9} {:>12}",
                    number(r, "connections"),
                    number(r, "packets"),
                    number(r, "bytes")
                );
            } else {
                let flag = |name| r.get(name).and_then(Value::as_bool) == Some(true);
                let drained = flag("drained");
                let health = text(r, "health");
                let mut notes = Vec::new();
                if drained {
                    notes.push(format!("drained (weight {})", number(r, "weight")));
                }
                let since = r
                    .get("health_since")
                    .and_then(Value::as_u64)
                    .map(|t| {
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs());
                        format!(" for {} s", now.saturating_sub(t))
                    })
                    .unwrap_or_default();
                if health == "down" {
                    let removed = if flag("removed") { "removed, " } else { "" };
                    notes.push(format!("{removed}down{since}: {}", text(r, "last_error")));
                }
                if health == "draining" {
                    notes.push(format!("draining{since}: its check asked for it"));
                }
                if flag("sorry") {
                    notes.push("sorry server".into());
                }
                if quorum_lost && !flag("sorry") {
                    notes.push("held: quorum lost".into());
                }
                let _ = writeln!(
                    out,
                    "  -> {remote:<28} {:<7} {:<6} {:<10} {:<9}{}{}",
                    forward_name(text(s, "forwarding")),
                    // What the scheduler uses now: 0 while drained, down, draining or
                    // held, a slow start's step while it ramps.
                    number(r, "scheduling_weight"),
                    number(r, "active_connections"),
                    number(r, "inactive_connections"),
                    if notes.is_empty() { "" } else { " " },
                    notes.join("; ")
                );
            }
        }
    }
    out
}

/// The `ipvsadm -Lnc` layout.
pub fn format_connections(value: &Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::from(
        "IPVS connection entries\npro expire state       source                virtual               destination\n",
    );
    let none = Vec::new();
    for c in value
        .get("connections")
        .and_then(Value::as_array)
        .unwrap_or(&none)
    {
        let expire = number(c, "expires_in");
        let _ = writeln!(
            out,
            "{:<3} {:02}:{:02}  {:<11} {:<21} {:<21} {}",
            text(c, "protocol").to_uppercase(),
            expire / 60,
            expire % 60,
            text(c, "state"),
            text(c, "client"),
            text(c, "virtual"),
            c.get("real").and_then(Value::as_str).unwrap_or("-")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_deltas_per_second_matched_by_service_and_real() {
        let before = serde_json::json!({"services": [{"address": "192.0.2.100", "port": 80,
            "protocol": "tcp", "connections": 10, "packets": 100, "bytes": 1000,
            "reals": [{"address": "192.0.2.11", "port": 80, "connections": 4,
                       "packets": 40, "bytes": 400}]}]});
        let after = serde_json::json!({"services": [{"address": "192.0.2.100", "port": 80,
            "protocol": "tcp", "connections": 30, "packets": 300, "bytes": 5000,
            "reals": [{"address": "192.0.2.11", "port": 80, "connections": 24,
                       "packets": 240, "bytes": 4400}]}]});
        let r = rates(&before, &after, 2.0);
        assert_eq!(r["services"][0]["connections"], 10);
        assert_eq!(r["services"][0]["bytes"], 2000);
        assert_eq!(r["services"][0]["reals"][0]["packets"], 100);
        let text = format_services(&r, true, true);
        assert!(text.contains("CPS"), "{text}");
        assert!(text.contains("TCP  192.0.2.100:80"), "{text}");
        // A service that was replaced in between: its own counters, not a negative rate.
        let mut moved = after.clone();
        moved["services"][0]["port"] = 81.into();
        moved["services"][0]["connections"] = 3.into();
        assert_eq!(rates(&before, &moved, 1.0)["services"][0]["connections"], 3);
    }
}
