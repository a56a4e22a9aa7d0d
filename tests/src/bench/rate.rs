//! Forwarding rate through a director, on a two-namespace rig:
//!
//! ```text
//!   gen: g0 192.0.2.2, reals 192.0.2.11-13     dir: d0 192.0.2.1
//!   bench_generator (live frames, XDP_TX) ───▶ director program on d0
//!   bench_sink on g0 (counts, drops)      ◀─── back out of d0 (XDP_TX or the stack)
//! ```
//! The generator makes frames in the kernel with BPF_PROG_TEST_RUN in live-frames mode:
//! 64-byte UDP frames to VIP 192.0.2.100:5001 from 4096 flows (256 sources in
//! 198.51.100.0/24 × 16 ports). The reals' addresses live on the generator's side, so
//! whatever the director sends to a real arrives at the sink. In the director's place, one
//! after the other: a MAC-swap reflector (the rig's ceiling), the xdpvs daemon (DR, then
//! NAT: the kernel's DNAT does the same rewrite), and the kernel's own L4 balancing
//! (nftables DNAT through a `jhash` map to the same reals).
//! veth runs the receiving side's NAPI where the frame was sent, so generator, director
//! and sink share the generator's CPU: a rate is the inverse of their summed per-frame cost.

use std::time::{Duration, Instant};

use aya::{
    Ebpf,
    maps::PerCpuArray,
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, xdp::XdpMode},
};
use lb_common::bench as abi;

use super::{Stat, map, pin_to_cpu, set_template, xdp};
use crate::{
    netns::{Netns, ifindex, unique_prefix},
    packet::{self, Ipv4},
    rig,
};

const GEN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
const DIR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x02];
/// Distinct flows the generator cycles through.
pub const FLOWS: u32 = 4096;
const VIP: &str = "192.0.2.100";
const PORT: u16 = 5001;
const REALS: [&str; 3] = ["192.0.2.11", "192.0.2.12", "192.0.2.13"];

/// Who stands in the director's place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Director {
    /// `bench_mac_swap` on d0: the fastest possible answer, the rig's ceiling.
    Reflector,
    /// `xdpvs daemon`, one DR service with `sh` over the three reals.
    XdpvsDr,
    /// `xdpvs daemon`, the same service under NAT (one arm, real port 6001): the
    /// destination rewritten, both entries made per flow.
    XdpvsNat,
    /// nftables DNAT in prerouting, `jhash` of source address and port mod 3 → real.
    NftablesDnat,
}

impl Director {
    pub fn label(self) -> &'static str {
        match self {
            Director::Reflector => "MAC-swap reflector (XDP_TX)",
            Director::XdpvsDr => "xdpvs DR (sh, 3 reals)",
            Director::XdpvsNat => "xdpvs NAT (sh, 3 reals, port 5001 → 6001)",
            Director::NftablesDnat => "nftables DNAT (jhash map, 3 reals)",
        }
    }
}

/// Frames forwarded per second through one director.
#[derive(Clone, Debug)]
pub struct Measured {
    pub director: Director,
    pub mpps: Stat,
    /// Frames the sink counted over frames generated, all rounds.
    pub delivered: f64,
}

const DR_CONFIG: &str = "\
director: {interfaces: [d0], xdp_mode: driver, hash_seed: 1}
services:
  - {name: bench, address: 192.0.2.100, port: 5001, protocol: udp, scheduler: sh,
     reals: [{address: 192.0.2.11}, {address: 192.0.2.12}, {address: 192.0.2.13}]}
";

const NAT_CONFIG: &str = "\
director: {interfaces: [d0], xdp_mode: driver, hash_seed: 1}
services:
  - {name: bench, address: 192.0.2.100, port: 5001, protocol: udp, scheduler: sh,
     forwarding: nat,
     reals: [{address: 192.0.2.11, port: 6001}, {address: 192.0.2.12, port: 6001},
             {address: 192.0.2.13, port: 6001}]}
";

