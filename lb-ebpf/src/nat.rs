//! VS/NAT and full-NAT (LVS `-m`, and the full-NAT of LVS's descendants).
//!
//! A NAT flow's first packet makes two entries: the forward entry, keyed as the client
//! sends, and the reply entry, keyed as the real answers. Each holds the tuple its
//! packets become (`Flow::to`): forward, VIP:port → real:port (and, under full-NAT,
//! client → a pool address and port); reply, the reverse. The reply entry also holds the
//! hop towards the client, learnt from the client's frame, so an answer needs neither a
//! route nor a neighbour look-up. Either direction copies its state and last-seen second
//! to the other when they change, so both expire together.
//!
//! Full-NAT source ports: the flow's hash picks the (address, port) sequence to try, so
//! directors that share a configuration pick alike without talking; a try succeeds when
//! the reply entry can be created (`BPF_NOEXIST`, atomic across CPUs) or the entry there
//! has expired. After `SNAT_TRIES` taken ports the flow is refused and counted, never
//! given a port another live flow holds.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    FWD_FULLNAT, POOL_ADDRS, RealServer, ServiceValue, SnatPool,
    conntrack::{
        FLOW_F_NAT, FLOW_F_REPLY, FLOW_F_SNAT, Flow, FlowKeyV4, SNAT_TRIES, Tuple, peer_key,
    },
    event::Event,
    hash::addr_hash,
    reason::Reason,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    Verdict,
    conntrack::{self, BPF_ANY, BPF_NOEXIST},
    maps::SNAT_POOLS,
    parse::{self, Ipv4Meta, ptr_at_mut},
    rewrite, stats,
};

const IPPROTO_TCP: u8 = 6;
/// Offsets of the checksum in a TCP and in a UDP header.
const TCP_CHECK: usize = 16;
const UDP_CHECK: usize = 6;

/// The hop a client's frame came by.
pub struct Hop {
    pub ifindex: u32,
    /// The MAC it came from (the client, or the router before the director).
    pub mac: [u8; 6],
    /// The director's MAC it was sent to.
    pub own_mac: [u8; 6],
}

/// The hop of the frame being processed.
#[inline(always)]
pub fn hop(ctx: &XdpContext) -> Result<Hop, Reason> {
    let eth = parse::read_at::<EthHdr>(ctx, 0).ok_or(Reason::DropInternal)?;
    Ok(Hop {
        ifindex: ctx.ingress_ifindex() as u32,
        mac: eth.src_addr,
        own_mac: eth.dst_addr,
    })
}

/// Opens a NAT flow scheduled to `real`: the reply entry (with a free source port under
/// full-NAT), then the forward entry, which is returned.
#[inline(always)]
pub fn open(
    key: &FlowKeyV4,
    service: &ServiceValue,
    index: u32,
    real: &RealServer,
    state: u8,
    now: u32,
    hop: &Hop,
) -> Result<Flow, Reason> {
    if !conntrack::admit(now) {
        return Err(Reason::DropInsertRefused);
    }
    let mut forward = conntrack::entry(service, index, real.generation, state, now);
    forward.flags |= FLOW_F_NAT;
    if service.forwarding == FWD_FULLNAT {
        forward.flags |= FLOW_F_SNAT;
    }
    forward.hop_ifindex = hop.ifindex;
    forward.hop_mac = hop.mac;
    forward.hop_own_mac = hop.own_mac;
    let mut reply = forward;
    reply.flags |= FLOW_F_REPLY;
    reply.to = back_to(key);
    forward.to = if service.forwarding == FWD_FULLNAT {
        snat(key, service, real, &reply, now)?
    } else {
        let to = Tuple {
            src: key.src,
            dst: real.addr[0],
            sport: key.sport,
            dport: real.port,
        };
        if !conntrack::store(&peer_key(&to, key.proto), &reply, BPF_ANY) {
            stats::count_event(Event::CtInsertFailed);
        }
        to
    };
    if !conntrack::store(key, &forward, BPF_ANY) {
        stats::count_event(Event::CtInsertFailed);
    }
    Ok(forward)
}

