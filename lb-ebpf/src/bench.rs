//! The benchmark object (`xdpvs-bench`): baselines, the restore wrapper, a live-frames
//! traffic generator and a counting sink. Never loaded by the daemon; see
//! `lb_common::bench` for the map ABI and docs/PERFORMANCE.md for how they are used.
#![no_std]
#![no_main]

mod runtime;

use aya_ebpf::{
    bindings::{
        BPF_F_NO_COMMON_LRU,
        xdp_action::{XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX},
    },
    helpers::{bpf_get_smp_processor_id, bpf_xdp_store_bytes},
    macros::{map, xdp},
    maps::{Array, LruHashMap, PerCpuArray, ProgramArray},
    programs::XdpContext,
};
use lb_common::{
    IPPROTO_TCP, IPPROTO_UDP,
    bench::{TEMPLATE_BYTES, Template},
    conntrack::{Flow, FlowKeyV4, STATE_TCP_SYN},
};

#[map(name = "XDPVS_BENCH_TMPL")]
static TEMPLATE: Array<Template> = Array::with_max_entries(1, 0);

#[map(name = "XDPVS_BENCH_TARGET")]
static TARGET: ProgramArray = ProgramArray::with_max_entries(1, 0);

#[map(name = "XDPVS_BENCH_COUNTER")]
static COUNTER: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "XDPVS_BENCH_SINK")]
static SINK: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The connection table's kind (per-CPU LRU lists); the bench sizes it at load.
#[map(name = "XDPVS_BENCH_LRU_PERCPU")]
static LRU_PERCPU: LruHashMap<FlowKeyV4, Flow> =
    LruHashMap::with_max_entries(256, BPF_F_NO_COMMON_LRU);

/// The same with one LRU list shared by all CPUs.
#[map(name = "XDPVS_BENCH_LRU_COMMON")]
static LRU_COMMON: LruHashMap<FlowKeyV4, Flow> = LruHashMap::with_max_entries(256, 0);

const ETH_P_IPV4: [u8; 2] = [0x08, 0x00];

/// Inserts the frame's flow (tagged with the CPU, so CPUs never share a key) into the
/// per-CPU-lists LRU map; XDP_DROP, or XDP_ABORTED if the insert failed.
#[xdp]
pub fn bench_lru_percpu(ctx: XdpContext) -> u32 {
    lru_insert(&ctx, &LRU_PERCPU)
}

/// As `bench_lru_percpu`, into the common-list LRU map.
#[xdp]
pub fn bench_lru_common(ctx: XdpContext) -> u32 {
    lru_insert(&ctx, &LRU_COMMON)
}

#[inline(always)]
fn lru_insert(ctx: &XdpContext, map: &LruHashMap<FlowKeyV4, Flow>) -> u32 {
    let Some(h) = at::<[u8; 38]>(ctx, 0) else {
        return XDP_ABORTED;
    };
    // SAFETY: `at` checked the bytes are inside the packet.
    let h = unsafe { *h };
    // SAFETY: a helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() } as u8;
    let key = FlowKeyV4 {
        src: u32::from_ne_bytes([h[26], h[27], h[28], h[29]]),
        dst: u32::from_ne_bytes([h[30], h[31], h[32], h[33]]),
        sport: u16::from_ne_bytes([h[34], h[35]]),
        dport: u16::from_ne_bytes([h[36], h[37]]),
        proto: h[23],
        _pad: [cpu, 0, 0],
    };
    let flow = Flow {
        real: 0,
        real_gen: 0,
        last_seen: 0,
        state: STATE_TCP_SYN,
        flags: 0,
        service: 0,
        ..Flow::default()
    };
    match map.insert(key, flow, 0) {
        Ok(()) => XDP_DROP,
        Err(_) => XDP_ABORTED,
    }
}

#[xdp]
pub fn bench_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

#[xdp]
pub fn bench_mac_swap(ctx: XdpContext) -> u32 {
    let Some(eth) = at::<[u8; 12]>(&ctx, 0) else {
        return XDP_DROP;
    };
    // SAFETY: `at` checked the 12 bytes are inside the packet.
    unsafe {
        let mut macs = *eth;
        let (dst, src) = macs.split_at_mut(6);
        dst.swap_with_slice(src);
        *eth = macs;
    }
    XDP_TX
}

/// Writes the template over the packet, varies the flow, and tail-calls `TARGET[0]`.
/// XDP_ABORTED if the packet and template lengths differ or the tail call fails.
#[xdp]
pub fn bench_wrapper(ctx: XdpContext) -> u32 {
    if restore(&ctx).is_none() {
        return XDP_ABORTED;
    }
    // SAFETY: a tail call with our own context; it returns only if it failed.
    unsafe { TARGET.tail_call(&ctx, 0) };
    XDP_ABORTED
}

