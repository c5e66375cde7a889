//! `cargo xtask creds`: NATS identities for a fleet and the server
//! authorization that confines each of them (nkeys: challenge-response, the
//! server holds only public keys; or, with `--jwt`, decentralized JWT mode in
//! [`decentralized`]), and each device's sealing key (`<id>.xk`, the curve
//! key the operator seals the device's secrets to).

mod decentralized;

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use protocol::keys::validate_device_id;
use protocol::permissions::{Role, nats_server_config};

use crate::flags::Args;

pub const HELP: &str = "\
cargo xtask creds --out DIR [--jwt] --device ID [--device ID ...] [--revoke ID ...]

Creates (or updates) a fleet's NATS identities in DIR:
  admin.nk        may create buckets (`iot-operator init`); nothing else needs it
  operator.nk     what the operator's reconcile and watches need
  <device>.nk     one per device: reads only its own desired state, writes
                  only its own status and heartbeat
  <device>.xk     one per device: its sealing key (an nkeys curve seed,
                  SX...), which opens the secrets sealed to that board;
                  `disk-image`/`flash` bake it at /etc/iot-agent/device.xk
  nats-server.conf  the authorization enforcing it, for
                  `nats-server -c DIR/nats-server.conf -p PORT -js -sd STORE`

Seeds are nkey seeds, written with mode 0600. Existing seeds are kept, so
adding a device changes no other identity; a device without a sealing key
gets one. Each device's public sealing key (X...) is printed; the operator
learns it from the board's heartbeat. --revoke ID moves that device's seed
and sealing key to DIR/revoked/ and drops it from nats-server.conf; reload
the server (`nats-server --signal reload=PID`) and only that device is shut
out: it reads no desired state from then on, so no Secret rotated after
that reaches it.

To revoke by reload, configure JetStream in a file rather than with -js/-sd:
nats-server 2.9 turns JetStream off on a reload when only the flags enabled
it. E.g. DIR/main.conf (includes are relative to the including file):
  jetstream { store_dir: \"/var/lib/nats\" }
  include \"./nats-server.conf\"
and run `nats-server -c DIR/main.conf -p 4222`.

--jwt: decentralized JWT mode instead. DIR then holds a NATS operator
(nats-operator.nk/.jwt), the IOT account (account.nk/.jwt, JetStream on),
its device signing key (device-signer.nk), a system account, and one
.creds file (user JWT + seed, mode 0600) per identity: admin.creds,
operator.creds, <device>.creds, and a <device>.xk sealing key as above.
Devices are signed by a scoped key whose template confines a user named
<id> to that device's subjects. nats-server.conf trusts the operator and
preloads the accounts (resolver MEMORY). --revoke ID moves <id>.creds and
<id>.xk to DIR/revoked/ and adds its key to the account's revocations;
reload the server as above. A DIR stays in the mode it was created in.";

/// Identities that are not devices.
const ADMIN: &str = "admin";
const OPERATOR: &str = "operator";
/// Extension of a device's sealing key file, beside its NATS identity.
pub const SEALING_KEY_EXT: &str = "xk";

pub fn cmd(mut args: Args) -> Result<()> {
    let out = args
        .path("--out")?
        .context("`cargo xtask creds` needs --out DIR")?;
    let add = args.values("--device")?;
    let revoke = args.values("--revoke")?;
    let jwt = args.flag("--jwt");
    args.finish()?;
    let fleet = if jwt {
        generate_jwt(&out, &add, &revoke)?
    } else {
        generate(&out, &add, &revoke)?
    };
    println!(
        "wrote {} with {} device identities ({}); start the server with\n  nats-server -c {} -p 4222 -js -sd STORE",
        out.display(),
        fleet.devices.len(),
        fleet.devices.join(", "),
        out.join("nats-server.conf").display()
    );
    for (id, key) in fleet.devices.iter().zip(&fleet.sealing_keys) {
        println!("  {id}: sealing key {key}");
    }
    Ok(())
}

/// What `generate` produced.
pub struct Fleet {
    /// Device ids with an identity, sorted.
    pub devices: Vec<String>,
    /// Each device's public sealing key (`X...`), in the order of `devices`.
    pub sealing_keys: Vec<String>,
}

/// The sealing key file of device `id` in a creds DIR.
pub fn sealing_key_file(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.{SEALING_KEY_EXT}"))
}

/// The public key of the sealing key in `path`, which is created (mode
/// 0600) when it does not exist. Read and written by the agent's own code
/// ([`sealing::DeviceKey`]), so a file accepted here is accepted on the
/// board, and one others can read is refused as it is there.
pub fn ensure_sealing_key(path: &Path) -> Result<String> {
    let (key, _created) = sealing::DeviceKey::load_or_create(path)?;
    Ok(key.public_key().to_string())
}

/// The public sealing keys of `devices`, each created when missing.
fn sealing_keys(dir: &Path, devices: &[String]) -> Result<Vec<String>> {
    devices
        .iter()
        .map(|id| ensure_sealing_key(&sealing_key_file(dir, id)))
        .collect()
}

/// Moves device `id`'s sealing key, if it has one, to `DIR/revoked/` with
/// its NATS identity: a re-added id gets a new key, not the revoked one.
fn revoke_sealing_key(dir: &Path, id: &str) -> Result<()> {
    let key = sealing_key_file(dir, id);
    if !key.exists() {
        return Ok(());
    }
    let revoked = dir.join("revoked");
    fs::create_dir_all(&revoked)?;
    fs::rename(&key, sealing_key_file(&revoked, id))
        .with_context(|| format!("moving {} to {}", key.display(), revoked.display()))
}

/// Like [`generate`], in decentralized JWT mode.
pub fn generate_jwt(dir: &Path, add: &[String], revoke: &[String]) -> Result<Fleet> {
    prepare(dir, add, revoke, true)?;
    decentralized::generate(dir, add, revoke)
}

/// Validates ids, refuses a DIR of the other mode, creates DIR (0700).
fn prepare(dir: &Path, add: &[String], revoke: &[String], jwt: bool) -> Result<()> {
    for id in add.iter().chain(revoke) {
        validate_device_id(id).map_err(|e| anyhow::anyhow!("--device/--revoke {id:?}: {e}"))?;
        if id == ADMIN || id == OPERATOR {
            bail!("device id {id:?} is reserved for the {id} identity; choose another id");
        }
    }
    if let Some(id) = add.iter().find(|id| revoke.contains(id)) {
        bail!("{id:?} is both added and revoked; give one of --device or --revoke");
    }
    let (this, other) = if jwt {
        ("JWT (--jwt)", "nkey")
    } else {
        ("nkey", "JWT (--jwt)")
    };
    let foreign = if jwt {
        "admin.nk"
    } else {
        decentralized::OPERATOR_SEED
    };
    if dir.join(foreign).exists() {
        bail!(
            "{} holds a fleet in {other} mode ({foreign}); use that mode, or a new --out DIR for {this} mode",
            dir.display()
        );
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    check_sealing_keys(dir, revoke)
}

/// Every sealing key in DIR that stays (not being revoked) must load as
/// the board loads it, checked before anything is moved or written: a run
/// that failed halfway through a revocation would leave the server's
/// configuration letting the device in, and its files already moved.
fn check_sealing_keys(dir: &Path, revoke: &[String]) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let Some(id) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(&format!(".{SEALING_KEY_EXT}")))
        else {
            continue;
        };
        if !revoke.iter().any(|r| r == id) {
            sealing::DeviceKey::load(&path)?;
        }
    }
    Ok(())
}

