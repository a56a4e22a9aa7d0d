//! The schedulers as the kernel runs them: flows' first packets through BPF_PROG_TEST_RUN,
//! each forwarded frame's destination MAC naming the real the program chose.
//!
//! Clients come from 198.18.0.0/15 (RFC 2544's benchmarking range: 131,072 addresses, so
//! 100,000 flows can each have their own); the frames never leave the test run.

use std::{collections::BTreeMap, net::IpAddr, path::Path};

use lb_common::conntrack::Settings;
use lb_userspace::{
    config::Config,
    dataplane::Dataplane,
    nexthop::Route,
    plan::{self, Plan},
};
use xdpvs_testbed::{
    bench::pin_to_cpu,
    netns::{Netns, ifindex, unique_prefix},
    packet::{self, Ipv4},
};

const XDP_TX: u32 = 3;
const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa0];
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xcc];
/// Reals 192.0.2.11 to 192.0.2.30, each at MAC 02:00:00:00:02:<last octet>.
const REALS: std::ops::RangeInclusive<u8> = 11..=30;
/// Flows per share measurement.
const FLOWS: u32 = 100_000;

/// The director's namespace: `xa0` (192.0.2.1/24) with a permanent neighbour entry for
/// every real.
struct Director {
    ns: Netns,
    xa0: u32,
}

impl Director {
    fn new() -> Director {
        xdpvs_testbed::require_root();
        let ns = Netns::create(&format!("{}-sched", unique_prefix()));
        ns.veth("xa", MAC_A, "192.0.2.1/24");
        for o in REALS {
            ns.permanent_neighbour(&format!("192.0.2.{o}"), [0x02, 0, 0, 0, 2, o], "xa0");
        }
        let xa0 = ifindex(&ns, "xa0");
        Director { ns, xa0 }
    }

