//! End to end, the paths around direct routing: transit traffic the director must not
//! route, fragmented UDP, a TTL that expires at the director, path-MTU discovery for the
//! reals' replies, and a real whose MAC address changes. Real kernels, real sockets, the
//! `xdpvs` daemon in driver mode (see `rig` for the segment they share).

use std::{
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    path::Path,
    time::{Duration, Instant},
};

use lb_userspace::{
    config::{Config, Protocol},
    nexthop::Route,
    plan,
};
use xdpvs_testbed::{
    netns::Netns,
    rig::{CLIENT, DIRECTOR, DR_CONFIG, DrRig, VIP, client_sources, event, real_address, reason},
    traffic::{tcp_bulk_server, tcp_fetch, udp_ask, udp_ask_with, udp_server},
};

const TIMEOUT: Duration = Duration::from_secs(3);

/// A web service on the rig's first real only.
const ONE_REAL: &str = "\
director: {interfaces: [eth0], hash_seed: 1}
services:
  - {name: web, address: 192.0.2.100, port: 80, protocol: tcp, scheduler: sh,
     reals: [{address: 192.0.2.11}]}
";

fn banner(address: IpAddr) -> String {
    format!("real {address}")
}

/// The real the daemon's own plan names for a DNS request from `src`.
fn dns_real(src: IpAddr) -> IpAddr {
    let config = Config::parse(DR_CONFIG, Path::new("e2e.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let route = |_| {
        Ok(Route {
            ifindex: 0,
            gateway: None,
            local: false,
        })
    };
    let plan = plan::compile(&config, route, None).unwrap_or_else(|e| panic!("{e}"));
    plan.service(VIP.into(), 53, Protocol::Udp)
        .and_then(|s| s.real_for(src, VIP.into()))
        .map(|r| r.address)
        .unwrap_or_else(|| panic!("no real for {src}"))
}

fn dns_servers(rig: &DrRig) -> Vec<xdpvs_testbed::traffic::Server> {
    (0..rig.reals.len())
        .map(|i| {
            let name = banner(real_address(i).into());
            udp_server(&rig.reals[i], SocketAddr::new(VIP.into(), 53), &name)
        })
        .collect()
}

#[test]
fn transit_traffic_is_not_routed_while_xdpvs_runs() {
    let rig = DrRig::new(1);
    let real = real_address(0);
    let _echo = udp_server(&rig.reals[0], SocketAddr::new(real.into(), 9000), "real");
    let (daemon, ready) = rig.start_daemon(&rig.write_config(DR_CONFIG), Duration::from_secs(30));
    assert!(ready, "daemon not ready: {:#?}", daemon.stderr());
    let lo = || {
        rig.director
            .enter(|| std::fs::read_to_string("/proc/sys/net/ipv4/conf/lo/forwarding"))
            .unwrap_or_default()
    };
    assert_eq!(
        lo().trim(),
        "1",
        "the fallback look-up needs forwarding on lo"
    );

    // The client sends datagrams for the real's own address to the director's MAC.
    rig.client
        .ip(&format!("route add {real}/32 via {DIRECTOR}"));
    let to_real = SocketAddr::new(real.into(), 9000);
    let ask = || {
        rig.client
            .enter(|| udp_ask(CLIENT.into(), to_real, TIMEOUT, 2))
    };
    let answer = ask();
    assert!(answer.is_err(), "transit datagram answered: {answer:?}");
    assert_eq!(rig.forwarded_by_kernel(), 0, "the director routed transit");

    // The probe can see routing: with IP forwarding on, the same datagram gets through.
    rig.director.sysctl("net/ipv4/ip_forward", "1");
    let routed = ask();
    rig.director.sysctl("net/ipv4/ip_forward", "0");
    assert_eq!(routed.ok().as_deref(), Some("real"), "control: routing on");
    assert!(rig.forwarded_by_kernel() > 0);

    let (status, _, stderr) = daemon.stop();
    assert!(status.success(), "daemon exit {status}: {stderr:#?}");
    assert_eq!(lo().trim(), "0", "forwarding on lo left behind");
}

#[test]
fn fragmented_udp_is_answered_and_an_expiring_ttl_gets_time_exceeded() {
    let rig = DrRig::new(3);
    let _servers = dns_servers(&rig);
    let (daemon, ready) = rig.start_daemon(&rig.write_config(DR_CONFIG), Duration::from_secs(30));
    assert!(ready, "daemon not ready: {:#?}", daemon.stderr());

    // 4,000-byte requests leave the client in three fragments each; the real that the
    // first fragment's ports choose reassembles and answers.
    let vip53 = SocketAddr::new(VIP.into(), 53);
    let sources: Vec<IpAddr> = client_sources().into_iter().step_by(25).collect();
    let big = vec![0x5a; 4000];
    for &src in &sources {
        let answer = rig
            .client
            .enter(|| udp_ask_with(src, vip53, &big, TIMEOUT, 3))
            .unwrap_or_else(|e| panic!("fragmented request from {src}: {e}"));
        assert_eq!(answer, banner(dns_real(src)), "from {src}");
    }

    // TTL 1 to the VIP: the director answers with ICMP time exceeded, which the client's
    // socket reports (IP_RECVERR) as "host unreachable"; TTL 64 on the same socket is
    // answered, so it is the TTL that made the difference.
    let (expired, control) = rig
        .client
        .enter(|| {
            let sock = UdpSocket::bind(SocketAddr::new(CLIENT.into(), 0))?;
            sock.connect(vip53)?;
            sock.set_read_timeout(Some(TIMEOUT))?;
            let on: libc::c_int = 1;
            // SAFETY: a plain setsockopt with a live descriptor and an int option.
            let rc = unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_RECVERR,
                    (&on as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0, "IP_RECVERR: {}", io::Error::last_os_error());
            let mut buf = [0u8; 256];
            sock.set_ttl(1)?;
            sock.send(b"traceroute")?;
            let expired = sock.recv(&mut buf).map(|n| n.to_string());
            sock.set_ttl(64)?;
            sock.send(b"hello")?;
            let control = sock
                .recv(&mut buf)
                .map(|n| String::from_utf8_lossy(&buf[..n]).into());
            io::Result::Ok((expired, control))
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        expired.as_ref().err().and_then(io::Error::raw_os_error),
        Some(libc::EHOSTUNREACH),
        "TTL 1 to the VIP: {expired:?}"
    );
    assert_eq!(control.ok(), Some(banner(dns_real(CLIENT.into()))));

    let (status, stdout, stderr) = daemon.stop();
    assert!(status.success(), "daemon exit {status}: {stderr:#?}");
    let n = sources.len() as u64;
    assert!(event(&stdout, "frag_first") >= n, "{stdout:#?}");
    assert!(event(&stdout, "frag_followed") >= 2 * n, "{stdout:#?}");
    assert_eq!(reason(&stdout, "drop_fragment_unknown"), 0);
    assert_eq!(reason(&stdout, "tx_icmp_time_exceeded"), 1);
}

/// Builds, next to the rig's segment, a router (192.0.2.254) to a far client
/// (203.0.113.77) whose link has a smaller MTU on the router's side than on the
/// client's, as on a tunnel: the client announces MSS 1460, and the real's full-sized
/// replies need path-MTU discovery.
struct FarClient {
    router: Netns,
    client: Netns,
}

const ROUTER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
const FAR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 77);
const PATH_MTU: u32 = 1000;

impl FarClient {
    fn new(rig: &DrRig) -> FarClient {
        let router = Netns::create(&format!("{}-rt", rig.prefix));
        rig.plug(&router, "rt");
        router.ip(&format!("addr add {ROUTER}/24 dev eth0"));
        // Forwarded frames from the far side may carry partial checksums (veth), which
        // the director's XDP_TX would not complete: finish them in software here.
        router.exec("ethtool", &["-K", "eth0", "tx", "off"]);
        router.sysctl("net/ipv4/ip_forward", "1");
        let client = Netns::create(&format!("{}-far", rig.prefix));
        router.ip(&format!(
            "link add far0 mtu {PATH_MTU} type veth peer name eth0 netns {}",
            client.name()
        ));
        router.ip("addr add 203.0.113.1/24 dev far0");
        router.ip("link set far0 up");
        client.ip("link set eth0 up");
        client.ip(&format!("addr add {FAR}/24 dev eth0"));
        client.ip("route add default via 203.0.113.1");
        client.exec("ethtool", &["-K", "eth0", "tx", "off"]);
        for real in &rig.reals {
            real.ip(&format!("route replace 203.0.113.0/24 via {ROUTER}"));
        }
        FarClient { router, client }
    }
}

#[test]
fn path_mtu_discovery_works_for_the_reals_replies() {
    const BYTES: usize = 512 * 1024;
    let rig = DrRig::new(1);
    let far = FarClient::new(&rig);
    let _bulk = tcp_bulk_server(&rig.reals[0], SocketAddr::new(VIP.into(), 80), BYTES);
    let config = rig.write_config(ONE_REAL);
    let (daemon, ready) = rig.start_daemon(&config, Duration::from_secs(30));
    assert!(ready, "daemon not ready: {:#?}", daemon.stderr());

    // The real sends 1500-byte segments; the router answers each with "fragmentation
    // needed, MTU 1000" to the VIP, that is to the director, which must hand it to the
    // real. Without that the transfer stalls (a PMTU black hole).
    let got = far
        .client
        .enter(|| tcp_fetch(SocketAddr::new(VIP.into(), 80), TIMEOUT));
    assert_eq!(got.as_ref().ok(), Some(&BYTES), "transfer: {got:?}");
    let cached = rig.reals[0].ip(&format!("route get {FAR} from {VIP}"));
    assert!(
        cached.contains(&format!("mtu {PATH_MTU}")),
        "the real learned no path MTU: {cached}"
    );
    let (status, stdout, stderr) = daemon.stop();
    assert!(status.success(), "daemon exit {status}: {stderr:#?}");
    assert!(event(&stdout, "icmp_to_real") >= 1, "{stdout:#?}");
    drop(far.router);
}

#[test]
fn a_real_whose_mac_changes_is_followed() {
    let rig = DrRig::new(1);
    let _servers = dns_servers(&rig);
    // arp_notify: the real announces a new MAC with a gratuitous ARP, as hypervisors and
    // bonding fail-over do.
    rig.reals[0].sysctl("net/ipv4/conf/eth0/arp_notify", "1");
    let (daemon, ready) = rig.start_daemon(&rig.write_config(DR_CONFIG), Duration::from_secs(30));
    assert!(ready, "daemon not ready: {:#?}", daemon.stderr());
    let vip53 = SocketAddr::new(VIP.into(), 53);
    let ask = |timeout| {
        rig.client
            .enter(|| udp_ask(CLIENT.into(), vip53, timeout, 1))
    };
    assert_eq!(ask(TIMEOUT).ok(), Some(banner(real_address(0).into())));

    rig.reals[0].ip("link set eth0 address 02:00:00:00:aa:01");
    let changed = Instant::now();
    let mut answered = None;
    while changed.elapsed() < Duration::from_secs(20) {
        if ask(Duration::from_millis(50)).is_ok() {
            answered = Some(changed.elapsed());
            break;
        }
    }
    let neighbours = rig.director_neighbours();
    let (status, _, stderr) = daemon.stop();
    assert!(status.success(), "daemon exit {status}: {stderr:#?}");
    let after = answered.unwrap_or_else(|| panic!("never followed; neighbours: {neighbours}"));
    assert!(neighbours.contains("02:00:00:00:aa:01"), "{neighbours}");
    eprintln!("a real's MAC change was followed after {after:?}");
}

#[test]
fn a_start_after_kill_9_repairs_what_the_killed_daemon_left() {
    let rig = DrRig::new(2);
    let lo = || {
        rig.director
            .enter(|| std::fs::read_to_string("/proc/sys/net/ipv4/conf/lo/forwarding"))
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    let managed = |address: &str| {
        rig.director_neighbours()
            .lines()
            .any(|l| l.starts_with(&format!("{address} ")) && l.contains("managed"))
    };
    let two = ONE_REAL.replace(
        "reals: [{address: 192.0.2.11}]",
        "reals: [{address: 192.0.2.11}, {address: 192.0.2.12}]",
    );
    let (daemon, ready) = rig.start_daemon(&rig.write_config(&two), Duration::from_secs(30));
    assert!(ready, "daemon not ready: {:#?}", daemon.stderr());
    assert!(managed("192.0.2.12") && lo() == "1");
    daemon.signal(libc::SIGKILL);
    let _ = daemon.wait(Duration::from_secs(10));
    // The pinned program outlives the process; what it set on the host stays.
    assert!(rig.director_has_xdp());
    assert!(managed("192.0.2.12") && lo() == "1");

    // The next start, with .12 gone from the file, takes over .11 and removes .12.
    let config = rig.write_config(ONE_REAL);
    let (daemon, ready) = rig.start_daemon(&config, Duration::from_secs(30));
    assert!(ready, "daemon not ready: {:#?}", daemon.stderr());
    assert!(managed("192.0.2.11"), "{}", rig.director_neighbours());
    assert!(!managed("192.0.2.12"), "{}", rig.director_neighbours());
    let (status, _, stderr) = daemon.stop();
    assert!(status.success(), "daemon exit {status}: {stderr:#?}");
    assert!(!managed("192.0.2.11"), "{}", rig.director_neighbours());
    // The stop kept the data path, and `lo` forwarding with it, until teardown.
    assert_eq!(lo(), "1");
    let (ok, text) = rig.teardown();
    assert!(ok, "teardown: {text}");
    assert!(!rig.director_has_xdp());
    assert_eq!(lo(), "0", "lo forwarding as it was before the first start");
}

#[test]
fn a_second_daemon_is_refused_and_leaves_the_first_alone() {
    let rig = DrRig::new(1);
    let _servers = dns_servers(&rig);
    let config = rig.write_config(DR_CONFIG);
    let (first, ready) = rig.start_daemon(&config, Duration::from_secs(30));
    assert!(ready, "daemon not ready: {:#?}", first.stderr());
    let managed = || -> Vec<String> {
        let mut m: Vec<String> = rig
            .director_neighbours()
            .lines()
            .filter(|l| l.contains("managed"))
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect();
        m.sort();
        m
    };
    let neighbours = managed();
    assert_eq!(neighbours.len(), 3, "{neighbours:?}");
    let (second, ready) = rig.start_daemon(&config, Duration::from_secs(30));
    assert!(!ready, "a second daemon started");
    let (status, _, stderr) = second.wait(Duration::from_secs(10));
    let stderr = stderr.join("\n");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("another xdpvs daemon") && stderr.contains(&first.pid().to_string()),
        "{stderr}"
    );
    // The first still serves, with its neighbour entries and lo forwarding as they were.
    assert!(rig.director_has_xdp());
    assert_eq!(managed(), neighbours);
    let lo = rig
        .director
        .enter(|| std::fs::read_to_string("/proc/sys/net/ipv4/conf/lo/forwarding"))
        .unwrap_or_default();
    assert_eq!(lo.trim(), "1");
    let vip53 = SocketAddr::new(VIP.into(), 53);
    let answer = rig
        .client
        .enter(|| udp_ask(CLIENT.into(), vip53, TIMEOUT, 3));
    assert_eq!(answer.ok(), Some(banner(real_address(0).into())));
    let (status, _, stderr) = first.stop();
    assert!(status.success(), "daemon exit {status}: {stderr:#?}");
}

#[test]
fn an_interface_deleted_and_created_again_is_served_again() {
    let rig = DrRig::new(1);
    let _servers = dns_servers(&rig);
    let config = rig.write_config(DR_CONFIG);
    let (daemon, ready) = rig.start_daemon(&config, Duration::from_secs(30));
    assert!(ready, "daemon not ready: {:#?}", daemon.stderr());
    let vip53 = SocketAddr::new(VIP.into(), 53);
    let ask = || {
        rig.client
            .enter(|| udp_ask(CLIENT.into(), vip53, TIMEOUT, 3))
    };
    assert!(ask().is_ok());
    // The director's eth0 goes, and with it the program and the managed neighbours.
    rig.switch.ip("link del dir");
    assert!(
        daemon.logged("interface eth0 disappeared", Duration::from_secs(10)),
        "{:#?}",
        daemon.stderr()
    );
    // It comes back as a new device, with a new MAC, its addresses set again (as
    // networkd or ifupdown would), and the client learns the new MAC.
    rig.plug(&rig.director, "dir");
    rig.director.ip(&format!("addr add {DIRECTOR}/24 dev eth0"));
    rig.director.ip(&format!("addr add {VIP}/32 dev eth0"));
    let _peer_pass = xdpvs_testbed::rig::attach_pass(&rig.switch, "dir");
    rig.client.ip("neigh flush dev eth0");
    assert!(
        daemon.logged("attached to eth0 again", Duration::from_secs(10)),
        "{:#?}",
        daemon.stderr()
    );
    assert!(rig.director_has_xdp());
    // Served again: the program checks frames against the new MAC, and the real's
    // neighbour entry is made again.
    let answer = ask();
    assert_eq!(answer.ok(), Some(banner(real_address(0).into())));
    let (status, stdout, stderr) = daemon.stop();
    assert!(status.success(), "daemon exit {status}: {stderr:#?}");
    assert_eq!(reason(&stdout, "drop_other_host"), 0);
}

#[test]
fn an_interface_that_already_runs_xdp_is_refused_with_the_cause() {
    let rig = DrRig::new(1);
    // Another XDP program (a different tool's) already holds the director's eth0.
    let _other = xdpvs_testbed::rig::attach_pass(&rig.director, "eth0");
    let config = rig.write_config(ONE_REAL);
    let (daemon, ready) = rig.start_daemon(&config, Duration::from_secs(30));
    assert!(!ready, "the daemon started over another program");
    let (status, _, stderr) = daemon.wait(Duration::from_secs(20));
    let stderr = stderr.join("\n");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("eth0") && stderr.contains("EBUSY") && stderr.contains("already"),
        "{stderr}"
    );
    // The other program is still attached: the failed start took nothing away.
    assert!(rig.director_has_xdp());
}

