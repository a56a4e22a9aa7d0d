//! Control-plane costs: building scheduling tables, writing configurations of 1k and 10k
//! services into the maps, and the daemon's memory at those sizes.

use std::{
    fmt::Write as _,
    net::IpAddr,
    path::Path,
    time::{Duration, Instant},
};

use lb_userspace::{
    config::Config,
    dataplane::Dataplane,
    nexthop::Route,
    plan,
    scheduler::{self, Member},
};

use super::{Stat, rate::Rig};
use crate::rig;

/// One control-plane figure.
#[derive(Clone, Debug)]
pub struct Measured {
    pub what: String,
    pub size: String,
    pub value: String,
}

/// Milliseconds to build a Maglev table of `size` positions for `reals` reals of weight
/// 1..=4, over `rounds` builds.
pub fn table_build_ms(reals: usize, size: u32, rounds: usize) -> Stat {
    let members: Vec<Member> = (0..reals)
        .map(|i| Member {
            address: IpAddr::from(std::net::Ipv6Addr::new(
                0x2001, 0xdb8, 0, 0, 0, 0, 0, i as u16,
            )),
            port: 80,
            weight: 1 + (i % 4) as u32,
        })
        .collect();
    let samples: Vec<f64> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            let table = scheduler::maglev(&members, size, 1);
            let ms = start.elapsed().as_secs_f64() * 1e3;
            assert_eq!(table.len(), size as usize);
            ms
        })
        .collect();
    Stat::of(&samples)
}

/// A configuration of `services` UDP services on VIP 192.0.2.100 (ports 10000 up), each
/// over the three reals of the rate rig, on interface d0.
pub fn config_text(services: usize) -> String {
    let mut y = format!(
        "director: {{interfaces: [d0], xdp_mode: driver, hash_seed: 1}}\n\
         limits: {{max_services: {services}, max_reals: {}}}\nservices:\n",
        services * 3
    );
    for i in 0..services {
        let _ = writeln!(
            y,
            "  - {{address: 192.0.2.100, port: {}, protocol: udp, scheduler: sh, \
             reals: [{{address: 192.0.2.11}}, {{address: 192.0.2.12}}, {{address: 192.0.2.13}}]}}",
            10000 + i
        );
    }
    y
}

/// Seconds for each step of putting `services` services into fresh maps: parse the
/// YAML, compile the plan (scheduling tables), create the maps and load the program,
/// write the plan.
pub fn apply_steps(services: usize) -> [(&'static str, f64); 4] {
    let text = config_text(services);
    let t = Instant::now();
    let config = Config::parse(&text, Path::new("bench.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let parse = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let plan = plan::compile(
        &config,
        |_| {
            Ok(Route {
                ifindex: 1,
                gateway: None,
                local: false,
            })
        },
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let compile = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut dataplane = Dataplane::load(config.limits).unwrap_or_else(|e| panic!("{e}"));
    let load = t.elapsed().as_secs_f64();
    let t = Instant::now();
    dataplane
        .apply(&plan, &Default::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let apply = t.elapsed().as_secs_f64();
    [
        ("parse YAML", parse),
        ("compile plan (tables)", compile),
        ("create maps, load program", load),
        ("write maps", apply),
    ]
}

/// The daemon with `services` services on the rate rig's director: time to ready, and its
/// memory once ready (resident set, and the kernel memory of its BPF maps).
pub fn daemon_footprint(rig: &Rig, services: usize) -> (f64, u64, u64) {
    let config = rig.write_file(&format!("services-{services}.yaml"), &config_text(services));
    let start = Instant::now();
    // A fresh start each time: the stop detaches and removes the pins.
    let (daemon, ready) = rig::start_daemon_with(
        &rig.dir_ns,
        &config,
        Duration::from_secs(600),
        &["--on-exit", "detach"],
        &[],
    );
    let took = start.elapsed().as_secs_f64();
    assert!(ready, "xdpvs did not become ready: {:?}", daemon.stderr());
    let pid = daemon.pid();
    let rss_kib = status_kib(pid, "VmRSS:");
    let maps = bpf_map_bytes(pid);
    let (status, _, stderr) = daemon.stop();
    assert!(status.success(), "xdpvs exited with {status}: {stderr:?}");
    (took, rss_kib * 1024, maps)
}

/// The daemon is started through `ip netns exec`, which execs it: the pid is the daemon's.
pub(crate) fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Sum of `memlock` over the BPF maps the process holds (the kernel's accounting), and
/// over the scheduling tables (held by the table of tables, not by a descriptor).
fn bpf_map_bytes(pid: u32) -> u64 {
    let dir = format!("/proc/{pid}/fdinfo");
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir}: {e}"));
    let held: u64 = entries
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|info| memlock(&info))
        .sum();
    let tables: u64 = aya::maps::loaded_maps()
        .filter_map(Result::ok)
        .filter(|m| m.name_as_str() == Some("xdpvs_table"))
        .filter_map(|m| {
            let fd = m.fd().ok()?;
            let raw = std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(&fd));
            memlock(&std::fs::read_to_string(format!("/proc/self/fdinfo/{raw}")).ok()?)
        })
        .sum();
    held + tables
}

fn memlock(fdinfo: &str) -> Option<u64> {
    if !fdinfo.contains("map_type:") {
        return None;
    }
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// Every control-plane figure; `sizes` are the service counts.
pub fn measure(rig: &Rig, sizes: &[usize]) -> Vec<Measured> {
    let mut out = Vec::new();
    for (size, reals) in [(65537, 10), (65537, 100), (65537, 1000), (4093, 10)] {
        let s = table_build_ms(reals, size, 5);
        out.push(Measured {
            what: format!("build one Maglev table (M = {size}; target 65537: ≤ 2 ms)"),
            size: format!("{reals} reals"),
            value: format!("{:.3} ms (min {:.3})", s.median, s.min),
        });
    }
    for &services in sizes {
        for (step, secs) in apply_steps(services) {
            out.push(Measured {
                what: step.into(),
                size: format!("{services} services"),
                value: format!("{:.1} ms", secs * 1e3),
            });
        }
        let (ready, rss, maps) = daemon_footprint(rig, services);
        out.push(Measured {
            what: "daemon: start to ready (incl. ≤3 s neighbour wait)".into(),
            size: format!("{services} services"),
            value: format!("{ready:.2} s"),
        });
        out.push(Measured {
            what: "daemon: resident memory / BPF map memory".into(),
            size: format!("{services} services"),
            value: format!("{:.1} MiB / {:.1} MiB", mib(rss), mib(maps)),
        });
    }
    out
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
