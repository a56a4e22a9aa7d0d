//! NAT and full-NAT as the kernel runs the program: crafted frames through
//! BPF_PROG_TEST_RUN in both directions, exact output bytes built here from scratch, and
//! every checksum of every output verified by this file's own RFC 1071 code (the test
//! crate's `packet::checksum`), which shares nothing with the program's incremental
//! updates.
//!
//! The director's namespace has `xa0` (192.0.2.1/24, clients' side; clients are
//! 203.0.113.0/24 behind the router whose MAC is `ROUTER_MAC`) and `xb0`
//! (198.51.100.1/24 and .2, the reals' side and the SNAT pool). Real 198.51.100.11 and
//! .12 sit behind `xb0` (two-arm), 192.0.2.21 behind `xa0` (one-arm).

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use lb_common::{
    conntrack::{
        FLOW_F_NAT, FLOW_F_REPLY, FlowKeyV4, STATE_TCP_ESTABLISHED, STATE_TCP_FIN, STATE_TCP_SYN,
        Settings,
    },
    event::Event,
    hash::addr_hash,
    reason::Reason,
};
use lb_userspace::{
    config::Config,
    dataplane::Dataplane,
    nexthop::Route,
    plan::{self, Plan},
};
use xdpvs_testbed::{
    bench::per_packet::{MAC_A, MAC_B},
    model::{XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX},
    netns::{Netns, ifindex, unique_prefix},
    packet::{self, Ipv4},
};

/// The router before the director, which every client frame comes from.
const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;

const CONFIG: &str = "\
director:
  interfaces: [xa0, xb0]
  hash_seed: 7
  snat_pool: {addresses: [198.51.100.1, 198.51.100.2]}
services:
  - {address: 192.0.2.100, port: 80, protocol: tcp, scheduler: sh, forwarding: nat,
     reals: [{address: 198.51.100.11, port: 8080}]}
  - {address: 192.0.2.100, port: 53, protocol: udp, scheduler: sh, forwarding: nat,
     reals: [{address: 198.51.100.11, port: 5353}]}
  - {address: 192.0.2.101, port: 80, protocol: tcp, scheduler: sh, forwarding: nat,
     reals: [{address: 192.0.2.21}]}
  - {address: 192.0.2.104, port: 80, protocol: tcp, scheduler: sh, forwarding: nat,
     reals: [{address: 198.51.100.11, port: 8080}]}
  - {address: 192.0.2.102, port: 80, protocol: tcp, scheduler: sh, forwarding: fullnat,
     reals: [{address: 198.51.100.12, port: 8080}]}
  - {address: 192.0.2.103, port: 53, protocol: udp, scheduler: sh, forwarding: fullnat,
     snat_pool: {addresses: [198.51.100.2], ports: 5000-5001},
     reals: [{address: 198.51.100.12}]}
";

fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// The MAC the test gives the neighbour with this address: 02:00:00:00:<c>:<d>.
fn mac_of(a: Ipv4Addr) -> [u8; 6] {
    let o = a.octets();
    [0x02, 0, 0, 0, o[2], o[3]]
}

struct Director {
    ns: Netns,
    xa0: u32,
    xb0: u32,
}

impl Director {
    fn new() -> Director {
        xdpvs_testbed::require_root();
        let ns = Netns::create(&format!("{}-nat", unique_prefix()));
        for (dev, mac, addr) in [
            ("xa", MAC_A, "192.0.2.1/24"),
            ("xb", MAC_B, "198.51.100.1/24"),
        ] {
            ns.veth(dev, mac, addr);
        }
        ns.ip("addr add 198.51.100.2/24 dev xb0");
        ns.sysctl("net/ipv4/conf/lo/forwarding", "1");
        for (real, dev) in [
            ("198.51.100.11", "xb0"),
            ("198.51.100.12", "xb0"),
            ("192.0.2.21", "xa0"),
        ] {
            ns.permanent_neighbour(real, mac_of(v4(real)), dev);
        }
        let (xa0, xb0) = (ifindex(&ns, "xa0"), ifindex(&ns, "xb0"));
        Director { ns, xa0, xb0 }
    }

