//! End to end, metrics: a real Prometheus server (installed by `cargo xtask setup`)
//! scrapes the daemon inside the director's namespace, and what it stored matches the
//! traffic the test sent.

use std::{
    net::SocketAddr,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use xdpvs_testbed::{
    netns::Netns,
    rig::{DrRig, VIP, client_sources, http_get as get},
    traffic::ask_each,
};

const TIMEOUT: Duration = Duration::from_secs(3);
const PROMETHEUS: &str = "/usr/bin/prometheus";
const CONNECTIONS: usize = 40;

/// The value of a PromQL query (a single number), or None while it has none.
fn query(ns: &Netns, promql: &str) -> Option<f64> {
    let encoded: String = promql
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let body = get(
        ns,
        "127.0.0.1:9090",
        &format!("/api/v1/query?query={encoded}"),
    )?;
    let v: Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn prometheus_scrapes_what_the_traffic_did() {
    assert!(
        std::path::Path::new(PROMETHEUS).exists(),
        "{PROMETHEUS} is missing: run `cargo xtask setup`"
    );
    let rig = DrRig::new(2);
    let _servers = rig.line_servers();
    let config = rig.write_config(
        "director: {interfaces: [eth0], hash_seed: 1}\nservices:\n  - {name: web, address: \
         192.0.2.100, port: 80, protocol: tcp, scheduler: sh, reals: [{address: \
         192.0.2.11}, {address: 192.0.2.12, weight: 3}]}\n",
    );
    let (daemon, ready) = rig.start_daemon(&config, Duration::from_secs(30));
    assert!(ready, "daemon not ready: {:#?}", daemon.stderr());

    // The exposition itself: names, types and labels as Prometheus wants them.
    let text = get(&rig.director, "127.0.0.1:9469", "/metrics").unwrap_or_default();
    for line in [
        "# TYPE xdpvs_service_connections_total counter",
        "# TYPE xdpvs_real_active_connections gauge",
        "# TYPE xdpvs_packets_total counter",
        "xdpvs_build_info{version=",
        "xdpvs_conntrack_capacity 1048576",
        "xdpvs_real_weight{address=\"192.0.2.100\",port=\"80\",protocol=\"tcp\",real_address=\"192.0.2.12\",real_port=\"80\"} 3",
    ] {
        assert!(text.contains(line), "{line:?} not in:\n{text}");
    }

    let sources: Vec<_> = client_sources().into_iter().take(CONNECTIONS).collect();
    let reached = rig
        .client
        .enter(|| ask_each(&sources, SocketAddr::new(VIP.into(), 80), TIMEOUT));
    let on_12 = reached.iter().filter(|r| r.ends_with("192.0.2.12")).count();

    let scratch = config.parent().unwrap_or(std::path::Path::new("/tmp"));
    let prom_config = scratch.join("prometheus.yml");
    std::fs::write(
        &prom_config,
        "global: {scrape_interval: 1s}\nscrape_configs:\n  - job_name: xdpvs\n    \
         static_configs: [{targets: ['127.0.0.1:9469']}]\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let child = rig
        .director
        .command(std::path::Path::new(PROMETHEUS))
        .arg(format!("--config.file={}", prom_config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            scratch.join("tsdb").display()
        ))
        .arg("--web.listen-address=127.0.0.1:9090")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting prometheus: {e}"));
    let _prometheus = Prometheus(child);

    // Wait for a scrape taken after the traffic.
    let want = CONNECTIONS as f64;
    let start = Instant::now();
    let mut seen = None;
    while start.elapsed() < Duration::from_secs(40) {
        seen = query(&rig.director, "sum(xdpvs_service_connections_total)");
        if seen == Some(want) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(seen, Some(want), "service connections in Prometheus");
    assert_eq!(query(&rig.director, "up{job=\"xdpvs\"}"), Some(1.0));
    assert_eq!(
        query(
            &rig.director,
            "xdpvs_real_connections_total{real_address=\"192.0.2.12\"}"
        ),
        Some(on_12 as f64)
    );
    assert_eq!(
        query(&rig.director, "sum(xdpvs_real_connections_total)"),
        Some(want)
    );
    // Each connection: at least SYN, ACK, data, FIN, ACK from the client.
    let forwarded =
        query(&rig.director, "xdpvs_packets_total{reason=\"forward_tx\"}").unwrap_or_default();
    assert!(forwarded >= 5.0 * want, "forward_tx {forwarded}");
    assert_eq!(
        query(&rig.director, "sum(xdpvs_service_packets_total)"),
        Some(forwarded)
    );
    let (status, _, stderr) = daemon.stop();
    assert!(status.success(), "{stderr:#?}");
}
