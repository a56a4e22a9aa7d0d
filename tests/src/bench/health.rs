//! The health checkers' cost: 1,000 reals (10 services × 100 real addresses) checked
//! every second by a daemon in a namespace of its own, against real listeners in a reals
//! namespace. Measured: the daemon's CPU share of one core (its utime + stime over a
//! window, from /proc), its resident memory beside the same configuration without
//! checks, and the checks it made per second (its own counter).

use std::time::{Duration, Instant};

use crate::{
    checked::http_server,
    netns::Netns,
    rig::{self, http_get},
    traffic::{Server, tcp_listener},
};

pub struct Measured {
    pub what: String,
    pub value: String,
}

const SERVICES: usize = 10;
const ADDRESSES: usize = 100;
/// Seconds the CPU is measured over, after a warm-up of two intervals.
const WINDOW: u64 = 20;

fn real(i: usize) -> String {
    // 192.0.2.10 to 192.0.2.109.
    format!("192.0.2.{}", 10 + i)
}

fn config(check: Option<&str>) -> String {
    let reals: Vec<String> = (0..ADDRESSES)
        .map(|i| format!("{{address: {}}}", real(i)))
        .collect();
    let reals = reals.join(", ");
    let mut text = String::from("director: {interfaces: [d0]}\nservices:\n");
    for s in 0..SERVICES {
        let check = check.map_or(String::new(), |c| format!("check: {c}, "));
        text.push_str(&format!(
            "  - {{address: 192.0.2.200, port: {}, protocol: tcp, scheduler: mh, {check}reals: [{reals}]}}\n",
            9000 + s
        ));
    }
    text
}

/// The director's and the reals' namespaces, and the listeners.
struct HealthRig {
    dir_ns: Netns,
    _reals_ns: Netns,
    dir: std::path::PathBuf,
    _servers: Vec<Server>,
}

impl HealthRig {
    fn new(http: bool) -> HealthRig {
        let prefix = format!("xdpvs-{}-hb", std::process::id());
        let dir_ns = Netns::create(&format!("{prefix}-dir"));
        let reals_ns = Netns::create(&format!("{prefix}-reals"));
        dir_ns.ip(&format!(
            "link add d0 type veth peer name r0 netns {}",
            reals_ns.name()
        ));
        dir_ns.ip("addr add 192.0.2.1/24 dev d0");
        dir_ns.ip("link set d0 up");
        dir_ns.ip("link set lo up");
        for i in 0..ADDRESSES {
            reals_ns.ip(&format!("addr add {}/24 dev r0", real(i)));
        }
        reals_ns.ip("link set r0 up");
        reals_ns.ip("link set lo up");
        let servers = (0..SERVICES)
            .map(|s| {
                let bind = std::net::SocketAddr::from(([0, 0, 0, 0], 9000 + s as u16));
                if http {
                    http_server(&reals_ns, bind, 200, "ok")
                } else {
                    tcp_listener(&reals_ns, bind, |_, _, _| {})
                }
            })
            .collect();
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        rig::private_dir(&dir);
        HealthRig {
            dir_ns,
            _reals_ns: reals_ns,
            dir,
            _servers: servers,
        }
    }

    /// Runs the daemon on `text`; returns (CPU share of one core in user and in kernel
    /// mode, RSS bytes, checks per second) over the window.
    fn run(&self, text: &str, window: u64) -> ((f64, f64), u64, f64) {
        let config = self.dir.join("health.yaml");
        std::fs::write(&config, text).unwrap_or_else(|e| panic!("{}: {e}", config.display()));
        let (daemon, ready) = rig::start_daemon_with(
            &self.dir_ns,
            &config,
            Duration::from_secs(120),
            &["--on-exit", "detach"],
            &[],
        );
        assert!(ready, "xdpvs did not become ready: {:?}", daemon.stderr());
        let pid = daemon.pid();
        std::thread::sleep(Duration::from_secs(3));
        let (cpu0, checks0, t0) = (cpu_ticks(pid), self.checks(), Instant::now());
        std::thread::sleep(Duration::from_secs(window));
        let (cpu1, checks1, took) = (cpu_ticks(pid), self.checks(), t0.elapsed());
        let rss = super::control::status_kib(pid, "VmRSS:") * 1024;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let share = |a: u64, b: u64| (b - a) as f64 / hz / took.as_secs_f64();
        let share = (share(cpu0.0, cpu1.0), share(cpu0.1, cpu1.1));
        let rate = (checks1 - checks0) / took.as_secs_f64();
        let downs = daemon
            .stderr()
            .iter()
            .filter(|l| l.contains("is down"))
            .count();
        assert_eq!(
            downs,
            0,
            "reals went down in the benchmark: {:?}",
            daemon.stderr()
        );
        let (status, _, stderr) = daemon.stop();
        assert!(status.success(), "xdpvs exited with {status}: {stderr:?}");
        (share, rss, rate)
    }

