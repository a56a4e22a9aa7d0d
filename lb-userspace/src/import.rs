//! `xdpvs import-ipvsadm`: reads the rules `ipvsadm -S` (or `-Sn`) prints and turns the
//! `-A` (service) and `-a` (real) lines into services of the configuration file, saying
//! for each line what it cannot express rather than guessing.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use serde_json::{Map, Value, json};

/// Schedulers the data path has.
const SCHEDULERS: [&str; 9] = ["rr", "wrr", "lc", "wlc", "sed", "nq", "sh", "dh", "mh"];

/// The services read, and one message per line (or part of one) left out.
#[derive(Debug, Default)]
pub struct Import {
    /// Services as the configuration file writes them, in the dump's order.
    pub services: Vec<Value>,
    /// `line N: what was not imported and why`.
    pub notes: Vec<String>,
}

/// A service's key in the dump: protocol and address as written.
type Key = (String, String);

fn address(text: &str) -> Option<(IpAddr, u16)> {
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Some((a.ip(), a.port()));
    }
    // A port-less address (`-r 192.0.2.11` in a hand-written file): the service's port.
    text.parse::<IpAddr>().ok().map(|a| (a, 0))
}

/// An IPv4 netmask as ipvsadm writes it (`255.255.255.0`, or a prefix length).
fn netmask_of(text: &str) -> Option<String> {
    let bits = match text.parse::<u32>() {
        Ok(len @ 0..=32) => u32::MAX.checked_shl(32 - len).unwrap_or(0),
        Ok(_) => return None,
        Err(_) => u32::from(text.parse::<std::net::Ipv4Addr>().ok()?),
    };
    (bits.leading_ones() + bits.trailing_zeros() == 32)
        .then(|| std::net::Ipv4Addr::from(bits).to_string())
}

