//! The counter report the daemon prints on SIGUSR1 and when it stops (one record a line,
//! `key=value` fields, so people and scripts read it alike; the format is in
//! docs/OPERATIONS.md), and the listings the API returns.

use std::{collections::HashMap, fmt::Write as _, net::Ipv4Addr};

use lb_common::{
    conntrack::{
        FLOW_F_REPLY, Flow, FlowKeyV4, STATE_TCP_CLOSE, STATE_TCP_ESTABLISHED, STATE_TCP_FIN,
        STATE_TCP_SYN, STATE_UDP,
    },
    event::Event,
    reason::Reason,
};
use serde_json::{Value, json};

use crate::{
    config::{Config, Real, Service},
    dataplane::Snapshot,
    health::{Health, Target},
    plan::{Plan, ServicePlan},
};

pub fn report(plan: &Plan, snapshot: &Snapshot) -> String {
    let mut out = String::new();
    for (s, (counters, reals)) in plan.services.iter().zip(&snapshot.services) {
        let _ = writeln!(
            out,
            "service {} scheduler={} forwarding={} name={} connections={} packets={} bytes={}",
            s.label(),
            s.scheduler,
            s.forwarding,
            s.name.as_deref().unwrap_or("-"),
            counters.flows,
            counters.packets,
            counters.bytes
        );
        for (r, c) in s.reals.iter().zip(reals) {
            let _ = writeln!(
                out,
                "  real {}:{} weight={} connections={} packets={} bytes={}",
                r.address, r.port, r.weight, c.flows, c.packets, c.bytes
            );
        }
    }
    for &reason in Reason::ALL {
        let _ = writeln!(
            out,
            "reason {} packets={}",
            reason.name(),
            snapshot.reason(reason)
        );
    }
    for &event in Event::ALL {
        let _ = writeln!(
            out,
            "event {} count={}",
            event.name(),
            snapshot.event(event)
        );
    }
    out
}

/// Seconds of CLOCK_MONOTONIC_COARSE, the clock of `Flow::last_seen`.
pub fn coarse_now() -> u32 {
    // SAFETY: clock_gettime writes into a zeroed, owned timespec.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u32
}

