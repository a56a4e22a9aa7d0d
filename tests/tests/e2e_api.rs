//! End to end, the runtime API and the CLI: every verb against a real daemon in the DR
//! rig, checked in the listing, in the file and in the traffic; every refused request
//! exits non-zero with one line and leaves the file and the maps as they were; a kill -9
//! while changes are applied leaves a file that parses and holds an acknowledged state.

use std::{net::SocketAddr, path::Path, time::Duration};

use lb_userspace::config::Config;
use serde_json::{Value, json};
use xdpvs_testbed::{
    rig::{DrRig, VIP, cli, cli_ok, client_sources, real_banner as banner},
    traffic::{Session, ask_each},
};

const TIMEOUT: Duration = Duration::from_secs(3);

const START: &str = "\
director:
  interfaces: [eth0]
  hash_seed: 1
services:
  - name: web
    address: 192.0.2.100
    port: 80
    protocol: tcp
    scheduler: sh
    reals:
      - {address: 192.0.2.11, weight: 1}
      - {address: 192.0.2.12, weight: 1}
";

/// `xdpvs ARGS` must be refused with exit 2 and one line on standard error naming
/// `says`; the file and the listing must be as they were.
fn refused(config: &Path, args: &[&str], says: &str) {
    let file = std::fs::read_to_string(config).unwrap_or_default();
    let listing = cli_ok(config, &["list", "--json"]);
    let (code, out, err) = cli(config, args);
    assert_eq!(code, 2, "xdpvs {args:?} exit {code}: {out}{err}");
    assert_eq!(
        err.lines().count(),
        1,
        "xdpvs {args:?}: not one line: {err}"
    );
    assert!(err.contains(says), "xdpvs {args:?}: {err} lacks {says:?}");
    assert_eq!(
        std::fs::read_to_string(config).unwrap_or_default(),
        file,
        "{args:?} changed the file"
    );
    assert_eq!(
        cli_ok(config, &["list", "--json"]),
        listing,
        "{args:?} changed the maps"
    );
}

/// The real each of `n` new connections (from distinct sources) reached.
fn new_connections(rig: &DrRig, n: usize) -> Vec<String> {
    let sources: Vec<_> = client_sources().into_iter().take(n).collect();
    rig.client
        .enter(|| ask_each(&sources, SocketAddr::new(VIP.into(), 80), TIMEOUT))
}

