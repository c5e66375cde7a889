//! An in-memory [`Runtime`](crate::podman::Runtime) for what runs the
//! reconciler without Podman: its unit tests and the fleet bench in
//! `e2e/`. Built for this crate's tests and with the `testing` feature.

use std::cell::{Cell, RefCell};

use std::collections::BTreeMap;

use crate::podman::{
    ContainerInfo, CreateSpec, ExecOutcome, ManagedContainer, RegistryAuth, Runtime, RuntimeError,
    labels,
};

/// A secret's data and labels.
type Secret = (Vec<u8>, BTreeMap<String, String>);

/// Containers in memory with instant operations. Like Podman it refuses a
/// taken name and answers 404 for an unknown container; on request it
/// records every call that changes containers and fails creates or starts,
/// to check the order of a replacement.
#[derive(Default)]
pub struct MemoryRuntime {
    containers: RefCell<Vec<ManagedContainer>>,
    /// Secrets by name: (data, labels).
    secrets: RefCell<BTreeMap<String, Secret>>,
    next_id: Cell<u64>,
    /// `None` unless made by [`Self::recording`]: a bench keeps no log.
    calls: Option<RefCell<Vec<String>>>,
    /// Makes every `create` fail.
    pub fail_create: Cell<bool>,
    /// Makes `start` fail for containers labelled with this revision.
    pub fail_start_revision: Cell<Option<u64>>,
    /// The exit code of every `exec` in a running container (0: a passing
    /// exec health check).
    pub exec_exit_code: Cell<i32>,
    /// What `inspect` says of `OOMKilled` for an exited container.
    pub oom_killed: Cell<bool>,
    /// How many times the containers were listed.
    pub lists: Cell<u32>,
}

impl MemoryRuntime {
    /// A runtime that records the calls that change containers, for
    /// [`Self::take_calls`].
    pub fn recording() -> Self {
        MemoryRuntime {
            calls: Some(RefCell::default()),
            ..Self::default()
        }
    }

    /// The calls recorded since the last time, e.g. `rename <old> <new>`.
    pub fn take_calls(&self) -> Vec<String> {
        self.calls.as_ref().map(RefCell::take).unwrap_or_default()
    }

    /// (name, state, revision label) of every container, sorted.
    pub fn snapshot(&self) -> Vec<(String, String, String)> {
        let mut v: Vec<_> = self
            .containers
            .borrow()
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    c.state.clone(),
                    c.label(labels::REVISION).to_string(),
                )
            })
            .collect();
        v.sort();
        v
    }

    /// The names of the secrets there are, sorted.
    pub fn secret_names(&self) -> Vec<String> {
        self.secrets.borrow().keys().cloned().collect()
    }

    /// `f` of the container `id`, if there is one.
    fn read<T>(&self, id: &str, f: impl FnOnce(&ManagedContainer) -> T) -> Option<T> {
        self.containers.borrow().iter().find(|c| c.id == id).map(f)
    }

    fn log(&self, call: &str, id: &str, rest: &str) {
        if let Some(calls) = &self.calls {
            let name = self
                .read(id, |c| c.name.clone())
                .unwrap_or_else(|| format!("<{id}>"));
            calls.borrow_mut().push(format!("{call} {name}{rest}"));
        }
    }

    /// Makes the container `id` exit with `code`, as if by itself.
    pub fn exit(&self, id: &str, code: i32) {
        self.set_state(id, "exited");
        for c in self.containers.borrow_mut().iter_mut() {
            if c.id == id {
                c.exit_code = code;
            }
        }
    }

    fn set_state(&self, id: &str, state: &str) {
        for c in self.containers.borrow_mut().iter_mut() {
            if c.id == id {
                c.state = state.into();
            }
        }
    }
}

fn no_such_container() -> RuntimeError {
    RuntimeError::Api {
        status: 404,
        message: "no such container".into(),
    }
}