    fn plan(&self) -> Plan {
        let config =
            Config::parse(CONFIG, Path::new("packet_nat.yaml")).unwrap_or_else(|e| panic!("{e}"));
        let (xa0, xb0) = (self.xa0, self.xb0);
        plan::compile(
            &config,
            |a| {
                let IpAddr::V4(a) = a else {
                    panic!("IPv4 only")
                };
                let o = a.octets();
                Ok(Route {
                    ifindex: if o[..3] == [198, 51, 100] { xb0 } else { xa0 },
                    gateway: None,
                    local: o == [198, 51, 100, 1] || o == [198, 51, 100, 2],
                })
            },
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }
}

/// The program with the plan applied and both interfaces known; call in the namespace.
fn loaded(plan: &Plan) -> Dataplane {
    let mut dp = Dataplane::load(Default::default()).unwrap_or_else(|e| panic!("{e}"));
    let (hops, ifaces) = xdpvs_testbed::rig::resolve(plan, &["xa0", "xb0"]);
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

/// Runs `f` with the program loaded in a fresh director namespace.
fn with_director(f: impl FnOnce(&Director, &Plan, &mut Dataplane) + Send) {
    let director = Director::new();
    director.ns.enter(|| {
        let plan = director.plan();
        let mut dp = loaded(&plan);
        // Test runs name an ingress interface, whose XDP receive queue must exist.
        let _a = xdpvs_testbed::rig::attach_pass(&director.ns, "xa0");
        let _b = xdpvs_testbed::rig::attach_pass(&director.ns, "xb0");
        f(&director, &plan, &mut dp);
    });
}

/// Forwarded out of the other interface / out of the one it came in by.
const REDIRECTED: (u32, Reason) = (XDP_REDIRECT, Reason::ForwardRedirect);
const TXED: (u32, Reason) = (XDP_TX, Reason::ForwardTx);

/// A TCP segment (flags) or a UDP datagram ("a query"), checksummed, between two
/// addresses and ports.
struct Pkt {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    sport: u16,
    dport: u16,
    flags: u8,
}

fn pkt(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, sport: u16, dport: u16, flags: u8) -> Pkt {
    Pkt {
        src,
        dst,
        proto,
        sport,
        dport,
        flags,
    }
}

impl Pkt {
    fn frame(&self, dmac: [u8; 6], smac: [u8; 6], ttl: u8) -> Vec<u8> {
        let seg = l4(
            self.src, self.dst, self.proto, self.sport, self.dport, self.flags,
        );
        frame(dmac, smac, self.src, self.dst, self.proto, ttl, &seg)
    }

    /// As its sender sends it (TTL 64).
    fn sent(&self, dmac: [u8; 6], smac: [u8; 6]) -> Vec<u8> {
        self.frame(dmac, smac, 64)
    }

    /// As the director forwards it (TTL 63).
    fn forwarded(&self, dmac: [u8; 6], smac: [u8; 6]) -> Vec<u8> {
        self.frame(dmac, smac, 63)
    }
}

/// A TCP segment or UDP datagram with a correct checksum over the pseudo-header.
fn l4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut seg = if proto == TCP {
        packet::tcp(sport, dport, flags)
    } else {
        packet::udp(sport, dport, b"a query")
    };
    let at = if proto == TCP { 16 } else { 6 };
    let sum = l4_sum(src, dst, proto, &seg);
    let sum = if proto == UDP && sum == 0 {
        0xffff
    } else {
        sum
    };
    seg[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    seg
}

/// RFC 793/768 checksum over the pseudo-header and the segment as it stands.
fn l4_sum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, seg: &[u8]) -> u16 {
    let mut b = Vec::new();
    b.extend_from_slice(&src.octets());
    b.extend_from_slice(&dst.octets());
    b.extend_from_slice(&[0, proto]);
    b.extend_from_slice(&(seg.len() as u16).to_be_bytes());
    b.extend_from_slice(seg);
    packet::checksum(&b)
}

/// An Ethernet frame carrying `seg` from `src` to `dst` with this TTL.
#[allow(clippy::too_many_arguments)]
fn frame(
    dmac: [u8; 6],
    smac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    ttl: u8,
    seg: &[u8],
) -> Vec<u8> {
    let mut ip = Ipv4::new(src, dst, proto);
    ip.ttl = ttl;
    packet::ethernet(dmac, smac, packet::ETH_P_IPV4, &ip.packet(seg))
}

/// Every checksum of an output frame verifies: the IP header's, and the TCP/UDP one
/// (or the ICMP one and the quoted IP header's).
fn verify(out: &[u8]) {
    let ip = &out[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    assert_eq!(
        packet::checksum(&ip[..ihl]),
        0,
        "IP header checksum of {out:02x?}"
    );
    let (src, dst) = (
        Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
    );
    let seg = &ip[ihl..];
    match ip[9] {
        UDP if seg[6..8] == [0, 0] => {}
        TCP | UDP => assert_eq!(l4_sum(src, dst, ip[9], seg), 0, "L4 checksum of {out:02x?}"),
        ICMP => {
            assert_eq!(packet::checksum(seg), 0, "ICMP checksum of {out:02x?}");
            let inner = &seg[8..];
            let ihl = usize::from(inner[0] & 0x0f) * 4;
            assert_eq!(
                packet::checksum(&inner[..ihl]),
                0,
                "quoted IP header checksum"
            );
        }
        p => panic!("protocol {p}"),
    }
}

/// One run: action, output frame, and the one reason counted.
fn run(dp: &Dataplane, plan: &Plan, ingress: u32, input: &[u8]) -> (u32, Vec<u8>, Vec<Reason>) {
    let before = dp.snapshot(plan).unwrap_or_else(|e| panic!("{e}"));
    let (action, out) = packet::run(dp.program(), input, ingress);
    let after = dp.snapshot(plan).unwrap_or_else(|e| panic!("{e}"));
    let moved = Reason::ALL
        .iter()
        .copied()
        .filter(|&r| after.reason(r) != before.reason(r))
        .collect();
    (action, out, moved)
}

/// Runs `input` and checks the action, the only reason counted and the exact output.
fn expect(
    dp: &Dataplane,
    plan: &Plan,
    ingress: u32,
    input: &[u8],
    want: (u32, Reason),
    output: &[u8],
    what: &str,
) {
    let (action, out, moved) = run(dp, plan, ingress, input);
    assert_eq!(
        (action, moved),
        (want.0, vec![want.1]),
        "{what}: action and reason"
    );
    assert_eq!(
        out, output,
        "{what}: output bytes\n got {out:02x?}\nwant {output:02x?}"
    );
    if matches!(want.0, XDP_TX | XDP_REDIRECT) {
        verify(&out);
    }
}

fn key(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, proto: u8) -> FlowKeyV4 {
    FlowKeyV4 {
        src: u32::from_ne_bytes(src.octets()),
        dst: u32::from_ne_bytes(dst.octets()),
        sport: sport.to_be(),
        dport: dport.to_be(),
        proto,
        _pad: [0; 3],
    }
}

#[test]
fn nat_two_arm_rewrites_both_ways_with_port_mapping_and_tracks_tcp_from_both_sides() {
    with_director(|d, plan, dp| {
        let (client, vip, real) = (v4("203.0.113.7"), v4("192.0.2.100"), v4("198.51.100.11"));
        // The passive health signals of the real: (SYNs sent, SYN-ACKs, RSTs back).
        let index = plan
            .services
            .iter()
            .flat_map(|s| &s.reals)
            .find(|r| r.address == IpAddr::from(real) && r.port == 8080)
            .map(|r| r.index)
            .unwrap_or_else(|| panic!("no real {real}:8080"));
        let signals = |dp: &Dataplane| {
            dp.real_counters(&[index])
                .unwrap_or_else(|e| panic!("{e}"))
                .first()
                .map(|c| (c.syns, c.synacks, c.resets))
        };
        let syn = pkt(client, vip, TCP, 40000, 80, 0x02).sent(MAC_A, ROUTER_MAC);
        let to_real = pkt(client, real, TCP, 40000, 8080, 0x02).forwarded(mac_of(real), MAC_B);
        expect(dp, plan, d.xa0, &syn, REDIRECTED, &to_real, "syn");
        assert_eq!(signals(dp), Some((1, 0, 0)));
        let forward = key(client, vip, 40000, 80, TCP);
        let reply = key(real, client, 8080, 40000, TCP);
        let f = dp
            .flow(&forward)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("no forward entry"));
        let r = dp
            .flow(&reply)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("no reply entry"));
        assert_eq!(
            (
                f.flags & (FLOW_F_NAT | FLOW_F_REPLY),
                r.flags & (FLOW_F_NAT | FLOW_F_REPLY)
            ),
            (FLOW_F_NAT, FLOW_F_NAT | FLOW_F_REPLY)
        );
        assert_eq!(
            (f.hop_ifindex, r.hop_mac, r.hop_own_mac),
            (d.xa0, ROUTER_MAC, MAC_A)
        );
        assert_eq!((f.state, r.state), (STATE_TCP_SYN, STATE_TCP_SYN));

        // The real's SYN-ACK: from the VIP again, to the router, out of xa0.
        let syn_ack = pkt(real, client, TCP, 8080, 40000, 0x12).sent(MAC_B, mac_of(real));
        let to_client = pkt(vip, client, TCP, 80, 40000, 0x12).forwarded(ROUTER_MAC, MAC_A);
        expect(dp, plan, d.xb0, &syn_ack, REDIRECTED, &to_client, "syn-ack");
        assert_eq!(signals(dp), Some((1, 1, 0)));
        // The client's SYN again, on the tracked flow: a retransmission, no new handshake.
        expect(dp, plan, d.xa0, &syn, REDIRECTED, &to_real, "syn again");
        assert_eq!(signals(dp), Some((1, 1, 0)));
        let state = |k: &FlowKeyV4| dp.flow(k).ok().flatten().map(|f| f.state);
        assert_eq!(
            state(&forward),
            Some(STATE_TCP_SYN),
            "the real's SYN-ACK does not establish"
        );

        // The client's ACK establishes both entries; the real's FIN closes both.
        let ack = pkt(client, vip, TCP, 40000, 80, 0x10).sent(MAC_A, ROUTER_MAC);
        let (action, _, _) = run(dp, plan, d.xa0, &ack);
        assert_eq!(action, XDP_REDIRECT);
        assert_eq!(
            (state(&forward), state(&reply)),
            (Some(STATE_TCP_ESTABLISHED), Some(STATE_TCP_ESTABLISHED))
        );
        let fin = pkt(real, client, TCP, 8080, 40000, 0x11).sent(MAC_B, mac_of(real));
        let (action, out, _) = run(dp, plan, d.xb0, &fin);
        assert_eq!(action, XDP_REDIRECT);
        verify(&out);
        assert_eq!(
            (state(&forward), state(&reply)),
            (Some(STATE_TCP_FIN), Some(STATE_TCP_FIN))
        );

        // The client's frames now come from another router MAC: the answers follow.
        let other: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfd];
        let moved = pkt(client, vip, TCP, 40000, 80, 0x10).sent(MAC_A, other);
        let events = |e| dp.snapshot(plan).map(|s| s.event(e)).unwrap_or(0);
        let hops = events(Event::HopMoved);
        run(dp, plan, d.xa0, &moved);
        assert_eq!(events(Event::HopMoved), hops + 1);
        let (_, out, _) = run(dp, plan, d.xb0, &syn_ack);
        assert_eq!(out[..6], other, "the answer goes to the new router MAC");
        // The real's reset is counted.
        let rst = pkt(real, client, TCP, 8080, 40000, 0x04).sent(MAC_B, mac_of(real));
        let (action, _, _) = run(dp, plan, d.xb0, &rst);
        assert_eq!(action, XDP_REDIRECT);
        assert_eq!(signals(dp), Some((1, 2, 1)));
    });
}

