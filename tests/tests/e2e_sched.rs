//! End to end, scheduling: the `xdpvs` daemon on the director's veth, three real TCP
//! servers, and a client making real connections.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use xdpvs_testbed::{
    rig::{CLIENT, DrRig, VIP, cli_ok, client_sources, event, real_banner},
    traffic::{Sessions, ask_each, tcp_server},
};

const TIMEOUT: Duration = Duration::from_secs(3);

/// `rr` alone sends a client's successive connections to successive reals; with
/// persistence (`ipvsadm -p 2`) every connection from any source port goes to one real
/// while the client keeps coming back, and once the client has been away longer than the
/// timeout its next connection is scheduled afresh (a new template).
#[test]
fn persistence_holds_a_client_across_ports_and_expires() {
    let rig = DrRig::new(3);
    let _servers = banner_servers(&rig);
    let config = rig.write_config(
        "director: {interfaces: [eth0], xdp_mode: driver}\nservices:\n  - {address: \
         192.0.2.100, port: 80, protocol: tcp, scheduler: rr, persistence: {timeout: 2},\n     \
         reals: [{address: 192.0.2.11}, {address: 192.0.2.12}, {address: 192.0.2.13}]}\n",
    );
    let (daemon, ready) = rig.start_daemon(&config, Duration::from_secs(30));
    assert!(ready, "daemon not ready: {:#?}", daemon.stderr());
    let vip80 = SocketAddr::new(VIP.into(), 80);
    let round = || -> BTreeSet<String> {
        rig.client
            .enter(|| ask_each(&[CLIENT.into(); 8], vip80, TIMEOUT))
            .into_iter()
            .collect()
    };
    let first = round();
    assert_eq!(
        first.len(),
        1,
        "one client went to several reals: {first:?}"
    );
    // Away for longer than the timeout (its connections closed, so no packet refreshes
    // the template): scheduled afresh, then held again.
    std::thread::sleep(Duration::from_millis(4_500));
    let second = round();
    assert_eq!(
        second.len(),
        1,
        "one client went to several reals: {second:?}"
    );
    let (status, stdout, stderr) = daemon.stop();
    assert!(status.success(), "{stderr:#?}");
    assert_eq!(
        (event(&stdout, "persist_new"), event(&stdout, "persist_hit")),
        (2, 14),
        "{stdout:#?}"
    );
}

/// `wlc` through the daemon: 20 long sessions on one real (the other has weight 0);
/// once the other real joins and the daemon's one-second recount has seen the sessions
/// established, every new connection goes to it. Without the recount the sessions would
/// count as 20 inactive connections only, and some new connections would still go to the
/// loaded real.
#[test]
fn wlc_sends_new_connections_away_from_a_real_holding_long_sessions() {
    let rig = DrRig::new(2);
    let _servers = rig.line_servers();
    let config = rig.write_config(
        "director: {interfaces: [eth0], xdp_mode: driver}\nservices:\n  - {address: \
         192.0.2.100, port: 80, protocol: tcp, scheduler: wlc,\n     reals: [{address: \
         192.0.2.11}, {address: 192.0.2.12, weight: 0}]}\n",
    );
    let (daemon, ready) = rig.start_daemon(&config, Duration::from_secs(30));
    assert!(ready, "daemon not ready: {:#?}", daemon.stderr());
    let vip80 = SocketAddr::new(VIP.into(), 80);
    let sources = client_sources();
    let sessions = Sessions::open(&rig.client, sources[..20].to_vec(), vip80, TIMEOUT);
    for (src, answer) in sessions.ask_all() {
        assert_eq!(answer, real_banner(0), "session from {src}");
    }
    cli_ok(
        &config,
        &[
            "real",
            "edit",
            "-t",
            "192.0.2.100:80",
            "-r",
            "192.0.2.12",
            "-w",
            "1",
        ],
    );
    std::thread::sleep(Duration::from_millis(2_500));
    let fresh: Vec<IpAddr> = sources[100..130].to_vec();
    let answers = rig.client.enter(|| ask_each(&fresh, vip80, TIMEOUT));
    let on_loaded = answers.iter().filter(|a| **a == real_banner(0)).count();
    assert_eq!(
        on_loaded, 0,
        "new connections went to the loaded real: {answers:?}"
    );
    for (src, answer) in sessions.ask_all() {
        assert_eq!(answer, real_banner(0), "session from {src} moved");
    }
    let (status, _, stderr) = daemon.stop();
    assert!(status.success(), "{stderr:#?}");
}

