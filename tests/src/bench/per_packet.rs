//! Per-packet cost of the real program through BPF_PROG_TEST_RUN, next to two baselines
//! measured the same way in the same run.
//!
//! `repeat = N` runs a program N times on one buffer, so every program that could rewrite
//! the packet runs behind `bench_wrapper`: it writes the template back, varies the flow
//! when asked, and tail-calls the program under test. The wrapper's own cost is measured
//! in every round by pointing it at `bench_pass` with the same template, and taken off:
//! `cost = t(wrapper → target) − t(wrapper → pass) + t(pass)`.

use std::{net::IpAddr, path::Path};

use aya::{
    Ebpf,
    maps::{PerCpuArray, PerCpuValues, ProgramArray},
    programs::{ProgramFd, Xdp},
};
use lb_common::{
    bench as abi,
    conntrack::{Flow, FlowKeyV4, STATE_TCP_ESTABLISHED},
    maps::MAX_FLOWS,
};
use lb_userspace::{
    config::{Config, Limits},
    dataplane::Dataplane,
    nexthop::Route,
    plan::{self, Plan},
};

use super::{Stat, map_mut, pin_to_cpu, set_template, xdp};
use crate::{
    netns::{Netns, ifindex, unique_prefix},
    packet::{self, Ipv4},
};

pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// The director's MAC on `xa0` (clients and reals .11-.13) and on `xb0` (real .21).
pub const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa0];
pub const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb0];
/// The MAC clients' frames come from.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xcc];
/// The reals: address, the director's interface towards it, its MAC (permanent
/// neighbour entries).
pub const REALS: [(&str, &str, [u8; 6]); 4] = [
    ("192.0.2.11", "xa0", [0x02, 0, 0, 0, 0x02, 0x0b]),
    ("192.0.2.12", "xa0", [0x02, 0, 0, 0, 0x02, 0x0c]),
    ("192.0.2.13", "xa0", [0x02, 0, 0, 0, 0x02, 0x0d]),
    ("198.51.100.21", "xb0", [0x02, 0, 0, 0, 0x64, 0x15]),
];
/// Every frame is padded to this length (the classic small-packet size, without FCS).
pub const FRAME_LEN: usize = 64;

/// Packets a "new flow" row may send (calibration and timed runs both advance the flow
/// counter) before flows repeat: the template varies 2^24 flows.
pub const NEW_FLOW_PACKETS: u64 = 1 << 24;

/// The hashing services (DR, NAT, full-NAT): the part the differential run's model
/// knows. `&three` is defined here and used in [`SCHEDULERS`] too.
const HASHING: &str = "\
director: {interfaces: [xa0], hash_seed: 1}
services:
  - {address: 192.0.2.100, port: 80, protocol: tcp, scheduler: sh,
     reals: &three [{address: 192.0.2.11}, {address: 192.0.2.12}, {address: 192.0.2.13}]}
  - {address: 192.0.2.100, port: 53, protocol: udp, scheduler: sh,
     reals: [{address: 192.0.2.11}, {address: 192.0.2.12}, {address: 192.0.2.13}]}
  - {address: 192.0.2.101, port: 80, protocol: tcp, scheduler: sh,
     reals: [{address: 198.51.100.21}]}
  - {address: 192.0.2.102, port: 80, protocol: tcp, scheduler: sh, forwarding: nat,
     reals: [{address: 192.0.2.11, port: 8080}, {address: 192.0.2.12, port: 8080}]}
  - {address: 192.0.2.102, port: 53, protocol: udp, scheduler: sh, forwarding: fullnat,
     snat_pool: {addresses: [192.0.2.1, 198.51.100.1], ports: 40000-40255},
     reals: [{address: 192.0.2.13}]}
  - {address: 192.0.2.103, port: 80, protocol: tcp, scheduler: sh, forwarding: fullnat,
     snat_pool: {addresses: [192.0.2.1, 192.0.2.2, 192.0.2.3, 192.0.2.4, 192.0.2.5,
                 192.0.2.6, 192.0.2.7, 192.0.2.8, 198.51.100.201, 198.51.100.202,
                 198.51.100.203, 198.51.100.204, 198.51.100.205, 198.51.100.206,
                 198.51.100.207, 198.51.100.208]},
     reals: [{address: 192.0.2.11, port: 8080}]}
";

