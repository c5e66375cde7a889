//! The registry helper: an image pushed from Podman pulls back from it, a
//! name never pushed does not, and the access log counts the pulls. The
//! secure registry (TLS from a test CA, htpasswd) serves Podman, verifying
//! TLS, only with the right password, takes a new one, and is refused by a
//! client without the CA.

#![allow(clippy::unwrap_used, missing_docs)]

use testkit::PodmanService;
use testkit::registry::Registry;

const IMAGE: &str = "localhost/iot-test-busybox:1";

/// Whether `podman pull` of `reference` over plain HTTP succeeds.
fn pull(podman: &PodmanService, reference: &str) -> bool {
    podman
        .command()
        .args(["pull", "--quiet", "--tls-verify=false", reference])
        .output()
        .unwrap()
        .status
        .success()
}

fn exists(podman: &PodmanService, reference: &str) -> bool {
    podman
        .command()
        .args(["image", "exists", reference])
        .status()
        .unwrap()
        .success()
}

#[test]
fn a_pushed_image_pulls_back_and_the_pull_is_logged() {
    let Some(podman) = PodmanService::start() else {
        return;
    };
    let Some(registry) = Registry::start() else {
        return;
    };
    podman.ensure_busybox_image(IMAGE);

    let reference = registry.push(&podman, IMAGE, "testkit/busybox:pushed");
    assert_eq!(
        reference,
        format!("127.0.0.1:{}/testkit/busybox:pushed", registry.port())
    );
    assert_eq!(registry.manifest_requests(), 0, "{}", registry.access_log());
    assert!(!exists(&podman, &reference), "{reference} is already here");

    assert!(pull(&podman, &reference), "{}", registry.log());
    assert!(exists(&podman, &reference));
    let pulled = podman.run(&["image", "inspect", "--format", "{{.Id}}", &reference]);
    let local = podman.run(&["image", "inspect", "--format", "{{.Id}}", IMAGE]);
    assert_eq!(pulled, local, "the pulled image is not the pushed one");
    assert!(
        registry.manifest_requests() > 0,
        "{}",
        registry.access_log()
    );
    podman.run(&["rmi", &reference]);

    let missing = format!("{}/testkit/busybox:never-pushed", registry.host());
    assert!(!pull(&podman, &missing), "{missing} pulled");
}

