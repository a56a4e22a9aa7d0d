//! A reference model of the XDP program, for the differential test: what the program
//! must do with a frame (action, output bytes, reason, events), written from
//! docs/ARCHITECTURE.md, docs/OPERATIONS.md, the RFCs and the kernel behaviour they cite,
//! not from lb-ebpf. It reads only configuration (the plan's services, reals and
//! scheduling tables) and the rig's topology, and keeps its own connection and fragment
//! tables.
//!
//! NAT and full-NAT follow docs/NAT.md and docs/FULLNAT.md: two entries per flow, the
//! tuple each direction becomes, the hop learnt from the client's frame, checksums
//! patched as RFC 1624 says (computed here on 16-bit words), the documented source-port
//! sequence of full-NAT.
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Dr,
    Nat,
    FullNat,
}

#[derive(Clone, Debug)]
struct Service {
    dh: bool,
    seed: u32,
    expire_nodest: bool,
    method: Method,
    /// Full-NAT: pool addresses, first and last port.
    pool: Option<(Vec<[u8; 4]>, u16, u16)>,
    /// Real index per slot (`u32::MAX`: none).
    table: Vec<u32>,
}

#[derive(Clone, Copy, Debug)]
struct Real {
    generation: u32,
    hop: Hop,
    addr: [u8; 4],
    port: u16,
}

/// A tuple: source, destination, source port, destination port.
type Tuple = ([u8; 4], [u8; 4], u16, u16);

/// What a NAT entry holds beyond a DR one.
#[derive(Clone, Copy, Debug)]
struct Nat {
    /// The tuple the packet becomes.
    to: Tuple,
    reply: bool,
    /// The hop towards the client: its MAC, and the director's MAC it sent to.
    hop_mac: [u8; 6],
    own_mac: [u8; 6],
    /// A full-NAT flow (the source is rewritten too).
    full: bool,
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
    nat: Option<Nat>,
}

/// What the program must do with one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub action: u32,
    pub frame: Vec<u8>,
    pub reason: Reason,
}

type FlowKey = ([u8; 4], [u8; 4], u16, u16, u8);
/// Where a first fragment went: its real and generation, under NAT the addresses it was
/// given (source, destination), and for a NAT real's answer the hop back to the client.
#[derive(Clone, Copy, Debug)]
struct Placed {
    real: u32,
    generation: u32,
    nat: Option<([u8; 4], [u8; 4])>,
    back: Option<([u8; 6], [u8; 6])>,
}
type FragKey = ([u8; 4], [u8; 4], u16, u8);

