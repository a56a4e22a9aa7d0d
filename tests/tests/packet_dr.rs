//! The XDP program as the kernel runs it, packet by packet, through BPF_PROG_TEST_RUN:
//! crafted frames in, exact action and bytes out, and exactly one reason counter moved.
//!
//! The program runs in a private network namespace holding the director's interfaces
//! with fixed MAC addresses and permanent neighbour entries for the reals, so
//! `bpf_fib_lookup` answers deterministically and every output byte is known.

use std::{net::IpAddr, path::Path};

use aya::programs::{TestRun, TestRunOptions};
use lb_common::reason::Reason;
use lb_userspace::{
    config::{Config, Protocol},
    dataplane::Dataplane,
    neighbour::Route,
    plan::{self, Plan},
};
use xdpvs_testbed::{
    netns::{Netns, ifindex, unique_prefix},
    packet::{self, Ipv4},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

/// MAC of the director's interface `xa0` (where packets arrive) and of `xb0`/`xc0`.
const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa0];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb0];
const MAC_C: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc0];
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xcc];

/// The MAC the test gives to the neighbour with this address: 02:00:00:00:<c>:<d>.
fn mac_of(address: IpAddr) -> [u8; 6] {
    let IpAddr::V4(a) = address else {
        panic!("IPv4 only")
    };
    let o = a.octets();
    [0x02, 0, 0, 0, o[2], o[3]]
}

const CONFIG: &str = "\
director: {interfaces: [xa0], hash_seed: 11}
services:
  - {address: 192.0.2.100, port: 80, protocol: tcp, scheduler: sh,
     reals: [{address: 192.0.2.11, weight: 1}, {address: 192.0.2.12, weight: 2},
             {address: 192.0.2.13, weight: 3}]}
  - {address: 192.0.2.100, port: 53, protocol: udp, scheduler: sh,
     reals: [{address: 192.0.2.11}, {address: 192.0.2.12}, {address: 192.0.2.13}]}
  - {address: 192.0.2.101, port: 80, protocol: tcp, scheduler: dh,
     reals: [{address: 192.0.2.11}, {address: 192.0.2.12}, {address: 192.0.2.13}]}
  - {address: 192.0.2.102, port: 80, protocol: tcp, scheduler: sh,
     reals: [{address: 192.0.2.11, weight: 0}]}
  - {address: 192.0.2.103, port: 80, protocol: tcp, scheduler: sh,
     reals: [{address: 192.0.2.99}]}
  - {address: 192.0.2.104, port: 80, protocol: tcp, scheduler: sh,
     reals: [{address: 198.51.100.21}]}
  - {address: 203.0.113.105, port: 80, protocol: tcp, scheduler: sh,
     reals: [{address: 203.0.113.31}]}
  - {address: 203.0.113.106, port: 80, protocol: tcp, scheduler: sh,
     reals: [{address: 203.0.113.200}]}
  - {address: 203.0.113.107, port: 80, protocol: tcp, scheduler: sh,
     reals: [{address: 203.0.113.141}]}
";

/// The director's namespace for packet tests: `xa0` (192.0.2.1/24, where frames come
/// in), `xb0` (198.51.100.1/24, a second segment) and `xc0` (203.0.113.1/25, MTU 1280).
/// and `xd0` (203.0.113.129/25, forwarding left off). Reals .11-.13, 198.51.100.21,
/// 203.0.113.31 and 203.0.113.141 have permanent neighbour entries; 192.0.2.99 has none.
struct Director {
    ns: Netns,
    xa0: u32,
    xb0: u32,
    xc0: u32,
    xd0: u32,
}

