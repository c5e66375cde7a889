//! Upper bounds on every list and string that travels on the wire, and the
//! ranges of its numbers.
//!
//! They are part of the contract: a value within them is decodable by every
//! agent, including ones without an allocator, which size their buffers from
//! these constants. Raising a bound is a wire change for devices built with
//! the old value (see the stability statement in the crate README).

/// Containers in one `PodmanV0` or `PodmanV1` score.
pub const MAX_CONTAINERS: usize = 8;
/// Entries in a container's `command`, and separately in its `args`.
pub const MAX_ARGS: usize = 32;
/// Environment variables per container.
pub const MAX_ENV: usize = 32;
/// Published ports per container.
pub const MAX_PORTS: usize = 16;
/// Volumes per container.
pub const MAX_VOLUMES: usize = 16;
/// Labels per container.
pub const MAX_LABELS: usize = 16;
/// Added capabilities (`capAdd`) per container.
pub const MAX_CAPABILITIES: usize = 16;
/// Host devices (`devices`) per container.
pub const MAX_DEVICES: usize = 8;
/// Length in bytes of a name: container, env var, volume, label key,
/// capability.
pub const MAX_NAME_LEN: usize = 63;
/// Length in bytes of an image reference (the distribution grammar's 255
/// for the name, plus tag or digest).
pub const MAX_IMAGE_LEN: usize = 512;
/// Length in bytes of any other string: an argument, env value, path, label
/// value, host IP, message.
pub const MAX_STRING_LEN: usize = 1024;
/// Length in bytes of a score type name (`PodmanV0`).
pub const MAX_TYPE_NAME_LEN: usize = 63;
/// Warnings in one heartbeat (format version 2).
pub const MAX_WARNINGS: usize = 3;
/// Length in bytes of one heartbeat warning.
pub const MAX_WARNING_LEN: usize = 200;
/// Labels a board declares in one heartbeat (format version 3).
pub const MAX_DEVICE_LABELS: usize = 16;
/// Length in bytes of a board label key, prefix included, and of a value
/// (Kubernetes' own bound for a value and a key's name part).
pub const MAX_LABEL_LEN: usize = 63;
/// Score types one heartbeat's capabilities list (format version 3).
pub const MAX_SCORE_TYPES: usize = 8;
/// Format versions listed per capability (format version 4; version 3
/// heartbeats list at most [`MAX_FORMAT_VERSIONS_V3`]).
pub const MAX_FORMAT_VERSIONS: usize = 8;
/// Format versions a version-3 heartbeat lists per capability: what the
/// previous release decodes. A longer list makes the heartbeat version 4.
pub const MAX_FORMAT_VERSIONS_V3: usize = 4;
/// Size in bytes of the largest heartbeat every bound above allows; the
/// `device-heartbeat` bucket's `max_value_size` (a test checks the sum).
pub const MAX_HEARTBEAT_SIZE: usize = 4096;
/// Containers reported in one deployment status.
pub const MAX_STATUS_CONTAINERS: usize = MAX_CONTAINERS;
/// Headers of one `PodmanV1` HTTP health check.
pub const MAX_HTTP_HEADERS: usize = 8;
/// Longest period in seconds of a `PodmanV1` health check (its interval,
/// timeout and start period) and of a container's stop grace period.
pub const MAX_PERIOD_SECONDS: u32 = 3600;
/// Largest failure or success threshold of a `PodmanV1` health check.
pub const MAX_THRESHOLD: u32 = 1000;
/// Smallest memory limit in bytes: Podman refuses less (6 MiB).
pub const MIN_MEMORY_BYTES: u64 = 6 * 1024 * 1024;
/// Largest memory limit in bytes (1 TiB).
pub const MAX_MEMORY_BYTES: u64 = 1 << 40;
/// Smallest CPU limit, in millicores.
pub const MIN_CPU_MILLIS: u32 = 10;
/// Largest CPU limit, in millicores (1000 cores).
pub const MAX_CPU_MILLIS: u32 = 1_000_000;
/// Largest CPU weight (cgroup v2 `cpu.weight`, 1 to 10000).
pub const MAX_CPU_WEIGHT: u16 = 10_000;
/// Largest pids limit (the kernel's `pid_max` ceiling, 2^22).
pub const MAX_PIDS_LIMIT: u32 = 4_194_304;
/// Longest rollout period in seconds (`minHealthySeconds`,
/// `progressDeadlineSeconds`): one day.
pub const MAX_ROLLOUT_SECONDS: u32 = 86_400;
/// Maintenance windows in one desired state (DesiredState format 4).
pub const MAX_WINDOWS: usize = 8;
/// Longest cron expression of a maintenance window, in bytes.
pub const MAX_CRON_LEN: usize = 128;
/// Longest maintenance window: a day (a window that never closes is no window).
pub const MAX_WINDOW_SECONDS: u32 = 86_400;
/// Longest an update lock may hold a revision back before its `onTimeout`
/// applies: a week.
pub const MAX_LOCK_TIMEOUT_SECONDS: u32 = 604_800;
/// Size in bytes of one encoded value. The buckets are created with this as
/// `max_value_size`, so the server rejects anything larger as well.
pub const MAX_VALUE_SIZE: usize = 64 * 1024;
