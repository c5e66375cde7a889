//! The agent's container listing against real Podman: two deployments of
//! one device and another device's containers share one Podman service,
//! and each listing returns exactly its own containers. The reconciler
//! lists one deployment with a Podman-side label filter
//! (`Runtime::list_deployment`); a filter that matched too much would make
//! it stop or replace another deployment's (or device's) containers.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeSet;

use agent_linux::podman::{Podman, Runtime, labels};
use testkit::PodmanService;

/// The image the agent's other Podman tests use (`tests/common`).
const IMAGE: &str = "localhost/iot-agent-test:busybox";

/// Marks each test's containers, with this process's id and the test, for
/// [`Cleanup`].
const TEST_LABEL: &str = "io.nationtech.iot.test.listing";

/// Creates (without starting) a container named `name` with `labels`,
/// marked as this test run's (`run`).
fn create(podman: &PodmanService, run: &str, name: &str, labels: &[(&str, &str)]) {
    let mut args = vec!["create".to_string(), "--name".into(), name.into()];
    for (k, v) in labels.iter().chain([&(TEST_LABEL, run)]) {
        args.push("--label".into());
        args.push(format!("{k}={v}"));
    }
    args.extend([IMAGE.to_string(), "true".into()]);
    podman.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
}

/// What the agent puts on a container of `deployment` on `device`.
fn managed<'a>(device: &'a str, deployment: &'a str) -> [(&'a str, &'a str); 3] {
    [
        (labels::MANAGED_BY, labels::MANAGED_BY_VALUE),
        (labels::DEVICE, device),
        (labels::DEPLOYMENT, deployment),
    ]
}

fn names(list: Vec<agent_linux::podman::ManagedContainer>) -> BTreeSet<String> {
    list.into_iter().map(|c| c.name).collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// Removes the test's containers, also when an assertion fails.
struct Cleanup<'a>(&'a PodmanService, String);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        self.0.remove_labelled(TEST_LABEL, &self.1);
    }
}

#[tokio::test]
async fn each_listing_returns_exactly_its_own_containers() {
    let Some(podman) = PodmanService::start() else {
        return;
    };
    podman.ensure_busybox_image(IMAGE);
    // Podman's storage is shared between tests: names and device ids are
    // this process's and this test's own (the two tests here run at once,
    // and each removes only its own containers).
    let run = format!("{}-list", std::process::id());
    let _cleanup = Cleanup(&podman, run.clone());
    let dev_a = format!("listing-a-{run}");
    let dev_b = format!("listing-b-{run}");
    let n = |s: &str| format!("listing-{run}-{s}");

    // Device A: deployment `web` (two containers) and `db`.
    create(&podman, &run, &n("a-web-1"), &managed(&dev_a, "web"));
    create(&podman, &run, &n("a-web-2"), &managed(&dev_a, "web"));
    create(&podman, &run, &n("a-db-1"), &managed(&dev_a, "db"));
    // Device B: a deployment of the same name as one of A's.
    create(&podman, &run, &n("b-web-1"), &managed(&dev_b, "web"));
    // A's device and deployment labels without the agent's mark: not the
    // agent's to list.
    let foreign = [
        (labels::DEVICE, dev_a.as_str()),
        (labels::DEPLOYMENT, "web"),
    ];
    create(&podman, &run, &n("foreign"), &foreign);

    let client = Podman::new(podman.socket_path());
    assert_eq!(
        names(client.list_deployment(&dev_a, "web").await.unwrap()),
        set(&[&n("a-web-1"), &n("a-web-2")])
    );
    assert_eq!(
        names(client.list_deployment(&dev_a, "db").await.unwrap()),
        set(&[&n("a-db-1")])
    );
    assert_eq!(
        names(client.list_deployment(&dev_b, "web").await.unwrap()),
        set(&[&n("b-web-1")])
    );
    assert_eq!(
        names(client.list_deployment(&dev_b, "db").await.unwrap()),
        set(&[])
    );
    assert_eq!(
        names(client.list_managed(&dev_a).await.unwrap()),
        set(&[&n("a-web-1"), &n("a-web-2"), &n("a-db-1")])
    );
    assert_eq!(
        names(client.list_managed(&dev_b).await.unwrap()),
        set(&[&n("b-web-1")])
    );
}

/// Podman's own answer to the filter the agent sends, without the agent's
/// client-side re-check: several `label` filters must all match (Podman
/// 4.3.1 ANDs them). The agent would still be correct if they were ORed
/// (it re-checks), but every apply pass would then build an entry for each
/// of the device's containers, the cost the Podman-side filter avoids.
#[tokio::test]
async fn podman_ands_label_filters() {
    let Some(podman) = PodmanService::start() else {
        return;
    };
    podman.ensure_busybox_image(IMAGE);
    let run = format!("{}-and", std::process::id());
    let _cleanup = Cleanup(&podman, run.clone());
    let key_x = format!("io.nationtech.iot.test.x{run}");
    let key_y = format!("io.nationtech.iot.test.y{run}");
    let name = |s: &str| format!("listing-and-{run}-{s}");
    for (n, x, y) in [
        ("both", "1", "1"),
        ("x-only", "1", "2"),
        ("y-only", "2", "1"),
    ] {
        create(
            &podman,
            &run,
            &name(n),
            &[(key_x.as_str(), x), (key_y.as_str(), y)],
        );
    }
    let filters = serde_json::json!({ "label": [format!("{key_x}=1"), format!("{key_y}=1")] });
    let path = format!(
        "/v4.0.0/libpod/containers/json?all=true&filters={}",
        agent_linux::http::encode_query(&filters.to_string())
    );
    let resp = agent_linux::http::request(&podman.socket_path(), "GET", &path, None)
        .await
        .unwrap();
    assert!(resp.is_success(), "{}", resp.text());
    let items: Vec<serde_json::Value> = serde_json::from_slice(&resp.body).unwrap();
    let listed: BTreeSet<String> = items
        .iter()
        .filter_map(|i| i["Names"][0].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        listed,
        set(&[&name("both")]),
        "label filters were not ANDed"
    );
}
