//! A mock Kubernetes API server for driving [`crate::reconcile`] in tests
//! (this crate's, and the whole-system tests and fleet bench in `e2e/`;
//! built with the `testing` feature only): a kube `Client`
//! over a `tower-test` service whose other end records every request and
//! answers it the way the API server would for the few calls the operator
//! makes (lists and watches of Deployments, finalizer patches, status
//! patches, events). Watches stay open without events.
//!
//! Tests then assert the exact list of requests with [`MockApiServer::take`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use kube::client::Body;
use kube::{Client, Resource};
use serde_json::{Value, json};

use crate::crd::Deployment;

/// One request the operator sent.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiRequest {
    /// `GET`, `PATCH`, `POST`...
    pub method: String,
    /// The URI path, e.g.
    /// `/apis/iot.nationtech.io/v1alpha1/namespaces/default/deployments/web/status`.
    pub path: String,
    /// The JSON body (`null` when empty).
    pub body: Value,
}

impl ApiRequest {
    /// `METHOD path`, for compact assertions.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

type Objects = Arc<Mutex<HashMap<String, Value>>>;

/// The server side of the mock: records requests, keeps the Deployments it
/// was given up to date with the patches, and answers.
pub struct MockApiServer {
    requests: Arc<Mutex<Vec<ApiRequest>>>,
    objects: Objects,
    task: tokio::task::JoinHandle<()>,
}

/// The path of a Deployment in the API.
pub fn deployment_path(namespace: &str, name: &str) -> String {
    format!("/apis/iot.nationtech.io/v1alpha1/namespaces/{namespace}/deployments/{name}")
}

/// The path events are posted to.
pub fn events_path(namespace: &str) -> String {
    format!("/apis/events.k8s.io/v1/namespaces/{namespace}/events")
}

impl MockApiServer {
    /// A client and its mock server; must be called on a tokio runtime.
    pub fn start() -> (Client, MockApiServer) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let requests: Arc<Mutex<Vec<ApiRequest>>> = Arc::default();
        let objects: Objects = Arc::default();
        let (reqs, objs) = (requests.clone(), objects.clone());
        let task = tokio::spawn(async move {
            // Watches are left open (never answered) for as long as the
            // mock runs, as an API server with no changes to report would.
            let mut open_watches = Vec::new();
            while let Some((request, send)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap_or_default();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let req = ApiRequest {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_string(),
                    body,
                };
                let query = parts.uri.query().unwrap_or("");
                if req.method == "GET" && query.split('&').any(|q| q == "watch=true") {
                    reqs.lock().unwrap_or_else(|e| e.into_inner()).push(req);
                    open_watches.push(send);
                    continue;
                }
                let (status, answer) = answer(&req, &objs);
                reqs.lock().unwrap_or_else(|e| e.into_inner()).push(req);
                let response = Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&answer).unwrap_or_default()));
                match response {
                    Ok(r) => send.send_response(r),
                    Err(e) => send.send_error(e),
                }
            }
        });
        let client = Client::new(service, "default");
        (
            client,
            MockApiServer {
                requests,
                objects,
                task,
            },
        )
    }

    /// Makes the server know `d`, so that patches to it are answered.
    pub fn insert(&self, d: &Deployment) {
        let path = deployment_path(d.namespace_or_default(), d.name_str());
        let mut value = serde_json::to_value(d).unwrap_or(Value::Null);
        value["apiVersion"] = json!("iot.nationtech.io/v1alpha1");
        value["kind"] = json!("Deployment");
        self.objects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path, value);
    }

    /// The Deployment as the server holds it now (with the patches applied).
    pub fn get(&self, namespace: &str, name: &str) -> Option<Deployment> {
        let objects = self.objects.lock().unwrap_or_else(|e| e.into_inner());
        objects
            .get(&deployment_path(namespace, name))
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    }

    /// The requests received since the last call.
    pub fn take(&self) -> Vec<ApiRequest> {
        std::mem::take(&mut *self.requests.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Drop for MockApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn not_found(req: &ApiRequest) -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
               "message": format!("{} not found", req.path), "reason": "NotFound", "code": 404}),
    )
}

fn answer(req: &ApiRequest, objects: &Objects) -> (StatusCode, Value) {
    let mut objects = objects.lock().unwrap_or_else(|e| e.into_inner());
    if req.method == "POST" && req.path.ends_with("/events") {
        return (StatusCode::CREATED, req.body.clone());
    }
    if req.method == "GET" {
        return get(req, &objects);
    }
    if req.method != "PATCH" {
        return not_found(req);
    }
    if let Some(path) = req.path.strip_suffix("/status") {
        let Some(obj) = objects.get_mut(path) else {
            return not_found(req);
        };
        merge(&mut obj["status"], &req.body["status"]);
        return (StatusCode::OK, obj.clone());
    }
    let Some(obj) = objects.get_mut(&req.path) else {
        return not_found(req);
    };
    // The finalizer helper sends JSON patches: test + add, or test + remove.
    if let Some(ops) = req.body.as_array() {
        for op in ops {
            let path = op["path"].as_str().unwrap_or("");
            match op["op"].as_str() {
                Some("add") if path == "/metadata/finalizers" => {
                    obj["metadata"]["finalizers"] = op["value"].clone();
                }
                Some("add") if path == "/metadata/finalizers/-" => {
                    if let Some(list) = obj["metadata"]["finalizers"].as_array_mut() {
                        list.push(op["value"].clone());
                    }
                }
                Some("remove") => {
                    if let Some(i) = path
                        .strip_prefix("/metadata/finalizers/")
                        .and_then(|i| i.parse::<usize>().ok())
                        && let Some(list) = obj["metadata"]["finalizers"].as_array_mut()
                        && i < list.len()
                    {
                        list.remove(i);
                    }
                }
                _ => {}
            }
        }
    }
    (StatusCode::OK, obj.clone())
}

/// A single Deployment, or a list of those in a namespace or everywhere.
fn get(req: &ApiRequest, objects: &HashMap<String, Value>) -> (StatusCode, Value) {
    if let Some(obj) = objects.get(&req.path) {
        return (StatusCode::OK, obj.clone());
    }
    let prefix = "/apis/iot.nationtech.io/v1alpha1/";
    let Some(rest) = req.path.strip_prefix(prefix) else {
        return not_found(req);
    };
    let namespace = match rest.split('/').collect::<Vec<_>>()[..] {
        ["deployments"] => None,
        ["namespaces", ns, "deployments"] => Some(ns),
        _ => return not_found(req),
    };
    let mut items: Vec<(&String, &Value)> = objects
        .iter()
        .filter(|(_, v)| namespace.is_none_or(|ns| v["metadata"]["namespace"] == ns))
        .collect();
    items.sort_by_key(|(k, _)| k.as_str());
    let items: Vec<Value> = items.into_iter().map(|(_, v)| v.clone()).collect();
    (
        StatusCode::OK,
        json!({"apiVersion": "iot.nationtech.io/v1alpha1", "kind": "DeploymentList",
               "metadata": {"resourceVersion": "1"}, "items": items}),
    )
}

/// JSON merge patch (RFC 7386).
fn merge(target: &mut Value, patch: &Value) {
    if let Value::Object(p) = patch {
        if !target.is_object() {
            *target = json!({});
        }
        if let Value::Object(t) = target {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
    } else {
        *target = patch.clone();
    }
}

/// The object reference kube puts in events about `d`.
pub fn reference(d: &Deployment) -> k8s_openapi::api::core::v1::ObjectReference {
    d.object_ref(&())
}
