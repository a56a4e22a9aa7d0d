//! The two-arm rig for NAT and full-NAT: clients behind a router on one side of the
//! director, reals on a switched segment on the other, as in an LVS-NAT install.
//!
//! ```text
//!   client 203.0.113.77 (+ .100-.149)            reals 198.51.100.(11+i)
//!      | far0: MTU `path_mtu` on the router's side     |
//!   router 203.0.113.1 / 192.0.2.254             [switch: br0]
//!      |                                                |
//!   director eth0 192.0.2.1, VIP 192.0.2.100     eth1 198.51.100.1 and .2 (SNAT pool)
//!            xdpvs on eth0 and eth1
//! ```
//! Under NAT the reals' default route is the director; under full-NAT they have none,
//! so an answer can only go to a pool address. Every sender computes its own checksums
//! (`tx off`): veth leaves them partial, and a frame the director rewrites in XDP
//! would carry a wrong one. The director's veth peers run `bench_pass`, as veth only
//! receives XDP_TX and redirected frames on a peer that runs XDP.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    time::Duration,
};

use crate::{
    netns::{Netns, unique_prefix},
    rig::{Daemon, Scratch, attach_pass, start_daemon},
};

pub const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 77);
pub const ROUTER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
/// The SNAT pool: the director's addresses on the reals' segment.
pub const POOL: [Ipv4Addr; 2] = [
    Ipv4Addr::new(198, 51, 100, 1),
    Ipv4Addr::new(198, 51, 100, 2),
];

/// How the reals route their answers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum RealsRoute {
    /// Default route through the director (NAT).
    ViaDirector,
    /// Only their own segment (full-NAT: answers can only go to pool addresses).
    SegmentOnly,
}

pub struct NatRig {
    pub prefix: String,
    pub client: Netns,
    pub router: Netns,
    pub director: Netns,
    pub switch: Netns,
    pub reals: Vec<Netns>,
    _passes: Vec<aya::Ebpf>,
    scratch: Scratch,
}

/// The address of real `i` (0-based).
pub fn real_address(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, 11 + i as u8)
}

/// The client's source addresses: its own and 50 more on the same link.
pub fn client_sources() -> Vec<IpAddr> {
    std::iter::once(CLIENT)
        .chain((100..150).map(|h| Ipv4Addr::new(203, 0, 113, h)))
        .map(IpAddr::from)
        .collect()
}

impl NatRig {
    /// Builds the rig with `reals` real servers and this MTU on the router's side of
    /// the client's link.
    pub fn new(reals: usize, route: RealsRoute, path_mtu: u32) -> NatRig {
        crate::require_root();
        let prefix = unique_prefix();
        let client = Netns::create(&format!("{prefix}-cl"));
        let router = Netns::create(&format!("{prefix}-rt"));
        let director = Netns::create(&format!("{prefix}-dir"));
        let switch = Netns::create(&format!("{prefix}-sw"));

        router.ip(&format!(
            "link add far0 mtu {path_mtu} type veth peer name eth0 netns {}",
            client.name()
        ));
        router.ip("addr add 203.0.113.1/24 dev far0");
        router.ip("link set far0 up");
        client.ip("link set eth0 up");
        for source in client_sources() {
            client.ip(&format!("addr add {source}/24 dev eth0"));
        }
        client.ip("route add default via 203.0.113.1");
        client.exec("ethtool", &["-K", "eth0", "tx", "off"]);

        director.ip(&format!(
            "link add eth0 type veth peer name eth0 netns {}",
            router.name()
        ));
        router.ip(&format!("addr add {ROUTER}/24 dev eth0"));
        router.ip("link set eth0 up");
        router.exec("ethtool", &["-K", "eth0", "tx", "off"]);
        router.sysctl("net/ipv4/ip_forward", "1");
        director.ip("addr add 192.0.2.1/24 dev eth0");
        director.ip(&format!("addr add {VIP}/32 dev eth0"));
        director.ip("link set eth0 up");
        director.ip(&format!("route add 203.0.113.0/24 via {ROUTER}"));
        director.sysctl("net/ipv4/ip_forward", "0");

        switch.ip("link add br0 type bridge");
        switch.ip("link set br0 up");
        switch.ip(&format!(
            "link add dir type veth peer name eth1 netns {}",
            director.name()
        ));
        switch.ip("link set dir master br0 up");
        for pool in POOL {
            director.ip(&format!("addr add {pool}/24 dev eth1"));
        }
        director.ip("link set eth1 up");
        let passes = vec![attach_pass(&router, "eth0"), attach_pass(&switch, "dir")];

        let mut real_ns = Vec::new();
        for i in 0..reals {
            let ns = Netns::create(&format!("{prefix}-r{i}"));
            switch.ip(&format!(
                "link add r{i} type veth peer name eth0 netns {}",
                ns.name()
            ));
            switch.ip(&format!("link set r{i} master br0 up"));
            ns.ip("link set eth0 up");
            ns.ip(&format!("addr add {}/24 dev eth0", real_address(i)));
            ns.exec("ethtool", &["-K", "eth0", "tx", "off"]);
            if route == RealsRoute::ViaDirector {
                ns.ip("route add default via 198.51.100.1");
            }
            real_ns.push(ns);
        }
        let scratch = Scratch::new(&prefix);
        NatRig {
            prefix,
            client,
            router,
            director,
            switch,
            reals: real_ns,
            _passes: passes,
            scratch,
        }
    }

    /// Writes a configuration file for the daemon and returns its path.
    pub fn write_config(&self, yaml: &str) -> PathBuf {
        self.scratch.write_config(yaml)
    }

    /// Starts `xdpvs daemon` in the director's namespace.
    pub fn start_daemon(&self, config: &std::path::Path, limit: Duration) -> (Daemon, bool) {
        start_daemon(&self.director, config, limit)
    }
}

/// A configuration with a TCP service on VIP:80 and a UDP one on VIP:53, by `method`
/// (`nat` or `fullnat`), over `reals` reals listening on 8080 and 5353.
pub fn config(method: &str, reals: &[(usize, u32)]) -> String {
    let list = |port: u16| {
        reals
            .iter()
            .map(|&(i, w)| {
                format!(
                    "      - {{address: {}, port: {port}, weight: {w}}}",
                    real_address(i)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    format!(
        "director:\n  interfaces: [eth0, eth1]\n  hash_seed: 1\n  snat_pool: {{addresses: \
         [{}, {}]}}\nservices:\n  - name: web\n    address: {VIP}\n    port: 80\n    \
         protocol: tcp\n    scheduler: sh\n    forwarding: {method}\n    reals:\n{}\n  - \
         name: dns\n    address: {VIP}\n    port: 53\n    protocol: udp\n    scheduler: sh\n    \
         forwarding: {method}\n    reals:\n{}\n",
        POOL[0],
        POOL[1],
        list(8080),
        list(5353)
    )
}
