//! End to end, the connection table: long-lived TCP connections through the real
//! `xdpvs daemon` keep their real across reloads (`SIGHUP`) that drain a real, change
//! weights, add a real and remove one; a reload with a broken file changes nothing.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use xdpvs_testbed::{
    rig::{Daemon, DrRig, VIP, client_sources, real_address, real_banner as banner},
    traffic::{Sessions, ask_each},
};

const TIMEOUT: Duration = Duration::from_secs(3);

/// A web service over the rig's reals with these weights (None: not listed).
fn config(weights: &[Option<u32>]) -> String {
    let reals: Vec<String> = weights
        .iter()
        .enumerate()
        .filter_map(|(i, w)| {
            w.map(|w| format!("      - {{address: {}, weight: {w}}}", real_address(i)))
        })
        .collect();
    format!(
        "director:\n  interfaces: [eth0]\n  hash_seed: 1\nservices:\n  - name: web\n    \
         address: {VIP}\n    port: 80\n    protocol: tcp\n    scheduler: sh\n    reals:\n{}\n",
        reals.join("\n")
    )
}

/// Writes `yaml` as the daemon's file, sends SIGHUP and waits for the daemon's answer:
/// true for "reloaded", false for a refusal.
fn reload(rig: &DrRig, daemon: &Daemon, yaml: &str) -> bool {
    rig.write_config(yaml);
    daemon.reload()
}

#[test]
fn long_lived_connections_survive_drain_reweight_add_and_remove_by_sighup() {
    let rig = DrRig::new(4);
    let _servers = rig.line_servers();
    let path = rig.write_config(&config(&[Some(1), Some(1), Some(1), None]));
    let (daemon, ready) = rig.start_daemon(&path, Duration::from_secs(30));
    assert!(ready, "daemon not ready: {:#?}", daemon.stderr());

    let vip80 = SocketAddr::new(VIP.into(), 80);
    let sources: Vec<IpAddr> = client_sources().into_iter().step_by(12).collect();
    // Sessions live on a client thread; each step asks every session once more.
    let sessions = Sessions::open(&rig.client, sources, vip80, TIMEOUT);
    let ask_all = || sessions.ask_all();
    let first = ask_all();
    for (s, a) in &first {
        assert!(a.starts_with("real "), "{s}: {a}");
    }
    // The real with the most sessions is drained.
    let count = |i: usize| first.iter().filter(|(_, a)| *a == banner(i)).count();
    let drained = (0..3).max_by_key(|&i| count(i)).unwrap_or(0);
    assert!(count(drained) > 0);
    let mut weights = [Some(1), Some(1), Some(1), None];
    weights[drained] = Some(0);
    let mut steps = vec![("drain", weights)];
    let mut reweighted = weights;
    for (i, w) in reweighted.iter_mut().enumerate().take(3) {
        if i != drained {
            *w = Some(5 + i as u32);
        }
    }
    steps.push(("weight change", reweighted));
    let mut added = reweighted;
    added[3] = Some(4);
    steps.push(("real added", added));
    for (what, w) in steps {
        assert!(
            reload(&rig, &daemon, &config(&w)),
            "{what} refused: {:#?}",
            daemon.stderr()
        );
        assert_eq!(
            ask_all(),
            first,
            "connections moved or broke after the {what}"
        );
    }
    // Removing a real that holds no session leaves every session where it was.
    let idle = (0..3).find(|&i| count(i) == 0 && i != drained);
    let remove_target = idle.unwrap_or(3);
    let mut removed = added;
    removed[remove_target] = None;
    assert!(reload(&rig, &daemon, &config(&removed)));
    assert_eq!(
        ask_all(),
        first,
        "connections moved after a real was removed"
    );

    // A broken file is refused with its line and column; nothing changes.
    assert!(!reload(
        &rig,
        &daemon,
        "director: {interfaces: [eth0]}\nservices: [{address: 192.0.2.100, port: 80, protocol: tcp, scheduler: lblc}]\n"
    ));
    let refusal = daemon.stderr().join("\n");
    assert!(
        refusal.contains("xdpvs.yaml") && refusal.contains("line 2"),
        "{refusal}"
    );
    assert!(!reload(
        &rig,
        &daemon,
        &config(&removed)
            .replace("weight: 1", "weight: 70000")
            .replace("weight: 5", "weight: 70000")
    ));
    assert_eq!(ask_all(), first, "a refused reload changed something");
    assert!(rig.director_has_xdp());

    // New connections avoid the drained real.
    let fresh_sources: Vec<IpAddr> = client_sources().into_iter().take(60).collect();
    let fresh = rig
        .client
        .enter(|| ask_each(&fresh_sources, vip80, TIMEOUT));
    assert!(
        !fresh.contains(&banner(drained)),
        "a new connection reached the drained real"
    );

    drop(sessions);
    let (status, stdout, stderr) = daemon.stop();
    assert!(status.success(), "{stderr:#?}");
    let hits = stdout
        .iter()
        .find(|l| l.starts_with("event ct_hit "))
        .unwrap_or_else(|| panic!("no ct_hit line: {stdout:#?}"));
    assert!(!hits.ends_with("count=0"), "{hits}");
}
