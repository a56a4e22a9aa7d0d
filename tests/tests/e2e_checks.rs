//! End to end, each check type against real servers in the reals' namespaces: one real
//! passes, the other fails in the way each type can (a hung HTTP server, an HTTPS status,
//! a wrong UDP reply, a DNS NXDOMAIN, an exec exit), and the hung real's check holds up no
//! other check. Then a 503 drains a real without an alarm, an exec check that hangs is
//! killed at its timeout, and a dynamic exec check sets the weight.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use serde_json::Value;
use xdpvs_testbed::{
    checked::{CERT, CERT_NAME, dns_server, http_server, https_server, silent_server},
    rig::{
        DrRig, VIP, cli_ok, client_sources, http_get, metric_values, real_address,
        real_banner as banner,
    },
    traffic::{ask_each, tcp_ask, tcp_line_server, tcp_server, udp_server},
};

/// The reals' health in `xdpvs list --json`: (service port, real address) → (health,
/// last error).
fn health(config: &std::path::Path) -> Vec<(u64, String, String, String)> {
    let json: Value = serde_json::from_str(&cli_ok(config, &["list", "--json"]))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    for s in json["services"].as_array().into_iter().flatten() {
        for r in s["reals"].as_array().into_iter().flatten() {
            out.push((
                s["port"].as_u64().unwrap_or(0),
                r["address"].as_str().unwrap_or("").to_owned(),
                r["health"].as_str().unwrap_or("").to_owned(),
                r["last_error"].as_str().unwrap_or("").to_owned(),
            ));
        }
    }
    out
}

fn at(i: usize, port: u16) -> SocketAddr {
    SocketAddr::new(real_address(i).into(), port)
}

#[test]
fn every_check_type_tells_a_healthy_real_from_a_failing_one() {
    let rig = DrRig::new(2);
    let (r0, r1) = (&rig.reals[0], &rig.reals[1]);
    let _servers = [
        http_server(r0, at(0, 8081), 200, "i am alive"),
        silent_server(r1, at(1, 8081)),
        https_server(r0, at(0, 8082), 200),
        https_server(r1, at(1, 8082), 500),
        udp_server(r0, at(0, 8083), "pong"),
        udp_server(r1, at(1, 8083), "nope"),
        dns_server(r0, at(0, 8084), true),
        dns_server(r1, at(1, 8084), false),
        // The text only after the first 64 KiB: not found, however the body is cut.
        http_server(r0, at(0, 8086), 200, "alive"),
        http_server(
            r1,
            at(1, 8086),
            200,
            &format!("{}alive", "x".repeat(100_000)),
        ),
    ];
    let reals = "reals: [{address: 192.0.2.11}, {address: 192.0.2.12}]";
    let timing = "interval: 1, timeout: 1, rise: 1, fall: 2";
    let config = rig.write_config(&format!(
        "director: {{interfaces: [eth0]}}\nservices:\n\
         - {{address: 192.0.2.100, port: 81, protocol: tcp, scheduler: sh, check: {{type: http, port: 8081, path: /health, body: alive, {timing}}}, {reals}}}\n\
         - {{address: 192.0.2.100, port: 82, protocol: tcp, scheduler: sh, check: {{type: https, port: 8082, tls_verify: true, ca: {CERT}, sni: {CERT_NAME}, {timing}}}, {reals}}}\n\
         - {{address: 192.0.2.100, port: 83, protocol: udp, scheduler: sh, check: {{type: udp, port: 8083, payload: 70696e67, reply: 706f6e67, {timing}}}, {reals}}}\n\
         - {{address: 192.0.2.100, port: 84, protocol: udp, scheduler: sh, check: {{type: dns, port: 8084, query: example.test, query_type: A, {timing}}}, {reals}}}\n\
         - {{address: 192.0.2.100, port: 85, protocol: tcp, scheduler: sh, check: {{type: exec, command: 'test \"$XDPVS_REAL_ADDRESS\" = 192.0.2.11', {timing}}}, {reals}}}\n\
         - {{address: 192.0.2.100, port: 86, protocol: tcp, scheduler: sh, check: {{type: http, port: 8086, body: alive, {timing}}}, {reals}}}\n"
    ));
    let (daemon, ready) = rig.start_daemon(&config, Duration::from_secs(30));
    assert!(ready, "daemon not ready: {:#?}", daemon.stderr());
    let start = Instant::now();
    let downs = |d: &xdpvs_testbed::rig::Daemon, real: &str| {
        d.stderr()
            .iter()
            .filter(|l| l.contains(&format!("real {real}:")) && l.contains("is down"))
            .count()
    };
    while downs(&daemon, "192.0.2.12") < 6 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:#?}",
            daemon.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Two more rounds: the healthy real stays up beside every failing one.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(downs(&daemon, "192.0.2.11"), 0, "{:#?}", daemon.stderr());
    let states = health(&config);
    for (port, want) in [
        (81, "GET http://192.0.2.12:8081/health"),
        (82, "status 500"),
        (83, "reply does not start with the expected 4 bytes"),
        (84, "answered Non-Existent Domain"),
        (85, "/bin/sh exited 1"),
        (86, "body without \"alive\" (first 65536 bytes read)"),
    ] {
        let mine: Vec<_> = states.iter().filter(|s| s.0 == port).collect();
        assert_eq!(mine.len(), 2, "{states:?}");
        assert_eq!(
            (mine[0].1.as_str(), mine[0].2.as_str()),
            ("192.0.2.11", "up"),
            "{states:?}"
        );
        assert_eq!(
            (mine[1].1.as_str(), mine[1].2.as_str()),
            ("192.0.2.12", "down"),
            "{states:?}"
        );
        assert!(
            mine[1].3.contains(want),
            "port {port}: {:?} lacks {want:?}",
            mine[1].3
        );
    }
    // The hung real's checks (each waits out its timeout) held up none of the others:
    // the healthy real of the same service was checked about once a second throughout.
    let metrics = http_get(&rig.director, "127.0.0.1:9469", "/metrics").unwrap_or_default();
    let ok_checks: f64 = metric_values(
        &metrics,
        "xdpvs_real_checks_total",
        &[
            "port=\"81\"",
            "real_address=\"192.0.2.11\"",
            "result=\"ok\"",
        ],
    )
    .iter()
    .sum();
    let seconds = start.elapsed().as_secs_f64();
    assert!(
        ok_checks >= seconds - 2.0,
        "{ok_checks} good checks in {seconds:.1} s"
    );
    assert!(
        metrics.contains("xdpvs_real_check_duration_seconds_bucket{address=\"192.0.2.100\""),
        "no latency histogram:\n{metrics}"
    );
    let (status, _, stderr) = daemon.stop();
    assert!(status.success(), "{stderr:#?}");
}

