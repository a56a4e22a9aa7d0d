//! End to end, the connection table: long-lived TCP connections through the real
//! `xdpvs daemon` keep their real across reloads (`SIGHUP`) that drain a real, change
//! weights, add a real and remove one; a reload with a broken file changes nothing.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use xdpvs_testbed::{
    rig::{Daemon, DrRig, VIP, client_sources, real_address},
    traffic::{Server, Session, tcp_line_server},
};

const TIMEOUT: Duration = Duration::from_secs(3);

fn banner(i: usize) -> String {
    format!("real {}", real_address(i))
}

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
    let _servers: Vec<Server> = rig
        .reals
        .iter()
        .enumerate()
        .map(|(i, ns)| tcp_line_server(ns, SocketAddr::new(VIP.into(), 80), &banner(i)))
        .collect();
    let path = rig.write_config(&config(&[Some(1), Some(1), Some(1), None]));
    let (daemon, ready) = rig.start_daemon(&path, Duration::from_secs(30));
    assert!(ready, "daemon not ready: {:#?}", daemon.stderr());

    let vip80 = SocketAddr::new(VIP.into(), 80);
    let sources: Vec<IpAddr> = client_sources().into_iter().step_by(12).collect();
    // Sessions live on client threads; each step asks every session once more.
    let (tx, rx) = std::sync::mpsc::channel::<std::sync::mpsc::Sender<Vec<(IpAddr, String)>>>();
    let client = rig.client.spawn(move || {
        let mut sessions: Vec<(IpAddr, Session)> = sources
            .iter()
            .map(|&s| {
                (
                    s,
                    Session::connect(s, vip80, TIMEOUT)
                        .unwrap_or_else(|e| panic!("connect from {s}: {e}")),
                )
            })
            .collect();
        while let Ok(reply) = rx.recv() {
            let answers = sessions
                .iter_mut()
                .map(|(s, session)| (*s, session.ask().unwrap_or_else(|e| format!("error: {e}"))))
                .collect();
            let _ = reply.send(answers);
        }
    });
    let ask_all = || {
        let (reply_tx, reply_rx) = std::sync::mpsc::channel();
        tx.send(reply_tx).unwrap_or_else(|e| panic!("{e}"));
        reply_rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("client: {e}"))
    };
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
        "director: {interfaces: [eth0]}\nservices: [{address: 192.0.2.100, port: 80, protocol: tcp, scheduler: lc}]\n"
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
    let fresh: Vec<String> = rig.client.enter(|| {
        client_sources()
            .iter()
            .take(60)
            .map(|&s| {
                let mut session =
                    Session::connect(s, vip80, TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
                session.ask().unwrap_or_else(|e| panic!("{e}"))
            })
            .collect()
    });
    assert!(
        !fresh.contains(&banner(drained)),
        "a new connection reached the drained real"
    );

    drop(tx);
    let _ = client.join();
    let (status, stdout, stderr) = daemon.stop();
    assert!(status.success(), "{stderr:#?}");
    let hits = stdout
        .iter()
        .find(|l| l.starts_with("event ct_hit "))
        .unwrap_or_else(|| panic!("no ct_hit line: {stdout:#?}"));
    assert!(!hits.ends_with("count=0"), "{hits}");
}
