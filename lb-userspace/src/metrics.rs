//! Prometheus metrics: read from the per-CPU maps at scrape time (no copy kept in the
//! daemon), named and labelled by Prometheus conventions, served on `/metrics`.

use lb_common::{
    conntrack::{Flow, FlowKeyV4},
    event::Event,
    reason::Reason,
};
use prometheus::{Encoder as _, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::{
    config::Config,
    dataplane::Snapshot,
    health::{Health, Status, Target},
    plan::Plan,
};

/// Default listening address: loopback only.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:9469";

/// What a scrape reads besides the counters.
pub struct Tables<'a> {
    pub flows: &'a [(FlowKeyV4, Flow)],
    pub flow_capacity: u32,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
    let _ = registry.register(Box::new(c.clone()));
    c
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
    let _ = registry.register(Box::new(g.clone()));
    g
}

/// Unix seconds, as a gauge holds them.
fn unix_secs(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64_of(d.as_secs()))
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The metrics text of one scrape.
pub fn render(
    config: &Config,
    plan: &Plan,
    snapshot: &Snapshot,
    tables: &Tables,
    health: &Health,
) -> String {
    let r = Registry::new();
    let svc = ["protocol", "address", "port", "name"];
    let real = ["protocol", "address", "port", "real_address", "real_port"];
    let s_conns = counter(
        &r,
        "xdpvs_service_connections_total",
        "New flows scheduled for the virtual service.",
        &svc,
    );
    let s_packets = counter(
        &r,
        "xdpvs_service_packets_total",
        "Packets forwarded for the virtual service (both ways under NAT).",
        &svc,
    );
    let s_bytes = counter(
        &r,
        "xdpvs_service_bytes_total",
        "Bytes forwarded for the virtual service, Ethernet header included.",
        &svc,
    );
    let s_quorum = gauge(
        &r,
        "xdpvs_service_quorum_lost",
        "1 while the service's live weight is below its quorum (its sorry server, if any, \
         takes the new flows; else they are dropped).",
        &svc,
    );
    let r_conns = counter(
        &r,
        "xdpvs_real_connections_total",
        "New flows scheduled to the real server.",
        &real,
    );
    let r_packets = counter(
        &r,
        "xdpvs_real_packets_total",
        "Packets forwarded to (and under NAT from) the real server.",
        &real,
    );
    let r_bytes = counter(
        &r,
        "xdpvs_real_bytes_total",
        "Bytes forwarded to (and under NAT from) the real server.",
        &real,
    );
    let r_syns = counter(
        &r,
        "xdpvs_real_handshakes_total",
        "TCP flows begun with a SYN scheduled to the real.",
        &real,
    );
    let r_synacks = counter(
        &r,
        "xdpvs_real_handshakes_answered_total",
        "SYN-ACKs from the real (NAT and full-NAT only: the director sees the replies).",
        &real,
    );
    let r_resets = counter(
        &r,
        "xdpvs_real_resets_total",
        "RSTs from the real (NAT and full-NAT only).",
        &real,
    );
    let r_active = gauge(
        &r,
        "xdpvs_real_active_connections",
        "Live connection-table entries of the real in TCP state established.",
        &real,
    );
    let r_inactive = gauge(
        &r,
        "xdpvs_real_inactive_connections",
        "Live connection-table entries of the real in other states (other TCP states, UDP).",
        &real,
    );
    let r_weight = gauge(
        &r,
        "xdpvs_real_weight",
        "Configured weight of the real server.",
        &real,
    );
    let r_drained = gauge(
        &r,
        "xdpvs_real_drained",
        "1 while the real server is drained (no new flows).",
        &real,
    );
    let r_up = gauge(
        &r,
        "xdpvs_real_up",
        "Health of a checked real server: 1 up, 0 down (its check failed `fall` times).",
        &real,
    );
    let r_draining = gauge(
        &r,
        "xdpvs_real_draining",
        "1 while the real's health check asks for a drain (HTTP 503 or a configured status).",
        &real,
    );
    let r_since = gauge(
        &r,
        "xdpvs_real_health_since_seconds",
        "Unix time of the checked real's last health transition (its start if none).",
        &real,
    );
    let r_check = gauge(
        &r,
        "xdpvs_real_check_duration_milliseconds",
        "How long the real's last health check took.",
        &real,
    );
    let reasons = counter(
        &r,
        "xdpvs_packets_total",
        "Every packet the XDP program saw, by outcome (docs/OPERATIONS.md lists them).",
        &["reason"],
    );
    let events = counter(
        &r,
        "xdpvs_events_total",
        "Connection-table and data-path events (ct_insert_refused: refused inserts).",
        &["event"],
    );
    let entries = IntGauge::new(
        "xdpvs_conntrack_entries",
        "Entries in the connection table, live or expired but not yet evicted.",
    )
    .unwrap_or_else(|e| unreachable!("{e}"));
    let capacity = IntGauge::new(
        "xdpvs_conntrack_capacity",
        "Entries the connection table holds (limits.max_flows).",
    )
    .unwrap_or_else(|e| unreachable!("{e}"));
    let build = gauge(
        &r,
        "xdpvs_build_info",
        "The xdpvs build: 1, labelled with its version.",
        &["version"],
    );
    let _ = r.register(Box::new(entries.clone()));
    let (latency, results) = health.collectors();
    let _ = r.register(Box::new(latency));
    let _ = r.register(Box::new(results));
    let _ = r.register(Box::new(capacity.clone()));

    let conns = crate::stats::connection_counts(plan, tables.flows);

    for ((s, (counters, reals)), cs) in plan
        .services
        .iter()
        .zip(&snapshot.services)
        .zip(&config.services)
    {
        let (protocol, address, port) = (
            s.protocol.to_string(),
            s.address.to_string(),
            s.port.to_string(),
        );
        let labels = [
            protocol.as_str(),
            address.as_str(),
            port.as_str(),
            s.name.as_deref().unwrap_or(""),
        ];
        s_conns.with_label_values(&labels).inc_by(counters.flows);
        s_packets
            .with_label_values(&labels)
            .inc_by(counters.packets);
        s_bytes.with_label_values(&labels).inc_by(counters.bytes);
        if cs.quorum.is_some() {
            s_quorum
                .with_label_values(&labels)
                .set(i64::from(cs.quorum_lost));
        }
        for ((rp, c), rc) in s.reals.iter().zip(reals).zip(&cs.reals) {
            let (ra, rport) = (rp.address.to_string(), rp.port.to_string());
            let labels = [
                protocol.as_str(),
                address.as_str(),
                port.as_str(),
                ra.as_str(),
                rport.as_str(),
            ];
            r_conns.with_label_values(&labels).inc_by(c.flows);
            r_packets.with_label_values(&labels).inc_by(c.packets);
            r_bytes.with_label_values(&labels).inc_by(c.bytes);
            r_syns.with_label_values(&labels).inc_by(c.syns);
            r_synacks.with_label_values(&labels).inc_by(c.synacks);
            r_resets.with_label_values(&labels).inc_by(c.resets);
            let (active, inactive) = conns.get(&rp.index).copied().unwrap_or_default();
            r_active.with_label_values(&labels).set(i64_of(active));
            r_inactive.with_label_values(&labels).set(i64_of(inactive));
            r_weight
                .with_label_values(&labels)
                .set(i64::from(rc.weight));
            r_drained
                .with_label_values(&labels)
                .set(i64::from(rc.drained));
            if cs.check_of(rc).is_some() {
                let state = health.state(&Target::of(cs, rc));
                let status = state.map_or(Status::Up, |s| s.status);
                r_up.with_label_values(&labels)
                    .set(i64::from(status == Status::Up));
                r_draining
                    .with_label_values(&labels)
                    .set(i64::from(status == Status::Draining));
                if let Some(s) = state {
                    r_check
                        .with_label_values(&labels)
                        .set(i64::try_from(s.last_took.as_millis()).unwrap_or(i64::MAX));
                    r_since.with_label_values(&labels).set(unix_secs(s.since));
                }
            }
        }
    }
    // The reals `on_failure: remove` took out: in no plan, still down.
    for removed in health.removed() {
        let owned = removed.target.labels();
        let labels = owned.each_ref().map(String::as_str);
        r_up.with_label_values(&labels).set(0);
        r_draining.with_label_values(&labels).set(0);
        if let Some(s) = health.state(&removed.target) {
            r_since.with_label_values(&labels).set(unix_secs(s.since));
        }
    }
    for &reason in Reason::ALL {
        reasons
            .with_label_values(&[reason.name()])
            .inc_by(snapshot.reason(reason));
    }
    for &event in Event::ALL {
        events
            .with_label_values(&[event.name()])
            .inc_by(snapshot.event(event));
    }
    entries.set(i64_of(tables.flows.len() as u64));
    capacity.set(i64::from(tables.flow_capacity));
    build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&r.gather(), &mut out) {
        return format!("# encoding failed: {e}\n");
    }
    String::from_utf8(out).unwrap_or_default()
}