/// Live-frames generator: writes the template over the frame (the kernel recycles pages
/// as the last receiver left them, e.g. after a DNAT), varies the flow, sends it with
/// XDP_TX.
#[xdp]
pub fn bench_generator(ctx: XdpContext) -> u32 {
    match restore(&ctx) {
        Some(()) => XDP_TX,
        None => XDP_ABORTED,
    }
}

/// Writes the template over the packet and applies the flow variation.
#[inline(always)]
fn restore(ctx: &XdpContext) -> Option<()> {
    let t = TEMPLATE.get(0)?;
    let len = t.len as usize;
    if len == 0 || len > TEMPLATE_BYTES || ctx.data_end() - ctx.data() != len {
        return None;
    }
    // SAFETY: the helper bounds-checks the packet; the source is the map value, which
    // holds at least `len` bytes (checked above).
    let stored = unsafe { bpf_xdp_store_bytes(ctx.ctx, 0, t.bytes.as_ptr() as *mut _, len as u32) };
    if stored != 0 {
        return None;
    }
    vary(ctx, t)
}

/// Counts and drops IPv4 TCP/UDP frames; passes the rest (ARP) to the stack.
#[xdp]
pub fn bench_sink(ctx: XdpContext) -> u32 {
    let Some(head) = at::<[u8; 24]>(&ctx, 0) else {
        return XDP_PASS;
    };
    // SAFETY: `at` checked the bytes are inside the packet.
    let head = unsafe { *head };
    if head[12..14] != ETH_P_IPV4 {
        return XDP_PASS;
    }
    if (head[23] == IPPROTO_TCP || head[23] == IPPROTO_UDP)
        && let Some(n) = SINK.get_ptr_mut(0)
    {
        // SAFETY: this CPU's slot of a per-CPU map.
        unsafe { *n += 1 };
    }
    XDP_DROP
}

/// Applies the template's flow variation for the next frame number (see `Template`).
#[inline(always)]
fn vary(ctx: &XdpContext, t: &Template) -> Option<()> {
    if t.flows == 0 {
        return Some(());
    }
    let counter = COUNTER.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot of a per-CPU map.
    let c = unsafe {
        let c = *counter;
        *counter = c.wrapping_add(1);
        c
    };
    let n = c % t.flows;
    let addr_offset = usize::from(t.addr_offset);
    let base = *t.bytes.get(addr_offset)?;
    // Two bytes ending at the one to change: the verifier does not follow a one-byte
    // bounds check in the form LLVM emits for it (`p >= end`).
    let addr = at::<[u8; 2]>(ctx, addr_offset.checked_sub(1)?)?;
    // SAFETY: `at` checked both bytes are inside the packet.
    unsafe { (*addr)[1] = base.wrapping_add(n as u8) };
    let port_offset = usize::from(t.port_offset);
    let hi = *t.bytes.get(port_offset)?;
    let lo = *t.bytes.get(port_offset + 1)?;
    let port = u16::from_be_bytes([hi, lo]).wrapping_add((n >> 8) as u16);
    let p = at::<[u8; 2]>(ctx, port_offset)?;
    // SAFETY: as above.
    unsafe { *p = port.to_be_bytes() };
    if t.ipv4_offset != 0 {
        ipv4_checksum(ctx, usize::from(t.ipv4_offset))?;
    }
    Some(())
}

/// Recomputes the checksum of the 20-byte IPv4 header at `offset`.
#[inline(always)]
fn ipv4_checksum(ctx: &XdpContext, offset: usize) -> Option<()> {
    let h = at::<[u8; 20]>(ctx, offset)?;
    // SAFETY: `at` checked the header is inside the packet.
    let mut header = unsafe { *h };
    header[10] = 0;
    header[11] = 0;
    let mut sum = 0u32;
    for pair in header.chunks_exact(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    let checksum = !(sum as u16);
    header[10..12].copy_from_slice(&checksum.to_be_bytes());
    // SAFETY: as above.
    unsafe { *h = header };
    Some(())
}

/// A pointer to a `T` at `offset` (≤ `TEMPLATE_BYTES`) bytes into the packet, if all of
/// it is inside.
#[inline(always)]
fn at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    // Bounded, so the verifier can follow a variable offset (at most 0xffff in all).
    if offset > TEMPLATE_BYTES {
        return None;
    }
    let p = ctx.data() + offset;
    if p + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some(p as *mut T)
}
