//! A `.dockerconfigjson` (what `kubectl create secret docker-registry`
//! writes): `{"auths": {"<registry>": {"auth": base64("user:password")} |
//! {"username", "password"} | {"identitytoken"}}}`, read into a login per
//! registry host. Errors name fields, never values (serde's own messages
//! may quote the value they choke on, so the JSON is walked by hand).

use std::collections::BTreeMap;

use base64::Engine as _;
use sealing::Zeroizing;
use serde_json::Value;

/// A registry login, in memory only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Login {
    /// The user name.
    pub username: Zeroizing<String>,
    /// The password.
    pub password: Zeroizing<String>,
    /// An identity token (OAuth refresh token), when the registry issued one.
    pub identity_token: Zeroizing<String>,
}

/// Never prints the password or the token.
impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("username", &self.username.as_str())
            .finish_non_exhaustive()
    }
}

/// The registry a `auths` key names, as [`protocol::sealed::registry_of`]
/// names an image's: the host (and port), without scheme or path; Docker
/// Hub's aliases (`index.docker.io`, `https://index.docker.io/v1/`,
/// `registry-1.docker.io`) are `docker.io`.
pub fn registry_host(key: &str) -> String {
    let key = key.trim();
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = rest.split('/').next().unwrap_or(rest).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".into(),
        _ => host,
    }
}

/// The logins of a `.dockerconfigjson`, by registry host. The error is a
/// reason that follows ".dockerconfigjson " in a message.
pub fn parse(json: &[u8]) -> Result<BTreeMap<String, Login>, String> {
    // A syntax error's message names a line and column, not the text.
    let doc: Value = serde_json::from_slice(json).map_err(|e| format!("is not JSON ({e})"))?;
    let auths = doc
        .get("auths")
        .ok_or("has no `auths` object")?
        .as_object()
        .ok_or("`auths` is not an object")?;
    let mut out = BTreeMap::new();
    for (key, entry) in auths {
        let field = |name: &str| -> Result<Zeroizing<String>, String> {
            match entry.get(name) {
                None | Some(Value::Null) => Ok(Zeroizing::default()),
                Some(Value::String(s)) => Ok(Zeroizing::new(s.clone())),
                Some(_) => Err(format!("auths.{key:?}.{name} is not a string")),
            }
        };
        if !entry.is_object() {
            return Err(format!("auths.{key:?} is not an object"));
        }
        let mut login = Login {
            username: field("username")?,
            password: field("password")?,
            identity_token: field("identitytoken")?,
        };
        let auth = field("auth")?;
        if !auth.is_empty() {
            let not_auth = || format!("auths.{key:?}.auth is not base64 of \"user:password\"");
            let decoded = Zeroizing::new(
                base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .or_else(|_| {
                        base64::engine::general_purpose::STANDARD_NO_PAD.decode(auth.trim())
                    })
                    .map_err(|_| not_auth())?,
            );
            let text = std::str::from_utf8(&decoded).map_err(|_| not_auth())?;
            let (user, password) = text.split_once(':').ok_or_else(not_auth)?;
            // As Docker and the kubelet do: `auth` wins over
            // username/password written beside it.
            login.username = Zeroizing::new(user.to_string());
            login.password = Zeroizing::new(password.to_string());
        }
        if login.username.is_empty() && login.password.is_empty() && login.identity_token.is_empty()
        {
            return Err(format!(
                "auths.{key:?} has no auth, username/password or identitytoken"
            ));
        }
        out.insert(registry_host(key), login);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn reads_auth_username_password_and_identity_tokens() {
        let json = serde_json::json!({"auths": {
            "https://index.docker.io/v1/": {"auth": b64("hub:hunter2")},
            "registry.example.com": {"username": "u", "password": "p:w", "email": "x@y"},
            "https://127.0.0.1:5000/v2/": {"identitytoken": "tok"},
            "both.example.com": {"auth": b64("a:b:c"), "username": "ignored", "password": "ignored"},
        }});
        let logins = parse(json.to_string().as_bytes()).unwrap();
        assert_eq!(
            logins.keys().collect::<Vec<_>>(),
            [
                "127.0.0.1:5000",
                "both.example.com",
                "docker.io",
                "registry.example.com"
            ]
        );
        let hub = &logins["docker.io"];
        assert_eq!(
            (hub.username.as_str(), hub.password.as_str()),
            ("hub", "hunter2")
        );
        let r = &logins["registry.example.com"];
        assert_eq!((r.username.as_str(), r.password.as_str()), ("u", "p:w"));
        assert_eq!(logins["127.0.0.1:5000"].identity_token.as_str(), "tok");
        let both = &logins["both.example.com"];
        assert_eq!(
            (both.username.as_str(), both.password.as_str()),
            ("a", "b:c")
        );
        assert!(!format!("{hub:?}").contains("hunter2"));
    }

    #[test]
    fn docker_hub_aliases_are_one_registry() {
        for alias in [
            "docker.io",
            "index.docker.io",
            "https://index.docker.io/v1/",
            "registry-1.docker.io",
            "https://registry-1.docker.io",
        ] {
            assert_eq!(registry_host(alias), "docker.io", "{alias}");
            assert_eq!(registry_host(alias), protocol::sealed::registry_of("nginx"));
        }
        assert_eq!(
            registry_host("Registry.Example.com:443/path"),
            "registry.example.com:443"
        );
    }

    #[test]
    fn malformed_configs_name_the_field_never_the_value() {
        for (json, want) in [
            ("not json".to_string(), "is not JSON"),
            (r#"{"auth": {}}"#.into(), "has no `auths` object"),
            (r#"{"auths": []}"#.into(), "`auths` is not an object"),
            (
                r#"{"auths": {"r.io": "hunter2"}}"#.into(),
                "auths.\"r.io\" is not an object",
            ),
            (
                r#"{"auths": {"r.io": {"auth": "hunter2!!"}}}"#.into(),
                "auths.\"r.io\".auth is not base64",
            ),
            (
                format!(
                    r#"{{"auths": {{"r.io": {{"auth": "{}"}}}}}}"#,
                    b64("hunter2")
                ),
                "auths.\"r.io\".auth is not base64 of \"user:password\"",
            ),
            (
                r#"{"auths": {"r.io": {"password": 5}}}"#.into(),
                "auths.\"r.io\".password is not a string",
            ),
            (
                r#"{"auths": {"r.io": {}}}"#.into(),
                "has no auth, username/password",
            ),
        ] {
            let e = parse(json.as_bytes()).unwrap_err();
            assert!(e.contains(want), "{json}: {e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }
}
