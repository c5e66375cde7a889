//! The golden byte vectors: the exact encoding of one value of each wire
//! type. `golden.rs` checks `encode_to_vec` and `decode` against them (with
//! the values built from JSON), `encode_into.rs` checks the allocation-free
//! encoder (also without the `alloc` feature). These never change: a test
//! that fails against them is a wire break.
#![allow(dead_code)]

/// `PodmanV0Score`: one container, name and image.
pub const SMALL_SCORE: &str = "01010263302572656769737472792e6578616d706c652e6e65742f7465616d2f6170702d303a312e322e300000000000000100000000000000";
/// `PodmanV0Score`: the design example (every kind of field).
pub const TYPICAL_SCORE: &str = "0101037765621c646f636b65722e696f2f6c6962726172792f6e67696e783a312e32370101056e67696e780102022d670b6461656d6f6e206f66663b01084752454554494e470568656c6c6f015001903f000107302e302e302e300201046461746100052f64617461000001082f7372762f776562042f7372760100010104746965720866726f6e74656e64000000000000";
/// `PodmanV0Score`: one container asking for every privilege.
pub const SECURITY_SCORE: &str = "01010263302572656769737472792e6578616d706c652e6e65742f7465616d2f6170702d303a312e322e3000000000000001000101010101094e45545f41444d494e010c2f6465762f74747955534230";
/// `DesiredState` carrying `SMALL_SCORE` as `PodmanV0`.
pub const DESIRED: &str = "010968656c6c6f2d776562fda48196eef6c3a02f08506f646d616e5630003901010263302572656769737472792e6578616d706c652e6e65742f7465616d2f6170702d303a312e322e300000000000000100000000000000";
/// `DesiredState` carrying a type this protocol does not know, as JSON.
pub const DESIRED_UNKNOWN: &str = "0107736d6172742d312a0a4f6b644170706c79563001077b2278223a317d";
/// `DeploymentStatus` with two containers.
pub const STATUS: &str =
    "012a030203776562020000036c6f6705010202106578697465642066726f6d203132333480d0dfb4ab33";
/// `Heartbeat`.
pub const HEARTBEAT: &str =
    "0105302e312e300761617263683634056c696e757805342e332e31901c0380d0dfb4ab33";
/// `Heartbeat` with one warning (`disk full`): format version 2, the version-1
/// fields, then the list of warnings.
pub const HEARTBEAT_V2: &str = "0205302e312e300761617263683634056c696e757805342e332e31901c0380d0dfb4ab33\
                                01096469736b2066756c6c";
/// `Heartbeat` in format version 3: `HEARTBEAT_V2`'s fields, then kernel
/// `6.6.51-v8`, a boot id, labels `board=rpi4` and `site=lyon`, and the
/// first release's capabilities (`DesiredState` 1, `PodmanV0` 1).
pub const HEARTBEAT_V3: &str = "0305302e312e300761617263683634056c696e757805342e332e31901c0380d0dfb4ab3301096469736b2066756c6c09362e362e35312d76382462306630613263342d313131312d323232322d333333332d3434343435353535363636360205626f61726404727069340473697465046c796f6e01010108506f646d616e56300101";

