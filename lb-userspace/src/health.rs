//! Health checks: one task per checked real, aimed at the real's own address (never
//! through the VIP), each with a timeout, started at a spread of offsets and waiting a
//! jittered interval so thousands never fire in step. Results go to the director's loop,
//! which keeps each real's state (`rise` successes to come up, `fall` failures to go
//! down, a drain answer at once), each service's quorum, and turns them into the
//! configuration the data path runs (docs/HEALTH.md).

mod probe;

use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};
use tokio::{
    sync::{Notify, mpsc},
    task::JoinHandle,
};

pub use probe::Outcome;

use crate::config::{Check, Config, OnFailure, Protocol, Real, Service};

/// One checked real of one service.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub protocol: Protocol,
    pub vip: IpAddr,
    pub vport: u16,
    pub real: IpAddr,
    pub port: u16,
}

impl Target {
    /// A real of a service, as its check is known.
    pub fn of(service: &Service, real: &Real) -> Target {
        Target {
            protocol: service.protocol,
            vip: service.address,
            vport: service.port,
            real: real.address,
            port: real.port,
        }
    }

    /// Its metric labels: protocol, address, port, real address, real port.
    pub fn labels(&self) -> [String; 5] {
        [
            self.protocol.to_string(),
            self.vip.to_string(),
            self.vport.to_string(),
            self.real.to_string(),
            self.port.to_string(),
        ]
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "real {}:{} of service {} {}:{}",
            self.real, self.port, self.protocol, self.vip, self.vport
        )
    }
}

/// A check's result.
#[derive(Debug)]
pub struct Probe {
    pub target: Target,
    /// The task's generation: a result of a check since replaced is not counted.
    pub generation: u64,
    pub outcome: Outcome,
    pub took: Duration,
}

struct Running {
    check: Check,
    generation: u64,
    task: JoinHandle<()>,
    nudge: Arc<Notify>,
}

/// The checks of every checked real, kept in step with the configuration.
pub struct Checkers {
    running: HashMap<Target, Running>,
    tx: mpsc::Sender<Probe>,
    clients: probe::Clients,
    generations: u64,
}

impl Checkers {
    pub fn new(tx: mpsc::Sender<Probe>) -> Checkers {
        // reqwest's TLS takes the process's provider; ours is ring (no other is built:
        // aws-lc-rs, which rustls would rather have, needs cmake and a long C build).
        #[allow(deprecated)]
        let _ = rustls::crypto::ring::default_provider().install_default();
        Checkers {
            running: HashMap::new(),
            tx,
            clients: probe::Clients::default(),
            generations: 0,
        }
    }

    /// Starts the checks a configuration asks for, stops the others, and restarts those
    /// whose check changed.
    pub fn follow(&mut self, config: &Config) {
        let wanted = checked(config);
        self.running.retain(|t, r| {
            let keep = wanted.get(t) == Some(&&r.check);
            if !keep {
                r.task.abort();
            }
            keep
        });
        for (target, check) in wanted {
            if self.running.contains_key(&target) {
                continue;
            }
            let nudge = Arc::new(Notify::new());
            let prober = probe::Prober::new(target.clone(), check.clone(), &mut self.clients);
            self.generations += 1;
            let generation = self.generations;
            let task = tokio::spawn(run(
                (target.clone(), generation),
                check.clone(),
                prober,
                self.tx.clone(),
                nudge.clone(),
            ));
            self.running.insert(
                target,
                Running {
                    check: check.clone(),
                    generation,
                    task,
                    nudge,
                },
            );
        }
        // The next change makes its clients afresh; running checks keep theirs.
        self.clients.prune();
    }

    /// Runs a real's check now (a passive signal made it suspect); false if unchecked.
    pub fn nudge(&self, target: &Target) -> bool {
        match self.running.get(target) {
            Some(r) => {
                r.nudge.notify_one();
                true
            }
            None => false,
        }
    }

    /// The check a real runs now, if `generation` is its task's (a result of a check
    /// since replaced or stopped is not counted).
    pub fn check_of(&self, target: &Target, generation: u64) -> Option<&Check> {
        self.running
            .get(target)
            .filter(|r| r.generation == generation)
            .map(|r| &r.check)
    }

    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }
}