#[test]
fn sigterm_during_start_up_stops_it_and_undoes_what_it_did() {
    let rig = DrRig::new(1);
    // A real that never answers ARP holds the start-up for its 3 s neighbour wait.
    let config = rig.write_config(
        "director: {interfaces: [eth0]}\nlimits: {max_flows: 65536}\nservices:\n  - {address: \
         192.0.2.100, port: 80, protocol: tcp, scheduler: sh, reals: [{address: 192.0.2.99}]}\n",
    );
    let (daemon, ready) = rig.start_daemon(&config, Duration::from_millis(500));
    assert!(!ready, "the start-up did not wait for the real");
    daemon.signal(libc::SIGTERM);
    let (status, stdout, stderr) = daemon.wait(Duration::from_secs(20));
    assert!(status.success(), "exit {status}: {stderr:#?}");
    assert!(
        !stdout
            .iter()
            .any(|l| l.starts_with(lb_userspace::daemon::READY)),
        "it finished starting first: {stdout:#?}"
    );
    assert!(
        stderr.iter().any(|l| l.contains("stopped during start-up")),
        "{stderr:#?}"
    );
    assert!(!rig.director_has_xdp());
    assert!(
        !rig.director_neighbours().contains("managed"),
        "{}",
        rig.director_neighbours()
    );
    let lo = rig
        .director
        .enter(|| std::fs::read_to_string("/proc/sys/net/ipv4/conf/lo/forwarding"))
        .unwrap_or_default();
    assert_eq!(lo.trim(), "0", "lo forwarding restored");
}