#[test]
fn nat_udp_checksums_zero_stays_zero_one_arm_uses_xdp_tx() {
    with_director(|d, plan, dp| {
        let (client, vip, real) = (v4("203.0.113.8"), v4("192.0.2.100"), v4("198.51.100.11"));
        // With a checksum: updated, and it verifies.
        let q = pkt(client, vip, UDP, 5000, 53, 0).sent(MAC_A, ROUTER_MAC);
        let want = pkt(client, real, UDP, 5000, 5353, 0).forwarded(mac_of(real), MAC_B);
        expect(dp, plan, d.xa0, &q, REDIRECTED, &want, "udp");
        let a = pkt(real, client, UDP, 5353, 5000, 0).sent(MAC_B, mac_of(real));
        let want = pkt(vip, client, UDP, 53, 5000, 0).forwarded(ROUTER_MAC, MAC_A);
        expect(dp, plan, d.xb0, &a, REDIRECTED, &want, "udp answer");
        // Without one (zero): stays zero both ways.
        let q = frame(
            MAC_A,
            ROUTER_MAC,
            client,
            vip,
            UDP,
            64,
            &packet::udp(5001, 53, b"a query"),
        );
        let want = frame(
            mac_of(real),
            MAC_B,
            client,
            real,
            UDP,
            63,
            &packet::udp(5001, 5353, b"a query"),
        );
        expect(dp, plan, d.xa0, &q, REDIRECTED, &want, "udp, no checksum");
        let a = frame(
            MAC_B,
            mac_of(real),
            real,
            client,
            UDP,
            64,
            &packet::udp(5353, 5001, b"an answer"),
        );
        let want = frame(
            ROUTER_MAC,
            MAC_A,
            vip,
            client,
            UDP,
            63,
            &packet::udp(53, 5001, b"an answer"),
        );
        expect(
            dp,
            plan,
            d.xb0,
            &a,
            REDIRECTED,
            &want,
            "udp answer, no checksum",
        );

        // One arm: real 192.0.2.21 is behind xa0, where the client's frames came in.
        let (vip, real) = (v4("192.0.2.101"), v4("192.0.2.21"));
        let syn = pkt(client, vip, TCP, 40001, 80, 0x02).sent(MAC_A, ROUTER_MAC);
        let want = pkt(client, real, TCP, 40001, 80, 0x02).forwarded(mac_of(real), MAC_A);
        expect(dp, plan, d.xa0, &syn, TXED, &want, "one-arm syn");
        let syn_ack = pkt(real, client, TCP, 80, 40001, 0x12).sent(MAC_A, mac_of(real));
        let want = pkt(vip, client, TCP, 80, 40001, 0x12).forwarded(ROUTER_MAC, MAC_A);
        expect(dp, plan, d.xa0, &syn_ack, TXED, &want, "one-arm syn-ack");
    });
}

