//! One BatchSequence reconcile against NATS and the API server: read the
//! keys and the reports, record the revision in the history, let
//! [`super::engine::decide`] choose, write what it chose.

use std::collections::HashMap;

use protocol::DesiredState;
use protocol::keys::DESIRED_STATE_BUCKET;

use super::RolloutSpec;
use super::engine::{self, DeviceState, Input};
use crate::apply::{self, Conflict, Plan};
use crate::crd::{Deployment, Score};
use crate::history::{History, HistoryError};
use crate::nats::{KvWrite, Nats, NatsError};
use crate::status::StatusCache;
use crate::status::cache::is_stale;

/// Why a rollout step failed; all are retried.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// NATS could not be read or written.
    #[error("NATS")]
    Nats(#[from] NatsError),
    /// The revision history could not be read or written.
    #[error("revision history")]
    History(#[from] HistoryError),
    /// The Secrets the stable revision references could not be read.
    #[error("the stable revision's Secrets")]
    Secrets(#[from] crate::secrets::resolve::ResolveError),
    /// The Secrets the stable revision references were rotated since it
    /// rolled out: planned now, they give another revision, and writing
    /// that back would roll the devices forward, not back.
    #[error(
        "the stable revision {revision}'s Secrets changed since it rolled out (now they give revision {now}; a rotation cannot be undone by a rollback): fix the Secret and retry"
    )]
    StableSecretsChanged {
        /// The stable revision.
        revision: String,
        /// What its score and the Secrets as they are now give.
        now: String,
    },
    /// The stable revision recorded in the history no longer plans (e.g.
    /// an operator upgrade tightened a check); it cannot be written back.
    #[error("the stable revision {revision} from the history cannot be written back")]
    StableUnusable {
        /// The revision.
        revision: String,
        /// Why.
        #[source]
        source: apply::PlanError,
    },
}

/// What the step did, for the status and the events.
#[derive(Debug)]
pub struct StepOutcome {
    /// The engine's decision.
    pub decision: engine::Decision,
    /// Keys put or deleted.
    pub writes: usize,
    /// The stable revision's value for the devices to roll back, to write
    /// once the status records the halt.
    pub roll_back: Vec<KvWrite>,
    /// Why the stable revision could not be written back, when it could not.
    pub roll_back_error: Option<String>,
    /// Targets whose key another Deployment of this name owns.
    pub conflicts: Vec<Conflict>,
    /// Warnings about the batches (a batch that takes nothing...).
    pub warnings: Vec<String>,
}

/// Where a step reads and writes.
pub struct Io<'a> {
    /// The desired-state keys.
    pub nats: &'a Nats,
    /// The revision history.
    pub history: &'a History,
    /// The devices' reports and heartbeats.
    pub cache: &'a StatusCache,
}

