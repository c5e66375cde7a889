//! `iot-agent`: the device agent binary.

use std::path::PathBuf;
use std::process::ExitCode;

use agent_linux::config::{Config, DEFAULT_CONFIG_PATH};
use anyhow::Context as _;

const USAGE: &str = "\
iot-agent: runs the containers NATS says this device should run

USAGE:
    iot-agent [--config FILE] [run]        run the agent (the default)
    iot-agent [--config FILE] check-config validate and print the configuration
    iot-agent --version | --help

OPTIONS:
    -c, --config FILE   configuration file (env IOT_AGENT_CONFIG;
                        default /etc/iot-agent/config.toml)

ENVIRONMENT:
    IOT_AGENT_LOG       error | warn | info (default) | debug
";

enum Command {
    Run,
    CheckConfig,
}

fn parse_args() -> Result<Option<(Command, PathBuf)>, String> {
    let mut config = std::env::var_os("IOT_AGENT_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    let mut command = None;
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--version" | "-V") => {
                println!("iot-agent {}", agent_linux::agent::VERSION);
                return Ok(None);
            }
            Some("--help" | "-h" | "help") => {
                print!("{USAGE}");
                return Ok(None);
            }
            Some("--config" | "-c") => {
                config = args
                    .next()
                    .map(PathBuf::from)
                    .ok_or("--config needs a file path")?;
            }
            Some(s) if s.starts_with("--config=") => {
                config = PathBuf::from(&s["--config=".len()..]);
            }
            Some("run") if command.is_none() => command = Some(Command::Run),
            Some("check-config") if command.is_none() => command = Some(Command::CheckConfig),
            _ => {
                return Err(format!(
                    "unexpected argument {arg:?}; try `iot-agent --help`"
                ));
            }
        }
    }
    Ok(Some((command.unwrap_or(Command::Run), config)))
}

fn main() -> ExitCode {
    agent_linux::log::init_from_env();
    let (command, path) = match parse_args() {
        Ok(Some(x)) => x,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("iot-agent: {e}");
            return ExitCode::from(2);
        }
    };
    let result = Config::load(&path)
        .with_context(|| format!("configuration {} is not usable", path.display()))
        .and_then(|config| match command {
            Command::CheckConfig => {
                // The sealing key too: a bad or too-open file is an error
                // here rather than at the next start (a missing one is
                // created then, not here).
                if let Some(key) = &config.secrets.key_file
                    && key.exists()
                {
                    agent_linux::agent::load_sealing_key(&config)?;
                }
                if config.secrets.key_file.is_some()
                    && let Err(why) =
                        agent_linux::secrets::is_in_memory(&config.secrets.runtime_dir)
                {
                    println!("# warning: {why}");
                }
                println!("# {} is valid; effective configuration:", path.display());
                print!("{config}");
                Ok(())
            }
            Command::Run => run(config),
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("iot-agent: {}", agent_linux::log::Chain(&*e));
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    agent_linux::info!(
        "iot-agent {} starting as device {}",
        agent_linux::agent::VERSION,
        config.device_id
    );
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, agent_linux::agent::run(config))
}