/// The services of the other schedulers, a first-packet row each ([`SCHEDULER_ROWS`]),
/// after [`HASHING`] in the rig's configuration.
const SCHEDULERS: &str =
    "  - {address: 192.0.2.110, port: 80, protocol: tcp, scheduler: rr, reals: *three}
  - {address: 192.0.2.111, port: 80, protocol: tcp, scheduler: wrr, reals: *three}
  - {address: 192.0.2.112, port: 80, protocol: tcp, scheduler: lc, reals: *three}
  - {address: 192.0.2.113, port: 80, protocol: tcp, scheduler: wlc, reals: *three}
  - {address: 192.0.2.114, port: 80, protocol: tcp, scheduler: sed, reals: *three}
  - {address: 192.0.2.115, port: 80, protocol: tcp, scheduler: nq, reals: *three}
  - {address: 192.0.2.116, port: 80, protocol: tcp, scheduler: dh, reals: *three}
  - {address: 192.0.2.117, port: 80, protocol: tcp, scheduler: mh, reals: *three}
  - {address: 192.0.2.118, port: 80, protocol: tcp, scheduler: sh,
     persistence: {timeout: 300}, reals: *three}
";

/// A first-packet row per scheduler (the `sh` row is the DR one above): each service of
/// SCHEDULERS, with its name.
const SCHEDULER_ROWS: [(&str, &str); 9] = [
    ("192.0.2.110", "first packet, rr, into a full table"),
    ("192.0.2.111", "first packet, wrr, into a full table"),
    (
        "192.0.2.112",
        "first packet, lc (3 reals compared), into a full table",
    ),
    (
        "192.0.2.113",
        "first packet, wlc (3 reals compared), into a full table",
    ),
    (
        "192.0.2.114",
        "first packet, sed (3 reals compared), into a full table",
    ),
    (
        "192.0.2.115",
        "first packet, nq (3 reals compared), into a full table",
    ),
    (
        "192.0.2.116",
        "first packet, dh (Maglev 4093), into a full table",
    ),
    (
        "192.0.2.117",
        "first packet, mh (Maglev 4093), into a full table",
    ),
    (
        "192.0.2.118",
        "first packet, sh with persistence (a template made), into a full table",
    ),
];

/// What a row runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// `bench_pass`, run directly: the XDP_PASS baseline.
    Pass,
    /// `bench_mac_swap` behind the wrapper: the XDP_TX baseline.
    MacSwap,
    /// The xdpvs program behind the wrapper.
    Xdpvs,
}

/// A target of issue 3: at most `ratio` times the baseline's cost.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Goal {
    pub baseline: Target,
    pub ratio: f64,
}

/// One path to measure.
pub struct Case {
    pub name: &'static str,
    pub target: Target,
    pub frame: Vec<u8>,
    /// 0: the same frame every time; otherwise a new flow per packet.
    pub flows: u32,
    /// The action the path must return.
    pub action: u32,
    pub goal: Option<Goal>,
    /// A NAT answer row: `frame` is built when the row runs, as the real's answer to
    /// this frame's flow (sent once first to open it). See [`Programs::prepare`].
    pub answer_to: Option<Vec<u8>>,
}

/// One measured path.
#[derive(Clone, Debug)]
pub struct Measured {
    pub name: &'static str,
    pub target: Target,
    pub goal: Option<Goal>,
    pub ns: Stat,
}

fn frame(src: &str, dst: &str, l4: Vec<u8>, proto: u8) -> Vec<u8> {
    let parse = |a: &str| a.parse().unwrap_or_else(|e| panic!("{a}: {e}"));
    let mut l4 = l4;
    let ip = Ipv4::new(parse(src), parse(dst), proto);
    l4.resize(FRAME_LEN - 14 - 20, 0);
    packet::ethernet(MAC_A, CLIENT_MAC, packet::ETH_P_IPV4, &ip.packet(&l4))
}

fn tcp(src: &str, dst: &str, dport: u16, flags: u8) -> Vec<u8> {
    frame(src, dst, packet::tcp(40000, dport, flags), 6)
}

/// The paths that exist today, with their baselines first.
/// A DR SYN to `vip`, a new flow every packet, into a full table; target ≤ 6× MAC swap.
fn first_packet(name: &'static str, vip: &str) -> Case {
    Case {
        name,
        target: Target::Xdpvs,
        frame: tcp("198.51.100.7", vip, 80, 0x02),
        flows: NEW_FLOW_PACKETS as u32,
        action: XDP_TX,
        goal: Some(Goal {
            baseline: Target::MacSwap,
            ratio: 6.0,
        }),
        answer_to: None,
    }
}

