//! xdpvs: the director daemon and its command line. Modules follow what an operator
//! thinks about: `config` (the file), `document` (the file as runtime changes edit it),
//! `scheduler` (scheduling tables), `plan` (what the maps must hold, with ids and indices
//! kept across reloads and restarts), `nexthop` (routes, neighbours and links towards the
//! reals, through rtnetlink), `host` (the one host setting xdpvs changes), `pins` (the
//! data path pinned on bpffs, checked and adopted), `dataplane` (the only code that
//! touches the XDP program and its maps), `stats` (counter reports and listings), `api`
//! (the Unix-socket API), `cli` (the `xdpvs` command line) and `daemon` (the running
//! director).

pub mod api;
pub mod batch;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod document;
pub mod health;
pub mod host;
pub mod import;
pub mod metrics;
pub mod nexthop;
pub mod pins;
pub mod plan;
pub mod scheduler;
pub mod slow_start;
pub mod stats;
pub mod tables;

/// The helper object built from lb-ebpf/src/bench.rs (baselines, restore wrapper,
/// traffic generator, sink) for `cargo xtask bench` and the test rigs, which attach its
/// `bench_pass` to veth peers. The daemon never loads it; map names and program names are
/// in `lb_common::bench`.
pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdpvs-bench.bpf.o"));