/// `DesiredState` of `DESIRED` with the rollout policy [`ROLLOUT`]: format
/// version 2, `DESIRED`'s fields, then the policy.
pub const DESIRED_STATE_V2: &str = "020968656c6c6f2d776562fda48196eef6c3a02f08506f646d616e5630003901010263302572656769737472792e6578616d706c652e6e65742f7465616d2f6170702d303a312e322e3000000000000001000000000000001e7801";
/// `DesiredState` of `DESIRED_STATE_V2` retried twice (`attempt` 2): format
/// version 3, `DESIRED_STATE_V2`'s fields, then the attempt.
pub const DESIRED_STATE_V3: &str = "030968656c6c6f2d776562fda48196eef6c3a02f08506f646d616e5630003901010263302572656769737472792e6578616d706c652e6e65742f7465616d2f6170702d303a312e322e3000000000000001000000000000001e780102";
/// `DesiredState` of `DESIRED_STATE_V3` gated by [`gate`]: format version
/// 4, `DESIRED_STATE_V3`'s fields, then the gate.
pub const DESIRED_STATE_V4: &str = "040968656c6c6f2d776562fda48196eef6c3a02f08506f646d616e5630003901010263302572656769737472792e6578616d706c652e6e65742f7465616d2f6170702d303a312e322e3000000000000001000000000000001e78010201901c000109302032202a202a202a0c4575726f70652f5061726973a03800";
/// `DeploymentStatus` in format version 3 ([`status_v3`]): waiting for the
/// update lock.
pub const STATUS_V3: &str = "032b0c010377656202000010757064617465206c6f636b2068656c6480d0dfb4ab3307012a01000001c0cba2b4ab3300";
/// `DeploymentStatus` in format version 2 ([`status_v2`]): a rollback after
/// an OOM kill, with health.
pub const STATUS_V2: &str = "022a0b0203776562020000036c6f6708019202030e6c6f673a204f4f4d4b696c6c656480d0dfb4ab3301012902010100010202";
/// `PodmanV1Score` ([`podman_v1_score`]): one container setting every field
/// `PodmanV0` lacks.
pub const PODMAN_V1_SCORE: &str = "0101037765621c646f636b65722e696f2f6c6962726172792f6e67696e783a312e3237000000015001903f000000000100000000000000010001082f6865616c74687a50000107582d50726f626503696f7400050204020a00018080804001f40301c801014001140109313030303a3130303001042f737276010101";
/// `DesiredState` carrying `PODMAN_V1_SCORE` as `PodmanV1` (format version 1:
/// a new score type needs no new envelope).
pub const DESIRED_PODMAN_V1: &str = "010968656c6c6f2d776562f2d0b287dcd0c5bcff0108506f646d616e5631007c0101037765621c646f636b65722e696f2f6c6962726172792f6e67696e783a312e3237000000015001903f000000000100000000000000010001082f6865616c74687a50000107582d50726f626503696f7400050204020a00018080804001f40301c801014001140109313030303a3130303001042f737276010101";
/// `Heartbeat` in format version 4 ([`heartbeat_v4`]): `HEARTBEAT_V3`'s
/// fields, then the device's sealing key.
pub const HEARTBEAT_V4: &str = "0405302e312e300761617263683634056c696e757805342e332e31901c0380d0dfb4ab3301096469736b2066756c6c09362e362e35312d76382462306630613263342d313131312d323232322d333333332d3434343435353535363636360205626f61726404727069340473697465046c796f6e01010108506f646d616e563001013858425358344e4751504251444b5852444a32444e425947575a3550514151354e55464d473551374c5951435546465a4f5a534a4141585849";
/// `DesiredState` of `DESIRED_STATE_V4` with [`secrets`]: format version 5,
/// `DESIRED_STATE_V4`'s fields, then the sealed logins and values.
pub const DESIRED_STATE_V5: &str = "050968656c6c6f2d776562fda48196eef6c3a02f08506f646d616e5630003901010263302572656769737472792e6578616d706c652e6e65742f7465616d2f6170702d303a312e322e3000000000000001000000000000001e78010201901c000109302032202a202a202a0c4575726f70652f5061726973a03800010e3132372e302e302e313a353030303858425358344e4751504251444b5852444a32444e425947575a3550514151354e55464d473551374c5951435546465a4f5a534a4141585849385844355a504c5737444f4d4a33545055575748523759374a474f355045564f4746324448574d443544445534365550334f47364e4e5958590c786b76312d626f782d6f6e65010264620870617373776f72643858425358344e4751504251444b5852444a32444e425947575a3550514151354e55464d473551374c5951435546465a4f5a534a4141585849385844355a504c5737444f4d4a33545055575748523759374a474f355045564f4746324448574d443544445534365550334f47364e4e5958590c786b76312d626f782d74776f";
/// `PodmanV1Score` ([`podman_v1_secrets_score`]): env from a Secret and a
/// Secret volume.
pub const PODMAN_V1_SECRETS_SCORE: &str = "010103617070193132372e302e302e313a353030302f7465616d2f6170703a31000002044d4f44450470726f64000b44425f50415353574f524400010264620870617373776f726400010000082f6574632f746c73010103746c73010663612e6372740663612e70656d0180020001000000000000000000000000000000000000";
/// postcard of [`binding`]: what a sealed box's plaintext starts with.
pub const BINDING: &str = "0570692d30310968656c6c6f2d7765622a010264620870617373776f7264";

