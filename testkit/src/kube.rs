//! A real Kubernetes API server per test: `etcd` and `kube-apiserver` on
//! free loopback ports, with certificates and data in a temporary directory.
//!
//! The binaries are found as controller-runtime's envtest finds them:
//! `TEST_ASSET_KUBE_APISERVER` / `TEST_ASSET_ETCD` if set, else the folder
//! named by `KUBEBUILDER_ASSETS`, else `target/kube-assets` (where
//! `scripts/kube-assets.sh` puts them); etcd also from PATH (Debian's
//! `etcd-server`). Elsewhere `setup-envtest use 1.36 -p path` gives a folder
//! for `KUBEBUILDER_ASSETS`.
//!
//! No kubelet, controller-manager or scheduler runs: objects are stored and
//! validated (schemas, CEL rules, RBAC, admission, finalizers, status
//! subresources) but nothing acts on Pods or garbage-collects.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ::kube::config::{KubeConfigOptions, Kubeconfig};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::{free_ports, missing, repo_root, wait_until_async};

/// How long kube-apiserver may take to answer `/readyz` (5-15 s on an idle
/// 2-core machine; several servers starting at once take longer).
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// A running etcd + kube-apiserver on 127.0.0.1, with an admin identity (a
/// client certificate in group `system:masters`). Both processes are killed
/// on drop and the directory holding certificates, etcd's data and the logs
/// is removed.
pub struct KubeApiServer {
    dir: tempfile::TempDir,
    port: u16,
    etcd: Option<Child>,
    apiserver: Option<Child>,
}

/// The `kube-apiserver` and `etcd` to run.
struct Binaries {
    apiserver: PathBuf,
    etcd: PathBuf,
}

impl KubeApiServer {
    /// Starts etcd and kube-apiserver and waits until the server is ready.
    /// `None` when a binary is missing outside CI (the test should return).
    pub async fn start() -> Option<KubeApiServer> {
        let bins = binaries()?;
        let dir = tempfile::tempdir().expect("temp dir");
        write_certificates(dir.path());
        let mut server = KubeApiServer {
            dir,
            port: 0,
            etcd: None,
            apiserver: None,
        };
        // Ports taken by a parallel test between their choice and the bind
        // make etcd exit at once; fresh ones are as good.
        let mut etcd_port = None;
        for _ in 0..5 {
            let [api, client, peer] = free_ports();
            server.port = api;
            etcd_port = server.start_etcd(&bins.etcd, client, peer).await;
            if etcd_port.is_some() {
                break;
            }
        }
        let etcd_port = etcd_port.expect(
            "etcd exited at start five times (ports taken?); see etcd.log with KUBE_TEST_LOG=1",
        );
        server.start_apiserver(&bins.apiserver, etcd_port);
        server.write_kubeconfig();
        server.wait_ready().await;
        Some(server)
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// A kubeconfig file for the admin identity (for `kubectl --kubeconfig`
    /// or a process under test via `KUBECONFIG`); removed with the server.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// The directory holding `ca.pem`, the server and admin certificates,
    /// etcd's data and the logs (`etcd.log`, `kube-apiserver.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A client with the admin identity, read from [`Self::kubeconfig`].
    /// Make one per tokio runtime: a client's connection pool lives on the
    /// runtime that made it.
    pub async fn client(&self) -> ::kube::Client {
        ::kube::Client::try_from(self.config().await).expect("build a kube client")
    }

    /// A client that acts as `user` in `groups` (the admin impersonates
    /// them), so that RBAC decides what it may do, e.g. a service account:
    /// `system:serviceaccount:NS:NAME` in `system:serviceaccounts`,
    /// `system:serviceaccounts:NS` and `system:authenticated`.
    pub async fn client_as(&self, user: &str, groups: &[&str]) -> ::kube::Client {
        let mut config = self.config().await;
        config.auth_info.impersonate = Some(user.to_string());
        config.auth_info.impersonate_groups = Some(groups.iter().map(|g| g.to_string()).collect());
        ::kube::Client::try_from(config).expect("build a kube client")
    }

    async fn config(&self) -> ::kube::Config {
        let kubeconfig = Kubeconfig::read_from(self.kubeconfig()).expect("read the kubeconfig");
        ::kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("load the kubeconfig")
    }

    /// Creates every CustomResourceDefinition of the YAML file `path` (one
    /// or more documents) and waits until the server reports each
    /// Established; returns them as the server holds them, in file order.
    pub async fn install_crds(&self, path: &Path) -> Vec<CustomResourceDefinition> {
        use ::kube::api::{Api, Patch, PatchParams};
        use serde::Deserialize as _;
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let api: Api<CustomResourceDefinition> = Api::all(self.client().await);
        let mut out = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_json::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            if value.is_null() {
                continue;
            }
            let crd: CustomResourceDefinition = serde_json::from_value(value)
                .unwrap_or_else(|e| panic!("{}: not a CRD: {e}", path.display()));
            let name = crd.metadata.name.clone().unwrap_or_default();
            let apply = PatchParams {
                field_validation: Some(::kube::api::ValidationDirective::Strict),
                ..PatchParams::apply("testkit").force()
            };
            api.patch(&name, &apply, &Patch::Apply(&crd))
                .await
                .unwrap_or_else(|e| panic!("the server refused {name} of {}: {e}", path.display()));
            let start = Instant::now();
            let established = loop {
                let crd = api.get(&name).await.ok();
                let is = crd
                    .as_ref()
                    .and_then(|c| c.status.as_ref())
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| {
                        c.iter()
                            .any(|c| c.type_ == "Established" && c.status == "True")
                    });
                if let (true, Some(crd)) = (is, crd) {
                    break crd;
                }
                assert!(
                    start.elapsed() < READY_TIMEOUT,
                    "{name} was not Established within {READY_TIMEOUT:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            out.push(established);
        }
        out
    }

    /// The last lines of kube-apiserver's log, for failure messages.
    pub fn log_tail(&self) -> String {
        tail(&self.dir.path().join("kube-apiserver.log"), 40)
    }

    fn log_file(&self, name: &str) -> Stdio {
        if std::env::var_os("KUBE_TEST_LOG").is_some() {
            return Stdio::inherit();
        }
        std::fs::File::create(self.dir.path().join(name))
            .expect("create a log file")
            .into()
    }

    /// Starts etcd on the `client` and `peer` ports; returns the client port
    /// once it accepts connections, `None` when etcd exited instead (a port
    /// was taken).
    async fn start_etcd(&mut self, binary: &Path, client: u16, peer: u16) -> Option<u16> {
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new(binary)
            .arg("--name=testkit")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("etcd").display()
            ))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=testkit={peer_url}"))
            .args(["--logger=zap", "--log-outputs=stderr"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.log_file("etcd.log"))
            .spawn()
            .expect("spawn etcd");
        self.etcd = Some(child);
        let mut exited = false;
        let up = wait_until_async(Duration::from_secs(20), || {
            exited = self
                .etcd
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
            let done = exited;
            async move {
                done || tokio::net::TcpStream::connect(("127.0.0.1", client))
                    .await
                    .is_ok()
            }
        })
        .await;
        if exited {
            self.etcd = None;
            // Its data directory may be half made; the next try starts clean.
            let _ = std::fs::remove_dir_all(self.dir.path().join("etcd"));
            return None;
        }
        assert!(
            up,
            "etcd did not listen on {client_url} within 20 s:\n{}",
            tail(&self.dir.path().join("etcd.log"), 20)
        );
        Some(client)
    }

