//! Health checks as configured (docs/HEALTH.md): the check types, their fields and the
//! validation that names the field at fault.

use std::{net::IpAddr, path::PathBuf};

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{ConfigError, Origin, Validator, origin};

/// How a real is checked.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// A TCP connection is accepted.
    Tcp,
    /// An HTTP/1.1 request is answered with an expected status.
    Http,
    /// The same over TLS.
    Https,
    /// A UDP datagram is answered (or, without `require_reply`, not refused).
    Udp,
    /// A DNS query is answered with a record.
    Dns,
    /// A command exits 0.
    Exec,
}

impl std::fmt::Display for CheckKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CheckKind::Tcp => "tcp",
            CheckKind::Http => "http",
            CheckKind::Https => "https",
            CheckKind::Udp => "udp",
            CheckKind::Dns => "dns",
            CheckKind::Exec => "exec",
        })
    }
}

/// What happens to a real that goes down (keepalived's `inhibit_on_failure`).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Kept with weight 0: no new flows; its established flows continue.
    #[default]
    Inhibit,
    /// Taken out of the service, as if removed from the file: its established flows
    /// follow the service's `expire_nodest_conn` (reset or dropped).
    Remove,
}

/// A real's health check (docs/HEALTH.md).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Check {
    /// The port checked on the real's own address; the real's port when not set.
    pub port: Option<u16>,
    /// Seconds between checks of one real.
    pub interval: u32,
    /// Seconds a check may take; a check that takes longer failed.
    pub timeout: u32,
    /// Successes in a row that bring a down real up.
    pub rise: u32,
    /// Failures in a row that take an up real down.
    pub fall: u32,
    /// Percent of the interval each wait is shortened by, at random (never lengthened, so
    /// `fall` × interval bounds the time to notice a failure).
    pub jitter: u32,
    pub on_failure: OnFailure,
    /// Data-path signals (resets, unanswered handshakes) make the check run at once.
    pub passive: bool,
    pub probe: ProbeSpec,
}

impl Check {
    pub fn kind(&self) -> CheckKind {
        match &self.probe {
            ProbeSpec::Tcp => CheckKind::Tcp,
            ProbeSpec::Http(h) if h.tls.is_some() => CheckKind::Https,
            ProbeSpec::Http(_) => CheckKind::Http,
            ProbeSpec::Udp(_) => CheckKind::Udp,
            ProbeSpec::Dns(_) => CheckKind::Dns,
            ProbeSpec::Exec(_) => CheckKind::Exec,
        }
    }
}