/// Reads an `ipvsadm -S` dump.
pub fn ipvsadm(text: &str) -> Import {
    let mut import = Import::default();
    let mut order: Vec<Key> = Vec::new();
    let mut services: BTreeMap<Key, Option<Map<String, Value>>> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut note = |what: String| import.notes.push(format!("line {n}: {what}"));
        let words: Vec<&str> = line.split_whitespace().collect();
        let mut command = None;
        let mut service: Option<(&str, &str)> = None;
        let mut scheduler = None;
        let mut sched_flags = None;
        let mut persistent = None;
        let mut netmask = None;
        let mut real = None;
        let mut method = "dr";
        let mut weight = None;
        let mut i = 0;
        while i < words.len() {
            let value = words.get(i + 1).copied();
            match words[i] {
                "-A" | "--add-service" => command = Some('A'),
                "-a" | "--add-server" => command = Some('a'),
                "-t" | "--tcp-service" => {
                    service = value.map(|v| ("tcp", v));
                    i += 1;
                }
                "-u" | "--udp-service" => {
                    service = value.map(|v| ("udp", v));
                    i += 1;
                }
                "-f" | "--fwmark-service" => {
                    note(format!(
                        "firewall-mark services (-f {}) are not supported; line skipped",
                        value.unwrap_or("")
                    ));
                    command = None;
                    break;
                }
                "--sctp-service" | "--sctp" => {
                    note("SCTP services are not supported; line skipped".into());
                    command = None;
                    break;
                }
                "-s" | "--scheduler" => {
                    scheduler = value;
                    i += 1;
                }
                "-r" | "--real-server" => {
                    real = value;
                    i += 1;
                }
                "-w" | "--weight" => {
                    weight = value.and_then(|v| v.parse::<u32>().ok());
                    if weight.is_none() {
                        note(format!("weight {:?} is not a number", value.unwrap_or("")));
                    }
                    i += 1;
                }
                "-g" | "--gatewaying" => method = "dr",
                "-m" | "--masquerading" => method = "nat",
                "-i" | "--ipip" => method = "tunnel",
                "-p" | "--persistent" => {
                    // `-p` takes an optional timeout.
                    persistent = Some(value.and_then(|v| v.parse::<u32>().ok()));
                    if persistent.flatten().is_some() {
                        i += 1;
                    }
                }
                "-M" | "--netmask" => {
                    netmask = value;
                    i += 1;
                }
                "-b" | "--sched-flags" => {
                    sched_flags = value;
                    i += 1;
                }
                "-x" | "--u-threshold" | "-y" | "--l-threshold" | "--pe" | "-c" | "--tun-type"
                | "--tun-port" | "--tun-nocsum" | "--tun-csum" | "--tun-remcsum" => {
                    note(format!(
                        "{} {} is not expressed; ignored",
                        words[i],
                        value.unwrap_or("")
                    ));
                    i += 1;
                }
                other => note(format!("{other:?} is not an option xdpvs knows; ignored")),
            }
            i += 1;
        }
        let Some(command) = command else {
            if !words
                .iter()
                .any(|w| matches!(*w, "-f" | "--fwmark-service"))
            {
                note("neither -A nor -a; line skipped".into());
            }
            continue;
        };
        let Some((protocol, at)) = service else {
            note("no -t or -u service; line skipped".into());
            continue;
        };
        let key = (protocol.to_owned(), at.to_owned());
        let Some((vip, port)) = address(at).filter(|(_, p)| *p != 0) else {
            note(format!("{at:?} is not ADDRESS:PORT; line skipped"));
            continue;
        };
        if vip.is_ipv6() {
            note(format!(
                "IPv6 service {at} is not supported yet; line skipped"
            ));
            if command == 'A' {
                services.insert(key, None);
            }
            continue;
        }
        match command {
            'A' => {
                if services.contains_key(&key) {
                    note(format!(
                        "service {protocol} {at} is added twice; line skipped"
                    ));
                    continue;
                }
                let scheduler = scheduler.unwrap_or("wlc");
                if !SCHEDULERS.contains(&scheduler) {
                    note(format!(
                        "scheduler {scheduler} is not available yet (this build has {}); \
                         service {protocol} {at} and its reals skipped",
                        SCHEDULERS.join(", ")
                    ));
                    services.insert(key, None);
                    continue;
                }
                let mut s = Map::new();
                s.insert("address".into(), json!(vip.to_string()));
                s.insert("port".into(), json!(port));
                s.insert("protocol".into(), json!(protocol));
                s.insert("scheduler".into(), json!(scheduler));
                if let Some(timeout) = persistent {
                    let mut p = Map::new();
                    if let Some(t) = timeout {
                        p.insert("timeout".into(), json!(t));
                    }
                    match netmask.map(netmask_of) {
                        Some(Some(m)) => {
                            p.insert("netmask".into(), json!(m));
                        }
                        Some(None) => note(format!(
                            "-M {:?} is not a netmask; persistence is per client address",
                            netmask.unwrap_or("")
                        )),
                        None => {}
                    }
                    s.insert("persistence".into(), Value::Object(p));
                } else if netmask.is_some() {
                    note("-M without -p has no effect; ignored".into());
                }
                for flag in sched_flags.into_iter().flat_map(|f| f.split(',')) {
                    match (flag, scheduler) {
                        ("sh-port", "sh") | ("mh-port", "mh") => {
                            s.insert("hash_port".into(), json!(true));
                        }
                        // Reals that are down or at weight 0 hold no table position, so
                        // a client whose real is out is always scheduled to another.
                        ("sh-fallback", "sh") | ("mh-fallback", "mh") => {}
                        _ => note(format!(
                            "scheduler flag {flag:?} does not apply to {scheduler}; ignored"
                        )),
                    }
                }
                s.insert("reals".into(), json!([]));
                order.push(key.clone());
                services.insert(key, Some(s));
            }
            _ => {
                let Some(entry) = services.get_mut(&key) else {
                    note(format!(
                        "real for service {protocol} {at}, which no earlier -A line adds; \
                         line skipped"
                    ));
                    continue;
                };
                let Some(s) = entry else {
                    // Its service was skipped, and said so.
                    continue;
                };
                let Some((address, rport)) = real.and_then(address) else {
                    note(format!(
                        "-r {:?} is not an address; line skipped",
                        real.unwrap_or("")
                    ));
                    continue;
                };
                if method == "tunnel" {
                    note(format!(
                        "real {address} uses IP-in-IP tunnelling (-i), which xdpvs does not \
                         do; line skipped"
                    ));
                    continue;
                }
                // The method is per service in xdpvs, per real in LVS.
                let current = s
                    .get("forwarding")
                    .and_then(Value::as_str)
                    .unwrap_or("dr")
                    .to_owned();
                let has_reals = s
                    .get("reals")
                    .and_then(Value::as_array)
                    .is_some_and(|r| !r.is_empty());
                if has_reals && current != method {
                    note(format!(
                        "real {address} is forwarded by {method} but the service's earlier \
                         reals by {current}; xdpvs has one method per service; line skipped"
                    ));
                    continue;
                }
                if method != "dr" {
                    s.insert("forwarding".into(), json!(method));
                }
                let mut r = Map::new();
                r.insert("address".into(), json!(address.to_string()));
                if rport != 0 && rport != port {
                    r.insert("port".into(), json!(rport));
                }
                r.insert("weight".into(), json!(weight.unwrap_or(1)));
                if let Some(Value::Array(reals)) = s.get_mut("reals") {
                    reals.push(Value::Object(r));
                }
            }
        }
    }
    import.services = order
        .into_iter()
        .filter_map(|k| services.remove(&k).flatten().map(Value::Object))
        .collect();
    import
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dump_becomes_services_and_every_loss_is_named() {
        let dump = "\
-A -t 192.0.2.100:80 -s sh -p 600 -M 255.255.255.0
-a -t 192.0.2.100:80 -r 192.0.2.11:80 -g -w 1
-a -t 192.0.2.100:80 -r 192.0.2.12:80 -g -w 3
-A -u 192.0.2.100:53 -s dh
-a -u 192.0.2.100:53 -r 10.0.0.5:5353 -m -w 2
-a -u 192.0.2.100:53 -r 10.0.0.6:53 -g -w 1
-A -t 192.0.2.101:443 -s lblc
-a -t 192.0.2.101:443 -r 192.0.2.11:443 -g -w 1
-A -f 7 -s rr
-a -t 192.0.2.102:80 -r 192.0.2.11:80 -g -w 1
-A -t 192.0.2.100:22 -s sh
-a -t 192.0.2.100:22 -r 192.0.2.13:22 -i -w 1
-A -t 192.0.2.100:443 -s mh -b mh-port,mh-fallback,sh-port
-A -t 192.0.2.100:8080 -s wrr -p -M 24
";
        let import = ipvsadm(dump);
        assert_eq!(import.services.len(), 5);
        assert_eq!(import.services[3]["hash_port"], true);
        assert_eq!(import.services[4]["scheduler"], "wrr");
        assert!(import.services[4].get("hash_port").is_none());
        assert!(import.services[4]["persistence"].get("timeout").is_none());
        assert_eq!(
            import.services[4]["persistence"]["netmask"],
            "255.255.255.0"
        );
        let web = &import.services[0];
        assert_eq!(web["scheduler"], "sh");
        assert_eq!(web["persistence"]["timeout"], 600);
        assert_eq!(web["persistence"]["netmask"], "255.255.255.0");
        assert_eq!(web["reals"][1]["weight"], 3);
        assert!(web.get("forwarding").is_none());
        let dns = &import.services[1];
        assert_eq!(dns["forwarding"], "nat");
        assert_eq!(dns["reals"][0]["port"], 5353);
        assert_eq!(dns["reals"].as_array().map(Vec::len), Some(1));
        assert_eq!(
            import.services[2]["reals"].as_array().map(Vec::len),
            Some(0)
        );
        let notes = import.notes.join("\n");
        for expected in [
            "line 6: real 10.0.0.6 is forwarded by dr but the service's earlier reals by nat",
            "line 7: scheduler lblc is not available yet",
            "line 9: firewall-mark services (-f 7)",
            "line 10: real for service tcp 192.0.2.102:80, which no earlier -A line adds",
            "line 12: real 192.0.2.13 uses IP-in-IP tunnelling (-i)",
            "line 13: scheduler flag \"sh-port\" does not apply to mh; ignored",
        ] {
            assert!(notes.contains(expected), "{expected:?} not in:\n{notes}");
        }
        // The real of the skipped lblc service is not reported twice.
        assert!(!notes.contains("line 8"), "{notes}");
        assert_eq!(import.notes.len(), 6, "{notes}");
    }
}