#[test]
fn the_service_manager_hears_ready_watchdog_reloading_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let rig = DrRig::new(1);
    let config = rig.write_config(ONE_REAL);
    // systemd's side of `Type=notify`: a datagram socket named by NOTIFY_SOCKET.
    let path = config.with_file_name("notify.sock");
    let manager = UnixDatagram::bind(&path).unwrap_or_else(|e| panic!("{e}"));
    manager
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap_or_else(|e| panic!("{e}"));
    let next = || {
        let mut buf = [0u8; 512];
        // A signal to the test process (a child exiting) interrupts the wait: wait again.
        let n = loop {
            match manager.recv(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => break other.unwrap_or_else(|e| panic!("no notification: {e}")),
            }
        };
        String::from_utf8_lossy(&buf[..n]).trim_end().to_owned()
    };
    let notify = path.to_string_lossy().into_owned();
    let (daemon, ready) = xdpvs_testbed::rig::start_daemon_with(
        &rig.director,
        &config,
        Duration::from_secs(30),
        &[],
        &[("NOTIFY_SOCKET", &notify), ("WATCHDOG_USEC", "200000")],
    );
    assert!(ready, "daemon not ready: {:#?}", daemon.stderr());
    let first = next();
    assert!(
        first.contains("READY=1") && first.contains("STATUS=serving 1 services, 1 reals"),
        "{first:?}"
    );
    // Pinged at half the watchdog period.
    assert_eq!(next(), "WATCHDOG=1");
    assert_eq!(next(), "WATCHDOG=1");
    daemon.signal(libc::SIGHUP);
    let mut seen = Vec::new();
    while !seen.iter().any(|m: &String| m.starts_with("READY=1")) {
        let m = next();
        if m != "WATCHDOG=1" {
            seen.push(m);
        }
    }
    assert!(
        seen[0].starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{seen:?}"
    );
    daemon.signal(libc::SIGTERM);
    let mut last = next();
    while last == "WATCHDOG=1" {
        last = next();
    }
    assert_eq!(last, "STOPPING=1");
    let (status, _, stderr) = daemon.wait(Duration::from_secs(20));
    assert!(status.success(), "{stderr:#?}");
}

