//! End to end, NAT and full-NAT: the daemon attached in driver mode to both of the
//! director's interfaces (two-arm), or to its one interface (one-arm), real TCP and UDP
//! servers that report the address they see, and clients behind a router.

use std::{
    collections::{BTreeMap, HashSet},
    io,
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Duration,
};

use lb_userspace::{config::Config, nexthop::Route, plan};
use xdpvs_testbed::{
    nat_rig::{self, CLIENT, NatRig, POOL, RealsRoute, VIP, client_sources, real_address},
    rig::{self, DrRig},
    traffic::{
        Server, Session, tcp_ask, tcp_bulk_server, tcp_fetch, tcp_peer_line_server,
        tcp_peer_server, udp_ask, udp_peer_server, udp_server,
    },
};

const TIMEOUT: Duration = Duration::from_secs(3);

fn banner(address: IpAddr) -> String {
    format!("real {address}")
}

/// Peer-reporting TCP (8080) and UDP (5353) servers on every real.
fn start_reals(reals: &[xdpvs_testbed::netns::Netns], addresses: &[IpAddr]) -> Vec<Server> {
    let mut servers = Vec::new();
    for (ns, &a) in reals.iter().zip(addresses) {
        let any = IpAddr::from([0, 0, 0, 0]);
        servers.push(tcp_peer_server(ns, SocketAddr::new(any, 8080), &banner(a)));
        servers.push(udp_peer_server(ns, SocketAddr::new(any, 5353), &banner(a)));
    }
    servers
}

/// "real A from B:P" → (A, B, P).
fn parse(answer: &str) -> (IpAddr, IpAddr, u16) {
    let parsed = answer
        .strip_prefix("real ")
        .and_then(|rest| rest.split_once(" from "))
        .and_then(|(real, peer)| {
            Some((
                real.parse::<IpAddr>().ok()?,
                peer.parse::<SocketAddr>().ok()?,
            ))
        });
    let Some((real, peer)) = parsed else {
        panic!("unexpected answer {answer:?}")
    };
    (real, peer.ip(), peer.port())
}

