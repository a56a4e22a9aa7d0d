//! The map ABI of the helper object (`xdpvs-bench`, lb-ebpf/src/bench.rs), used by
//! `cargo xtask bench` and the test rigs; the daemon never loads it.
//!
//! One [`Template`] describes a frame: the wrapper program writes it over the packet
//! before every run of the program under test (BPF_PROG_TEST_RUN reuses one buffer), and
//! the traffic generator varies the flow from it frame by frame.

/// Largest frame a template holds.
pub const TEMPLATE_BYTES: usize = 128;

/// `Array<Template>`, one entry: the frame and how to vary it.
pub const TEMPLATE_MAP: &str = "XDPVS_BENCH_TMPL";
/// `ProgramArray`, one entry: the program the wrapper tail-calls.
pub const TARGET_MAP: &str = "XDPVS_BENCH_TARGET";
/// `PerCpuArray<u32>`, one entry: frames made so far (the flow number's source).
pub const COUNTER_MAP: &str = "XDPVS_BENCH_COUNTER";
/// `PerCpuArray<u64>`, one entry: IPv4 TCP/UDP frames the sink dropped.
pub const SINK_MAP: &str = "XDPVS_BENCH_SINK";

/// `LruHashMap<FlowKeyV4, Flow>` with per-CPU LRU lists, as the connection table.
pub const LRU_PERCPU_MAP: &str = "XDPVS_BENCH_LRU_PERCPU";
/// `LruHashMap<FlowKeyV4, Flow>` with one common LRU list.
pub const LRU_COMMON_MAP: &str = "XDPVS_BENCH_LRU_COMMON";

/// Program names in the object.
pub mod programs {
    /// Returns XDP_PASS: the floor of any XDP program.
    pub const PASS: &str = "bench_pass";
    /// Swaps the Ethernet addresses and returns XDP_TX: the floor of a forwarding program,
    /// and the reflector in the forwarding-rate rig.
    pub const MAC_SWAP: &str = "bench_mac_swap";
    /// Restores the template, varies the flow, tail-calls the target.
    pub const WRAPPER: &str = "bench_wrapper";
    /// Restores the template, varies the flow, returns XDP_TX (live-frames generator).
    pub const GENERATOR: &str = "bench_generator";
    /// Counts IPv4 TCP/UDP frames and drops them; passes everything else (ARP).
    pub const SINK: &str = "bench_sink";
    /// Inserts the frame's flow into `LRU_PERCPU_MAP`; XDP_DROP.
    pub const LRU_PERCPU: &str = "bench_lru_percpu";
    /// Inserts the frame's flow into `LRU_COMMON_MAP`; XDP_DROP.
    pub const LRU_COMMON: &str = "bench_lru_common";
}

/// A frame and how to vary its flow. With `flows` = 0 the frame is used as it is;
/// otherwise frame number `c` (from `COUNTER_MAP`) gets flow `n = c % flows`: the byte at
/// `addr_offset` (the last byte of the source address) gets `n & 0xff` added and the
/// 16-bit big-endian port at `port_offset` gets `n >> 8` added, both wrapping, so 2^24
/// consecutive frames are distinct flows. If `ipv4_offset` is not 0, the IPv4 header
/// checksum there is recomputed (a 20-byte header). Offsets count from the frame start.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Template {
    /// Bytes of `bytes` in use; the packet must have exactly this length.
    pub len: u32,
    pub flows: u32,
    pub addr_offset: u16,
    pub port_offset: u16,
    pub ipv4_offset: u16,
    pub _pad: u16,
    pub bytes: [u8; TEMPLATE_BYTES],
}

const _: () = assert!(core::mem::size_of::<Template>() == 144);

impl Default for Template {
    fn default() -> Self {
        Template {
            len: 0,
            flows: 0,
            addr_offset: 0,
            port_offset: 0,
            ipv4_offset: 0,
            _pad: 0,
            bytes: [0; TEMPLATE_BYTES],
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), integers only, no padding (size asserted above).
unsafe impl aya::Pod for Template {}
