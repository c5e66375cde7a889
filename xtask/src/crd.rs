//! `cargo xtask crd`: regenerates `deploy/crd.yaml` from the operator's
//! types (`iot-operator gen-crd`); `--check` fails when the file drifted.

use anyhow::{Context, Result, bail};

use crate::flags::Args;
use crate::util::{cargo, project_root};

/// Help for `cargo xtask crd`.
pub const HELP: &str = "\
cargo xtask crd [--check] [--file PATH]
    Regenerate deploy/crd.yaml with `iot-operator gen-crd`.
    --check   fail if the file differs from what gen-crd prints (CI)
    --file    another file than deploy/crd.yaml";

/// `cargo xtask crd`.
pub fn cmd(mut args: Args) -> Result<()> {
    let check = args.flag("--check");
    let path = args
        .path("--file")?
        .unwrap_or_else(|| project_root().join("deploy/crd.yaml"));
    args.finish()?;
    let name = path.display();
    let mut c = cargo();
    c.current_dir(project_root())
        .args(["run", "-q", "-p", "operator", "--", "gen-crd"]);
    let out = c
        .output()
        .context("could not run `cargo run -p operator -- gen-crd`")?;
    if !out.status.success() {
        bail!(
            "`iot-operator gen-crd` failed ({}); {name} was left as it is. \
             Fix the operator build, or wait for its gen-crd subcommand.\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let generated = String::from_utf8(out.stdout).context("gen-crd printed non-UTF-8")?;
    if !generated.contains("kind: CustomResourceDefinition") {
        bail!(
            "`iot-operator gen-crd` printed no CustomResourceDefinition; {name} was \
             left as it is. Check the operator's gen-crd subcommand"
        );
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    if check {
        if current != generated {
            bail!(
                "{name} is out of date with the operator's types; run \
                 `cargo xtask crd` and commit the result"
            );
        }
        println!("{name} is up to date");
        return Ok(());
    }
    if current == generated {
        println!("{name} unchanged");
    } else {
        std::fs::write(&path, &generated).with_context(|| format!("write {}", path.display()))?;
        println!("wrote {name}");
    }
    Ok(())
}
