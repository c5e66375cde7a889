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

/// The logins of a `.dockerconfigjson`, by registry host.
#[derive(Debug, Default)]
pub struct Logins {
    /// The login each host uses: of its `auths` keys, the one that is the
    /// host itself (`registry.example.com`) wins over its other forms
    /// (`https://registry.example.com/v2/`, Docker Hub's aliases), then
    /// the first in key order; not what the JSON's order happens to be.
    logins: BTreeMap<String, (bool, String, Login)>,
    /// Hosts with an entry that cannot be read, with the first reason:
    /// only an error for a registry the images use (the kubelet skips
    /// them too).
    broken: BTreeMap<String, String>,
}

impl Logins {
    /// The login for `registry` (a host as
    /// [`protocol::sealed::registry_of`] names it; compared without case),
    /// `None` when the config has none, or why an entry for it cannot be
    /// read.
    pub fn login_for(&self, registry: &str) -> Result<Option<&Login>, String> {
        let host = registry.to_ascii_lowercase();
        if let Some(reason) = self.broken.get(&host) {
            return Err(reason.clone());
        }
        Ok(self.logins.get(&host).map(|(_, _, l)| l))
    }

    /// The hosts with a usable login.
    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.logins.keys().map(String::as_str)
    }
}

/// Reads a `.dockerconfigjson`. The error is a reason that follows
/// ".dockerconfigjson " in a message; an entry that cannot be read fails
/// only the registry it is for ([`Logins::login_for`]).
pub fn parse(json: &[u8]) -> Result<Logins, String> {
    // A syntax error's message names a line and column, not the text.
    let doc: Value = serde_json::from_slice(json).map_err(|e| format!("is not JSON ({e})"))?;
    let auths = doc
        .get("auths")
        .ok_or("has no `auths` object")?
        .as_object()
        .ok_or("`auths` is not an object")?;
    let mut out = Logins::default();
    for (key, entry) in auths {
        let host = registry_host(key);
        let login = match entry_login(key, entry) {
            Ok(l) => l,
            Err(reason) => {
                out.broken.entry(host).or_insert(reason);
                continue;
            }
        };
        // Lower sorts first: the host's own key, then the first key.
        let alias = !key.trim().eq_ignore_ascii_case(&host);
        let better = out
            .logins
            .get(&host)
            .is_none_or(|(a, k, _)| (alias, key.as_str()) < (*a, k.as_str()));
        if better {
            out.logins.insert(host, (alias, key.clone(), login));
        }
    }
    Ok(out)
}

/// The login of the `auths` entry `key`.
fn entry_login(key: &str, entry: &Value) -> Result<Login, String> {
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
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(auth.trim()))
                .map_err(|_| not_auth())?,
        );
        let text = std::str::from_utf8(&decoded).map_err(|_| not_auth())?;
        let (user, password) = text.split_once(':').ok_or_else(not_auth)?;
        // As Docker and the kubelet do: `auth` wins over
        // username/password written beside it.
        login.username = Zeroizing::new(user.to_string());
        login.password = Zeroizing::new(password.to_string());
    }
    if login.username.is_empty() && login.password.is_empty() && login.identity_token.is_empty() {
        return Err(format!(
            "auths.{key:?} has no auth, username/password or identitytoken"
        ));
    }
    Ok(login)
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
        let parsed = parse(json.to_string().as_bytes()).unwrap();
        assert_eq!(
            parsed.hosts().collect::<Vec<_>>(),
            [
                "127.0.0.1:5000",
                "both.example.com",
                "docker.io",
                "registry.example.com"
            ]
        );
        let logins = |host: &str| parsed.login_for(host).unwrap().unwrap();
        let hub = logins("docker.io");
        assert_eq!(
            (hub.username.as_str(), hub.password.as_str()),
            ("hub", "hunter2")
        );
        let r = logins("registry.example.com");
        assert_eq!((r.username.as_str(), r.password.as_str()), ("u", "p:w"));
        assert_eq!(logins("127.0.0.1:5000").identity_token.as_str(), "tok");
        let both = logins("both.example.com");
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
            let e = parse(json.as_bytes())
                .and_then(|p| p.login_for("r.io").map(|_| ()))
                .unwrap_err();
            assert!(e.contains(want), "{json}: {e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn the_hosts_own_key_wins_over_its_aliases_whatever_the_order() {
        // Sorted, `https://index.docker.io/v1/` comes after `docker.io`
        // and `Docker.IO`, so it used to win.
        for (exact, alias) in [
            ("docker.io", "https://index.docker.io/v1/"),
            ("docker.io", "index.docker.io"),
            ("r.example.com", "https://r.example.com/v2/"),
            ("r.example.com", "R.Example.com/"),
        ] {
            let json = serde_json::json!({"auths": {
                exact: {"username": "exact", "password": "p"},
                alias: {"username": "alias", "password": "p"},
            }});
            let parsed = parse(json.to_string().as_bytes()).unwrap();
            let host = registry_host(exact);
            let login = parsed.login_for(&host).unwrap().unwrap();
            assert_eq!(login.username.as_str(), "exact", "{exact} vs {alias}");
            // Compared without case.
            let upper = parsed
                .login_for(&host.to_ascii_uppercase())
                .unwrap()
                .unwrap();
            assert_eq!(upper.username.as_str(), "exact");
        }
        // Two aliases: the first in key order, every time.
        let json = serde_json::json!({"auths": {
            "https://index.docker.io/v1/": {"username": "b", "password": "p"},
            "index.docker.io": {"username": "a", "password": "p"},
        }});
        let parsed = parse(json.to_string().as_bytes()).unwrap();
        assert_eq!(
            parsed
                .login_for("docker.io")
                .unwrap()
                .unwrap()
                .username
                .as_str(),
            "b"
        );
    }

    #[test]
    fn a_broken_entry_fails_only_its_registry() {
        let json = serde_json::json!({"auths": {
            "unused.example.com": {"email": "ops@example.com"},
            "also-unused.example.com": {"auth": "hunter2!!"},
            "used.example.com": {"username": "u", "password": "p"},
        }});
        let parsed = parse(json.to_string().as_bytes()).unwrap();
        assert_eq!(
            parsed
                .login_for("used.example.com")
                .unwrap()
                .unwrap()
                .username
                .as_str(),
            "u"
        );
        assert!(parsed.login_for("elsewhere.io").unwrap().is_none());
        let e = parsed.login_for("unused.example.com").unwrap_err();
        assert!(e.contains("has no auth"), "{e}");
        let e = parsed.login_for("Also-Unused.example.com").unwrap_err();
        assert!(e.contains("is not base64") && !e.contains("hunter2"), "{e}");
    }
}