pub struct Model {
    ingress: u32,
    ingress_mac: [u8; 6],
    hops: HashMap<String, Hop>,
    vips: HashSet<[u8; 4]>,
    /// Filter bits of VIPs and of NAT reals' addresses (`vip_filter_bit`'s formula).
    vip_bits: HashSet<u32>,
    nat_real_bits: HashSet<u32>,
    services: HashMap<([u8; 4], u16, u8), Service>,
    reals: HashMap<u32, Real>,
    flows: HashMap<FlowKey, Flow>,
    frags: HashMap<FragKey, Placed>,
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
            vip_bits: HashSet::new(),
            nat_real_bits: HashSet::new(),
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
        self.vip_bits.clear();
        self.nat_real_bits.clear();
        self.services.clear();
        self.reals.clear();
        for s in &plan.services {
            let std::net::IpAddr::V4(vip) = s.address else {
                continue;
            };
            self.vips.insert(vip.octets());
            self.vip_bits.insert(filter_bit(vip.octets()));
            let proto = s.key.proto;
            let method = match s.value.forwarding {
                lb_common::FWD_NAT => Method::Nat,
                lb_common::FWD_FULLNAT => Method::FullNat,
                _ => Method::Dr,
            };
            let pool = (method == Method::FullNat).then(|| {
                let p = plan.pools[s.value.pool as usize];
                let addrs = p.addrs[..p.count as usize]
                    .iter()
                    .map(|a| a.to_ne_bytes())
                    .collect();
                (addrs, p.first_port, p.last_port)
            });
            self.services.insert(
                (vip.octets(), s.port, proto),
                Service {
                    dh: s.value.scheduler == lb_common::SCHED_DH,
                    seed: s.value.hash_seed,
                    expire_nodest: s.value.flags & lb_common::SVC_F_EXPIRE_NODEST != 0,
                    method,
                    pool,
                    table: s.table.clone(),
                },
            );
            for r in &s.reals {
                let hop = self.hops[&r.address.to_string()];
                let std::net::IpAddr::V4(addr) = r.address else {
                    continue;
                };
                if method != Method::Dr {
                    self.nat_real_bits.insert(filter_bit(addr.octets()));
                }
                self.reals.insert(
                    r.index,
                    Real {
                        generation: r.value.generation,
                        hop,
                        addr: addr.octets(),
                        port: r.port,
                    },
                );
            }
        }
    }

    /// Answers a NAT real may send: the keys of the reply entries.
    pub fn replies(&self) -> impl Iterator<Item = &FlowKey> {
        self.flows
            .iter()
            .filter(|(_, f)| f.nat.is_some_and(|n| n.reply))
            .map(|(k, _)| k)
    }

    /// The addresses of the NAT reals.
    pub fn nat_reals(&self) -> Vec<[u8; 4]> {
        let mut v: Vec<[u8; 4]> = self
            .reals
            .values()
            .map(|r| r.addr)
            .filter(|a| self.nat_real_bits.contains(&filter_bit(*a)))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Forward flows the model holds (for choosing ICMP quotes that name one).
    pub fn flows(&self) -> impl Iterator<Item = &FlowKey> {
        self.flows
            .iter()
            .filter(|(_, f)| !f.nat.is_some_and(|n| n.reply))
            .map(|(k, _)| k)
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
                    | Reason::PassIcmpNoFlow
                    | Reason::PassReplyNoFlow => XDP_PASS,
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
        // Not for a VIP is decided on the destination alone (docs/ARCHITECTURE.md),
        // unless the source is a NAT real's: then it may be an answer.
        let (src, dst) = (quad(&f[26..]), quad(&f[30..]));
        if !self.vips.contains(&dst) {
            if self.nat_real_bits.contains(&filter_bit(src)) {
                return self.answer(f);
            }
            return Err(Reason::PassNotVip);
        }
        let ihl = usize::from(f[14] & 0x0f) * 4;
        let total = usize::from(be16(&f[16..]));
        if f[14] >> 4 != 4 || ihl < 20 || total < ihl || 14 + total > f.len() {
            return Err(Reason::PassIpMalformed);
        }
        let end = 14 + total;
        self.kernel_checks(f, ihl)?;
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
            let Placed {
                real,
                generation,
                nat,
                ..
            } = *self
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
            let mut out = f.to_vec();
            check_mtu(f, real.hop)?;
            if let Some((s, d)) = nat {
                rewrite_addresses(&mut out, s, d);
            }
            return Ok(self.send(out, real.hop));
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
        // A NAT flow that ended: its twin goes once the packet is scheduled afresh.
        let mut stale = None;
        let hit = match self.flows.get(&key).copied() {
            None => {
                if service.is_some() {
                    self.event(Event::CtMiss);
                }
                None
            }
            // A reply entry under a client's key cannot be made (see main.rs).
            Some(flow) if flow.nat.is_some_and(|n| n.reply) => return Err(Reason::PassNotVip),
            Some(flow) => match next_state(flow.state, flags) {
                None => {
                    self.event(Event::CtReused);
                    stale = flow.nat;
                    None
                }
                Some(state) => {
                    self.event(Event::CtHit);
                    self.set_state(key, state);
                    Some(Flow { state, ..flow })
                }
            },
        };
        let (index, real, flow) = match hit {
            Some(flow) => match self.reals.get(&flow.real).copied() {
                Some(r) if r.generation == flow.generation => {
                    if let Some(nat) = flow.nat {
                        let (mac, own) = (quad6(&f[6..]), quad6(&f[..6]));
                        if (mac, own) != (nat.hop_mac, nat.own_mac) {
                            self.event(Event::HopMoved);
                            let twin = self.twin(key, nat);
                            for k in std::iter::once(key).chain(twin) {
                                if let Some(Flow { nat: Some(n), .. }) = self.flows.get_mut(&k) {
                                    n.hop_mac = mac;
                                    n.own_mac = own;
                                }
                            }
                        }
                    }
                    (flow.real, r, flow)
                }
                // A VIP removed since is not ours, whatever its entries say.
                _ if !self.vips.contains(&dst) => return Err(Reason::PassNotVip),
                _ => {
                    // The service's expire_nodest_conn when the entry was made.
                    if flow.expire_nodest {
                        self.flows.remove(&key);
                        if let Some(nat) = flow.nat
                            && let Some(twin) = self.twin(key, nat)
                        {
                            self.flows.remove(&twin);
                        }
                        self.event(Event::CtNodestExpired);
                    }
                    return Err(Reason::DropRealRemoved);
                }
            },
            None => {
                let service = service.ok_or(Reason::PassVipNoService)?;
                if let Some(nat) = stale
                    && let Some(twin) = self.twin(key, nat)
                {
                    self.flows.remove(&twin);
                }
                let by = if service.dh { dst } else { src };
                let mut addr = [0u8; 16];
                addr[..4].copy_from_slice(&by);
                let slot = murmur3_32(&addr, service.seed) as usize % service.table.len();
                let index = service.table[slot];
                let real = *self.reals.get(&index).ok_or(Reason::DropNoReal)?;
                if tcp && flags & 0x12 != 0x02 {
                    self.event(Event::CtMidstreamMiss);
                }
                let mut flow = Flow {
                    real: index,
                    generation: real.generation,
                    state: first_state(tcp, flags),
                    expire_nodest: service.expire_nodest,
                    nat: None,
                };
                if service.method != Method::Dr {
                    let hop = (quad6(&f[6..]), quad6(&f[..6]));
                    flow.nat = Some(self.open(&service, key, real, flow, hop)?);
                }
                self.flows.insert(key, flow);
                self.event(Event::CtInsert);
                (index, real, flow)
            }
        };
        let nat = flow.nat.map(|n| n.to);
        if more {
            self.frags.insert(
                (src, dst, id, proto),
                Placed {
                    real: index,
                    generation: real.generation,
                    nat: nat.map(|t| (t.0, t.1)),
                    back: None,
                },
            );
            self.event(Event::FragFirst);
        }
        check_mtu(f, real.hop)?;
        let mut out = f.to_vec();
        if let Some(to) = nat {
            translate(&mut out, to);
        }
        Ok(self.send(out, real.hop))
    }

    /// The checks the kernel would make on a datagram it receives: its MAC, a martian
    /// source, the header checksum.
    fn kernel_checks(&self, f: &[u8], ihl: usize) -> Result<(), Reason> {
        let src = quad(&f[26..]);
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
        Ok(())
    }

    /// The key of the other entry of the NAT flow under `key`, if that entry is still
    /// this flow's (its translation leads back to `key`): another flow may hold it.
    fn twin(&self, key: FlowKey, nat: Nat) -> Option<FlowKey> {
        let other = peer(nat.to, key.4);
        let f = self.flows.get(&other)?;
        f.nat
            .is_some_and(|n| peer(n.to, key.4) == key)
            .then_some(other)
    }

    /// Sets a flow's state, and its twin's under NAT.
    fn set_state(&mut self, key: FlowKey, state: State) {
        let Some(flow) = self.flows.get_mut(&key) else {
            return;
        };
        flow.state = state;
        if let Some(nat) = flow.nat
            && let Some(twin) = self.twin(key, nat)
            && let Some(twin) = self.flows.get_mut(&twin)
        {
            twin.state = state;
        }
    }

    /// A NAT flow's first packet: its reply entry (full-NAT: at the first free source in
    /// the documented sequence), and what its forward entry holds.
    fn open(
        &mut self,
        service: &Service,
        key: FlowKey,
        real: Real,
        flow: Flow,
        hop: ([u8; 6], [u8; 6]),
    ) -> Result<Nat, Reason> {
        let (src, dst, sport, dport, proto) = key;
        let reply = Flow {
            nat: Some(Nat {
                to: (dst, src, dport, sport),
                reply: true,
                hop_mac: hop.0,
                own_mac: hop.1,
                full: service.method == Method::FullNat,
            }),
            ..flow
        };
        let to = match &service.pool {
            None => (src, real.addr, sport, real.port),
            Some((addrs, first, last)) => {
                let mut data = Vec::new();
                data.extend_from_slice(&src);
                data.extend_from_slice(&dst);
                data.extend_from_slice(&dport.to_be_bytes());
                data.extend_from_slice(&sport.to_be_bytes());
                data.extend_from_slice(&[proto, 0, 0, 0]);
                let hash = murmur3_32(&data, service.seed);
                let range = u32::from(last - first) + 1;
                let count = addrs.len() as u32;
                let mut offset = hash.rotate_left(16) % range;
                let mut found = None;
                // docs/FULLNAT.md: 32 tries.
                for i in 0..32u32 {
                    let addr = addrs[((hash % count + i) % count) as usize];
                    let to = (addr, real.addr, first + offset as u16, real.port);
                    // Free, or held by this flow's own reply entry.
                    let own = self.flows.get(&peer(to, proto)).is_some_and(|f| {
                        f.nat
                            .is_some_and(|n| n.reply && n.to == (dst, src, dport, sport))
                    });
                    if own || !self.flows.contains_key(&peer(to, proto)) {
                        found = Some(to);
                        break;
                    }
                    self.event(Event::SnatRetry);
                    let mut d = Vec::new();
                    d.extend_from_slice(&hash.to_le_bytes());
                    d.extend_from_slice(&(i + 1).to_le_bytes());
                    d.extend_from_slice(&[0; 8]);
                    offset = murmur3_32(&d, service.seed) % range;
                }
                found.ok_or(Reason::DropSnatExhausted)?
            }
        };
        self.flows.insert(peer(to, proto), reply);
        self.event(Event::CtInsert);
        Ok(Nat {
            to,
            reply: false,
            hop_mac: hop.0,
            own_mac: hop.1,
            full: service.method == Method::FullNat,
        })
    }

    /// A packet to an address that is not a VIP from one whose filter bit a NAT real's
    /// address sets: an answer to a NAT flow, or the kernel's business.
    fn answer(&mut self, f: &[u8]) -> Result<Outcome, Reason> {
        let ihl = usize::from(f[14] & 0x0f) * 4;
        let total = usize::from(be16(&f[16..]));
        if f[14] >> 4 != 4 || ihl < 20 || total < ihl || 14 + total > f.len() {
            return Err(Reason::PassNotVip);
        }
        let end = 14 + total;
        let (src, dst) = (quad(&f[26..]), quad(&f[30..]));
        let (ttl, proto) = (f[22], f[23]);
        let frag = be16(&f[20..]);
        let l4 = 14 + ihl;
        if proto == 1 {
            return self.icmp_from_real(f, l4, end, frag & 0x3fff != 0, ttl);
        }
        if proto != 6 && proto != 17 {
            return Err(Reason::PassNotVip);
        }
        let id = be16(&f[18..]);
        if frag & 0x1fff != 0 {
            // A later fragment of an answer follows its first back to the client.
            let placed = match self.frags.get(&(src, dst, id, proto)) {
                Some(p) if p.back.is_some() => *p,
                _ => return Err(Reason::PassReplyNoFlow),
            };
            self.event(Event::FragFollowed);
            self.kernel_checks(f, ihl)?;
            if ttl <= 1 {
                return Err(Reason::DropTtlExceeded);
            }
            let (Some((s, d)), Some((hop_mac, own_mac))) = (placed.nat, placed.back) else {
                return Err(Reason::DropInternal);
            };
            let mut out = f.to_vec();
            rewrite_addresses(&mut out, s, d);
            out[..6].copy_from_slice(&hop_mac);
            out[6..12].copy_from_slice(&own_mac);
            decrement_ttl(&mut out);
            return Ok(Outcome {
                action: XDP_TX,
                frame: out,
                reason: Reason::ForwardTx,
            });
        }
        let tcp = proto == 6;
        if l4 + if tcp { 20 } else { 8 } > end {
            return Err(Reason::PassNotVip);
        }
        let key = (src, dst, be16(&f[l4..]), be16(&f[l4 + 2..]), proto);
        let flow = match self.flows.get(&key) {
            Some(flow) if flow.nat.is_some_and(|n| n.reply) => *flow,
            _ => return Err(Reason::PassReplyNoFlow),
        };
        self.kernel_checks(f, ihl)?;
        if ttl <= 1 {
            return Err(Reason::DropTtlExceeded);
        }
        self.event(Event::CtReplyHit);
        let flags = if tcp { f[l4 + 13] } else { 0 };
        let state = next_state_reply(flow.state, flags);
        self.set_state(key, state);
        let nat = flow.nat.ok_or(Reason::DropInternal)?;
        if frag & 0x2000 != 0 {
            self.frags.insert(
                (src, dst, id, proto),
                Placed {
                    real: flow.real,
                    generation: flow.generation,
                    nat: Some((nat.to.0, nat.to.1)),
                    back: Some((nat.hop_mac, nat.own_mac)),
                },
            );
            self.event(Event::FragFirst);
        }
        let mut out = f.to_vec();
        translate(&mut out, nat.to);
        Ok(self.back_to_client(out, nat))
    }

    /// An ICMP error from a NAT real about a flow: to the client, translated.
    fn icmp_from_real(
        &mut self,
        f: &[u8],
        l4: usize,
        end: usize,
        fragment: bool,
        ttl: u8,
    ) -> Result<Outcome, Reason> {
        let key = quoted_flow(f, l4, end, fragment).map_err(|_| Reason::PassNotVip)?;
        let flow = match self.flows.get(&key) {
            Some(flow) if flow.nat.is_some_and(|n| n.reply) && key.1 == quad(&f[30..]) => *flow,
            _ => return Err(Reason::PassReplyNoFlow),
        };
        self.kernel_checks(f, usize::from(f[14] & 0x0f) * 4)?;
        if ttl <= 1 {
            return Err(Reason::DropTtlExceeded);
        }
        let nat = flow.nat.ok_or(Reason::DropInternal)?;
        let mut out = f.to_vec();
        translate_icmp(&mut out, l4, nat.to, nat.to.0);
        self.event(Event::IcmpToClient);
        Ok(self.back_to_client(out, nat))
    }

    /// TTL − 1 and the hop the client's frames came by (in this rig: the ingress).
    fn back_to_client(&self, mut out: Vec<u8>, nat: Nat) -> Outcome {
        out[..6].copy_from_slice(&nat.hop_mac);
        out[6..12].copy_from_slice(&nat.own_mac);
        decrement_ttl(&mut out);
        Outcome {
            action: XDP_TX,
            frame: out,
            reason: Reason::ForwardTx,
        }
    }

    /// ICMP to a VIP: an error quoting a tracked flow's reply, sent to that VIP, goes to
    /// the flow's real (translated under NAT).
    fn icmp(
        &mut self,
        f: &[u8],
        l4: usize,
        end: usize,
        fragment: bool,
        ttl: u8,
        dst: [u8; 4],
    ) -> Result<Outcome, Reason> {
        let key = quoted_flow(f, l4, end, fragment)?;
        if key.1 != dst {
            return Err(Reason::PassIcmpNoFlow);
        }
        let flow = match self.flows.get(&key) {
            Some(flow) if !flow.nat.is_some_and(|n| n.reply) => *flow,
            _ => return Err(Reason::PassIcmpNoFlow),
        };
        let real = match self.reals.get(&flow.real) {
            Some(r) if r.generation == flow.generation => *r,
            _ => return Err(Reason::PassIcmpNoFlow),
        };
        if ttl <= 1 {
            return Err(Reason::DropTtlExceeded);
        }
        check_mtu(f, real.hop)?;
        let mut out = f.to_vec();
        if let Some(nat) = flow.nat {
            let outer_src = if nat.full { nat.to.0 } else { quad(&f[26..]) };
            translate_icmp(&mut out, l4, nat.to, outer_src);
        }
        let out = self.send(out, real.hop);
        self.event(Event::IcmpToReal);
        Ok(out)
    }

    /// To a real: MACs of its next hop, TTL − 1 with the checksum patched as
    /// `ip_decrease_ttl` does; out of the ingress interface or redirected.
    fn send(&self, mut out: Vec<u8>, hop: Hop) -> Outcome {
        out[..6].copy_from_slice(&hop.dmac);
        out[6..12].copy_from_slice(&hop.smac);
        decrement_ttl(&mut out);
        let (action, reason) = if hop.ifindex == self.ingress {
            (XDP_TX, Reason::ForwardTx)
        } else {
            (XDP_REDIRECT, Reason::ForwardRedirect)
        };
        Outcome {
            action,
            frame: out,
            reason,
        }
    }
}