pub fn cases() -> Vec<Case> {
    let udp = frame(
        "198.51.100.7",
        "192.0.2.100",
        packet::udp(40000, 53, &[0; 8]),
        17,
    );
    let mut cases = vec![
        Case {
            name: "baseline: XDP_PASS program",
            target: Target::Pass,
            frame: tcp("198.51.100.7", "192.0.2.1", 22, 0x10),
            flows: 0,
            action: XDP_PASS,
            goal: None,
            answer_to: None,
        },
        Case {
            name: "baseline: MAC swap + XDP_TX",
            target: Target::MacSwap,
            frame: tcp("198.51.100.7", "192.0.2.100", 80, 0x10),
            flows: 0,
            action: XDP_TX,
            goal: None,
            answer_to: None,
        },
        Case {
            name: "not for a VIP → XDP_PASS",
            target: Target::Xdpvs,
            frame: tcp("198.51.100.7", "192.0.2.1", 22, 0x10),
            flows: 0,
            action: XDP_PASS,
            goal: Some(Goal {
                baseline: Target::Pass,
                ratio: 1.5,
            }),
            answer_to: None,
        },
        Case {
            name: "DR TCP, same flow every packet",
            target: Target::Xdpvs,
            frame: tcp("198.51.100.7", "192.0.2.100", 80, 0x10),
            flows: 0,
            action: XDP_TX,
            goal: Some(Goal {
                baseline: Target::MacSwap,
                ratio: 3.0,
            }),
            answer_to: None,
        },
        first_packet(
            "DR TCP SYN, new flow every packet, into a full table (1M entries)",
            "192.0.2.100",
        ),
        Case {
            name: "DR UDP, same flow every packet",
            target: Target::Xdpvs,
            frame: udp,
            flows: 0,
            action: XDP_TX,
            goal: None,
            answer_to: None,
        },
        Case {
            name: "DR TCP to a real on another interface → XDP_REDIRECT",
            target: Target::Xdpvs,
            frame: tcp("198.51.100.7", "192.0.2.101", 80, 0x10),
            flows: 0,
            action: XDP_REDIRECT,
            goal: None,
            answer_to: None,
        },
    ];
    cases.extend(
        SCHEDULER_ROWS
            .iter()
            .map(|&(vip, name)| first_packet(name, vip)),
    );
    cases.extend(nat_cases());
    cases
}

/// NAT and full-NAT rows (one arm: every real is behind `xa0`): each direction of an
/// established flow, and first packets (both entries; under full-NAT the source
/// allocation, from a 16-address pool that the table's size keeps below half full).
fn nat_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for (vip, established, reply, new_flow) in [
        (
            "192.0.2.102",
            "NAT TCP, established, client → real",
            "NAT TCP, established, real's answer → client",
            "NAT TCP SYN, new flow every packet, into a full table (1M entries)",
        ),
        (
            "192.0.2.103",
            "full-NAT TCP, established, client → real",
            "full-NAT TCP, established, real's answer → client",
            "full-NAT TCP SYN, new flow every packet, into a full table (1M entries)",
        ),
    ] {
        let goal = |ratio| {
            Some(Goal {
                baseline: Target::MacSwap,
                ratio,
            })
        };
        let forward = tcp("198.51.100.7", vip, 80, 0x10);
        cases.push(Case {
            name: established,
            target: Target::Xdpvs,
            frame: forward.clone(),
            flows: 0,
            action: XDP_TX,
            goal: goal(4.0),
            answer_to: None,
        });
        cases.push(Case {
            name: reply,
            target: Target::Xdpvs,
            frame: forward.clone(),
            flows: 0,
            action: XDP_TX,
            goal: goal(4.0),
            answer_to: Some(forward),
        });
        cases.push(Case {
            name: new_flow,
            target: Target::Xdpvs,
            frame: tcp("198.51.100.7", vip, 80, 0x02),
            flows: NEW_FLOW_PACKETS as u32,
            action: XDP_TX,
            goal: goal(7.0),
            answer_to: None,
        });
    }
    cases
}

/// The director's namespace: `xa0` 192.0.2.1/24 with reals .11-.13, `xb0`
/// 198.51.100.1/24 with real .21, all with permanent neighbour entries.
pub struct Director {
    pub ns: Netns,
    xa0: u32,
    xb0: u32,
}