fn nft_ruleset() -> String {
    let map = REALS
        .iter()
        .enumerate()
        .map(|(i, r)| format!("{i} : {r}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "table ip xdpvs_bench {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr {VIP} udp dport {PORT} dnat to jhash ip saddr . udp sport mod {} map {{ {map} }}
  }}
}}
",
        REALS.len()
    )
}

/// The two namespaces, the generator and the sink.
pub struct Rig {
    pub gen_ns: Netns,
    pub dir_ns: Netns,
    dir: std::path::PathBuf,
    /// The bench object in the generator's namespace: generator and sink programs.
    bench: Ebpf,
    g0: u32,
    /// The generator's template frame.
    frame: Vec<u8>,
}

impl Rig {
    pub fn new() -> Rig {
        crate::require_root();
        let prefix = unique_prefix();
        let gen_ns = Netns::create(&format!("{prefix}-gen"));
        let dir_ns = Netns::create(&format!("{prefix}-dir"));
        let mac = |m: [u8; 6]| m.map(|b| format!("{b:02x}")).join(":");
        gen_ns.ip(&format!(
            "link add g0 address {} type veth peer name d0 netns {} address {}",
            mac(GEN_MAC),
            dir_ns.name(),
            mac(DIR_MAC)
        ));
        gen_ns.ip("addr add 192.0.2.2/24 dev g0");
        for r in REALS {
            gen_ns.ip(&format!("addr add {r}/24 dev g0"));
        }
        gen_ns.ip("link set g0 up");
        dir_ns.ip("addr add 192.0.2.1/24 dev d0");
        dir_ns.ip("link set d0 up");
        dir_ns.ip("route add 198.51.100.0/24 via 192.0.2.2");
        for key in ["all", "default", "d0"] {
            dir_ns.sysctl(&format!("net/ipv4/conf/{key}/send_redirects"), "0");
        }
        let g0 = ifindex(&gen_ns, "g0");
        let mut bench = gen_ns.enter(|| {
            let mut bench = Ebpf::load(lb_userspace::BENCH_OBJECT)
                .unwrap_or_else(|e| panic!("loading the bench object: {e}"));
            for name in [abi::programs::GENERATOR, abi::programs::SINK] {
                xdp(&mut bench, name)
                    .load()
                    .unwrap_or_else(|e| panic!("loading {name}: {e}"));
            }
            xdp(&mut bench, abi::programs::SINK)
                .attach("g0", XdpMode::Driver)
                .unwrap_or_else(|e| panic!("attaching the sink to g0: {e}"));
            bench
        });
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        // The daemon's API socket goes here: a directory only root can write.
        crate::rig::private_dir(&dir);
        let ip = Ipv4::new([198, 51, 100, 0].into(), [192, 0, 2, 100].into(), 17);
        let frame = packet::ethernet(
            DIR_MAC,
            GEN_MAC,
            packet::ETH_P_IPV4,
            &ip.packet(&packet::udp(10000, PORT, &[0; 64 - 14 - 20 - 8])),
        );
        set_template(&mut bench, &frame, FLOWS);
        Rig {
            gen_ns,
            dir_ns,
            dir,
            bench,
            g0,
            frame,
        }
    }

