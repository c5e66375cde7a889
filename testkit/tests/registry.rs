//! The registry helper: an image pushed from Podman pulls back from it, a
//! name never pushed does not, and the access log counts the pulls.

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