impl Drop for Checkers {
    fn drop(&mut self) {
        for r in self.running.values() {
            r.task.abort();
        }
    }
}

/// Every checked real with its check (its own, or its service's).
pub fn checked(config: &Config) -> HashMap<Target, &Check> {
    let mut out = HashMap::new();
    for s in &config.services {
        for r in s.reals.iter().filter(|r| !r.sorry) {
            if let Some(c) = s.check_of(r) {
                out.insert(Target::of(s, r), c);
            }
        }
    }
    out
}

/// A hash of the target: where its first check falls, and its jitter's seed.
fn seed(target: &Target) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    target.hash(&mut h);
    h.finish()
}

/// The next wait: the interval shortened by up to `jitter` percent.
fn jittered(interval: Duration, jitter: u32, state: &mut u64) -> Duration {
    // SplitMix64: a fresh well-mixed number per wait, no shared generator.
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let fraction = (z % 10_000) as f64 / 10_000.0 * f64::from(jitter) / 100.0;
    interval.mul_f64(1.0 - fraction)
}

async fn run(
    (target, generation): (Target, u64),
    check: Check,
    prober: Result<probe::Prober, String>,
    tx: mpsc::Sender<Probe>,
    nudge: Arc<Notify>,
) {
    let interval = Duration::from_secs(u64::from(check.interval));
    let mut state = seed(&target);
    // The warm-up spread: each real's first check at its own point of the first interval.
    let first = interval.mul_f64((state % 1000) as f64 / 1000.0);
    tokio::select! {
        _ = tokio::time::sleep(first) => {}
        _ = nudge.notified() => {}
    }
    loop {
        let start = Instant::now();
        let outcome = match &prober {
            Ok(p) => p.run().await,
            Err(e) => Outcome::Failed(e.clone()),
        };
        let probe = Probe {
            target: target.clone(),
            generation,
            outcome,
            took: start.elapsed(),
        };
        if tx.send(probe).await.is_err() {
            return;
        }
        let wait = jittered(interval, check.jitter, &mut state).saturating_sub(start.elapsed());
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = nudge.notified() => {}
        }
    }
}

/// How often the data path's passive signals are read.
pub const SIGNAL_PERIOD: Duration = Duration::from_secs(1);

/// A real's passive signals as the data path counted them (totals).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Signals {
    /// The real's index: a new index (the real was removed and came back) restarts the
    /// counts.
    pub real: u32,
    pub syns: u64,
    pub synacks: u64,
    pub resets: u64,
}

/// Whether a real's signals since the last reading make it suspect, and why: it reset
/// a connection, or handshakes went to it and none was answered.
pub fn suspect(before: Signals, now: Signals) -> Option<String> {
    if before.real != now.real {
        return None;
    }
    let resets = now.resets.saturating_sub(before.resets);
    let syns = now.syns.saturating_sub(before.syns);
    let synacks = now.synacks.saturating_sub(before.synacks);
    if resets > 0 {
        Some(format!("{resets} resets from it in the last second"))
    } else if syns > 0 && synacks == 0 {
        Some(format!(
            "{syns} handshakes sent to it, none answered in the last second"
        ))
    } else {
        None
    }
}

/// A checked real's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Up,
    /// Its check asked for a drain: no new flows, no alarm.
    Draining,
    Down,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Up => "up",
            Status::Draining => "draining",
            Status::Down => "down",
        }
    }
}

/// A checked real's state.
#[derive(Clone)]
pub struct State {
    pub status: Status,
    /// Good and failed results in a row.
    good: u32,
    bad: u32,
    pub since: SystemTime,
    pub last_error: Option<String>,
    pub last_took: Duration,
    pub last_check: Option<SystemTime>,
    /// The weight a `dynamic` exec check set.
    pub weight: Option<u32>,
    /// Times the passive signals made it suspect.
    pub suspected: u64,
    /// The check task whose results it counts: a new check starts its streaks afresh.
    generation: u64,
    /// Its series of the latency histogram and of the result counters (ok, drain,
    /// failed), taken once: a result costs no label look-up.
    latency: prometheus::Histogram,
    results: [prometheus::IntCounter; 3],
}