use protocol::{
    Binding, BoundedVec, Bytes, Capabilities, ContainerState, ContainerStatus, ContainerV1,
    CpuQuantity, DeploymentStatus, EnvVarSource, EnvVarV1, Health, HealthCheck,
    HealthFailureAction, Heartbeat, HttpHeader, KeyToPath, LockTimeout, MaintenanceWindow,
    MemoryQuantity, Phase, PodmanV1Score, Port, PortProtocol, PullCredential, Purpose, Reason,
    Resources, RolloutPolicy, Sealed, SecretKeyRef, SecretSet, SecretValue, SecretVolumeSource,
    Text, UpdateGate, UpdateLockPolicy, VolumeV1, Waiting,
};

/// The rollout policy of `DESIRED_STATE_V2`.
pub const ROLLOUT: RolloutPolicy = RolloutPolicy {
    min_healthy_seconds: 30,
    progress_deadline_seconds: 120,
    auto_rollback: true,
};

/// The status of `STATUS` (version 1).
pub fn status() -> DeploymentStatus<'static> {
    let web = ContainerStatus::new(Text::borrowed("web"), ContainerState::Running);
    let mut log = ContainerStatus::new(Text::borrowed("log"), ContainerState::Exited);
    log.exit_code = Some(1);
    log.restart_count = 2;
    DeploymentStatus {
        revision: 42,
        phase: Phase::Running,
        containers: BoundedVec::try_from_iter([web, log]).expect("two containers"),
        message: Text::borrowed("exited from 1234"),
        timestamp_ms: 1_764_000_000_000,
        reason: Reason::None,
        running_revision: None,
        waiting: None,
    }
}

/// The status of `STATUS_V2`: revision 42 rolled back to 41 because `log`
/// was OOM-killed and now waits for its restart; `web` is healthy.
pub fn status_v2() -> DeploymentStatus<'static> {
    let mut web = ContainerStatus::new(Text::borrowed("web"), ContainerState::Running);
    web.health = Some(Health::Healthy);
    let mut log = ContainerStatus::new(Text::borrowed("log"), ContainerState::Waiting);
    log.exit_code = Some(137);
    log.restart_count = 3;
    log.health = Some(Health::Unhealthy);
    log.reason = Reason::OOMKilled;
    DeploymentStatus {
        revision: 42,
        phase: Phase::RolledBack,
        containers: BoundedVec::try_from_iter([web, log]).expect("two containers"),
        message: Text::borrowed("log: OOMKilled"),
        timestamp_ms: 1_764_000_000_000,
        reason: Reason::CrashLoopBackOff,
        running_revision: Some(41),
        waiting: None,
    }
}

/// The gate of `DESIRED_STATE_V4`: the update lock for at most an hour,
/// then fail; a nightly two-hour window in Paris.
pub fn gate() -> UpdateGate<'static> {
    UpdateGate {
        update_lock: Some(UpdateLockPolicy {
            timeout_seconds: 3600,
            on_timeout: LockTimeout::Fail,
        }),
        windows: BoundedVec::try_from_iter([MaintenanceWindow {
            at: Text::borrowed("0 2 * * *"),
            time_zone: Text::borrowed("Europe/Paris"),
            duration_seconds: 7200,
        }])
        .expect("one window"),
        force: false,
    }
}

