//! The wire contract between the iot operator and the device agents.
//!
//! Everything that crosses NATS is defined here: bucket names and the key
//! layout and subjects ([`keys`]), the KV headers and the owner value
//! ([`kv`]), the score types users write ([`score`], [`score_v1`]), the values
//! stored in the buckets ([`desired`], [`status`]) and their encoding
//! ([`wire`]): postcard behind a one-byte format version.
//!
//! The crate is `#![no_std]` and decodes from a borrowed buffer without an
//! allocator, so the same types can serve microcontrollers. With the `alloc`
//! feature strings may be owned (needed to build values from JSON); with
//! `json` it converts the user's `{type, data}` JSON into wire payloads.
#![no_std]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod bounded;
pub mod buckets;
pub mod desired;
pub mod heartbeat;
#[cfg(feature = "json")]
pub mod json;
pub mod keys;
pub mod kv;
pub mod labels;
pub mod limits;
#[cfg(feature = "std")]
pub mod permissions;
pub mod score;
pub mod score_v1;
pub mod sealed;
pub mod status;
pub mod text;
pub mod validate;
pub mod wire;

pub use bounded::{BoundedMap, BoundedVec};
pub use desired::{
    DesiredState, LockTimeout, MaintenanceWindow, PayloadEncoding, RolloutPolicy, ScorePayload,
    UpdateGate, UpdateLockPolicy,
};
pub use heartbeat::{Capabilities, DeviceLabels, Heartbeat, ScoreTypeSupport};
pub use keys::{DeploymentKey, KeyError, TokenError};
pub use score::{
    Container, EnvVar, IotScore, PodmanV0Score, Port, PortProtocol, PullPolicy, RestartPolicy,
    ScoreError, Volume,
};
pub use score_v1::{
    ContainerV1, CpuQuantity, EnvVarSource, EnvVarV1, ExecCheck, HealthCheck, HealthCheckAction,
    HealthFailureAction, HttpGetCheck, HttpHeader, HttpScheme, KeyToPath, MemoryQuantity,
    PodmanV1Score, QuantityError, Resources, SecretKeyRef, SecretVolumeSource, TcpSocketCheck,
    VolumeV1,
};
pub use sealed::{
    Binding, PullCredential, Purpose, RegistryLogin, Sealed, SealedPlaintext, SecretSet,
    SecretValue,
};
pub use status::{
    ContainerState, ContainerStatus, DeploymentStatus, Health, Phase, Reason, Waiting,
};
pub use text::{Bytes, Text};
pub use wire::{DecodeError, EncodeError, FORMAT_VERSION};
