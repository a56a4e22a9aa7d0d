//! The xdpvs XDP program: the packet path of the director.
//!
//! Stages (one module each): `parse` (Ethernet, IPv4, ports) → `lookup` (virtual address,
//! then virtual service) → `schedule` (flow hash → slot → real server) → `rewrite`
//! (next hop by `bpf_fib_lookup`, MAC rewrite) → `stats`. Each stage returns the next
//! stage's input or a [`Reason`]; only [`xdpvs`] turns the outcome into an XDP action.
#![no_std]
#![no_main]

mod lookup;
mod maps;
mod parse;
mod rewrite;
mod runtime;
mod schedule;
mod stats;

use aya_ebpf::{macros::xdp, programs::XdpContext};
use lb_common::{
    IPPROTO_TCP, IPPROTO_UDP,
    reason::{Action, Reason},
};

/// How a packet that goes to a real server leaves the director.
enum Verdict {
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

#[inline(always)]
fn try_forward(ctx: &XdpContext) -> Result<Verdict, Reason> {
    let l3 = parse::ethernet(ctx)?;
    let ip = parse::ipv4(ctx, l3)?;
    if !lookup::is_vip(&ip.dst) {
        return Err(Reason::PassNotVip);
    }
    if ip.is_fragment {
        return Err(Reason::DropFragment);
    }
    if ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP {
        return Err(Reason::PassVipOtherProto);
    }
    let dport = parse::dst_port(ctx, ip.l4_offset, ip.proto)?;
    let service = lookup::service(&ip.dst, dport, ip.proto)?;
    let (real_index, real) = schedule::pick(service, &ip)?;
    let verdict = rewrite::direct_route(ctx, &real, ip.tot_len)?;
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    stats::count_service(service.id, bytes);
    stats::count_real(real_index, bytes);
    Ok(verdict)
}