/// The pool (address, port) a full-NAT flow tries first: the documented hash of the
/// client's tuple, as every director computes it.
fn first_try(
    client: Ipv4Addr,
    vip: Ipv4Addr,
    sport: u16,
    dport: u16,
    proto: u8,
    pool: &[Ipv4Addr],
    ports: (u16, u16),
) -> (Ipv4Addr, u16) {
    let k = key(client, vip, sport, dport, proto);
    let ports_word = (u32::from(k.sport) << 16) | u32::from(k.dport);
    let h = addr_hash(&[k.src, k.dst, ports_word, u32::from(proto)], 7);
    let range = u32::from(ports.1 - ports.0) + 1;
    let addr = pool[(h % pool.len() as u32) as usize];
    (addr, ports.0 + (h.rotate_left(16) % range) as u16)
}

#[test]
fn fullnat_takes_a_pool_source_and_maps_answers_back() {
    with_director(|d, plan, dp| {
        let (client, vip, real) = (v4("203.0.113.9"), v4("192.0.2.102"), v4("198.51.100.12"));
        let pool = [v4("198.51.100.1"), v4("198.51.100.2")];
        let (snat, port) = first_try(client, vip, 40002, 80, TCP, &pool, (1024, 65535));
        let syn = pkt(client, vip, TCP, 40002, 80, 0x02).sent(MAC_A, ROUTER_MAC);
        let want = pkt(snat, real, TCP, port, 8080, 0x02).forwarded(mac_of(real), MAC_B);
        expect(dp, plan, d.xa0, &syn, REDIRECTED, &want, "full-NAT syn");
        let answer = pkt(real, snat, TCP, 8080, port, 0x12).sent(MAC_B, mac_of(real));
        let want = pkt(vip, client, TCP, 80, 40002, 0x12).forwarded(ROUTER_MAC, MAC_A);
        expect(
            dp,
            plan,
            d.xb0,
            &answer,
            REDIRECTED,
            &want,
            "full-NAT answer",
        );
    });
}