    /// The plan of one TCP service on 192.0.2.100:80 with these reals (last octet,
    /// weight) and extra service fields, keeping `previous`'s indices.
    fn plan(&self, fields: &str, reals: &[(u8, u32)], previous: Option<&Plan>) -> Plan {
        let list: Vec<String> = reals
            .iter()
            .map(|(o, w)| format!("{{address: 192.0.2.{o}, weight: {w}}}"))
            .collect();
        let yaml = format!(
            "director: {{interfaces: [xa0], hash_seed: 7}}\nservices:\n  - {{address: \
             192.0.2.100, port: 80, protocol: tcp, {fields}, reals: [{}]}}\n",
            list.join(", ")
        );
        let config =
            Config::parse(&yaml, Path::new("packet_sched.yaml")).unwrap_or_else(|e| panic!("{e}"));
        let xa0 = self.xa0;
        plan::compile(
            &config,
            |_| {
                Ok(Route {
                    ifindex: xa0,
                    gateway: None,
                    local: false,
                })
            },
            previous,
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }
}

/// A fresh data path (empty connection table, cursors at 0) with `plan` applied; call
/// inside the director's namespace.
fn loaded(plan: &Plan) -> Dataplane {
    loaded_with(plan, Default::default())
}

/// [`loaded`] with other map capacities.
fn loaded_with(plan: &Plan, limits: lb_userspace::config::Limits) -> Dataplane {
    let mut dp = Dataplane::load(limits).unwrap_or_else(|e| panic!("{e}"));
    let (hops, ifaces) = xdpvs_testbed::rig::resolve(plan, &["xa0"]);
    dp.set_interfaces(&ifaces).unwrap_or_else(|e| panic!("{e}"));
    dp.set_settings(Settings {
        flood_rate: 0,
        frag_timeout: 30,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    dp.apply(plan, &hops).unwrap_or_else(|e| panic!("{e}"));
    dp
}

/// Client `i`'s address (in 198.18.0.0/15) and port.
fn client(i: u32) -> ([u8; 4], u16) {
    let a = 198u32 << 24 | 18 << 16 | (i & 0x1_ffff);
    (
        a.to_be_bytes(),
        1024 + (i.wrapping_mul(7919) % 60_000) as u16,
    )
}

fn syn(i: u32) -> Vec<u8> {
    let (a, port) = client(i);
    let ip = Ipv4::new(a.into(), [192, 0, 2, 100].into(), 6);
    packet::ethernet(
        MAC_A,
        CLIENT_MAC,
        packet::ETH_P_IPV4,
        &ip.packet(&packet::tcp(port, 80, 0x02)),
    )
}

/// The last octet of the real flow `i`'s first packet went to.
fn real_of(dp: &Dataplane, ingress: u32, i: u32) -> u8 {
    let (action, real) = send(dp, ingress, &syn(i));
    assert_eq!(action, XDP_TX, "flow {i}");
    real
}

/// Flows `range` through a fresh data path: the real each went to.
fn placements(director: &Director, plan: &Plan, range: std::ops::Range<u32>) -> Vec<u8> {
    let dp = loaded(plan);
    let _registered = xdpvs_testbed::rig::attach_pass(&director.ns, "xa0");
    range.map(|i| real_of(&dp, director.xa0, i)).collect()
}

/// The service's scheduling table as the reals' last octets.
fn table_octets(plan: &Plan) -> Vec<u8> {
    let service = &plan.services[0];
    service
        .table
        .iter()
        .map(|&index| {
            service
                .reals
                .iter()
                .find(|r| r.index == index)
                .map_or(0, |r| octet(r.address))
        })
        .collect()
}

fn octet(address: IpAddr) -> u8 {
    match address {
        IpAddr::V4(a) => a.octets()[3],
        IpAddr::V6(a) => a.octets()[15],
    }
}

/// The real the daemon's copy of the hash and table names for flow `i`.
fn predicted(plan: &Plan, i: u32) -> u8 {
    let (a, port) = client(i);
    plan.services[0]
        .real_for_flow(a.into(), port, [192, 0, 2, 100].into())
        .map_or(0, |r| octet(r.address))
}

fn tally(placed: &[u8]) -> BTreeMap<u8, u32> {
    let mut counts = BTreeMap::new();
    for &o in placed {
        *counts.entry(o).or_insert(0) += 1;
    }
    counts
}

/// Every real's share of `placed` is within `points` percentage points of its weight's.
fn assert_shares(what: &str, placed: &[u8], reals: &[(u8, u32)], points: f64) {
    let counts = tally(placed);
    let total_weight: u32 = reals.iter().map(|r| r.1).sum();
    for &(o, w) in reals {
        let got = 100.0 * f64::from(counts.get(&o).copied().unwrap_or(0)) / placed.len() as f64;
        let want = 100.0 * f64::from(w) / f64::from(total_weight);
        assert!(
            (got - want).abs() <= points,
            "{what}: real .{o} (weight {w}) has {got:.2}% of the flows, its weight \
             {want:.2}%: {counts:?}"
        );
    }
    assert!(
        counts.keys().all(|o| reals.iter().any(|r| r.0 == *o)),
        "{what}: a flow went to a real not in the service: {counts:?}"
    );
}

const WEIGHTED: [(u8, u32); 5] = [(11, 1), (12, 2), (13, 3), (14, 4), (15, 0)];

#[test]
fn shares_follow_weights_for_wrr_mh_and_sh() {
    let director = Director::new();
    director.ns.enter(|| {
        pin_to_cpu(0);
        for fields in [
            "scheduler: wrr",
            "scheduler: mh",
            "scheduler: mh, hash_port: true",
            "scheduler: sh",
            "scheduler: sh, table_size: 251",
            "scheduler: sh, table_size: 65537",
        ] {
            let plan = director.plan(fields, &WEIGHTED, None);
            let placed = placements(&director, &plan, 0..FLOWS);
            assert_shares(fields, &placed, &WEIGHTED, 3.0);
            if !fields.contains("wrr") {
                // The kernel's hash and table lookup are the daemon's, flow for flow.
                for (i, &o) in (0..FLOWS).zip(&placed) {
                    assert_eq!(o, predicted(&plan, i), "{fields}: flow {i}");
                }
            }
        }
        // rr ignores weights above zero, as in IPVS.
        let plan = director.plan("scheduler: rr", &WEIGHTED, None);
        let placed = placements(&director, &plan, 0..10_000);
        let even: Vec<(u8, u32)> = WEIGHTED
            .iter()
            .map(|&(o, w)| (o, u32::from(w > 0)))
            .collect();
        assert_shares("rr", &placed, &even, 0.0);
    });
}

#[test]
fn one_cpu_walks_the_ipvs_wrr_sequence_exactly() {
    let director = Director::new();
    director.ns.enter(|| {
        pin_to_cpu(0);
        let plan = director.plan("scheduler: wrr", &WEIGHTED, None);
        let sequence = table_octets(&plan);
        // IPVS's interleaving for weights 1, 2, 3, 4 (gcd 1): pass at weight 4, 3, 2, 1.
        assert_eq!(sequence, [14, 13, 14, 12, 13, 14, 11, 12, 13, 14]);
        let placed = placements(&director, &plan, 0..25);
        let want: Vec<u8> = sequence.iter().cycle().take(25).copied().collect();
        assert_eq!(placed, want);
    });
}

/// Each CPU keeps its own cursor, so over `n` flows a real's count differs from its share
/// by less than its appearances in one sequence, per CPU used (docs/SCHEDULERS.md).
#[test]
fn wrr_over_several_cpus_stays_within_one_sequence_per_cpu() {
    let director = Director::new();
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let plan = director.plan("scheduler: wrr", &WEIGHTED, None);
    let counts = director.ns.enter(|| {
        let dp = loaded(&plan);
        let _registered = xdpvs_testbed::rig::attach_pass(&director.ns, "xa0");
        // Uneven flow counts per CPU, so no CPU ends on a whole sequence.
        let runs: Vec<(usize, std::ops::Range<u32>)> = (0..cpus)
            .map(|cpu| {
                let start = cpu as u32 * 20_000;
                (cpu, start..start + 7_003 + 1_009 * cpu as u32)
            })
            .collect();
        let placed: Vec<u8> = std::thread::scope(|s| {
            let handles: Vec<_> = runs
                .iter()
                .map(|(cpu, range)| {
                    let (dp, director) = (&dp, &director);
                    s.spawn(move || {
                        director.ns.enter(|| {
                            pin_to_cpu(*cpu);
                            range
                                .clone()
                                .map(|i| real_of(dp, director.xa0, i))
                                .collect::<Vec<u8>>()
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });
        (tally(&placed), placed.len())
    });
    let (counts, n) = counts;
    let total_weight: u32 = WEIGHTED.iter().map(|r| r.1).sum();
    for &(o, w) in &WEIGHTED {
        let got = f64::from(counts.get(&o).copied().unwrap_or(0));
        let want = n as f64 * f64::from(w) / f64::from(total_weight);
        assert!(
            (got - want).abs() < f64::from(w) * cpus as f64 + 1e-9 || w == 0 && got == 0.0,
            "real .{o} (weight {w}): {got} flows of {n}, its share {want:.1}, over {cpus} \
             CPUs: {counts:?}"
        );
    }
}

#[test]
fn mh_removing_one_of_ten_reals_moves_few_other_flows() {
    let director = Director::new();
    director.ns.enter(|| {
        pin_to_cpu(0);
        let ten: Vec<(u8, u32)> = (11..=20).map(|o| (o, 1)).collect();
        let before_plan = director.plan("scheduler: mh", &ten, None);
        let before = placements(&director, &before_plan, 0..FLOWS);
        assert_shares("mh, ten reals", &before, &ten, 3.0);
        let nine: Vec<(u8, u32)> = ten.iter().copied().filter(|r| r.0 != 15).collect();
        let after_plan = director.plan("scheduler: mh", &nine, Some(&before_plan));
        let after = placements(&director, &after_plan, 0..FLOWS);
        let (mut stayed_on_others, mut moved) = (0u32, 0u32);
        for (&b, &a) in before.iter().zip(&after) {
            assert_ne!(a, 15, "a flow went to the removed real");
            if b != 15 {
                stayed_on_others += 1;
                if a != b {
                    moved += 1;
                }
            }
        }
        let share = f64::from(moved) / f64::from(stayed_on_others);
        assert!(
            share <= 1.0 / 10.0 + 0.02,
            "{moved} of {stayed_on_others} flows not on the removed real moved ({:.2}%)",
            100.0 * share
        );
    });
}

/// The Maglev table of a fixed configuration, checked in: any change to the hash, the
/// fill order or the weights' treatment shows here (and would move clients between
/// directors running different builds). `XDPVS_BLESS=1` rewrites the files after an
/// intended change.
#[test]
fn maglev_tables_are_the_golden_ones() {
    let director = Director::new();
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden");
    for (size, file) in [(251, "maglev-251.txt"), (4093, "maglev-4093.txt")] {
        let fields = format!("scheduler: mh, table_size: {size}");
        let plan = director.plan(&fields, &WEIGHTED, None);
        let table = table_octets(&plan);
        let mut text = format!(
            "# Maglev table, size {size}: director hash_seed 7; reals 192.0.2.11-15 with \
             weights 1, 2, 3, 4, 0.\n# Each number is the last octet of the real owning \
             the position, 32 positions per line.\n"
        );
        for row in table.chunks(32) {
            let row: Vec<String> = row.iter().map(u8::to_string).collect();
            text.push_str(&row.join(" "));
            text.push('\n');
        }
        let path = golden.join(file);
        if std::env::var_os("XDPVS_BLESS").is_some() {
            std::fs::write(&path, &text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
        let want =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            text == want,
            "the Maglev table of size {size} differs from {}",
            path.display()
        );
    }
}

/// The frame of a TCP packet from `client`:`port` to the web service.
fn tcp_from(client: [u8; 4], port: u16, flags: u8) -> Vec<u8> {
    let ip = Ipv4::new(client.into(), [192, 0, 2, 100].into(), 6);
    packet::ethernet(
        MAC_A,
        CLIENT_MAC,
        packet::ETH_P_IPV4,
        &ip.packet(&packet::tcp(port, 80, flags)),
    )
}

/// The action and, when forwarded, the last octet of the real.
fn send(dp: &Dataplane, ingress: u32, frame: &[u8]) -> (u32, u8) {
    let (action, out) = packet::run(dp.program(), frame, ingress);
    (action, out.get(5).copied().unwrap_or(0))
}

fn events(dp: &Dataplane, plan: &Plan) -> (u64, u64) {
    let snap = dp.snapshot(plan).unwrap_or_else(|e| panic!("{e}"));
    (
        snap.event(lb_common::event::Event::PersistHit),
        snap.event(lb_common::event::Event::PersistNew),
    )
}

/// LVS `-p 300 -M 255.255.255.0` over `rr`, which on its own sends each new flow to the
/// next real: a client's flows from any port, and its /24 neighbours', stay on its real;
/// the template expires after its timeout, is kept alive by its flows' packets, and is
/// not followed to a drained or removed real.
#[test]
fn persistence_holds_a_client_across_ports_and_expires() {
    let director = Director::new();
    director.ns.enter(|| {
        pin_to_cpu(0);
        let three = [(11, 1), (12, 1), (13, 1)];
        let fields = "scheduler: rr, persistence: {timeout: 300, netmask: 255.255.255.0}";
        let plan = director.plan(fields, &three, None);
        let mut dp = loaded(&plan);
        let _registered = xdpvs_testbed::rig::attach_pass(&director.ns, "xa0");
        let ingress = director.xa0;
        let a = [198, 18, 0, 1];
        let (action, kept) = send(&dp, ingress, &tcp_from(a, 1000, 0x02));
        assert_eq!(action, XDP_TX);
        for port in 1001..1020 {
            assert_eq!(send(&dp, ingress, &tcp_from(a, port, 0x02)), (XDP_TX, kept));
        }
        // A neighbour under the mask shares the template; another /24 does not, and rr
        // gives it the next real.
        assert_eq!(
            send(&dp, ingress, &tcp_from([198, 18, 0, 77], 1000, 0x02)).1,
            kept
        );
        let other = send(&dp, ingress, &tcp_from([198, 18, 1, 1], 1000, 0x02)).1;
        assert_ne!(other, kept);
        assert_eq!(events(&dp, &plan), (20, 2));
        let templates = dp.templates().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(templates.len(), 2, "{templates:?}");

        // Aged past its timeout, the template is not followed: rr moves the client on.
        let key = lb_common::conntrack::PersistKeyV4 {
            service: plan.services[0].value.id,
            client: u32::from_ne_bytes([198, 18, 0, 0]),
        };
        let (_, mut template) = *templates
            .iter()
            .find(|(k, _)| *k == key)
            .unwrap_or_else(|| panic!("no template for 198.18.0.0/24: {templates:?}"));
        let now = lb_userspace::stats::coarse_now();
        template.last_seen = now - 301;
        dp.set_template(&key, template)
            .unwrap_or_else(|e| panic!("{e}"));
        let moved = send(&dp, ingress, &tcp_from(a, 2000, 0x02)).1;
        assert_ne!(moved, kept, "an expired template was followed");
        assert_eq!(events(&dp, &plan), (20, 3));
        // An established flow's packets keep the new template alive.
        let fresh = |dp: &Dataplane| {
            dp.templates()
                .unwrap_or_else(|e| panic!("{e}"))
                .into_iter()
                .find(|(k, _)| *k == key)
                .map(|(_, t)| t)
                .unwrap_or_else(|| panic!("template gone"))
        };
        let mut t = fresh(&dp);
        t.last_seen = now - 200;
        dp.set_template(&key, t).unwrap_or_else(|e| panic!("{e}"));
        let flow_key = lb_common::conntrack::flow_key_v4(
            &[u32::from_ne_bytes(a), 0, 0, 0],
            &[u32::from_ne_bytes([192, 0, 2, 100]), 0, 0, 0],
            2000u16.to_be(),
            80u16.to_be(),
            6,
        );
        let mut flow = dp
            .flow(&flow_key)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("no entry for the flow"));
        flow.last_seen = now - 10;
        dp.set_flow(&flow_key, flow)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            send(&dp, ingress, &tcp_from(a, 2000, 0x10)),
            (XDP_TX, moved)
        );
        assert!(
            fresh(&dp).last_seen >= now,
            "a flow's packet did not refresh it"
        );

        // Drained, its real keeps the established flow but the template is not followed.
        let drained: Vec<(u8, u32)> = three
            .iter()
            .map(|&(o, w)| (o, if o == moved { 0 } else { w }))
            .collect();
        let next = director.plan(fields, &drained, Some(&plan));
        let (hops, _) = xdpvs_testbed::rig::resolve(&next, &["xa0"]);
        dp.apply(&next, &hops).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            send(&dp, ingress, &tcp_from(a, 2000, 0x10)),
            (XDP_TX, moved)
        );
        let elsewhere = send(&dp, ingress, &tcp_from(a, 3000, 0x02)).1;
        assert_ne!(elsewhere, moved, "a drained real's template was followed");
        // The new template holds again; removing its real ends it too.
        assert_eq!(send(&dp, ingress, &tcp_from(a, 3001, 0x02)).1, elsewhere);
        let removed: Vec<(u8, u32)> = drained
            .iter()
            .copied()
            .filter(|&(o, _)| o != elsewhere)
            .collect();
        let last = director.plan(fields, &removed, Some(&next));
        let (hops, _) = xdpvs_testbed::rig::resolve(&last, &["xa0"]);
        dp.apply(&last, &hops).unwrap_or_else(|e| panic!("{e}"));
        let after = send(&dp, ingress, &tcp_from(a, 4000, 0x02)).1;
        assert!(
            after != elsewhere && after != moved,
            "went to .{after}: removed .{elsewhere}, drained .{moved}"
        );
    });
}

/// The program's live connection counts of the real with this last octet.
fn conns_of(dp: &Dataplane, plan: &Plan, octet_of_real: u8) -> (u32, u32) {
    let r = plan.services[0]
        .reals
        .iter()
        .find(|r| octet(r.address) == octet_of_real)
        .unwrap_or_else(|| panic!("no real .{octet_of_real}"));
    let c = dp
        .connection_count(r.index)
        .unwrap_or_else(|e| panic!("{e}"));
    (c.active, c.inactive)
}

/// With every real idle, new flows (inactive until established) spread as IPVS's
/// overheads say: `lc` evenly, `wlc` by weight, `sed` (active connections only) all to
/// the heaviest, `nq` all to the first idle real. Each new flow counts at once.
#[test]
fn least_connection_schedulers_follow_ipvs_overheads() {
    let director = Director::new();
    director.ns.enter(|| {
        pin_to_cpu(0);
        let reals = [(11, 1), (12, 3)];
        for (scheduler, want) in [
            ("lc", [200, 200]),
            ("wlc", [100, 300]),
            ("sed", [0, 400]),
            ("nq", [400, 0]),
        ] {
            let plan = director.plan(&format!("scheduler: {scheduler}"), &reals, None);
            let placed = placements(&director, &plan, 0..400);
            let counts = tally(&placed);
            let got = [11, 12].map(|o| counts.get(&o).copied().unwrap_or(0));
            assert_eq!(got, want, "{scheduler}: {counts:?}");
        }
    });
}

/// A real holding many established connections gets no new flows while another real is
/// lighter: the daemon's recount from the connection table (as its one-second loop
/// does) gives the program the counts.
#[test]
fn least_connection_schedulers_send_new_flows_away_from_a_loaded_real() {
    let director = Director::new();
    director.ns.enter(|| {
        pin_to_cpu(0);
        for scheduler in ["lc", "wlc", "sed", "nq"] {
            let fields = format!("scheduler: {scheduler}");
            let plan = director.plan(&fields, &[(11, 1), (12, 0)], None);
            let mut dp = loaded(&plan);
            let _registered = xdpvs_testbed::rig::attach_pass(&director.ns, "xa0");
            let ingress = director.xa0;
            // 100 long connections, all on .11 (the only real with a weight).
            for i in 0..100u32 {
                let (a, port) = client(i);
                assert_eq!(send(&dp, ingress, &tcp_from(a, port, 0x02)), (XDP_TX, 11));
                assert_eq!(send(&dp, ingress, &tcp_from(a, port, 0x10)), (XDP_TX, 11));
            }
            assert_eq!(
                conns_of(&dp, &plan, 11),
                (0, 100),
                "{scheduler}: added at once"
            );
            let recount = |dp: &mut Dataplane, plan: &Plan| {
                let flows = dp.flows().unwrap_or_else(|e| panic!("{e}"));
                let counts = lb_userspace::stats::connection_counts(plan, &flows);
                dp.write_connection_counts(plan, &counts)
                    .unwrap_or_else(|e| panic!("{e}"));
            };
            recount(&mut dp, &plan);
            assert_eq!(conns_of(&dp, &plan, 11), (100, 0), "{scheduler}: recounted");
            // .12 joins: every new flow goes to it.
            let next = director.plan(&fields, &[(11, 1), (12, 1)], Some(&plan));
            let (hops, _) = xdpvs_testbed::rig::resolve(&next, &["xa0"]);
            dp.apply(&next, &hops).unwrap_or_else(|e| panic!("{e}"));
            recount(&mut dp, &next);
            for i in 1000..1050u32 {
                let (a, port) = client(i);
                assert_eq!(
                    send(&dp, ingress, &tcp_from(a, port, 0x02)),
                    (XDP_TX, 12),
                    "{scheduler}: new flow {i} went to the loaded real"
                );
            }
            assert_eq!(conns_of(&dp, &next, 12), (0, 50), "{scheduler}");
            // The established ones close (FIN): recounted, .11 is no longer loaded.
            for i in 0..100u32 {
                let (a, port) = client(i);
                assert_eq!(send(&dp, ingress, &tcp_from(a, port, 0x11)), (XDP_TX, 11));
            }
            recount(&mut dp, &next);
            assert_eq!(conns_of(&dp, &next, 11), (0, 100), "{scheduler}: closed");
        }
    });
}

/// A full template table (`limits.max_persistent`) evicts its least recently used
/// templates: every new client still gets a template and a real, and an evicted client
/// is scheduled afresh when it comes back (a new template), as docs/SCHEDULERS.md says.
#[test]
fn a_full_template_table_evicts_the_least_recently_used() {
    let director = Director::new();
    director.ns.enter(|| {
        pin_to_cpu(0);
        let plan = director.plan(
            "scheduler: rr, persistence: {timeout: 300}",
            &[(11, 1), (12, 1), (13, 1)],
            None,
        );
        let limits = lb_userspace::config::Limits {
            max_persistent: 1024,
            ..Default::default()
        };
        let dp = loaded_with(&plan, limits);
        let _registered = xdpvs_testbed::rig::attach_pass(&director.ns, "xa0");
        for i in 0..4096u32 {
            let (a, port) = client(i);
            assert_eq!(send(&dp, director.xa0, &tcp_from(a, port, 0x02)).0, XDP_TX);
        }
        let held = dp.templates().unwrap_or_else(|e| panic!("{e}")).len();
        assert!(held <= 1024, "{held} templates in a table of 1024");
        assert_eq!(
            events(&dp, &plan),
            (0, 4096),
            "every client made a template"
        );
        // The first client's template is long gone: it is scheduled afresh.
        let (a, port) = client(0);
        assert_eq!(
            send(&dp, director.xa0, &tcp_from(a, port + 1, 0x02)).0,
            XDP_TX
        );
        assert_eq!(events(&dp, &plan), (0, 4097));
        // The last one's is there.
        let (a, port) = client(4095);
        assert_eq!(
            send(&dp, director.xa0, &tcp_from(a, port + 1, 0x02)).0,
            XDP_TX
        );
        assert_eq!(events(&dp, &plan), (1, 4097));
    });
}
