//! What a score may ask of the device: the Kubernetes Pod Security
//! Standards *Baseline* by default, loosened only by the device's own
//! `[security]` configuration. A refused score gets a `Failed` status whose
//! message names the container, the rule and the setting that would allow it.

use std::path::{Component, Path, PathBuf};

use protocol::Container;

/// Capabilities the Baseline profile allows a container to add
/// (kubernetes.io/docs/concepts/security/pod-security-standards).
pub const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// What this device allows beyond Baseline (all off by default). Each
/// reconciler reads it from its `reconcile::Context`, so agents (or the
/// simulated devices of a bench) in one process can differ.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowances {
    /// `security.allowed_host_paths`: directories bind mounts may come from.
    pub host_paths: Vec<PathBuf>,
    /// `security.allow_privileged`.
    pub privileged: bool,
    /// `security.allow_host_namespaces`: hostNetwork, hostPID, hostIPC.
    pub host_namespaces: bool,
    /// `security.allowed_capabilities`, normalised (upper case, no `CAP_`).
    pub capabilities: Vec<String>,
    /// `security.allowed_devices`.
    pub devices: Vec<PathBuf>,
}

/// The configuration's spelling rule, so that a score's capability and an
/// allowed one compare alike.
pub use agent_config::normalize_capability;

/// Why a container is refused on this device; the message is the status
/// message, naming the container, the rule and the setting that allows it.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The image reference does not follow the distribution grammar.
    #[error("container {container}: image reference {image:?} does not parse")]
    Image {
        /// The container's name.
        container: String,
        /// The image reference as sent.
        image: String,
        /// What is wrong with it.
        #[source]
        source: ImageReferenceError,
    },
    /// The container asks for more than Baseline and the device does not
    /// allow it.
    #[error(
        "container {container}: {rule} is refused on this device (Pod Security Baseline; allow it with security.{} in the agent's configuration)",
        rule.setting()
    )]
    Refused {
        /// The container's name.
        container: String,
        /// What it asks for.
        rule: Rule,
    },
    /// A bind mount from outside the allowed host directories.
    #[error(
        "container {container}: hostPath {path} is not under an allowed host directory (security.allowed_host_paths on the device)"
    )]
    HostPath {
        /// The container's name.
        container: String,
        /// The host path as sent.
        path: String,
    },
    /// A bind mount of the agent's update-lock directory, or of a path in
    /// it: a score gets the lock with `updateLock: true`, where the agent
    /// puts it, read-only.
    #[error(
        "{field}: {path} is in the agent's update-lock directory {}: the update lock's path is the agent's, not the score's; set `updateLock: true` on the container to get the lock at {}, and bind-mount another host path",
        lock_dir.display(),
        protocol::score_v1::UPDATE_LOCK_FILE
    )]
    UpdateLockPath {
        /// The field, e.g. `containers[0].volumes[1].hostPath`.
        field: String,
        /// The host path as sent.
        path: String,
        /// The agent's lock directory (`update.lock_dir`).
        lock_dir: PathBuf,
    },
}

/// What a container asks of the host beyond Baseline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// `privileged: true`.
    Privileged,
    /// A host namespace; the field name (`hostNetwork`, `hostPID`, `hostIPC`).
    HostNamespace(&'static str),
    /// A capability outside the Baseline set, normalised.
    Capability(String),
    /// A device node.
    Device(String),
}

impl Rule {
    /// The setting of the agent's `[security]` section that allows it.
    pub fn setting(&self) -> &'static str {
        match self {
            Rule::Privileged => "allow_privileged = true",
            Rule::HostNamespace(_) => "allow_host_namespaces = true",
            Rule::Capability(_) => "allowed_capabilities",
            Rule::Device(_) => "allowed_devices",
        }
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rule::Privileged => f.write_str("privileged mode"),
            Rule::HostNamespace(field) => f.write_str(field),
            Rule::Capability(n) => write!(f, "capability {n} (capAdd, outside the Baseline set)"),
            Rule::Device(d) => write!(f, "device {d} (devices)"),
        }
    }
}