/// A change a result makes.
#[derive(Debug, PartialEq, Eq)]
pub enum HealthChange {
    Status {
        from: Status,
        to: Status,
        /// Results in a row that made it.
        after: u32,
        cause: Option<String>,
    },
    /// A `dynamic` exec check set another weight.
    Weight { from: Option<u32>, to: Option<u32> },
}

/// A service whose quorum was lost or regained.
pub struct QuorumChange {
    pub service: String,
    pub lost: bool,
    pub live: u64,
    /// The threshold crossed: `quorum - hysteresis` when lost, `quorum + hysteresis`
    /// when regained.
    pub threshold: u64,
    pub sorry: bool,
}

/// What [`Health::apply`] makes of a configuration: the configuration the data path is
/// to run, the quorum changes, and the quorums to keep once it runs.
pub struct Applied {
    pub config: Config,
    pub changes: Vec<QuorumChange>,
    quorum_lost: HashMap<ServiceKey, bool>,
    removed: Vec<Removed>,
}

/// A real its check took out of its service (`on_failure: remove`), as configured.
#[derive(Clone)]
pub struct Removed {
    pub target: Target,
    pub real: Real,
    pub check: crate::config::CheckKind,
}

impl Applied {
    /// The configuration to run and the quorum changes.
    pub fn into_parts(self) -> (Config, Vec<QuorumChange>) {
        (self.config, self.changes)
    }
}

type ServiceKey = (Protocol, IpAddr, u16);

/// The `result` label of `xdpvs_real_checks_total`.
const RESULTS: [&str; 3] = ["ok", "drain", "failed"];

/// Every checked real's state and every service's quorum. A real starts up (a restarted
/// director keeps serving while its checks warm up) and changes after `fall` failures or
/// `rise` successes in a row, or at once when its check asks for a drain.
pub struct Health {
    states: HashMap<Target, State>,
    /// The last passive signals read of each watched real.
    signals: HashMap<Target, Signals>,
    quorum_lost: HashMap<ServiceKey, bool>,
    removed: Vec<Removed>,
    latency: HistogramVec,
    results: IntCounterVec,
}

impl Default for Health {
    fn default() -> Health {
        let labels = ["protocol", "address", "port", "real_address", "real_port"];
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "xdpvs_real_check_duration_seconds",
                "How long the real's health checks took (failed and timed-out ones included).",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &labels,
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        let results = IntCounterVec::new(
            Opts::new(
                "xdpvs_real_checks_total",
                "The real's health checks by result: ok, drain or failed.",
            ),
            &[
                "protocol",
                "address",
                "port",
                "real_address",
                "real_port",
                "result",
            ],
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        Health {
            states: HashMap::new(),
            signals: HashMap::new(),
            quorum_lost: HashMap::new(),
            removed: Vec::new(),
            latency,
            results,
        }
    }
}

impl Health {
    /// Records a result; returns the change it makes, if any.
    pub fn record(&mut self, probe: Probe, check: &Check) -> Option<HealthChange> {
        let now = SystemTime::now();
        let (latency, results) = (&self.latency, &self.results);
        let state = self
            .states
            .entry(probe.target)
            .or_insert_with_key(|target| {
                let labels = target.labels();
                let l: Vec<&str> = labels.iter().map(String::as_str).collect();
                let result = |r: &str| {
                    let mut with = l.clone();
                    with.push(r);
                    results.with_label_values(&with)
                };
                State {
                    status: Status::Up,
                    good: 0,
                    bad: 0,
                    since: now,
                    last_error: None,
                    last_took: Duration::ZERO,
                    last_check: None,
                    weight: None,
                    suspected: 0,
                    generation: probe.generation,
                    latency: latency.with_label_values(&l),
                    results: [result(RESULTS[0]), result(RESULTS[1]), result(RESULTS[2])],
                }
            });
        if state.generation != probe.generation {
            state.generation = probe.generation;
            state.good = 0;
            state.bad = 0;
        }
        state.latency.observe(probe.took.as_secs_f64());
        let result = match &probe.outcome {
            Outcome::Healthy { .. } => 0,
            Outcome::Drain(_) => 1,
            Outcome::Failed(_) => 2,
        };
        state.results[result].inc();
        state.last_took = probe.took;
        state.last_check = Some(now);
        let from = state.status;
        let (to, after, cause) = match probe.outcome {
            Outcome::Healthy { weight } => {
                state.good += 1;
                state.bad = 0;
                if from == Status::Up {
                    if weight != state.weight {
                        let change = HealthChange::Weight {
                            from: state.weight,
                            to: weight,
                        };
                        state.weight = weight;
                        return Some(change);
                    }
                    return None;
                }
                if state.good < check.rise {
                    return None;
                }
                state.weight = weight;
                (Status::Up, check.rise, None)
            }
            Outcome::Drain(why) => {
                state.good = 0;
                state.bad = 0;
                if from == Status::Draining {
                    return None;
                }
                (Status::Draining, 1, Some(why))
            }
            Outcome::Failed(e) => {
                state.bad += 1;
                state.good = 0;
                state.last_error = Some(e.clone());
                if from == Status::Down || state.bad < check.fall {
                    return None;
                }
                (Status::Down, check.fall, Some(e))
            }
        };
        state.status = to;
        state.good = 0;
        state.bad = 0;
        state.since = now;
        Some(HealthChange::Status {
            from,
            to,
            after,
            cause,
        })
    }

