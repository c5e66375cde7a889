//! Which devices a Deployment runs on: `spec.targetDevices` plus the Device
//! objects `spec.targetSelector` selects, and which of those may be written.
//!
//! - [`selector`]: a selector checked as the API server checks it
//!   ([`TargetSelector`]), matched with kube's `Selector`;
//! - [`index`]: every Device's labels, indexed label -> Devices and
//!   anchor label -> Deployments ([`TargetIndex`]), so that resolving a
//!   selector with `matchLabels` (else an `In`, else an `Exists`) reads
//!   only the Devices that carry that label, and one Device's change
//!   re-evaluates only the Deployments anchored on its labels (plus those
//!   with no anchor: only `NotIn`/`DoesNotExist`, or `{}`, scanned);
//! - [`watch`]: the Device watch that keeps the index current and names the
//!   Deployments to reconcile again;
//! - [`capabilities`]: the targets held back because their agent's
//!   heartbeat says it cannot read the value.
//!
//! Until the first full list of Devices is in, selectors are not resolved
//! (a reconcile then waits): an empty index would remove every
//! selector-derived key.

pub mod capabilities;
pub mod index;
pub mod selector;
pub mod watch;

pub use index::{DeploymentRef, TargetIndex, deployment_ref};
pub use selector::{Anchor, Labels, SelectorError, TargetSelector};
