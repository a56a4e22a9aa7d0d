//! The xdpvs XDP program: the packet path of the director.
//!
//! Stages (one module each): `parse` (Ethernet, IPv4, ports) → `lookup` (virtual address
//! filter, virtual service) → `hygiene` (what the kernel would refuse) → `conntrack`
//! (the flow's entry) or `schedule` (flow hash → slot → real server) for a new flow →
//! `nat` (NAT and full-NAT: both entries, translation, the answers' way back) →
//! `rewrite` (next hop, TTL, MACs) → `stats`; `icmp` and `fragment` place ICMP errors
//! and fragments on their flows' reals; `time_exceeded` answers a TTL that would expire. Each stage returns the next stage's input or a
//! [`Reason`]; only [`xdpvs`] turns the outcome into an XDP action.
#![no_std]
#![no_main]
// Atomic adds: core::sync::atomic has no read-modify-write operations for the BPF target.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod conntrack;
mod fragment;
mod hygiene;
mod icmp;
mod lookup;
mod maps;
mod nat;
mod parse;
mod persist;
mod rewrite;
mod runtime;
mod schedule;
mod stats;
mod time_exceeded;
mod window;

use aya_ebpf::{bindings::xdp_md, macros::xdp, programs::XdpContext};
use lb_common::{
    FWD_DR, IPPROTO_TCP, IPPROTO_UDP, RealServer,
    conntrack::{
        FLOW_F_EXPIRE_NODEST, FLOW_F_NAT, FLOW_F_PERSIST, FLOW_F_REPLY, FRAG_F_REPLY, FragValue,
        STATE_TCP_SYN, first_state, flow_key_v4, next_state_reply,
    },
    event::Event,
    reason::{Action, Reason},
};

use crate::{
    conntrack::Lookup,
    maps::{REALS, TX_PORTS},
};

const IPPROTO_ICMP: u8 = 1;

/// How a packet that goes to a real server leaves the director.
pub enum Verdict {
    /// Out of the ingress interface.
    Tx,
    /// Out of the interface with this index.
    Redirect(u32),
    /// Not yet: a new flow of this service id, for `schedule::choose`.
    Schedule(u32),
}

/// An outcome of `to_vip` that asks for a real for a new flow of the service id in its
/// low bits.
const NEED_SCHEDULE: u64 = 1 << 63;

#[xdp]
pub fn xdpvs(ctx: XdpContext) -> u32 {
    let outcome = match dispatch(&ctx) {
        Ok(outcome) => outcome,
        Err(reason) => encode(Err(reason)),
    };
    let reason = Reason::from_code(outcome as u32).unwrap_or(Reason::DropInternal);
    stats::count_reason(reason);
    if reason.action() == Action::Drop {
        trace_drop(&ctx, reason);
    }
    match reason.action() {
        Action::Pass => aya_ebpf::bindings::xdp_action::XDP_PASS,
        Action::Drop => aya_ebpf::bindings::xdp_action::XDP_DROP,
        Action::Tx => aya_ebpf::bindings::xdp_action::XDP_TX,
        Action::Redirect => redirect((outcome >> 32) as u32),
    }
}

/// Traces a dropped packet's reason (`xdpvs daemon --trace`). The daemon loads the program
/// with the log level at 0 unless tracing is asked for; the level is read-only data, so
/// the verifier removes this call's body and tracing costs nothing when off. A function
/// of its own, so its stack is not added to the paths'.
#[inline(never)]
fn trace_drop(ctx: &XdpContext, reason: Reason) {
    aya_log_ebpf::debug!(ctx, "drop {} ({})", reason.name(), reason as u32);
}