fn listing(config: &Path) -> Value {
    serde_json::from_str(&cli_ok(config, &["list", "--json"])).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_verb_round_trips_and_refusals_change_nothing() {
    let rig = DrRig::new(3);
    let _servers = rig.line_servers();
    let config = rig.write_config(START);
    let (daemon, ready) = rig.start_daemon(&config, Duration::from_secs(30));
    assert!(ready, "daemon not ready: {:#?}", daemon.stderr());
    let socket = xdpvs_testbed::rig::socket_of(&config);
    let mode = std::fs::metadata(&socket)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()));
    assert_eq!(mode.ok().map(|m| m & 0o777), Some(0o600));

    // The ipvsadm -Ln layout.
    let list = cli_ok(&config, &["list"]);
    assert!(
        list.contains("Prot LocalAddress:Port Scheduler Flags"),
        "{list}"
    );
    assert!(list.contains("TCP  192.0.2.100:80 sh"), "{list}");
    assert!(
        list.contains("  -> 192.0.2.11:80                Route   1"),
        "{list}"
    );

    // A real added at run time takes new flows; the file says so.
    cli_ok(
        &config,
        &[
            "real",
            "add",
            "-t",
            "192.0.2.100:80",
            "-r",
            "192.0.2.13",
            "-w",
            "2",
        ],
    );
    let text = std::fs::read_to_string(&config).unwrap_or_default();
    assert!(text.contains("192.0.2.13"), "{text}");
    let reached = new_connections(&rig, 60);
    assert!(reached.contains(&banner(2)), "the added real got no flow");

    // Drain: an established session stays, new flows avoid the real; undrain.
    let src = client_sources()
        .into_iter()
        .zip(&reached)
        .find(|(_, r)| **r == banner(0))
        .map(|(s, _)| s)
        .unwrap_or_else(|| panic!("no flow on real 0"));
    let vip80 = SocketAddr::new(VIP.into(), 80);
    let mut session = rig
        .client
        .enter(|| Session::connect(src, vip80, TIMEOUT))
        .unwrap_or_else(|e| panic!("{e}"));
    cli_ok(
        &config,
        &["real", "drain", "-t", "192.0.2.100:80", "-r", "192.0.2.11"],
    );
    assert_eq!(session.ask().ok(), Some(banner(0)), "drain broke a session");
    assert!(
        !new_connections(&rig, 60).contains(&banner(0)),
        "a drained real got a flow"
    );
    let list = cli_ok(&config, &["list"]);
    assert!(list.contains("drained (weight 1)"), "{list}");
    let rate = cli_ok(&config, &["list", "--rate"]);
    assert!(
        rate.contains("CPS") && rate.contains("TCP  192.0.2.100:80"),
        "{rate}"
    );
    let l = listing(&config);
    assert_eq!(l["services"][0]["reals"][0]["active_connections"], 1, "{l}");
    let conns = cli_ok(&config, &["list", "-c"]);
    assert!(
        conns.contains("ESTABLISHED") && conns.contains(&src.to_string()),
        "{conns}"
    );
    cli_ok(
        &config,
        &[
            "real",
            "undrain",
            "-t",
            "192.0.2.100:80",
            "-r",
            "192.0.2.11",
        ],
    );
    assert!(
        new_connections(&rig, 60).contains(&banner(0)),
        "undrained real got no flow"
    );

    cli_ok(
        &config,
        &[
            "real",
            "edit",
            "-t",
            "192.0.2.100:80",
            "-r",
            "192.0.2.13",
            "-w",
            "5",
        ],
    );
    cli_ok(
        &config,
        &["service", "edit", "-t", "192.0.2.100:80", "-s", "dh"],
    );
    cli_ok(
        &config,
        &[
            "service",
            "add",
            "-u",
            "192.0.2.100:53",
            "-s",
            "mh",
            "-b",
            "mh-port,mh-fallback",
            "--table-size",
            "251",
            "-p",
            "600",
            "-M",
            "255.255.255.0",
            "--name",
            "dns",
        ],
    );
    cli_ok(
        &config,
        &["real", "add", "-u", "192.0.2.100:53", "-r", "192.0.2.12"],
    );
    let l = listing(&config);
    assert_eq!(l["services"][0]["scheduler"], "dh", "{l}");
    assert_eq!(l["services"][0]["reals"][2]["weight"], 5, "{l}");
    assert_eq!(l["services"][1]["name"], "dns", "{l}");
    assert_eq!(l["services"][1]["sched_flags"][0], "mh-port", "{l}");
    assert_eq!(l["services"][1]["table_size"], 251, "{l}");
    assert_eq!(l["services"][1]["persistence"]["timeout"], 600, "{l}");
    assert_eq!(
        l["services"][1]["persistence"]["netmask"], "255.255.255.0",
        "{l}"
    );
    assert_eq!(
        session.ask().ok(),
        Some(banner(0)),
        "changes broke a session"
    );

    // Refusals: one line, exit 2, nothing changed.
    refused(
        &config,
        &["real", "add", "-t", "192.0.2.100:80", "-r", "192.0.2.13"],
        "already exists",
    );
    refused(
        &config,
        &[
            "real",
            "edit",
            "-t",
            "192.0.2.100:80",
            "-r",
            "192.0.2.13",
            "-w",
            "70000",
        ],
        "above the maximum weight 65535",
    );
    refused(
        &config,
        &["real", "delete", "-t", "192.0.2.100:80", "-r", "192.0.2.99"],
        "does not exist",
    );
    refused(
        &config,
        &["service", "add", "-t", "192.0.2.100:80"],
        "already exists",
    );
    refused(
        &config,
        &["service", "add", "-t", "192.0.2.100:81", "-s", "lblc"],
        "lblc",
    );
    refused(
        &config,
        &["service", "add", "-t", "127.0.0.1:80"],
        "127.0.0.1",
    );
    // Scheduler options the service cannot take, checked against the whole service.
    refused(
        &config,
        &[
            "service",
            "edit",
            "-t",
            "192.0.2.100:80",
            "--table-size",
            "4096",
        ],
        "not a prime",
    );
    refused(
        &config,
        &[
            "service",
            "edit",
            "-u",
            "192.0.2.100:53",
            "-s",
            "wrr",
            "-b",
            "mh-port",
        ],
        "hash_port",
    );
    refused(
        &config,
        &[
            "service",
            "edit",
            "-t",
            "192.0.2.100:80",
            "-M",
            "255.255.255.0",
        ],
        "needs persistence",
    );
    refused(
        &config,
        &[
            "service",
            "edit",
            "-u",
            "192.0.2.100:53",
            "-M",
            "255.0.255.0",
        ],
        "not a netmask",
    );
    // Another scheduler drops the options the old one had (ipvsadm -E -s does too).
    cli_ok(
        &config,
        &["service", "edit", "-u", "192.0.2.100:53", "-s", "wrr"],
    );
    let l = listing(&config);
    assert_eq!(l["services"][1]["scheduler"], "wrr", "{l}");
    assert_eq!(l["services"][1]["sched_flags"], json!([]), "{l}");
    assert_eq!(l["services"][1]["persistence"]["timeout"], 600, "{l}");
    // Refused by the plan (routes), after the file would have validated.
    refused(
        &config,
        &["real", "add", "-t", "192.0.2.100:80", "-r", "192.0.2.1"],
        "director's own addresses",
    );
    refused(
        &config,
        &["real", "add", "-t", "192.0.2.100:80", "-r", "nope"],
        "ADDRESS",
    );
    let bad = rig.write_scratch("bad.yaml", "garbage: [\n");
    refused(&config, &["restore", bad.to_str().unwrap_or("")], "garbage");
    let resized = rig.write_scratch(
        "resized.yaml",
        &START.replace("director:\n", "limits: {max_flows: 4096}\ndirector:\n"),
    );
    refused(
        &config,
        &["restore", resized.to_str().unwrap_or("")],
        "restart",
    );
    for (method, path, body, says) in [
        (
            "POST",
            "/v1/services/tcp/192.0.2.100/80/reals/192.0.2.14/80",
            "{\"weight\": \"x\"}",
            "request body",
        ),
        ("POST", "/v1/services/sctp/192.0.2.100/80", "", "tcp or udp"),
        ("GET", "/v2/anything", "", "no such API path"),
        ("PATCH", "/v1/services/tcp/192.0.2.100/0", "{}", "port"),
    ] {
        let reply = xdpvs_testbed::rt()
            .block_on(lb_userspace::api::call(&socket, method, path, body.into()))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            (400..500).contains(&reply.status),
            "{method} {path}: {}",
            reply.status
        );
        assert!(
            reply.error().contains(says),
            "{method} {path}: {}",
            reply.error()
        );
    }

    // save / restore round trip, and reload of an edited file.
    let saved = cli_ok(&config, &["save"]);
    assert_eq!(saved, std::fs::read_to_string(&config).unwrap_or_default());
    Config::parse(&saved, Path::new("saved")).unwrap_or_else(|e| panic!("{e}"));
    let saved_file = rig.write_scratch("saved.yaml", &saved);
    cli_ok(&config, &["service", "delete", "-u", "192.0.2.100:53"]);
    assert_eq!(
        listing(&config)["services"].as_array().map(Vec::len),
        Some(1)
    );
    cli_ok(&config, &["restore", saved_file.to_str().unwrap_or("")]);
    assert_eq!(
        listing(&config)["services"].as_array().map(Vec::len),
        Some(2)
    );
    std::fs::write(&config, START).unwrap_or_else(|e| panic!("{e}"));
    cli_ok(&config, &["reload"]);
    // A hand edit not yet reloaded is never overwritten by a change through the API.
    std::fs::write(&config, format!("{START}# edited by hand\n")).unwrap_or_else(|e| panic!("{e}"));
    refused(
        &config,
        &[
            "real",
            "edit",
            "-t",
            "192.0.2.100:80",
            "-r",
            "192.0.2.12",
            "-w",
            "6",
        ],
        "was edited since the daemon read it",
    );
    cli_ok(&config, &["reload"]);
    cli_ok(
        &config,
        &[
            "real",
            "edit",
            "-t",
            "192.0.2.100:80",
            "-r",
            "192.0.2.12",
            "-w",
            "6",
        ],
    );
    assert_eq!(
        listing(&config)["services"][0]["reals"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );

    // An ipvsadm -S dump replaces the services; what it cannot say is named.
    let dump = rig.write_scratch(
        "rules",
        "-A -t 192.0.2.100:80 -s sh\n-a -t 192.0.2.100:80 -r 192.0.2.12:80 -g -w 4\n\
         -A -t 192.0.2.100:443 -s lblc\n-a -t 192.0.2.100:443 -r 192.0.2.11:443 -g -w 1\n",
    );
    let (code, out, err) = cli(
        &config,
        &["import-ipvsadm", dump.to_str().unwrap_or(""), "--apply"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("line 3: scheduler lblc is not available yet"),
        "{err}"
    );
    let l = listing(&config);
    assert_eq!(l["services"].as_array().map(Vec::len), Some(1), "{l}");
    assert_eq!(l["services"][0]["reals"][0]["weight"], 4, "{l}");
    assert_eq!(new_connections(&rig, 10), vec![banner(1); 10]);

    // Completions and the man page come from the same definitions.
    assert!(cli_ok(&config, &["completions", "bash"]).contains("xdpvs"));
    assert!(cli_ok(&config, &["man"]).contains(".TH xdpvs"));

    let (status, _, stderr) = daemon.stop();
    assert!(status.success(), "{stderr:#?}");
    assert!(!socket.exists(), "the socket outlived the daemon");
    let (code, _, err) = cli(&config, &["list"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach the daemon"), "{err}");
}

#[test]
fn a_kill_9_while_changes_are_applied_leaves_an_acknowledged_file() {
    let rig = DrRig::new(2);
    let config = rig.write_config(START);
    let (daemon, ready) = rig.start_daemon(&config, Duration::from_secs(30));
    assert!(ready, "daemon not ready: {:#?}", daemon.stderr());
    let writer = {
        let config = config.clone();
        std::thread::spawn(move || {
            let mut acknowledged = 1;
            for w in 2..10_000u32 {
                let (code, _, _) = cli(
                    &config,
                    &[
                        "real",
                        "edit",
                        "-t",
                        "192.0.2.100:80",
                        "-r",
                        "192.0.2.12",
                        "-w",
                        &w.to_string(),
                    ],
                );
                if code != 0 {
                    break;
                }
                acknowledged = w;
            }
            acknowledged
        })
    };
    std::thread::sleep(Duration::from_millis(800));
    daemon.signal(libc::SIGKILL);
    let _ = daemon.wait(Duration::from_secs(10));
    let acknowledged = writer.join().unwrap_or_else(|_| panic!("writer panicked"));
    assert!(acknowledged > 2, "only {acknowledged} changes acknowledged");
    let text = std::fs::read_to_string(&config).unwrap_or_default();
    let parsed = Config::parse(&text, &config).unwrap_or_else(|e| panic!("torn file: {e}\n{text}"));
    let weight = parsed.services[0].reals[1].weight;
    // The last acknowledged change, or the one in flight when the daemon died.
    assert!(
        weight == acknowledged || weight == acknowledged + 1,
        "file has weight {weight}, last acknowledged {acknowledged}"
    );
    let leftovers: Vec<String> = std::fs::read_dir(config.parent().unwrap_or(Path::new("/")))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(".tmp"))
                .collect()
        })
        .unwrap_or_default();
    eprintln!(
        "{acknowledged} changes acknowledged before kill -9; file weight {weight}; temporary files left: {leftovers:?}"
    );
    // The next daemon starts from that file, and takes the stale socket's place.
    let (daemon, ready) = rig.start_daemon(&config, Duration::from_secs(30));
    assert!(ready, "restart: {:#?}", daemon.stderr());
    let l = listing(&config);
    assert_eq!(l["services"][0]["reals"][1]["weight"], weight, "{l}");
    let (status, _, stderr) = daemon.stop();
    assert!(status.success(), "{stderr:#?}");
}