#[test]
fn fullnat_ports_never_collide_and_exhaustion_is_refused_and_counted() {
    with_director(|d, plan, dp| {
        let (vip, real) = (v4("192.0.2.103"), v4("198.51.100.12"));
        let pool_addr = v4("198.51.100.2");
        let mut taken = Vec::new();
        // The pool has two ports: two flows get one each, whatever their hashes say.
        for (n, sport) in [3000u16, 3001].into_iter().enumerate() {
            let client = v4(&format!("203.0.113.{}", 20 + n));
            let q = pkt(client, vip, UDP, sport, 53, 0).sent(MAC_A, ROUTER_MAC);
            let (action, out, moved) = run(dp, plan, d.xa0, &q);
            assert_eq!(
                (action, moved),
                (XDP_REDIRECT, vec![Reason::ForwardRedirect])
            );
            verify(&out);
            assert_eq!(out[26..30], pool_addr.octets());
            taken.push(u16::from_be_bytes([out[34], out[35]]));
        }
        taken.sort();
        assert_eq!(taken, [5000, 5001], "each flow has its own port");
        // A third is refused after the bounded tries, and counted; nothing is sent.
        let events = |e| dp.snapshot(plan).map(|s| s.event(e)).unwrap_or(0);
        let retries = events(Event::SnatRetry);
        let client = v4("203.0.113.30");
        let q = pkt(client, vip, UDP, 3002, 53, 0).sent(MAC_A, ROUTER_MAC);
        expect(
            dp,
            plan,
            d.xa0,
            &q,
            (XDP_DROP, Reason::DropSnatExhausted),
            &q,
            "exhausted",
        );
        assert_eq!(
            events(Event::SnatRetry),
            retries + u64::from(lb_common::conntrack::SNAT_TRIES)
        );
        assert!(
            dp.flow(&key(client, vip, 3002, 53, UDP))
                .ok()
                .flatten()
                .is_none(),
            "no entry for a refused flow"
        );
        // The first two flows still work both ways.
        let back = pkt(real, pool_addr, UDP, 53, 5000, 0).sent(MAC_B, mac_of(real));
        let (action, out, _) = run(dp, plan, d.xb0, &back);
        assert_eq!(action, XDP_REDIRECT);
        verify(&out);
        assert_eq!(out[26..30], vip.octets());
    });
}