impl Director {
    pub fn new() -> Director {
        let ns = Netns::create(&format!("{}-bench", unique_prefix()));
        for (dev, mac, addr) in [
            ("xa", MAC_A, "192.0.2.1/24"),
            ("xb", MAC_B, "198.51.100.1/24"),
        ] {
            ns.veth(dev, mac, addr);
            ns.sysctl(&format!("net/ipv4/conf/{dev}0/forwarding"), "1");
        }
        for (real, dev, mac) in REALS {
            ns.permanent_neighbour(real, mac, dev);
        }
        let xa0 = ifindex(&ns, "xa0");
        let xb0 = ifindex(&ns, "xb0");
        Director { ns, xa0, xb0 }
    }

    fn plan(&self) -> Plan {
        self.plan_from(&format!("{HASHING}{SCHEDULERS}"), None)
    }

    /// The plan of another configuration over the same reals, keeping `previous`'s
    /// indices (as a reload does).
    pub fn plan_from(&self, yaml: &str, previous: Option<&Plan>) -> Plan {
        let config = Config::parse(yaml, Path::new("bench.yaml")).unwrap_or_else(|e| panic!("{e}"));
        let (xa0, xb0) = (self.xa0, self.xb0);
        plan::compile(
            &config,
            |a| {
                let ifindex = match a {
                    IpAddr::V4(v4) if v4.octets()[..3] == [198, 51, 100] => xb0,
                    _ => xa0,
                };
                // The director's own addresses, which the SNAT pools use (apart from
                // 198.51.100.1, none is a client of the differential run's).
                let local = matches!(a, IpAddr::V4(v4)
                    if matches!(v4.octets(), [192, 0, 2, 1..=8] | [198, 51, 100, 1]
                        | [198, 51, 100, 201..=208]));
                Ok(Route {
                    ifindex,
                    gateway: None,
                    local,
                })
            },
            previous,
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Director {
    /// Index of `xa0`, where frames come in.
    pub fn xa0(&self) -> u32 {
        self.xa0
    }

    /// Index of `xb0`, towards real .21.
    pub fn xb0(&self) -> u32 {
        self.xb0
    }

    /// The hashing part of the director's configuration (the differential run's model
    /// knows only hashing schedulers).
    pub fn hashing_config(&self) -> &'static str {
        HASHING
    }
}

impl Default for Director {
    fn default() -> Self {
        Director::new()
    }
}

/// The loaded programs: xdpvs with the plan applied, and the bench object.
pub struct Programs {
    pub dataplane: Dataplane,
    pub plan: Plan,
    pub bench: Ebpf,
    /// `xa0`, named as the ingress interface in every run's `xdp_md`, so DR paths see
    /// the real's interface as their own and answer XDP_TX.
    ingress: u32,
    /// `bench_pass` on `xa0`: registers the XDP receive queue the runs name.
    _rx_queue: Ebpf,
    pass_fd: ProgramFd,
    mac_swap_fd: ProgramFd,
    xdpvs_fd: ProgramFd,
}

impl Programs {
    /// Loads everything; call on a thread inside the director's namespace.
    pub fn load(director: &Director) -> Programs {
        let plan = director.plan();
        let mut dataplane = Dataplane::load(Limits::default()).unwrap_or_else(|e| panic!("{e}"));
        let (hops, ifaces) = crate::rig::resolve(&plan, &["xa0"]);
        dataplane
            .set_interfaces(&ifaces)
            .unwrap_or_else(|e| panic!("{e}"));
        dataplane
            .apply(&plan, &hops)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut bench = aya::Ebpf::load(lb_userspace::BENCH_OBJECT)
            .unwrap_or_else(|e| panic!("loading the bench object: {e}"));
        let mut fd = |name: &str| {
            let program = xdp(&mut bench, name);
            program
                .load()
                .unwrap_or_else(|e| panic!("loading {name}: {e}"));
            program
                .fd()
                .and_then(|fd| fd.try_clone().map_err(Into::into))
                .unwrap_or_else(|e| panic!("{name}: {e}"))
        };
        let pass_fd = fd(abi::programs::PASS);
        let mac_swap_fd = fd(abi::programs::MAC_SWAP);
        fd(abi::programs::WRAPPER);
        let xdpvs_fd = dataplane
            .program()
            .fd()
            .and_then(|fd| fd.try_clone().map_err(Into::into))
            .unwrap_or_else(|e| panic!("xdpvs: {e}"));
        Programs {
            dataplane,
            plan,
            bench,
            ingress: director.xa0,
            _rx_queue: crate::rig::attach_pass(&director.ns, "xa0"),
            pass_fd,
            mac_swap_fd,
            xdpvs_fd,
        }
    }

    /// The row as it runs: for an answer row, its flow opened by one run of the client's
    /// frame and `frame` the real's answer to it, from the flow's entry (what the real
    /// sends back to the tuple the director gave it).
    pub fn prepare(&mut self, case: &Case) -> Case {
        let Some(forward) = &case.answer_to else {
            return Case {
                answer_to: None,
                frame: case.frame.clone(),
                ..*case
            };
        };
        let (action, _) = self.run_direct(Target::Xdpvs, forward);
        assert_eq!(action, case.action, "{}: opening the flow", case.name);
        let f = forward;
        let key = FlowKeyV4 {
            src: u32::from_ne_bytes([f[26], f[27], f[28], f[29]]),
            dst: u32::from_ne_bytes([f[30], f[31], f[32], f[33]]),
            sport: u16::from_ne_bytes([f[34], f[35]]),
            dport: u16::from_ne_bytes([f[36], f[37]]),
            proto: f[23],
            _pad: [0; 3],
        };
        let to = self
            .dataplane
            .flow(&key)
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("{}: no entry for the flow", case.name))
            .to;
        let mut l4 = packet::tcp(u16::from_be(to.dport), u16::from_be(to.sport), 0x10);
        l4.resize(FRAME_LEN - 14 - 20, 0);
        let ip = Ipv4::new(to.dst.to_ne_bytes().into(), to.src.to_ne_bytes().into(), 6);
        Case {
            answer_to: None,
            frame: packet::ethernet(MAC_A, REALS[0].2, packet::ETH_P_IPV4, &ip.packet(&l4)),
            ..*case
        }
    }

    /// Points the wrapper at `target` (`Pass` points it at `bench_pass`).
    fn set_target(&mut self, target: Target) {
        let fd = match target {
            Target::Pass => &self.pass_fd,
            Target::MacSwap => &self.mac_swap_fd,
            Target::Xdpvs => &self.xdpvs_fd,
        };
        ProgramArray::try_from(map_mut(&mut self.bench, abi::TARGET_MAP))
            .and_then(|mut targets| targets.set(0, fd, 0))
            .unwrap_or_else(|e| panic!("setting the wrapper's target: {e}"));
    }

    /// Installs the template and restarts the flow counter.
    pub fn set_template(&mut self, frame: &[u8], flows: u32) {
        set_template(&mut self.bench, frame, flows);
        self.reset_counter();
    }

    fn reset_counter(&mut self) {
        let cpus = aya::util::nr_cpus().unwrap_or_else(|(_, e)| panic!("{e}"));
        let zeros = PerCpuValues::try_from(vec![0u32; cpus]).unwrap_or_else(|e| panic!("{e}"));
        PerCpuArray::<_, u32>::try_from(map_mut(&mut self.bench, abi::COUNTER_MAP))
            .and_then(|mut counter| counter.set(0, zeros, 0))
            .unwrap_or_else(|e| panic!("resetting the counter: {e}"));
    }

    fn program(&self, name: &str) -> &Xdp {
        self.bench
            .program(name)
            .and_then(|p| p.try_into().ok())
            .unwrap_or_else(|| panic!("no XDP program {name}"))
    }

    /// One run of the target as it is (no wrapper): action and output frame.
    pub fn run_direct(&self, target: Target, frame: &[u8]) -> (u32, Vec<u8>) {
        let program = match target {
            Target::Pass => self.program(abi::programs::PASS),
            Target::MacSwap => self.program(abi::programs::MAC_SWAP),
            Target::Xdpvs => self.dataplane.program(),
        };
        packet::run(program, frame, self.ingress)
    }

    /// One run through the wrapper, pointed at `target`.
    pub fn run_wrapped(&mut self, target: Target, frame: &[u8]) -> (u32, Vec<u8>) {
        self.set_target(target);
        packet::run(self.program(abi::programs::WRAPPER), frame, self.ingress)
    }

    /// Nanoseconds per run of the bench program `name` (see `super::time_runs`).
    fn time(&self, name: &str, frame: &[u8], iterations: u32, expected: u32) -> f64 {
        let ctx = packet::xdp_md(frame.len(), self.ingress);
        super::time_runs(self.program(name), frame, Some(&ctx), iterations, expected)
    }

    /// Fills the connection table to its capacity with flows that are never sent (to
    /// 192.0.2.250, no VIP), a share from each CPU: with per-CPU LRU lists an insert takes
    /// an entry from its own CPU's list, so every list must be full for the next insert
    /// to evict, as in a director that has run for a while. Ends pinned to `cpu`.
    pub fn fill_flow_table(&mut self, cpu: usize) {
        let flow = Flow {
            state: STATE_TCP_ESTABLISHED,
            ..Flow::default()
        };
        let dataplane = &mut self.dataplane;
        super::fill_from_every_cpu(MAX_FLOWS, cpu, |n| {
            let key = FlowKeyV4 {
                src: n.to_be(),
                dst: u32::from_ne_bytes([192, 0, 2, 250]),
                sport: 1,
                dport: 80u16.to_be(),
                proto: 6,
                _pad: [0; 3],
            };
            dataplane
                .set_flow(&key, flow)
                .unwrap_or_else(|e| panic!("filling the table: {e}"));
        });
    }

    /// The number of times the xdpvs program forwarded a packet for any service.
    pub fn forwarded(&self) -> u64 {
        let snapshot = self
            .dataplane
            .snapshot(&self.plan)
            .unwrap_or_else(|e| panic!("{e}"));
        snapshot.services.iter().map(|(c, _)| c.packets).sum()
    }

    /// Reals of any service that forwarded at least one packet.
    pub fn reals_used(&self) -> usize {
        let snapshot = self
            .dataplane
            .snapshot(&self.plan)
            .unwrap_or_else(|e| panic!("{e}"));
        snapshot
            .services
            .iter()
            .flat_map(|(_, reals)| reals)
            .filter(|c| c.packets > 0)
            .count()
    }
}

/// Checks that one run through the wrapper equals one direct run (action and bytes) and
/// returns the action; both start from the template's first flow.
pub fn check_wrapper(programs: &mut Programs, case: &Case) -> u32 {
    programs.set_template(&case.frame, case.flows);
    let direct = programs.run_direct(case.target, &case.frame);
    programs.reset_counter();
    let wrapped = programs.run_wrapped(case.target, &case.frame);
    assert_eq!(
        wrapped, direct,
        "{}: the wrapper's run differs from a direct run",
        case.name
    );
    assert_eq!(
        direct.0, case.action,
        "{}: action {} instead of {}",
        case.name, direct.0, case.action
    );
    direct.0
}

/// Whether a new-flow row of `rounds` × `iterations` stays within distinct flows (each
/// round runs the wrapper twice: calibration and target; plus the check run).
pub fn fits_new_flows(rounds: usize, iterations: u32) -> bool {
    2 * rounds as u64 * u64::from(iterations) < NEW_FLOW_PACKETS
}

/// Measures every case: `rounds` rounds of `iterations` runs each, on `cpu`.
pub fn measure(rounds: usize, iterations: u32, cpu: usize) -> Vec<Measured> {
    assert!(
        fits_new_flows(rounds, iterations),
        "{rounds} rounds × {iterations} iterations would repeat flows in a new-flow row"
    );
    crate::require_root();
    let director = Director::new();
    director.ns.enter(|| {
        pin_to_cpu(cpu);
        let mut programs = Programs::load(&director);
        cases()
            .iter()
            .map(|case| measure_case(&mut programs, case, rounds, iterations, cpu))
            .collect()
    })
}

/// The template stays in place from `check_wrapper` on and the flow counter keeps
/// counting across rounds, so a "new flow" row never repeats a flow.
fn measure_case(
    programs: &mut Programs,
    case: &Case,
    rounds: usize,
    iterations: u32,
    cpu: usize,
) -> Measured {
    if case.target == Target::Xdpvs && case.flows != 0 {
        programs.fill_flow_table(cpu);
    }
    let case = &programs.prepare(case);
    check_wrapper(programs, case);
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let pass = programs.time(abi::programs::PASS, &case.frame, iterations, XDP_PASS);
        if case.target == Target::Pass {
            samples.push(pass);
            continue;
        }
        programs.set_target(Target::Pass);
        let wrapper = programs.time(abi::programs::WRAPPER, &case.frame, iterations, XDP_PASS);
        programs.set_target(case.target);
        let before = programs.forwarded();
        let target = programs.time(abi::programs::WRAPPER, &case.frame, iterations, case.action);
        if case.target == Target::Xdpvs && case.action != XDP_PASS {
            let forwarded = programs.forwarded() - before;
            assert_eq!(
                forwarded,
                u64::from(iterations),
                "{}: the program forwarded {forwarded} of {iterations} packets",
                case.name
            );
        }
        samples.push(target - wrapper + pass);
    }
    Measured {
        name: case.name,
        target: case.target,
        goal: case.goal,
        ns: Stat::of(&samples),
    }
}