/// What one check does.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ProbeSpec {
    Tcp,
    Http(HttpCheck),
    Udp(UdpCheck),
    Dns(DnsCheck),
    Exec(ExecCheck),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HttpCheck {
    /// `GET` or `HEAD`.
    pub method: String,
    pub path: String,
    /// The `Host` header; the real's address when not set.
    pub host: Option<String>,
    /// Statuses that mean healthy, as inclusive ranges.
    pub expect: Vec<(u16, u16)>,
    /// Statuses that mean "drain me": no new flows, no alarm.
    pub drain: Vec<(u16, u16)>,
    /// Text the body must contain.
    pub body: Option<String>,
    /// `https` only.
    pub tls: Option<TlsCheck>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TlsCheck {
    /// Verify the real's certificate (against `ca`, or the system's roots).
    pub verify: bool,
    /// The server name sent (SNI) and verified; none: no SNI, and a verified
    /// certificate must name the real's address.
    pub sni: Option<String>,
    pub ca: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UdpCheck {
    pub payload: Vec<u8>,
    /// A reply must come; without, silence until the timeout is healthy and only an
    /// ICMP error is a failure (keepalived's UDP_CHECK without `require_reply`).
    pub require_reply: bool,
    /// The reply starts with these bytes.
    pub reply: Vec<u8>,
    pub min_reply: usize,
    pub max_reply: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DnsCheck {
    pub name: String,
    pub qtype: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ExecCheck {
    /// The program and its arguments (a string in the file runs through `/bin/sh -c`).
    pub argv: Vec<String>,
    /// keepalived's `misc_dynamic`: exit 2 to 255 is healthy with weight `exit - 2`.
    pub dynamic: bool,
}

/// The record types a DNS check may ask for.
pub const DNS_TYPES: [&str; 9] = ["A", "AAAA", "SOA", "NS", "MX", "TXT", "CNAME", "PTR", "SRV"];

/// Most bytes of a UDP payload or expected reply.
pub const MAX_UDP_BYTES: usize = 1472;

#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "a command: a line for /bin/sh -c, or a list of the program and its arguments"
)]
pub(super) enum RawCommand {
    Shell(String),
    Argv(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCheck {
    #[serde(rename = "type")]
    kind: CheckKind,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    interval: Option<u32>,
    #[serde(default)]
    timeout: Option<u32>,
    #[serde(default)]
    rise: Option<u32>,
    #[serde(default)]
    fall: Option<u32>,
    #[serde(default)]
    jitter: Option<u32>,
    #[serde(default)]
    on_failure: Option<OnFailure>,
    #[serde(default)]
    passive: Option<bool>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    expect: Option<String>,
    #[serde(default)]
    drain: Option<String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    tls_verify: Option<bool>,
    #[serde(default)]
    sni: Option<String>,
    #[serde(default)]
    ca: Option<PathBuf>,
    #[serde(default)]
    payload: Option<String>,
    #[serde(default)]
    require_reply: Option<bool>,
    #[serde(default)]
    reply: Option<String>,
    #[serde(default)]
    min_reply: Option<usize>,
    #[serde(default)]
    max_reply: Option<usize>,
    #[serde(default)]
    query: Option<String>,
    #[serde(default)]
    query_type: Option<String>,
    #[serde(default)]
    command: Option<RawCommand>,
    #[serde(default)]
    dynamic: Option<bool>,
}

impl RawCheck {
    /// The fields set that belong to one check type, with the types they belong to.
    fn typed_fields(&self) -> Vec<(&'static str, &'static [CheckKind])> {
        use CheckKind::*;
        const WEB: &[CheckKind] = &[Http, Https];
        let mut set = Vec::new();
        let mut note = |present: bool, name, kinds| {
            if present {
                set.push((name, kinds));
            }
        };
        note(self.method.is_some(), "method", WEB);
        note(self.path.is_some(), "path", WEB);
        note(self.host.is_some(), "host", WEB);
        note(self.expect.is_some(), "expect", WEB);
        note(self.drain.is_some(), "drain", WEB);
        note(self.body.is_some(), "body", WEB);
        note(self.tls_verify.is_some(), "tls_verify", &[Https]);
        note(self.sni.is_some(), "sni", &[Https]);
        note(self.ca.is_some(), "ca", &[Https]);
        note(self.payload.is_some(), "payload", &[Udp]);
        note(self.require_reply.is_some(), "require_reply", &[Udp]);
        note(self.reply.is_some(), "reply", &[Udp]);
        note(self.min_reply.is_some(), "min_reply", &[Udp]);
        note(self.max_reply.is_some(), "max_reply", &[Udp]);
        note(self.query.is_some(), "query", &[Dns]);
        note(self.query_type.is_some(), "query_type", &[Dns]);
        note(self.command.is_some(), "command", &[Exec]);
        note(self.dynamic.is_some(), "dynamic", &[Exec]);
        set
    }
}

/// Statuses written as `200`, `200-299`, or a comma-separated list of them.
fn statuses(text: &str) -> Result<Vec<(u16, u16)>, String> {
    let mut out = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        match (a.trim().parse::<u16>(), b.trim().parse::<u16>()) {
            (Ok(a), Ok(b)) if (100..=599).contains(&a) && a <= b && b <= 599 => out.push((a, b)),
            _ => {
                return Err(format!(
                    "{part:?}: statuses as \"200\" or \"200-399\", comma separated"
                ));
            }
        }
    }
    Ok(out)
}

/// Bytes written as hex digits (spaces allowed between bytes), as keepalived writes them.
fn hex_bytes(text: &str) -> Result<Vec<u8>, String> {
    let digits: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return Err(format!("{text:?}: hex digits, two per byte"));
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&digits[i..i + 2], 16)
                .map_err(|_| format!("{text:?}: hex digits, two per byte"))
        })
        .collect()
}

