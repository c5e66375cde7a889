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

/// `CAP_NET_ADMIN`, `net_admin` -> `NET_ADMIN`.
pub fn normalize_capability(cap: &str) -> String {
    let up = cap.trim().to_ascii_uppercase();
    up.strip_prefix("CAP_").unwrap_or(&up).to_string()
}

/// Checks one container against the rules; `Err` is the status message.
pub fn check_container(c: &Container<'_>, allow: &Allowances) -> Result<(), String> {
    let name = c.name.as_str();
    let refuse = |rule: &str, setting: &str| {
        Err(format!(
            "container {name}: {rule} is refused on this device (Pod Security Baseline; allow it with security.{setting} in the agent's configuration)"
        ))
    };
    if let Err(e) = check_image_reference(c.image.as_str()) {
        return Err(format!(
            "container {name}: image reference {:?} does not parse: {e}",
            c.image.as_str()
        ));
    }
    if c.privileged && !allow.privileged {
        return refuse("privileged mode", "allow_privileged = true");
    }
    for (set, field) in [
        (c.host_network, "hostNetwork"),
        (c.host_pid, "hostPID"),
        (c.host_ipc, "hostIPC"),
    ] {
        if set && !allow.host_namespaces {
            return refuse(field, "allow_host_namespaces = true");
        }
    }
    for cap in c.cap_add.iter() {
        let n = normalize_capability(cap.as_str());
        if n == "ALL"
            || (!BASELINE_CAPABILITIES.contains(&n.as_str()) && !allow.capabilities.contains(&n))
        {
            return refuse(
                &format!("capability {n} (capAdd, outside the Baseline set)"),
                "allowed_capabilities",
            );
        }
    }
    for dev in c.devices.iter() {
        let path = Path::new(dev.as_str());
        if !is_normal(path) || !allow.devices.iter().any(|d| d == path) {
            return refuse(
                &format!("device {} (devices)", dev.as_str()),
                "allowed_devices",
            );
        }
    }
    for v in c.volumes.iter() {
        if let Some(host) = &v.host_path {
            let path = Path::new(host.as_str());
            if !is_normal(path) || !allow.host_paths.iter().any(|a| path.starts_with(a)) {
                return Err(format!(
                    "container {name}: hostPath {} is not under an allowed host directory (security.allowed_host_paths on the device)",
                    host.as_str()
                ));
            }
        }
    }
    Ok(())
}

/// Absolute, and no `..` that could climb out of an allowed directory.
fn is_normal(path: &Path) -> bool {
    path.is_absolute() && !path.components().any(|p| matches!(p, Component::ParentDir))
}

/// Checks an image reference against the distribution grammar
/// (github.com/distribution/reference): `[domain[:port]/]path[:tag][@digest]`,
/// name at most 255 characters, tag at most 128.
pub fn check_image_reference(s: &str) -> Result<(), String> {
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
        return Err("the name is empty".into());
    }
    if name.len() > 255 {
        return Err(format!(
            "the name is {} characters long; the limit is 255",
            name.len()
        ));
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

fn check_tag(t: &str) -> Result<(), String> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let b = t.as_bytes();
    if b.is_empty() || !word(b[0]) || !b[1..].iter().all(|&c| word(c) || c == b'.' || c == b'-') {
        return Err(format!("tag {t:?} must be [A-Za-z0-9_][A-Za-z0-9_.-]*"));
    }
    if t.len() > 128 {
        return Err(format!(
            "the tag is {} characters long; the limit is 128",
            t.len()
        ));
    }
    Ok(())
}

fn check_digest(d: &str) -> Result<(), String> {
    let Some((alg, hex)) = d.split_once(':') else {
        return Err(format!("digest {d:?} must be algorithm:hex"));
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
        return Err(format!(
            "digest {d:?} is not a valid digest (e.g. sha256:<64 hex>)"
        ));
    }
    Ok(())
}

fn check_domain(d: &str) -> Result<(), String> {
    let bad = || {
        Err(format!(
            "registry {d:?} is not a host name with an optional :port"
        ))
    };
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

fn check_path_component(p: &str) -> Result<(), String> {
    let err = || {
        Err(format!(
            "path component {p:?} must be lower-case letters and digits, separated by '.', '_', '__' or dashes"
        ))
    };
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
        assert!(e.contains("255"), "{e}");
        let e = check_image_reference(&long_tag).unwrap_err();
        assert!(e.contains("128"), "{e}");
    }

    #[test]
    fn capabilities_normalise() {
        assert_eq!(normalize_capability("cap_net_admin"), "NET_ADMIN");
        assert_eq!(normalize_capability("CHOWN"), "CHOWN");
    }
}
