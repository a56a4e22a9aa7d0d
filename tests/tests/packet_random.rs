//! The program against its reference model on random and mutated frames (see
//! `xdpvs_testbed::differential`). `XDPVS_RANDOM_FRAMES` and `XDPVS_RANDOM_SEED` change
//! the size and the seed; `cargo xtask bench` runs a larger one.

use xdpvs_testbed::{bench::per_packet::Director, differential, rig::attach_pass};

/// Frames in a default run: sized to CI's time (about 10 µs a frame here).
const FRAMES: u64 = 1_000_000;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn random_and_mutated_frames_match_the_reference_model() {
    xdpvs_testbed::require_root();
    let frames = env_u64("XDPVS_RANDOM_FRAMES", FRAMES);
    let seed = env_u64("XDPVS_RANDOM_SEED", 0x0078_6470_7673);
    let director = Director::new();
    let report = director.ns.enter(|| {
        let _rx_queue = attach_pass(&director.ns, "xa0");
        differential::run(&director, frames, seed)
    });
    let mut reached: Vec<_> = report
        .reasons
        .iter()
        .map(|(r, n)| format!("{r}={n}"))
        .collect();
    reached.sort();
    eprintln!(
        "{} frames, seed {seed}: {}",
        report.frames,
        reached.join(" ")
    );
    assert!(
        report.mismatches == 0 && report.counters.is_empty(),
        "{} of {} frames differ from the model (seed {seed}); counters (name, program, \
         model) {:?}\n{}",
        report.mismatches,
        report.frames,
        report.counters,
        report.described.join("\n")
    );
    // The run reached every outcome the generator aims at.
    for reason in lb_common::reason::Reason::ALL {
        let unreachable_here = matches!(
            reason.name(),
            "drop_no_neighbour"
                | "drop_no_route"
                | "drop_internal"
                | "drop_forwarding_off"
                | "drop_real_offlink"
                | "drop_no_real"
                // A service whose quorum the daemon marked lost: e2e_checks counts it.
                | "drop_quorum_lost"
                | "pass_eth_truncated"
                // The flood guard is off in the model's rig; packet_nat covers it.
                | "drop_insert_refused"
        );
        assert!(
            unreachable_here || report.reasons.get(reason.name()).copied().unwrap_or(0) > 0,
            "no frame reached {}",
            reason.name()
        );
    }
}