impl Runtime for MemoryRuntime {
    async fn version(&self) -> Result<String, RuntimeError> {
        Ok("in-memory".into())
    }
    async fn list_managed(&self, _device_id: &str) -> Result<Vec<ManagedContainer>, RuntimeError> {
        self.lists.set(self.lists.get() + 1);
        Ok(self.containers.borrow().clone())
    }
    async fn inspect(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        let (status, exit_code) = self
            .read(id, |c| (c.state.clone(), c.exit_code))
            .ok_or_else(no_such_container)?;
        Ok(ContainerInfo {
            oom_killed: status == "exited" && self.oom_killed.get(),
            status,
            exit_code,
            restart_count: 0,
            error: String::new(),
            finished_at: String::new(),
            started_at: String::new(),
            ip_addresses: Vec::new(),
        })
    }
    async fn image_exists(&self, _image: &str) -> Result<bool, RuntimeError> {
        Ok(true)
    }
    async fn pull(&self, _image: &str, _auth: Option<&RegistryAuth>) -> Result<(), RuntimeError> {
        Ok(())
    }
    async fn create_secret(
        &self,
        name: &str,
        data: &[u8],
        _dir: &std::path::Path,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), RuntimeError> {
        self.secrets
            .borrow_mut()
            .insert(name.to_string(), (data.to_vec(), labels.clone()));
        Ok(())
    }
    async fn list_secrets(&self, prefix: &str) -> Result<Vec<(String, String)>, RuntimeError> {
        Ok(self
            .secrets
            .borrow()
            .keys()
            .filter(|n| n.starts_with(prefix))
            .map(|n| (n.clone(), format!("id-{n}")))
            .collect())
    }
    async fn remove_secret(&self, name: &str) -> Result<(), RuntimeError> {
        self.secrets.borrow_mut().remove(name);
        Ok(())
    }
    async fn create(&self, spec: &CreateSpec) -> Result<String, RuntimeError> {
        if let Some(calls) = &self.calls {
            calls.borrow_mut().push(format!("create {}", spec.name));
        }
        if self.fail_create.get() || self.containers.borrow().iter().any(|c| c.name == spec.name) {
            return Err(RuntimeError::Api {
                status: 500,
                message: format!("cannot create {}", spec.name),
            });
        }
        let n = self.next_id.get() + 1;
        self.next_id.set(n);
        let id = format!("id{n}");
        self.containers.borrow_mut().push(ManagedContainer {
            id: id.clone(),
            name: spec.name.clone(),
            labels: spec.labels.clone(),
            state: "created".into(),
            exit_code: 0,
        });
        Ok(id)
    }
    async fn rename(&self, id: &str, new_name: &str) -> Result<(), RuntimeError> {
        self.log("rename", id, &format!(" {new_name}"));
        for c in self.containers.borrow_mut().iter_mut() {
            if c.id == id {
                c.name = new_name.to_string();
            }
        }
        Ok(())
    }
    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.log("start", id, "");
        let revision = self
            .read(id, |c| c.label(labels::REVISION).parse::<u64>().ok())
            .flatten();
        if revision.is_some() && revision == self.fail_start_revision.get() {
            return Err(RuntimeError::Api {
                status: 500,
                message: "executable file not found".into(),
            });
        }
        self.set_state(id, "running");
        Ok(())
    }
    async fn stop(&self, id: &str, _stop_timeout_secs: u64) -> Result<(), RuntimeError> {
        self.log("stop", id, "");
        self.set_state(id, "exited");
        Ok(())
    }
    async fn remove(&self, id: &str, _stop_timeout_secs: u64) -> Result<(), RuntimeError> {
        self.log("remove", id, "");
        self.containers.borrow_mut().retain(|c| c.id != id);
        Ok(())
    }
    async fn exec(
        &self,
        id: &str,
        _command: &[String],
        _timeout: std::time::Duration,
    ) -> Result<ExecOutcome, RuntimeError> {
        // Like Podman: an exec needs a running container.
        match self.read(id, |c| c.state == "running") {
            None => Err(no_such_container()),
            Some(false) => Err(RuntimeError::Api {
                status: 409,
                message: "container is not running".into(),
            }),
            Some(true) => Ok(ExecOutcome {
                exit_code: self.exec_exit_code.get(),
                output_tail: Vec::new(),
            }),
        }
    }
}