    fn start_apiserver(&mut self, binary: &Path, etcd_port: u16) {
        let d = self.dir.path();
        let file = |name: &str| d.join(name).display().to_string();
        let child = Command::new(binary)
            .arg(format!("--etcd-servers=http://127.0.0.1:{etcd_port}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--secure-port={}", self.port))
            .arg(format!("--cert-dir={}", file("apiserver")))
            .arg(format!("--tls-cert-file={}", file("server.pem")))
            .arg(format!("--tls-private-key-file={}", file("server-key.pem")))
            .arg(format!("--client-ca-file={}", file("ca.pem")))
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg(format!("--service-account-key-file={}", file("sa.pem")))
            .arg(format!(
                "--service-account-signing-key-file={}",
                file("sa-key.pem")
            ))
            .arg("--service-cluster-ip-range=10.96.0.0/16")
            // On loopback it cannot keep the `kubernetes` Service's
            // endpoints and would log so every 10 s.
            .arg("--endpoint-reconciler-type=none")
            // So that the RBAC rules in manifests are really checked.
            .arg("--authorization-mode=RBAC")
            // No controller-manager creates service-account tokens.
            .arg("--disable-admission-plugins=ServiceAccount")
            .arg("--allow-privileged=true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.log_file("kube-apiserver.log"))
            .spawn()
            .expect("spawn kube-apiserver");
        self.apiserver = Some(child);
    }

    /// A kubeconfig naming the CA and the admin's certificate files (JSON
    /// is YAML, so no YAML writer is needed).
    fn write_kubeconfig(&self) {
        let file = |name: &str| self.dir.path().join(name).display().to_string();
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "testkit", "cluster": {
                "server": self.url(),
                "certificate-authority": file("ca.pem"),
            }}],
            "users": [{"name": "admin", "user": {
                "client-certificate": file("admin.pem"),
                "client-key": file("admin-key.pem"),
            }}],
            "contexts": [{"name": "testkit", "context": {"cluster": "testkit", "user": "admin"}}],
            "current-context": "testkit",
        });
        std::fs::write(
            self.kubeconfig(),
            serde_json::to_vec_pretty(&config).expect("kubeconfig JSON"),
        )
        .expect("write the kubeconfig");
    }

    /// Polls `/readyz` until it answers `ok`; panics with the log's tail if
    /// the server exits or is not ready within [`READY_TIMEOUT`].
    async fn wait_ready(&mut self) {
        let client = self.client().await;
        let start = Instant::now();
        loop {
            let req = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("a /readyz request");
            let last = match client.request_text(req).await {
                Ok(body) if body.trim() == "ok" => return,
                Ok(body) => body,
                Err(e) => e.to_string(),
            };
            if let Some(status) = self
                .apiserver
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "kube-apiserver exited ({status}) before it was ready:\n{}",
                    self.log_tail()
                );
            }
            assert!(
                start.elapsed() < READY_TIMEOUT,
                "kube-apiserver was not ready within {READY_TIMEOUT:?} (last answer: {last}):\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for KubeApiServer {
    fn drop(&mut self) {
        // The API server first, so that it does not log etcd going away.
        for mut child in [self.apiserver.take(), self.etcd.take()]
            .into_iter()
            .flatten()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Finds the two binaries, or reports what is missing and how to get it.
fn binaries() -> Option<Binaries> {
    let assets = std::env::var_os("KUBEBUILDER_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/kube-assets"));
    let find = |env_var: &str, name: &str| {
        if let Some(p) = std::env::var_os(env_var) {
            let p = PathBuf::from(p);
            return p.is_file().then_some(p);
        }
        Some(assets.join(name)).filter(|p| p.is_file())
    };
    let how = "run scripts/kube-assets.sh, or set KUBEBUILDER_ASSETS to a folder from `setup-envtest use 1.36 -p path`";
    let Some(apiserver) = find("TEST_ASSET_KUBE_APISERVER", "kube-apiserver") else {
        return missing(&format!(
            "kube-apiserver is not in {} ({how})",
            assets.display()
        ));
    };
    let etcd = find("TEST_ASSET_ETCD", "etcd").or_else(|| crate::find_binary("ETCD_BIN", "etcd"));
    let Some(etcd) = etcd else {
        return missing(&format!(
            "etcd is not in {} nor on PATH (apt-get install etcd-server, or {how})",
            assets.display()
        ));
    };
    Some(Binaries { apiserver, etcd })
}

/// Writes into `dir`: a CA (`ca.pem`), the server's certificate for
/// 127.0.0.1 and localhost (`server.pem`, `server-key.pem`), the admin's
/// client certificate (`admin.pem`, `admin-key.pem`; CN `testkit-admin`,
/// O `system:masters`) and the service-account signing key (`sa-key.pem`,
/// public half `sa.pem`).
fn write_certificates(dir: &Path) {
    let write = |name: &str, text: String| {
        std::fs::write(dir.join(name), text).expect("write a certificate file");
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca.distinguished_name
        .push(DnType::CommonName, "testkit-kube-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    let ca_key = KeyPair::generate().expect("CA key");
    write(
        "ca.pem",
        ca.self_signed(&ca_key).expect("CA certificate").pem(),
    );
    let issuer = Issuer::new(ca, ca_key);

    let leaf = |name: &str,
                sans: Vec<String>,
                organization: Option<&str>,
                usage: ExtendedKeyUsagePurpose| {
        let mut params = CertificateParams::new(sans).expect("certificate parameters");
        params.distinguished_name.push(DnType::CommonName, name);
        if let Some(o) = organization {
            params.distinguished_name.push(DnType::OrganizationName, o);
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &issuer).expect("sign a certificate");
        (cert.pem(), key.serialize_pem())
    };
    let (cert, key) = leaf(
        "kube-apiserver",
        vec!["127.0.0.1".into(), "localhost".into()],
        None,
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    write("server.pem", cert);
    write("server-key.pem", key);
    let (cert, key) = leaf(
        "testkit-admin",
        Vec::new(),
        Some("system:masters"),
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    write("admin.pem", cert);
    write("admin-key.pem", key);

    let sa = KeyPair::generate().expect("service-account key");
    write("sa-key.pem", sa.serialize_pem());
    write("sa.pem", sa.public_key_pem());
}

/// The last `n` lines of a log file (empty when it cannot be read).
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
