//! End to end, health checks: a real whose check port stops answering is taken out of
//! scheduling within `fall` × interval + one interval, its established connection keeps
//! working, and it comes back after `rise` good checks; an HTTP check that gets an
//! unexpected status takes its real out too.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use xdpvs_testbed::{
    rig::{DrRig, VIP, cli, client_sources, real_address, real_banner as banner},
    traffic::{Server, Session, ask_each, tcp_line_server, tcp_server},
};

const TIMEOUT: Duration = Duration::from_secs(3);

/// The reals each of `n` new connections reached.
fn reached(rig: &DrRig, n: usize, skip: usize) -> Vec<String> {
    let sources: Vec<_> = client_sources().into_iter().skip(skip).take(n).collect();
    rig.client
        .enter(|| ask_each(&sources, SocketAddr::new(VIP.into(), 80), TIMEOUT))
}

#[test]
fn a_real_whose_check_fails_gets_no_new_flows_and_comes_back() {
    let rig = DrRig::new(2);
    let _web = rig.line_servers();
    // The check port, on each real's own address.
    let check_port = |i: usize| {
        tcp_server(
            &rig.reals[i],
            SocketAddr::new(real_address(i).into(), 8080),
            "ok",
        )
    };
    let mut health = [Some(check_port(0)), Some(check_port(1))];
    let config = rig.write_config(
        "director: {interfaces: [eth0], hash_seed: 1}\nservices:\n  - {address: 192.0.2.100, \
         port: 80, protocol: tcp, scheduler: sh, check: {type: tcp, port: 8080, interval: 1, \
         timeout: 1, rise: 2, fall: 2}, reals: [{address: 192.0.2.11}, {address: \
         192.0.2.12}]}\n",
    );
    let (daemon, ready) = rig.start_daemon(&config, Duration::from_secs(30));
    assert!(ready, "daemon not ready: {:#?}", daemon.stderr());
    let before = reached(&rig, 40, 0);
    assert!(before.contains(&banner(1)), "{before:?}");
    // An established connection on real 1.
    let src = client_sources()
        .into_iter()
        .zip(&before)
        .find(|(_, r)| **r == banner(1))
        .map(|(s, _)| s)
        .unwrap_or_else(|| panic!("no source on real 1"));
    let mut session = rig
        .client
        .enter(|| Session::connect(src, SocketAddr::new(VIP.into(), 80), TIMEOUT))
        .unwrap_or_else(|e| panic!("{e}"));

    // Real 1's check port stops answering.
    let stopped = Instant::now();
    health[1] = None;
    let down = loop {
        if daemon
            .stderr()
            .iter()
            .any(|l| l.contains("192.0.2.12:80") && l.contains("is down"))
        {
            break stopped.elapsed();
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(10),
            "{:#?}",
            daemon.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // fall × interval + one interval (the check's spread start is within it).
    assert!(
        down <= Duration::from_secs(3) + Duration::from_millis(500),
        "down after {down:?}"
    );
    let after = reached(&rig, 40, 40);
    assert!(
        !after.contains(&banner(1)),
        "a down real got a new flow: {after:?}"
    );
    assert_eq!(
        session.ask().ok(),
        Some(banner(1)),
        "the established connection broke"
    );
    let (code, list, _) = cli(&config, &["list"]);
    assert_eq!(code, 0);
    assert!(
        list.contains("down for ") && list.contains(" s: connect to 192.0.2.12:8080"),
        "{list}"
    );

    // It answers again: up after two good checks, and takes new flows.
    health[1] = Some(check_port(1));
    let back = Instant::now();
    while !daemon
        .stderr()
        .iter()
        .any(|l| l.contains("192.0.2.12:80") && l.contains("is up"))
    {
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "{:#?}",
            daemon.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        reached(&rig, 40, 80).contains(&banner(1)),
        "the real did not come back"
    );
    eprintln!(
        "real down {down:?} after its check port closed (fall 2 × 1 s), up {:?} after it reopened",
        back.elapsed()
    );
    let (status, _, stderr) = daemon.stop();
    assert!(status.success(), "{stderr:#?}");
}

#[test]
fn an_http_check_wants_its_status() {
    let rig = DrRig::new(1);
    let _web = tcp_line_server(&rig.reals[0], SocketAddr::new(VIP.into(), 80), &banner(0));
    // The banner server answers an HTTP request with a line that is not HTTP: failed.
    let _not_http = tcp_server(
        &rig.reals[0],
        SocketAddr::new(real_address(0).into(), 8080),
        "hello",
    );
    let config = rig.write_config(
        "director: {interfaces: [eth0]}\nservices:\n  - {address: 192.0.2.100, port: 80, \
         protocol: tcp, scheduler: sh, check: {type: http, port: 8080, path: /health, \
         interval: 1, timeout: 1, rise: 1, fall: 1}, reals: [{address: 192.0.2.11}]}\n",
    );
    let (daemon, ready) = rig.start_daemon(&config, Duration::from_secs(30));
    assert!(ready, "daemon not ready: {:#?}", daemon.stderr());
    assert!(
        daemon.logged("is down", Duration::from_secs(10)),
        "{:#?}",
        daemon.stderr()
    );
    let (_, json, _) = cli(&config, &["list", "--json"]);
    assert!(json.contains("\"health\": \"down\""), "{json}");
    assert!(json.contains("GET http://192.0.2.11:8080/health"), "{json}");
    let (status, _, stderr) = daemon.stop();
    assert!(status.success(), "{stderr:#?}");
}

#[test]
fn stopping_a_reals_server_under_a_client_loop_fails_nothing_once_it_is_down() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };
    let rig = DrRig::new(2);
    // Each real serves the VIP and its own address on port 80 (the check's target).
    let mut servers: Vec<Option<Server>> = (0..2)
        .map(|i| {
            Some(tcp_server(
                &rig.reals[i],
                SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), 80),
                &banner(i),
            ))
        })
        .collect();
    let config = rig.write_config(
        "director: {interfaces: [eth0], hash_seed: 1}\nservices:\n  - {address: 192.0.2.100, \
         port: 80, protocol: tcp, scheduler: sh, check: {type: tcp, interval: 1, timeout: 1, \
         rise: 2, fall: 2}, reals: [{address: 192.0.2.11}, {address: 192.0.2.12}]}\n",
    );
    let (daemon, ready) = rig.start_daemon(&config, Duration::from_secs(30));
    assert!(ready, "daemon not ready: {:#?}", daemon.stderr());
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let vip80 = SocketAddr::new(VIP.into(), 80);
    let load = rig.client.spawn(move || {
        let mut log = Vec::new();
        for src in client_sources().into_iter().cycle() {
            if flag.load(Ordering::Relaxed) {
                break;
            }
            let at = Instant::now();
            let answer = xdpvs_testbed::traffic::tcp_ask(src, vip80, Duration::from_secs(1));
            log.push((at, answer.map_err(|e| e.to_string())));
            std::thread::sleep(Duration::from_millis(10));
        }
        log
    });
    std::thread::sleep(Duration::from_millis(500));
    let stopped = Instant::now();
    servers[1] = None;
    let down_at = loop {
        if daemon
            .stderr()
            .iter()
            .any(|l| l.contains("192.0.2.12:80") && l.contains("is down"))
        {
            break Instant::now();
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(10),
            "{:#?}",
            daemon.stderr()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let log = load.join().unwrap_or_else(|_| panic!("load panicked"));
    let took = down_at - stopped;
    // fall × interval + one interval, plus scheduling slack.
    assert!(took <= Duration::from_millis(3500), "down after {took:?}");
    let failed_before = log
        .iter()
        .filter(|(at, r)| *at >= stopped && *at < down_at && r.is_err())
        .count();
    // The log line is written once the plan is applied; allow the line's own delivery.
    let settled = down_at + Duration::from_millis(100);
    let after: Vec<_> = log.iter().filter(|(at, _)| *at >= settled).collect();
    let failed_after: Vec<_> = after.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(after.len() > 20, "only {} requests after", after.len());
    assert!(
        failed_after.is_empty(),
        "{} failed after the real was down: {failed_after:?}",
        failed_after.len()
    );
    assert!(
        after
            .iter()
            .all(|(_, r)| r.as_deref() == Ok(banner(0).as_str()))
    );
    eprintln!(
        "server stopped: down after {took:?}; {failed_before} requests failed before, 0 of {} after",
        after.len()
    );
    let (status, _, stderr) = daemon.stop();
    assert!(status.success(), "{stderr:#?}");
}
