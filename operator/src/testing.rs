//! A mock Kubernetes API server for driving [`crate::reconcile`] in tests
//! (this crate's, and the whole-system tests and fleet bench in `e2e/`;
//! built with the `testing` feature only): a kube `Client`
//! over a `tower-test` service whose other end records every request and
//! answers it the way the API server would for the few calls the operator
//! makes (lists and watches of Deployments, finalizer patches, status
//! patches, events; create, get, list by label and delete of the history's
//! ControllerRevisions). Watches stay open without events.
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
                let (status, answer) = answer(&req, query, &objs);
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

fn answer(req: &ApiRequest, query: &str, objects: &Objects) -> (StatusCode, Value) {
    let mut objects = objects.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(rest) = req.path.strip_prefix(APPS_NAMESPACES) {
        return controller_revisions(req, rest, query, &mut objects);
    }
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
        .filter(|(_, v)| v["kind"] == "Deployment")
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

/// Where namespaced apps/v1 objects live.
const APPS_NAMESPACES: &str = "/apis/apps/v1/namespaces/";

/// The history's ControllerRevisions (`crate::history`): `rest` is the path
/// after [`APPS_NAMESPACES`].
fn controller_revisions(
    req: &ApiRequest,
    rest: &str,
    query: &str,
    objects: &mut HashMap<String, Value>,
) -> (StatusCode, Value) {
    let parts: Vec<&str> = rest.split('/').collect();
    match (req.method.as_str(), &parts[..]) {
        ("POST", &[ns, "controllerrevisions"]) => {
            let Some(name) = req.body["metadata"]["name"].as_str() else {
                return failure(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    "metadata.name: Required value",
                );
            };
            let path = format!("{}/{name}", req.path);
            if objects.contains_key(&path) {
                return failure(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    &format!("controllerrevisions.apps \"{name}\" already exists"),
                );
            }
            let mut obj = req.body.clone();
            obj["metadata"]["namespace"] = json!(ns);
            obj["metadata"]["uid"] = json!(format!("uid-{ns}-{name}"));
            obj["metadata"]["resourceVersion"] = json!("1");
            objects.insert(path, obj.clone());
            (StatusCode::CREATED, obj)
        }
        ("GET", &[ns, "controllerrevisions"]) => {
            let mut selector = Vec::new();
            for pair in query.split('&') {
                if let Some(s) = pair.strip_prefix("labelSelector=") {
                    match parse_selector(&percent_decode(s)) {
                        Some(terms) => selector = terms,
                        None => {
                            return failure(
                                StatusCode::BAD_REQUEST,
                                "BadRequest",
                                "the mock API server knows only key=value and key!=value selectors",
                            );
                        }
                    }
                }
            }
            let mut items: Vec<(&String, &Value)> = objects
                .iter()
                .filter(|(_, v)| v["kind"] == "ControllerRevision")
                .filter(|(_, v)| v["metadata"]["namespace"] == ns)
                .filter(|(_, v)| {
                    selector.iter().all(|(key, value, equal)| {
                        (v["metadata"]["labels"][key].as_str() == Some(value)) == *equal
                    })
                })
                .collect();
            items.sort_by_key(|(k, _)| k.as_str());
            let items: Vec<Value> = items.into_iter().map(|(_, v)| v.clone()).collect();
            (
                StatusCode::OK,
                json!({"apiVersion": "apps/v1", "kind": "ControllerRevisionList",
                       "metadata": {"resourceVersion": "1"}, "items": items}),
            )
        }
        ("GET", &[_, "controllerrevisions", _]) => match objects.get(&req.path) {
            Some(obj) => (StatusCode::OK, obj.clone()),
            None => not_found(req),
        },
        ("DELETE", &[_, "controllerrevisions", _]) => match objects.remove(&req.path) {
            Some(obj) => (StatusCode::OK, obj),
            None => not_found(req),
        },
        _ => not_found(req),
    }
}

/// A `Status` answer that kube turns into `kube::Error::Api`.
fn failure(code: StatusCode, reason: &str, message: &str) -> (StatusCode, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
               "message": message, "reason": reason, "code": code.as_u16()}),
    )
}

/// `key=value,key!=value` as (key, value, equal); `None` for the forms the
/// mock does not know (set-based selectors), so that no test passes by a
/// selector the mock ignored.
fn parse_selector(selector: &str) -> Option<Vec<(String, String, bool)>> {
    selector
        .split(',')
        .filter(|term| !term.is_empty())
        .map(|term| {
            if let Some((k, v)) = term.split_once("!=") {
                Some((k.to_string(), v.to_string(), false))
            } else {
                let (k, v) = term.split_once("==").or_else(|| term.split_once('='))?;
                Some((k.to_string(), v.to_string(), true))
            }
        })
        .collect()
}

/// A query value's `%XX` escapes and `+` undone (how kube encodes a label
/// selector); the mock's only use of it does not warrant a dependency.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
                (Some(high), Some(low)) => {
                    out.push(high << 4 | low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(digit: Option<&u8>) -> Option<u8> {
    char::from(*digit?)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
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