/// Sends a packet down the path for its destination: a virtual address's, a NAT real's
/// answers', or none (the kernel's). The two paths are separate BPF functions, so each
/// has the stack to itself.
#[inline(always)]
fn dispatch(ctx: &XdpContext) -> Result<u64, Reason> {
    let l3 = parse::ethernet(ctx)?;
    let dst = parse::ipv4_destination(ctx, l3)?;
    let vip = lookup::maybe_vip(&dst);
    let src = parse::ipv4_source(ctx, l3)?;
    let nat_real = lookup::maybe_nat_real(&src);
    // Only when both filters say yes does the exact VIP look-up decide: a real's answer
    // to a client whose address shares a VIP's filter bit is still an answer.
    if vip && (!nat_real || lookup::is_vip(&dst)) {
        // A new flow takes a second pass: `to_vip` finds the service, `choose` (a
        // function beside it, not inside it: the path's stack is full) picks the real,
        // and `to_vip` runs again with it.
        let outcome = to_vip(ctx.ctx, l3, schedule::UNCHOSEN);
        if outcome & NEED_SCHEDULE == 0 {
            return Ok(outcome);
        }
        let chosen = schedule::choose(outcome as u32);
        return Ok(to_vip(ctx.ctx, l3, chosen));
    }
    if nat_real {
        return Ok(from_real(ctx.ctx, l3));
    }
    Err(Reason::PassNotVip)
}

/// A path's outcome in one register: the reason code, and for a redirect the interface
/// index in the upper half.
#[inline(always)]
fn encode(outcome: Result<Verdict, Reason>) -> u64 {
    match outcome {
        Ok(Verdict::Tx) => Reason::ForwardTx as u64,
        Ok(Verdict::Redirect(ifindex)) => {
            (u64::from(ifindex) << 32) | Reason::ForwardRedirect as u64
        }
        Ok(Verdict::Schedule(service)) => NEED_SCHEDULE | u64::from(service),
        Err(reason) => reason as u64,
    }
}

/// `chosen`: `schedule::UNCHOSEN` on a packet's first pass, else `choose`'s result.
#[inline(never)]
fn to_vip(ctx: *mut xdp_md, l3: usize, chosen: u64) -> u64 {
    encode(try_forward(&XdpContext::new(ctx), l3, chosen))
}

#[inline(never)]
fn from_real(ctx: *mut xdp_md, l3: usize) -> u64 {
    encode(reply(&XdpContext::new(ctx), l3))
}

/// XDP_REDIRECT through the device map when the interface is one the program is attached
/// to (frames are then sent in bulk), else by `bpf_redirect`.
#[inline(always)]
fn redirect(ifindex: u32) -> u32 {
    match TX_PORTS.redirect(ifindex, 0) {
        Ok(action) => action,
        // SAFETY: a plain helper call; flags 0 is the only defined value.
        Err(_) => (unsafe { aya_ebpf::helpers::bpf_redirect(ifindex, 0) }) as u32,
    }
}

/// `Err(pass_not_vip)` for an address the filter let through that is not a VIP after
/// all, else `Err(reason)`.
#[inline(always)]
fn vip_or_not(ip: &parse::Ipv4Meta, reason: Reason) -> Reason {
    if lookup::is_vip(&ip.dst) {
        reason
    } else {
        Reason::PassNotVip
    }
}

/// A real server by index, if it is still configured with this generation.
#[inline(always)]
fn real(index: u32) -> Option<RealServer> {
    // SAFETY: the value is copied out at once; the daemon replaces values whole.
    unsafe { REALS.get(index) }.copied()
}

