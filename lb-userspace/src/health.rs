//! Health checks: one task per checked real, aimed at the real's own address (never
//! through the VIP), each with a timeout, started at a spread of offsets so thousands never
//! fire in step. Results go to the director's loop, which keeps each real's state
//! (`rise` successes to come up, `fall` failures to go down) and takes a down real out of
//! scheduling: no new flows, established ones continue, as a drain (docs/HEALTH.md).

use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use tokio::{sync::mpsc, task::JoinHandle};

use crate::config::{Check, CheckKind, Config, Protocol, Real, Service};

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

/// A check's outcome.
#[derive(Debug)]
pub struct Probe {
    pub target: Target,
    pub result: Result<(), String>,
    pub took: Duration,
}

/// The checks of every real whose service has one, kept in step with the configuration.
pub struct Checkers {
    running: HashMap<Target, (Check, JoinHandle<()>)>,
    tx: mpsc::Sender<Probe>,
}

impl Checkers {
    pub fn new(tx: mpsc::Sender<Probe>) -> Checkers {
        Checkers {
            running: HashMap::new(),
            tx,
        }
    }

    /// Starts the checks a configuration asks for, stops the others, and restarts those
    /// whose check changed.
    pub fn follow(&mut self, config: &Config) {
        let mut wanted: HashMap<Target, Check> = HashMap::new();
        for s in &config.services {
            let Some(check) = &s.check else { continue };
            for r in &s.reals {
                wanted.insert(Target::of(s, r), check.clone());
            }
        }
        self.running.retain(|t, (check, task)| {
            let keep = wanted.get(t) == Some(check);
            if !keep {
                task.abort();
            }
            keep
        });
        for (target, check) in wanted {
            if self.running.contains_key(&target) {
                continue;
            }
            let task = tokio::spawn(run(target.clone(), check.clone(), self.tx.clone()));
            self.running.insert(target, (check, task));
        }
    }
}

impl Drop for Checkers {
    fn drop(&mut self) {
        for (_, task) in self.running.values() {
            task.abort();
        }
    }
}

/// Where in its interval a target's checks fall: spread by a hash of the target.
fn offset(target: &Target, interval: Duration) -> Duration {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    target.hash(&mut h);
    let fraction = (h.finish() % 1000) as f64 / 1000.0;
    interval.mul_f64(fraction)
}

async fn run(target: Target, check: Check, tx: mpsc::Sender<Probe>) {
    let interval = Duration::from_secs(u64::from(check.interval));
    tokio::time::sleep(offset(&target, interval)).await;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let start = Instant::now();
        let limit = Duration::from_secs(u64::from(check.timeout));
        let result = match tokio::time::timeout(limit, probe(&target, &check)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {} s", check.timeout)),
        };
        let probe = Probe {
            target: target.clone(),
            result,
            took: start.elapsed(),
        };
        if tx.send(probe).await.is_err() {
            return;
        }
    }
}

async fn probe(target: &Target, check: &Check) -> Result<(), String> {
    let at = SocketAddr::new(target.real, check.port.unwrap_or(target.port));
    let stream = tokio::net::TcpStream::connect(at)
        .await
        .map_err(|e| format!("connect to {at}: {e}"))?;
    if check.kind == CheckKind::Tcp {
        return Ok(());
    }
    use http_body_util::Empty;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("http to {at}: {e}"))?;
    let conn = tokio::spawn(conn);
    let host = check.host.clone().unwrap_or_else(|| at.ip().to_string());
    let request = hyper::Request::get(check.path.as_str())
        .header("host", host)
        .header("user-agent", concat!("xdpvs/", env!("CARGO_PKG_VERSION")))
        .header("connection", "close")
        .body(Empty::<axum::body::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("http to {at}: {e}"));
    conn.abort();
    let status = response?.status().as_u16();
    if check.expect.iter().any(|&(a, b)| (a..=b).contains(&status)) {
        Ok(())
    } else {
        Err(format!("http to {at}{}: status {status}", check.path))
    }
}