/// Checks one container against the rules.
pub fn check_container(c: &Container<'_>, allow: &Allowances) -> Result<(), PolicyError> {
    let container = || c.name.as_str().to_string();
    let refuse = |rule: Rule| {
        Err(PolicyError::Refused {
            container: container(),
            rule,
        })
    };
    if let Err(source) = check_image_reference(c.image.as_str()) {
        return Err(PolicyError::Image {
            container: container(),
            image: c.image.as_str().to_string(),
            source,
        });
    }
    if c.privileged && !allow.privileged {
        return refuse(Rule::Privileged);
    }
    for (set, field) in [
        (c.host_network, "hostNetwork"),
        (c.host_pid, "hostPID"),
        (c.host_ipc, "hostIPC"),
    ] {
        if set && !allow.host_namespaces {
            return refuse(Rule::HostNamespace(field));
        }
    }
    for cap in c.cap_add.iter() {
        let n = normalize_capability(cap.as_str());
        if n == "ALL"
            || (!BASELINE_CAPABILITIES.contains(&n.as_str()) && !allow.capabilities.contains(&n))
        {
            return refuse(Rule::Capability(n));
        }
    }
    for dev in c.devices.iter() {
        let path = Path::new(dev.as_str());
        if !is_normal(path) || !allow.devices.iter().any(|d| d == path) {
            return refuse(Rule::Device(dev.as_str().to_string()));
        }
    }
    for v in c.volumes.iter() {
        if let Some(host) = &v.host_path {
            let path = Path::new(host.as_str());
            if !is_normal(path) || !allow.host_paths.iter().any(|a| path.starts_with(a)) {
                return Err(PolicyError::HostPath {
                    container: container(),
                    path: host.as_str().to_string(),
                });
            }
        }
    }
    Ok(())
}

