//! `-l SELECTOR`: kubectl's label selector syntax into a
//! [`kube::core::Selector`].
//!
//! Written here rather than taken from a crate: kube has the selector types
//! and their matching ([`kube::core::SelectorExt::matches`]) but parses no
//! selector string (it only prints them for the API server, which parses
//! them itself), and no maintained crate parses them. The grammar is
//! Kubernetes' (`k8s.io/apimachinery/pkg/labels`), without the `<`/`>`
//! operators that `kube::core::Expression` cannot hold:
//!
//! ```text
//! selector    ::= "" | requirement ("," requirement)*
//! requirement ::= "!" KEY | KEY [ ("=" | "==" | "!=") VALUE | ("in" | "notin") "(" VALUE ("," VALUE)* ")" ]
//! ```
//!
//! Keys and values follow the label rules of [`protocol::labels`]; a value
//! may be empty, as in Kubernetes (`k=` selects the label with an empty
//! value).

use std::collections::BTreeSet;

use kube::core::{Expression, Selector};
use protocol::validate::Violation;

/// Why a selector string does not parse. Columns count characters from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// A token that does not fit where it stands.
    #[error("expected {expected} at column {column}, found {found}")]
    Unexpected {
        /// What the grammar allows there.
        expected: String,
        /// Where the token starts.
        column: usize,
        /// The token, as shown to the user.
        found: String,
    },
    /// A key that is not a Kubernetes label key.
    #[error("label key `{key}` at column {column} {violation}")]
    Key {
        /// The key.
        key: String,
        /// Where it starts.
        column: usize,
        /// The rule it breaks.
        violation: Violation,
    },
    /// A value that is not a Kubernetes label value.
    #[error("label value `{value}` at column {column} {violation}")]
    Value {
        /// The value.
        value: String,
        /// Where it starts.
        column: usize,
        /// The rule it breaks.
        violation: Violation,
    },
}

/// Parses a label selector as kubectl's `-l` takes it: `k=v`, `k==v`,
/// `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`, comma-separated. The
/// empty string selects everything.
pub fn parse(input: &str) -> Result<Selector, SelectorError> {
    let tokens = lex(input);
    let mut p = Parser { tokens, at: 0 };
    let mut expressions = Vec::new();
    if p.peek().kind == Kind::End {
        return Ok(Selector::default());
    }
    loop {
        expressions.push(p.requirement()?);
        let t = p.next();
        match t.kind {
            Kind::End => break,
            Kind::Comma => {}
            _ => {
                return Err(unexpected(
                    format!(
                        "',' or the end after `{}`",
                        expressions[expressions.len() - 1]
                    ),
                    &t,
                ));
            }
        }
    }
    Ok(expressions.into_iter().collect())
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// A run of characters that are neither spaces nor symbols: a key, a
    /// value, `in` or `notin`.
    Word(String),
    /// `=`
    Eq,
    /// `==`
    DoubleEq,
    /// `!=`
    NotEq,
    /// `!`
    Bang,
    /// `(`
    Open,
    /// `)`
    Close,
    /// `,`
    Comma,
    /// `<` or `>`: Kubernetes operators this selector cannot hold.
    Other(char),
    /// The end of the input.
    End,
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    column: usize,
}

fn is_symbol(c: char) -> bool {
    matches!(c, '=' | '!' | '(' | ')' | ',' | '<' | '>')
}

fn lex(input: &str) -> Vec<Token> {
    let chars: Vec<char> = input.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let column = i + 1;
        let next = chars.get(i + 1).copied();
        let (kind, len) = match c {
            c if c.is_whitespace() => {
                i += 1;
                continue;
            }
            '=' if next == Some('=') => (Kind::DoubleEq, 2),
            '=' => (Kind::Eq, 1),
            '!' if next == Some('=') => (Kind::NotEq, 2),
            '!' => (Kind::Bang, 1),
            '(' => (Kind::Open, 1),
            ')' => (Kind::Close, 1),
            ',' => (Kind::Comma, 1),
            '<' | '>' => (Kind::Other(c), 1),
            _ => {
                let len = chars[i..]
                    .iter()
                    .take_while(|c| !c.is_whitespace() && !is_symbol(**c))
                    .count();
                (Kind::Word(chars[i..i + len].iter().collect()), len)
            }
        };
        tokens.push(Token { kind, column });
        i += len;
    }
    tokens.push(Token {
        kind: Kind::End,
        column: chars.len() + 1,
    });
    tokens
}