    /// Records a watched real's signals; says why it is suspect if it is (an up or
    /// draining real: a down one is checked anyway).
    pub fn signals(&mut self, target: &Target, now: Signals) -> Option<String> {
        let before = self.signals.insert(target.clone(), now)?;
        let up = self
            .states
            .get(target)
            .is_none_or(|s| s.status != Status::Down);
        let why = suspect(before, now)?;
        if let Some(st) = self.states.get_mut(target) {
            st.suspected += 1;
        }
        up.then_some(why)
    }

    /// Forgets the signals of reals no longer watched.
    pub fn keep_signals(&mut self, watched: &[Target]) {
        if self.signals.len() != watched.len() {
            let keep: std::collections::HashSet<&Target> = watched.iter().collect();
            self.signals.retain(|t, _| keep.contains(t));
        }
    }

    /// Forgets reals the configuration no longer checks.
    pub fn retain(&mut self, config: &Config) {
        let wanted = checked(config);
        let (latency, results) = (&self.latency, &self.results);
        self.states.retain(|t, _| {
            let keep = wanted.contains_key(t);
            if !keep {
                let labels = t.labels();
                let l: Vec<&str> = labels.iter().map(String::as_str).collect();
                let _ = latency.remove_label_values(&l);
                for result in RESULTS {
                    let mut with = l.clone();
                    with.push(result);
                    let _ = results.remove_label_values(&with);
                }
            }
            keep
        });
        self.quorum_lost.retain(|(p, a, port), _| {
            config.services.iter().any(|s| {
                s.protocol == *p && s.address == *a && s.port == *port && s.quorum.is_some()
            })
        });
    }

    pub fn state(&self, target: &Target) -> Option<&State> {
        self.states.get(target)
    }

    /// Whether a service's quorum is lost now.
    pub fn quorum_lost(&self, s: &Service) -> bool {
        self.quorum_lost
            .get(&(s.protocol, s.address, s.port))
            .copied()
            .unwrap_or(false)
    }

    /// The latency histograms and result counters, for the metrics.
    pub fn collectors(&self) -> (HistogramVec, IntCounterVec) {
        (self.latency.clone(), self.results.clone())
    }