/// A host name as a header or SNI carries it.
fn host_name(h: &str) -> bool {
    !h.is_empty() && h.len() <= 253 && !h.chars().any(|ch| ch.is_control() || ch == ' ')
}

impl Validator<'_> {
    pub(super) fn check(&self, raw: Spanned<RawCheck>, field: &str) -> Result<Check, ConfigError> {
        let at = origin(&raw, field);
        let c = raw.value;
        let bad = |what: &str, message: String| {
            let mut at: Origin = at.clone();
            at.field = format!("{field}.{what}");
            self.invalid(at, message)
        };
        let interval = c.interval.unwrap_or(2);
        if !(1..=3600).contains(&interval) {
            return Err(bad("interval", format!("{interval}: 1 to 3600 seconds")));
        }
        let timeout = c.timeout.unwrap_or(1);
        if timeout == 0 || timeout > interval {
            return Err(bad(
                "timeout",
                format!("{timeout}: 1 second to the interval ({interval} s)"),
            ));
        }
        let (rise, fall) = (c.rise.unwrap_or(2), c.fall.unwrap_or(3));
        for (what, n) in [("rise", rise), ("fall", fall)] {
            if !(1..=100).contains(&n) {
                return Err(bad(what, format!("{n}: 1 to 100 checks")));
            }
        }
        let jitter = c.jitter.unwrap_or(10);
        if jitter > 50 {
            return Err(bad("jitter", format!("{jitter}: 0 to 50 percent")));
        }
        if c.port == Some(0) {
            return Err(bad("port", "0 is not a port".into()));
        }
        for (name, kinds) in c.typed_fields() {
            if !kinds.contains(&c.kind) {
                let kinds: Vec<String> = kinds.iter().map(|k| k.to_string()).collect();
                return Err(bad(
                    name,
                    format!(
                        "{name} is for {} checks, not {}",
                        kinds.join(" and "),
                        c.kind
                    ),
                ));
            }
        }
        let probe = match c.kind {
            CheckKind::Tcp => ProbeSpec::Tcp,
            CheckKind::Http | CheckKind::Https => {
                let method = c
                    .method
                    .unwrap_or_else(|| "GET".into())
                    .to_ascii_uppercase();
                if method != "GET" && method != "HEAD" {
                    return Err(bad("method", format!("{method:?}: GET or HEAD")));
                }
                let path = c.path.unwrap_or_else(|| "/".into());
                if !path.starts_with('/')
                    || path.len() > 1024
                    || path.chars().any(|ch| ch.is_control() || ch == ' ')
                {
                    return Err(bad(
                        "path",
                        format!("{path:?}: an absolute path, no spaces"),
                    ));
                }
                if let Some(h) = &c.host
                    && !host_name(h)
                {
                    return Err(bad("host", format!("{h:?}: a host name")));
                }
                let expect = statuses(c.expect.as_deref().unwrap_or("200-399"))
                    .map_err(|m| bad("expect", m))?;
                let drain = match c.drain.as_deref() {
                    Some("none") => Vec::new(),
                    other => statuses(other.unwrap_or("503")).map_err(|m| bad("drain", m))?,
                };
                if let Some(s) = drain
                    .iter()
                    .flat_map(|&(a, b)| a..=b)
                    .find(|s| expect.iter().any(|&(a, b)| (a..=b).contains(s)))
                {
                    return Err(bad(
                        "drain",
                        format!("{s} is both healthy (expect) and drain"),
                    ));
                }
                if let Some(b) = &c.body
                    && (b.is_empty() || b.len() > 4096)
                {
                    return Err(bad("body", "1 to 4096 bytes of text to find".into()));
                }
                if method == "HEAD" && c.body.is_some() {
                    return Err(bad("body", "a HEAD answer has no body to match".into()));
                }
                if let Some(s) = &c.sni
                    && (!host_name(s) || s.parse::<IpAddr>().is_ok())
                {
                    return Err(bad("sni", format!("{s:?}: a DNS name")));
                }
                if let Some(ca) = &c.ca {
                    if c.tls_verify == Some(false) {
                        return Err(bad("ca", "a CA is for tls_verify: true".into()));
                    }
                    if let Err(e) = std::fs::metadata(ca) {
                        return Err(bad("ca", format!("{}: {e}", ca.display())));
                    }
                }
                let tls = (c.kind == CheckKind::Https).then(|| TlsCheck {
                    verify: c.tls_verify.unwrap_or(false) || c.ca.is_some(),
                    sni: c.sni,
                    ca: c.ca,
                });
                ProbeSpec::Http(HttpCheck {
                    method,
                    path,
                    host: c.host,
                    expect,
                    drain,
                    body: c.body,
                    tls,
                })
            }
            CheckKind::Udp => {
                let payload =
                    hex_bytes(c.payload.as_deref().unwrap_or("")).map_err(|m| bad("payload", m))?;
                let reply =
                    hex_bytes(c.reply.as_deref().unwrap_or("")).map_err(|m| bad("reply", m))?;
                for (what, len) in [("payload", payload.len()), ("reply", reply.len())] {
                    if len > MAX_UDP_BYTES {
                        return Err(bad(what, format!("{len} bytes; at most {MAX_UDP_BYTES}")));
                    }
                }
                let min_reply = c.min_reply.unwrap_or(0);
                let max_reply = c.max_reply.unwrap_or(65_507);
                if min_reply > max_reply || max_reply > 65_507 {
                    return Err(bad(
                        "max_reply",
                        format!("{min_reply} to {max_reply}: lengths from 0 to 65507 bytes"),
                    ));
                }
                let require_reply = c.require_reply.unwrap_or(true);
                if !require_reply && (!reply.is_empty() || c.min_reply.is_some()) {
                    return Err(bad(
                        "require_reply",
                        "reply and min_reply need require_reply: true".into(),
                    ));
                }
                if reply.len() > max_reply {
                    return Err(bad(
                        "reply",
                        format!("{} bytes cannot fit in max_reply {max_reply}", reply.len()),
                    ));
                }
                ProbeSpec::Udp(UdpCheck {
                    payload,
                    require_reply,
                    min_reply: min_reply.max(reply.len()),
                    reply,
                    max_reply,
                })
            }
            CheckKind::Dns => {
                let name = c.query.unwrap_or_else(|| ".".into());
                if hickory_proto::rr::Name::from_ascii(&name).is_err() || name.len() > 253 {
                    return Err(bad("query", format!("{name:?}: a DNS name")));
                }
                let qtype = c
                    .query_type
                    .unwrap_or_else(|| "SOA".into())
                    .to_ascii_uppercase();
                if !DNS_TYPES.contains(&qtype.as_str()) {
                    return Err(bad(
                        "query_type",
                        format!("{qtype:?}: one of {}", DNS_TYPES.join(", ")),
                    ));
                }
                ProbeSpec::Dns(DnsCheck { name, qtype })
            }
            CheckKind::Exec => {
                let argv = match c.command {
                    None => return Err(bad("command", "an exec check needs a command".into())),
                    Some(RawCommand::Shell(s)) if !s.trim().is_empty() => {
                        vec!["/bin/sh".into(), "-c".into(), s]
                    }
                    Some(RawCommand::Argv(v)) if v.first().is_some_and(|p| !p.is_empty()) => v,
                    Some(_) => {
                        return Err(bad(
                            "command",
                            "a command line, or a list: program, arguments".into(),
                        ));
                    }
                };
                if argv.iter().any(|a| a.contains('\0')) {
                    return Err(bad("command", "a NUL byte cannot be passed".into()));
                }
                ProbeSpec::Exec(ExecCheck {
                    argv,
                    dynamic: c.dynamic.unwrap_or(false),
                })
            }
        };
        Ok(Check {
            port: c.port,
            interval,
            timeout,
            rise,
            fall,
            jitter,
            on_failure: c.on_failure.unwrap_or_default(),
            passive: c.passive.unwrap_or(false),
            probe,
        })
    }
}