/// A full-NAT source (address, port) no live flow to the same real address and port
/// holds, claimed by creating the flow's reply entry there.
#[inline(always)]
fn snat(
    key: &FlowKeyV4,
    service: &ServiceValue,
    real: &RealServer,
    reply: &Flow,
    now: u32,
) -> Result<Tuple, Reason> {
    let pool: &SnatPool = SNAT_POOLS
        .get(service.pool)
        .ok_or(Reason::DropSnatExhausted)?;
    let count = pool.count;
    // `count` is not checked against `POOL_ADDRS` here: LLVM would then drop the mask
    // below as redundant, and the verifier needs it to bound the index. The daemon
    // writes at most `POOL_ADDRS`.
    if count == 0 || pool.first_port == 0 {
        return Err(Reason::DropSnatExhausted);
    }
    let Some(span) = pool.last_port.checked_sub(pool.first_port) else {
        return Err(Reason::DropSnatExhausted);
    };
    let range = u32::from(span) + 1;
    let ports = (u32::from(key.sport) << 16) | u32::from(key.dport);
    let hash = addr_hash(
        &[key.src, key.dst, ports, u32::from(key.proto)],
        service.hash_seed,
    );
    let first_addr = hash % count;
    let mut offset = hash.rotate_left(16) % range;
    let mut i = 0;
    while i < SNAT_TRIES {
        let slot = ((first_addr + i) % count) as usize & (POOL_ADDRS - 1);
        let to = Tuple {
            src: pool.addrs[slot],
            dst: real.addr[0],
            sport: (pool.first_port + offset as u16).to_be(),
            dport: real.port,
        };
        let reply_key = peer_key(&to, key.proto);
        // A look-up first: a failed insert into a full LRU map costs an eviction, a
        // look-up a tenth of that. The insert still decides, atomically, between CPUs.
        // A source is free, or held by an expired flow, or by this very flow's reply
        // entry (its forward entry was evicted): the flow keeps its source then.
        match conntrack::peek(&reply_key) {
            None if conntrack::store(&reply_key, reply, BPF_NOEXIST) => return Ok(to),
            Some(f)
                if (conntrack::is_expired(&f, now) || f.to == reply.to)
                    && conntrack::store(&reply_key, reply, BPF_ANY) =>
            {
                stats::count_event(Event::SnatReclaimed);
                return Ok(to);
            }
            _ => {}
        }
        stats::count_event(Event::SnatRetry);
        i += 1;
        // The later tries are the flow's hash too, so every director (and a model)
        // tries the same sequence.
        offset = addr_hash(&[hash, i, 0, 0], service.hash_seed) % range;
    }
    Err(Reason::DropSnatExhausted)
}

/// What holds the key of a flow's other entry.
pub enum Twin {
    /// The flow's own other entry (its translation leads back to this entry's key).
    Ours,
    /// Nothing: the entry was evicted.
    Missing,
    /// Another flow's entry: the key went to it after this flow's entry expired or was
    /// evicted.
    Taken,
}

/// The other entry of the flow whose entry under `key` is `flow`, and whether it is
/// still this flow's.
#[inline(always)]
fn twin(key: &FlowKeyV4, flow: &Flow) -> (Twin, Option<*mut Flow>) {
    let Some(entry) = conntrack::entry_mut(&peer_key(&flow.to, key.proto)) else {
        return (Twin::Missing, None);
    };
    // SAFETY: a valid map value for this program run; plain integers.
    let to = unsafe { (*entry).to };
    if peer_key(&to, key.proto) == *key {
        (Twin::Ours, Some(entry))
    } else {
        (Twin::Taken, None)
    }
}

/// Copies a flow's new state and last-seen second to its other entry, if that is still
/// the flow's own; says what holds the other entry's key.
#[inline(always)]
pub fn mirror(key: &FlowKeyV4, flow: &Flow) -> Twin {
    let (status, entry) = twin(key, flow);
    if let Some(entry) = entry {
        // SAFETY: as in `twin`.
        unsafe {
            (*entry).state = flow.state;
            (*entry).last_seen = flow.last_seen;
        }
    }
    status
}

/// The forward entry `flow` (under `key`) lost its reply entry (the LRU evicted it):
/// made again, so the real's next answers find it. A full-NAT source another flow has
/// taken since is not taken back (`BPF_NOEXIST`).
#[inline(always)]
pub fn restore_reply(key: &FlowKeyV4, flow: &Flow) {
    let mut reply = *flow;
    reply.flags |= FLOW_F_REPLY;
    reply.to = back_to(key);
    if conntrack::store(&peer_key(&flow.to, key.proto), &reply, BPF_NOEXIST) {
        stats::count_event(Event::CtReplyRestored);
    }
}

/// What a flow's answers become: the client's tuple, reversed.
#[inline(always)]
fn back_to(key: &FlowKeyV4) -> Tuple {
    Tuple {
        src: key.dst,
        dst: key.src,
        sport: key.dport,
        dport: key.sport,
    }
}

/// The client's frames now come by another hop (a new router MAC, another interface):
/// both entries follow, so the answers do too.
#[inline(always)]
pub fn follow_hop(key: &FlowKeyV4, flow: &Flow, hop: &Hop) {
    let (_, other) = twin(key, flow);
    for entry in [conntrack::entry_mut(key), other].into_iter().flatten() {
        // SAFETY: as in `twin`.
        unsafe {
            (*entry).hop_ifindex = hop.ifindex;
            (*entry).hop_mac = hop.mac;
            (*entry).hop_own_mac = hop.own_mac;
        }
    }
    stats::count_event(Event::HopMoved);
}