/// The forward entries of live flows (not expired; a NAT flow's reply entry is its
/// twin and not counted again), with the service each belongs to.
fn live<'a>(
    plan: &'a Plan,
    flows: &'a [(FlowKeyV4, Flow)],
) -> impl Iterator<Item = (&'a FlowKeyV4, &'a Flow, &'a ServicePlan)> + 'a {
    let now = coarse_now();
    let by_id: HashMap<u32, &ServicePlan> = plan.services.iter().map(|s| (s.value.id, s)).collect();
    flows.iter().filter_map(move |(k, f)| {
        if f.flags & FLOW_F_REPLY != 0 {
            return None;
        }
        let s = *by_id.get(&u32::from(f.service))?;
        let timeout = s.value.timeouts.get(f.state as usize).copied().unwrap_or(0);
        (now.wrapping_sub(f.last_seen) <= timeout).then_some((k, f, s))
    })
}

/// Live connections per real index: (active, inactive). Active while the TCP state is
/// established, inactive otherwise (other TCP states, UDP), as in `ipvsadm -L`.
pub fn connection_counts(plan: &Plan, flows: &[(FlowKeyV4, Flow)]) -> HashMap<u32, (u64, u64)> {
    let generations: HashMap<u32, u32> = plan
        .services
        .iter()
        .flat_map(|s| &s.reals)
        .map(|r| (r.index, r.value.generation))
        .collect();
    let mut conns: HashMap<u32, (u64, u64)> = HashMap::new();
    for (_, f, _) in live(plan, flows) {
        if generations.get(&f.real) != Some(&f.real_gen) {
            continue;
        }
        let c = conns.entry(f.real).or_default();
        if f.state == STATE_TCP_ESTABLISHED {
            c.0 += 1;
        } else {
            c.1 += 1;
        }
    }
    conns
}

/// Services with their reals, counters and connection counts, as `GET /v1/services`
/// returns them. A connection is active while its TCP state is established, inactive
/// otherwise (other TCP states, UDP), as in `ipvsadm -L`.
pub fn listing(
    config: &Config,
    plan: &Plan,
    snapshot: &Snapshot,
    flows: &[(FlowKeyV4, Flow)],
    health: &Health,
) -> Value {
    let conns = connection_counts(plan, flows);
    let services: Vec<Value> = plan
        .services
        .iter()
        .zip(&snapshot.services)
        .zip(&config.services)
        .map(|((s, (counters, reals)), cs)| {
            let reals: Vec<Value> = s
                .reals
                .iter()
                .zip(reals)
                .zip(&cs.reals)
                .map(|((r, c), cr)| {
                    let (active, inactive) = conns.get(&r.index).copied().unwrap_or_default();
                    let (status, since, error, checked) = health_fields(cs, cr, health);
                    let suspected = health.state(&Target::of(cs, cr)).map(|st| st.suspected);
                    json!({
                        "address": r.address.to_string(),
                        "port": r.port,
                        "weight": cr.weight,
                        "scheduling_weight": r.weight,
                        "drained": cr.drained,
                        "connections": c.flows,
                        "packets": c.packets,
                        "bytes": c.bytes,
                        "active_connections": active,
                        "inactive_connections": inactive,
                        "health": status,
                        "health_since": since,
                        "last_error": error,
                        "last_check": checked,
                        "check": cs.check_of(cr).map(|c| c.kind().to_string()),
                        "suspected": suspected,
                        "sorry": cr.sorry,
                    })
                })
                .chain(removed(cs, health))
                .collect();
            json!({
                "name": s.name,
                "protocol": s.protocol.to_string(),
                "address": s.address.to_string(),
                "port": s.port,
                "scheduler": s.scheduler.to_string(),
                "sched_flags": sched_flags(s),
                "table_size": s.table.len(),
                "persistence": (s.persist.timeout != 0).then(|| json!({
                    "timeout": s.persist.timeout,
                    "netmask": Ipv4Addr::from(s.persist.mask.to_ne_bytes()).to_string(),
                })),
                "forwarding": s.forwarding.to_string(),
                "quorum": cs.quorum.map(|q| json!({
                    "quorum": q,
                    "hysteresis": cs.hysteresis,
                    "lost": cs.quorum_lost,
                    "sorry": cs.sorry.map(|s| format!("{}:{}", s.address, s.port)),
                })),
                "connections": counters.flows,
                "packets": counters.packets,
                "bytes": counters.bytes,
                "reals": reals,
            })
        })
        .collect();
    json!({ "services": services })
}

/// A real's health as listed: status, last transition (Unix seconds), last error and
/// last check (Unix seconds); all null for an unchecked real.
fn health_fields(s: &Service, r: &Real, health: &Health) -> (Value, Value, Value, Value) {
    if r.sorry || s.check_of(r).is_none() {
        return (Value::Null, Value::Null, Value::Null, Value::Null);
    }
    state_fields(health.state(&Target::of(s, r)))
}

/// A checked real's state as listed (no state yet: up, as it starts).
fn state_fields(state: Option<&crate::health::State>) -> (Value, Value, Value, Value) {
    let unix = |t: std::time::SystemTime| {
        json!(
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        )
    };
    match state {
        None => (json!("up"), Value::Null, Value::Null, Value::Null),
        Some(st) => (
            json!(st.status.name()),
            unix(st.since),
            json!(st.last_error),
            st.last_check.map_or(Value::Null, unix),
        ),
    }
}

/// The reals of a service its health checks took out (`on_failure: remove`): listed
/// with their state, weight 0 and no counters.
fn removed<'a>(effective: &'a Service, health: &'a Health) -> impl Iterator<Item = Value> + 'a {
    health
        .removed()
        .iter()
        .filter(move |g| {
            g.target.protocol == effective.protocol
                && g.target.vip == effective.address
                && g.target.vport == effective.port
        })
        .map(move |g| {
            let (status, since, error, checked) = state_fields(health.state(&g.target));
            let r = &g.real;
            json!({
                "address": r.address.to_string(),
                "port": r.port,
                "weight": r.weight,
                "scheduling_weight": 0,
                "drained": r.drained,
                "removed": true,
                "connections": 0,
                "packets": 0,
                "bytes": 0,
                "active_connections": 0,
                "inactive_connections": 0,
                "health": status,
                "health_since": since,
                "last_error": error,
                "last_check": checked,
                "check": g.check.to_string(),
                "sorry": false,
            })
        })
}

/// The service's scheduler flags by ipvsadm's names (`sh-port`, `mh-port`).
fn sched_flags(s: &ServicePlan) -> Vec<String> {
    if s.value.flags & lb_common::SVC_F_HASH_PORT != 0 {
        vec![format!("{}-port", s.scheduler)]
    } else {
        Vec::new()
    }
}

/// The live connection-table entries, as `GET /v1/connections` returns them.
pub fn connections(plan: &Plan, flows: &[(FlowKeyV4, Flow)]) -> Value {
    let now = coarse_now();
    let total = live(plan, flows).count();
    let entries: Vec<Value> = live(plan, flows)
        .take(MAX_LISTED)
        .map(|(k, f, s)| {
            let real = s.reals.iter().find(|r| r.index == f.real);
            let timeout = s.value.timeouts.get(f.state as usize).copied().unwrap_or(0);
            json!({
                "protocol": s.protocol.to_string(),
                "client": format!("{}:{}", Ipv4Addr::from(k.src.to_ne_bytes()), u16::from_be(k.sport)),
                "virtual": format!("{}:{}", Ipv4Addr::from(k.dst.to_ne_bytes()), u16::from_be(k.dport)),
                "real": real.map(|r| format!("{}:{}", r.address, r.port)),
                "state": state_name(f.state),
                "expires_in": timeout.saturating_sub(now.wrapping_sub(f.last_seen)),
            })
        })
        .collect();
    let truncated = total > entries.len();
    json!({ "connections": entries, "total": total, "truncated": truncated })
}

/// Most entries `GET /v1/connections` lists (its answer stays a few tens of MB at most).
pub const MAX_LISTED: usize = 100_000;

fn state_name(state: u8) -> &'static str {
    match state {
        STATE_TCP_SYN => "SYN",
        STATE_TCP_ESTABLISHED => "ESTABLISHED",
        STATE_TCP_FIN => "FIN_WAIT",
        STATE_TCP_CLOSE => "CLOSE",
        STATE_UDP => "UDP",
        _ => "NONE",
    }
}
