//! A reference model of the XDP program, for the differential test: what the program
//! must do with a frame (action, output bytes, reason, events), written from
//! docs/ARCHITECTURE.md, docs/OPERATIONS.md, the RFCs and the kernel behaviour they cite,
//! not from lb-ebpf. It reads only configuration (the plan's services, reals and
//! scheduling tables) and the rig's topology, and keeps its own connection and fragment
//! tables.
//!
//! Out of scope, and kept out of the generated traffic: timeouts (the rig sets them far
//! beyond a run), the flood guard and the ICMP rate limit (set off), next hops that are not
//! resolved (the fallback look-up is the kernel's), VLANs beyond "pass".

use std::collections::{HashMap, HashSet};

use lb_common::{event::Event, reason::Reason};
use lb_userspace::plan::Plan;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// A real's next hop as the rig built it.
#[derive(Clone, Copy, Debug)]
pub struct Hop {
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    pub ifindex: u32,
    pub mtu: u32,
}

#[derive(Clone, Debug)]
struct Service {
    dh: bool,
    seed: u32,
    expire_nodest: bool,
    /// Real index per slot (`u32::MAX`: none).
    table: Vec<u32>,
}

#[derive(Clone, Copy, Debug)]
struct Real {
    generation: u32,
    hop: Hop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Syn,
    Established,
    Fin,
    Close,
    Udp,
}

#[derive(Clone, Copy, Debug)]
struct Flow {
    real: u32,
    generation: u32,
    state: State,
    expire_nodest: bool,
}

/// What the program must do with one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub action: u32,
    pub frame: Vec<u8>,
    pub reason: Reason,
}

type FlowKey = ([u8; 4], [u8; 4], u16, u16, u8);
type FragKey = ([u8; 4], [u8; 4], u16, u8);