    /// Writes a file in the rig's scratch directory; returns its path.
    pub fn write_file(&self, name: &str, text: &str) -> std::path::PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        path
    }

    /// Frames the sink has counted, all CPUs.
    pub fn sunk(&self) -> u64 {
        PerCpuArray::<_, u64>::try_from(map(&self.bench, abi::SINK_MAP))
            .and_then(|a| a.get(&0, 0))
            .map(|v| v.iter().sum())
            .unwrap_or_else(|e| panic!("reading the sink: {e}"))
    }

    /// Sends `frames` frames from g0 in live-frames mode, on `cpu`; returns the time the
    /// call took.
    fn generate(&self, frames: u32, cpu: usize) -> Duration {
        let frame = &self.frame;
        let ctx = packet::xdp_md(frame.len(), self.g0);
        let program: &Xdp = self
            .bench
            .program(abi::programs::GENERATOR)
            .and_then(|p| p.try_into().ok())
            .unwrap_or_else(|| panic!("no generator program"));
        self.gen_ns.enter(|| {
            pin_to_cpu(cpu);
            let start = Instant::now();
            program
                .test_run(TestRunOptions {
                    data_in: Some(frame),
                    ctx_in: Some(&ctx),
                    repeat: frames,
                    attrs: TestRunAttrs::new().xdp_live_frames(64),
                    ..TestRunOptions::default()
                })
                .unwrap_or_else(|e| panic!("live-frames generator: {e}"));
            start.elapsed()
        })
    }

    /// Rounds of `frames` frames through whatever stands in the director's place now.
    fn measure(&self, director: Director, rounds: usize, frames: u32, cpu: usize) -> Measured {
        // Warm up: neighbour entries, conntrack entries, caches.
        self.generate(frames / 4, cpu);
        std::thread::sleep(Duration::from_millis(50));
        let mut samples = Vec::with_capacity(rounds);
        let mut sent = 0u64;
        let mut delivered = 0u64;
        for _ in 0..rounds {
            let before = self.sunk();
            let took = self.generate(frames, cpu);
            // What is still in a ring when the call returns lands within microseconds.
            std::thread::sleep(Duration::from_millis(20));
            let n = self.sunk() - before;
            sent += u64::from(frames);
            delivered += n;
            samples.push(n as f64 / took.as_secs_f64() / 1e6);
        }
        Measured {
            director,
            mpps: Stat::of(&samples),
            delivered: delivered as f64 / sent as f64,
        }
    }

    /// Runs `director` in the director namespace and measures it.
    pub fn run(&self, director: Director, rounds: usize, frames: u32, cpu: usize) -> Measured {
        match director {
            Director::Reflector => {
                let _reflector = rig::attach_helper(&self.dir_ns, "d0", abi::programs::MAC_SWAP);
                self.measure(director, rounds, frames, cpu)
            }
            Director::XdpvsDr | Director::XdpvsNat => {
                let yaml = if director == Director::XdpvsDr {
                    DR_CONFIG
                } else {
                    NAT_CONFIG
                };
                let config = self.write_file("bench.yaml", yaml);
                // Each measurement starts afresh: the stop detaches and removes the pins.
                let (daemon, ready) = rig::start_daemon_with(
                    &self.dir_ns,
                    &config,
                    Duration::from_secs(20),
                    &["--on-exit", "detach"],
                    &[],
                );
                assert!(ready, "xdpvs did not become ready: {:?}", daemon.stderr());
                let m = self.measure(director, rounds, frames, cpu);
                let (status, _, stderr) = daemon.stop();
                assert!(status.success(), "xdpvs exited with {status}: {stderr:?}");
                m
            }
            Director::NftablesDnat => {
                // veth hands XDP_TX frames only to a peer that runs XDP: pass them on.
                let _pass = rig::attach_pass(&self.dir_ns, "d0");
                self.dir_ns.sysctl("net/ipv4/ip_forward", "1");
                let rules = self.write_file("dnat.nft", &nft_ruleset());
                let rules = rules.to_string_lossy().into_owned();
                self.dir_ns.exec("nft", &["-f", &rules]);
                let m = self.measure(director, rounds, frames, cpu);
                self.dir_ns
                    .exec("nft", &["delete", "table", "ip", "xdpvs_bench"]);
                self.dir_ns.sysctl("net/ipv4/ip_forward", "0");
                m
            }
        }
    }
}

impl Default for Rig {
    fn default() -> Self {
        Rig::new()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Measures every director in turn on `rig`.
pub fn measure(rig: &Rig, rounds: usize, frames: u32, cpu: usize) -> Vec<Measured> {
    [
        Director::Reflector,
        Director::XdpvsDr,
        Director::XdpvsNat,
        Director::NftablesDnat,
    ]
    .into_iter()
    .map(|d| rig.run(d, rounds, frames, cpu))
    .collect()
}