impl Director {
    fn new() -> Director {
        xdpvs_testbed::require_root();
        let ns = Netns::create(&format!("{}-pkt", unique_prefix()));
        for (dev, mac, addr) in [
            ("xa", MAC_A, "192.0.2.1/24"),
            ("xb", MAC_B, "198.51.100.1/24"),
            ("xc", MAC_C, "203.0.113.1/25"),
            ("xd", [0x02, 0, 0, 0, 0, 0xd0], "203.0.113.129/25"),
        ] {
            let mac = mac.map(|b| format!("{b:02x}")).join(":");
            ns.ip(&format!(
                "link add {dev}0 address {mac} type veth peer name {dev}1"
            ));
            ns.ip(&format!("addr add {addr} dev {dev}0"));
            ns.ip(&format!("link set {dev}1 up"));
            ns.ip(&format!("link set {dev}0 up"));
        }
        ns.ip("link set xc0 mtu 1280");
        // As the daemon does for the reals' interfaces; xd0 is left off on purpose.
        for dev in ["xa0", "xb0", "xc0"] {
            ns.sysctl(&format!("net/ipv4/conf/{dev}/forwarding"), "1");
        }
        for (real, dev) in [
            ("192.0.2.11", "xa0"),
            ("192.0.2.12", "xa0"),
            ("192.0.2.13", "xa0"),
            ("198.51.100.21", "xb0"),
            ("203.0.113.31", "xc0"),
            ("203.0.113.141", "xd0"),
        ] {
            let mac = mac_of(real.parse().unwrap_or_else(|e| panic!("{e}")));
            let mac = mac.map(|b| format!("{b:02x}")).join(":");
            ns.ip(&format!(
                "neigh replace {real} lladdr {mac} dev {dev} nud permanent"
            ));
        }
        let [xa0, xb0, xc0, xd0] = ["xa0", "xb0", "xc0", "xd0"].map(|d| ifindex(&ns, d));
        Director {
            ns,
            xa0,
            xb0,
            xc0,
            xd0,
        }
    }

    /// The plan for CONFIG with each real on the interface of its prefix, but 203.0.113.200
    /// is given xc0 (forwarding on), whose /25 does not hold it: the kernel finds no route.
    fn plan(&self) -> Plan {
        let config =
            Config::parse(CONFIG, Path::new("packet_dr.yaml")).unwrap_or_else(|e| panic!("{e}"));
        plan::compile(&config, |a| {
            let IpAddr::V4(v4) = a else {
                panic!("IPv4 only")
            };
            let ifindex = match v4.octets()[..3] {
                [192, 0, 2] => self.xa0,
                [198, 51, 100] => self.xb0,
                [203, 0, 113] if v4.octets()[3] == 141 => self.xd0,
                _ => self.xc0,
            };
            Ok(Route {
                ifindex,
                gateway: None,
                local: false,
            })
        })
        .unwrap_or_else(|e| panic!("{e}"))
    }
}

/// What the output frame must be.
enum Output {
    /// Byte for byte the input.
    Unchanged,
    /// The input with these destination and source MACs.
    Macs([u8; 6], [u8; 6]),
}

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    action: u32,
    output: Output,
    reason: Reason,
}

fn ip(src: &str, dst: &str, proto: u8) -> Ipv4 {
    Ipv4::new(
        src.parse().unwrap_or_else(|e| panic!("{e}")),
        dst.parse().unwrap_or_else(|e| panic!("{e}")),
        proto,
    )
}

fn frame(ip: &Ipv4, l4: &[u8]) -> Vec<u8> {
    packet::ethernet(MAC_A, CLIENT_MAC, packet::ETH_P_IPV4, &ip.packet(l4))
}

fn tcp_syn(src: &str, dst: &str, dport: u16) -> Vec<u8> {
    frame(&ip(src, dst, 6), &packet::tcp(40000, dport, 0x02))
}

/// Expected MACs for a packet from `client` to the service (vip, port, proto).
fn to_real(plan: &Plan, vip: &str, port: u16, protocol: Protocol, client: &str) -> Output {
    let vip: IpAddr = vip.parse().unwrap_or_else(|e| panic!("{e}"));
    let client: IpAddr = client.parse().unwrap_or_else(|e| panic!("{e}"));
    let service = plan
        .service(vip, port, protocol)
        .unwrap_or_else(|| panic!("no service {vip}:{port}"));
    let real = service
        .real_for(client, vip)
        .unwrap_or_else(|| panic!("no real for {client}"));
    let src = if real.address.to_string().starts_with("198.51.100.") {
        MAC_B
    } else {
        MAC_A
    };
    Output::Macs(mac_of(real.address), src)
}