/// A checked real's state.
#[derive(Clone, Debug)]
pub struct State {
    pub up: bool,
    /// Results in a row against the state (failures while up, successes while down).
    pub streak: u32,
    pub since: std::time::SystemTime,
    pub last_error: Option<String>,
    pub last_took: Duration,
}

/// Every checked real's state. A real starts up (a restarted director keeps serving
/// while its checks warm up) and changes only after `fall` or `rise` results in a row.
#[derive(Default)]
pub struct Health {
    states: HashMap<Target, State>,
}

/// A change of state, for the log.
pub struct Transition {
    pub up: bool,
    pub after: u32,
    pub cause: Option<String>,
}

impl Health {
    /// Records a result; returns the transition it causes, if any.
    pub fn record(&mut self, probe: Probe, check: &Check) -> Option<Transition> {
        let state = self.states.entry(probe.target).or_insert_with(|| State {
            up: true,
            streak: 0,
            since: std::time::SystemTime::now(),
            last_error: None,
            last_took: Duration::ZERO,
        });
        state.last_took = probe.took;
        let ok = probe.result.is_ok();
        if let Err(e) = probe.result {
            state.last_error = Some(e);
        }
        if ok == state.up {
            state.streak = 0;
            return None;
        }
        state.streak += 1;
        let needed = if state.up { check.fall } else { check.rise };
        if state.streak < needed {
            return None;
        }
        state.up = ok;
        state.streak = 0;
        state.since = std::time::SystemTime::now();
        Some(Transition {
            up: ok,
            after: needed,
            cause: (!ok).then(|| state.last_error.clone()).flatten(),
        })
    }

    /// Forgets reals the configuration no longer checks.
    pub fn retain(&mut self, config: &Config) {
        self.states.retain(|t, _| {
            config.services.iter().any(|s| {
                s.check.is_some()
                    && s.protocol == t.protocol
                    && s.address == t.vip
                    && s.port == t.vport
                    && s.reals
                        .iter()
                        .any(|r| r.address == t.real && r.port == t.port)
            })
        });
    }

    pub fn state(&self, target: &Target) -> Option<&State> {
        self.states.get(target)
    }

    /// The configuration with each down real marked down (no new flows).
    pub fn apply(&self, config: &Config) -> Config {
        let mut effective = config.clone();
        for s in &mut effective.services {
            let down: Vec<bool> = s
                .reals
                .iter()
                .map(|r| self.states.get(&Target::of(s, r)).is_some_and(|st| !st.up))
                .collect();
            for (r, down) in s.reals.iter_mut().zip(down) {
                r.down = down;
            }
        }
        effective
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(rise: u32, fall: u32) -> Check {
        Check {
            kind: CheckKind::Tcp,
            port: None,
            interval: 1,
            timeout: 1,
            rise,
            fall,
            path: "/".into(),
            host: None,
            expect: vec![(200, 399)],
        }
    }

    #[test]
    fn rise_and_fall_hold_the_state_through_flapping() {
        let target = Target {
            protocol: Protocol::Tcp,
            vip: IpAddr::from([192, 0, 2, 100]),
            vport: 80,
            real: IpAddr::from([192, 0, 2, 11]),
            port: 80,
        };
        let c = check(2, 3);
        let mut h = Health::default();
        let mut feed = |ok: bool| {
            h.record(
                Probe {
                    target: target.clone(),
                    result: if ok { Ok(()) } else { Err("refused".into()) },
                    took: Duration::ZERO,
                },
                &c,
            )
            .map(|t| t.up)
        };
        // Up at first; two failures and a success: still up (fall is 3).
        assert_eq!(feed(false), None);
        assert_eq!(feed(false), None);
        assert_eq!(feed(true), None);
        // Three in a row: down.
        assert_eq!(feed(false), None);
        assert_eq!(feed(false), None);
        assert_eq!(feed(false), Some(false));
        // Flapping success/failure never brings it up (rise is 2).
        for _ in 0..5 {
            assert_eq!(feed(true), None);
            assert_eq!(feed(false), None);
        }
        assert_eq!(feed(true), None);
        assert_eq!(feed(true), Some(true));
    }
}
