//! End to end, restarts: the data path is pinned, so it forwards while the daemon is
//! stopped or killed; the next daemon adopts it (ids, connection table, counters) and
//! replaces the program through the pinned link. Clients see none of it. A start that
//! cannot adopt what is pinned (other limits, another namespace's director) is refused
//! and leaves the running data path alone.

use std::{
    net::SocketAddr,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use xdpvs_testbed::{
    bpf_dir,
    rig::{
        Daemon, DrRig, VIP, client_sources, field, real_address, real_banner as banner, report_line,
    },
    traffic::{Session, Sessions, tcp_ask, tcp_server},
    xdpvs_bin,
};

const TIMEOUT: Duration = Duration::from_secs(3);

/// A web service over the rig's reals `(real, weight)`, listed in this order.
fn config(reals: &[(usize, u32)]) -> String {
    let reals: Vec<String> = reals
        .iter()
        .map(|&(i, w)| format!("      - {{address: {}, weight: {w}}}", real_address(i)))
        .collect();
    format!(
        "director:\n  interfaces: [eth0]\n  hash_seed: 1\nservices:\n  - name: web\n    \
         address: {VIP}\n    port: 80\n    protocol: tcp\n    scheduler: sh\n    reals:\n{}\n",
        reals.join("\n")
    )
}

fn start(rig: &DrRig, yaml: &str) -> Daemon {
    let (daemon, ready) = rig.start_daemon(&rig.write_config(yaml), Duration::from_secs(30));
    assert!(ready, "daemon not ready: {:#?}", daemon.stderr());
    daemon
}

/// The id of the XDP program on the director's eth0.
fn prog_id(rig: &DrRig) -> u64 {
    let link = rig.director.ip("link show dev eth0");
    link.split("prog/xdp id ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no XDP program: {link}"))
}

/// New connections, one after another from rotating sources, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<(u64, Vec<String>)>,
}

impl Load {
    fn start(rig: &DrRig) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let vip80 = SocketAddr::new(VIP.into(), 80);
        let handle = rig.client.spawn(move || {
            let mut ok = 0;
            let mut failures = Vec::new();
            for src in client_sources().into_iter().cycle() {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let answer = Session::connect(src, vip80, TIMEOUT).and_then(|mut s| s.ask());
                match answer {
                    Ok(a) if a.starts_with("real ") => ok += 1,
                    other => failures.push(format!("{src}: {other:?}")),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (ok, failures)
        });
        Load { stop, handle }
    }

    /// Stops the load; returns (answered, failures).
    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .unwrap_or_else(|_| panic!("load thread panicked"))
    }
}

#[test]
fn kill_9_restarts_and_program_replacement_lose_no_flow() {
    let rig = DrRig::new(3);
    let _servers = rig.line_servers();
    let daemon = start(&rig, &config(&[(0, 1), (1, 1)]));
    let sessions = Sessions::open(
        &rig.client,
        client_sources().into_iter().step_by(20).collect(),
        SocketAddr::new(VIP.into(), 80),
        TIMEOUT,
    );
    let first = sessions.ask_all();
    for (s, a) in &first {
        assert!(a.starts_with("real "), "{s}: {a}");
    }
    let load = Load::start(&rig);
    std::thread::sleep(Duration::from_millis(300));

    // kill -9: the pinned program goes on forwarding with nobody watching it.
    let before = prog_id(&rig);
    daemon.signal(libc::SIGKILL);
    let _ = daemon.wait(Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        prog_id(&rig),
        before,
        "the program changed without a daemon"
    );
    assert_eq!(
        sessions.ask_all(),
        first,
        "sessions broke while no daemon ran"
    );

    // The next daemon adopts the maps and swaps the program in the link. Its file lists
    // a new real first: ids come from the maps, not from the order of the file, so the
    // connection-table entries still name the right reals.
    let daemon = start(&rig, &config(&[(2, 1), (0, 1), (1, 1)]));
    assert!(
        daemon.logged("adopting the data path", Duration::from_secs(3))
            && daemon.logged("took over the pinned link", Duration::from_secs(3)),
        "{:#?}",
        daemon.stderr()
    );
    let replaced = prog_id(&rig);
    assert_ne!(replaced, before, "the program was not replaced");
    assert_eq!(
        sessions.ask_all(),
        first,
        "sessions moved or broke on restart"
    );
    std::thread::sleep(Duration::from_millis(300));

    // A clean stop keeps the data path too; counters go on across the next start.
    let (status, stdout, stderr) = daemon.stop();
    assert!(status.success(), "{stderr:#?}");
    let counted = field(
        report_line(&stdout, "service tcp 192.0.2.100:80"),
        "packets",
    );
    assert!(counted > 0);
    assert_eq!(prog_id(&rig), replaced);
    assert_eq!(sessions.ask_all(), first, "sessions broke after a stop");
    let daemon = start(&rig, &config(&[(2, 1), (0, 1), (1, 1)]));
    assert_eq!(sessions.ask_all(), first);
    let (status, stdout, stderr) = daemon.stop();
    assert!(status.success(), "{stderr:#?}");
    let went_on = field(
        report_line(&stdout, "service tcp 192.0.2.100:80"),
        "packets",
    );
    assert!(
        went_on > counted,
        "service counter {went_on} after the restart, {counted} before: it started again"
    );

    let (answered, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "{} of {} failed: {failures:#?}",
        failures.len(),
        answered
    );
    assert!(answered > 20, "only {answered} connections made");
    eprintln!("{answered} connections through two restarts and a kill -9, none failed");
    let (ok, text) = rig.teardown();
    assert!(ok, "{text}");
    assert!(!rig.director_has_xdp());
}

