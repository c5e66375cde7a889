//! Encoded device reports for the status tests.

use protocol::status::{Health, Reason};
use protocol::{BoundedVec, ContainerState, ContainerStatus, Heartbeat, Phase, Text};

/// A status report at `revision` in `phase`, without a message.
pub(crate) fn status_bytes(revision: u64, phase: Phase) -> Vec<u8> {
    status_bytes_msg(revision, phase, "")
}

/// A status report at `revision` in `phase` saying `message`.
pub(crate) fn status_bytes_msg(revision: u64, phase: Phase, message: &str) -> Vec<u8> {
    protocol::wire::encode_to_vec(&protocol::DeploymentStatus {
        revision,
        phase,
        containers: BoundedVec::new(),
        message: Text::borrowed(message),
        timestamp_ms: 0,
        reason: protocol::Reason::None,
        running_revision: None,
        waiting: None,
    })
    .unwrap()
}

/// A status report as an agent with health writes it (format version 2
/// when anything new is set): `phase` for `reason`, running `running` when rolled back, one
/// container `web` with `health` and `restarts`.
pub(crate) fn health_status_bytes(
    revision: u64,
    phase: Phase,
    reason: Reason,
    running: Option<u64>,
    health: Option<Health>,
    restarts: u32,
) -> Vec<u8> {
    let mut web = ContainerStatus::new(Text::borrowed("web"), ContainerState::Running);
    web.health = health;
    web.restart_count = restarts;
    web.reason = reason;
    let status = protocol::DeploymentStatus {
        revision,
        phase,
        containers: BoundedVec::try_from_iter([web]).unwrap(),
        message: Text::borrowed(""),
        timestamp_ms: 0,
        reason,
        running_revision: running,
        waiting: None,
    };
    protocol::wire::encode_to_vec(&status).unwrap()
}

/// A heartbeat.
pub(crate) fn heartbeat_bytes() -> Vec<u8> {
    heartbeat_with(BoundedVec::new())
}

/// A heartbeat carrying `warning` (format version 2).
pub(crate) fn heartbeat_warning_bytes(warning: &str) -> Vec<u8> {
    heartbeat_with(BoundedVec::try_from_iter([Text::borrowed(warning)]).unwrap())
}

fn heartbeat_with(warnings: BoundedVec<Text<'_>, { protocol::limits::MAX_WARNINGS }>) -> Vec<u8> {
    protocol::wire::encode_to_vec(&Heartbeat {
        agent_version: Text::borrowed("0.1.0"),
        arch: Text::borrowed("aarch64"),
        os: Text::borrowed("linux"),
        podman_version: Text::borrowed("4.3.1"),
        uptime_secs: 1,
        deployments: 1,
        timestamp_ms: 0,
        warnings,
        ..Heartbeat::default()
    })
    .unwrap()
}

/// A status report (format version 3) of a device that holds `revision`
/// back (`phase` Waiting, or Failed for `UpdateLockTimeout`) for `reason`
/// since `since_ms`, until `until_ms`, running `running` meanwhile.
pub(crate) fn waiting_status_bytes(
    revision: u64,
    phase: Phase,
    reason: Reason,
    running: Option<u64>,
    since_ms: u64,
    until_ms: Option<u64>,
) -> Vec<u8> {
    protocol::wire::encode_to_vec(&protocol::DeploymentStatus {
        revision,
        phase,
        containers: BoundedVec::new(),
        message: Text::borrowed("update lock held by pid 4242 (kiosk); images pulled"),
        timestamp_ms: since_ms,
        reason,
        running_revision: running,
        waiting: Some(protocol::status::Waiting { since_ms, until_ms }),
    })
    .unwrap()
}