/// The status of `STATUS_V3`: revision 43 waits for the update lock while
/// the device runs revision 42.
pub fn status_v3() -> DeploymentStatus<'static> {
    let web = ContainerStatus::new(Text::borrowed("web"), ContainerState::Running);
    DeploymentStatus {
        revision: 43,
        phase: Phase::Waiting,
        containers: BoundedVec::try_from_iter([web]).expect("one container"),
        message: Text::borrowed("update lock held"),
        timestamp_ms: 1_764_000_000_000,
        reason: Reason::UpdateLocked,
        running_revision: Some(42),
        waiting: Some(Waiting {
            since_ms: 1_763_999_000_000,
            until_ms: None,
        }),
    }
}

/// The score of `PODMAN_V1_SCORE`, from borrowed strings only (it is also
/// the JSON of the tests' `common::PODMAN_V1_JSON`).
pub fn podman_v1_score() -> PodmanV1Score<'static> {
    let mut c = ContainerV1::new(
        Text::borrowed("web"),
        Text::borrowed("docker.io/library/nginx:1.27"),
    );
    c.ports
        .push(Port {
            container_port: 80,
            host_port: Some(8080),
            protocol: PortProtocol::Tcp,
            host_ip: None,
        })
        .expect("one port");
    let mut check = HealthCheck::http_get(80);
    if let Some(h) = &mut check.http_get {
        h.path = Text::borrowed("/healthz");
        h.http_headers
            .push(HttpHeader {
                name: Text::borrowed("X-Probe"),
                value: Text::borrowed("iot"),
            })
            .expect("one header");
    }
    check.interval_seconds = 5;
    check.timeout_seconds = 2;
    check.failure_threshold = 4;
    check.success_threshold = 2;
    check.start_period_seconds = 10;
    check.on_failure = HealthFailureAction::Restart;
    c.health_check = Some(check);
    c.resources = Resources {
        memory_limit: Some(MemoryQuantity(128 << 20)),
        cpu_limit: Some(CpuQuantity(500)),
        cpu_weight: Some(200),
        pids_limit: Some(64),
    };
    c.stop_grace_period_seconds = Some(20);
    c.user = Some(Text::borrowed("1000:1000"));
    c.working_dir = Some(Text::borrowed("/srv"));
    c.read_only_root_filesystem = true;
    c.init = true;
    c.update_lock = true;
    PodmanV1Score {
        containers: BoundedVec::try_from_iter([c]).expect("one container"),
    }
}

/// The heartbeat of `HEARTBEAT` (no warnings) and `HEARTBEAT_V2` (warnings).
pub fn heartbeat(warnings: &[&'static str]) -> Heartbeat<'static> {
    Heartbeat {
        agent_version: Text::borrowed("0.1.0"),
        arch: Text::borrowed("aarch64"),
        os: Text::borrowed("linux"),
        podman_version: Text::borrowed("4.3.1"),
        uptime_secs: 3600,
        deployments: 3,
        timestamp_ms: 1_764_000_000_000,
        warnings: BoundedVec::try_from_iter(warnings.iter().map(|w| Text::borrowed(w)))
            .expect("at most MAX_WARNINGS"),
        ..Heartbeat::default()
    }
}

/// The heartbeat of `HEARTBEAT_V3`.
pub fn heartbeat_v3() -> Heartbeat<'static> {
    let mut h = heartbeat(&["disk full"]);
    h.kernel = Text::borrowed("6.6.51-v8");
    h.boot_id = Text::borrowed("b0f0a2c4-1111-2222-3333-444455556666");
    for (k, v) in [("board", "rpi4"), ("site", "lyon")] {
        h.labels
            .insert(Text::borrowed(k), Text::borrowed(v))
            .expect("within MAX_DEVICE_LABELS");
    }
    h.capabilities = Capabilities::first_release();
    h
}

/// A device's public sealing key (an nkeys curve key) in the vectors.
pub const SEALING_KEY: &str = "XBSX4NGQPBQDKXRDJ2DNBYGWZ5PQAQ5NUFMG5Q7LYQCUFFZOZSJAAXXI";
/// An ephemeral sender key in the vectors.
pub const SENDER_KEY: &str = "XD5ZPLW7DOMJ3TPUWWHR7Y7JGO5PEVOGF2DHWMD5DDU46UP3OG6NNYXY";

/// The heartbeat of `HEARTBEAT_V4`: `HEARTBEAT_V3`'s, with a sealing key.
pub fn heartbeat_v4() -> Heartbeat<'static> {
    let mut h = heartbeat_v3();
    h.sealing_key = Text::borrowed(SEALING_KEY);
    h
}

