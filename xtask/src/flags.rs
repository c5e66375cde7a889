//! A small command-line parser: each subcommand takes the options it knows,
//! then `finish` rejects anything left over, so a typo is an error rather
//! than a silently ignored option.

use anyhow::{Context, Result, bail};
use std::path::PathBuf;

/// The arguments after the subcommand name, consumed option by option.
#[derive(Debug)]
pub struct Args {
    cmd: &'static str,
    items: Vec<Option<String>>,
}

impl Args {
    /// Wraps the raw arguments of subcommand `cmd` (used in messages).
    pub fn new(cmd: &'static str, raw: Vec<String>) -> Args {
        // `--key=value` is split so that both spellings behave the same.
        let mut items = Vec::new();
        for a in raw {
            match a.split_once('=') {
                Some((k, v)) if k.starts_with("--") => {
                    items.push(Some(k.to_string()));
                    items.push(Some(v.to_string()));
                }
                _ => items.push(Some(a)),
            }
        }
        Args { cmd, items }
    }

    /// Whether `--help` or `-h` was given.
    pub fn wants_help(&self) -> bool {
        self.items
            .iter()
            .flatten()
            .any(|a| a == "--help" || a == "-h")
    }

    /// Takes a boolean switch.
    pub fn flag(&mut self, name: &str) -> bool {
        let mut found = false;
        for item in &mut self.items {
            if item.as_deref() == Some(name) {
                *item = None;
                found = true;
            }
        }
        found
    }

    /// Takes every value of a repeatable `--name VALUE` option.
    pub fn values(&mut self, name: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.items.len() {
            if self.items[i].as_deref() == Some(name) {
                self.items[i] = None;
                match self.items.get_mut(i + 1).and_then(Option::take) {
                    Some(v) if !v.starts_with("--") => out.push(v),
                    _ => bail!(
                        "`cargo xtask {}`: option {name} needs a value, e.g. `{name} VALUE`",
                        self.cmd
                    ),
                }
                i += 1;
            }
            i += 1;
        }
        Ok(out)
    }

    /// Takes an optional `--name VALUE` given at most once.
    pub fn value(&mut self, name: &str) -> Result<Option<String>> {
        let mut v = self.values(name)?;
        if v.len() > 1 {
            bail!(
                "`cargo xtask {}`: option {name} was given {} times; give it once",
                self.cmd,
                v.len()
            );
        }
        Ok(v.pop())
    }

    /// Takes a required `--name VALUE`.
    pub fn required(&mut self, name: &str, hint: &str) -> Result<String> {
        self.value(name)?.with_context(|| {
            format!(
                "`cargo xtask {}` needs {name} {hint}; see `cargo xtask help {}`",
                self.cmd, self.cmd
            )
        })
    }

    /// Takes an optional path-valued option.
    pub fn path(&mut self, name: &str) -> Result<Option<PathBuf>> {
        Ok(self.value(name)?.map(PathBuf::from))
    }

    /// An option's value, without taking it.
    pub fn peek(&self, name: &str) -> Option<String> {
        let i = self.items.iter().position(|i| i.as_deref() == Some(name))?;
        self.items.get(i + 1).cloned().flatten()
    }

    /// Takes the next positional argument (one not starting with `-`).
    pub fn positional(&mut self) -> Option<String> {
        let item = self
            .items
            .iter_mut()
            .find(|i| i.as_deref().is_some_and(|s| !s.starts_with('-')))?;
        item.take()
    }

    /// Fails on anything not consumed, naming it.
    pub fn finish(self) -> Result<()> {
        let rest: Vec<String> = self.items.into_iter().flatten().collect();
        if !rest.is_empty() {
            bail!(
                "`cargo xtask {}`: unexpected argument(s) {}; see `cargo xtask help {}`",
                self.cmd,
                rest.join(" "),
                self.cmd
            );
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn args(s: &str) -> Args {
        Args::new("t", s.split_whitespace().map(String::from).collect())
    }

    #[test]
    fn parses_values_flags_and_rejects_leftovers() {
        let mut a = args("--board rpi4 --yes --to=/dev/sdx --device a --device b pos");
        assert_eq!(a.value("--board").unwrap().as_deref(), Some("rpi4"));
        assert!(a.flag("--yes"));
        assert_eq!(a.value("--to").unwrap().as_deref(), Some("/dev/sdx"));
        assert_eq!(a.values("--device").unwrap(), vec!["a", "b"]);
        assert_eq!(a.positional().as_deref(), Some("pos"));
        a.finish().unwrap();

        let a = args("--bogus 1");
        let err = a.finish().unwrap_err().to_string();
        assert!(err.contains("--bogus"), "{err}");
    }

    #[test]
    fn missing_value_and_duplicates_are_errors() {
        assert!(args("--board").value("--board").is_err());
        assert!(args("--board --yes").value("--board").is_err());
        assert!(args("--board a --board b").value("--board").is_err());
        let err = args("").required("--board", "NAME").unwrap_err();
        assert!(err.to_string().contains("--board NAME"));
    }
}
