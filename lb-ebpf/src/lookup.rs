//! Virtual address and virtual service lookup.

use lb_common::{
    AddrWords, FAMILY_IPV4, ServiceKey, ServiceValue, VIP_FILTER_WORDS, VipKey, reply_filter_bit,
    vip_filter_bit,
};

use crate::maps::{REPLY_FILTER, SERVICES, VIP_FILTER, VIPS};

/// Whether `addr` (IPv4) may be a virtual address: one array read. A `false` is
/// certain; a `true` is confirmed by [`is_vip`] or [`service`].
#[inline(always)]
pub fn maybe_vip(addr: &AddrWords) -> bool {
    let bit = vip_filter_bit(addr[0]);
    match VIP_FILTER.get((bit >> 6) & (VIP_FILTER_WORDS - 1)) {
        Some(word) => *word & (1u64 << (bit & 63)) != 0,
        None => false,
    }
}

/// Whether `addr` (IPv4) may be a NAT real's: one array read; `false` is certain.
#[inline(always)]
pub fn maybe_nat_real(addr: &AddrWords) -> bool {
    let bit = reply_filter_bit(addr[0]);
    match REPLY_FILTER.get((bit >> 6) & (VIP_FILTER_WORDS - 1)) {
        Some(word) => *word & (1u64 << (bit & 63)) != 0,
        None => false,
    }
}

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
pub fn service(addr: &AddrWords, port: u16, proto: u8) -> Option<ServiceValue> {
    let key = ServiceKey {
        addr: *addr,
        port,
        proto,
        family: FAMILY_IPV4,
    };
    // SAFETY: the value is copied out at once; the daemon replaces values whole.
    unsafe { SERVICES.get(key) }.copied()
}