/// A token as the user typed it, for error messages.
fn shown(t: &Token) -> String {
    match &t.kind {
        Kind::Word(w) => format!("`{w}`"),
        Kind::Eq => "'='".into(),
        Kind::DoubleEq => "'=='".into(),
        Kind::NotEq => "'!='".into(),
        Kind::Bang => "'!'".into(),
        Kind::Open => "'('".into(),
        Kind::Close => "')'".into(),
        Kind::Comma => "','".into(),
        Kind::Other(c) => format!("'{c}' (not supported)"),
        Kind::End => "the end of the selector".into(),
    }
}

fn unexpected(expected: impl Into<String>, t: &Token) -> SelectorError {
    SelectorError::Unexpected {
        expected: expected.into(),
        column: t.column,
        found: shown(t),
    }
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> &Token {
        // `lex` always ends the list with `End`, which is never consumed past.
        &self.tokens[self.at.min(self.tokens.len() - 1)]
    }

    fn next(&mut self) -> Token {
        let t = self.peek().clone();
        if t.kind != Kind::End {
            self.at += 1;
        }
        t
    }

    fn requirement(&mut self) -> Result<Expression, SelectorError> {
        if self.peek().kind == Kind::Bang {
            self.next();
            let key = self.key("a label key after '!'")?;
            return match self.peek().kind {
                Kind::Comma | Kind::End => Ok(Expression::DoesNotExist(key)),
                _ => Err(unexpected(
                    format!("',' or the end after `!{key}`"),
                    self.peek(),
                )),
            };
        }
        let key = self.key("a label key or '!'")?;
        let op = self.peek().clone();
        match &op.kind {
            Kind::Comma | Kind::End => Ok(Expression::Exists(key)),
            Kind::Eq | Kind::DoubleEq => {
                self.next();
                Ok(Expression::Equal(key, self.value()?))
            }
            Kind::NotEq => {
                self.next();
                Ok(Expression::NotEqual(key, self.value()?))
            }
            Kind::Word(w) if w == "in" || w == "notin" => {
                self.next();
                let values = self.values(w)?;
                Ok(if w == "in" {
                    Expression::In(key, values)
                } else {
                    Expression::NotIn(key, values)
                })
            }
            _ => Err(unexpected(
                format!("'=', '==', '!=', 'in', 'notin', ',' or the end after key `{key}`"),
                &op,
            )),
        }
    }

    fn key(&mut self, expected: &str) -> Result<String, SelectorError> {
        let t = self.next();
        let Kind::Word(key) = t.kind else {
            return Err(unexpected(expected, &t));
        };
        protocol::labels::validate_label_key(&key).map_err(|violation| SelectorError::Key {
            key: key.clone(),
            column: t.column,
            violation,
        })?;
        Ok(key)
    }

    /// A value, empty when the next token ends it (`k=`, `k in (a,)`).
    fn value(&mut self) -> Result<String, SelectorError> {
        let t = self.peek().clone();
        let value = match t.kind {
            Kind::Word(w) => {
                self.next();
                w
            }
            Kind::Comma | Kind::Close | Kind::End => String::new(),
            _ => return Err(unexpected("a label value", &t)),
        };
        protocol::labels::validate_label_value(&value).map_err(|violation| {
            SelectorError::Value {
                value: value.clone(),
                column: t.column,
                violation,
            }
        })?;
        Ok(value)
    }

    /// `( VALUE, ... )` after `in` or `notin`.
    fn values(&mut self, op: &str) -> Result<BTreeSet<String>, SelectorError> {
        let t = self.next();
        if t.kind != Kind::Open {
            return Err(unexpected(format!("'(' after '{op}'"), &t));
        }
        let mut values = BTreeSet::new();
        loop {
            values.insert(self.value()?);
            let t = self.next();
            match t.kind {
                Kind::Comma => {}
                Kind::Close => return Ok(values),
                _ => return Err(unexpected("',' or ')' in the list of values", &t)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::SelectorExt;
    use std::collections::BTreeMap;

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn exprs(s: &str) -> Vec<Expression> {
        parse(s).unwrap().into_iter().collect()
    }

    fn err(s: &str) -> String {
        parse(s).unwrap_err().to_string()
    }

    #[test]
    fn every_operator() {
        assert_eq!(
            exprs("site=lyon, board==rpi4,env!=dev,a in (x, y),b notin (z),c,!d"),
            [
                Expression::Equal("site".into(), "lyon".into()),
                Expression::Equal("board".into(), "rpi4".into()),
                Expression::NotEqual("env".into(), "dev".into()),
                Expression::In("a".into(), set(&["x", "y"])),
                Expression::NotIn("b".into(), set(&["z"])),
                Expression::Exists("c".into()),
                Expression::DoesNotExist("d".into()),
            ]
        );
        assert_eq!(
            exprs("example.com/board in(rpi4)"),
            [Expression::In("example.com/board".into(), set(&["rpi4"]))]
        );
    }

    #[test]
    fn empty_values_and_selectors_as_kubernetes_reads_them() {
        assert!(parse("").unwrap().selects_all());
        assert!(parse("   ").unwrap().selects_all());
        assert_eq!(exprs("k="), [Expression::Equal("k".into(), "".into())]);
        assert_eq!(
            exprs("k in (a,)"),
            [Expression::In("k".into(), set(&["a", ""]))]
        );
    }

    #[test]
    fn the_parsed_selector_matches() {
        let labels: BTreeMap<String, String> = [("site", "lyon"), ("board", "rpi4")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for yes in [
            "site=lyon",
            "site in (lyon,paris)",
            "board,!gpu",
            "site notin (paris)",
            "gpu!=yes",
            "",
        ] {
            assert!(parse(yes).unwrap().matches(&labels), "{yes}");
        }
        for no in [
            "site=paris",
            "site notin (lyon)",
            "gpu",
            "!board",
            "site!=lyon",
        ] {
            assert!(!parse(no).unwrap().matches(&labels), "{no}");
        }
    }

    #[test]
    fn bad_input_names_the_column_and_what_was_expected() {
        assert_eq!(
            err("site in lyon"),
            "expected '(' after 'in' at column 9, found `lyon`"
        );
        assert_eq!(
            err("site notin (a b)"),
            "expected ',' or ')' in the list of values at column 15, found `b`"
        );
        assert_eq!(
            err("site in (a"),
            "expected ',' or ')' in the list of values at column 11, found the end of the selector"
        );
        assert_eq!(
            err("site lyon"),
            "expected '=', '==', '!=', 'in', 'notin', ',' or the end after key `site` at column 6, found `lyon`"
        );
        assert_eq!(
            err("a=b c=d"),
            "expected ',' or the end after `a=b` at column 5, found `c`"
        );
        assert_eq!(
            err("a=b,"),
            "expected a label key or '!' at column 5, found the end of the selector"
        );
        assert_eq!(
            err("=x"),
            "expected a label key or '!' at column 1, found '='"
        );
        assert_eq!(
            err("!a=b"),
            "expected ',' or the end after `!a` at column 3, found '='"
        );
        assert_eq!(
            err("! ,"),
            "expected a label key after '!' at column 3, found ','"
        );
        assert_eq!(
            err("a=(b)"),
            "expected a label value at column 3, found '('"
        );
        assert_eq!(
            err("n>3"),
            "expected '=', '==', '!=', 'in', 'notin', ',' or the end after key `n` at column 2, found '>' (not supported)"
        );
        // Columns count characters, not bytes.
        assert!(err("é=x").starts_with("label key `é` at column 1 must be a label key"));
        assert!(err("a=é,b=-x").starts_with("label value `é` at column 3 must be a label value"));
        assert!(err("a=x,b=-x").starts_with("label value `-x` at column 7 must be a label value"));
        assert!(matches!(
            parse(&format!("{}=x", "k".repeat(64))),
            Err(SelectorError::Key {
                violation: Violation::TooLong { limit: 63, .. },
                column: 1,
                ..
            })
        ));
        assert!(matches!(
            parse("a in (ok, b@d)"),
            Err(SelectorError::Value { column: 11, .. })
        ));
    }
}
