//! xdpvs: the director daemon. Modules follow what an operator thinks about:
//! `config` (the file), `scheduler` (scheduling tables), `plan` (what the maps must hold),
//! `neighbour` (routes and next-hop MACs towards the reals), `forwarding` (the sysctl the
//! next-hop look-up needs), `dataplane` (the only code
//! that touches the XDP program and its maps), `stats` (counter reports) and `daemon`
//! (the running director).

pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod forwarding;
pub mod neighbour;
pub mod plan;
pub mod scheduler;
pub mod stats;