/// Runs `xdpvs daemon` in the client namespace on the director's pin directory; returns
/// its exit code and standard error (it is killed if it runs 20 s).
fn daemon_elsewhere(rig: &DrRig, config: &std::path::Path) -> (Option<i32>, String) {
    let mut child = rig
        .client
        .command(&xdpvs_bin())
        .arg("daemon")
        .arg("--config")
        .arg(config)
        .arg("--bpf-dir")
        .arg(bpf_dir(rig.director.name()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_start_that_cannot_adopt_is_refused_and_the_running_path_stays() {
    let rig = DrRig::new(1);
    let _server = tcp_server(&rig.reals[0], SocketAddr::new(VIP.into(), 80), "real");
    let vip80 = SocketAddr::new(VIP.into(), 80);
    let answers = || {
        rig.client
            .enter(|| tcp_ask(client_sources()[0], vip80, TIMEOUT))
            .is_ok()
    };
    let yaml = config(&[(0, 1)]);
    let daemon = start(&rig, &yaml);
    // While a daemon runs, teardown is refused.
    let (ok, text) = rig.teardown();
    assert!(!ok && text.contains("another xdpvs daemon"), "{text}");
    assert!(rig.director_has_xdp());
    let (status, _, stderr) = daemon.stop();
    assert!(status.success(), "{stderr:#?}");
    let id = prog_id(&rig);

    // Other limits: the pinned connection table has another size.
    let resized = yaml.replace("director:\n", "limits: {max_flows: 4096}\ndirector:\n");
    let (daemon, ready) = rig.start_daemon(&rig.write_config(&resized), Duration::from_secs(30));
    assert!(!ready);
    let (status, _, stderr) = daemon.wait(Duration::from_secs(10));
    let stderr = stderr.join("\n");
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("XDPVS_CT4_V3")
            && stderr.contains("capacity 1048576")
            && stderr.contains("needs 4096")
            && stderr.contains("limits.max_flows")
            && stderr.contains("xdpvs teardown"),
        "{stderr}"
    );
    assert_eq!(prog_id(&rig), id, "a refused start touched the program");
    assert!(answers(), "the VIP stopped answering after a refused start");

    // A director in another namespace pointed at these pins.
    let client_link = rig.client.ip("link show dev eth0");
    let (code, stderr) = daemon_elsewhere(&rig, &rig.write_config(&yaml));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("another network namespace"), "{stderr}");
    assert_eq!(
        rig.client.ip("link show dev eth0"),
        client_link,
        "the refused daemon attached"
    );
    assert_eq!(prog_id(&rig), id);
    assert!(answers());

    // A map another build left (a name this one does not use) is removed once the
    // links are switched.
    let dir = bpf_dir(rig.director.name());
    let flood =
        aya::maps::MapData::from_pin(dir.join("XDPVS_FLOOD_V1")).unwrap_or_else(|e| panic!("{e}"));
    flood
        .pin(dir.join("XDPVS_OLD_V0"))
        .unwrap_or_else(|e| panic!("{e}"));
    drop(flood);
    let daemon = start(&rig, &yaml);
    assert!(
        daemon.logged(
            "XDPVS_OLD_V0, a map of another build",
            Duration::from_secs(3)
        ),
        "{:#?}",
        daemon.stderr()
    );
    assert!(!dir.join("XDPVS_OLD_V0").exists());
    let (status, _, stderr) = daemon.stop();
    assert!(status.success(), "{stderr:#?}");

    // Only some of this build's maps: nothing is adopted, all start empty.
    std::fs::remove_file(dir.join("XDPVS_FLOOD_V1")).unwrap_or_else(|e| panic!("{e}"));
    let daemon = start(&rig, &yaml);
    assert!(
        daemon.logged(
            "holds maps of another build (missing: XDPVS_FLOOD_V1)",
            Duration::from_secs(3)
        ),
        "{:#?}",
        daemon.stderr()
    );
    assert!(!daemon.stderr().iter().any(|l| l.contains("adopting")));
    assert!(answers());
    let (status, _, stderr) = daemon.stop();
    assert!(status.success(), "{stderr:#?}");

    // Another XDP mode: the pinned link keeps its own, so it is replaced by a new one.
    assert!(rig.director.ip("link show dev eth0").contains("prog/xdp "));
    let daemon = start(
        &rig,
        &yaml.replace("director:\n", "director:\n  xdp_mode: generic\n"),
    );
    assert!(
        daemon.logged(
            "runs in driver mode, the file asks for Generic",
            Duration::from_secs(3)
        ),
        "{:#?}",
        daemon.stderr()
    );
    assert!(rig.director.ip("link show dev eth0").contains("xdpgeneric"));
    assert!(answers());
    let (status, _, stderr) = daemon.stop();
    assert!(status.success(), "{stderr:#?}");

    // Pins that are not xdpvs's are left alone.
    let other =
        aya::maps::MapData::from_pin(dir.join("XDPVS_FLOOD_V1")).unwrap_or_else(|e| panic!("{e}"));
    other
        .pin(dir.join("other_tools_map"))
        .unwrap_or_else(|e| panic!("{e}"));
    drop(other);
    let (ok, text) = rig.teardown();
    assert!(ok, "{text}");
    assert!(
        dir.join("other_tools_map").exists(),
        "teardown removed another tool's pin"
    );
    assert!(
        !dir.join("XDPVS_CT4_V3").exists(),
        "pins left after teardown"
    );
    assert!(!rig.director_has_xdp());
}

#[test]
fn a_real_added_after_a_restart_never_inherits_a_removed_reals_flows() {
    let rig = DrRig::new(3);
    let _servers = rig.line_servers();
    let daemon = start(&rig, &config(&[(0, 1), (1, 1)]));
    let sessions = Sessions::open(
        &rig.client,
        client_sources().into_iter().step_by(20).collect(),
        SocketAddr::new(VIP.into(), 80),
        TIMEOUT,
    );
    let first = sessions.ask_all();
    assert!(
        first.iter().any(|(_, a)| *a == banner(1)),
        "no session on real 1"
    );
    // Real 1 goes; its sessions stay idle. Its entries name index 1, generation 2.
    rig.write_config(&config(&[(0, 1)]));
    assert!(daemon.reload(), "{:#?}", daemon.stderr());
    let (status, _, stderr) = daemon.stop();
    assert!(status.success(), "{stderr:#?}");
    // A new real takes index 1 after a restart; the generation must be a new one.
    let daemon = start(&rig, &config(&[(0, 1), (2, 1)]));
    let after = sessions.ask_all();
    for ((src, was), (_, now)) in first.iter().zip(&after) {
        if *was == banner(1) {
            assert_ne!(*now, banner(2), "{src}: real 1's flow went to the new real");
        } else {
            assert_eq!(now, was, "{src}: moved");
        }
    }
    let (status, stdout, stderr) = daemon.stop();
    assert!(status.success(), "{stderr:#?}");
    // Each of real 1's flows met its entry, orphaned: dropped and forgotten.
    assert!(
        xdpvs_testbed::rig::reason(&stdout, "drop_real_removed") >= 1,
        "{stdout:#?}"
    );
    let (ok, text) = rig.teardown();
    assert!(ok, "{text}");
}