#[inline(always)]
fn try_forward(ctx: &XdpContext, l3: usize, chosen: u64) -> Result<Verdict, Reason> {
    let dst = parse::ipv4_destination(ctx, l3)?;
    let ip = parse::ipv4(ctx, l3).map_err(|r| {
        if lookup::is_vip(&dst) {
            r
        } else {
            Reason::PassNotVip
        }
    })?;
    // A new flow's second pass (`chosen` is its real) sees the same frame again: what
    // the first pass checked and looked up is not done twice.
    let first_pass = chosen == schedule::UNCHOSEN;
    // The filter may let through an address that is not a VIP: the kernel judges those.
    if first_pass {
        hygiene::check(ctx, &ip).map_err(|r| vip_or_not(&ip, r))?;
    }
    if ip.proto == IPPROTO_ICMP {
        return icmp_error(ctx, &ip);
    }
    if ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP {
        return Err(vip_or_not(&ip, Reason::PassVipOtherProto));
    }
    if ip.frag_offset != 0 {
        return later_fragment(ctx, &ip);
    }
    let l4 = parse::l4(ctx, &ip).map_err(|r| vip_or_not(&ip, r))?;
    if ip.ttl <= 1 {
        return match lookup::service(&ip.dst, l4.dport, ip.proto) {
            Some(_) => Err(time_exceeded::reply(ctx, &ip)),
            None => Err(vip_or_not(&ip, Reason::PassVipNoService)),
        };
    }
    // An established flow is found by its 5-tuple first, as IPVS does: its entry names
    // the real and the service, so the hit path needs no SERVICES look-up.
    let now = conntrack::now();
    let key = flow_key_v4(&ip.src, &ip.dst, l4.sport, l4.dport, ip.proto);
    let mut found = if first_pass {
        conntrack::lookup(&key, l4.flags, now)
    } else {
        Lookup::Miss
    };
    // Once a second (or on a state change) a NAT flow checks its other entry: made again
    // if evicted; if another flow holds its key by now, this entry ends and the packet is
    // scheduled afresh (two flows must never share a translation).
    if let Lookup::Hit {
        flow,
        touched: true,
    } = found
        && flow.flags & (FLOW_F_NAT | FLOW_F_REPLY) == FLOW_F_NAT
    {
        match nat::mirror(&key, &flow) {
            nat::Twin::Ours => {}
            nat::Twin::Missing => nat::restore_reply(&key, &flow),
            nat::Twin::Taken => {
                conntrack::remove(&key);
                stats::count_event(Event::CtTwinTaken);
                found = Lookup::Stale(flow);
            }
        }
    }
    let (real, flow) = match found {
        Lookup::Hit { flow, touched } if flow.flags & FLOW_F_REPLY == 0 => {
            stats::count_event(Event::CtHit);
            if touched && flow.flags & FLOW_F_PERSIST != 0 {
                persist::refresh(flow.service, key.src, flow.real, now);
            }
            match real(flow.real) {
                Some(r) if r.generation == flow.real_gen => {
                    if flow.flags & FLOW_F_NAT != 0 {
                        let hop = nat::hop(ctx)?;
                        if !nat::same_hop(&flow, &hop) {
                            nat::follow_hop(&key, &flow, &hop);
                        }
                    }
                    (r, flow)
                }
                // A VIP removed since (its filter bit kept by a collision) is not ours.
                _ if !lookup::is_vip(&ip.dst) => return Err(Reason::PassNotVip),
                _ => {
                    let expire = flow.flags & FLOW_F_EXPIRE_NODEST != 0;
                    if expire && flow.flags & FLOW_F_NAT != 0 {
                        nat::close(&key, &flow);
                    }
                    return Err(conntrack::orphaned(&key, expire));
                }
            }
        }
        // A reply entry under a client's key cannot be made (pool addresses are not
        // VIPs, and a VIP source is martian): not ours.
        Lookup::Hit { .. } => return Err(Reason::PassNotVip),
        Lookup::Miss | Lookup::Stale(_) => {
            let Some(service) = lookup::service(&ip.dst, l4.dport, ip.proto) else {
                return Err(vip_or_not(&ip, Reason::PassVipNoService));
            };
            if first_pass {
                match &found {
                    Lookup::Stale(old) if old.flags & FLOW_F_NAT != 0 => nat::close(&key, old),
                    Lookup::Miss => stats::count_event(Event::CtMiss),
                    _ => {}
                }
                schedule::remember_flow(ip.src[0], ip.dst[0], l4.sport)?;
                return Ok(Verdict::Schedule(service.id));
            }
            let index = schedule::decode(chosen)?;
            let r = real(index).ok_or(Reason::DropInternal)?;
            let is_tcp = ip.proto == IPPROTO_TCP;
            stats::count_new_flow(service.id, index);
            if is_tcp && l4.flags & 0x12 != 0x02 {
                stats::count_event(Event::CtMidstreamMiss);
            }
            let state = first_state(is_tcp, l4.flags);
            let flow = if service.forwarding == FWD_DR {
                conntrack::insert(&key, &service, index, r.generation, state, now);
                conntrack::entry(&service, index, r.generation, state, now)
            } else {
                nat::open(&key, &service, index, &r, state, now, &nat::hop(ctx)?)?
            };
            (r, flow)
        }
    };
    let nat = flow.flags & FLOW_F_NAT != 0;
    if ip.more_fragments {
        let (src, dst) = if nat {
            (flow.to.src, flow.to.dst)
        } else {
            (0, 0)
        };
        fragment::remember(
            &ip,
            FragValue {
                real: flow.real,
                real_gen: flow.real_gen,
                service: u32::from(flow.service),
                created: now,
                src,
                dst,
                ..FragValue::default()
            },
        );
    }
    // The next hop (and its MTU) is checked before the packet changes.
    let hop = rewrite::next_hop(ctx, &ip, &real)?;
    if nat {
        nat::translate(ctx, &ip, &flow.to)?;
    }
    let verdict = rewrite::send(ctx, &ip, &hop)?;
    stats::count_forward(ctx, u32::from(flow.service), flow.real);
    // A handshake counts once it is on its way (the passive health signal).
    if !first_pass && flow.state == STATE_TCP_SYN {
        stats::count_syn(u32::from(flow.service), flow.real);
    }
    Ok(verdict)
}

