//! `iot-operator`: the Kubernetes operator, and its cluster-less CLI.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use error_report::Chain;
use operator::capability_gate::CapabilityGate;
use operator::cli::{NatsArgs, status_table};
use operator::controller::{self, Context, ControllerConfig};
use operator::inventory::{self, Inventory, InventoryConfig};
use operator::metrics::fleet::FleetConfig;
use operator::metrics::ready::ApiServerReachable;
use operator::metrics::server::{self, Endpoints};
use operator::secrets::References;
use operator::secrets::local::LocalSecrets;
use operator::status::StatusCache;
use operator::{Nats, apply, manifest};

#[derive(Parser)]
#[command(
    name = "iot-operator",
    version,
    about = "Runs IoT Deployments on device fleets over NATS",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// More log lines on stderr (-v info, -vv debug); RUST_LOG overrides.
    /// The controller logs at info by default, the other commands only
    /// warnings and errors.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (the default).
    Run(RunArgs),
    /// Print the CustomResourceDefinition (deploy/crd.yaml).
    GenCrd,
    /// Create the NATS buckets with their settings (needs an identity that
    /// may create streams, e.g. admin.nk).
    Init {
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// Validate Deployment manifests and write their desired state to NATS,
    /// exactly as the controller would (no Kubernetes needed): PodmanV0 and
    /// PodmanV1 scores are checked field by field, other types forwarded
    /// as JSON; the rollout policy goes only to agents that read it.
    /// Secrets the Deployments reference (env valueFrom.secretKeyRef,
    /// secret volumes, spec.imagePullSecrets) come from --secrets and are
    /// sealed to each device's key, from its heartbeat.
    Apply {
        /// Manifest file (YAML, one or more Deployments).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Kubernetes Secret manifests (YAML or JSON; `data` base64,
        /// `stringData` clear text): a file, or a directory of them.
        #[arg(long = "secrets", value_name = "PATH")]
        secrets: Option<PathBuf>,
        /// The key (created once, mode 0600) that the revision's digest of
        /// the --secrets values is keyed with, so that no value derived
        /// from clear text alone leaves this machine (a plain hash in the
        /// revision every device sees would let anyone test password
        /// guesses). Default: $XDG_CONFIG_HOME/iot-operator/secrets-digest.key
        /// (or ~/.config/...). Applies from machines with different keys
        /// give different revisions, a harmless extra rollout: share the
        /// file among administrators to avoid it.
        #[arg(long = "secrets-digest-key", value_name = "FILE", env = operator::secrets::digest_key::ENV)]
        secrets_digest_key: Option<PathBuf>,
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// Remove the desired state of the Deployments in a manifest.
    Delete {
        /// Manifest file (YAML, one or more Deployments).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// Print per-device status read from NATS.
    Status {
        /// Only this deployment.
        name: Option<String>,
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// List the devices read from NATS, as `kubectl get iotdev` would.
    Devices {
        /// Only devices whose board labels match this label selector, in
        /// kubectl's syntax: `k=v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`,
        /// `k`, `!k`, comma-separated.
        #[arg(short = 'l', long = "selector", value_parser = operator::cli::selector::parse)]
        selector: Option<kube::core::Selector>,
        /// Seconds without a heartbeat after which a device shows Unknown
        /// (the controller's --device-silence-secs).
        #[arg(long, default_value_t = operator::cli::DEFAULT_SILENCE_SECS)]
        heartbeat_timeout_secs: u64,
        #[command(flatten)]
        nats: NatsArgs,
    },
}

#[derive(Args, Clone)]
struct RunArgs {
    #[command(flatten)]
    nats: NatsArgs,
    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Seconds without a heartbeat after which a device counts as unreachable.
    #[arg(long, env = "HEARTBEAT_TIMEOUT_SECS", default_value_t = 90)]
    heartbeat_timeout_secs: u64,
    /// Seconds between reconciles of an unchanged Deployment.
    #[arg(long, env = "RESYNC_SECS", default_value_t = 60)]
    resync_secs: u64,
    /// Do not try to create missing buckets (they must exist: `iot-operator init`).
    #[arg(long, env = "NO_CREATE_BUCKETS")]
    no_create_buckets: bool,
    /// Seconds without a heartbeat after which a Device's Ready turns
    /// Unknown (HeartbeatMissing).
    #[arg(long, env = "DEVICE_SILENCE_SECS", default_value_t = operator::cli::DEFAULT_SILENCE_SECS)]
    device_silence_secs: u64,
    /// Longest time a Device's status.lastSeen may lag while nothing else
    /// changes: each Device's status is written at most this often in
    /// steady state (plus at every transition).
    #[arg(long, env = "DEVICE_STATUS_REFRESH_SECS", default_value_t = 300)]
    device_status_refresh_secs: u64,
    /// At most this many devices (the first by id) get per-device series
    /// in /metrics (iot_operator_device_*{device=...}); 0: none. The
    /// fleet-wide and per-Deployment series count every device.
    #[arg(long, env = "METRICS_DEVICE_SERIES_LIMIT", default_value_t = FleetConfig::default().device_series_limit)]
    metrics_device_series_limit: usize,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // A command-line tool is quiet unless asked: the NATS client's
    // "connected" lines are news only to a long-running controller.
    let controller = matches!(cli.command, None | Some(Command::Run(_)));
    let default_filter = match (cli.verbose, controller) {
        (0, false) => "warn",
        (0, true) | (1, _) => "info,kube=warn",
        _ => "debug,kube=info,hyper=info,rustls=info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run_command(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("iot-operator: {}", Chain(&*e));
            std::process::ExitCode::FAILURE
        }
    }
}

async fn connect(nats: &NatsArgs, retry: bool) -> anyhow::Result<Nats> {
    Ok(Nats::connect(&nats.to_config(retry)).await?)
}

async fn run_command(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    use std::process::ExitCode;
    match cli.command {
        None => run(cli.run).await?,
        Some(Command::Run(args)) => run(args).await?,
        Some(Command::GenCrd) => print!("{}", operator::crd::crd_yaml()?),
        Some(Command::Init { nats }) => {
            let nats = connect(&nats, false).await?;
            let created = nats.ensure_buckets(true).await?;
            if created.is_empty() {
                println!("all buckets exist");
            } else {
                println!("created buckets: {}", created.join(", "));
            }
        }
        Some(Command::Apply {
            file,
            secrets,
            secrets_digest_key,
            nats,
        }) => {
            let manifest = manifest::read_all(&file)?;
            let local_secrets = secrets
                .as_deref()
                .map(|p| {
                    LocalSecrets::load(p)
                        .with_context(|| format!("reading the Secrets in {}", p.display()))
                })
                .transpose()?;
            // A Device in the file gives its board its own maintenance
            // windows, as the Device object does in a cluster.
            let device_windows = manifest.device_windows();
            // Read (or created) at the first Deployment that references
            // Secrets.
            let mut digest_key = None;
            let mut plans = Vec::new();
            for d in &manifest.deployments {
                let plan = apply::plan(d).with_context(|| {
                    format!(
                        "{}/{} is invalid; nothing was written",
                        d.namespace_or_default(),
                        d.name_str()
                    )
                })?;
                // Gating needs the controller's loop (it waits for reports
                // and writes batch after batch); writing every target at
                // once instead would be the opposite of what was asked.
                anyhow::ensure!(
                    plan.batch_sequence.is_none(),
                    "{}: spec.rollout.strategy BatchSequence is carried out by the controller (`iot-operator run` against a cluster), which writes batch after batch as devices report Healthy; `apply` without a cluster cannot wait for them. Set spec.rollout.strategy to AllAtOnce to write every target now, or apply the manifest with kubectl; nothing was written",
                    plan.owner
                );
                // Resolved before anything is read from NATS: a missing
                // Secret stops the apply at once.
                let refs = References::of(plan.score(), &d.spec.image_pull_secrets);
                let resolved = if refs.is_empty() {
                    None
                } else {
                    let names: Vec<String> = refs.secret_names().into_iter().collect();
                    let local = local_secrets.as_ref().with_context(|| {
                        format!(
                            "{} references Secrets ({}); pass --secrets PATH (a file or a directory of Kubernetes Secret manifests); nothing was written",
                            plan.owner,
                            names.join(", ")
                        )
                    })?;
                    let key = match digest_key.take() {
                        Some(k) => k,
                        None => {
                            let path = secrets_digest_key
                                .clone()
                                .or_else(operator::secrets::digest_key::default_path)
                                .context("no place for the secrets digest key: set HOME or XDG_CONFIG_HOME, or pass --secrets-digest-key FILE")?;
                            operator::secrets::DigestKey::load_or_create(&path)
                                .context("the secrets digest key (--secrets-digest-key); nothing was written")?
                        }
                    };
                    let resolved = local.resolve(d.namespace_or_default(), &refs, &key);
                    digest_key = Some(key);
                    let resolved = resolved.with_context(|| {
                        format!(
                            "{}: the Secrets in {} do not resolve; nothing was written",
                            plan.owner,
                            secrets
                                .as_deref()
                                .unwrap_or(std::path::Path::new(""))
                                .display()
                        )
                    })?;
                    Some(resolved)
                };
                plans.push((plan, resolved));
            }
            let nats = connect(&nats, false).await?;
            // The same capability gate as the controller's, from the
            // heartbeats in NATS.
            let heartbeats = StatusCache::detached(Duration::from_secs(u64::from(u32::MAX)));
            heartbeats.load(&nats).await?;
            let mut conflict = false;
            // Every plan completed before anything is written, so that a
            // bad Device window in the file writes nothing at all.
            for (plan, resolved) in &mut plans {
                if let Some(u) = &plan.unknown_type {
                    eprintln!("warning: {}: {}", plan.owner, u.message());
                }
                // Without a cluster the only labels are the boards' own (as
                // `iot-operator devices -l` shows them): the selector
                // selects by those.
                if let Some(selector) = &plan.selector {
                    let selected: Vec<String> = heartbeats
                        .heartbeat_devices()
                        .into_iter()
                        .filter(|d| {
                            heartbeats.heartbeat(d).is_some_and(|seen| {
                                let (labels, _) =
                                    operator::inventory::labels::board_labels(&seen.heartbeat);
                                selector.matches(&labels)
                            })
                        })
                        .collect();
                    eprintln!(
                        "note: {}: spec.targetSelector selects {} device(s) by the labels their boards declare (without a cluster, Device labels set by an administrator are not seen)",
                        plan.owner,
                        selected.len()
                    );
                    plan.add_targets(selected);
                }
                // Sealed to the key of each device's latest heartbeat.
                if let Some(resolved) = resolved.take() {
                    plan.set_secrets(resolved, |t| {
                        heartbeats
                            .heartbeat(t)
                            .map(|seen| seen.heartbeat.sealing_key.as_str().to_string())
                    })?;
                }
                let errors = plan.set_device_windows(|d| device_windows.get(d).cloned());
                if let Some(e) = errors.first() {
                    anyhow::bail!(
                        "{}: Device {}: {}; fix the Device in {}; nothing was written",
                        plan.owner,
                        e.device,
                        e.error,
                        file.display()
                    );
                }
                plan.held = operator::targeting::capabilities::held_back(plan, |device| {
                    heartbeats.heartbeat(device)
                });
                for (device, reason) in &plan.held {
                    eprintln!("warning: {}: device {device}: {reason}", plan.owner);
                }
            }
            for (plan, _) in &plans {
                let outcome = apply::apply(&nats, plan).await?;
                println!("{}: {}", plan.owner, apply::summary(plan, &outcome));
                for c in &outcome.conflicts {
                    conflict = true;
                    eprintln!(
                        "error: {}: device {} runs {} of another Deployment ({}); not written",
                        plan.owner, c.device, plan.name, c.owner
                    );
                }
            }
            if conflict {
                return Ok(ExitCode::FAILURE);
            }
        }
        Some(Command::Delete { file, nats }) => {
            let deployments = manifest::read(&file)?;
            let nats = connect(&nats, false).await?;
            for d in &deployments {
                let owner = protocol::kv::Owner::new(d.namespace_or_default(), d.name_str())
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "Deployment {:?} in namespace {:?}: {e}",
                            d.name_str(),
                            d.namespace_or_default()
                        )
                    })?;
                // `spec.rollout.force` makes the removal immediate on the
                // boards too, whatever their update lock and windows say.
                let removed = if d.spec.rollout.force {
                    apply::remove_forced(&nats, &owner.to_string(), owner.name()).await?
                } else {
                    apply::remove(&nats, &owner.to_string(), owner.name()).await?
                };
                println!("{owner}: removed from {} device(s)", removed.len());
            }
        }
        Some(Command::Status { name, nats }) => {
            let nats = connect(&nats, false).await?;
            print!("{}", status_table(&nats, name.as_deref()).await?);
        }
        Some(Command::Devices {
            selector,
            heartbeat_timeout_secs,
            nats,
        }) => {
            let nats = connect(&nats, false).await?;
            let silence = Duration::from_secs(heartbeat_timeout_secs);
            let table =
                operator::cli::devices_table(&nats, &selector.unwrap_or_default(), silence).await?;
            print!("{table}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    // Bound first: a port taken is a configuration error to stop on, not
    // a controller running without probes.
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| {
            format!(
                "cannot listen on --metrics-addr {} (/healthz, /readyz, /metrics)",
                args.metrics_addr
            )
        })?;
    let nats = connect(&args.nats, true).await?;
    let client = kube::Client::try_default()
        .await
        .context("cannot reach Kubernetes (in-cluster config or KUBECONFIG)")?;
    let timeout = Duration::from_secs(args.heartbeat_timeout_secs);
    let (cache, changes) = StatusCache::new(timeout);
    let config = ControllerConfig {
        resync: Duration::from_secs(args.resync_secs),
        ..ControllerConfig::default()
    };
    // The Deployment controller records in the gate what it holds back
    // from which device; the inventory shows it on the Device.
    let (gate, gate_changes) = CapabilityGate::new();
    let ctx = Arc::new(
        Context::new(client.clone(), nats.clone(), cache.clone(), config)
            .with_capability_gate(gate.clone()),
    );
    let silence = Duration::from_secs(args.device_silence_secs);
    let inventory = Arc::new(Inventory::new(
        client,
        nats.clone(),
        cache.clone(),
        gate,
        ctx.metrics.clone(),
        InventoryConfig {
            silence,
            refresh: Duration::from_secs(args.device_status_refresh_secs),
            ..InventoryConfig::default()
        },
    ));
    // Served before the buckets are checked, so that the probes answer
    // (live, not ready) while NATS is slow to come.
    let endpoints = Endpoints::of_operator(
        &ctx,
        FleetConfig {
            silence,
            device_series_limit: args.metrics_device_series_limit,
        },
        ApiServerReachable::TTL,
    );
    tokio::spawn(async move {
        if let Err(e) = server::serve(listener, endpoints).await {
            tracing::error!(error = %Chain(&e), "health/metrics server stopped");
        }
    });
    let created = nats.ensure_buckets(!args.no_create_buckets).await?;
    if !created.is_empty() {
        tracing::info!(buckets = ?created, "created missing buckets");
    }
    tokio::spawn(cache.clone().watch(nats.clone()));
    tracing::info!("controller starting");
    futures::try_join!(
        controller::run(ctx, changes),
        inventory::run(inventory, gate_changes)
    )?;
    Ok(())
}
