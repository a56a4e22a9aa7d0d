//! Slow start: a real that starts taking new flows — added, its weight raised from 0,
//! undrained, or back up after its health check failed — gets its weight in steps over
//! its service's `slow_start.period` rather than all at once, so a cold server (empty
//! caches, JIT not warm) is not handed its full share of new clients in the first second
//! (docs/SCHEDULERS.md, "Slow start"). The daemon applies the configuration with the
//! ramping reals' weights scaled ([`Ramps::apply`]) at each step ([`Ramps::next_due`]).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use crate::{
    config::{Config, Real, SlowStart},
    health::Target,
};

/// One real's ramp: when it started, and the step last applied.
#[derive(Clone, Copy, Debug)]
struct Ramp {
    started: Instant,
    ramp: SlowStart,
    applied: u32,
}

impl Ramp {
    fn step_len(&self) -> Duration {
        Duration::from_secs(u64::from(self.ramp.period)) / self.ramp.steps.max(1)
    }

    /// The step due at `now`: 1 from the start, up to `steps` (the full weight).
    fn step(&self, now: Instant) -> u32 {
        let elapsed = now.saturating_duration_since(self.started);
        let done = elapsed.as_nanos() / self.step_len().as_nanos().max(1);
        u32::try_from(done + 1)
            .unwrap_or(u32::MAX)
            .min(self.ramp.steps)
    }
}

/// The weight of a real of weight `weight` at step `step` of `steps`: its share so far,
/// rounded up, and at least 1.
pub fn ramped_weight(weight: u32, step: u32, steps: u32) -> u32 {
    if step >= steps || weight == 0 {
        return weight;
    }
    let w = (u64::from(weight) * u64::from(step)).div_ceil(u64::from(steps.max(1)));
    u32::try_from(w).unwrap_or(weight).max(1)
}

/// The ramps under way.
#[derive(Clone, Debug, Default)]
pub struct Ramps {
    ramps: HashMap<Target, Ramp>,
}

fn takes_flows(r: &Real) -> bool {
    r.scheduling_weight() > 0
}

impl Ramps {
    /// Starts a ramp for every real of a service with `slow_start` that takes new flows
    /// in `after` and did not in `before` (absent, or weight 0 there: set so, drained or
    /// down). A ramp under way goes on; one whose real stopped taking flows ends.
    pub fn begin(&mut self, before: &Config, after: &Config, now: Instant) {
        let mut took: HashMap<Target, bool> = HashMap::new();
        for s in &before.services {
            for r in &s.reals {
                took.insert(Target::of(s, r), takes_flows(r));
            }
        }
        let mut kept = HashMap::new();
        for s in &after.services {
            let Some(ramp) = s.slow_start else { continue };
            for r in s.reals.iter().filter(|r| takes_flows(r)) {
                let target = Target::of(s, r);
                match self.ramps.get(&target) {
                    Some(&under_way) => {
                        kept.insert(target, Ramp { ramp, ..under_way });
                    }
                    None if !took.get(&target).copied().unwrap_or(false) => {
                        kept.insert(
                            target,
                            Ramp {
                                started: now,
                                ramp,
                                applied: 0,
                            },
                        );
                    }
                    None => {}
                }
            }
        }
        self.ramps = kept;
    }

    /// `config` with every ramping real's weight at its step at `now`; notes the steps as
    /// applied and ends the ramps that reached their full weight.
    pub fn apply(&mut self, config: &Config, now: Instant) -> Config {
        let mut ramped = config.clone();
        for s in &mut ramped.services {
            let (protocol, vip, vport) = (s.protocol, s.address, s.port);
            for r in &mut s.reals {
                let target = Target {
                    protocol,
                    vip,
                    vport,
                    real: r.address,
                    port: r.port,
                };
                if let Some(ramp) = self.ramps.get_mut(&target) {
                    let step = ramp.step(now);
                    ramp.applied = step;
                    r.weight = ramped_weight(r.weight, step, ramp.ramp.steps);
                }
            }
        }
        self.ramps.retain(|_, r| r.applied < r.ramp.steps);
        ramped
    }

    /// When the next step of a ramp is due, if one is under way.
    pub fn next_due(&self) -> Option<Instant> {
        self.ramps
            .values()
            .map(|r| r.started + r.step_len() * r.applied)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_ramp_by_steps_to_the_full_weight() {
        assert_eq!(
            (1..=4)
                .map(|k| ramped_weight(100, k, 4))
                .collect::<Vec<_>>(),
            [25, 50, 75, 100]
        );
        assert_eq!(ramped_weight(3, 1, 10), 1);
        assert_eq!(ramped_weight(1, 1, 10), 1);
        assert_eq!(ramped_weight(0, 1, 10), 0);
        assert_eq!(ramped_weight(65_535, 9, 10), 58_982);
    }

    fn config(weight_b: u32, slow: bool) -> Config {
        let text = format!(
            "director: {{interfaces: [eth0]}}\nservices:\n  - {{address: 192.0.2.100, port: \
             80, protocol: tcp, scheduler: wrr,{}\n     reals: [{{address: 192.0.2.11, \
             weight: 100}}, {{address: 192.0.2.12, weight: {weight_b}}}]}}\n",
            if slow {
                " slow_start: {period: 8, steps: 4},"
            } else {
                ""
            }
        );
        Config::parse(&text, std::path::Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn weights(c: &Config) -> Vec<u32> {
        c.services[0].reals.iter().map(|r| r.weight).collect()
    }

    #[test]
    fn a_real_that_starts_taking_flows_ramps_and_the_others_do_not() {
        let t0 = Instant::now();
        let mut ramps = Ramps::default();
        let (before, after) = (config(0, true), config(100, true));
        // At start-up nothing ramps (`before` is the same configuration).
        ramps.begin(&after, &after, t0);
        assert!(ramps.next_due().is_none());
        ramps.begin(&before, &after, t0);
        assert_eq!(weights(&ramps.apply(&after, t0)), [100, 25]);
        assert_eq!(ramps.next_due(), Some(t0 + Duration::from_secs(2)));
        let at = |s| t0 + Duration::from_millis(s);
        assert_eq!(weights(&ramps.apply(&after, at(2_100))), [100, 50]);
        // A change meanwhile keeps the ramp.
        ramps.begin(&after, &after, at(3_000));
        assert_eq!(weights(&ramps.apply(&after, at(4_000))), [100, 75]);
        assert_eq!(weights(&ramps.apply(&after, at(6_000))), [100, 100]);
        assert!(ramps.next_due().is_none(), "the ramp ended at full weight");
        // Without slow_start nothing ramps; draining ends a ramp.
        ramps.begin(&config(0, false), &config(100, false), t0);
        assert!(ramps.next_due().is_none());
        ramps.begin(&before, &after, t0);
        ramps.begin(&after, &before, t0);
        assert!(ramps.next_due().is_none());
        // A real its health check brought back (down, draining or held by a lost
        // quorum before) ramps as well.
        for mark in [
            |r: &mut Real| r.down = true,
            |r: &mut Real| r.draining = true,
            |r: &mut Real| r.held = true,
        ] {
            let mut was = after.clone();
            mark(&mut was.services[0].reals[1]);
            let mut ramps = Ramps::default();
            ramps.begin(&was, &after, t0);
            assert_eq!(weights(&ramps.apply(&after, t0)), [100, 25]);
        }
    }
}
