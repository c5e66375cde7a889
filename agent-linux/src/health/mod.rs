//! Health checks: the agent runs each container's check itself, because
//! Podman's own health timers need systemd and stay `starting` without it
//! (podman #19326).
//!
//! [`probe`]: one check run once (HTTP(S) `GET`, TCP connect, or a command
//! in the container), bounded by its timeout. [`monitor`]: the results over
//! time (start period, interval, thresholds) and the driver a reconciler
//! owns per container.
//!
//! # How a check reaches the container
//!
//! The agent runs on the host, so an HTTP or TCP check dials an address
//! the host can reach ([`probe::resolve_address`]), chosen in this order:
//!
//! 1. **Host network** (`hostNetwork: true`): `127.0.0.1:<port>`. The
//!    container shares the host's network namespace and listens there
//!    itself; Podman publishes nothing in that mode.
//! 2. **A published port** (the check's port is a `containerPort` with a
//!    `hostPort`): `<hostIP>:<hostPort>`, or `127.0.0.1:<hostPort>` when
//!    `hostIP` is unset or a wildcard. The check takes the path a client on
//!    the board takes (Podman's port forwarding included), and it works
//!    with rootless Podman too, whose container addresses live in a
//!    namespace the host cannot route to.
//! 3. **Otherwise** the container's address on its Podman network (the
//!    bridge, `10.88.0.0/16` by default), read from `podman inspect` after
//!    each start, and the container port itself: rootful Podman routes the
//!    host to its bridge, so a port that is only declared (no `hostPort`)
//!    is checked without being exposed to the network.
//!
//! An exec check needs no address: it runs the command through libpod's
//! exec API (see [`crate::podman::Runtime::exec`]) and passes on exit
//! code 0. HTTPS checks skip certificate verification, as Kubernetes'
//! probes do ([`probe`] says why).

pub mod monitor;
pub mod probe;

pub use monitor::{Change, Checker, Health, Monitor, Timing, Watch};
pub use probe::{Outcome, Probe, Scheme, Target, TargetError, resolve_address};
