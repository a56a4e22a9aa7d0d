//! The differential test: random and mutated frames through the real program
//! (BPF_PROG_TEST_RUN) and through the reference model (`model`), compared frame by
//! frame (action and every output byte) and, at the end, counter by counter (reasons
//! and events). The configuration is reloaded three times during a run (a drain, a
//! removed real, the original back), so orphaned flows and new generations are covered.
//! The frames come from a seeded generator: a failure names the seed that repeats it.

use std::collections::HashMap;

use lb_common::{
    conntrack::{STATES, Settings},
    event::Event,
    reason::Reason,
};
use lb_userspace::{
    config::Limits,
    dataplane::{Dataplane, Snapshot},
    plan::Plan,
};

use crate::{
    bench::per_packet::{CLIENT_MAC, Director, MAC_A, MAC_B, REALS},
    model::{Hop, Model, internet_checksum},
    packet,
};

/// splitmix64: small, seedable, good enough to spread frames.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// The rig's hashing configuration, and the three it is reloaded with in turn.
fn configs(base: &str) -> [String; 4] {
    let web_tail =
        "{address: 192.0.2.12}, {address: 192.0.2.13}]}\n  - {address: 192.0.2.100, port: 53";
    assert!(
        base.contains(web_tail),
        "the rig's configuration changed: {base}"
    );
    let nat_reals = "{address: 192.0.2.11, port: 8080}, {address: 192.0.2.12, port: 8080}";
    assert!(
        base.contains(nat_reals),
        "the rig's configuration changed: {base}"
    );
    let drained = web_tail.replace("192.0.2.12}", "192.0.2.12, weight: 0}");
    let removed = web_tail.replace(", {address: 192.0.2.13}", "");
    let nat_drained = nat_reals.replace("port: 8080}", "port: 8080, weight: 0}");
    let nat_drained = nat_drained.replacen(", weight: 0}", "}", 1);
    let nat_removed = "{address: 192.0.2.11, port: 8080}";
    [
        base.to_owned(),
        base.replace(web_tail, &drained)
            .replace(nat_reals, &nat_drained),
        base.replace(web_tail, &removed)
            .replace(nat_reals, nat_removed),
        base.to_owned(),
    ]
}

/// What a run found.
pub struct Report {
    pub frames: u64,
    /// Frames whose action or bytes differed (at most the first 10 are described).
    pub mismatches: u64,
    pub described: Vec<String>,
    /// Counters whose totals differed: (name, program, model).
    pub counters: Vec<(String, u64, u64)>,
    /// Frames per outcome, for the coverage the run reached.
    /// by reason name.
    pub reasons: HashMap<&'static str, u64>,
}

