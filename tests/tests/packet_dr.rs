//! The XDP program as the kernel runs it, packet by packet, through BPF_PROG_TEST_RUN:
//! crafted frames in, exact action and bytes out, and exactly one reason counter moved.
//!
//! The program runs in a private network namespace holding the director's interfaces
//! with fixed MAC addresses and permanent neighbour entries for the reals, so the
//! next hops the daemon's code reads (and `bpf_fib_lookup`, the fallback) are
//! deterministic and every output byte is known.

use std::{net::IpAddr, path::Path};

use lb_common::{
    NH_OFFLINK,
    conntrack::{Flow, FlowKeyV4, STATE_TCP_ESTABLISHED, Settings},
    event::Event,
    reason::Reason,
};
use lb_userspace::{
    config::{Config, Protocol},
    dataplane::{Dataplane, Snapshot},
    nexthop::{NextHop, Route},
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
            ns.veth(dev, mac, addr);
        }
        ns.ip("link set xc0 mtu 1280");
        // As the daemon does, for the next-hop fallback; the interfaces keep forwarding
        // off (the director is not a router).
        ns.sysctl("net/ipv4/conf/lo/forwarding", "1");
        ns.ip("route add blackhole 203.0.113.200/32");
        for (real, dev) in [
            ("192.0.2.11", "xa0"),
            ("192.0.2.12", "xa0"),
            ("192.0.2.13", "xa0"),
            ("192.0.2.14", "xa0"),
            ("198.51.100.21", "xb0"),
            ("203.0.113.31", "xc0"),
            ("203.0.113.141", "xd0"),
        ] {
            ns.permanent_neighbour(
                real,
                mac_of(real.parse().unwrap_or_else(|e| panic!("{e}"))),
                dev,
            );
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

    /// The plan for CONFIG with each real on the interface of its prefix (203.0.113.200
    /// has a blackhole route: the kernel finds no way to it).
    fn plan(&self) -> Plan {
        self.plan_of(CONFIG, None)
    }

    /// The plan for `yaml`, as a reload of `previous`.
    fn plan_of(&self, yaml: &str, previous: Option<&Plan>) -> Plan {
        let config =
            Config::parse(yaml, Path::new("packet_dr.yaml")).unwrap_or_else(|e| panic!("{e}"));
        plan::compile(
            &config,
            |a| {
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
            },
            previous,
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }
}

/// What the output frame must be.
enum Output {
    /// Byte for byte the input.
    Unchanged,
    /// The input with these destination and source MACs, and the TTL one lower (with
    /// the header checksum recomputed).
    Macs([u8; 6], [u8; 6]),
    /// An ICMP time exceeded (RFC 792) from the datagram's destination to its source,
    /// back to the sender's MAC, quoting the IP header and 8 bytes of payload.
    TimeExceeded,
}

impl Output {
    fn expected(&self, input: &[u8]) -> Vec<u8> {
        let mut f = input.to_vec();
        if let Output::TimeExceeded = self {
            let ihl = usize::from(f[14] & 0x0f) * 4;
            let mut icmp = vec![11, 0, 0, 0, 0, 0, 0, 0];
            icmp.extend_from_slice(&f[14..14 + ihl + 8]);
            let sum = packet::checksum(&icmp);
            icmp[2..4].copy_from_slice(&sum.to_be_bytes());
            let total = (20 + icmp.len()) as u16;
            let mut ip = vec![0x45, 0xc0 | (f[15] & 0x1e)];
            ip.extend_from_slice(&total.to_be_bytes());
            ip.extend_from_slice(&[0, 0, 0, 0, 64, 1, 0, 0]);
            ip.extend_from_slice(&f[30..34]);
            ip.extend_from_slice(&f[26..30]);
            let sum = packet::checksum(&ip);
            ip[10..12].copy_from_slice(&sum.to_be_bytes());
            ip.extend_from_slice(&icmp);
            let (dst, src) = (f[6..12].try_into().unwrap(), f[..6].try_into().unwrap());
            return packet::ethernet(dst, src, packet::ETH_P_IPV4, &ip);
        }
        if let Output::Macs(dst, src) = self {
            f[..6].copy_from_slice(dst);
            f[6..12].copy_from_slice(src);
            let ihl = usize::from(f[14] & 0x0f) * 4;
            f[14 + 8] -= 1;
            f[24..26].copy_from_slice(&[0, 0]);
            let sum = packet::checksum(&f[14..14 + ihl]);
            f[24..26].copy_from_slice(&sum.to_be_bytes());
        }
        f
    }
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
    // An address that shares a VIP's filter bit but is not one: whatever is wrong with
    // the frame, the kernel judges it (found by search; it never leaves the test run).
    let vip_bit = lb_common::vip_filter_bit(u32::from_ne_bytes([192, 0, 2, 100]));
    let twin = (1u32..)
        .map(|n| std::net::Ipv4Addr::from(n.wrapping_mul(2_654_435_761)))
        .find(|a| {
            lb_common::vip_filter_bit(u32::from_ne_bytes(a.octets())) == vip_bit
                && *a != std::net::Ipv4Addr::new(192, 0, 2, 100)
        })
        .unwrap_or_else(|| panic!("no address shares the filter bit"));
    let mut twin_frame = tcp_syn("127.0.0.1", "192.0.2.100", 80);
    twin_frame[30..34].copy_from_slice(&twin.octets());
    packet::reseal(&mut twin_frame[14..]);
    add(
        "a martian source to an address that only shares a vip's filter bit",
        twin_frame,
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
    let mut not_ours = tcp_syn("198.51.100.7", "192.0.2.1", 22);
    not_ours[14] = 0x44;
    add(
        "ihl below 5, not to a vip: not ours to judge",
        not_ours,
        XDP_PASS,
        Output::Unchanged,
        Reason::PassNotVip,
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

    // Fragments: the first is scheduled by its ports, later ones follow it.
    let mut first = ip("198.51.100.9", "192.0.2.100", 17);
    first.frag = 0x2000;
    add(
        "a first fragment is scheduled by its ports",
        frame(&first, &packet::udp(1, 53, &[0; 16])),
        XDP_TX,
        to_real(plan, "192.0.2.100", 53, Udp, "198.51.100.9"),
        Reason::ForwardTx,
    );
    let mut later = ip("198.51.100.9", "192.0.2.100", 17);
    later.frag = 0x0003;
    add(
        "a later fragment follows its first",
        frame(&later, &[0x5a; 40]),
        XDP_TX,
        to_real(plan, "192.0.2.100", 53, Udp, "198.51.100.9"),
        Reason::ForwardTx,
    );
    later.ttl = 1;
    add(
        "a later fragment whose ttl would expire: dropped, as the kernel answers only the first",
        frame(&later, &[0x5a; 40]),
        XDP_DROP,
        Output::Unchanged,
        Reason::DropTtlExceeded,
    );
    let mut orphan = ip("198.51.100.10", "192.0.2.100", 17);
    orphan.frag = 0x00b9;
    add(
        "a later fragment whose first was not seen",
        frame(&orphan, &[0x5a; 40]),
        XDP_DROP,
        Output::Unchanged,
        Reason::DropFragmentUnknown,
    );

    // ICMP errors about a tracked flow go to its real (the SYN from 198.51.100.7:40000
    // above made the entry); others are the director's.
    let icmp_error = |client_port: u16, kind: u8, code: u8| {
        let inner =
            ip("192.0.2.100", "198.51.100.7", 6).packet(&packet::tcp(80, client_port, 0x12));
        let mut icmp = vec![kind, code, 0, 0, 0, 0, 0x05, 0x00];
        icmp.extend_from_slice(&inner[..28]);
        let sum = packet::checksum(&icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        frame(&ip("203.0.113.254", "192.0.2.100", 1), &icmp)
    };
    add(
        "fragmentation needed about a tracked flow goes to its real",
        icmp_error(40000, 3, 4),
        XDP_TX,
        to_real(plan, "192.0.2.100", 80, Tcp, "198.51.100.7"),
        Reason::ForwardTx,
    );
    add(
        "time exceeded about a tracked flow goes to its real",
        icmp_error(40000, 11, 0),
        XDP_TX,
        to_real(plan, "192.0.2.100", 80, Tcp, "198.51.100.7"),
        Reason::ForwardTx,
    );
    add(
        "an icmp error about no known flow is the director's",
        icmp_error(40001, 3, 4),
        XDP_PASS,
        Output::Unchanged,
        Reason::PassIcmpNoFlow,
    );
    let mut cut = icmp_error(40000, 3, 4);
    cut.truncate(14 + 20 + 8 + 20);
    cut[16..18].copy_from_slice(&48u16.to_be_bytes());
    cut[24..26].copy_from_slice(&[0, 0]);
    let sum = packet::checksum(&cut[14..34]);
    cut[24..26].copy_from_slice(&sum.to_be_bytes());
    add(
        "an icmp error quoting no ports is the director's",
        cut,
        XDP_PASS,
        Output::Unchanged,
        Reason::PassIcmpNoFlow,
    );

    // What the kernel would refuse is not forwarded.
    let mut bad_sum = tcp_syn("198.51.100.7", "192.0.2.100", 80);
    bad_sum[24] ^= 0x40;
    add(
        "a bad ip header checksum",
        bad_sum,
        XDP_DROP,
        Output::Unchanged,
        Reason::DropIpChecksum,
    );
    for ttl in [0u8, 1] {
        let mut low = ip("198.51.100.7", "192.0.2.100", 6);
        low.ttl = ttl;
        add(
            "ttl would expire at the director: icmp time exceeded",
            frame(&low, &packet::tcp(40000, 80, 0x02)),
            XDP_TX,
            Output::TimeExceeded,
            Reason::TxIcmpTimeExceeded,
        );
    }
    let mut dscp = frame(
        &{
            let mut low = ip("198.51.100.7", "192.0.2.100", 6);
            low.ttl = 1;
            low
        },
        &packet::tcp(40000, 80, 0x02),
    );
    dscp[15] = 0xbb; // DSCP EF and ECN bits: the error keeps the TOS bits (0x1e) only
    packet::reseal(&mut dscp[14..]);
    add(
        "ttl expiring with a tos: icmp precedence plus the datagram's tos bits",
        dscp,
        XDP_TX,
        Output::TimeExceeded,
        Reason::TxIcmpTimeExceeded,
    );
    let mut low = ip("198.51.100.7", "192.0.2.100", 17);
    low.ttl = 1;
    low.options = vec![0x94, 0x04, 0, 0, 0x01, 0x01, 0x01, 0x00];
    add(
        "ttl expiring, ip options and ethernet padding: the quote has all the header",
        {
            let mut padded = frame(&low, &packet::udp(5353, 53, b"q"));
            padded.resize(64, 0);
            padded
        },
        XDP_TX,
        Output::TimeExceeded,
        Reason::TxIcmpTimeExceeded,
    );
    for src in [
        "127.0.0.1",
        "224.0.0.5",
        "0.0.0.0",
        "0.9.9.9",
        "255.255.255.255",
        "192.0.2.101",
    ] {
        add(
            "a martian source",
            tcp_syn(src, "192.0.2.100", 80),
            XDP_DROP,
            Output::Unchanged,
            Reason::DropMartianSource,
        );
    }
    for dst_mac in [
        [0x02, 0, 0, 0, 0, 0x99],
        [0xff; 6],
        [0x01, 0, 0x5e, 0, 0, 1],
    ] {
        let mut other = tcp_syn("198.51.100.7", "192.0.2.100", 80);
        other[..6].copy_from_slice(&dst_mac);
        add(
            "a frame for another host's mac (or broadcast)",
            other,
            XDP_DROP,
            Output::Unchanged,
            Reason::DropOtherHost,
        );
    }
    let mut in_padding = frame(&ip("198.51.100.7", "192.0.2.100", 17), &[]);
    in_padding.extend_from_slice(&packet::udp(5353, 53, b"")[..8]);
    in_padding.resize(60, 0);
    add(
        "a udp header only in the ethernet padding",
        in_padding,
        XDP_DROP,
        Output::Unchanged,
        Reason::DropL4Truncated,
    );

    // Ours but unusable: dropped and counted, never mis-sent.
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
        "a real behind an interface without forwarding is reached (not a router)",
        tcp_syn("198.51.100.7", "203.0.113.107", 80),
        XDP_REDIRECT,
        Output::Macs(
            mac_of("203.0.113.141".parse().unwrap_or_else(|e| panic!("{e}"))),
            [0x02, 0, 0, 0, 0, 0xd0],
        ),
        Reason::ForwardRedirect,
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

/// The program loaded (not attached) with the plan in its maps, next hops as the daemon
/// reads them (but none for 198.51.100.21, which takes the `bpf_fib_lookup` fallback)
/// and `xa0` as an attached interface. Call inside the director's namespace.
fn loaded(plan: &Plan) -> Dataplane {
    let mut dp = Dataplane::load(Default::default()).unwrap_or_else(|e| panic!("{e}"));
    let (mut hops, ifaces) = xdpvs_testbed::rig::resolve(plan, &["xa0"]);
    for r in plan.services.iter().flat_map(|s| &s.reals) {
        if r.address == IpAddr::from([198, 51, 100, 21]) {
            hops.remove(&r.index);
        }
    }
    dp.set_interfaces(&ifaces).unwrap_or_else(|e| panic!("{e}"));
    dp.set_settings(Settings {
        flood_rate: 0,
        frag_timeout: 30,
        icmp_rate: 1000,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    dp.apply(plan, &hops).unwrap_or_else(|e| panic!("{e}"));
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
            let (return_value, out) = run(&dp, director.xa0, &case.frame);
            let after = dp.snapshot(&plan).unwrap_or_else(|e| panic!("{e}"));
            let expected = case.output.expected(&case.frame);
            let moved: Vec<&str> = Reason::ALL
                .iter()
                .filter(|&&r| after.reason(r) != before.reason(r))
                .map(|r| r.name())
                .collect();
            let action = case.action;
            // A handshake counts (the passive health signal) only once forwarded: a
            // SYN dropped for want of a neighbour, a route or a real is not one the
            // real left unanswered.
            let syns = |s: &lb_userspace::dataplane::Snapshot| -> u64 {
                s.services.iter().map(|(c, _)| c.syns).sum()
            };
            let forwarded = matches!(case.reason, Reason::ForwardTx | Reason::ForwardRedirect);
            if syns(&after) > syns(&before) + u64::from(forwarded) {
                failures.push(format!(
                    "{}: {} SYNs counted for a frame not forwarded",
                    case.name,
                    syns(&after) - syns(&before)
                ));
            }
            if return_value != action
                || out != expected
                || moved != [case.reason.name()]
                || after.reason(case.reason) != before.reason(case.reason) + 1
            {
                failures.push(format!(
                    "{}: action {} (want {action}), reasons moved {moved:?} (want [{}]), \
                     output {}",
                    case.name,
                    return_value,
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
        // Ten runs, not `repeat`: a forwarded frame leaves addressed to the real, and the
        // program rightly refuses it as another host's if it is run again.
        for _ in 0..10 {
            let (action, _) = run(&dp, director.xa0, &frame);
            assert_eq!(action, XDP_TX);
        }
        let snap = dp.snapshot(&plan).unwrap_or_else(|e| panic!("{e}"));
        let service = &plan.services[0];
        let real = service
            .real_for(
                "198.51.100.7".parse().unwrap_or_else(|e| panic!("{e}")),
                service.address,
            )
            .unwrap_or_else(|| panic!("no real"));
        let (svc, reals) = &snap.services[0];
        // One flow: its first packet scheduled it; the other nine hit its entry.
        assert_eq!(
            (svc.packets, svc.bytes, svc.flows),
            (10, 10 * frame.len() as u64, 1)
        );
        for (r, c) in service.reals.iter().zip(reals) {
            let want = if r.index == real.index {
                (10, 1)
            } else {
                (0, 0)
            };
            assert_eq!((c.packets, c.flows), want, "real {}", r.address);
        }
        assert_eq!(snap.reason(Reason::ForwardTx), 10);
        // Nothing else was counted anywhere.
        let total: u64 = snap.reasons.iter().sum();
        assert_eq!(total, 10);
        // One miss made the entry; nine packets found it.
        assert_eq!(snap.event(Event::CtMiss), 1);
        assert_eq!(snap.event(Event::CtInsert), 1);
        assert_eq!(snap.event(Event::CtHit), 9);
    });
}

/// One BPF_PROG_TEST_RUN of `frame` arriving on `ingress`: the action and output frame.
fn run(dp: &Dataplane, ingress: u32, frame: &[u8]) -> (u32, Vec<u8>) {
    packet::run(dp.program(), frame, ingress)
}

/// The real a forwarded frame went to, by its destination MAC.
fn real_of(out: &[u8]) -> IpAddr {
    IpAddr::from([192, 0, 2, out[5]])
}

fn tcp_frame(client: &str, sport: u16, vip: &str, flags: u8) -> Vec<u8> {
    frame(&ip(client, vip, 6), &packet::tcp(sport, 80, flags))
}

fn key(client: [u8; 4], sport: u16) -> FlowKeyV4 {
    FlowKeyV4 {
        src: u32::from_ne_bytes(client),
        dst: u32::from_ne_bytes([192, 0, 2, 100]),
        sport: sport.to_be(),
        dport: 80u16.to_be(),
        proto: 6,
        _pad: [0; 3],
    }
}

/// The web service of CONFIG with these reals (last octets) and weights.
fn web(reals: &[(u8, u32)]) -> String {
    let list: Vec<String> = reals
        .iter()
        .map(|(o, w)| format!("{{address: 192.0.2.{o}, weight: {w}}}"))
        .collect();
    format!(
        "director: {{interfaces: [xa0], hash_seed: 11}}\nservices:\n  - {{address: 192.0.2.100, \
         port: 80, protocol: tcp, scheduler: sh, reals: [{}]}}\n",
        list.join(", ")
    )
}

fn delta(after: &Snapshot, before: &Snapshot, event: Event) -> u64 {
    after.event(event) - before.event(event)
}

#[test]
fn established_flows_keep_their_real_through_drain_reweight_and_removal_of_real_or_service() {
    let director = Director::new();
    director.ns.enter(|| {
        let plan = director.plan_of(&web(&[(11, 1), (12, 1), (13, 1)]), None);
        let mut dp = loaded(&plan);
        let _registered = register_rx_queue(&director);
        // Eight clients connect; each is on the real the table names.
        let clients: Vec<String> = (1..=8).map(|i| format!("198.51.100.{i}")).collect();
        let mut placed = Vec::new();
        for c in &clients {
            let (action, out) = run(&dp, director.xa0, &tcp_frame(c, 40000, "192.0.2.100", 0x02));
            assert_eq!(action, XDP_TX, "{c}");
            placed.push(real_of(&out));
        }
        let victim = placed[0];
        // Drain the first client's real, then re-weight the others, then add a real:
        // every established flow stays where it was.
        let drained: Vec<(u8, u32)> = [11u8, 12, 13]
            .iter()
            .map(|&o| {
                (
                    o,
                    if IpAddr::from([192, 0, 2, o]) == victim {
                        0
                    } else {
                        1
                    },
                )
            })
            .collect();
        let mut current = plan;
        for change in [
            web(&drained),
            web(&drained.iter().map(|&(o, w)| (o, w * 5)).collect::<Vec<_>>()),
            web(&[drained.clone(), vec![(14, 3)]].concat()),
        ] {
            let next = director.plan_of(&change, Some(&current));
            let hops = xdpvs_testbed::rig::resolve(&next, &[]).0;
            dp.apply(&next, &hops).unwrap_or_else(|e| panic!("{e}"));
            current = next;
            for (c, &was) in clients.iter().zip(&placed) {
                let (action, out) =
                    run(&dp, director.xa0, &tcp_frame(c, 40000, "192.0.2.100", 0x10));
                assert_eq!(action, XDP_TX, "{c} after {change}");
                assert_eq!(real_of(&out), was, "{c} moved after {change}");
            }
        }
        // A new connection from the first client avoids the drained real.
        let (_, out) = run(
            &dp,
            director.xa0,
            &tcp_frame(&clients[0], 40001, "192.0.2.100", 0x02),
        );
        assert_ne!(real_of(&out), victim, "a new flow went to the drained real");

        // Removing the real (expire_nodest_conn, the default): its flow's next packet is
        // dropped and the entry goes; the one after is scheduled afresh.
        let removed: Vec<(u8, u32)> = [drained.clone(), vec![(14, 3)]]
            .concat()
            .into_iter()
            .filter(|&(o, _)| IpAddr::from([192, 0, 2, o]) != victim)
            .collect();
        let next = director.plan_of(&web(&removed), Some(&current));
        let hops = xdpvs_testbed::rig::resolve(&next, &[]).0;
        dp.apply(&next, &hops).unwrap_or_else(|e| panic!("{e}"));
        let before = dp.snapshot(&next).unwrap_or_else(|e| panic!("{e}"));
        let ack = tcp_frame(&clients[0], 40000, "192.0.2.100", 0x10);
        assert_eq!(run(&dp, director.xa0, &ack).0, XDP_DROP);
        let after = dp.snapshot(&next).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            after.reason(Reason::DropRealRemoved) - before.reason(Reason::DropRealRemoved),
            1
        );
        assert_eq!(delta(&after, &before, Event::CtNodestExpired), 1);
        let (action, out) = run(&dp, director.xa0, &ack);
        assert_eq!(action, XDP_TX);
        assert_ne!(real_of(&out), victim);
        let after2 = dp.snapshot(&next).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(delta(&after2, &after, Event::CtMidstreamMiss), 1);
        // The others never noticed.
        for (c, &was) in clients.iter().zip(&placed).skip(1) {
            if was != victim {
                let (_, out) = run(&dp, director.xa0, &tcp_frame(c, 40000, "192.0.2.100", 0x10));
                assert_eq!(
                    real_of(&out),
                    was,
                    "{c} moved when another real was removed"
                );
            }
        }

        // Removing the whole service (the VIP keeps another): its flows' reals went with
        // it, so each flow's next packet is dropped and its entry deleted, and the one
        // after reaches the director's stack, which resets it, as with LVS.
        let other = web(&[(11, 1)]).replace("port: 80", "port: 81");
        let gone = director.plan_of(&other, Some(&next));
        let hops = xdpvs_testbed::rig::resolve(&gone, &[]).0;
        dp.apply(&gone, &hops).unwrap_or_else(|e| panic!("{e}"));
        let before = dp.snapshot(&gone).unwrap_or_else(|e| panic!("{e}"));
        let ack = tcp_frame(&clients[1], 40000, "192.0.2.100", 0x10);
        assert_eq!(run(&dp, director.xa0, &ack).0, XDP_DROP);
        assert_eq!(run(&dp, director.xa0, &ack).0, XDP_PASS);
        let after = dp.snapshot(&gone).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            after.reason(Reason::DropRealRemoved) - before.reason(Reason::DropRealRemoved),
            1
        );
        assert_eq!(
            after.reason(Reason::PassVipNoService) - before.reason(Reason::PassVipNoService),
            1
        );
        assert_eq!(delta(&after, &before, Event::CtNodestExpired), 1);
    });
}

#[test]
fn entries_expire_per_state_finished_tuples_are_reused_and_rate_limits_count() {
    let director = Director::new();
    director.ns.enter(|| {
        let plan = director.plan_of(&web(&[(11, 1), (12, 1), (13, 1)]), None);
        let mut dp = loaded(&plan);
        let _registered = register_rx_queue(&director);
        let snap = |dp: &Dataplane| dp.snapshot(&plan).unwrap_or_else(|e| panic!("{e}"));
        let c = "198.51.100.20";
        let k = key([198, 51, 100, 20], 41000);
        run(&dp, director.xa0, &tcp_frame(c, 41000, "192.0.2.100", 0x02));
        let syn = dp
            .flow(&k)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("no entry"));
        assert_eq!(syn.state, lb_common::conntrack::STATE_TCP_SYN);
        run(&dp, director.xa0, &tcp_frame(c, 41000, "192.0.2.100", 0x10));
        let est = dp
            .flow(&k)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("no entry"));
        assert_eq!(est.state, STATE_TCP_ESTABLISHED);

        // An established entry idle longer than tcp (900 s) is expired on look-up.
        for (state, idle, expired) in [
            (STATE_TCP_ESTABLISHED, 899, false),
            (STATE_TCP_ESTABLISHED, 901, true),
            (lb_common::conntrack::STATE_TCP_FIN, 119, false),
            (lb_common::conntrack::STATE_TCP_FIN, 121, true),
            (lb_common::conntrack::STATE_TCP_CLOSE, 11, true),
        ] {
            let aged = Flow {
                last_seen: est.last_seen.wrapping_sub(idle),
                state,
                ..est
            };
            dp.set_flow(&k, aged).unwrap_or_else(|e| panic!("{e}"));
            let before = snap(&dp);
            run(&dp, director.xa0, &tcp_frame(c, 41000, "192.0.2.100", 0x10));
            let after = snap(&dp);
            assert_eq!(
                delta(&after, &before, Event::CtExpired),
                u64::from(expired),
                "state {state} idle {idle}"
            );
            assert_eq!(delta(&after, &before, Event::CtHit), u64::from(!expired));
        }

        // A SYN on a finished tuple starts a new connection.
        run(&dp, director.xa0, &tcp_frame(c, 41000, "192.0.2.100", 0x11));
        let before = snap(&dp);
        run(&dp, director.xa0, &tcp_frame(c, 41000, "192.0.2.100", 0x02));
        assert_eq!(delta(&snap(&dp), &before, Event::CtReused), 1);

        // Flood guard: one insert a second on this CPU; the rest are forwarded, not kept.
        dp.set_settings(Settings {
            flood_rate: 1,
            frag_timeout: 30,
            icmp_rate: 1000,
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let before = snap(&dp);
        for port in 42000..42005 {
            let (action, _) = run(&dp, director.xa0, &tcp_frame(c, port, "192.0.2.100", 0x02));
            assert_eq!(action, XDP_TX);
        }
        let after = snap(&dp);
        let inserted = delta(&after, &before, Event::CtInsert);
        let refused = delta(&after, &before, Event::CtInsertRefused);
        assert_eq!(inserted + refused, 5);
        assert!(refused >= 3, "{inserted} inserted, {refused} refused");

        // ICMP time exceeded, one a second on this CPU, then none at all.
        let low_ttl = || {
            let mut low = ip(c, "192.0.2.100", 6);
            low.ttl = 1;
            frame(&low, &packet::tcp(43000, 80, 0x02))
        };
        for (rate, most) in [(1, 2), (0, 0)] {
            dp.set_settings(Settings {
                flood_rate: 0,
                frag_timeout: 30,
                icmp_rate: rate,
                ..Default::default()
            })
            .unwrap_or_else(|e| panic!("{e}"));
            let before = snap(&dp);
            for _ in 0..5 {
                run(&dp, director.xa0, &low_ttl());
            }
            let after = snap(&dp);
            let sent = after.reason(Reason::TxIcmpTimeExceeded)
                - before.reason(Reason::TxIcmpTimeExceeded);
            let dropped =
                after.reason(Reason::DropTtlExceeded) - before.reason(Reason::DropTtlExceeded);
            assert_eq!(sent + dropped, 5, "icmp_rate {rate}");
            assert!(sent <= most, "icmp_rate {rate}: {sent} sent");
            assert!(rate == 0 || sent >= 1, "icmp_rate {rate}: none sent");
        }
    });
}

#[test]
fn next_hop_states_and_the_fallback() {
    let director = Director::new();
    director.ns.enter(|| {
        let plan = director.plan();
        let mut dp = loaded(&plan);
        let _registered = register_rx_queue(&director);
        // 198.51.100.21 has no cached next hop: the fallback finds it, and is counted.
        let before = dp.snapshot(&plan).unwrap_or_else(|e| panic!("{e}"));
        let f = tcp_syn("198.51.100.7", "192.0.2.104", 80);
        assert_eq!(run(&dp, director.xa0, &f).0, XDP_REDIRECT);
        let after = dp.snapshot(&plan).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(delta(&after, &before, Event::NexthopFallback), 1);
        // Without forwarding on lo the fallback is refused, and that is counted too.
        director.ns.sysctl("net/ipv4/conf/lo/forwarding", "0");
        let f = tcp_syn("198.51.100.8", "192.0.2.104", 80);
        assert_eq!(run(&dp, director.xa0, &f).0, XDP_DROP);
        let after2 = dp.snapshot(&plan).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            after2.reason(Reason::DropForwardingOff) - after.reason(Reason::DropForwardingOff),
            1
        );
        // A real whose route now goes through a gateway is not sent to.
        let real = &plan.services[0].reals[0];
        dp.set_next_hop(
            real.index,
            real.value.generation,
            &NextHop {
                state: NH_OFFLINK,
                ..NextHop::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut hits = 0;
        for i in 1..=40u8 {
            let f = tcp_syn(&format!("203.0.113.{i}"), "192.0.2.100", 80);
            if run(&dp, director.xa0, &f).0 == XDP_DROP {
                hits += 1;
            }
        }
        let after3 = dp.snapshot(&plan).unwrap_or_else(|e| panic!("{e}"));
        assert!(hits > 0);
        assert_eq!(
            after3.reason(Reason::DropRealOfflink) - after2.reason(Reason::DropRealOfflink),
            hits
        );
    });
}

#[test]
fn the_object_has_every_map_the_abi_names_and_loads_at_other_sizes() {
    // Loading is itself the verifier test: a program the verifier rejects fails here.
    let limits = lb_userspace::config::Limits {
        max_services: 8,
        max_reals: 16,
        max_flows: 4096,
        max_fragments: 1024,
        max_persistent: 1024,
    };
    let dp = Dataplane::load(limits).unwrap_or_else(|e| panic!("{e}"));
    let plan = Plan::default();
    let snap = dp.snapshot(&plan).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(snap.reasons.len(), Reason::ALL.len());
}