pub struct Model {
    ingress: u32,
    ingress_mac: [u8; 6],
    hops: HashMap<String, Hop>,
    vips: HashSet<[u8; 4]>,
    services: HashMap<([u8; 4], u16, u8), Service>,
    reals: HashMap<u32, Real>,
    flows: HashMap<FlowKey, Flow>,
    frags: HashMap<FragKey, (u32, u32)>,
    /// Events the model expects, by name.
    pub events: HashMap<&'static str, u64>,
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn quad(b: &[u8]) -> [u8; 4] {
    [b[0], b[1], b[2], b[3]]
}

/// RFC 1071 over `bytes` (an odd tail padded with zero): the value to store.
pub fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// MurmurHash3_x86_32 (Austin Appleby's reference, little-endian blocks) of `data`.
pub fn murmur3_32(data: &[u8], seed: u32) -> u32 {
    let (c1, c2) = (0xcc9e_2d51u32, 0x1b87_3593u32);
    let mut h = seed;
    let blocks = data.chunks_exact(4);
    let tail = blocks.remainder();
    for b in blocks {
        let mut k = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        k = k.wrapping_mul(c1).rotate_left(15).wrapping_mul(c2);
        h ^= k;
        h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    let mut k = 0u32;
    for (i, &byte) in tail.iter().enumerate() {
        k |= u32::from(byte) << (8 * i);
    }
    if !tail.is_empty() {
        h ^= k.wrapping_mul(c1).rotate_left(15).wrapping_mul(c2);
    }
    h ^= data.len() as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

impl Model {
    /// A model of the program attached to `ingress` (MAC `ingress_mac`), with the reals'
    /// next hops by address.
    pub fn new(ingress: u32, ingress_mac: [u8; 6], hops: HashMap<String, Hop>) -> Model {
        Model {
            ingress,
            ingress_mac,
            hops,
            vips: HashSet::new(),
            services: HashMap::new(),
            reals: HashMap::new(),
            flows: HashMap::new(),
            frags: HashMap::new(),
            events: HashMap::new(),
        }
    }

    /// Takes the configuration of `plan` (a reload): services, reals and tables are
    /// replaced; the connection and fragment tables stay.
    pub fn apply(&mut self, plan: &Plan) {
        self.vips.clear();
        self.services.clear();
        self.reals.clear();
        for s in &plan.services {
            let std::net::IpAddr::V4(vip) = s.address else {
                continue;
            };
            self.vips.insert(vip.octets());
            let proto = s.key.proto;
            self.services.insert(
                (vip.octets(), s.port, proto),
                Service {
                    dh: s.value.scheduler == lb_common::SCHED_DH,
                    seed: s.value.hash_seed,
                    expire_nodest: s.value.flags & lb_common::SVC_F_EXPIRE_NODEST != 0,
                    table: s.table.clone(),
                },
            );
            for r in &s.reals {
                let hop = self.hops[&r.address.to_string()];
                self.reals.insert(
                    r.index,
                    Real {
                        generation: r.value.generation,
                        hop,
                    },
                );
            }
        }
    }

    /// Flows the model holds (for choosing ICMP quotes that name one).
    pub fn flows(&self) -> impl Iterator<Item = &FlowKey> {
        self.flows.keys()
    }

    fn event(&mut self, e: Event) {
        *self.events.entry(e.name()).or_default() += 1;
    }

    /// What the program must do with `f`, arriving on the ingress interface.
    pub fn run(&mut self, f: &[u8]) -> Outcome {
        match self.decide(f) {
            Ok(out) => out,
            Err(reason) => Outcome {
                action: match reason {
                    Reason::PassEthTruncated
                    | Reason::PassVlan
                    | Reason::PassNotIpv4
                    | Reason::PassIpMalformed
                    | Reason::PassNotVip
                    | Reason::PassVipOtherProto
                    | Reason::PassVipNoService
                    | Reason::PassIcmpNoFlow => XDP_PASS,
                    _ => XDP_DROP,
                },
                frame: f.to_vec(),
                reason,
            },
        }
    }

    fn decide(&mut self, f: &[u8]) -> Result<Outcome, Reason> {
        if f.len() < 14 {
            return Err(Reason::PassEthTruncated);
        }
        match be16(&f[12..]) {
            0x0800 => {}
            0x8100 | 0x88a8 => return Err(Reason::PassVlan),
            _ => return Err(Reason::PassNotIpv4),
        }
        if f.len() < 34 {
            return Err(Reason::PassIpMalformed);
        }
        // Not for a VIP is decided on the destination alone (docs/ARCHITECTURE.md).
        let (src, dst) = (quad(&f[26..]), quad(&f[30..]));
        if !self.vips.contains(&dst) {
            return Err(Reason::PassNotVip);
        }
        let ihl = usize::from(f[14] & 0x0f) * 4;
        let total = usize::from(be16(&f[16..]));
        if f[14] >> 4 != 4 || ihl < 20 || total < ihl || 14 + total > f.len() {
            return Err(Reason::PassIpMalformed);
        }
        let end = 14 + total;
        // What the kernel would refuse.
        if f[..6] != self.ingress_mac {
            return Err(Reason::DropOtherHost);
        }
        if src == [255; 4]
            || src[0] == 0
            || src[0] == 127
            || (224..240).contains(&src[0])
            || self.vips.contains(&src)
        {
            return Err(Reason::DropMartianSource);
        }
        if internet_checksum(&f[14..14 + ihl]) != 0 {
            return Err(Reason::DropIpChecksum);
        }
        let (ttl, proto) = (f[22], f[23]);
        let frag = be16(&f[20..]);
        let (more, offset) = (frag & 0x2000 != 0, frag & 0x1fff);
        let l4 = 14 + ihl;
        if proto == 1 {
            return self.icmp(f, l4, end, more || offset != 0, ttl, dst);
        }
        if proto != 6 && proto != 17 {
            return Err(Reason::PassVipOtherProto);
        }
        let id = be16(&f[18..]);
        if offset != 0 {
            let &(real, generation) = self
                .frags
                .get(&(src, dst, id, proto))
                .ok_or(Reason::DropFragmentUnknown)?;
            self.event(Event::FragFollowed);
            if ttl <= 1 {
                return Err(Reason::DropTtlExceeded);
            }
            let real = match self.reals.get(&real) {
                Some(r) if r.generation == generation => *r,
                _ => return Err(Reason::DropRealRemoved),
            };
            return self.forward(f, real.hop);
        }
        let tcp = proto == 6;
        if l4 + if tcp { 20 } else { 8 } > end {
            return Err(Reason::DropL4Truncated);
        }
        let (sport, dport) = (be16(&f[l4..]), be16(&f[l4 + 2..]));
        let flags = if tcp { f[l4 + 13] } else { 0 };
        let service = self.services.get(&(dst, dport, proto)).cloned();
        if ttl <= 1 {
            return match service {
                Some(_) => Ok(time_exceeded(f, ihl)),
                None => Err(Reason::PassVipNoService),
            };
        }
        // An established flow is found by its 5-tuple first (as IPVS does); a service's
        // existence matters only to a packet that must be scheduled.
        let key = (src, dst, sport, dport, proto);
        let hit = match self.flows.get(&key).copied() {
            None => {
                if service.is_some() {
                    self.event(Event::CtMiss);
                }
                None
            }
            Some(flow) => match next_state(flow.state, flags) {
                None => {
                    self.event(Event::CtReused);
                    None
                }
                Some(state) => {
                    self.event(Event::CtHit);
                    self.flows.insert(key, Flow { state, ..flow });
                    Some(flow)
                }
            },
        };
        let (index, real) = match hit {
            Some(flow) => match self.reals.get(&flow.real) {
                Some(r) if r.generation == flow.generation => (flow.real, *r),
                // A VIP removed since is not ours, whatever its entries say.
                _ if !self.vips.contains(&dst) => return Err(Reason::PassNotVip),
                _ => {
                    // The service's expire_nodest_conn when the entry was made.
                    if flow.expire_nodest {
                        self.flows.remove(&key);
                        self.event(Event::CtNodestExpired);
                    }
                    return Err(Reason::DropRealRemoved);
                }
            },
            None => {
                let service = service.ok_or(Reason::PassVipNoService)?;
                let by = if service.dh { dst } else { src };
                let mut addr = [0u8; 16];
                addr[..4].copy_from_slice(&by);
                let slot = murmur3_32(&addr, service.seed) as usize % service.table.len();
                let index = service.table[slot];
                let real = *self.reals.get(&index).ok_or(Reason::DropNoReal)?;
                if tcp && flags & 0x12 != 0x02 {
                    self.event(Event::CtMidstreamMiss);
                }
                let flow = Flow {
                    real: index,
                    generation: real.generation,
                    state: first_state(tcp, flags),
                    expire_nodest: service.expire_nodest,
                };
                self.flows.insert(key, flow);
                self.event(Event::CtInsert);
                (index, real)
            }
        };
        if more {
            self.frags
                .insert((src, dst, id, proto), (index, real.generation));
            self.event(Event::FragFirst);
        }
        self.forward(f, real.hop)
    }

    /// ICMP to a VIP: an error quoting a tracked flow's reply, sent to that VIP, goes to
    /// the flow's real.
    fn icmp(
        &mut self,
        f: &[u8],
        l4: usize,
        end: usize,
        fragment: bool,
        ttl: u8,
        dst: [u8; 4],
    ) -> Result<Outcome, Reason> {
        if fragment || l4 + 8 + 20 > end || ![3, 4, 11].contains(&f[l4]) {
            return Err(Reason::PassVipOtherProto);
        }
        let inner = l4 + 8;
        let inner_ihl = usize::from(f[inner] & 0x0f) * 4;
        let inner_proto = f[inner + 9];
        if f[inner] >> 4 != 4 || inner_ihl < 20 || (inner_proto != 6 && inner_proto != 17) {
            return Err(Reason::PassIcmpNoFlow);
        }
        if inner + inner_ihl + 4 > end {
            return Err(Reason::PassIcmpNoFlow);
        }
        let (vip, client) = (quad(&f[inner + 12..]), quad(&f[inner + 16..]));
        let ports = &f[inner + inner_ihl..];
        let key = (client, vip, be16(&ports[2..]), be16(ports), inner_proto);
        if vip != dst {
            return Err(Reason::PassIcmpNoFlow);
        }
        let flow = *self.flows.get(&key).ok_or(Reason::PassIcmpNoFlow)?;
        let real = match self.reals.get(&flow.real) {
            Some(r) if r.generation == flow.generation => *r,
            _ => return Err(Reason::PassIcmpNoFlow),
        };
        if ttl <= 1 {
            return Err(Reason::DropTtlExceeded);
        }
        let out = self.forward(f, real.hop)?;
        self.event(Event::IcmpToReal);
        Ok(out)
    }

    /// Direct routing: MACs of the next hop, TTL − 1 with the checksum patched as
    /// `ip_decrease_ttl` does; out of the ingress interface or redirected.
    fn forward(&self, f: &[u8], hop: Hop) -> Result<Outcome, Reason> {
        if u32::from(be16(&f[16..])) > hop.mtu {
            return Err(Reason::DropFragNeeded);
        }
        let mut out = f.to_vec();
        out[..6].copy_from_slice(&hop.dmac);
        out[6..12].copy_from_slice(&hop.smac);
        out[22] -= 1;
        let check = u32::from(be16(&out[24..])) + 0x0100;
        let check = (check + u32::from(check >= 0xffff)) as u16;
        out[24..26].copy_from_slice(&check.to_be_bytes());
        let (action, reason) = if hop.ifindex == self.ingress {
            (XDP_TX, Reason::ForwardTx)
        } else {
            (XDP_REDIRECT, Reason::ForwardRedirect)
        };
        Ok(Outcome {
            action,
            frame: out,
            reason,
        })
    }
}

/// RFC 792 time exceeded from the datagram's destination back to its sender, quoting
/// the IP header and 8 bytes; TTL 64 and TOS 0xc0 with the datagram's TOS bits (0x1e)
/// as the kernel sends ICMP errors.
fn time_exceeded(f: &[u8], ihl: usize) -> Outcome {
    let mut icmp = vec![11, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&f[14..14 + ihl + 8]);
    let sum = internet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut ip = vec![0x45, 0xc0 | (f[15] & 0x1e)];
    ip.extend_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0, 0, 64, 1, 0, 0]);
    ip.extend_from_slice(&f[30..34]);
    ip.extend_from_slice(&f[26..30]);
    let sum = internet_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut out = Vec::with_capacity(14 + ip.len() + icmp.len());
    out.extend_from_slice(&f[6..12]);
    out.extend_from_slice(&f[..6]);
    out.extend_from_slice(&[0x08, 0x00]);
    out.extend_from_slice(&ip);
    out.extend_from_slice(&icmp);
    Outcome {
        action: XDP_TX,
        frame: out,
        reason: Reason::TxIcmpTimeExceeded,
    }
}

/// LVS's input-only TCP states (docs/ARCHITECTURE.md, "The connection table"): `None`
/// is a bare SYN on a finished tuple, a new connection.
fn next_state(state: State, flags: u8) -> Option<State> {
    let (fin, syn, rst, ack) = (
        flags & 1 != 0,
        flags & 2 != 0,
        flags & 4 != 0,
        flags & 16 != 0,
    );
    Some(match state {
        State::Udp => State::Udp,
        _ if rst => State::Close,
        State::Fin | State::Close if syn && !ack => return None,
        _ if fin => State::Fin,
        State::Syn if ack => State::Established,
        s => s,
    })
}

fn first_state(tcp: bool, flags: u8) -> State {
    let (fin, syn, rst, ack) = (
        flags & 1 != 0,
        flags & 2 != 0,
        flags & 4 != 0,
        flags & 16 != 0,
    );
    match () {
        _ if !tcp => State::Udp,
        _ if rst => State::Close,
        _ if fin => State::Fin,
        _ if syn && !ack => State::Syn,
        _ => State::Established,
    }
}
