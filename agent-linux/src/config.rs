//! The agent's configuration file. Its schema, defaults and validation are
//! the `agent-config` crate, re-exported here, so that the tools writing
//! the file (`cargo xtask image`, the demo) use the agent's own type; this
//! module adds only what needs the agent: `[security]` as the policy's
//! [`Allowances`].

pub use agent_config::*;

use crate::policy::Allowances;

impl From<&SecurityConfig> for Allowances {
    fn from(s: &SecurityConfig) -> Allowances {
        Allowances {
            host_paths: s.allowed_host_paths.clone(),
            privileged: s.allow_privileged,
            host_namespaces: s.allow_host_namespaces,
            capabilities: s
                .allowed_capabilities
                .iter()
                .map(|c| normalize_capability(c))
                .collect(),
            devices: s.allowed_devices.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn security_section_becomes_the_allowances() {
        let c = Config::parse(
            r#"
version = 1
device_id = "pi-001"
state_dir = "/var/lib/iot-agent"
[nats]
urls = ["nats://a:4222"]
[security]
allowed_host_paths = ["/srv"]
allow_privileged = true
allowed_capabilities = ["cap_net_admin"]
allowed_devices = ["/dev/ttyUSB0"]
"#,
        )
        .unwrap();
        assert_eq!(
            Allowances::from(&c.security),
            Allowances {
                host_paths: vec!["/srv".into()],
                privileged: true,
                host_namespaces: false,
                capabilities: vec!["NET_ADMIN".into()],
                devices: vec!["/dev/ttyUSB0".into()],
            }
        );
    }
}
