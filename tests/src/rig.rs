//! The direct-routing rig: a client, a director and N real servers on one L2 segment
//! (a bridge in a "switch" namespace), as in an LVS-DR install.
//!
//! ```text
//!   client 192.0.2.2  (+ sources 198.51.100.0/24, 203.0.113.0/24 on lo)
//!      |
//!   [switch: br0] ---- director 192.0.2.1, VIP 192.0.2.100 on eth0, xdpvs on eth0
//!      |
//!   real i 192.0.2.(11+i), VIP on lo, arp_ignore=1 arp_announce=2
//! ```
//! The reals route the extra client sources via the client and have no route through
//! the director, and the director does not forward IP: replies can only go straight
//! from a real to the client.
//!
//! Two things differ from a NIC, both because the director's frames leave by XDP_TX into
//! a veth: the director's switch-side port runs `bench_pass` (veth only receives XDP_TX
//! frames on a peer that runs XDP), and the client computes its own checksums.

use std::{
    io::{BufRead, BufReader},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::{Child, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use crate::{
    cleanup,
    netns::{Netns, unique_prefix},
    xdpvs_bin,
};

pub const DIRECTOR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
/// Client source prefixes, all local to the client (on its lo).
pub const CLIENT_PREFIXES: [[u8; 3]; 2] = [[198, 51, 100], [203, 0, 113]];

/// The configuration the demo shows and the end-to-end test checks: a weighted `sh` web
/// service and a `dns` service over the rig's three reals.
pub const DR_CONFIG: &str = "\
director:
  interfaces: [eth0]
  xdp_mode: driver
  hash_seed: 1
services:
  - name: web
    address: 192.0.2.100
    port: 80
    protocol: tcp
    scheduler: sh
    reals:
      - {address: 192.0.2.11, weight: 1}
      - {address: 192.0.2.12, weight: 2}
      - {address: 192.0.2.13, weight: 3}
  - name: dns
    address: 192.0.2.100
    port: 53
    protocol: udp
    scheduler: sh
    reals:
      - {address: 192.0.2.11}
      - {address: 192.0.2.12}
      - {address: 192.0.2.13}
";

/// The address of real `i` (0-based).
pub fn real_address(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 11 + i as u8)
}

/// What real `i`'s test servers answer: `real <address>`.
pub fn real_banner(i: usize) -> String {
    format!("real {}", real_address(i))
}

/// Every client source address the rig provides (508 of them).
pub fn client_sources() -> Vec<IpAddr> {
    CLIENT_PREFIXES
        .iter()
        .flat_map(|p| (1..=254u8).map(move |h| IpAddr::from([p[0], p[1], p[2], h])))
        .collect()
}

/// A running `xdpvs daemon` inside the director namespace.
pub struct Daemon {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    /// Lines the daemon printed on standard output so far.
    pub fn stdout(&self) -> Vec<String> {
        self.stdout
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Lines the daemon printed on standard error so far.
    pub fn stderr(&self) -> Vec<String> {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for the daemon to exit (SIGKILL after `limit`); returns its status and output.
    pub fn wait(mut self, limit: Duration) -> (ExitStatus, Vec<String>, Vec<String>) {
        let start = Instant::now();
        let status = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break status;
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                break self.child.wait().unwrap_or_else(|e| panic!("wait: {e}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // Let the reader threads drain the pipes.
        std::thread::sleep(Duration::from_millis(100));
        cleanup::unregister_daemon(self.child.id());
        (status, self.stdout(), self.stderr())
    }

    /// SIGHUP, then waits for the daemon's answer: true for "reloaded", false for a
    /// refusal (its file is whatever the caller wrote before).
    pub fn reload(&self) -> bool {
        let (out_before, err_before) = (self.stdout().len(), self.stderr().len());
        self.signal(libc::SIGHUP);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if self.stdout()[out_before..]
                .iter()
                .any(|l| l.starts_with(lb_userspace::daemon::RELOADED))
            {
                return true;
            }
            if self.stderr()[err_before..]
                .iter()
                .any(|l| l.contains("reload refused"))
            {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("no answer to SIGHUP: {:#?}", self.stderr());
    }

    /// Whether the daemon logs a line containing `text` within `limit` (standard error is
    /// read by its own thread, which may lag behind the "ready" line on standard output).
    pub fn logged(&self, text: &str, limit: Duration) -> bool {
        let start = Instant::now();
        loop {
            if self.stderr().iter().any(|l| l.contains(text)) {
                return true;
            }
            if start.elapsed() >= limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then [`Daemon::wait`].
    pub fn stop(self) -> (ExitStatus, Vec<String>, Vec<String>) {
        self.signal(libc::SIGTERM);
        self.wait(Duration::from_secs(20))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        cleanup::unregister_daemon(self.child.id());
    }
}

fn collect_lines(
    reader: impl std::io::Read + Send + 'static,
    into: Arc<Mutex<Vec<String>>>,
    ready: Option<mpsc::Sender<()>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            let is_ready = line.starts_with(lb_userspace::daemon::READY);
            into.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            if is_ready && let Some(tx) = &ready {
                let _ = tx.send(());
            }
        }
    });
}

/// Client, director, reals and the switch between them.
pub struct DrRig {
    pub prefix: String,
    pub client: Netns,
    pub director: Netns,
    pub reals: Vec<Netns>,
    pub switch: Netns,
    _peer_pass: aya::Ebpf,
    scratch: Scratch,
}

impl DrRig {
    /// Builds the rig with `reals` real servers. Panics (after cleaning up) on failure.
    pub fn new(reals: usize) -> DrRig {
        crate::require_root();
        let prefix = unique_prefix();
        let switch = Netns::create(&format!("{prefix}-sw"));
        switch.ip("link add br0 type bridge");
        switch.ip("link set br0 up");
        let plug = |ns: &Netns, port: &str| plug(&switch, ns, port);

        let client = Netns::create(&format!("{prefix}-cl"));
        plug(&client, "cl");
        client.ip(&format!("addr add {CLIENT}/24 dev eth0"));
        for p in CLIENT_PREFIXES {
            client.ip(&format!("addr add {}.{}.{}.1/24 dev lo", p[0], p[1], p[2]));
        }
        client.sysctl("net/ipv4/conf/all/arp_announce", "2");
        // veth leaves TCP/UDP checksums partial and marks the skb so the receiver trusts
        // them; an XDP_TX'd frame loses that mark, so the real would count a checksum error
        // and drop it. A NIC completes checksums before the wire; here the client must.
        client.exec("ethtool", &["-K", "eth0", "tx", "off"]);

        let director = Netns::create(&format!("{prefix}-dir"));
        plug(&director, "dir");
        director.ip(&format!("addr add {DIRECTOR}/24 dev eth0"));
        director.ip(&format!("addr add {VIP}/32 dev eth0"));
        director.sysctl("net/ipv4/ip_forward", "0");
        // The director's XDP_TX frames go to its veth peer, which only picks them up when
        // it runs XDP itself (GRO on the peer did not do it here: the frames were counted
        // as sent and never received). A real NIC has no such need.
        let peer_pass = attach_pass(&switch, "dir");

        let mut real_ns = Vec::new();
        for i in 0..reals {
            let ns = Netns::create(&format!("{prefix}-r{i}"));
            plug(&ns, &format!("r{i}"));
            ns.ip(&format!("addr add {}/24 dev eth0", real_address(i)));
            ns.ip(&format!("addr add {VIP}/32 dev lo"));
            for key in ["all", "eth0"] {
                ns.sysctl(&format!("net/ipv4/conf/{key}/arp_ignore"), "1");
                ns.sysctl(&format!("net/ipv4/conf/{key}/arp_announce"), "2");
            }
            for p in CLIENT_PREFIXES {
                ns.ip(&format!(
                    "route add {}.{}.{}.0/24 via {CLIENT}",
                    p[0], p[1], p[2]
                ));
            }
            real_ns.push(ns);
        }

        let scratch = Scratch::new(&prefix);
        DrRig {
            prefix,
            client,
            director,
            reals: real_ns,
            switch,
            _peer_pass: peer_pass,
            scratch,
        }
    }

    /// Writes a configuration file for the daemon and returns its path.
    pub fn write_config(&self, yaml: &str) -> PathBuf {
        self.scratch.write_config(yaml)
    }

    /// Writes another file in the rig's scratch directory and returns its path.
    pub fn write_scratch(&self, name: &str, text: &str) -> PathBuf {
        self.scratch.write(name, text)
    }

    /// Starts `xdpvs daemon` in the director namespace; see [`start_daemon`].
    pub fn start_daemon(&self, config: &std::path::Path, limit: Duration) -> (Daemon, bool) {
        start_daemon(&self.director, config, limit)
    }

    /// Runs `xdpvs teardown` in the director namespace; returns (success, stdout+stderr).
    pub fn teardown(&self) -> (bool, String) {
        teardown(&self.director)
    }

    /// A long-lived line server on every real for the VIP's port 80, answering
    /// [`real_banner`].
    pub fn line_servers(&self) -> Vec<crate::traffic::Server> {
        self.reals
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                crate::traffic::tcp_line_server(
                    ns,
                    SocketAddr::new(VIP.into(), 80),
                    &real_banner(i),
                )
            })
            .collect()
    }

    /// Whether an XDP program is attached to the director's eth0.
    pub fn director_has_xdp(&self) -> bool {
        self.director.ip("link show dev eth0").contains("prog/xdp")
    }

    /// The director's neighbour table, as `ip -d neigh` prints it.
    pub fn director_neighbours(&self) -> String {
        self.director.ip("-d neigh show dev eth0")
    }

    /// `Ip: ForwDatagrams` of the director's namespace: datagrams its kernel routed.
    pub fn forwarded_by_kernel(&self) -> u64 {
        // /proc/thread-self: /proc/self would name the main thread's namespace.
        let snmp = self
            .director
            .enter(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))
            .unwrap_or_else(|e| panic!("reading snmp: {e}"));
        let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
        let (names, values) = (ip.next().unwrap_or(""), ip.next().unwrap_or(""));
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == "ForwDatagrams")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or_else(|| panic!("no Ip ForwDatagrams in {snmp}"))
    }

    /// Plugs `ns` into the switch: its `eth0` is the peer of the switch port `port`.
    pub fn plug(&self, ns: &Netns, port: &str) {
        plug(&self.switch, ns, port);
    }
}

fn plug(switch: &Netns, ns: &Netns, port: &str) {
    switch.ip(&format!(
        "link add {port} type veth peer name eth0 netns {}",
        ns.name()
    ));
    switch.ip(&format!("link set {port} master br0 up"));
    ns.ip("link set eth0 up");
}

/// A value from a `key=value` field of a daemon report line.
pub fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

/// The last line of a daemon report that starts (after indentation) with `prefix`.
pub fn report_line<'a>(report: &'a [String], prefix: &str) -> &'a str {
    report
        .iter()
        .rev()
        .find(|l| l.trim_start().starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in {report:#?}"))
}

/// The count of event `name` in a daemon report.
pub fn event(report: &[String], name: &str) -> u64 {
    field(report_line(report, &format!("event {name} ")), "count")
}

/// The packets counted under reason `name` in a daemon report.
pub fn reason(report: &[String], name: &str) -> u64 {
    field(report_line(report, &format!("reason {name} ")), "packets")
}

/// The API socket of the daemon whose configuration file is `config`: beside it, in the
/// rig's scratch directory (root's, mode 0755: a place the daemon accepts).
pub fn socket_of(config: &std::path::Path) -> PathBuf {
    config.with_file_name("xdpvs.sock")
}

/// Runs an `xdpvs` command against the daemon whose file is `config`; returns its exit
/// code, standard output and standard error.
pub fn cli(config: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(xdpvs_bin())
        .arg("--socket")
        .arg(socket_of(config))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running xdpvs {args:?}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `xdpvs ARGS` against the daemon of `config` must succeed; returns its standard output.
pub fn cli_ok(config: &std::path::Path, args: &[&str]) -> String {
    let (code, out, err) = cli(config, args);
    assert_eq!(code, 0, "xdpvs {args:?}: {err}");
    out
}

/// Runs `xdpvs teardown` for the daemon of `ns`; returns (success, stdout+stderr).
pub fn teardown(ns: &Netns) -> (bool, String) {
    let out = ns
        .command(&xdpvs_bin())
        .arg("teardown")
        .arg("--bpf-dir")
        .arg(crate::bpf_dir(ns.name()))
        .output()
        .unwrap_or_else(|e| panic!("running xdpvs teardown: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Starts `xdpvs daemon` in `ns`; waits for it to be ready, or returns it as it is after
/// it exits or after `limit` (check with `Daemon::wait`).
pub fn start_daemon(ns: &Netns, config: &std::path::Path, limit: Duration) -> (Daemon, bool) {
    start_daemon_with(ns, config, limit, &[], &[])
}

/// [`start_daemon`] with more arguments (e.g. `--on-exit detach`) and environment.
pub fn start_daemon_with(
    ns: &Netns,
    config: &std::path::Path,
    limit: Duration,
    args: &[&str],
    envs: &[(&str, &str)],
) -> (Daemon, bool) {
    let mut cmd = ns.command(&xdpvs_bin());
    cmd.arg("daemon")
        .arg("--config")
        .arg(config)
        .arg("--bpf-dir")
        .arg(crate::bpf_dir(ns.name()))
        .arg("--socket")
        .arg(socket_of(config))
        .args(args)
        .env("RUST_LOG", "info")
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("starting xdpvs: {e}"));
    cleanup::register_daemon(child.id());
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        collect_lines(out, stdout.clone(), Some(tx));
    }
    if let Some(err) = child.stderr.take() {
        collect_lines(err, stderr.clone(), None);
    }
    let mut daemon = Daemon {
        child,
        stdout,
        stderr,
    };
    let start = Instant::now();
    while start.elapsed() < limit {
        if rx.recv_timeout(Duration::from_millis(50)).is_ok() {
            return (daemon, true);
        }
        if let Ok(Some(_)) = daemon.child.try_wait() {
            break;
        }
    }
    (daemon, false)
}

/// Next hops by real index.
pub type NextHops = std::collections::HashMap<u32, lb_userspace::nexthop::NextHop>;

/// Next hops of a plan's reals and the MACs of `interfaces`, read through rtnetlink as
/// the daemon reads them; call on a thread inside the director's namespace. A real whose
/// next hop cannot be read (no route) is left out, so the program falls back to
/// `bpf_fib_lookup` for it.
pub fn resolve(
    plan: &lb_userspace::plan::Plan,
    interfaces: &[&str],
) -> (NextHops, Vec<(u32, [u8; 6])>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    rt.block_on(async {
        let nl = lb_userspace::nexthop::Netlink::open().unwrap_or_else(|e| panic!("{e}"));
        let mut links = std::collections::HashMap::new();
        let mut hops = std::collections::HashMap::new();
        for r in plan.services.iter().flat_map(|s| &s.reals) {
            if let Ok(hop) = nl.next_hop(r.address, &mut links).await {
                hops.insert(r.index, hop);
            }
        }
        let mut macs = Vec::new();
        for name in interfaces {
            let l = nl
                .link_by_name(name)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            macs.push((l.index, l.mac));
        }
        (hops, macs)
    })
}

/// Loads the helper object (`lb_userspace::BENCH_OBJECT`) in `ns` and attaches its
/// `program` to `interface` in driver mode; detached when the returned object drops (or
/// the namespace goes). Helper programs never touch xdpvs's maps or counters.
pub fn attach_helper(ns: &Netns, interface: &str, program: &str) -> aya::Ebpf {
    ns.enter(|| {
        let mut ebpf = aya::Ebpf::load(lb_userspace::BENCH_OBJECT)
            .unwrap_or_else(|e| panic!("loading the helper object: {e}"));
        let p = crate::bench::xdp(&mut ebpf, program);
        p.load()
            .unwrap_or_else(|e| panic!("loading {program}: {e}"));
        p.attach(interface, aya::programs::xdp::XdpMode::Driver)
            .unwrap_or_else(|e| panic!("attaching {program} to {interface}: {e}"));
        ebpf
    })
}

/// Attaches `bench_pass` (XDP_PASS) to `interface` in `ns`: on veth, a peer must run XDP
/// to receive XDP_TX frames, and BPF_PROG_TEST_RUN needs the ingress interface's XDP
/// receive queue, which veth registers once any program is attached.
pub fn attach_pass(ns: &Netns, interface: &str) -> aya::Ebpf {
    attach_helper(ns, interface, lb_common::bench::programs::PASS)
}

/// Makes `dir` mode 0755 (whatever the umask), so the daemon accepts its socket there.
pub fn private_dir(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
}

/// A rig's scratch directory for the daemon's configuration, removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(prefix: &str) -> Scratch {
        let dir = std::env::temp_dir().join(prefix);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        // The daemon's API socket goes here: a directory only root can write.
        crate::rig::private_dir(&dir);
        Scratch(dir)
    }

    /// Writes the daemon's configuration file and returns its path.
    pub fn write_config(&self, yaml: &str) -> PathBuf {
        self.write("xdpvs.yaml", yaml)
    }

    /// Writes a file in the scratch directory and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An HTTP/1.0 GET inside `ns` to `at` (such as the daemon's metrics); the body of a
/// 200 answer.
pub fn http_get(ns: &Netns, at: &str, path: &str) -> Option<String> {
    use std::io::{Read as _, Write as _};
    ns.enter(|| {
        let mut s = std::net::TcpStream::connect(at).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {at}\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        (head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"))
            .then(|| body.to_owned())
    })
}

/// The values of the Prometheus text's samples of metric `name` whose labels include
/// every one of `labels` (each written `key="value"`).
pub fn metric_values(text: &str, name: &str, labels: &[&str]) -> Vec<f64> {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
                && labels.iter().all(|want| l.contains(want))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .collect()
}