#[test]
fn answers_without_an_entry_and_other_traffic_are_left_to_the_kernel() {
    with_director(|d, plan, dp| {
        let (client, real) = (v4("203.0.113.40"), v4("198.51.100.11"));
        let orphan = pkt(real, client, TCP, 8080, 1234, 0x12).sent(MAC_B, mac_of(real));
        expect(
            dp,
            plan,
            d.xb0,
            &orphan,
            (XDP_PASS, Reason::PassReplyNoFlow),
            &orphan,
            "answer with no entry",
        );
        let own = frame(
            MAC_B,
            mac_of(real),
            real,
            v4("198.51.100.1"),
            TCP,
            64,
            &l4(real, v4("198.51.100.1"), TCP, 33000, 22, 0x02),
        );
        expect(
            dp,
            plan,
            d.xb0,
            &own,
            (XDP_PASS, Reason::PassReplyNoFlow),
            &own,
            "the real's own connection",
        );
        let other = v4("198.51.100.50");
        let stranger = pkt(other, client, TCP, 8080, 1234, 0x12).sent(MAC_B, mac_of(other));
        expect(
            dp,
            plan,
            d.xb0,
            &stranger,
            (XDP_PASS, Reason::PassNotVip),
            &stranger,
            "not a real's address",
        );
    });
}