/// A datagram larger than the MTU towards the real is refused before anything changes.
fn check_mtu(f: &[u8], hop: Hop) -> Result<(), Reason> {
    if u32::from(be16(&f[16..])) > hop.mtu {
        return Err(Reason::DropFragNeeded);
    }
    Ok(())
}

fn quad6(b: &[u8]) -> [u8; 6] {
    [b[0], b[1], b[2], b[3], b[4], b[5]]
}

/// The entry of the other direction: the translated tuple, reversed.
fn peer(to: Tuple, proto: u8) -> FlowKey {
    (to.1, to.0, to.3, to.2, proto)
}

/// `vip_filter_bit`: the address (as a little-endian word of its bytes) times
/// 0x9e3779b1, top 16 bits.
fn filter_bit(a: [u8; 4]) -> u32 {
    u32::from_le_bytes(a).wrapping_mul(0x9e37_79b1) >> 16
}

/// The key an ICMP error's quote names: the quoted datagram reversed. `Err` as the
/// program's `quoted_flow`: not an error about a flow it could know.
fn quoted_flow(f: &[u8], l4: usize, end: usize, fragment: bool) -> Result<FlowKey, Reason> {
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
    let (a, b) = (quad(&f[inner + 12..]), quad(&f[inner + 16..]));
    let ports = &f[inner + inner_ihl..];
    Ok((b, a, be16(&ports[2..]), be16(ports), inner_proto))
}