    /// The configuration the data path runs: each real as its health has it (down and
    /// draining reals take no new flows; a down real of an `on_failure: remove` check is
    /// taken out; a `dynamic` check's weight), and each service with a quorum held or
    /// lost (lost: its reals held, its sorry server in). Nothing is kept until
    /// [`Health::commit`]: a configuration that fails to apply changes no quorum.
    pub fn apply(&self, config: &Config) -> Applied {
        let mut effective = config.clone();
        let mut changes = Vec::new();
        let mut quorum_lost = HashMap::new();
        let mut removed = Vec::new();
        for s in &mut effective.services {
            let service = s.clone();
            s.reals.retain_mut(|r| {
                let (remove, kind) = match service.check_of(r) {
                    Some(check) => (check.on_failure == OnFailure::Remove, check.kind()),
                    None => return true,
                };
                let target = Target::of(&service, r);
                let Some(st) = self.states.get(&target) else {
                    return true;
                };
                r.down = st.status == Status::Down;
                r.draining = st.status == Status::Draining;
                if let Some(w) = st.weight {
                    r.weight = w;
                }
                let out = r.down && remove;
                if out {
                    removed.push(Removed {
                        target,
                        real: r.clone(),
                        check: kind,
                    });
                }
                !out
            });
            let Some(quorum) = s.quorum else { continue };
            let live: u64 = s
                .reals
                .iter()
                .map(|r| u64::from(r.scheduling_weight()))
                .sum();
            let key = (s.protocol, s.address, s.port);
            let was = self.quorum_lost.get(&key).copied().unwrap_or(false);
            let lost = if was {
                live < u64::from(quorum) + u64::from(s.hysteresis)
            } else {
                live < u64::from(quorum).saturating_sub(u64::from(s.hysteresis))
            };
            if lost != was {
                let h = u64::from(s.hysteresis);
                changes.push(QuorumChange {
                    service: s.to_string(),
                    lost,
                    live,
                    threshold: if lost {
                        u64::from(quorum) - h
                    } else {
                        u64::from(quorum) + h
                    },
                    sorry: s.sorry.is_some(),
                });
            }
            quorum_lost.insert(key, lost);
            s.quorum_lost = lost;
            if lost {
                for r in &mut s.reals {
                    r.held = true;
                }
                if let Some(sorry) = s.sorry {
                    s.reals.push(Real {
                        address: sorry.address,
                        port: sorry.port,
                        weight: 1,
                        drained: false,
                        check: None,
                        down: false,
                        draining: false,
                        held: false,
                        sorry: true,
                        origin: s.origin.clone(),
                    });
                }
            }
        }
        Applied {
            config: effective,
            changes,
            quorum_lost,
            removed,
        }
    }

    /// Keeps the quorums of an applied configuration, once the data path runs it.
    pub fn commit(&mut self, applied: &Applied) {
        self.quorum_lost = applied.quorum_lost.clone();
        self.removed = applied.removed.clone();
    }