/// An ICMP error from `src` to `dst` quoting `quote` (an IP datagram's first bytes).
fn icmp_error(kind: u8, code: u8, mtu: u16, src: Ipv4Addr, dst: Ipv4Addr, quote: &[u8]) -> Vec<u8> {
    let mut icmp = vec![kind, code, 0, 0, 0, 0];
    icmp.extend_from_slice(&mtu.to_be_bytes());
    icmp.extend_from_slice(quote);
    let sum = packet::checksum(&icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut ip = Ipv4::new(src, dst, ICMP);
    ip.ttl = 64;
    ip.packet(&icmp)
}

/// The first 28 bytes of a datagram (IP header and 8 bytes), as routers quote.
fn quote_of(datagram: &[u8]) -> Vec<u8> {
    datagram[..28].to_vec()
}

#[test]
fn icmp_errors_are_translated_both_ways() {
    with_director(|d, plan, dp| {
        let (client, vip, real) = (v4("203.0.113.50"), v4("192.0.2.100"), v4("198.51.100.11"));
        let syn = pkt(client, vip, TCP, 41000, 80, 0x02).sent(MAC_A, ROUTER_MAC);
        assert_eq!(run(dp, plan, d.xa0, &syn).0, XDP_REDIRECT);
        // A router towards the client cannot pass an answer (VIP:80 -> client): it tells
        // the VIP, and the real must hear it about its own datagram (real:8080 -> client).
        let router = v4("192.0.2.254");
        let mut answer = Ipv4::new(vip, client, TCP);
        answer.ttl = 62;
        let answer = answer.packet(&l4(vip, client, TCP, 80, 41000, 0x10));
        let err = icmp_error(3, 4, 1000, router, vip, &quote_of(&answer));
        let input = packet::ethernet(MAC_A, ROUTER_MAC, packet::ETH_P_IPV4, &err);
        let mut sent = Ipv4::new(real, client, TCP);
        sent.ttl = 62;
        let sent = sent.packet(&l4(real, client, TCP, 8080, 41000, 0x10));
        let mut want_ip = icmp_error(3, 4, 1000, router, real, &quote_of(&sent));
        want_ip[8] = 63;
        packet::reseal(&mut want_ip);
        let want = packet::ethernet(mac_of(real), MAC_B, packet::ETH_P_IPV4, &want_ip);
        expect(
            dp,
            plan,
            d.xa0,
            &input,
            REDIRECTED,
            &want,
            "frag needed to the real",
        );

        // The real refuses a UDP datagram (port unreachable to the client): the client
        // must hear it from the VIP about the datagram it sent (client -> VIP:53).
        let q = pkt(client, vip, UDP, 6000, 53, 0).sent(MAC_A, ROUTER_MAC);
        assert_eq!(run(dp, plan, d.xa0, &q).0, XDP_REDIRECT);
        let mut got = Ipv4::new(client, real, UDP);
        got.ttl = 63;
        let got = got.packet(&l4(client, real, UDP, 6000, 5353, 0));
        let err = icmp_error(3, 3, 0, real, client, &quote_of(&got));
        let input = packet::ethernet(MAC_B, mac_of(real), packet::ETH_P_IPV4, &err);
        let mut orig = Ipv4::new(client, vip, UDP);
        orig.ttl = 63;
        let orig = orig.packet(&l4(client, real, UDP, 6000, 5353, 0));
        // The quoted UDP checksum stays as the real quoted it (as IPVS leaves it).
        let mut quote = quote_of(&orig);
        quote[20..22].copy_from_slice(&6000u16.to_be_bytes());
        quote[22..24].copy_from_slice(&53u16.to_be_bytes());
        let mut want_ip = icmp_error(3, 3, 0, vip, client, &quote);
        want_ip[8] = 63;
        packet::reseal(&mut want_ip);
        let want = packet::ethernet(ROUTER_MAC, MAC_A, packet::ETH_P_IPV4, &want_ip);
        expect(
            dp,
            plan,
            d.xb0,
            &input,
            REDIRECTED,
            &want,
            "port unreachable to the client",
        );
        let events = dp.snapshot(plan).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (
                events.event(Event::IcmpToReal),
                events.event(Event::IcmpToClient)
            ),
            (1, 1)
        );
    });
}

#[test]
fn a_nat_flow_the_flood_guard_refuses_is_dropped_not_half_made() {
    with_director(|d, plan, dp| {
        let mut dp_settings = Settings {
            flood_rate: 1,
            frag_timeout: 30,
            icmp_rate: 1000,
            ..Default::default()
        };
        // One new entry per second per CPU: of ten new flows in a burst, most are refused.
        dp.set_settings(dp_settings)
            .unwrap_or_else(|e| panic!("{e}"));
        let (vip, real) = (v4("192.0.2.100"), v4("198.51.100.11"));
        let mut refused = 0;
        for n in 0..10u8 {
            let client = Ipv4Addr::new(203, 0, 113, 60 + n);
            let syn = pkt(client, vip, TCP, 42000, 80, 0x02).sent(MAC_A, ROUTER_MAC);
            let (action, out, moved) = run(dp, plan, d.xa0, &syn);
            if moved == [Reason::DropInsertRefused] {
                assert_eq!((action, &out), (XDP_DROP, &syn));
                assert!(
                    dp.flow(&key(client, vip, 42000, 80, TCP))
                        .ok()
                        .flatten()
                        .is_none()
                );
                assert!(
                    dp.flow(&key(real, client, 8080, 42000, TCP))
                        .ok()
                        .flatten()
                        .is_none()
                );
                refused += 1;
            } else {
                assert_eq!(
                    (action, moved),
                    (XDP_REDIRECT, vec![Reason::ForwardRedirect])
                );
            }
        }
        assert!(refused >= 5, "only {refused} of 10 refused");
        dp_settings.flood_rate = 0;
        dp.set_settings(dp_settings)
            .unwrap_or_else(|e| panic!("{e}"));
    });
}

