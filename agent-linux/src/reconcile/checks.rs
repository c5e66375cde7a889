//! A reconciler's health checks: one [`Watch`] per running container with
//! a `healthCheck`, made anew for each run of the container (its address
//! may change, and its start period applies again), all reporting on one
//! channel that the reconciler's loop listens to.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use protocol::{HealthCheckAction, HealthFailureAction, HttpScheme};
use tokio::sync::mpsc;

use super::Context;
use super::spec::{Wanted, port_specs};
use crate::health::{Change, Checker, Health, Probe, Scheme, Target, Timing, Watch};
use crate::podman::{ContainerInfo, Runtime};

/// Which watch a change comes from: (container name, generation).
pub(super) type Key = (String, u64);

/// The checks of one deployment's containers.
#[derive(Debug)]
pub(super) struct Checks {
    tx: mpsc::UnboundedSender<(Key, Change)>,
    generation: u64,
    by_name: BTreeMap<String, Checked>,
}

/// The check of one run of a container.
#[derive(Debug)]
struct Checked {
    /// The run: container id and Podman's `StartedAt`, so that a restart
    /// the agent did not make (`podman restart`) gets a new watch, at the
    /// run's new address.
    run: Run,
    generation: u64,
    /// `None` when the check has nowhere to go (its reason says why).
    _watch: Option<Watch>,
    health: Health,
    reason: Option<String>,
    restart_on_failure: bool,
}

impl Checks {
    /// Checks whose watches send on `tx`.
    pub fn new(tx: mpsc::UnboundedSender<(Key, Change)>) -> Checks {
        Checks {
            tx,
            generation: 0,
            by_name: BTreeMap::new(),
        }
    }

    /// Makes sure the run of `w` as `id` that `info` (a fresh inspection)
    /// shows is checked, when `w` has a check; `since` tells runs apart
    /// when Podman gives no `StartedAt`.
    pub fn ensure<R: Runtime>(
        &mut self,
        ctx: &Context<R>,
        w: &Wanted<'_>,
        id: &str,
        since: Instant,
        info: &ContainerInfo,
    ) {
        let name = w.c.name.as_str();
        let Some(check) = &w.c.health_check else {
            self.by_name.remove(name);
            return;
        };
        let run = Run::of(id, info, since);
        if self.by_name.get(name).is_some_and(|c| c.run == run) {
            return;
        }
        let probe = match check.action() {
            Some(HealthCheckAction::Exec(e)) => Probe::Exec {
                command: e.command.iter().map(|s| s.as_str().to_string()).collect(),
            },
            Some(HealthCheckAction::HttpGet(h)) => Probe::Http {
                scheme: match h.scheme {
                    HttpScheme::Http => Scheme::Http,
                    HttpScheme::Https => Scheme::Https,
                },
                path: h.path.as_str().to_string(),
                port: h.port,
                headers: h
                    .http_headers
                    .iter()
                    .map(|x| (x.name.as_str().to_string(), x.value.as_str().to_string()))
                    .collect(),
            },
            Some(HealthCheckAction::TcpSocket(t)) => Probe::Tcp { port: t.port },
            // Validation refuses a check without exactly one action.
            None => {
                self.by_name.remove(name);
                return;
            }
        };
        let secs = |s: u32| Duration::from_secs(u64::from(s));
        let timing = Timing {
            interval: secs(check.interval_seconds),
            timeout: secs(check.timeout_seconds),
            start_period: secs(check.start_period_seconds),
            success_threshold: check.success_threshold,
            failure_threshold: check.failure_threshold,
        };
        self.generation += 1;
        let generation = self.generation;
        let target = Target::for_probe(
            &probe,
            id,
            &port_specs(&w.c),
            w.c.host_network,
            &info.ip_addresses,
        );
        let (watch, health, reason) = match target {
            Ok(target) => {
                // The monitor's clock starts now: `since` is when the
                // agent saw the run begin, at most a pass earlier.
                let checker = Checker::new(
                    ctx.runtime.clone(),
                    probe,
                    target,
                    timing,
                    tokio::time::Instant::now(),
                );
                let key = (name.to_string(), generation);
                (
                    Some(Watch::spawn(checker, key, self.tx.clone())),
                    Health::Starting,
                    None,
                )
            }
            Err(e) => (None, Health::Unhealthy, Some(e.to_string())),
        };
        self.by_name.insert(
            name.to_string(),
            Checked {
                run,
                generation,
                _watch: watch,
                health,
                reason,
                restart_on_failure: check.on_failure == HealthFailureAction::Restart,
            },
        );
    }

    /// Stops checking `name` (not running, or gone).
    pub fn stop(&mut self, name: &str) {
        self.by_name.remove(name);
    }

    /// Stops checking every container but those `keep` accepts.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.by_name.retain(|name, _| keep(name));
    }

    /// The health of the current run of `name` and why it last failed.
    pub fn health(&self, name: &str) -> Option<(Health, Option<&str>)> {
        self.by_name
            .get(name)
            .map(|c| (c.health, c.reason.as_deref()))
    }

    /// Takes a change from a watch. `None` when it is from a run no longer
    /// checked; else whether the container is to be restarted for it.
    pub fn changed(&mut self, key: &Key, change: Change) -> Option<bool> {
        let checked = self
            .by_name
            .get_mut(&key.0)
            .filter(|c| c.generation == key.1)?;
        checked.health = change.health;
        checked.reason = change.reason;
        Some(checked.restart_on_failure && change.health == Health::Unhealthy)
    }
}

/// One run of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Run {
    /// Its id and Podman's `StartedAt`.
    Started(String, String),
    /// Its id and when the agent saw it start (no `StartedAt`).
    Seen(String, Instant),
}

impl Run {
    fn of(id: &str, info: &ContainerInfo, since: Instant) -> Run {
        if info.started_at.is_empty() {
            Run::Seen(id.to_string(), since)
        } else {
            Run::Started(id.to_string(), info.started_at.clone())
        }
    }
}

/// The wire's health for the checks'.
pub(super) fn wire_health(h: Health) -> protocol::Health {
    match h {
        Health::Starting => protocol::Health::Starting,
        Health::Healthy => protocol::Health::Healthy,
        Health::Unhealthy => protocol::Health::Unhealthy,
    }
}
