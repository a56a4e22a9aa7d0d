//! Direct routing (LVS `-g`): the IP packet is untouched; the frame is re-addressed to the
//! real server's MAC from the director's own MAC on the interface towards the real.
//!
//! The next hop comes from the kernel's FIB and neighbour table (`bpf_fib_lookup`), so
//! MAC changes, interface moves and routes are followed without the daemon in the loop.
//! The lookup is made as output on the real's interface (`BPF_FIB_LOOKUP_OUTPUT`), so
//! routes through other interfaces are not considered. The kernel still requires IPv4
//! forwarding on that interface (it returns FWD_DISABLED otherwise, output or not); the
//! daemon enables it, see lb-userspace `forwarding`.

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_OUTPUT, bpf_fib_lookup,
    },
    helpers::generated,
    programs::XdpContext,
};
use lb_common::{RealServer, reason::Reason};
use network_types::eth::EthHdr;

use crate::{Verdict, parse::ptr_at_mut};

const AF_INET: u8 = 2;

/// Re-addresses the frame to `real`; the verdict says which interface it leaves by.
#[inline(always)]
pub fn direct_route(ctx: &XdpContext, real: &RealServer, tot_len: u16) -> Result<Verdict, Reason> {
    // SAFETY: bpf_fib_lookup is plain old data; all-zero is its documented initial state.
    let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.ifindex = real.ifindex;
    fib.__bindgen_anon_1.tot_len = tot_len;
    fib.__bindgen_anon_4.ipv4_dst = real.addr[0];
    // SAFETY: `ctx.ctx` is the program's xdp_md and `fib` a live, correctly sized struct.
    let rc = unsafe {
        generated::bpf_fib_lookup(
            ctx.ctx as *mut _,
            &mut fib,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            BPF_FIB_LOOKUP_OUTPUT,
        )
    };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {}
        BPF_FIB_LKUP_RET_NO_NEIGH => return Err(Reason::DropNoNeighbour),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => return Err(Reason::DropFragNeeded),
        BPF_FIB_LKUP_RET_FWD_DISABLED => return Err(Reason::DropForwardingOff),
        _ => return Err(Reason::DropNoRoute),
    }
    let eth = ptr_at_mut::<EthHdr>(ctx, 0).ok_or(Reason::DropInternal)?;
    // SAFETY: `ptr_at_mut` checked the whole header is inside the packet.
    unsafe {
        (*eth).dst_addr = fib.dmac;
        (*eth).src_addr = fib.smac;
    }
    if fib.ifindex == ctx.ingress_ifindex() as u32 {
        Ok(Verdict::Tx)
    } else {
        Ok(Verdict::Redirect(fib.ifindex))
    }
}