/// Where `n` new connections to the VIP's `port` (from sources after `skip`) landed.
fn reached_on(rig: &DrRig, port: u16, n: usize, skip: usize) -> Vec<String> {
    let sources: Vec<_> = client_sources().into_iter().skip(skip).take(n).collect();
    rig.client.enter(|| {
        ask_each(
            &sources,
            SocketAddr::new(VIP.into(), port),
            Duration::from_secs(3),
        )
    })
}

fn reached(rig: &DrRig, n: usize, skip: usize) -> Vec<String> {
    reached_on(rig, 80, n, skip)
}

/// Processes whose command line has `marker`.
fn alive(marker: &str) -> usize {
    std::process::Command::new("pgrep")
        .args(["-f", marker])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
        .unwrap_or(0)
}

#[test]
fn a_503_drains_without_alarm_and_a_hung_exec_check_is_killed() {
    let rig = DrRig::new(2);
    let _web: Vec<_> = (0..2)
        .map(|i| tcp_line_server(&rig.reals[i], SocketAddr::new(VIP.into(), 80), &banner(i)))
        .collect();
    let _ok = http_server(&rig.reals[0], at(0, 8080), 200, "ok");
    let drain = http_server(&rig.reals[1], at(1, 8080), 503, "maintenance");
    // A sleep no other process runs, to look for after the kill.
    let marker = format!("sleep 30.{}", std::process::id());
    let config = rig.write_config(&format!(
        "director: {{interfaces: [eth0], hash_seed: 1}}\nservices:\n\
         - {{address: 192.0.2.100, port: 80, protocol: tcp, scheduler: sh, check: {{type: http, port: 8080, interval: 1, timeout: 1, rise: 2, fall: 2}}, reals: [{{address: 192.0.2.11}}, {{address: 192.0.2.12}}]}}\n\
         - {{address: 192.0.2.100, port: 90, protocol: tcp, scheduler: wrr, check: {{type: exec, command: '{marker}', interval: 2, timeout: 1, fall: 1}}, reals: [{{address: 192.0.2.11}}]}}\n\
         - {{address: 192.0.2.100, port: 91, protocol: tcp, scheduler: wrr, check: {{type: exec, command: 'exit 9', dynamic: true, interval: 1, timeout: 1}}, reals: [{{address: 192.0.2.11, weight: 1}}]}}\n\
         - {{address: 192.0.2.100, port: 92, protocol: tcp, scheduler: wrr, check: {{type: exec, command: 'head -c 1000000 /dev/zero >&2; sleep 3 & exit 0', interval: 1, timeout: 1, fall: 1}}, reals: [{{address: 192.0.2.11}}]}}\n"
    ));
    let (daemon, ready) = rig.start_daemon(&config, Duration::from_secs(30));
    assert!(ready, "daemon not ready: {:#?}", daemon.stderr());
    assert!(
        daemon.logged(
            "192.0.2.12:80 of service tcp 192.0.2.100:80 is draining",
            Duration::from_secs(5)
        ),
        "{:#?}",
        daemon.stderr()
    );
    let after = reached(&rig, 40, 0);
    assert!(
        after.iter().all(|r| *r == banner(0)),
        "a draining real got a new flow: {after:?}"
    );
    let line = daemon
        .stderr()
        .into_iter()
        .find(|l| l.contains("is draining"))
        .unwrap_or_default();
    assert!(line.contains("INFO"), "a drain is no alarm: {line}");
    assert!(line.contains("status 503 (drain)"), "{line}");
    // Healthy again: rise good answers end the drain.
    drop(drain);
    let _back = http_server(&rig.reals[1], at(1, 8080), 200, "ok");
    assert!(
        daemon.logged(
            "192.0.2.12:80 of service tcp 192.0.2.100:80 is up",
            Duration::from_secs(5)
        ),
        "{:#?}",
        daemon.stderr()
    );
    assert!(
        reached(&rig, 40, 40).contains(&banner(1)),
        "the drained real did not come back"
    );

    // The exec check that never ends: killed at its timeout, the real down, nothing left.
    assert!(
        daemon.logged(
            "/bin/sh did not end within 1 s; killed",
            Duration::from_secs(6)
        ),
        "{:#?}",
        daemon.stderr()
    );
    // A check runs every 2 s and is killed after 1: at most one run's processes (the
    // shell and its sleep) are ever alive; survivors would pile up, one set per run.
    let mut most = 0;
    for _ in 0..30 {
        most = most.max(alive(&marker));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        most <= 2,
        "{most} processes of the hung check alive at once"
    );
    // A reload that drops the check while it runs takes its processes with it.
    let start = Instant::now();
    while alive(&marker) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the hung check never ran"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = std::fs::read_to_string(&config).unwrap_or_else(|e| panic!("{e}"));
    let without: String = text
        .lines()
        .filter(|l| !l.contains(&marker))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&config, without).unwrap_or_else(|e| panic!("{e}"));
    assert!(daemon.reload(), "{:#?}", daemon.stderr());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        alive(&marker),
        0,
        "a check dropped by a reload left its command running"
    );
    // The dynamic check's exit 9 is weight 7.
    assert!(
        daemon.logged("its check set the weight to 7", Duration::from_secs(5)),
        "{:#?}",
        daemon.stderr()
    );
    let json: Value = serde_json::from_str(&cli_ok(&config, &["list", "--json"]))
        .unwrap_or_else(|e| panic!("{e}"));
    let weight = json["services"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["port"] == 91)
        .map(|s| s["reals"][0]["weight"].clone());
    assert_eq!(weight, Some(Value::from(7)), "{json}");
    // A command that writes a megabyte to its standard error and leaves a helper
    // holding it open still ends, healthy: the pipe is drained past what is kept, and
    // read no longer than a moment after the command exits.
    assert!(
        !daemon
            .stderr()
            .iter()
            .any(|l| l.contains("service tcp 192.0.2.100:92 is down")),
        "{:#?}",
        daemon.stderr()
    );
    let (status, _, stderr) = daemon.stop();
    assert!(status.success(), "{stderr:#?}");
}