fn cases(plan: &Plan) -> Vec<Case> {
    use Protocol::{Tcp, Udp};
    let mut cases = Vec::new();
    let mut add = |name, frame, action, output, reason| {
        cases.push(Case {
            name,
            frame,
            action,
            output,
            reason,
        })
    };

    // Forwarded under direct routing: only the MACs change.
    for client in ["198.51.100.7", "198.51.100.8", "203.0.113.9", "192.0.2.200"] {
        add(
            "tcp syn to a virtual service",
            tcp_syn(client, "192.0.2.100", 80),
            XDP_TX,
            to_real(plan, "192.0.2.100", 80, Tcp, client),
            Reason::ForwardTx,
        );
    }
    add(
        "udp to a virtual service",
        frame(
            &ip("198.51.100.7", "192.0.2.100", 17),
            &packet::udp(5353, 53, b"query"),
        ),
        XDP_TX,
        to_real(plan, "192.0.2.100", 53, Udp, "198.51.100.7"),
        Reason::ForwardTx,
    );
    let mut with_options = ip("198.51.100.8", "192.0.2.100", 6);
    with_options.options = vec![0x94, 0x04, 0, 0, 0x01, 0x01, 0x01, 0x00]; // router alert, nops, end
    add(
        "ip options are skipped to find the ports",
        frame(&with_options, &packet::tcp(40000, 80, 0x10)),
        XDP_TX,
        to_real(plan, "192.0.2.100", 80, Tcp, "198.51.100.8"),
        Reason::ForwardTx,
    );
    let mut padded = frame(
        &ip("198.51.100.7", "192.0.2.100", 17),
        &packet::udp(5353, 53, b""),
    );
    padded.resize(60, 0);
    add(
        "ethernet padding after the datagram is allowed",
        padded,
        XDP_TX,
        to_real(plan, "192.0.2.100", 53, Udp, "198.51.100.7"),
        Reason::ForwardTx,
    );
    for client in ["198.51.100.7", "203.0.113.77"] {
        add(
            "dh hashes the destination: every client goes to one real",
            tcp_syn(client, "192.0.2.101", 80),
            XDP_TX,
            to_real(plan, "192.0.2.101", 80, Tcp, "198.51.100.1"),
            Reason::ForwardTx,
        );
    }
    add(
        "a real behind another interface is reached by redirect",
        tcp_syn("198.51.100.7", "192.0.2.104", 80),
        XDP_REDIRECT,
        Output::Macs(
            mac_of("198.51.100.21".parse().unwrap_or_else(|e| panic!("{e}"))),
            MAC_B,
        ),
        Reason::ForwardRedirect,
    );

    // Not for us: handed to the kernel untouched.
    add(
        "tcp to an address that is not a vip",
        tcp_syn("198.51.100.7", "192.0.2.1", 22),
        XDP_PASS,
        Output::Unchanged,
        Reason::PassNotVip,
    );
    let mut not_vip_fragment = ip("198.51.100.7", "192.0.2.1", 17);
    not_vip_fragment.frag = 0x2000;
    add(
        "a fragment to an address that is not a vip",
        frame(&not_vip_fragment, &packet::udp(1, 2, &[0; 16])),
        XDP_PASS,
        Output::Unchanged,
        Reason::PassNotVip,
    );
    add(
        "arp",
        packet::ethernet([0xff; 6], CLIENT_MAC, packet::ETH_P_ARP, &[0; 28]),
        XDP_PASS,
        Output::Unchanged,
        Reason::PassNotIpv4,
    );
    add(
        "ipv6",
        packet::ethernet(MAC_A, CLIENT_MAC, packet::ETH_P_IPV6, &[0x60; 60]),
        XDP_PASS,
        Output::Unchanged,
        Reason::PassNotIpv4,
    );
    for tpid in [packet::ETH_P_8021Q, packet::ETH_P_8021AD] {
        let mut tagged = vec![0x00, 0x64, 0x08, 0x00]; // VLAN 100, then IPv4
        tagged.extend_from_slice(
            &ip("198.51.100.7", "192.0.2.100", 6).packet(&packet::tcp(1, 80, 2)),
        );
        add(
            "vlan-tagged frames are left to the kernel",
            packet::ethernet(MAC_A, CLIENT_MAC, tpid, &tagged),
            XDP_PASS,
            Output::Unchanged,
            Reason::PassVlan,
        );
    }
    add(
        "icmp to a vip is answered by the director",
        frame(
            &ip("198.51.100.7", "192.0.2.100", 1),
            &[8, 0, 0xf7, 0xff, 0, 0, 0, 0],
        ),
        XDP_PASS,
        Output::Unchanged,
        Reason::PassVipOtherProto,
    );
    add(
        "tcp to a vip on a port without a service",
        tcp_syn("198.51.100.7", "192.0.2.100", 81),
        XDP_PASS,
        Output::Unchanged,
        Reason::PassVipNoService,
    );
    add(
        "udp to a vip on a tcp-only port",
        frame(
            &ip("198.51.100.7", "192.0.2.101", 17),
            &packet::udp(1, 80, b"x"),
        ),
        XDP_PASS,
        Output::Unchanged,
        Reason::PassVipNoService,
    );

    // Malformed IPv4: the kernel validates and drops it, so it is passed untouched.
    let good = tcp_syn("198.51.100.7", "192.0.2.100", 80);
    add(
        "ipv4 header cut short",
        good[..14 + 12].to_vec(),
        XDP_PASS,
        Output::Unchanged,
        Reason::PassIpMalformed,
    );
    let mut ihl4 = good.clone();
    ihl4[14] = 0x44;
    add(
        "ihl below 5",
        ihl4,
        XDP_PASS,
        Output::Unchanged,
        Reason::PassIpMalformed,
    );
    let mut v6_in_v4 = good.clone();
    v6_in_v4[14] = 0x65;
    add(
        "ip version not 4 under the ipv4 ethertype",
        v6_in_v4,
        XDP_PASS,
        Output::Unchanged,
        Reason::PassIpMalformed,
    );
    let mut long = good.clone();
    long[16..18].copy_from_slice(&1500u16.to_be_bytes());
    add(
        "total length beyond the frame",
        long,
        XDP_PASS,
        Output::Unchanged,
        Reason::PassIpMalformed,
    );
    let mut ihl15 = good.clone();
    ihl15[14] = 0x4f; // 60-byte header, longer than the 40-byte datagram
    add(
        "header length beyond the total length",
        ihl15,
        XDP_PASS,
        Output::Unchanged,
        Reason::PassIpMalformed,
    );

    // Ours but unusable: dropped and counted, never mis-sent.
    for (what, frag) in [("first fragment", 0x2000u16), ("later fragment", 0x00b9)] {
        let mut f = ip("198.51.100.7", "192.0.2.100", 17);
        f.frag = frag;
        add(
            what,
            frame(&f, &packet::udp(1, 53, &[0; 16])),
            XDP_DROP,
            Output::Unchanged,
            Reason::DropFragment,
        );
    }
    add(
        "tcp header cut short",
        frame(
            &ip("198.51.100.7", "192.0.2.100", 6),
            &packet::tcp(40000, 80, 2)[..12],
        ),
        XDP_DROP,
        Output::Unchanged,
        Reason::DropL4Truncated,
    );
    add(
        "udp header cut short",
        frame(&ip("198.51.100.7", "192.0.2.100", 17), &[0x13, 0x88, 0, 53]),
        XDP_DROP,
        Output::Unchanged,
        Reason::DropL4Truncated,
    );
    add(
        "every real has weight 0",
        tcp_syn("198.51.100.7", "192.0.2.102", 80),
        XDP_DROP,
        Output::Unchanged,
        Reason::DropNoReal,
    );
    add(
        "the real's mac is not resolved",
        tcp_syn("198.51.100.7", "192.0.2.103", 80),
        XDP_DROP,
        Output::Unchanged,
        Reason::DropNoNeighbour,
    );
    add(
        "no route to the real",
        tcp_syn("198.51.100.7", "203.0.113.106", 80),
        XDP_DROP,
        Output::Unchanged,
        Reason::DropNoRoute,
    );
    add(
        "forwarding is off on the interface towards the real",
        tcp_syn("198.51.100.7", "203.0.113.107", 80),
        XDP_DROP,
        Output::Unchanged,
        Reason::DropForwardingOff,
    );
    let segment = |len: usize| {
        let mut t = packet::tcp(40000, 80, 0x10);
        t.resize(len, 0x5a);
        t
    };
    let big = frame(&ip("198.51.100.7", "203.0.113.105", 6), &segment(1400));
    add(
        "larger than the mtu towards the real",
        big,
        XDP_DROP,
        Output::Unchanged,
        Reason::DropFragNeeded,
    );
    add(
        "within the mtu towards the same real",
        frame(&ip("198.51.100.7", "203.0.113.105", 6), &segment(1200)),
        XDP_REDIRECT,
        Output::Macs(
            mac_of("203.0.113.31".parse().unwrap_or_else(|e| panic!("{e}"))),
            MAC_C,
        ),
        Reason::ForwardRedirect,
    );
    cases
}