/// Runs `frames` generated frames from `seed`; call inside the director's namespace
/// with its rx queue registered (see `per_packet::Programs`).
pub fn run(director: &Director, frames: u64, seed: u64) -> Report {
    // The model has no LRU: the fragment table is sized so the run never evicts (the
    // generated keys are about 20,000, plus what mutations make up).
    let limits = Limits {
        max_fragments: 1 << 20,
        ..Limits::default()
    };
    let mut dp = Dataplane::load(limits).unwrap_or_else(|e| panic!("{e}"));
    dp.set_settings(Settings {
        flood_rate: 0,
        frag_timeout: 1 << 30,
        icmp_rate: u32::MAX,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let hops: HashMap<String, Hop> = REALS
        .iter()
        .map(|&(address, dev, dmac)| {
            let (smac, ifindex) = if dev == "xa0" {
                (MAC_A, director.xa0())
            } else {
                (MAC_B, director.xb0())
            };
            let mtu = 1500;
            let hop = Hop {
                dmac,
                smac,
                ifindex,
                mtu,
            };
            (address.to_owned(), hop)
        })
        .collect();
    let mut model = Model::new(director.xa0(), MAC_A, hops);
    let configs = configs(director.hashing_config());
    let apply = |dp: &mut Dataplane, model: &mut Model, yaml: &str, previous: Option<&Plan>| {
        let mut next = director.plan_from(yaml, previous);
        for s in &mut next.services {
            // Nothing times out during a run: the model has no clock.
            s.value.timeouts = [1 << 30; STATES];
        }
        let (hops, ifaces) = crate::rig::resolve(&next, &["xa0"]);
        dp.set_interfaces(&ifaces).unwrap_or_else(|e| panic!("{e}"));
        dp.apply(&next, &hops).unwrap_or_else(|e| panic!("{e}"));
        model.apply(&next);
        next
    };
    let mut plan = apply(&mut dp, &mut model, &configs[0], None);
    let before = dp.snapshot(&plan).unwrap_or_else(|e| panic!("{e}"));

    let mut rng = Rng(seed);
    let mut report = Report {
        frames,
        mismatches: 0,
        described: Vec::new(),
        counters: Vec::new(),
        reasons: HashMap::new(),
    };
    let stage = frames / configs.len() as u64 + 1;
    for n in 0..frames {
        if n > 0 && n % stage == 0 {
            plan = apply(
                &mut dp,
                &mut model,
                &configs[(n / stage) as usize],
                Some(&plan),
            );
        }
        let frame = generate(&mut rng, &model);
        let want = model.run(&frame);
        *report.reasons.entry(want.reason.name()).or_default() += 1;
        let got = run_once(&dp, &frame, director.xa0());
        if got != (want.action, want.frame.clone()) {
            report.mismatches += 1;
            if report.described.len() < 10 {
                report.described.push(format!(
                    "frame {n} (seed {seed}): {:02x?}\n  program: action {} {:02x?}\n  \
                     model:   action {} {:02x?} ({})",
                    frame,
                    got.0,
                    got.1,
                    want.action,
                    want.frame,
                    want.reason.name()
                ));
            }
        }
    }

    let after = dp.snapshot(&plan).unwrap_or_else(|e| panic!("{e}"));
    for &reason in Reason::ALL {
        let program = after.reason(reason) - before.reason(reason);
        let model = report.reasons.get(reason.name()).copied().unwrap_or(0);
        if program != model {
            report.counters.push((reason.name().into(), program, model));
        }
    }
    for event in [
        Event::CtHit,
        Event::CtMiss,
        Event::CtInsert,
        Event::CtReused,
        Event::CtNodestExpired,
        Event::CtMidstreamMiss,
        Event::FragFirst,
        Event::FragFollowed,
        Event::IcmpToReal,
        Event::IcmpToClient,
        Event::CtReplyHit,
        Event::HopMoved,
        Event::SnatRetry,
        // Never here: no entry is evicted (the model has no LRU), so a twin is never
        // missing; the program must agree.
        Event::CtReplyRestored,
    ] {
        let program = event_delta(&after, &before, event);
        let model = model.events.get(event.name()).copied().unwrap_or(0);
        if program != model {
            report.counters.push((event.name().into(), program, model));
        }
    }
    report
}

fn event_delta(after: &Snapshot, before: &Snapshot, event: Event) -> u64 {
    after.event(event) - before.event(event)
}

fn run_once(dp: &Dataplane, frame: &[u8], ingress: u32) -> (u32, Vec<u8>) {
    packet::run(dp.program(), frame, ingress)
}

const VIPS: [[u8; 4]; 3] = [[192, 0, 2, 100], [192, 0, 2, 101], [192, 0, 2, 102]];

fn client(rng: &mut Rng) -> [u8; 4] {
    if rng.chance(3) {
        return rng.pick(&[
            [127, 0, 0, 1],
            [0, 1, 2, 3],
            [224, 0, 0, 5],
            [255, 255, 255, 255],
            [192, 0, 2, 100],
            [240, 0, 0, 1],
        ]);
    }
    let prefix = rng.pick(&[[198, 51, 100], [203, 0, 113]]);
    [prefix[0], prefix[1], prefix[2], 1 + rng.below(48) as u8]
}

/// One frame: mostly plausible traffic for the services, with every header field
/// sometimes wrong, then in a third of cases mutated at random.
fn generate(rng: &mut Rng, model: &Model) -> Vec<u8> {
    let kind = rng.below(100);
    let src = client(rng);
    let dst = if rng.chance(90) {
        rng.pick(&VIPS)
    } else {
        [192, 0, 2, rng.below(256) as u8]
    };
    let sport = 40000 + rng.below(12) as u16;
    let (proto, l4) = match kind {
        0..=44 => {
            let dport = if rng.chance(92) {
                80
            } else {
                rng.pick(&[22, 443, 53])
            };
            let flags = rng.pick(&[0x02, 0x10, 0x12, 0x11, 0x04, 0x18, 0x14, 0x01, 0x00, 0xff]);
            (6, packet::tcp(sport, dport, flags))
        }
        45..=74 => {
            let dport = if rng.chance(92) { 53 } else { 80 };
            let len = rng.pick(&[0, 4, 32, 200]);
            let payload = rng.bytes(len);
            (17, packet::udp(sport, dport, &payload))
        }
        75..=86 => {
            let (icmp, to) = icmp_error(rng, model, src, dst);
            return finish(rng, src, to, 1, &icmp);
        }
        87..=89 => {
            let len = rng.below(40);
            (rng.pick(&[1, 47, 50, 132]), rng.bytes(len))
        }
        90..=97 => return answer(rng, model),
        _ => return other_frame(rng),
    };
    finish(rng, src, dst, proto, &l4)
}

/// The IPv4 datagram and the frame around `l4`, with the header sometimes odd.
fn finish(rng: &mut Rng, src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut ip = packet::Ipv4::new(src.into(), dst.into(), proto);
    ip.ttl = if rng.chance(5) {
        rng.pick(&[0, 1, 2])
    } else {
        64
    };
    if rng.chance(8) {
        let words = 1 + rng.below(10);
        ip.options = (0..words * 4).map(|_| rng.pick(&[1u8, 0, 0x94])).collect();
    }
    let mut datagram = ip.packet(l4);
    if rng.chance(10) {
        datagram[1] = rng.next() as u8; // TOS / DSCP and ECN
        packet::reseal(&mut datagram);
    }
    if proto != 1 && rng.chance(10) {
        fragment(rng, &mut datagram);
    }
    if rng.chance(2) {
        // Larger than the MTU towards every real.
        let extra = 1500 + rng.below(400);
        datagram.resize(datagram.len() + extra, 0x5a);
        set_total(&mut datagram);
    }
    let dmac = match rng.below(100) {
        0..=93 => MAC_A,
        94..=96 => [0xff; 6],
        _ => [0x02, 0, 0, 0, 0x77, 0x77],
    };
    let mut frame = packet::ethernet(dmac, CLIENT_MAC, packet::ETH_P_IPV4, &datagram);
    if rng.chance(15) {
        let pad = rng.below(24);
        frame.extend(rng.bytes(pad));
    }
    if rng.chance(33) {
        mutate(rng, &mut frame);
    }
    frame
}

/// Makes the datagram a fragment: a first one (more fragments) or a later one, with
/// an id from a small pool so later fragments find their first ones. The run sizes the
/// fragment table so no entry is ever evicted: the model has no LRU.
fn fragment(rng: &mut Rng, d: &mut [u8]) {
    let id = rng.below(16) as u16;
    d[4..6].copy_from_slice(&id.to_be_bytes());
    let frag: u16 = if rng.chance(50) {
        0x2000
    } else {
        rng.pick(&[0x2001, 0x0003, 0x00b9])
    };
    d[6..8].copy_from_slice(&frag.to_be_bytes());
    packet::reseal(d);
}

fn set_total(d: &mut [u8]) {
    let total = d.len() as u16;
    d[2..4].copy_from_slice(&total.to_be_bytes());
    packet::reseal(d);
}

/// An ICMP message and where to send it: mostly an error quoting the reply of a flow
/// the model tracks, to that flow's VIP; sometimes about no flow, to another address,
/// or not an error at all.
fn icmp_error(rng: &mut Rng, model: &Model, client: [u8; 4], vip: [u8; 4]) -> (Vec<u8>, [u8; 4]) {
    let kind = rng.pick(&[3u8, 3, 3, 4, 11, 11, 0, 8, 5]);
    let flows: Vec<_> = model.flows().take(64).copied().collect();
    let (reply_src, reply_dst, sport, dport, proto, to) = if !flows.is_empty() && rng.chance(80) {
        let (c, v, cport, vport, p) = rng.pick(&flows);
        let to = if rng.chance(90) { v } else { vip };
        (v, c, vport, cport, p, to)
    } else {
        (vip, client, 80, 40000 + rng.below(12) as u16, 6, vip)
    };
    let mut inner = packet::Ipv4::new(reply_src.into(), reply_dst.into(), proto);
    if rng.chance(5) {
        inner.options = vec![1, 1, 1, 0];
    }
    let payload = if proto == 6 {
        packet::tcp(sport, dport, 0x12)
    } else {
        packet::udp(sport, dport, b"reply")
    };
    let quoted = inner.packet(&payload);
    let keep = rng.pick(&[28, 28, 48, 8, 20 + inner.options.len() + 8]);
    let mut icmp = vec![kind, 4, 0, 0, 0, 0, 0x05, 0xdc];
    icmp.extend_from_slice(&quoted[..keep.min(quoted.len())]);
    let sum = internet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    (icmp, to)
}

/// A NAT real's answer: mostly to a flow the model tracks, sometimes to none, or an ICMP
/// error about the flow's translated datagram.
fn answer(rng: &mut Rng, model: &Model) -> Vec<u8> {
    let replies: Vec<_> = model.replies().take(64).copied().collect();
    let reals = model.nat_reals();
    let sport = 40000 + rng.below(12) as u16;
    let (src, dst, rport, cport, proto) = if !replies.is_empty() && rng.chance(85) {
        rng.pick(&replies)
    } else {
        let real = if reals.is_empty() {
            [192, 0, 2, 11]
        } else {
            rng.pick(&reals)
        };
        (
            real,
            client(rng),
            rng.pick(&[8080, 53, 22]),
            sport,
            rng.pick(&[6, 17]),
        )
    };
    if rng.chance(15) {
        // The real's error about the datagram it got (client or pool -> real).
        let mut inner = packet::Ipv4::new(dst.into(), src.into(), proto);
        inner.ttl = 63;
        let payload = if proto == 6 {
            packet::tcp(cport, rport, 0x10)
        } else {
            packet::udp(cport, rport, b"query")
        };
        let quoted = inner.packet(&payload);
        let keep = rng.pick(&[28, 28, 48, 8]);
        let kind = rng.pick(&[3u8, 3, 11, 0]);
        let mut icmp = vec![kind, 3, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&quoted[..keep.min(quoted.len())]);
        let sum = internet_checksum(&icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        let to = if rng.chance(90) { dst } else { client(rng) };
        return finish(rng, src, to, 1, &icmp);
    }
    let l4 = if proto == 6 {
        let flags = rng.pick(&[0x12, 0x10, 0x18, 0x11, 0x04, 0x14, 0x02]);
        packet::tcp(rport, cport, flags)
    } else {
        let len = rng.pick(&[0, 4, 32]);
        packet::udp(rport, cport, &rng.bytes(len))
    };
    finish(rng, src, dst, proto, &l4)
}

/// Frames that are not IPv4 datagrams, or barely: ARP, IPv6, VLAN tags, runts.
fn other_frame(rng: &mut Rng) -> Vec<u8> {
    let ether_type = rng.pick(&[
        packet::ETH_P_ARP,
        packet::ETH_P_IPV6,
        packet::ETH_P_8021Q,
        packet::ETH_P_8021AD,
        packet::ETH_P_IPV4,
    ]);
    let len = rng.below(60);
    let payload = rng.bytes(len);
    let mut frame = packet::ethernet(MAC_A, CLIENT_MAC, ether_type, &payload);
    // BPF_PROG_TEST_RUN, like a NIC, hands XDP no frame shorter than its Ethernet header.
    frame.truncate(14 + rng.below(frame.len() - 13));
    frame
}

/// Flips 1-4 bytes, or cuts the frame short; half the time the IP checksum is fixed
/// again so the mutation reaches past the header check.
fn mutate(rng: &mut Rng, frame: &mut Vec<u8>) {
    if rng.chance(15) {
        let len = 14 + rng.below(frame.len().saturating_sub(14));
        frame.truncate(len);
        return;
    }
    for _ in 0..1 + rng.below(4) {
        // Mostly in the headers, where the decisions are.
        let reach = frame
            .len()
            .min(if rng.chance(80) { 80 } else { usize::MAX });
        let at = rng.below(reach);
        frame[at] ^= 1 << rng.below(8);
    }
    if rng.chance(50) && frame.len() > 14 {
        let ihl = usize::from(frame[14] & 0x0f) * 4;
        if frame.len() >= 14 + ihl {
            packet::reseal(&mut frame[14..]);
        }
    }
}
