//! The counter report the daemon prints on SIGUSR1 and when it stops. One record a line,
//! `key=value` fields, so people and scripts read it alike (the format is in docs/CLI.md).

use std::fmt::Write as _;

use lb_common::{event::Event, reason::Reason};

use crate::{dataplane::Snapshot, plan::Plan};

pub fn report(plan: &Plan, snapshot: &Snapshot) -> String {
    let mut out = String::new();
    for (s, (counters, reals)) in plan.services.iter().zip(&snapshot.services) {
        let _ = writeln!(
            out,
            "service {} scheduler={} forwarding={} name={} packets={} bytes={}",
            s.label(),
            s.scheduler,
            s.forwarding,
            s.name.as_deref().unwrap_or("-"),
            counters.packets,
            counters.bytes
        );
        for (r, c) in s.reals.iter().zip(reals) {
            let _ = writeln!(
                out,
                "  real {}:{} weight={} packets={} bytes={}",
                r.address, r.port, r.weight, c.packets, c.bytes
            );
        }
    }
    for &reason in Reason::ALL {
        let _ = writeln!(
            out,
            "reason {} packets={}",
            reason.name(),
            snapshot.reason(reason)
        );
    }
    for &event in Event::ALL {
        let _ = writeln!(
            out,
            "event {} count={}",
            event.name(),
            snapshot.event(event)
        );
    }
    out
}
