//! Virtual address and virtual service lookup.

use lb_common::{AddrWords, FAMILY_IPV4, ServiceKey, ServiceValue, VipKey, reason::Reason};

use crate::maps::{SERVICES, VIPS};

/// Whether `addr` (IPv4) is one of the director's virtual addresses.
#[inline(always)]
pub fn is_vip(addr: &AddrWords) -> bool {
    let key = VipKey {
        addr: *addr,
        family: FAMILY_IPV4 as u32,
    };
    // SAFETY: the value is only tested for presence, never read after a concurrent delete.
    unsafe { VIPS.get(key) }.is_some()
}

/// The virtual service for (VIP, port, protocol).
#[inline(always)]
pub fn service(addr: &AddrWords, port: u16, proto: u8) -> Result<ServiceValue, Reason> {
    let key = ServiceKey {
        addr: *addr,
        port,
        proto,
        family: FAMILY_IPV4,
    };
    // SAFETY: the value is copied out at once; the daemon replaces values whole.
    unsafe { SERVICES.get(key) }
        .copied()
        .ok_or(Reason::PassVipNoService)
}