/// Creates missing identities, applies revocations, rewrites the server config.
pub fn generate(dir: &Path, add: &[String], revoke: &[String]) -> Result<Fleet> {
    prepare(dir, add, revoke, false)?;
    for id in revoke {
        let seed = dir.join(format!("{id}.nk"));
        if !seed.exists() {
            bail!("cannot revoke {id:?}: {} does not exist", seed.display());
        }
        let revoked = dir.join("revoked");
        fs::create_dir_all(&revoked)?;
        fs::rename(&seed, revoked.join(format!("{id}.nk")))
            .with_context(|| format!("moving {} to {}", seed.display(), revoked.display()))?;
        revoke_sealing_key(dir, id)?;
    }
    for name in [ADMIN, OPERATOR]
        .iter()
        .copied()
        .chain(add.iter().map(String::as_str))
    {
        ensure_seed(&dir.join(format!("{name}.nk")), nkeys::KeyPair::new_user)?;
    }

    let mut devices = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if let Some(id) = name.strip_suffix(".nk")
            && id != ADMIN
            && id != OPERATOR
            && validate_device_id(id).is_ok()
        {
            devices.push(id.to_string());
        }
    }
    devices.sort();

    let mut keys = Vec::new();
    for name in [ADMIN, OPERATOR]
        .iter()
        .copied()
        .chain(devices.iter().map(String::as_str))
    {
        keys.push(public_key(&dir.join(format!("{name}.nk")))?);
    }
    let mut users = vec![
        (Role::Admin, keys[0].as_str()),
        (Role::Operator, keys[1].as_str()),
    ];
    for (id, key) in devices.iter().zip(&keys[2..]) {
        users.push((Role::Device(id), key.as_str()));
    }
    let conf = nats_server_config(&users);
    // Every sealing key made (and, in `prepare`, checked) first: the
    // server's authorization changes only once the run can complete.
    let sealing_keys = sealing_keys(dir, &devices)?;
    write_atomic(&dir.join("nats-server.conf"), conf.as_bytes(), 0o644)?;
    Ok(Fleet {
        devices,
        sealing_keys,
    })
}

/// The key pair whose seed `path` holds, created with `new` when the file
/// does not exist yet.
fn ensure_seed(path: &Path, new: fn() -> nkeys::KeyPair) -> Result<nkeys::KeyPair> {
    if path.exists() {
        check_private(path)?;
        let seed =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        return nkeys::KeyPair::from_seed(seed.trim())
            .map_err(|e| anyhow::anyhow!("{} is not an nkey seed: {e}", path.display()));
    }
    let kp = new();
    let seed = kp.seed().map_err(|e| anyhow::anyhow!("nkey seed: {e}"))?;
    write_atomic(path, format!("{seed}\n").as_bytes(), 0o600)?;
    Ok(kp)
}

/// Refuses a secret others can read, naming the fix.
fn check_private(path: &Path) -> Result<()> {
    let mode = fs::metadata(path)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "{} is readable by others (mode {mode:o}); run `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

/// The public key of a device's or client's seed file, read the way the
/// agent and the operator read it (so a file they accept is accepted here).
fn public_key(seed_file: &Path) -> Result<String> {
    let seed = nats_credentials::read_seed_file(seed_file)?;
    let kp = nkeys::KeyPair::from_seed(&seed)
        .map_err(|e| anyhow::anyhow!("{} is not an nkey seed: {e}", seed_file.display()))?;
    Ok(kp.public_key())
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}