    /// The baseline: threads in the director's namespace making the same 1,000
    /// connections a second (and for `http` the same request), blocking, nothing else;
    /// several, as the test servers accept in batches. Returns their (user, kernel) CPU
    /// share and their rate. On this rig the kernel share includes the reals' side of
    /// each connection, which veth runs on the sender's CPU.
    fn baseline(&self, http: bool, window: u64) -> ((f64, f64), f64) {
        const THREADS: usize = 50;
        let total = 1000 * window as usize;
        let start = Instant::now();
        let workers: Vec<_> = (0..THREADS)
            .map(|w| {
                self.dir_ns
                    .spawn(move || baseline_worker(w, THREADS, total, start, http))
            })
            .collect();
        let (mut user, mut system, mut done) = (0.0, 0.0, 0);
        for w in workers {
            let (u, s, n) = w.join().unwrap_or((0.0, 0.0, 0));
            user += u;
            system += s;
            done += n;
        }
        let took = start.elapsed().as_secs_f64();
        ((user / took, system / took), done as f64 / took)
    }

    /// Checks made so far, from the daemon's own counter.
    fn checks(&self) -> f64 {
        let text = http_get(&self.dir_ns, "127.0.0.1:9469", "/metrics").unwrap_or_default();
        rig::metric_values(&text, "xdpvs_real_checks_total", &[])
            .iter()
            .sum()
    }
}

impl Drop for HealthRig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One baseline thread: connections `w`, `w + step`, ... of `total`, each at its
/// millisecond; returns its user and kernel seconds and the connections it made.
fn baseline_worker(
    w: usize,
    step: usize,
    total: usize,
    start: Instant,
    http: bool,
) -> (f64, f64, usize) {
    use std::io::{Read as _, Write as _};
    let usage = || {
        // SAFETY: getrusage fills the struct it is given; RUSAGE_THREAD is this thread.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) };
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        (secs(u.ru_utime), secs(u.ru_stime))
    };
    let u0 = usage();
    let mut done = 0;
    let mut buf = [0u8; 512];
    for i in (w..total).step_by(step) {
        let due = start + Duration::from_millis(i as u64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let port = 9000 + ((i / ADDRESSES) % SERVICES) as u16;
        let at = std::net::SocketAddr::new(
            real(i % ADDRESSES)
                .parse()
                .unwrap_or_else(|e| panic!("{e}")),
            port,
        );
        let Ok(mut c) = std::net::TcpStream::connect_timeout(&at, Duration::from_secs(1)) else {
            continue;
        };
        if http {
            let _ = c.set_read_timeout(Some(Duration::from_secs(1)));
            let ok = c
                .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .is_ok();
            while ok && matches!(c.read(&mut buf), Ok(n) if n > 0) {}
        }
        done += 1;
    }
    let u1 = usage();
    (u1.0 - u0.0, u1.1 - u0.1, done)
}

/// (utime, stime) of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/stat: {e}"));
    // Fields after the command's closing parenthesis: state is field 3, utime 14.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    (
        f.get(11).copied().unwrap_or(0),
        f.get(12).copied().unwrap_or(0),
    )
}

/// Every health-check figure.
pub fn measure(quick: bool) -> Vec<Measured> {
    let window = if quick { 4 } else { WINDOW };
    let mut out = Vec::new();
    let reals = SERVICES * ADDRESSES;
    for (kind, check) in [
        ("tcp", "{type: tcp, interval: 1, timeout: 1}"),
        (
            "http",
            "{type: http, path: /health, interval: 1, timeout: 1}",
        ),
    ] {
        let rig = HealthRig::new(kind == "http");
        let (_, base_rss, _) = rig.run(&config(None), 2);
        let ((user, system), rss, rate) = rig.run(&config(Some(check)), window);
        let share = user + system;
        out.push(Measured {
            what: format!(
                "{reals} reals, `{kind}` check every second: daemon CPU (target ≤ 10% of one core)"
            ),
            value: format!(
                "{:.1}% ({}): {:.1}% user, {:.1}% kernel; {rate:.0} checks/s over {window} s",
                share * 100.0,
                if share <= 0.10 { "met" } else { "missed" },
                user * 100.0,
                system * 100.0,
            ),
        });
        let ((bu, bs), brate) = rig.baseline(kind == "http", window);
        out.push(Measured {
            what: format!(
                "baseline: blocking threads making the same {kind} connections"
            ),
            value: format!(
                "{:.1}%: {:.1}% user, {:.1}% kernel; {brate:.0} a second; the daemon costs {:.2}× it",
                (bu + bs) * 100.0,
                bu * 100.0,
                bs * 100.0,
                share / (bu + bs)
            ),
        });
        out.push(Measured {
            what: format!("{reals} reals, `{kind}` check: daemon resident memory"),
            value: format!(
                "{:.1} MiB ({:.1} MiB without checks)",
                rss as f64 / 1048576.0,
                base_rss as f64 / 1048576.0
            ),
        });
    }
    out
}