/// Runs one step of `d`'s rollout of `plan` (its targets resolved, its
/// held-back targets marked). `select` resolves a batch's selector.
pub async fn step(
    Io {
        nats,
        history,
        cache,
    }: Io<'_>,
    d: &Deployment,
    plan: &Plan,
    spec: &RolloutSpec,
    select: impl Fn(&crate::targeting::TargetSelector) -> Vec<String>,
    now_ns: i128,
) -> Result<StepOutcome, StepError> {
    let current = apply::current_keys(nats, &plan.name).await?;
    let reports = cache.reports_for(&plan.name);
    let plan_attempt = attempt_of(&plan.value);
    let mut conflicts = Vec::new();
    let mut devices = HashMap::with_capacity(plan.targets.len());
    // Keys that hold this revision and attempt in other bytes (a new
    // rollout policy, new maintenance windows): rewritten without a
    // batch's say, the workload is the same.
    let mut refresh = Vec::new();
    for t in &plan.targets {
        let rec = current.get(t).filter(|r| !r.deleted);
        let foreign = rec
            .and_then(|r| r.owner.as_deref())
            .filter(|o| *o != plan.owner.as_str());
        if let Some(owner) = foreign {
            conflicts.push(Conflict {
                device: t.clone(),
                owner: owner.to_string(),
            });
        }
        let mine = rec.filter(|r| apply::owned_by(r, plan.owner.as_str()));
        let value = plan.value_for(t);
        // Updated means this revision at this attempt, whatever the rest of
        // the value: a policy change mid-rollout does not send devices
        // back through the batches, and a rollback reaches all of them.
        let updated = mine.is_some_and(|r| {
            crate::secrets::seal::equivalent(&r.value, value)
                || key_revision(&r.value) == Some((plan.revision, plan_attempt))
        });
        // A target kept as it is (its Device's windows are invalid) or
        // held back (its agent cannot read the new value: new windows or
        // a new gate made it format 4) is not rewritten.
        let untouchable =
            plan.kept.contains_key(t) || plan.held.contains_key(t) || plan.unsealed.contains_key(t);
        // Sealed values differ at every seal: a key sealed to the device's
        // current key for this revision is not refreshed.
        if updated
            && !untouchable
            && mine.is_some_and(|r| !crate::secrets::seal::equivalent(&r.value, value))
        {
            refresh.push(t.clone());
        }
        // A failure reported before the key's last write may be the
        // previous attempt's (a retry rewrites the key); the device reports
        // anew as it tries again. Before any retry (attempt 0) there is no
        // previous attempt: a rewrite is a refresh (new windows, a new
        // rollout policy), which the device does not try again for, and
        // its failure stands. Anything else still holds: an agent reports
        // only what changes, and a rewrite of the same workload (a new
        // attempt, a new rollout policy) may change nothing it reports.
        let phase = reports
            .get(t)
            .filter(|r| r.status.revision == plan.revision)
            .filter(|r| {
                !engine::is_failure(r.status.phase)
                    || plan_attempt == 0
                    || mine.is_none_or(|m| r.stored_at_ns >= m.stored_at_ns)
            })
            .map(|r| r.status.phase);
        let offline = cache
            .heartbeat(t)
            .is_some_and(|h| is_stale(h.stored_at_ns, now_ns, cache.heartbeat_timeout()));
        devices.insert(
            t.clone(),
            DeviceState {
                updated,
                written_ns: mine.map(|r| r.stored_at_ns),
                phase,
                offline,
                wait: reports
                    .get(t)
                    .map(|r| r.wait_at(plan.revision))
                    .unwrap_or_default(),
                blocked: foreign.is_some()
                    || plan.held.contains_key(t)
                    || plan.unsealed.contains_key(t),
                kept: plan.kept.contains_key(t),
            },
        );
    }
    let prev = d.status.as_ref().and_then(|s| s.rollout.as_ref());
    let score = serde_json::to_value(&d.spec.score).unwrap_or_default();
    let limit = d.spec.rollout.revision_history_limit;
    let mut stable_fallback = None;
    let starting = prev.is_none_or(|p| p.revision != crate::crd::revision_string(plan.revision));
    if starting {
        if prev.is_none() {
            stable_fallback = record_all_at_once(history, d, plan.revision, limit).await?;
        }
        let keep: Vec<u64> = [Some(plan.revision), stable_fallback]
            .into_iter()
            .flatten()
            .chain(
                prev.and_then(|p| p.stable_revision.as_deref())
                    .and_then(|s| u64::from_str_radix(s, 16).ok()),
            )
            .chain(
                prev.filter(|p| p.phase == crate::crd::RolloutPhase::Healthy)
                    .and_then(|p| u64::from_str_radix(&p.revision, 16).ok()),
            )
            .collect();
        history
            .record(d, plan.revision, &score, limit, &keep)
            .await?;
    }
    // Devices written already stay in the batch that took them when a
    // newcomer would sort before them.
    let (batches, warnings) = spec.split(&plan.targets, select, |t| {
        devices.get(t).is_some_and(|s: &DeviceState| s.updated)
    });
    let decision = engine::decide(Input {
        revision: plan.revision,
        spec,
        batches,
        devices: &devices,
        prev,
        stable_fallback,
        paused: d.spec.rollout.paused,
        auto_rollback: d.spec.rollout.auto_rollback,
        deadline_ns: i128::from(d.spec.rollout.progress_deadline_seconds) * 1_000_000_000,
        retry: super::retry_annotation(d),
        attempt: engine::attempt(prev, plan.revision, super::retry_annotation(d)),
        now_ns,
    });
    let mut writes = Vec::new();
    let rolled: std::collections::BTreeSet<&String> = decision.roll_back.iter().collect();
    for t in refresh.iter().filter(|t| !rolled.contains(t)) {
        writes.push(KvWrite::Put {
            key: apply::key_of(t, &plan.name)?,
            value: plan.value_for(t).clone(),
            owner: plan.owner.to_string(),
        });
    }
    for t in &decision.write {
        writes.push(KvWrite::Put {
            key: apply::key_of(t, &plan.name)?,
            value: plan.value_for(t).clone(),
            owner: plan.owner.to_string(),
        });
    }
    // The rollback is written after the status records the halt (by the
    // caller): were it written first and the status patch lost, the next
    // reconcile would see the devices as not written yet and write the
    // failed revision to them again.
    let mut roll_back = Vec::new();
    // A stable revision that cannot be read or planned must not keep the
    // halt from being recorded: the status says why, and the next
    // reconcile tries again.
    let mut roll_back_error = None;
    let stable = match decision.stable.filter(|_| !decision.roll_back.is_empty()) {
        Some(s) => match stable_plan(history, d, plan, s).await {
            Ok(v) => v,
            Err(e) => {
                roll_back_error = Some(error_report::Chain(&e).to_string());
                None
            }
        },
        None => None,
    };
    if let Some(stable) = stable {
        // A device the stable revision's Secrets cannot be sealed to keeps
        // what it has.
        for t in decision
            .roll_back
            .iter()
            .filter(|t| !stable.unsealed.contains_key(*t))
        {
            roll_back.push(KvWrite::Put {
                key: apply::key_of(t, &plan.name)?,
                value: stable.value_for(t).clone(),
                owner: plan.owner.to_string(),
            });
        }
    }
    // Keys of devices no longer targeted go, as with AllAtOnce.
    let targets: std::collections::BTreeSet<&str> =
        plan.targets.iter().map(String::as_str).collect();
    for (device, rec) in &current {
        if !targets.contains(device.as_str()) && apply::owned_by(rec, plan.owner.as_str()) {
            writes.push(plan.delete(apply::key_of(device, &plan.name)?));
        }
    }
    let n = writes.len();
    nats.write(DESIRED_STATE_BUCKET, writes).await?;
    Ok(StepOutcome {
        decision,
        writes: n,
        roll_back,
        roll_back_error,
        conflicts,
        warnings,
    })
}