/// RFC 1624 eq. 3 on 16-bit words: the checksum `check` after the words `old` became
/// `new`.
fn patch(check: u16, old: &[u16], new: &[u16]) -> u16 {
    let mut sum = u32::from(!check);
    for &w in old {
        sum += u32::from(!w);
    }
    for &w in new {
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn words(a: [u8; 4]) -> [u16; 2] {
    [be16(&a), be16(&a[2..])]
}

fn put16(b: &mut [u8], v: u16) {
    b[..2].copy_from_slice(&v.to_be_bytes());
}

/// Rewrites the IPv4 header's addresses (with its checksum) of frame `out`.
fn rewrite_addresses(out: &mut [u8], src: [u8; 4], dst: [u8; 4]) {
    let (os, od) = (quad(&out[26..]), quad(&out[30..]));
    let old = [words(os), words(od)].concat();
    let new = [words(src), words(dst)].concat();
    let check = patch(be16(&out[24..]), &old, &new);
    out[26..30].copy_from_slice(&src);
    out[30..34].copy_from_slice(&dst);
    put16(&mut out[24..], check);
}

/// A TCP or UDP datagram (or first fragment) becomes `to`: addresses, ports, the IP
/// checksum and the TCP/UDP one (a zero UDP checksum stays zero; a computed zero is sent
/// as 0xffff).
fn translate(out: &mut [u8], to: Tuple) {
    let ihl = usize::from(out[14] & 0x0f) * 4;
    let l4 = 14 + ihl;
    let (os, od) = (quad(&out[26..]), quad(&out[30..]));
    let (sp, dp) = (be16(&out[l4..]), be16(&out[l4 + 2..]));
    rewrite_addresses(out, to.0, to.1);
    put16(&mut out[l4..], to.2);
    put16(&mut out[l4 + 2..], to.3);
    let tcp = out[23] == 6;
    let at = l4 + if tcp { 16 } else { 6 };
    let check = be16(&out[at..]);
    if !tcp && check == 0 {
        return;
    }
    let old = [words(os), words(od), [sp, dp]].concat();
    let new = [words(to.0), words(to.1), [to.2, to.3]].concat();
    let mut c = patch(check, &old, &new);
    if !tcp && c == 0 {
        c = 0xffff;
    }
    put16(&mut out[at..], c);
}

/// An ICMP error about a NAT flow whose entry translates to `to`: the quote becomes the
/// datagram the receiver sent (`to` reversed; inner IP checksum patched), the ICMP
/// checksum follows, and the outer header goes from `outer_src` to `to`'s destination.
fn translate_icmp(out: &mut [u8], l4: usize, to: Tuple, outer_src: [u8; 4]) {
    let inner = l4 + 8;
    let ihl = usize::from(out[inner] & 0x0f) * 4;
    let (os, od) = (quad(&out[inner + 12..]), quad(&out[inner + 16..]));
    let (sp, dp) = (be16(&out[inner + ihl..]), be16(&out[inner + ihl + 2..]));
    let old_check = be16(&out[inner + 10..]);
    let new_check = patch(
        old_check,
        &[words(os), words(od)].concat(),
        &[words(to.1), words(to.0)].concat(),
    );
    out[inner + 12..inner + 16].copy_from_slice(&to.1);
    out[inner + 16..inner + 20].copy_from_slice(&to.0);
    put16(&mut out[inner + 10..], new_check);
    put16(&mut out[inner + ihl..], to.3);
    put16(&mut out[inner + ihl + 2..], to.2);
    let old = [&words(os)[..], &words(od), &[sp, dp, old_check]].concat();
    let new = [&words(to.1)[..], &words(to.0), &[to.3, to.2, new_check]].concat();
    let icmp = patch(be16(&out[l4 + 2..]), &old, &new);
    put16(&mut out[l4 + 2..], icmp);
    rewrite_addresses(out, outer_src, to.1);
}

/// TTL − 1 with the header checksum patched as `ip_decrease_ttl` does.
fn decrement_ttl(out: &mut [u8]) {
    out[22] -= 1;
    let check = u32::from(be16(&out[24..])) + 0x0100;
    let check = (check + u32::from(check >= 0xffff)) as u16;
    out[24..26].copy_from_slice(&check.to_be_bytes());
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

/// The real's flags on a NAT flow: FIN and RST close, nothing else moves the state (the
/// client's ACK establishes).
fn next_state_reply(state: State, flags: u8) -> State {
    match state {
        State::Udp => State::Udp,
        _ if flags & 4 != 0 => State::Close,
        _ if flags & 1 != 0 => State::Fin,
        s => s,
    }
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
