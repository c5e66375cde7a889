//! The iot operator: `Deployment` custom resources into NATS desired state,
//! device status back into the resources.
//!
//! Entry points for other crates (the whole-system tests and the fleet bench
//! in `e2e/`):
//! - [`controller::reconcile`] with a [`controller::Context`]: the real
//!   reconcile function, to drive through a kube `Client` (mocked or real);
//! - [`apply::plan`] + [`apply::apply`] / [`apply::remove`]: what the
//!   controller and `iot-operator apply/delete` write to NATS;
//! - [`status::StatusCache`] + [`status::fold_status`]: device reports folded
//!   into a CR status;
//! - [`targeting::TargetIndex`]: Device labels and Deployment selectors,
//!   resolved into targets (fed by the controller's Device watch);
//! - [`nats::Nats`]: the connection, bucket creation and KV access;
//! - [`history::History`]: a Deployment's revisions as ControllerRevision
//!   objects, the scores a rollback writes back;
//! - [`inventory::run`] with an [`inventory::Inventory`]: the Device
//!   inventory's loop (one Device object per board, its status under a
//!   bounded write rate, decommissioning); the fleet bench measures it;
//! - `testing::MockApiServer` (feature `testing`): a kube `Client` over a
//!   mock API server, for tests only.

pub mod apply;
pub mod capability_gate;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod history;
pub mod inventory;
pub mod manifest;
pub mod metrics;
pub mod nats;
pub mod rollout;
pub mod secrets;
pub mod status;
pub mod targeting;
#[cfg(feature = "testing")]
pub mod testing;

pub use apply::{ApplyOutcome, Plan, PlanError, apply, plan, remove};
pub use controller::{Context, ControllerConfig, Error, error_policy, reconcile};
pub use crd::{Deployment, DeploymentSpec, DeploymentStatus, Device};
pub use nats::{Credentials, Nats, NatsConfig, NatsError, TlsConfig};
pub use status::{Observed, StatusCache, fold_status};