/// The slow-start rig: two reals, `wrr`, `slow_start: {period: 8, steps: 4}`, real .12
/// at weight 0; its daemon, running.
const SLOW_START: &str = "director: {interfaces: [eth0], xdp_mode: driver}\nservices:\n  - \
     {address: 192.0.2.100, port: 80, protocol: tcp, scheduler: wrr,\n     slow_start: \
     {period: 8, steps: 4},\n     reals: [{address: 192.0.2.11, weight: 100}, {address: \
     192.0.2.12, weight: 0}]}\n";

/// Raises .12 to weight 100 through the CLI (it starts its ramp).
fn raise_to_100(config: &std::path::Path) {
    cli_ok(
        config,
        &[
            "real",
            "edit",
            "-t",
            "192.0.2.100:80",
            "-r",
            "192.0.2.12",
            "-w",
            "100",
        ],
    );
}

/// The share of 40 new connections the joining real (.12) answers.
fn joining_share(rig: &DrRig) -> f64 {
    let vip80 = SocketAddr::new(VIP.into(), 80);
    let answers = rig
        .client
        .enter(|| ask_each(&[CLIENT.into(); 40], vip80, TIMEOUT));
    answers.iter().filter(|a| **a == real_banner(1)).count() as f64 / 40.0
}

fn banner_servers(rig: &DrRig) -> Vec<xdpvs_testbed::traffic::Server> {
    rig.reals
        .iter()
        .enumerate()
        .map(|(i, ns)| tcp_server(ns, SocketAddr::new(VIP.into(), 80), &real_banner(i)))
        .collect()
}

/// Slow start through the daemon: a real raised from weight 0 to 100 beside another of
/// 100, under `wrr` with `slow_start: {period: 8, steps: 4}`, takes 25/125, 50/150,
/// 75/175 and then 100/200 of the new connections in the four two-second steps. The
/// stated tolerance is 12 points: each CPU walks the sequence with its own cursor, and
/// 40 connections are measured in each step.
#[test]
fn slow_start_ramps_a_joining_real_in_steps() {
    let rig = DrRig::new(2);
    let _servers = banner_servers(&rig);
    let config = rig.write_config(SLOW_START);
    let (daemon, ready) = rig.start_daemon(&config, Duration::from_secs(30));
    assert!(ready, "daemon not ready: {:#?}", daemon.stderr());
    raise_to_100(&config);
    let t0 = std::time::Instant::now();
    let mut shares = Vec::new();
    for (step, want) in [25.0 / 125.0, 50.0 / 150.0, 75.0 / 175.0, 0.5]
        .into_iter()
        .enumerate()
    {
        let at = t0 + Duration::from_millis(2_000 * step as u64 + 300);
        std::thread::sleep(at.saturating_duration_since(std::time::Instant::now()));
        let share = joining_share(&rig);
        shares.push(share);
        assert!(
            (share - want).abs() <= 0.12,
            "step {}: the joining real took {share:.2} of new connections, its ramp says \
             {want:.2} (shares so far {shares:?})",
            step + 1
        );
    }
    let (status, _, stderr) = daemon.stop();
    assert!(status.success(), "{stderr:#?}");
}

/// A ramp lives in the daemon (docs/SCHEDULERS.md): after a `kill -9` in its first step
/// the next daemon adopts the data path and gives the real its full weight at once.
#[test]
fn a_daemon_killed_during_a_ramp_restarts_with_the_full_weight() {
    let rig = DrRig::new(2);
    let _servers = banner_servers(&rig);
    let config = rig.write_config(SLOW_START);
    let (daemon, ready) = rig.start_daemon(&config, Duration::from_secs(30));
    assert!(ready, "daemon not ready: {:#?}", daemon.stderr());
    raise_to_100(&config);
    let share = joining_share(&rig);
    assert!((share - 0.2).abs() <= 0.12, "first step: {share:.2}");
    daemon.signal(libc::SIGKILL);
    let _ = daemon.wait(Duration::from_secs(10));
    // The data path went on forwarding with the first step's table.
    let share = joining_share(&rig);
    assert!(
        (share - 0.2).abs() <= 0.12,
        "while no daemon ran: {share:.2}"
    );
    let (daemon, ready) = rig.start_daemon(&config, Duration::from_secs(30));
    assert!(ready, "daemon not ready: {:#?}", daemon.stderr());
    let share = joining_share(&rig);
    assert!((share - 0.5).abs() <= 0.12, "after the restart: {share:.2}");
    let (status, _, stderr) = daemon.stop();
    assert!(status.success(), "{stderr:#?}");
}