/// Refuses a volume of container `index` whose `hostPath` is `lock_dir`
/// or inside it. Compared as written and, where they exist, with symbolic
/// links resolved (`/var/run` is often `/run`).
pub fn check_update_lock_path(
    index: usize,
    c: &Container<'_>,
    lock_dir: &Path,
) -> Result<(), PolicyError> {
    let resolved = |p: &Path| std::fs::canonicalize(p).ok();
    let lock_resolved = resolved(lock_dir);
    for (i, v) in c.volumes.iter().enumerate() {
        let Some(host) = &v.host_path else { continue };
        let path = Path::new(host.as_str());
        let inside = path.starts_with(lock_dir)
            || match (resolved(path), &lock_resolved) {
                (Some(p), Some(l)) => p.starts_with(l),
                _ => false,
            };
        if inside {
            return Err(PolicyError::UpdateLockPath {
                field: protocol::validate::FieldPath::container(index, "volumes")
                    .at(i, Some("hostPath"))
                    .to_string(),
                path: host.as_str().to_string(),
                lock_dir: lock_dir.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// Absolute, and no `..` that could climb out of an allowed directory.
fn is_normal(path: &Path) -> bool {
    path.is_absolute() && !path.components().any(|p| matches!(p, Component::ParentDir))
}

/// Why an image reference does not follow the distribution grammar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageReferenceError {
    /// Nothing before the tag or digest.
    #[error("the name is empty")]
    EmptyName,
    /// The name is longer than 255 characters.
    #[error("the name is {0} characters long; the limit is 255")]
    NameTooLong(usize),
    /// The tag has characters the grammar does not allow.
    #[error("tag {0:?} must be [A-Za-z0-9_][A-Za-z0-9_.-]*")]
    Tag(String),
    /// The tag is longer than 128 characters.
    #[error("the tag is {0} characters long; the limit is 128")]
    TagTooLong(usize),
    /// The digest is not `algorithm:hex`.
    #[error("digest {0:?} must be algorithm:hex")]
    DigestShape(String),
    /// The digest's algorithm or hex is not valid.
    #[error("digest {0:?} is not a valid digest (e.g. sha256:<64 hex>)")]
    Digest(String),
    /// The registry part is not a host name with an optional port.
    #[error("registry {0:?} is not a host name with an optional :port")]
    Registry(String),
    /// A path component breaks the grammar.
    #[error(
        "path component {0:?} must be lower-case letters and digits, separated by '.', '_', '__' or dashes"
    )]
    PathComponent(String),
}

/// Checks an image reference against the distribution grammar
/// (github.com/distribution/reference): `[domain[:port]/]path[:tag][@digest]`,
/// name at most 255 characters, tag at most 128.
pub fn check_image_reference(s: &str) -> Result<(), ImageReferenceError> {
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (s, None),
    };
    if let Some(d) = digest {
        check_digest(d)?;
    }
    let slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[slash..].rfind(':') {
        Some(i) => (&rest[..slash + i], Some(&rest[slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(t) = tag {
        check_tag(t)?;
    }
    if name.is_empty() {
        return Err(ImageReferenceError::EmptyName);
    }
    if name.len() > 255 {
        return Err(ImageReferenceError::NameTooLong(name.len()));
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    if parts.len() > 1 {
        let first = parts[0];
        if first.contains(['.', ':'])
            || first == "localhost"
            || first.bytes().any(|b| b.is_ascii_uppercase())
        {
            check_domain(first)?;
            parts.remove(0);
        }
    }
    for p in parts {
        check_path_component(p)?;
    }
    Ok(())
}

fn check_tag(t: &str) -> Result<(), ImageReferenceError> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let b = t.as_bytes();
    if b.is_empty() || !word(b[0]) || !b[1..].iter().all(|&c| word(c) || c == b'.' || c == b'-') {
        return Err(ImageReferenceError::Tag(t.to_string()));
    }
    if t.len() > 128 {
        return Err(ImageReferenceError::TagTooLong(t.len()));
    }
    Ok(())
}

fn check_digest(d: &str) -> Result<(), ImageReferenceError> {
    let Some((alg, hex)) = d.split_once(':') else {
        return Err(ImageReferenceError::DigestShape(d.to_string()));
    };
    let alg_ok = !alg.is_empty()
        && alg.split(['+', '.', '-', '_']).all(|c| {
            let b = c.as_bytes();
            !b.is_empty() && b[0].is_ascii_alphabetic() && b.iter().all(u8::is_ascii_alphanumeric)
        });
    let hex_ok = hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit());
    let sha_ok = alg != "sha256"
        || (hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    if !alg_ok || !hex_ok || !sha_ok {
        return Err(ImageReferenceError::Digest(d.to_string()));
    }
    Ok(())
}

fn check_domain(d: &str) -> Result<(), ImageReferenceError> {
    let bad = || Err(ImageReferenceError::Registry(d.to_string()));
    let (host, port) = if let Some(r) = d.strip_prefix('[') {
        // [IPv6]:port
        let Some((ip, after)) = r.split_once(']') else {
            return bad();
        };
        if ip.is_empty() || !ip.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return bad();
        }
        match after {
            "" => return Ok(()),
            p => match p.strip_prefix(':') {
                Some(port) => ("x", Some(port)),
                None => return bad(),
            },
        }
    } else {
        match d.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (d, None),
        }
    };
    if let Some(p) = port
        && (p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return bad();
    }
    let component_ok = |c: &str| {
        let b = c.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|&x| x.is_ascii_alphanumeric() || x == b'-')
    };
    if !host.split('.').all(component_ok) {
        return bad();
    }
    Ok(())
}

fn check_path_component(p: &str) -> Result<(), ImageReferenceError> {
    let err = || Err(ImageReferenceError::PathComponent(p.to_string()));
    let b = p.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return err();
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator: '.', '_', '__' or one or more '-'.
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &p[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return err();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn image_references_follow_the_distribution_grammar() {
        for ok in [
            "busybox",
            "library/busybox:1.36",
            "docker.io/library/nginx:1.27",
            "localhost/iot-agent-test:busybox",
            "localhost:5000/team/app_x__y.z-w:v1.2-rc.3",
            "registry.example.net/a/b@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "registry.example.net/a/b:1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "[::1]:5000/app:1",
        ] {
            assert!(
                check_image_reference(ok).is_ok(),
                "{ok}: {:?}",
                check_image_reference(ok)
            );
        }
        let long_name = format!("registry.example.net/{}", "a".repeat(250));
        let long_tag = format!("app:{}", "t".repeat(129));
        for bad in [
            "",
            "Nginx",
            "nginx:",
            "nginx:-bad",
            "nginx:1.0 ; rm -rf /",
            "-nginx",
            "nginx..x",
            "docker.io//nginx",
            "registry.example.net:port/app",
            "app@sha256:abc",
            "app@md5",
            "a/b/",
            "$(reboot)/x",
            long_name.as_str(),
            long_tag.as_str(),
        ] {
            assert!(check_image_reference(bad).is_err(), "{bad} parsed");
        }
        let tag128 = format!("app:{}", "t".repeat(128));
        assert!(check_image_reference(&tag128).is_ok());
        let e = check_image_reference(&long_name).unwrap_err();
        assert_eq!(e, ImageReferenceError::NameTooLong(271));
        assert!(e.to_string().contains("255"), "{e}");
        let e = check_image_reference(&long_tag).unwrap_err();
        assert!(e.to_string().contains("128"), "{e}");
    }

    #[test]
    fn refusals_name_the_container_rule_and_setting() {
        use protocol::Text;
        let mut c = Container {
            privileged: true,
            ..Container::new(Text::borrowed("web"), Text::borrowed("localhost/x:1"))
        };
        let e = check_container(&c, &Allowances::default()).unwrap_err();
        assert!(
            matches!(
                e,
                PolicyError::Refused {
                    rule: Rule::Privileged,
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "container web: privileged mode is refused on this device (Pod Security Baseline; allow it with security.allow_privileged = true in the agent's configuration)"
        );
        c.privileged = false;
        c.image = Text::borrowed("Nginx");
        let e = check_container(&c, &Allowances::default()).unwrap_err();
        assert!(matches!(e, PolicyError::Image { .. }), "{e:?}");
        assert!(std::error::Error::source(&e).is_some(), "keeps the cause");
    }

    #[test]
    fn capabilities_normalise() {
        assert_eq!(normalize_capability("cap_net_admin"), "NET_ADMIN");
        assert_eq!(normalize_capability("CHOWN"), "CHOWN");
    }
}