/// The revision and attempt a key's value holds, if it decodes.
fn key_revision(value: &[u8]) -> Option<(u64, u32)> {
    let d: DesiredState<'_> = protocol::wire::decode(value).ok()?;
    Some((d.revision, d.attempt))
}

/// The attempt of a value this operator encoded.
fn attempt_of(value: &[u8]) -> u32 {
    key_revision(value).map_or(0, |(_, a)| a)
}

/// When a Deployment turns to BatchSequence after an AllAtOnce rollout
/// that reached every target, that revision is the stable one: its score
/// (from `status.observedScoreString`) goes into the history.
async fn record_all_at_once(
    history: &History,
    d: &Deployment,
    revision: u64,
    limit: u32,
) -> Result<Option<u64>, StepError> {
    let Some(s) = d.status.as_ref() else {
        return Ok(None);
    };
    let Some(prev) = s
        .revision
        .as_deref()
        .and_then(|r| u64::from_str_radix(r, 16).ok())
        .filter(|r| *r != revision)
    else {
        return Ok(None);
    };
    let done = s.targeted > 0 && s.up_to_date == s.targeted && s.ready == s.targeted;
    let score = s
        .observed_score_string
        .as_deref()
        .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok());
    match score {
        Some(score) if done => {
            history.record(d, prev, &score, limit, &[prev]).await?;
            Ok(Some(prev))
        }
        _ => Ok(None),
    }
}

