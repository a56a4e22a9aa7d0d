//! `cargo xtask demo`: a client, a director running xdpvs, and three real servers in
//! network namespaces. Connections from many client addresses go to the VIP; each line
//! shows which real answered; the daemon's counters follow. Everything is removed on exit
//! or Ctrl-C.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use xdpvs_testbed::{
    cleanup,
    rig::{CLIENT, DR_CONFIG, DrRig, VIP, client_sources, real_address},
    traffic::{tcp_ask, tcp_server, udp_ask, udp_server},
};

fn main() {
    cleanup::install_signal_handler();
    println!("xdpvs demo: building the rig (client, director, 3 reals on one L2 segment)");
    let rig = DrRig::new(3);
    let mut servers = Vec::new();
    for (i, ns) in rig.reals.iter().enumerate() {
        let name = format!("real {}", real_address(i));
        servers.push(tcp_server(ns, SocketAddr::new(VIP.into(), 80), &name));
        servers.push(udp_server(ns, SocketAddr::new(VIP.into(), 53), &name));
    }
    let config = rig.write_config(DR_CONFIG);
    println!("\nconfiguration ({}):\n{DR_CONFIG}", config.display());
    let (daemon, ready) = rig.start_daemon(&config, Duration::from_secs(30));
    if !ready {
        let (status, _, stderr) = daemon.wait(Duration::from_secs(5));
        eprintln!(
            "the daemon did not start ({status}):\n{}",
            stderr.join("\n")
        );
        std::process::exit(1);
    }
    println!(
        "{}",
        rig.director
            .ip("link show dev eth0")
            .lines()
            .last()
            .unwrap_or("")
            .trim()
    );

    let sources = client_sources();
    let vip80 = SocketAddr::new(VIP.into(), 80);
    let vip53 = SocketAddr::new(VIP.into(), 53);
    let timeout = Duration::from_secs(3);
    let shown: Vec<_> = sources.iter().step_by(21).copied().collect();
    println!(
        "\nTCP to {vip80}, one connection from each of {} client addresses:",
        shown.len()
    );
    let lines = rig.client.enter(|| {
        shown
            .iter()
            .map(|&src| {
                let answer = tcp_ask(src, vip80, timeout).unwrap_or_else(|e| format!("error: {e}"));
                format!("  {src:>15} -> {answer}")
            })
            .collect::<Vec<_>>()
    });
    lines.iter().for_each(|l| println!("{l}"));

    println!("\nTCP from the same address 5 times (sh keeps it on one real):");
    let same = rig.client.enter(|| {
        (0..5)
            .map(|_| {
                tcp_ask(CLIENT.into(), vip80, timeout).unwrap_or_else(|e| format!("error: {e}"))
            })
            .collect::<Vec<_>>()
    });
    same.iter().for_each(|a| println!("  {CLIENT:>15} -> {a}"));

    println!("\nUDP to {vip53} from 4 addresses:");
    let udp = rig.client.enter(|| {
        sources
            .iter()
            .step_by(127)
            .map(|&src| {
                let a = udp_ask(src, vip53, timeout, 3).unwrap_or_else(|e| format!("error: {e}"));
                format!("  {src:>15} -> {a}")
            })
            .collect::<Vec<_>>()
    });
    udp.iter().for_each(|l| println!("{l}"));

    println!(
        "\nTCP from all {} client addresses (weights 1:2:3):",
        sources.len()
    );
    let counts = rig.client.enter(|| {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for &src in &sources {
            let a = tcp_ask(src, vip80, timeout).unwrap_or_else(|e| format!("error: {e}"));
            *counts.entry(a).or_default() += 1;
        }
        counts
    });
    for (real, n) in &counts {
        println!(
            "  {real:<18} {n:>4} connections ({:.1}%)",
            100.0 * *n as f64 / sources.len() as f64
        );
    }

    let (status, stdout, _) = daemon.stop();
    println!("\nxdpvs counters at shutdown (daemon exit: {status}):");
    for line in stdout.iter().filter(|l| !l.starts_with("xdpvs: ready")) {
        if !line.ends_with("packets=0") {
            println!("  {line}");
        }
    }
    drop(servers);
    drop(rig);
    println!("\nrig removed.");
}
