//! The benchmark's machinery, checked as the kernel runs it (figures are not checked:
//! benchmarks report, tests do not time). The restore wrapper must reproduce a direct run
//! byte for byte, every timed iteration must take the path it names, a "new flow" row must
//! really vary the flow, and the forwarding-rate rig must deliver through every director.

use aya::programs::{TestRun, TestRunOptions};
use xdpvs_testbed::bench::{
    bench_cpu,
    per_packet::{self, Director, Programs, Target},
    rate,
};

const XDP_ABORTED: u32 = 0;

#[test]
fn wrapper_reproduces_direct_runs_and_every_iteration_takes_its_path() {
    let director = Director::new();
    director.ns.enter(|| {
        let mut programs = Programs::load(&director);
        for case in per_packet::cases() {
            // Panics if the wrapper's run differs from a direct run, or the action is not
            // the one the row names.
            let case = programs.prepare(&case);
            per_packet::check_wrapper(&mut programs, &case);
        }
    });
    // Every timed iteration is checked (action, and one forward per iteration).
    let rows = per_packet::measure(1, 2000, bench_cpu());
    assert_eq!(rows.len(), per_packet::cases().len());
    // Each row was measured (a net time may come out below zero in a noisy 2,000-run
    // round: the wrapper's own cost is subtracted; timing is the benchmark's business).
    assert!(rows.iter().all(|r| r.ns.median.is_finite()), "{rows:?}");
}

#[test]
fn wrapper_refuses_a_frame_of_another_length() {
    let director = Director::new();
    director.ns.enter(|| {
        let mut programs = Programs::load(&director);
        let case = &per_packet::cases()[3];
        programs.set_template(&case.frame, 0);
        let mut longer = case.frame.clone();
        longer.push(0);
        assert_eq!(programs.run_wrapped(Target::Xdpvs, &longer).0, XDP_ABORTED);
        assert_eq!(
            programs.forwarded(),
            0,
            "the program under test must not run"
        );
    });
}

#[test]
fn new_flow_rows_vary_the_flow() {
    let director = Director::new();
    director.ns.enter(|| {
        let mut programs = Programs::load(&director);
        let case = per_packet::cases()
            .into_iter()
            .find(|c| c.flows > 0)
            .unwrap_or_else(|| panic!("no new-flow case"));
        programs.set_template(&case.frame, case.flows);
        let _ = programs.run_wrapped(Target::Xdpvs, &case.frame);
        let wrapper = programs
            .bench
            .program(lb_common::bench::programs::WRAPPER)
            .and_then(|p| <&aya::programs::Xdp>::try_from(p).ok())
            .unwrap_or_else(|| panic!("no wrapper"));
        let result = wrapper
            .test_run(TestRunOptions {
                data_in: Some(&case.frame),
                ctx_in: Some(&xdpvs_testbed::packet::xdp_md(
                    case.frame.len(),
                    director.xa0(),
                )),
                repeat: 3000,
                ..TestRunOptions::default()
            })
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(result.return_value, per_packet::XDP_TX);
        // sh hashes the source address, which the variation walks through 256 values:
        // all three reals must have been chosen.
        assert_eq!(programs.reals_used(), 3);
        assert_eq!(programs.forwarded(), 3001);
    });
}

#[test]
fn rate_rig_delivers_through_every_director() {
    let rig = rate::Rig::new();
    for m in rate::measure(&rig, 1, 20_000, bench_cpu()) {
        assert!(
            m.delivered > 0.5,
            "{}: the sink counted {:.1} % of the frames",
            m.director.label(),
            m.delivered * 100.0
        );
    }
}
