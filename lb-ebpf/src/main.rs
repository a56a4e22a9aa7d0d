//! The xdpvs XDP program: the packet path of the director.
//!
//! Stages (one module each): `parse` (Ethernet, IPv4, ports) → `lookup` (virtual address
//! filter, virtual service) → `hygiene` (what the kernel would refuse) → `conntrack`
//! (the flow's entry) or `schedule` (flow hash → slot → real server) for a new flow →
//! `rewrite` (next hop, TTL, MACs) → `stats`; `icmp` and `fragment` place ICMP errors
//! and fragments on their flows' reals; `time_exceeded` answers a TTL that would expire. Each stage returns the next stage's input or a
//! [`Reason`]; only [`xdpvs`] turns the outcome into an XDP action.
#![no_std]
#![no_main]

mod conntrack;
mod fragment;
mod hygiene;
mod icmp;
mod lookup;
mod maps;
mod parse;
mod rewrite;
mod runtime;
mod schedule;
mod stats;
mod time_exceeded;
mod window;

use aya_ebpf::{macros::xdp, programs::XdpContext};
use lb_common::{
    IPPROTO_TCP, IPPROTO_UDP, RealServer,
    conntrack::{first_state, flow_key_v4},
    event::Event,
    reason::{Action, Reason},
};

use crate::{conntrack::Lookup, maps::REALS};

const IPPROTO_ICMP: u8 = 1;

/// How a packet that goes to a real server leaves the director.
pub enum Verdict {
    /// Out of the ingress interface.
    Tx,
    /// Out of the interface with this index.
    Redirect(u32),
}

#[xdp]
pub fn xdpvs(ctx: XdpContext) -> u32 {
    let reason = match try_forward(&ctx) {
        Ok(Verdict::Tx) => Reason::ForwardTx,
        Ok(Verdict::Redirect(ifindex)) => {
            stats::count_reason(Reason::ForwardRedirect);
            // SAFETY: a plain helper call; flags 0 is the only defined value.
            return unsafe { aya_ebpf::helpers::bpf_redirect(ifindex, 0) } as u32;
        }
        Err(reason) => reason,
    };
    stats::count_reason(reason);
    match reason.action() {
        Action::Pass => aya_ebpf::bindings::xdp_action::XDP_PASS,
        Action::Drop => aya_ebpf::bindings::xdp_action::XDP_DROP,
        Action::Tx => aya_ebpf::bindings::xdp_action::XDP_TX,
        // Redirects return above with the helper's verdict.
        Action::Redirect => aya_ebpf::bindings::xdp_action::XDP_ABORTED,
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
fn try_forward(ctx: &XdpContext) -> Result<Verdict, Reason> {
    let l3 = parse::ethernet(ctx)?;
    let dst = parse::ipv4_destination(ctx, l3)?;
    if !lookup::maybe_vip(&dst) {
        return Err(Reason::PassNotVip);
    }
    let ip = parse::ipv4(ctx, l3).map_err(|r| {
        if lookup::is_vip(&dst) {
            r
        } else {
            Reason::PassNotVip
        }
    })?;
    // The filter may let through an address that is not a VIP: the kernel judges those.
    hygiene::check(ctx, &ip).map_err(|r| vip_or_not(&ip, r))?;
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
    let found = conntrack::lookup(&key, l4.flags, now);
    let (index, real, service_id) = match found {
        Lookup::Hit {
            real: index,
            real_gen,
            service,
            expire_nodest,
        } => match real(index) {
            Some(r) if r.generation == real_gen => (index, r, service),
            // A VIP removed since (its filter bit kept by a collision) is not ours.
            _ if !lookup::is_vip(&ip.dst) => return Err(Reason::PassNotVip),
            _ => return Err(conntrack::orphaned(&key, expire_nodest)),
        },
        Lookup::Miss | Lookup::Stale => {
            let Some(service) = lookup::service(&ip.dst, l4.dport, ip.proto) else {
                return Err(vip_or_not(&ip, Reason::PassVipNoService));
            };
            if matches!(found, Lookup::Miss) {
                stats::count_event(Event::CtMiss);
            }
            let index = schedule::pick(&service, &ip)?;
            let r = real(index).ok_or(Reason::DropInternal)?;
            let is_tcp = ip.proto == IPPROTO_TCP;
            if is_tcp && l4.flags & 0x12 != 0x02 {
                stats::count_event(Event::CtMidstreamMiss);
            }
            let state = first_state(is_tcp, l4.flags);
            conntrack::insert(&key, &service, index, r.generation, state, now);
            (index, r, service.id)
        }
    };
    if ip.more_fragments {
        fragment::remember(&ip, index, real.generation, service_id, now);
    }
    let verdict = rewrite::direct_route(ctx, &ip, &real)?;
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    stats::count_service(service_id, bytes);
    stats::count_real(index, bytes);
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
    let verdict = rewrite::direct_route(ctx, ip, &real)?;
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    stats::count_service(placed.service, bytes);
    stats::count_real(placed.real, bytes);
    Ok(verdict)
}

/// An ICMP message to a VIP: an error about a tracked flow goes to the flow's real;
/// anything else is the director's own business.
#[inline(always)]
fn icmp_error(ctx: &XdpContext, ip: &parse::Ipv4Meta) -> Result<Verdict, Reason> {
    let key = icmp::quoted_flow(ctx, ip).map_err(|r| vip_or_not(ip, r))?;
    // The error is about a reply the real sent from the VIP, so it is addressed to it.
    if key.dst != ip.dst[0] {
        return Err(vip_or_not(ip, Reason::PassIcmpNoFlow));
    }
    let Some(flow) = conntrack::peek(&key) else {
        return Err(vip_or_not(ip, Reason::PassIcmpNoFlow));
    };
    let real = match real(flow.real) {
        Some(r) if r.generation == flow.real_gen => r,
        _ => return Err(Reason::PassIcmpNoFlow),
    };
    if ip.ttl <= 1 {
        return Err(Reason::DropTtlExceeded);
    }
    let verdict = rewrite::direct_route(ctx, ip, &real)?;
    stats::count_event(Event::IcmpToReal);
    stats::count_real(flow.real, (ctx.data_end() - ctx.data()) as u64);
    Ok(verdict)
}