    /// The reals taken out of their services now (`on_failure: remove`).
    pub fn removed(&self) -> &[Removed] {
        &self.removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProbeSpec;

    fn check(rise: u32, fall: u32) -> Check {
        Check {
            port: None,
            interval: 1,
            timeout: 1,
            rise,
            fall,
            jitter: 10,
            on_failure: OnFailure::Inhibit,
            passive: false,
            probe: ProbeSpec::Tcp,
        }
    }

    fn target() -> Target {
        Target {
            protocol: Protocol::Tcp,
            vip: IpAddr::from([192, 0, 2, 100]),
            vport: 80,
            real: IpAddr::from([192, 0, 2, 11]),
            port: 80,
        }
    }

    fn feed(h: &mut Health, c: &Check, outcome: Outcome) -> Option<Status> {
        match h.record(
            Probe {
                target: target(),
                generation: 0,
                outcome,
                took: Duration::ZERO,
            },
            c,
        ) {
            Some(HealthChange::Status { to, .. }) => Some(to),
            _ => None,
        }
    }

    const OK: Outcome = Outcome::Healthy { weight: None };

    fn failed() -> Outcome {
        Outcome::Failed("refused".into())
    }

    #[test]
    fn rise_and_fall_hold_the_state_through_flapping() {
        let c = check(2, 3);
        let mut h = Health::default();
        // Up at first; two failures and a success: still up (fall is 3).
        assert_eq!(feed(&mut h, &c, failed()), None);
        assert_eq!(feed(&mut h, &c, failed()), None);
        assert_eq!(feed(&mut h, &c, OK), None);
        // Three in a row: down.
        assert_eq!(feed(&mut h, &c, failed()), None);
        assert_eq!(feed(&mut h, &c, failed()), None);
        assert_eq!(feed(&mut h, &c, failed()), Some(Status::Down));
        // Flapping success/failure never brings it up (rise is 2).
        for _ in 0..5 {
            assert_eq!(feed(&mut h, &c, OK), None);
            assert_eq!(feed(&mut h, &c, failed()), None);
        }
        assert_eq!(feed(&mut h, &c, OK), None);
        assert_eq!(feed(&mut h, &c, OK), Some(Status::Up));
    }

    #[test]
    fn a_new_check_starts_its_streaks_afresh() {
        let c = check(2, 3);
        let mut h = Health::default();
        let at = |generation| Probe {
            target: target(),
            generation,
            outcome: failed(),
            took: Duration::ZERO,
        };
        assert!(h.record(at(1), &c).is_none());
        assert!(h.record(at(1), &c).is_none());
        // The check was replaced: its first failure is the first of its streak.
        assert!(h.record(at(2), &c).is_none());
        assert!(h.record(at(2), &c).is_none());
        assert!(matches!(
            h.record(at(2), &c),
            Some(HealthChange::Status {
                to: Status::Down,
                ..
            })
        ));
    }

    #[test]
    fn a_drain_answer_drains_at_once_and_rise_good_answers_end_it() {
        let c = check(2, 3);
        let mut h = Health::default();
        let drain = || Outcome::Drain("503".into());
        assert_eq!(feed(&mut h, &c, drain()), Some(Status::Draining));
        assert_eq!(feed(&mut h, &c, drain()), None);
        assert_eq!(feed(&mut h, &c, OK), None);
        assert_eq!(feed(&mut h, &c, OK), Some(Status::Up));
        // Draining, then failing: down after fall failures.
        assert_eq!(feed(&mut h, &c, drain()), Some(Status::Draining));
        assert_eq!(feed(&mut h, &c, failed()), None);
        assert_eq!(feed(&mut h, &c, failed()), None);
        assert_eq!(feed(&mut h, &c, failed()), Some(Status::Down));
        // A down real that answers "drain" is alive: draining, no alarm.
        assert_eq!(feed(&mut h, &c, drain()), Some(Status::Draining));
        let st = h.state(&target()).map(|s| s.last_error.clone());
        assert_eq!(st, Some(Some("refused".into())));
    }

    #[test]
    fn a_dynamic_weight_is_a_change_while_up() {
        let c = check(1, 1);
        let mut h = Health::default();
        let p = |w| Probe {
            target: target(),
            generation: 0,
            outcome: Outcome::Healthy { weight: w },
            took: Duration::ZERO,
        };
        assert_eq!(
            h.record(p(Some(5)), &c),
            Some(HealthChange::Weight {
                from: None,
                to: Some(5)
            })
        );
        assert_eq!(h.record(p(Some(5)), &c), None);
        assert_eq!(
            h.record(p(None), &c),
            Some(HealthChange::Weight {
                from: Some(5),
                to: None
            })
        );
    }

    #[test]
    fn resets_and_unanswered_handshakes_make_a_real_suspect() {
        let at = |syns, synacks, resets| Signals {
            real: 3,
            syns,
            synacks,
            resets,
        };
        assert!(suspect(at(10, 10, 0), at(15, 15, 0)).is_none());
        assert!(suspect(at(10, 10, 0), at(10, 10, 0)).is_none());
        let why = suspect(at(10, 10, 0), at(12, 10, 0));
        assert_eq!(
            why.as_deref(),
            Some("2 handshakes sent to it, none answered in the last second")
        );
        let why = suspect(at(10, 10, 0), at(15, 14, 1));
        assert_eq!(why.as_deref(), Some("1 resets from it in the last second"));
        // A real that came back under a new index starts its counts afresh.
        let renumbered = Signals {
            real: 4,
            ..at(0, 0, 0)
        };
        assert!(suspect(at(10, 10, 0), renumbered).is_none());
        // The first reading has nothing to compare with; a down real is not nudged.
        let mut h = Health::default();
        assert_eq!(h.signals(&target(), at(1, 0, 0)), None);
        assert!(h.signals(&target(), at(2, 0, 0)).is_some());
        let c = check(1, 1);
        assert_eq!(feed(&mut h, &c, failed()), Some(Status::Down));
        assert_eq!(h.signals(&target(), at(3, 0, 0)), None);
    }

    fn applied(h: &mut Health, config: &Config) -> (Config, Vec<QuorumChange>) {
        let a = h.apply(config);
        h.commit(&a);
        (a.config, a.changes)
    }

    /// A service of three checked reals, weights 1, 2, 3, with this quorum text.
    fn quorum_config(extra: &str) -> Config {
        let text = format!(
            "director: {{interfaces: [eth0]}}\nservices:\n  - {{address: 192.0.2.100, port: 80, \
             protocol: tcp, scheduler: wrr, check: {{type: tcp}}, {extra}reals: [{{address: \
             192.0.2.11, weight: 1}}, {{address: 192.0.2.12, weight: 2}}, {{address: \
             192.0.2.13, weight: 3}}]}}\n"
        );
        Config::parse(&text, std::path::Path::new("test.yaml")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn set(h: &mut Health, config: &Config, real: usize, up: bool) {
        let s = &config.services[0];
        let c = check(1, 1);
        let outcome = if up { OK } else { failed() };
        h.record(
            Probe {
                target: Target::of(s, &s.reals[real]),
                generation: 0,
                outcome,
                took: Duration::ZERO,
            },
            &c,
        );
    }

    #[test]
    fn the_quorum_is_lost_and_regained_across_its_hysteresis() {
        let config = quorum_config("quorum: 4, hysteresis: 1, sorry: {address: 192.0.2.50}, ");
        let mut h = Health::default();
        let live = |e: &Config| -> Vec<(u32, bool)> {
            e.services[0]
                .reals
                .iter()
                .map(|r| (r.scheduling_weight(), r.sorry))
                .collect()
        };
        // All up: 6 live. Real 2 (weight 3) down: 3, not below 4 - 1: held.
        set(&mut h, &config, 2, false);
        let (e, changes) = applied(&mut h, &config);
        assert!(changes.is_empty() && !e.services[0].quorum_lost);
        // Real 1 down too: 1 < 3: lost; every real held, the sorry server in.
        set(&mut h, &config, 1, false);
        let (e, changes) = applied(&mut h, &config);
        assert_eq!(changes.len(), 1);
        assert!(changes[0].lost && changes[0].sorry && changes[0].live == 1);
        assert_eq!(live(&e), [(0, false), (0, false), (0, false), (1, true)]);
        // Real 1 back: 3 live, below 4 + 1: still lost.
        set(&mut h, &config, 1, true);
        let (e, changes) = applied(&mut h, &config);
        assert!(changes.is_empty() && e.services[0].quorum_lost);
        // Real 2 back: 6 ≥ 5: regained, no sorry server.
        set(&mut h, &config, 2, true);
        let (e, changes) = applied(&mut h, &config);
        assert!(changes.len() == 1 && !changes[0].lost);
        assert_eq!(live(&e), [(1, false), (2, false), (3, false)]);
    }

    #[test]
    fn on_failure_remove_takes_the_real_out_and_inhibit_keeps_it_at_weight_0() {
        let mut h = Health::default();
        let config = quorum_config("");
        set(&mut h, &config, 0, false);
        let (e, _) = applied(&mut h, &config);
        let reals: Vec<_> = e.services[0]
            .reals
            .iter()
            .map(|r| (r.scheduling_weight(), r.down))
            .collect();
        assert_eq!(reals, [(0, true), (2, false), (3, false)]);
        let mut removing = config.clone();
        if let Some(c) = removing.services[0].check.as_mut() {
            c.on_failure = OnFailure::Remove;
        }
        let (e, _) = applied(&mut h, &removing);
        let left: Vec<_> = e.services[0]
            .reals
            .iter()
            .map(|r| r.address.to_string())
            .collect();
        assert_eq!(left, ["192.0.2.12", "192.0.2.13"]);
    }

    #[test]
    fn jitter_only_shortens_the_interval() {
        let mut state = 7;
        let interval = Duration::from_secs(2);
        let waits: Vec<Duration> = (0..1000)
            .map(|_| jittered(interval, 10, &mut state))
            .collect();
        assert!(
            waits
                .iter()
                .all(|w| *w <= interval && *w >= interval.mul_f64(0.9))
        );
        let spread = waits.iter().max().unwrap_or(&interval).as_secs_f64()
            - waits.iter().min().unwrap_or(&interval).as_secs_f64();
        assert!(spread > 0.15, "{spread}");
        assert!(
            (0..10)
                .map(|_| jittered(interval, 0, &mut state))
                .all(|w| w == interval)
        );
    }
}
