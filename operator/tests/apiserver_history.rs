//! The rollout history (`operator::history`) against a real Kubernetes API
//! server (`testkit::kube`, binaries from `KUBEBUILDER_ASSETS`), as the
//! service account of `deploy/operator.yaml`: its RBAC rules must allow
//! every call the history makes, and the server must accept the objects
//! (names, labels, the owner reference to a custom resource).
//!
//! The test server runs no controller-manager, so the garbage collection
//! the owner reference asks for is Kubernetes' promise, not checked here;
//! the reference itself is.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::apiserver::*;

use k8s_openapi::api::apps::v1::ControllerRevision;
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::ApiResource;
use kube::{Client, ResourceExt};
use operator::crd::Deployment;
use operator::history::{DEPLOYMENT_LABEL, History};
use serde_json::{Value, json};
use testkit::kube::KubeApiServer;

/// A Deployment as the server stored it (with its uid).
async fn stored_deployment(client: &Client, name: &str) -> Deployment {
    let ar = ApiResource::erase::<Deployment>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    create(
        &api,
        deployment_json("default", name, json!(["pi-1"]), "PodmanV0"),
    )
    .await
    .unwrap();
    Api::<Deployment>::namespaced(client.clone(), "default")
        .get(name)
        .await
        .unwrap()
}

fn score(image: &str) -> Value {
    json!({"type": "PodmanV0", "data": {"containers": [{"name": "web", "image": image}]}})
}

/// The history's objects of `deployment`, by name: (name, `.revision`,
/// resourceVersion).
async fn objects(client: &Client, deployment: &str) -> Vec<(String, i64, String)> {
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), "default");
    let list = api
        .list(&ListParams::default().labels(&format!("{DEPLOYMENT_LABEL}={deployment}")))
        .await
        .unwrap();
    let mut objects: Vec<_> = list
        .items
        .into_iter()
        .map(|cr| (cr.name_any(), cr.revision, cr.resource_version().unwrap()))
        .collect();
    objects.sort();
    objects
}

#[tokio::test]
async fn history_records_prunes_and_is_owned_by_its_deployment() {
    let Some(server) = KubeApiServer::start().await else {
        return;
    };
    let admin = server.client().await;
    install_crds(&server).await;
    let web = stored_deployment(&admin, "web").await;
    let api = stored_deployment(&admin, "api").await;
    let history = History::new(operator_identity(&server, &admin).await);

    // Another Deployment's history, which pruning web's must not touch.
    let other = 0x0123_4567_89ab_cdef;
    history
        .record(&api, other, &score("api:1"), 2, &[])
        .await
        .unwrap();

    // Four revisions under a limit of 2, the first kept (as a stable
    // revision would be): each new one pushes out the oldest not kept.
    let revs: [u64; 4] = [
        0x1b2c_3d4e_5f60_718a,
        0xfedc_ba98_7654_3210,
        0x0000_0000_0000_0001,
        0x8000_0000_0000_0000,
    ];
    let mut after_each = Vec::new();
    for (i, rev) in revs.iter().enumerate() {
        history
            .record(&web, *rev, &score(&format!("web:{i}")), 2, &[revs[0]])
            .await
            .unwrap();
        after_each.push(history.list(&web).await.unwrap());
    }
    assert_eq!(
        after_each,
        [
            vec![revs[0]],
            vec![revs[0], revs[1]],
            vec![revs[0], revs[2]],
            vec![revs[0], revs[3]],
        ]
    );
    let before = objects(&admin, "web").await;
    assert_eq!(
        before
            .iter()
            .map(|(name, order, _)| (name.as_str(), *order))
            .collect::<Vec<_>>(),
        [("web-1b2c3d4e5f60718a", 1), ("web-8000000000000000", 4)],
        "named by revision, numbered in recording order"
    );

    assert_eq!(
        history.score(&web, revs[0]).await.unwrap(),
        Some(score("web:0"))
    );
    assert_eq!(
        history.score(&web, revs[3]).await.unwrap(),
        Some(score("web:3"))
    );
    assert_eq!(history.score(&web, revs[1]).await.unwrap(), None, "pruned");

    // Recording a revision again writes nothing: same objects, same
    // resourceVersions.
    history
        .record(&web, revs[3], &score("web:3"), 2, &[revs[0]])
        .await
        .unwrap();
    assert_eq!(objects(&admin, "web").await, before);

    assert_eq!(history.list(&api).await.unwrap(), [other]);
    assert_eq!(
        history.score(&api, other).await.unwrap(),
        Some(score("api:1"))
    );

    // Each object names its Deployment as controlling owner, so the
    // garbage collector removes the history with it.
    let revisions: Api<ControllerRevision> = Api::namespaced(admin.clone(), "default");
    for (name, owner) in [
        ("web-1b2c3d4e5f60718a", &web),
        ("web-8000000000000000", &web),
        ("api-0123456789abcdef", &api),
    ] {
        let cr = revisions.get(name).await.unwrap();
        let refs = serde_json::to_value(cr.metadata.owner_references).unwrap();
        assert_eq!(
            refs,
            json!([{
                "apiVersion": "iot.nationtech.io/v1alpha1",
                "kind": "Deployment",
                "name": owner.name_any(),
                "uid": owner.uid().unwrap(),
                "controller": true,
                "blockOwnerDeletion": true,
            }]),
            "{name}"
        );
        assert_eq!(
            cr.metadata.labels.unwrap()[DEPLOYMENT_LABEL],
            owner.name_any()
        );
    }
}