/// `podman pull` over verified TLS (`--cert-dir` when given instead of
/// `/etc/containers/certs.d`): Podman's stderr on failure.
fn pull_secure(
    podman: &PodmanService,
    reference: &str,
    creds: Option<&str>,
    cert_dir: Option<&std::path::Path>,
) -> Result<(), String> {
    let mut cmd = podman.command();
    cmd.args(["pull", "--quiet", "--tls-verify=true"]);
    if let Some(creds) = creds {
        cmd.args(["--creds", creds]);
    }
    if let Some(dir) = cert_dir {
        cmd.arg("--cert-dir").arg(dir);
    }
    let out = cmd.arg(reference).output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `X-Registry-Auth` as the libpod API takes it (and the agent sends it):
/// base64url of the JSON login.
fn registry_auth(user: &str, password: &str, server: &str) -> String {
    let json = serde_json::json!({
        "username": user,
        "password": password,
        "serveraddress": server,
    });
    data_encoding::BASE64URL.encode(json.to_string().as_bytes())
}

/// `POST /libpod/images/pull` on the service's socket, as the agent pulls
/// (TLS verification on, the CA from `/etc/containers/certs.d`): the
/// error Podman reports, in the status or in the pull stream.
fn api_pull(podman: &PodmanService, reference: &str, auth: Option<&str>) -> Result<(), String> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(podman.socket_path()).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(120)))
        .unwrap();
    let auth = auth
        .map(|a| format!("X-Registry-Auth: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "POST /v4.0.0/libpod/images/pull?reference={reference}&policy=always&quiet=true&tlsVerify=true HTTP/1.0\r\n\
         Host: d\r\nContent-Length: 0\r\n{auth}\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    if status != "200" {
        return Err(format!("{head}\n{body}"));
    }
    for line in body.lines() {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
            && let Some(err) = v.get("error").and_then(|e| e.as_str())
            && !err.is_empty()
        {
            return Err(err.to_string());
        }
    }
    Ok(())
}

fn remove(podman: &PodmanService, reference: &str) {
    let _ = podman.command().args(["rmi", "-f", reference]).output();
}

/// An error Podman reports for a refused login.
fn is_unauthorized(err: &str) -> bool {
    let e = err.to_ascii_lowercase();
    e.contains("unauthorized") || e.contains("authentication required")
}

#[test]
fn a_secure_registry_serves_only_the_right_password_over_verified_tls() {
    let Some(podman) = PodmanService::start() else {
        return;
    };
    let Some(registry) = Registry::start_secure(&[("alice", "first-pass"), ("bob", "bobs-pass")])
    else {
        return;
    };
    podman.ensure_busybox_image(IMAGE);
    let host = registry.host();

    let err = podman
        .command()
        .args([
            "push",
            "--quiet",
            "--tls-verify=true",
            "--creds",
            "alice:wrong",
        ])
        .args([IMAGE, &format!("{host}/testkit/secure:wrong")])
        .output()
        .unwrap();
    assert!(!err.status.success(), "a push with a wrong password worked");
    assert!(
        is_unauthorized(&String::from_utf8_lossy(&err.stderr)),
        "{}",
        String::from_utf8_lossy(&err.stderr)
    );

    let reference = registry.push_as(&podman, IMAGE, "testkit/secure:1", "alice", "first-pass");
    assert_eq!(reference, format!("{host}/testkit/secure:1"));
    // `push` logs in as the first user by name.
    let by_push = registry.push(&podman, IMAGE, "testkit/secure:2");

    remove(&podman, &reference);
    pull_secure(&podman, &reference, Some("alice:first-pass"), None)
        .unwrap_or_else(|e| panic!("CLI pull with the password: {e}\n{}", registry.log()));
    let pulled = podman.run(&["image", "inspect", "--format", "{{.Id}}", &reference]);
    let local = podman.run(&["image", "inspect", "--format", "{{.Id}}", IMAGE]);
    assert_eq!(pulled, local, "the pulled image is not the pushed one");
    remove(&podman, &reference);

    let err = api_pull(&podman, &by_push, None).expect_err("a pull without a login worked");
    assert!(is_unauthorized(&err), "{err}");
    let wrong = registry_auth("alice", "not-it", &host);
    let err = api_pull(&podman, &by_push, Some(&wrong)).expect_err("a wrong password worked");
    assert!(is_unauthorized(&err), "{err}");
    assert!(
        !err.contains("not-it"),
        "the password is in the error: {err}"
    );
    let err = pull_secure(&podman, &by_push, Some("mallory:bobs-pass"), None)
        .expect_err("an unknown user worked");
    assert!(is_unauthorized(&err), "{err}");

    let right = registry_auth("bob", "bobs-pass", &host);
    api_pull(&podman, &by_push, Some(&right))
        .unwrap_or_else(|e| panic!("API pull with the password: {e}\n{}", registry.log()));
    assert!(exists(&podman, &by_push));
    remove(&podman, &by_push);
}

#[test]
fn a_new_password_replaces_the_old_one() {
    let Some(podman) = PodmanService::start() else {
        return;
    };
    let Some(mut registry) = Registry::start_secure(&[("carol", "before")]) else {
        return;
    };
    podman.ensure_busybox_image(IMAGE);
    let host = registry.host();
    let reference = registry.push(&podman, IMAGE, "testkit/rotated:1");
    let (old, new) = (
        registry_auth("carol", "before", &host),
        registry_auth("carol", "after", &host),
    );
    let err = api_pull(&podman, &reference, Some(&new)).expect_err("the new password worked early");
    assert!(is_unauthorized(&err), "{err}");

    registry.set_password("carol", "after");
    let err = api_pull(&podman, &reference, Some(&old)).expect_err("the old password still works");
    assert!(is_unauthorized(&err), "{err}");
    api_pull(&podman, &reference, Some(&new))
        .unwrap_or_else(|e| panic!("the new password: {e}\n{}", registry.log()));
    let pulled = podman.run(&["image", "inspect", "--format", "{{.Id}}", &reference]);
    let local = podman.run(&["image", "inspect", "--format", "{{.Id}}", IMAGE]);
    assert_eq!(pulled, local);
    remove(&podman, &reference);
}

#[test]
fn a_client_without_the_test_ca_refuses_the_registry() {
    let Some(podman) = PodmanService::start() else {
        return;
    };
    let Some(registry) = Registry::start_secure(&[("dave", "pass")]) else {
        return;
    };
    podman.ensure_busybox_image(IMAGE);
    let reference = registry.push(&podman, IMAGE, "testkit/untrusted:1");
    remove(&podman, &reference);
    let trust = std::path::Path::new("/etc/containers/certs.d").join(registry.host());
    assert_eq!(
        std::fs::read_to_string(trust.join("ca.crt")).unwrap(),
        registry.ca_pem()
    );

    // An empty certificate directory: only the system's CAs.
    let empty = tempfile::tempdir().unwrap();
    let err = pull_secure(&podman, &reference, Some("dave:pass"), Some(empty.path()))
        .expect_err("a pull without the test CA worked");
    assert!(
        err.contains("certificate signed by unknown authority") || err.contains("x509"),
        "{err}"
    );
    assert!(!exists(&podman, &reference));

    // With the CA alone in the directory it verifies.
    std::fs::write(empty.path().join("ca.crt"), registry.ca_pem()).unwrap();
    pull_secure(&podman, &reference, Some("dave:pass"), Some(empty.path()))
        .unwrap_or_else(|e| panic!("with the CA: {e}"));
    remove(&podman, &reference);

    drop(registry);
    assert!(!trust.exists(), "{} left behind", trust.display());
}
