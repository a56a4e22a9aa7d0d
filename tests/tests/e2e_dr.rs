//! End to end, direct routing: the `xdpvs` daemon attached in driver mode to the
//! director's veth, three real servers answering on the VIP from their loopback, and a
//! client with 508 source addresses, all on one bridged L2 segment in namespaces.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Duration,
};

use lb_userspace::{
    config::{Config, Protocol},
    nexthop::Route,
    plan::{self, Plan},
};
use xdpvs_testbed::{
    rig::{
        CLIENT, DIRECTOR, DR_CONFIG, DrRig, VIP, client_sources, field, real_address, report_line,
    },
    traffic::{Server, tcp_ask, tcp_server, udp_ask, udp_server},
};

const TIMEOUT: Duration = Duration::from_secs(3);

/// The daemon's own plan for DR_CONFIG (the interface does not affect any choice).
fn expected_plan(yaml: &str) -> Plan {
    let config = Config::parse(yaml, Path::new("e2e.yaml")).unwrap_or_else(|e| panic!("{e}"));
    plan::compile(
        &config,
        |_| {
            Ok(Route {
                ifindex: 0,
                gateway: None,
                local: false,
            })
        },
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn banner(address: IpAddr) -> String {
    format!("real {address}")
}

/// TCP and UDP servers on every real, answering with the real's name.
fn start_reals(rig: &DrRig) -> Vec<Server> {
    let mut servers = Vec::new();
    for (i, ns) in rig.reals.iter().enumerate() {
        let name = banner(real_address(i).into());
        servers.push(tcp_server(ns, SocketAddr::new(VIP.into(), 80), &name));
        servers.push(udp_server(ns, SocketAddr::new(VIP.into(), 53), &name));
    }
    servers
}

#[test]
fn direct_routing_serves_tcp_and_udp_from_the_predicted_reals() {
    let rig = DrRig::new(3);
    let _servers = start_reals(&rig);
    let _director_ssh = tcp_server(
        &rig.director,
        SocketAddr::new(DIRECTOR.into(), 8022),
        "director",
    );
    let config = rig.write_config(DR_CONFIG);
    let (daemon, ready) = rig.start_daemon(&config, Duration::from_secs(30));
    assert!(ready, "daemon not ready: {:#?}", daemon.stderr());
    assert!(
        rig.director_has_xdp(),
        "no XDP program on the director's eth0"
    );
    let neighbours = rig.director_neighbours();
    for i in 0..3 {
        let line = neighbours
            .lines()
            .find(|l| l.starts_with(&format!("{} ", real_address(i))))
            .unwrap_or_else(|| panic!("no neighbour entry for real {i}: {neighbours}"));
        assert!(line.contains("managed"), "{line}");
    }
    let plan = expected_plan(DR_CONFIG);
    let web = plan
        .service(VIP.into(), 80, Protocol::Tcp)
        .unwrap_or_else(|| panic!("web"));
    let dns = plan
        .service(VIP.into(), 53, Protocol::Udp)
        .unwrap_or_else(|| panic!("dns"));

    // Every TCP connection, one per source address, is answered by the real the daemon's
    // table names for that source.
    let sources = client_sources();
    let vip80 = SocketAddr::new(VIP.into(), 80);
    let answers: Vec<(IpAddr, String)> = rig.client.enter(|| {
        sources
            .iter()
            .map(|&src| {
                let answer = tcp_ask(src, vip80, TIMEOUT)
                    .unwrap_or_else(|e| panic!("tcp from {src} to {vip80}: {e}"));
                (src, answer)
            })
            .collect()
    });
    let mut per_real: BTreeMap<String, usize> = BTreeMap::new();
    for (src, answer) in &answers {
        let want = web
            .real_for(*src, VIP.into())
            .unwrap_or_else(|| panic!("no real"));
        assert_eq!(*answer, banner(want.address), "tcp from {src}");
        *per_real.entry(answer.clone()).or_default() += 1;
    }
    // ... so the spread follows the weights 1:2:3 (within 25% of each share).
    for (i, weight) in [1.0, 2.0, 3.0].iter().enumerate() {
        let got = per_real
            .get(&banner(real_address(i).into()))
            .copied()
            .unwrap_or(0) as f64;
        let want = sources.len() as f64 * weight / 6.0;
        assert!(
            (got - want).abs() / want < 0.25,
            "real {i} answered {got} of {} connections, want about {want}: {per_real:?}",
            sources.len()
        );
    }

    // One source stays on one real, connection after connection.
    let sticky: Vec<String> = rig.client.enter(|| {
        (0..10)
            .map(|_| tcp_ask(CLIENT.into(), vip80, TIMEOUT).unwrap_or_else(|e| panic!("{e}")))
            .collect()
    });
    assert!(sticky.iter().all(|a| *a == sticky[0]), "{sticky:?}");

    // UDP datagrams, from 100 sources, are answered by the predicted reals.
    let vip53 = SocketAddr::new(VIP.into(), 53);
    let udp: Vec<(IpAddr, String)> = rig.client.enter(|| {
        sources
            .iter()
            .step_by(5)
            .map(|&src| {
                let answer = udp_ask(src, vip53, TIMEOUT, 3)
                    .unwrap_or_else(|e| panic!("udp from {src}: {e}"));
                (src, answer)
            })
            .collect()
    });
    for (src, answer) in &udp {
        let want = dns
            .real_for(*src, VIP.into())
            .unwrap_or_else(|| panic!("no real"));
        assert_eq!(*answer, banner(want.address), "udp from {src}");
    }

    // Traffic for the director itself still reaches its own stack.
    let own = rig.client.enter(|| {
        tcp_ask(
            CLIENT.into(),
            SocketAddr::new(DIRECTOR.into(), 8022),
            TIMEOUT,
        )
    });
    assert_eq!(
        own.unwrap_or_else(|e| panic!("tcp to the director: {e}")),
        "director"
    );

    // Replies went straight from the reals to the client. They could not have come
    // through the director: it owns the VIP and drops packets sourced from it as
    // martians (routing one real's replies via the director makes its connections time
    // out above; tried by mutation). And the director's kernel forwarded nothing at all.
    assert_eq!(
        rig.forwarded_by_kernel(),
        0,
        "the director's stack forwarded packets"
    );

    let (status, stdout, stderr) = daemon.stop();
    assert!(status.success(), "daemon exit {status}: {stderr:#?}");
    let web_line = report_line(&stdout, "service tcp 192.0.2.100:80");
    let forwarded = field(web_line, "packets");
    assert!(forwarded >= 3 * answers.len() as u64, "{web_line}");
    // Each TCP connection was scheduled once: one per source, and ten from CLIENT.
    assert_eq!(
        field(web_line, "connections"),
        answers.len() as u64 + 10,
        "{web_line}"
    );
    for i in 0..3 {
        let line = report_line(&stdout, &format!("real {}:80", real_address(i)));
        assert!(field(line, "packets") > 0, "{line}");
    }
    let tx = field(report_line(&stdout, "reason forward_tx"), "packets");
    let udp_line = report_line(&stdout, "service udp 192.0.2.100:53");
    assert_eq!(
        tx,
        forwarded + field(udp_line, "packets"),
        "every forward is counted once"
    );
    assert!(field(report_line(&stdout, "reason pass_not_vip"), "packets") > 0);
    for drop in [
        "drop_no_neighbour",
        "drop_no_route",
        "drop_forwarding_off",
        "drop_internal",
    ] {
        assert_eq!(
            field(report_line(&stdout, &format!("reason {drop}")), "packets"),
            0,
            "{drop}"
        );
    }

    // A stop keeps the data path: the program stays attached and forwards.
    assert!(rig.director_has_xdp(), "XDP detached by SIGTERM");
    let kept = rig
        .client
        .enter(|| tcp_ask(CLIENT.into(), SocketAddr::new(VIP.into(), 80), TIMEOUT));
    assert!(
        kept.is_ok(),
        "no answer through the kept data path: {kept:?}"
    );
    assert!(
        !rig.director_neighbours().contains("managed"),
        "managed neighbours left: {}",
        rig.director_neighbours()
    );
    // `xdpvs teardown` undoes everything: no program, no pins, forwarding as before.
    let (ok, text) = rig.teardown();
    assert!(ok, "teardown: {text}");
    assert!(!rig.director_has_xdp(), "XDP still attached after teardown");
    assert!(
        !xdpvs_testbed::bpf_dir(rig.director.name()).exists(),
        "pins left after teardown"
    );
    let lo = rig
        .director
        .enter(|| std::fs::read_to_string("/proc/sys/net/ipv4/conf/lo/forwarding"));
    assert_eq!(lo.unwrap_or_default().trim(), "0", "lo forwarding restored");
    let fwd = rig
        .director
        .enter(|| std::fs::read_to_string("/proc/sys/net/ipv4/conf/eth0/forwarding"));
    assert_eq!(fwd.unwrap_or_default().trim(), "0");
}

/// Starts the daemon on a bad configuration; returns its exit code and standard error.
fn refused(rig: &DrRig, yaml: &str) -> (i32, String) {
    let config = rig.write_config(yaml);
    let (daemon, ready) = rig.start_daemon(&config, Duration::from_secs(30));
    assert!(!ready, "the daemon accepted:\n{yaml}");
    let (status, _, stderr) = daemon.wait(Duration::from_secs(10));
    assert!(
        !rig.director_has_xdp(),
        "a refused configuration attached XDP"
    );
    (status.code().unwrap_or(-1), stderr.join("\n"))
}

#[test]
fn bad_configurations_attach_nothing_and_say_why() {
    let rig = DrRig::new(1);
    let (code, err) = refused(&rig, &DR_CONFIG.replace("weight: 3", "weight: 70000"));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("xdpvs.yaml:14:") && err.contains("services[0].reals[2].weight"),
        "{err}"
    );

    let (code, err) = refused(&rig, &DR_CONFIG.replace("scheduler: sh", "scheduler: lblc"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("line 10") && err.contains("lblc"), "{err}");

    // A real the director can only reach through a gateway cannot be used for DR.
    rig.director.ip("route add 198.51.100.0/24 via 192.0.2.254");
    let (code, err) = refused(&rig, &DR_CONFIG.replace("192.0.2.12", "198.51.100.12"));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("services[0].reals[1]") && err.contains("gateway 192.0.2.254"),
        "{err}"
    );

    // An interface that does not exist: refused at attach, nothing left behind.
    let (code, err) = refused(&rig, &DR_CONFIG.replace("[eth0]", "[eth0, nosuch0]"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("nosuch0"), "{err}");
    assert!(
        !rig.director_neighbours().contains("managed"),
        "{}",
        rig.director_neighbours()
    );
}
