//! `cargo xtask`: project automation. Subcommands land with later issues.

fn main() -> anyhow::Result<()> {
    let cmd = std::env::args().nth(1).unwrap_or_default();
    anyhow::bail!(
        "cargo xtask {cmd}: no subcommands are implemented yet (dist, image, flash, crd and demo land with later issues)"
    )
}