/// A packet to an address that is not a VIP from one whose reply-filter bit is set: a
/// NAT real's answer to a tracked flow, or the kernel's business.
#[inline(always)]
fn reply(ctx: &XdpContext, l3: usize) -> Result<Verdict, Reason> {
    let ip = parse::ipv4(ctx, l3).map_err(|_| Reason::PassNotVip)?;
    if ip.proto == IPPROTO_ICMP {
        return icmp_from_real(ctx, &ip);
    }
    if ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP {
        return Err(Reason::PassNotVip);
    }
    if ip.frag_offset != 0 {
        return answer_fragment(ctx, &ip);
    }
    let l4 = parse::l4(ctx, &ip).map_err(|_| Reason::PassNotVip)?;
    let key = flow_key_v4(&ip.src, &ip.dst, l4.sport, l4.dport, ip.proto);
    let now = conntrack::now();
    // The entry is found first (the real's own traffic is the kernel's to judge), and
    // changed only once the packet has passed what the kernel would check.
    let (entry, flow) = match conntrack::find(&key) {
        Some((entry, flow)) if flow.flags & FLOW_F_REPLY != 0 => (entry, flow),
        _ => return Err(Reason::PassReplyNoFlow),
    };
    if conntrack::is_expired(&flow, now) {
        stats::count_event(Event::CtExpired);
        return Err(Reason::PassReplyNoFlow);
    }
    hygiene::check(ctx, &ip)?;
    if ip.ttl <= 1 {
        return Err(Reason::DropTtlExceeded);
    }
    stats::count_event(Event::CtReplyHit);
    let state = next_state_reply(flow.state, l4.flags);
    let (flow, touched) = conntrack::touch(entry, flow, state, now);
    if touched {
        // The forward side deals with a missing or taken twin at its next packet.
        let _ = nat::mirror(&key, &flow);
    }
    if ip.more_fragments {
        fragment::remember(
            &ip,
            FragValue {
                real: flow.real,
                real_gen: flow.real_gen,
                service: u32::from(flow.service),
                created: now,
                src: flow.to.src,
                dst: flow.to.dst,
                flags: FRAG_F_REPLY,
                hop_ifindex: flow.hop_ifindex,
                hop_mac: flow.hop_mac,
                hop_own_mac: flow.hop_own_mac,
            },
        );
    }
    let verdict = nat::to_client(ctx, &ip, &flow)?;
    stats::count_forward(ctx, u32::from(flow.service), flow.real);
    stats::count_answer(flow.real, l4.flags);
    Ok(verdict)
}