/// A sealed value in the vectors (its box is not a real one: the wire
/// layout is what is pinned here, the crypto is the `sealing` crate's).
pub fn sealed(tag: u8) -> Sealed<'static> {
    const BOXES: [&[u8]; 2] = [b"xkv1-box-one", b"xkv1-box-two"];
    Sealed {
        recipient: Text::borrowed(SEALING_KEY),
        sender: Text::borrowed(SENDER_KEY),
        boxed: Bytes::borrowed(BOXES[usize::from(tag) % 2]),
    }
}

/// The secrets of `DESIRED_STATE_V5`: a login for a registry on loopback
/// and the `password` key of Secret `db`.
pub fn secrets() -> SecretSet<'static> {
    SecretSet {
        pull: BoundedVec::try_from_iter([PullCredential {
            registry: Text::borrowed("127.0.0.1:5000"),
            sealed: sealed(0),
        }])
        .expect("one login"),
        values: BoundedVec::try_from_iter([SecretValue {
            secret: Text::borrowed("db"),
            key: Text::borrowed("password"),
            sealed: sealed(1),
        }])
        .expect("one value"),
    }
}

/// A binding as the sealing crate puts it in a box.
pub fn binding() -> Binding<'static> {
    Binding {
        device: Text::borrowed("pi-01"),
        deployment: Text::borrowed("hello-web"),
        revision: 42,
        purpose: Purpose::Value {
            secret: Text::borrowed("db"),
            key: Text::borrowed("password"),
        },
    }
}

/// The score of `PODMAN_V1_SECRETS_SCORE`: a container with a plain env
/// variable, one from a Secret, and a Secret volume with one item.
pub fn podman_v1_secrets_score() -> PodmanV1Score<'static> {
    let mut c = ContainerV1::new(
        Text::borrowed("app"),
        Text::borrowed("127.0.0.1:5000/team/app:1"),
    );
    c.env = BoundedVec::try_from_iter([
        EnvVarV1 {
            name: Text::borrowed("MODE"),
            value: Text::borrowed("prod"),
            value_from: None,
        },
        EnvVarV1 {
            name: Text::borrowed("DB_PASSWORD"),
            value: Text::borrowed(""),
            value_from: Some(EnvVarSource {
                secret_key_ref: SecretKeyRef {
                    name: Text::borrowed("db"),
                    key: Text::borrowed("password"),
                },
            }),
        },
    ])
    .expect("two variables");
    c.volumes = BoundedVec::try_from_iter([VolumeV1 {
        name: None,
        host_path: None,
        mount_path: Text::borrowed("/etc/tls"),
        read_only: true,
        secret: Some(SecretVolumeSource {
            secret_name: Text::borrowed("tls"),
            items: BoundedVec::try_from_iter([KeyToPath {
                key: Text::borrowed("ca.crt"),
                path: Text::borrowed("ca.pem"),
            }])
            .expect("one item"),
            default_mode: Some(0o400),
        }),
    }])
    .expect("one volume");
    PodmanV1Score {
        containers: BoundedVec::try_from_iter([c]).expect("one container"),
    }
}