/// The real the daemon's plan picks for `client` (the program computes the same).
fn predicted(yaml: &str, port: u16, client: IpAddr) -> IpAddr {
    let config = Config::parse(yaml, Path::new("e2e.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let plan = plan::compile(
        &config,
        |a| {
            Ok(Route {
                ifindex: 0,
                gateway: None,
                local: POOL.iter().any(|p| IpAddr::from(*p) == a),
            })
        },
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let protocol = if port == 80 {
        lb_userspace::config::Protocol::Tcp
    } else {
        lb_userspace::config::Protocol::Udp
    };
    let service = plan
        .service(VIP.into(), port, protocol)
        .unwrap_or_else(|| panic!("no service on {port}"));
    service
        .real_for(client, VIP.into())
        .map(|r| r.address)
        .unwrap_or_else(|| panic!("no real for {client}"))
}

/// NAT with the reals routed through the director; full-NAT with reals that have no
/// route off their segment.
const METHODS: [(&str, RealsRoute); 2] = [
    ("nat", RealsRoute::ViaDirector),
    ("fullnat", RealsRoute::SegmentOnly),
];

/// A peer-reporting line server on port 8080 of every real.
fn line_servers(rig: &NatRig) -> Vec<Server> {
    let any = SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 8080);
    rig.reals
        .iter()
        .enumerate()
        .map(|(i, ns)| tcp_peer_line_server(ns, any, &banner(real_address(i).into())))
        .collect()
}

/// Stops the daemon, which must exit 0; its standard output.
fn stopped(daemon: rig::Daemon, what: &str) -> Vec<String> {
    let (status, stdout, stderr) = daemon.stop();
    assert!(
        status.success(),
        "{what}: daemon exit {status}: {stderr:#?}"
    );
    stdout
}

fn started(rig: &NatRig, yaml: &str) -> rig::Daemon {
    let path = rig.write_config(yaml);
    let (daemon, ready) = rig.start_daemon(&path, Duration::from_secs(30));
    assert!(ready, "daemon not ready: {:#?}", daemon.stderr());
    daemon
}

#[test]
fn nat_two_arm_serves_tcp_and_udp_and_the_reals_see_the_clients() {
    let rig = NatRig::new(3, RealsRoute::ViaDirector, 1500);
    let addresses: Vec<IpAddr> = (0..3).map(|i| real_address(i).into()).collect();
    let _servers = start_reals(&rig.reals, &addresses);
    let yaml = nat_rig::config("nat", &[(0, 1), (1, 2), (2, 3)]);
    let daemon = started(&rig, &yaml);
    let sources = client_sources();
    let answers = rig.client.enter(|| {
        sources
            .iter()
            .map(|&src| {
                let tcp = tcp_ask(src, SocketAddr::new(VIP.into(), 80), TIMEOUT);
                let udp = udp_ask(src, SocketAddr::new(VIP.into(), 53), TIMEOUT, 3);
                (src, tcp, udp)
            })
            .collect::<Vec<_>>()
    });
    let mut per_real = BTreeMap::new();
    for (src, tcp, udp) in answers {
        let tcp = tcp.unwrap_or_else(|e| panic!("tcp from {src}: {e}"));
        let udp = udp.unwrap_or_else(|e| panic!("udp from {src}: {e}"));
        let (real, peer, _) = parse(&tcp);
        assert_eq!(real, predicted(&yaml, 80, src), "tcp from {src}");
        assert_eq!(
            peer, src,
            "under NAT the real sees the client's own address"
        );
        let (real, peer, _) = parse(&udp);
        assert_eq!(real, predicted(&yaml, 53, src), "udp from {src}");
        assert_eq!(peer, src);
        *per_real.entry(real).or_insert(0) += 1;
    }
    assert!(
        per_real.len() >= 2,
        "the clients went to one real only: {per_real:?}"
    );
    let stdout = stopped(daemon, "");
    // Every answer came back through the program, none by the kernel.
    let replies = rig::event(&stdout, "ct_reply_hit");
    assert!(replies >= 2 * client_sources().len() as u64, "{replies}");
}

/// Raises the open-file limit for a test that holds thousands of sockets.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

#[test]
fn fullnat_reals_without_a_route_back_see_pool_addresses_and_1000_connections_never_collide() {
    const CONNECTIONS: usize = 1000;
    raise_fd_limit();
    let rig = NatRig::new(2, RealsRoute::SegmentOnly, 1500);
    let mut servers = Vec::new();
    for (i, ns) in rig.reals.iter().enumerate() {
        let any = SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 8080);
        servers.push(tcp_peer_line_server(
            ns,
            any,
            &banner(real_address(i).into()),
        ));
        let udp = SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 5353);
        servers.push(udp_peer_server(ns, udp, &banner(real_address(i).into())));
    }
    let yaml = nat_rig::config("fullnat", &[(0, 1), (1, 1)]);
    let daemon = started(&rig, &yaml);
    let sources = client_sources();
    // All connections open at once, then each asks: every one must work.
    let answers = rig.client.enter(|| {
        let mut sessions = Vec::new();
        for n in 0..CONNECTIONS {
            let src = sources[n % sources.len()];
            sessions.push(Session::connect(
                src,
                SocketAddr::new(VIP.into(), 80),
                TIMEOUT,
            ));
        }
        let udp = udp_ask(CLIENT.into(), SocketAddr::new(VIP.into(), 53), TIMEOUT, 3);
        let tcp: Vec<io::Result<String>> = sessions
            .into_iter()
            .map(|s| s.and_then(|mut s| s.ask()))
            .collect();
        (tcp, udp)
    });
    let (tcp, udp) = answers;
    let mut seen = HashSet::new();
    let mut failures = Vec::new();
    for (n, answer) in tcp.iter().enumerate() {
        match answer {
            Ok(a) => {
                let (real, peer, port) = parse(a);
                assert!(
                    POOL.iter().any(|p| IpAddr::from(*p) == peer),
                    "the real saw {peer}, not a pool address"
                );
                assert!(
                    seen.insert((real, peer, port)),
                    "two connections share {peer}:{port} to {real}"
                );
            }
            Err(e) => failures.push(format!("connection {n}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let udp = udp.unwrap_or_else(|e| panic!("udp: {e}"));
    let (_, peer, _) = parse(&udp);
    assert!(
        POOL.iter().any(|p| IpAddr::from(*p) == peer),
        "udp peer {peer}"
    );
    let stdout = stopped(daemon, "");
    assert_eq!(rig::reason(&stdout, "drop_snat_exhausted"), 0);
    drop(servers);
}

#[test]
fn nat_one_arm_on_a_single_segment() {
    let rig = DrRig::new(2);
    // The reals answer through the director, which shares their segment with the client.
    for ns in &rig.reals {
        for p in rig::CLIENT_PREFIXES {
            ns.ip(&format!(
                "route replace {}.{}.{}.0/24 via {}",
                p[0],
                p[1],
                p[2],
                rig::DIRECTOR
            ));
        }
        ns.exec("ethtool", &["-K", "eth0", "tx", "off"]);
    }
    let addresses: Vec<IpAddr> = (0..2).map(|i| rig::real_address(i).into()).collect();
    let _servers = start_reals(&rig.reals, &addresses);
    let yaml = format!(
        "director:\n  interfaces: [eth0]\n  hash_seed: 1\nservices:\n  - address: {}\n    \
         port: 80\n    protocol: tcp\n    scheduler: sh\n    forwarding: nat\n    reals:\n      \
         - {{address: {}, port: 8080}}\n      - {{address: {}, port: 8080}}\n",
        rig::VIP,
        addresses[0],
        addresses[1]
    );
    let path = rig.write_config(&yaml);
    let (daemon, ready) = rig.start_daemon(&path, Duration::from_secs(30));
    assert!(ready, "daemon not ready: {:#?}", daemon.stderr());
    let sources: Vec<IpAddr> = rig::client_sources().into_iter().step_by(25).collect();
    let answers = rig.client.enter(|| {
        sources
            .iter()
            .map(|&src| {
                (
                    src,
                    tcp_ask(src, SocketAddr::new(rig::VIP.into(), 80), TIMEOUT),
                )
            })
            .collect::<Vec<_>>()
    });
    for (src, answer) in answers {
        let answer = answer.unwrap_or_else(|e| panic!("tcp from {src}: {e}"));
        let (real, peer, _) = parse(&answer);
        assert!(addresses.contains(&real));
        assert_eq!(peer, src);
    }
    let stdout = stopped(daemon, "");
    let tx = rig::reason(&stdout, "forward_tx");
    assert!(tx >= 2 * sources.len() as u64, "{tx}");
}

#[test]
fn large_transfers_cross_a_reduced_path_mtu_under_nat_and_fullnat() {
    const BYTES: usize = 512 * 1024;
    const PATH_MTU: u32 = 1000;
    for (method, route) in METHODS {
        let rig = NatRig::new(1, route, PATH_MTU);
        let any = SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 8080);
        let _bulk = tcp_bulk_server(&rig.reals[0], any, BYTES);
        let daemon = started(&rig, &nat_rig::config(method, &[(0, 1)]));
        // The real sends 1500-byte segments; the router answers "fragmentation needed"
        // to the VIP, and the director must translate it for the real.
        let got = rig
            .client
            .enter(|| tcp_fetch(SocketAddr::new(VIP.into(), 80), TIMEOUT));
        assert_eq!(
            got.as_ref().ok(),
            Some(&BYTES),
            "{method}: transfer {got:?}"
        );
        let towards = if method == "nat" {
            IpAddr::from(CLIENT)
        } else {
            IpAddr::from(POOL[0])
        };
        let cached: String = if method == "nat" {
            rig.reals[0].ip(&format!("route get {towards}"))
        } else {
            // The pool address the flow took is not known here: either one.
            POOL.iter()
                .map(|p| rig.reals[0].ip(&format!("route get {p}")))
                .collect()
        };
        assert!(
            cached.contains(&format!("mtu {PATH_MTU}")),
            "{method}: the real learned no path MTU: {cached}"
        );
        let stdout = stopped(daemon, method);
        assert!(rig::event(&stdout, "icmp_to_real") >= 1, "{method}");
    }
}

#[test]
fn long_lived_nat_connections_survive_reloads_that_add_remove_and_drain_reals() {
    for (method, route) in METHODS {
        let rig = NatRig::new(3, route, 1500);
        let servers = line_servers(&rig);
        let daemon = started(&rig, &nat_rig::config(method, &[(0, 1), (1, 1)]));
        let sources = client_sources();
        let (mut sessions, firsts) = rig.client.enter(|| {
            let mut sessions = Vec::new();
            let mut firsts = Vec::new();
            for &src in sources.iter().take(10) {
                let mut s = Session::connect(src, SocketAddr::new(VIP.into(), 80), TIMEOUT)
                    .unwrap_or_else(|e| panic!("{method}: connect from {src}: {e}"));
                firsts.push(parse(&s.ask().unwrap_or_else(|e| panic!("{method}: {e}"))).0);
                sessions.push(s);
            }
            (sessions, firsts)
        });
        // Drain real 0, add real 2, then remove real 1 (its sessions end: LVS drops a
        // removed real's packets); real 0's sessions keep going throughout.
        for reals in [vec![(0, 0), (1, 1), (2, 1)], vec![(0, 0), (2, 1)]] {
            rig.write_config(&nat_rig::config(method, &reals));
            assert!(
                daemon.reload(),
                "{method}: reload refused: {:#?}",
                daemon.stderr()
            );
            rig.client.enter(|| {
                for (s, first) in sessions.iter_mut().zip(&firsts) {
                    if *first != IpAddr::from(real_address(0)) {
                        continue;
                    }
                    let again = parse(&s.ask().unwrap_or_else(|e| panic!("{method}: {e}"))).0;
                    assert_eq!(again, *first, "{method}: a session moved");
                }
            });
        }
        assert!(
            firsts.contains(&IpAddr::from(real_address(0))),
            "{method}: no session was on real 0: {firsts:?}"
        );
        // New connections avoid the drained real.
        let fresh = rig.client.enter(|| {
            sources
                .iter()
                .skip(10)
                .take(10)
                .map(|&src| {
                    let mut s = Session::connect(src, SocketAddr::new(VIP.into(), 80), TIMEOUT)?;
                    s.ask()
                })
                .collect::<Vec<_>>()
        });
        for answer in fresh {
            let (real, _, _) = parse(&answer.unwrap_or_else(|e| panic!("{method}: {e}")));
            assert_eq!(
                real,
                IpAddr::from(real_address(2)),
                "{method}: a new flow went to a drained or removed real"
            );
        }
        drop(sessions);
        stopped(daemon, method);
        drop(servers);
    }
}

#[test]
fn a_reals_fragmented_udp_answer_reaches_the_client_whole() {
    const ANSWER: usize = 4000;
    for (method, route) in METHODS {
        let rig = NatRig::new(1, route, 1500);
        // The real's kernel sends a 4,000-byte answer in three fragments; only the first
        // carries the ports, the others follow it through the director.
        let any = SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 5353);
        let _big = udp_server(&rig.reals[0], any, &"x".repeat(ANSWER));
        let daemon = started(&rig, &nat_rig::config(method, &[(0, 1)]));
        let answer = rig
            .client
            .enter(|| udp_ask(CLIENT.into(), SocketAddr::new(VIP.into(), 53), TIMEOUT, 3));
        let answer = answer.unwrap_or_else(|e| panic!("{method}: {e}"));
        assert_eq!(answer.len(), ANSWER, "{method}");
        let stdout = stopped(daemon, method);
        assert!(rig::event(&stdout, "frag_followed") >= 2, "{method}");
    }
}

#[test]
fn idle_nat_connections_survive_a_kill_9_and_restart_of_the_daemon() {
    for (method, route) in METHODS {
        let rig = NatRig::new(2, route, 1500);
        let servers = line_servers(&rig);
        let yaml = nat_rig::config(method, &[(0, 1), (1, 1)]);
        let daemon = started(&rig, &yaml);
        let sources = client_sources();
        let (mut sessions, before) = rig.client.enter(|| {
            let mut sessions = Vec::new();
            let mut seen = Vec::new();
            for &src in sources.iter().take(20) {
                let mut s = Session::connect(src, SocketAddr::new(VIP.into(), 80), TIMEOUT)
                    .unwrap_or_else(|e| panic!("{method}: connect from {src}: {e}"));
                seen.push(s.ask().unwrap_or_else(|e| panic!("{method}: {e}")));
                sessions.push(s);
            }
            (sessions, seen)
        });
        // The connection table is pinned: it outlives the daemon, and the next daemon
        // adopts it, so every flow finds both its entries (forward and reply) again.
        daemon.signal(libc::SIGKILL);
        let _ = daemon.wait(Duration::from_secs(10));
        let daemon = started(&rig, &yaml);
        let after = rig.client.enter(|| {
            sessions
                .iter_mut()
                .map(|s| {
                    s.ask()
                        .unwrap_or_else(|e| panic!("{method}: after the restart: {e}"))
                })
                .collect::<Vec<_>>()
        });
        assert_eq!(
            after, before,
            "{method}: a connection moved or changed source"
        );
        drop(sessions);
        let stdout = stopped(daemon, method);
        assert_eq!(rig::event(&stdout, "ct_midstream_miss"), 0, "{method}");
        assert!(rig::event(&stdout, "ct_reply_hit") >= 40, "{method}");
        drop(servers);
    }
}