/// The program loaded (not attached) with the plan in its maps.
fn loaded(plan: &Plan) -> Dataplane {
    let mut dp = Dataplane::load(Default::default()).unwrap_or_else(|e| panic!("{e}"));
    dp.apply(plan).unwrap_or_else(|e| panic!("{e}"));
    dp
}

/// A test run with an ingress interface needs that interface's XDP receive queue
/// registered, which veth does once any XDP program is attached. `bench_pass` is used, not
/// the program under test, so stray traffic on the veth (IPv6 router solicitations, ...)
/// never reaches the counters the tests read.
fn register_rx_queue(director: &Director) -> aya::Ebpf {
    xdpvs_testbed::rig::attach_pass(&director.ns, "xa0")
}

#[test]
fn every_parse_branch_gives_its_action_bytes_and_reason() {
    let director = Director::new();
    let failures = director.ns.enter(|| {
        let plan = director.plan();
        let dp = loaded(&plan);
        let _registered = register_rx_queue(&director);
        let mut failures = Vec::new();
        for case in cases(&plan) {
            let before = dp.snapshot(&plan).unwrap_or_else(|e| panic!("{e}"));
            let mut out = vec![0u8; case.frame.len() + 256];
            let ctx = packet::xdp_md(case.frame.len(), director.xa0);
            let result = dp
                .program()
                .test_run(TestRunOptions {
                    data_in: Some(&case.frame),
                    data_out: Some(&mut out),
                    ctx_in: Some(&ctx),
                    ..Default::default()
                })
                .unwrap_or_else(|e| panic!("{}: test run failed: {e}", case.name));
            out.truncate(result.data_size_out as usize);
            let after = dp.snapshot(&plan).unwrap_or_else(|e| panic!("{e}"));
            let expected = match case.output {
                Output::Unchanged => case.frame.clone(),
                Output::Macs(dst, src) => {
                    let mut f = case.frame.clone();
                    f[..6].copy_from_slice(&dst);
                    f[6..12].copy_from_slice(&src);
                    f
                }
            };
            let moved: Vec<&str> = Reason::ALL
                .iter()
                .filter(|&&r| after.reason(r) != before.reason(r))
                .map(|r| r.name())
                .collect();
            let action = case.action;
            if result.return_value != action
                || out != expected
                || moved != [case.reason.name()]
                || after.reason(case.reason) != before.reason(case.reason) + 1
            {
                failures.push(format!(
                    "{}: action {} (want {action}), reasons moved {moved:?} (want [{}]), \
                     output {}",
                    case.name,
                    result.return_value,
                    case.reason.name(),
                    if out == expected {
                        "as expected".into()
                    } else {
                        format!("{out:02x?}\n  want {expected:02x?}")
                    }
                ));
            }
        }
        failures
    });
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn forwarded_packets_are_counted_per_service_and_real() {
    let director = Director::new();
    director.ns.enter(|| {
        let plan = director.plan();
        let dp = loaded(&plan);
        let _registered = register_rx_queue(&director);
        let frame = tcp_syn("198.51.100.7", "192.0.2.100", 80);
        let ctx = packet::xdp_md(frame.len(), director.xa0);
        let result = dp
            .program()
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                ctx_in: Some(&ctx),
                repeat: 10,
                ..Default::default()
            })
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(result.return_value, XDP_TX);
        let snap = dp.snapshot(&plan).unwrap_or_else(|e| panic!("{e}"));
        let service = &plan.services[0];
        let real = service
            .real_for(
                "198.51.100.7".parse().unwrap_or_else(|e| panic!("{e}")),
                service.address,
            )
            .unwrap_or_else(|| panic!("no real"));
        let (svc, reals) = &snap.services[0];
        assert_eq!((svc.packets, svc.bytes), (10, 10 * frame.len() as u64));
        for (r, c) in service.reals.iter().zip(reals) {
            let want = if r.index == real.index { 10 } else { 0 };
            assert_eq!(c.packets, want, "real {}", r.address);
        }
        assert_eq!(snap.reason(Reason::ForwardTx), 10);
        // Nothing else was counted anywhere.
        let total: u64 = snap.reasons.iter().sum();
        assert_eq!(total, 10);
    });
}

#[test]
fn the_object_has_every_map_the_abi_names_and_loads_at_other_sizes() {
    // Loading is itself the verifier test: a program the verifier rejects fails here.
    let limits = lb_userspace::config::Limits {
        max_services: 8,
        max_reals: 16,
    };
    let dp = Dataplane::load(limits).unwrap_or_else(|e| panic!("{e}"));
    let plan = Plan::default();
    let snap = dp.snapshot(&plan).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(snap.reasons.len(), Reason::ALL.len());
}