#[test]
fn a_lost_quorum_sends_new_flows_to_the_sorry_server_or_drops_them_counted() {
    let rig = DrRig::new(3);
    // Reals 0 and 1 serve ports 80 and 81; real 2 is port 80's sorry server.
    let _web: Vec<_> = (0..3)
        .flat_map(|i| {
            let ports: &[u16] = if i < 2 { &[80, 81] } else { &[80] };
            ports
                .iter()
                .map(|&p| {
                    tcp_line_server(&rig.reals[i], SocketAddr::new(VIP.into(), p), &banner(i))
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let check_port = |i: usize| http_server(&rig.reals[i], at(i, 8080), 200, "ok");
    let mut checks = [Some(check_port(0)), Some(check_port(1))];
    let check = "check: {type: tcp, port: 8080, interval: 1, timeout: 1, rise: 1, fall: 1";
    let config = rig.write_config(&format!(
        "director: {{interfaces: [eth0], hash_seed: 1}}\nservices:\n\
         - {{address: 192.0.2.100, port: 80, protocol: tcp, scheduler: sh, quorum: 2, sorry: {{address: 192.0.2.13}}, {check}}}, reals: [{{address: 192.0.2.11}}, {{address: 192.0.2.12}}]}}\n\
         - {{address: 192.0.2.100, port: 81, protocol: tcp, scheduler: sh, quorum: 2, {check}, on_failure: remove}}, reals: [{{address: 192.0.2.11}}, {{address: 192.0.2.12}}]}}\n"
    ));
    let (mut daemon, ready) = rig.start_daemon(&config, Duration::from_secs(30));
    assert!(ready, "daemon not ready: {:#?}", daemon.stderr());
    let ask = |port: u16, n: usize, skip: usize| reached_on(&rig, port, n, skip);
    let before = ask(80, 20, 0);
    assert!(
        !before.contains(&banner(2)),
        "the sorry server served with the quorum held: {before:?}"
    );

    // Real 1's check fails: live weight 1 is below the quorum of 2.
    checks[1] = None;
    for line in [
        "service tcp 192.0.2.100:80 lost its quorum: live weight 1 is below 2; its sorry server takes the new flows",
        "service tcp 192.0.2.100:81 lost its quorum: live weight 1 is below 2; new flows are dropped (drop_quorum_lost)",
    ] {
        assert!(
            daemon.logged(line, Duration::from_secs(5)),
            "{line}\n{:#?}",
            daemon.stderr()
        );
    }
    let lost = ask(80, 20, 20);
    assert!(
        lost.iter().all(|r| *r == banner(2)),
        "not all on the sorry server: {lost:?}"
    );
    let refused: Vec<bool> = client_sources()[40..43]
        .iter()
        .map(|&src| {
            rig.client.enter(|| {
                tcp_ask(src, SocketAddr::new(VIP.into(), 81), Duration::from_secs(1)).is_err()
            })
        })
        .collect();
    assert_eq!(refused, [true; 3], "port 81 served without its quorum");
    let metrics = http_get(&rig.director, "127.0.0.1:9469", "/metrics").unwrap_or_default();
    let counted: f64 = metric_values(
        &metrics,
        "xdpvs_packets_total",
        &["reason=\"drop_quorum_lost\""],
    )
    .iter()
    .sum();
    assert!(counted >= 3.0, "drop_quorum_lost {counted}");
    assert!(metrics.contains("xdpvs_service_quorum_lost{address=\"192.0.2.100\",name=\"\",port=\"81\",protocol=\"tcp\"} 1"), "{metrics}");
    // The removed real is in no plan, and still reported down.
    assert!(
        metrics.contains("xdpvs_real_up{address=\"192.0.2.100\",port=\"81\",protocol=\"tcp\",real_address=\"192.0.2.12\",real_port=\"81\"} 0"),
        "{metrics}"
    );
    let list = cli_ok(&config, &["list"]);
    assert!(list.contains("sorry server"), "{list}");
    assert!(
        list.lines().any(|l| l.contains("-> 192.0.2.11:80 ")
            && l.contains("Route   0 ")
            && l.contains("held: quorum lost")),
        "{list}"
    );
    assert!(
        list.contains("removed, down for ") && list.contains(" s: connect to 192.0.2.12:8080"),
        "{list}"
    );

    // kill -9 while the quorum is lost: the pinned data path keeps the sorry server's
    // table; the next daemon starts with every real up (docs/HEALTH.md), so the quorum
    // is held until real 1's check fails again, and is then lost again.
    daemon.signal(libc::SIGKILL);
    let _ = daemon.wait(Duration::from_secs(5));
    let orphaned = ask(80, 10, 90);
    assert!(
        orphaned.iter().all(|r| *r == banner(2)),
        "after kill -9: {orphaned:?}"
    );
    let (again, ready) = rig.start_daemon(&config, Duration::from_secs(30));
    assert!(ready, "daemon not ready: {:#?}", again.stderr());
    daemon = again;
    assert!(
        daemon.logged(
            "service tcp 192.0.2.100:80 lost its quorum",
            Duration::from_secs(5)
        ),
        "{:#?}",
        daemon.stderr()
    );
    let relost = ask(80, 10, 100);
    assert!(
        relost.iter().all(|r| *r == banner(2)),
        "after the restart: {relost:?}"
    );

    // Back: the quorum is regained and the reals take the new flows again.
    checks[1] = Some(check_port(1));
    assert!(
        daemon.logged(
            "service tcp 192.0.2.100:80 regained its quorum",
            Duration::from_secs(5)
        ),
        "{:#?}",
        daemon.stderr()
    );
    let again = ask(80, 20, 60);
    assert!(
        !again.contains(&banner(2)) && again.contains(&banner(1)),
        "{again:?}"
    );
    assert!(
        daemon.logged(
            "service tcp 192.0.2.100:81 regained its quorum",
            Duration::from_secs(5)
        ),
        "{:#?}",
        daemon.stderr()
    );
    assert_eq!(ask(81, 5, 80).len(), 5);
    let (status, _, stderr) = daemon.stop();
    assert!(status.success(), "{stderr:#?}");
}

#[test]
fn under_nat_a_reals_resets_make_it_suspect_and_checked_at_once() {
    use xdpvs_testbed::nat_rig::{self, NatRig, RealsRoute};
    let rig = NatRig::new(2, RealsRoute::ViaDirector, 1500);
    let serve = |i: usize| {
        tcp_server(
            &rig.reals[i],
            SocketAddr::new([0, 0, 0, 0].into(), 8080),
            &format!("real {}", nat_rig::real_address(i)),
        )
    };
    let mut servers = [Some(serve(0)), Some(serve(1))];
    // Checked every 60 s: only the passive signal can find the failure soon.
    let yaml = nat_rig::config("nat", &[(0, 1), (1, 1)]).replacen(
        "    forwarding: nat\n",
        "    forwarding: nat\n    check: {type: tcp, interval: 60, timeout: 1, rise: 1, fall: 1, passive: true}\n",
        1,
    );
    let config = rig.write_config(&yaml);
    let (daemon, ready) = rig.start_daemon(&config, Duration::from_secs(30));
    assert!(ready, "daemon not ready: {:#?}", daemon.stderr());
    // The first checks fall within the first minute; let both reals' pass first.
    let vip80 = SocketAddr::new(nat_rig::VIP.into(), 80);
    let sources = nat_rig::client_sources();
    let ask_all = |skip: usize| -> Vec<Result<String, String>> {
        rig.client.enter(|| {
            sources
                .iter()
                .skip(skip)
                .take(20)
                .map(|&s| tcp_ask(s, vip80, Duration::from_secs(1)).map_err(|e| e.to_string()))
                .collect()
        })
    };
    let before = ask_all(0);
    assert!(before.iter().all(Result::is_ok), "{before:?}");
    // Real 1's server stops: its kernel resets each new connection.
    let stopped = Instant::now();
    servers[1] = None;
    let during = ask_all(20);
    assert!(
        during.iter().any(Result::is_err),
        "no connection reached the stopped real: {during:?}"
    );
    assert!(
        daemon.logged(
            "198.51.100.12:8080 of service tcp 192.0.2.100:80 is suspect (",
            Duration::from_secs(5)
        ),
        "{:#?}",
        daemon.stderr()
    );
    assert!(
        daemon.logged(
            "198.51.100.12:8080 of service tcp 192.0.2.100:80 is down",
            Duration::from_secs(5)
        ),
        "{:#?}",
        daemon.stderr()
    );
    let took = stopped.elapsed();
    // One reading of the signals (1 s) and one check, far inside the 60 s interval.
    assert!(took < Duration::from_secs(5), "down after {took:?}");
    let after = ask_all(40);
    assert!(
        after.iter().all(Result::is_ok),
        "a request failed once the real was down: {after:?}"
    );
    let metrics = http_get(&rig.director, "127.0.0.1:9469", "/metrics").unwrap_or_default();
    let resets: f64 = metric_values(
        &metrics,
        "xdpvs_real_resets_total",
        &["real_address=\"198.51.100.12\""],
    )
    .iter()
    .sum();
    assert!(resets > 0.0, "{metrics}");
    eprintln!("passive signal: real down {took:?} after its server stopped (interval 60 s)");
    let (status, _, stderr) = daemon.stop();
    assert!(status.success(), "{stderr:#?}");
}