#[test]
fn a_flow_whose_entry_was_evicted_keeps_working() {
    with_director(|d, plan, dp| {
        let (client, vip, real) = (v4("203.0.113.70"), v4("192.0.2.100"), v4("198.51.100.11"));
        let to_vip = |flags| {
            frame(
                MAC_A,
                ROUTER_MAC,
                client,
                vip,
                TCP,
                64,
                &l4(client, vip, TCP, 43000, 80, flags),
            )
        };
        let answer = pkt(real, client, TCP, 8080, 43000, 0x10).sent(MAC_B, mac_of(real));
        for flags in [0x02, 0x10] {
            assert_eq!(run(dp, plan, d.xa0, &to_vip(flags)).0, XDP_REDIRECT);
        }
        // The LRU evicts the reply entry alone: the answers find nothing ...
        dp.remove_flow(&key(real, client, 8080, 43000, TCP))
            .unwrap_or_else(|e| panic!("{e}"));
        let (action, _, moved) = run(dp, plan, d.xb0, &answer);
        assert_eq!((action, moved), (XDP_PASS, vec![Reason::PassReplyNoFlow]));
        // ... until the client's next packet that touches the entry (a state change here;
        // otherwise within the second) makes it again.
        let events = |e| dp.snapshot(plan).map(|s| s.event(e)).unwrap_or(0);
        assert_eq!(run(dp, plan, d.xa0, &to_vip(0x11)).0, XDP_REDIRECT);
        assert_eq!(events(Event::CtReplyRestored), 1);
        let (action, out, _) = run(dp, plan, d.xb0, &answer);
        assert_eq!(action, XDP_REDIRECT);
        verify(&out);
        assert_eq!(
            out[26..30],
            vip.octets(),
            "the answer comes from the VIP again"
        );

        // Full-NAT: the forward entry is evicted alone; the next packet finds its own
        // reply entry on the hash-chosen source and keeps it, so the real sees the same
        // connection.
        let vip = v4("192.0.2.102");
        let syn = pkt(client, vip, TCP, 43001, 80, 0x02).sent(MAC_A, ROUTER_MAC);
        let (_, first, _) = run(dp, plan, d.xa0, &syn);
        dp.remove_flow(&key(client, vip, 43001, 80, TCP))
            .unwrap_or_else(|e| panic!("{e}"));
        let ack = pkt(client, vip, TCP, 43001, 80, 0x10).sent(MAC_A, ROUTER_MAC);
        let (action, again, _) = run(dp, plan, d.xa0, &ack);
        assert_eq!(action, XDP_REDIRECT);
        assert_eq!(
            again[26..38],
            first[26..38],
            "same source address and port, same real"
        );
    });
}

#[test]
fn a_flow_whose_reply_key_another_flow_took_ends_and_starts_afresh() {
    with_director(|d, plan, dp| {
        // One client port to two NAT VIPs whose real is the same address and port: the
        // real would see one connection, so the two flows share a reply key.
        let (client, real) = (v4("203.0.113.71"), v4("198.51.100.11"));
        let syn = |vip: Ipv4Addr, flags| {
            frame(
                MAC_A,
                ROUTER_MAC,
                client,
                vip,
                TCP,
                64,
                &l4(client, vip, TCP, 43100, 80, flags),
            )
        };
        let (a, b) = (v4("192.0.2.100"), v4("192.0.2.104"));
        assert_eq!(run(dp, plan, d.xa0, &syn(a, 0x02)).0, XDP_REDIRECT);
        assert_eq!(run(dp, plan, d.xa0, &syn(b, 0x02)).0, XDP_REDIRECT);
        let reply = key(real, client, 8080, 43100, TCP);
        let held = |vip: Ipv4Addr| {
            dp.flow(&reply)
                .ok()
                .flatten()
                .is_some_and(|f| f.to.src == u32::from_ne_bytes(vip.octets()))
        };
        assert!(held(b), "the later flow holds the reply key");
        // A's next packet that touches its entry finds its reply key taken: A's entry
        // ends and the packet opens A afresh; B's entry was not deleted on A's behalf
        // before A took the key again.
        let events = |e| dp.snapshot(plan).map(|s| s.event(e)).unwrap_or(0);
        assert_eq!(run(dp, plan, d.xa0, &syn(a, 0x10)).0, XDP_REDIRECT);
        assert_eq!(events(Event::CtTwinTaken), 1);
        assert!(held(a), "A made its reply entry again");
        assert!(
            dp.flow(&key(client, b, 43100, 80, TCP))
                .ok()
                .flatten()
                .is_some()
        );
    });
}