/// A fragment after the first: it follows its datagram's first fragment.
#[inline(always)]
fn later_fragment(ctx: &XdpContext, ip: &parse::Ipv4Meta) -> Result<Verdict, Reason> {
    let placed = fragment::follow(ip, conntrack::now()).map_err(|r| vip_or_not(ip, r))?;
    if ip.ttl <= 1 {
        return Err(Reason::DropTtlExceeded);
    }
    let real = match real(placed.real) {
        Some(r) if r.generation == placed.real_gen => r,
        _ => return Err(Reason::DropRealRemoved),
    };
    let hop = rewrite::next_hop(ctx, ip, &real)?;
    if placed.dst != 0 {
        nat::addresses(ctx, ip, placed.src, placed.dst)?;
    }
    let verdict = rewrite::send(ctx, ip, &hop)?;
    stats::count_forward(ctx, placed.service, placed.real);
    Ok(verdict)
}

/// A later fragment of a NAT real's answer: it follows its first fragment back to the
/// client, with the addresses that one was given.
#[inline(always)]
fn answer_fragment(ctx: &XdpContext, ip: &parse::Ipv4Meta) -> Result<Verdict, Reason> {
    let placed = match fragment::follow(ip, conntrack::now()) {
        Ok(placed) if placed.flags & FRAG_F_REPLY != 0 => placed,
        _ => return Err(Reason::PassReplyNoFlow),
    };
    hygiene::check(ctx, ip)?;
    if ip.ttl <= 1 {
        return Err(Reason::DropTtlExceeded);
    }
    nat::addresses(ctx, ip, placed.src, placed.dst)?;
    let hop = rewrite::NextHop {
        dmac: placed.hop_mac,
        smac: placed.hop_own_mac,
        ifindex: placed.hop_ifindex,
    };
    let verdict = rewrite::send(ctx, ip, &hop)?;
    stats::count_forward(ctx, placed.service, placed.real);
    Ok(verdict)
}

/// An ICMP message to a VIP: an error about a tracked flow goes to the flow's real
/// (translated under NAT); anything else is the director's own business.
#[inline(always)]
fn icmp_error(ctx: &XdpContext, ip: &parse::Ipv4Meta) -> Result<Verdict, Reason> {
    let key = icmp::quoted_flow(ctx, ip).map_err(|r| vip_or_not(ip, r))?;
    // The error is about a reply the real sent from the VIP, so it is addressed to it.
    if key.dst != ip.dst[0] {
        return Err(vip_or_not(ip, Reason::PassIcmpNoFlow));
    }
    let flow = match conntrack::peek(&key) {
        Some(flow) if flow.flags & FLOW_F_REPLY == 0 => flow,
        _ => return Err(vip_or_not(ip, Reason::PassIcmpNoFlow)),
    };
    let real = match real(flow.real) {
        Some(r) if r.generation == flow.real_gen => r,
        _ => return Err(Reason::PassIcmpNoFlow),
    };
    if ip.ttl <= 1 {
        return Err(Reason::DropTtlExceeded);
    }
    let hop = rewrite::next_hop(ctx, ip, &real)?;
    if flow.flags & FLOW_F_NAT != 0 {
        icmp::translate(ctx, ip, &flow)?;
    }
    let verdict = rewrite::send(ctx, ip, &hop)?;
    stats::count_event(Event::IcmpToReal);
    stats::count_real(flow.real, (ctx.data_end() - ctx.data()) as u64);
    Ok(verdict)
}

/// An ICMP error from a NAT real (port unreachable, ...) about a flow: translated and
/// sent to the flow's client.
#[inline(always)]
fn icmp_from_real(ctx: &XdpContext, ip: &parse::Ipv4Meta) -> Result<Verdict, Reason> {
    let key = icmp::quoted_flow(ctx, ip).map_err(|_| Reason::PassNotVip)?;
    let flow = match conntrack::peek(&key) {
        Some(flow) if flow.flags & FLOW_F_REPLY != 0 && key.dst == ip.dst[0] => flow,
        _ => return Err(Reason::PassReplyNoFlow),
    };
    hygiene::check(ctx, ip)?;
    if ip.ttl <= 1 {
        return Err(Reason::DropTtlExceeded);
    }
    icmp::translate(ctx, ip, &flow)?;
    let verdict = nat::back_by_hop(ctx, ip, &flow)?;
    stats::count_event(Event::IcmpToClient);
    stats::count_real(flow.real, (ctx.data_end() - ctx.data()) as u64);
    Ok(verdict)
}