/// The values the stable revision is written back as: its score from the
/// history, planned with the Deployment's current name, rollout policy and
/// gate, each target with the windows it has in `current` (its Device's own)
/// and, when the score references Secrets, those Secrets as they are now,
/// sealed to the keys `current` seals to. Unchanged Secrets give the stable
/// revision again; rotated ones give another revision, which is not the
/// stable one and is not written ([`StepError::StableSecretsChanged`]).
async fn stable_plan(
    history: &History,
    d: &Deployment,
    current: &Plan,
    revision: u64,
) -> Result<Option<Plan>, StepError> {
    let Some(score) = history.score(d, revision).await? else {
        tracing::warn!(deployment = %d.name_str(), revision = %crate::crd::revision_string(revision), "stable revision missing from the history; nothing is written back, the devices keep what they have");
        return Ok(None);
    };
    let unusable = |source| StepError::StableUnusable {
        revision: crate::crd::revision_string(revision),
        source,
    };
    let score: Score = serde_json::from_value(score).map_err(|e| {
        unusable(apply::PlanError::InvalidScore {
            path: String::new(),
            reason: e.to_string(),
        })
    })?;
    let mut old = d.clone();
    old.spec.score = score;
    let mut plan = apply::plan(&old).map_err(unusable)?;
    plan.add_targets(current.targets.iter().cloned());
    let refs = crate::secrets::References::of(plan.score(), &d.spec.image_pull_secrets);
    if !refs.is_empty() {
        let resolved = match crate::secrets::resolve::resolve(
            history.client(),
            d.namespace_or_default(),
            &refs,
        )
        .await
        {
            Ok(r) => r,
            Err(crate::secrets::resolve::ResolveError::Secret(e)) => {
                return Err(unusable(apply::PlanError::Secret(e)));
            }
            Err(e) => return Err(e.into()),
        };
        with_secrets(&mut plan, resolved, current, revision).map_err(|e| *e)?;
    }
    plan.copy_device_windows(current).map_err(unusable)?;
    Ok(Some(plan))
}

/// Seals `resolved` (the stable score's Secrets as they are now) into
/// `plan` for the keys `current` seals to, refusing when they no longer
/// give the stable `revision`: the Secrets are not versioned, so a rotated
/// one cannot be put back, and writing its revision while the status says
/// "rolled back" would be a lie.
fn with_secrets(
    plan: &mut Plan,
    resolved: crate::secrets::Resolved,
    current: &Plan,
    revision: u64,
) -> Result<(), Box<StepError>> {
    crate::secrets::seal::off_runtime(|| {
        plan.set_secrets(resolved, |t| current.sealing_key(t).map(str::to_string))
    })
    .map_err(|source| StepError::StableUnusable {
        revision: crate::crd::revision_string(revision),
        source,
    })?;
    if plan.revision != revision {
        return Err(Box::new(StepError::StableSecretsChanged {
            revision: crate::crd::revision_string(revision),
            now: crate::crd::revision_string(plan.revision),
        }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::secrets::{Fingerprint, References, resolve_from};
    use k8s_openapi::api::core::v1::Secret;

    fn deployment() -> Deployment {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "iot.nationtech.io/v1alpha1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "fleet"},
            "spec": {
                "targetDevices": ["pi-1"],
                "score": {"type": "PodmanV1", "data": {"containers": [{
                    "name": "web",
                    "image": "registry.example.com/web:1",
                    "env": [{"name": "P", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}],
                }]}},
            },
        }))
        .unwrap()
    }

    fn db(resource_version: &str) -> Secret {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "db", "namespace": "fleet", "uid": "u", "resourceVersion": resource_version},
            "stringData": {"password": "pw"},
        }))
        .unwrap()
    }

    fn resolved(d: &Deployment, resource_version: &str) -> crate::secrets::Resolved {
        let plan = apply::plan(d).unwrap();
        let refs = References::of(plan.score(), &[]);
        let secret = db(resource_version);
        resolve_from(&refs, "fleet", |_| Some(&secret), Fingerprint::Versions).unwrap()
    }

    #[test]
    fn a_rotated_secret_is_not_written_back_as_the_stable_revision() {
        let d = deployment();
        let key = sealing::DeviceKey::generate();
        let mut current = apply::plan(&d).unwrap();
        current
            .set_secrets(resolved(&d, "1"), |_| Some(key.public_key().to_string()))
            .unwrap();
        let stable = current.revision;
        // The Secrets as they were: the stable revision again.
        let mut same = apply::plan(&d).unwrap();
        with_secrets(&mut same, resolved(&d, "1"), &current, stable).unwrap();
        assert_eq!(same.revision, stable);
        // Rotated since: refused, saying why and what to do.
        let mut rotated = apply::plan(&d).unwrap();
        let e = with_secrets(&mut rotated, resolved(&d, "2"), &current, stable).unwrap_err();
        assert!(
            matches!(*e, StepError::StableSecretsChanged { .. }),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("Secrets changed since it rolled out")
                && msg.contains("a rotation cannot be undone by a rollback")
                && msg.contains("fix the Secret and retry"),
            "{msg}"
        );
    }
}