/// Whether a forward packet came by the hop its flow's answers take.
#[inline(always)]
pub fn same_hop(flow: &Flow, hop: &Hop) -> bool {
    flow.hop_ifindex == hop.ifindex && flow.hop_mac == hop.mac && flow.hop_own_mac == hop.own_mac
}

/// Drops the other entry of a NAT flow that ended (expired, reused, orphaned), unless
/// another flow holds its key by now.
#[inline(always)]
pub fn close(key: &FlowKeyV4, flow: &Flow) {
    if let (Twin::Ours, _) = twin(key, flow) {
        conntrack::remove(&peer_key(&flow.to, key.proto));
    }
}

/// An answer from the real: rewritten to come from the VIP (and, under full-NAT, to go
/// to the client), and sent back by the hop the client's frames came by.
#[inline(always)]
pub fn to_client(ctx: &XdpContext, ip: &Ipv4Meta, flow: &Flow) -> Result<Verdict, Reason> {
    translate(ctx, ip, &flow.to)?;
    back_by_hop(ctx, ip, flow)
}

/// Sends a (translated) packet out by the flow's client-side hop.
#[inline(always)]
pub fn back_by_hop(ctx: &XdpContext, ip: &Ipv4Meta, flow: &Flow) -> Result<Verdict, Reason> {
    rewrite::decrement_ttl(ctx, ip)?;
    rewrite::set_macs(ctx, flow.hop_mac, flow.hop_own_mac)?;
    if flow.hop_ifindex == ctx.ingress_ifindex() as u32 {
        Ok(Verdict::Tx)
    } else {
        Ok(Verdict::Redirect(flow.hop_ifindex))
    }
}

/// Rewrites a TCP or UDP datagram (or its first fragment) to `to`: addresses, ports, the
/// IP header checksum and the TCP/UDP checksum, incrementally (RFC 1624). A UDP datagram
/// sent without a checksum (zero) keeps none.
#[inline(always)]
pub fn translate(ctx: &XdpContext, ip: &Ipv4Meta, to: &Tuple) -> Result<(), Reason> {
    let addrs = addresses(ctx, ip, to.src, to.dst)?;
    let ports = ptr_at_mut::<[u16; 2]>(ctx, ip.l4_offset).ok_or(Reason::DropInternal)?;
    let is_tcp = ip.proto == IPPROTO_TCP;
    let at = ip.l4_offset + if is_tcp { TCP_CHECK } else { UDP_CHECK };
    let check = ptr_at_mut::<u16>(ctx, at).ok_or(Reason::DropInternal)?;
    // SAFETY: `ptr_at_mut` checked both are inside the packet; unaligned accesses because
    // packet data has no alignment guarantee.
    unsafe {
        let [sport, dport] = ports.read_unaligned();
        ports.write_unaligned([to.sport, to.dport]);
        let old = check.read_unaligned();
        if is_tcp || old != 0 {
            let sum = addrs + diff16(sport, to.sport) + diff16(dport, to.dport);
            let new = adjust(old, sum);
            // A computed UDP checksum of zero is sent as all ones (RFC 768).
            let new = if !is_tcp && new == 0 { 0xffff } else { new };
            check.write_unaligned(new);
        }
    }
    Ok(())
}

/// Rewrites the source and destination addresses and the IP header checksum; returns the
/// checksum difference, which the pseudo-header of a TCP/UDP checksum shares.
#[inline(always)]
pub fn addresses(ctx: &XdpContext, ip: &Ipv4Meta, src: u32, dst: u32) -> Result<u64, Reason> {
    let hdr = ptr_at_mut::<Ipv4Hdr>(ctx, ip.l3_offset).ok_or(Reason::DropInternal)?;
    let sum = diff32(ip.src[0], src) + diff32(ip.dst[0], dst);
    // SAFETY: `ptr_at_mut` checked the fixed header is inside the packet.
    unsafe {
        (*hdr).src_addr = src.to_ne_bytes();
        (*hdr).dst_addr = dst.to_ne_bytes();
        let check = u16::from_ne_bytes((*hdr).check);
        (*hdr).check = adjust(check, sum).to_ne_bytes();
    }
    Ok(sum)
}

/// The ones'-complement change of replacing `old` by `new` (words in memory order).
#[inline(always)]
pub fn diff32(old: u32, new: u32) -> u64 {
    u64::from(!old) + u64::from(new)
}

#[inline(always)]
pub fn diff16(old: u16, new: u16) -> u64 {
    u64::from(!old) + u64::from(new)
}

/// RFC 1624 eq. 3: HC' = ~(~HC + ~m + m').
#[inline(always)]
pub fn adjust(check: u16, sum: u64) -> u16 {
    !parse::fold(u64::from(!check) + sum)
}