#[test]
fn the_three_capabilities_of_the_systemd_unit_are_enough() {
    use std::io::BufRead as _;
    // The set deploy/xdpvs.service grants, and nothing else (the rest of root's dropped).
    const CAPS: &str = "-all,+bpf,+net_admin,+perfmon";
    let rig = DrRig::new(1);
    let _servers = dns_servers(&rig);
    let config = rig.write_config(DR_CONFIG);
    let dir = xdpvs_testbed::bpf_dir(rig.director.name());
    let socket = xdpvs_testbed::rig::socket_of(&config);
    let confined = |args: &[&str]| {
        let mut c = rig.director.command(Path::new("/usr/bin/setpriv"));
        c.args(["--bounding-set", CAPS, "--inh-caps", "-all", "--"])
            .arg(xdpvs_testbed::xdpvs_bin())
            .arg("--socket")
            .arg(&socket)
            .args(args);
        c
    };
    for round in ["first start", "restart that adopts"] {
        let mut child = confined(&[
            "daemon",
            "--config",
            config.to_str().unwrap_or(""),
            "--bpf-dir",
            dir.to_str().unwrap_or(""),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
        let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
        let ready = std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.starts_with(lb_userspace::daemon::READY));
        if !ready {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
            panic!("{round}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let answer = rig
            .client
            .enter(|| udp_ask(CLIENT.into(), SocketAddr::new(VIP.into(), 53), TIMEOUT, 3));
        assert!(answer.is_ok(), "{round}: {answer:?}");
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().unwrap_or_else(|e| panic!("{e}"));
        assert!(status.success(), "{round}: exit {status}");
    }
    let out = confined(&["teardown", "--bpf-dir", dir.to_str().unwrap_or("")])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!rig.director_has_xdp());
}

#[test]
fn trace_logs_dropped_packets_only_when_asked() {
    let rig = DrRig::new(1);
    let config = rig.write_config(
        "director: {interfaces: [eth0]}\nservices:\n  - {address: 192.0.2.100, port: 53, \
         protocol: udp, scheduler: sh, reals: []}\n",
    );
    let send = || {
        rig.client.enter(|| {
            let s = UdpSocket::bind((CLIENT, 0)).unwrap_or_else(|e| panic!("{e}"));
            for _ in 0..3 {
                let _ = s.send_to(b"q", SocketAddr::new(VIP.into(), 53));
            }
        })
    };
    for trace in [false, true] {
        let args: &[&str] = if trace { &["--trace"] } else { &[] };
        let (daemon, ready) = xdpvs_testbed::rig::start_daemon_with(
            &rig.director,
            &config,
            Duration::from_secs(30),
            args,
            &[("RUST_LOG", "debug,netlink_proto=error")],
        );
        assert!(ready, "daemon not ready: {:#?}", daemon.stderr());
        send();
        assert_eq!(
            daemon.logged("drop drop_no_real", Duration::from_secs(3)),
            trace,
            "trace {trace}: {:#?}",
            daemon.stderr()
        );
        let (status, stdout, stderr) = daemon.stop();
        assert!(status.success(), "{stderr:#?}");
        // The packets were dropped, and counted, either way.
        assert!(reason(&stdout, "drop_no_real") >= 3);
    }
}
