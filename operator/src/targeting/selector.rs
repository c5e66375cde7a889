//! A Deployment's `spec.targetSelector`, checked as the API server checks a
//! label selector and compiled for matching (kube's [`Selector`]).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Selector, SelectorExt};

use crate::crd::MAX_SELECTOR_TERMS;

/// A Device's labels.
pub type Labels = BTreeMap<String, String>;

const OPERATORS: [&str; 4] = ["In", "NotIn", "Exists", "DoesNotExist"];

/// Why a selector is refused: the field inside `spec.targetSelector` and
/// what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("spec.targetSelector.{field}: {reason}")]
pub struct SelectorError {
    /// Path inside the selector, e.g. `matchExpressions[0].operator`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub reason: String,
}

fn refuse(field: impl Into<String>, reason: impl Into<String>) -> SelectorError {
    SelectorError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A checked selector, ready to match labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSelector {
    selector: Selector,
    /// Labels every selected Device has: each `matchLabels` pair, then
    /// each `In` requirement, then each `Exists` one (values `None`: any).
    /// The index looks up only the Devices that carry one of them. Empty
    /// when the selector has none of these.
    anchors: Vec<(String, Option<Vec<String>>)>,
}

/// A label every Device a selector selects carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor<'a> {
    /// The key, with one of these values.
    Values(&'a str, &'a [String]),
    /// The key, with any value.
    Key(&'a str),
}

impl TargetSelector {
    /// Checks `selector` (operators, values, label syntax, bounds) and
    /// compiles it.
    pub fn new(selector: &LabelSelector) -> Result<TargetSelector, SelectorError> {
        check(selector)?;
        let compiled =
            Selector::try_from(selector.clone()).map_err(|e| refuse("matchExpressions", e.0))?;
        let exprs = selector.match_expressions.iter().flatten();
        let anchors = (selector.match_labels.iter().flatten())
            .map(|(k, v)| (k.clone(), Some(vec![v.clone()])))
            .chain(
                exprs
                    .clone()
                    .filter(|e| e.operator == "In")
                    .map(|e| (e.key.clone(), Some(e.values.clone().unwrap_or_default()))),
            )
            .chain(
                exprs
                    .filter(|e| e.operator == "Exists")
                    .map(|e| (e.key.clone(), None)),
            )
            .collect();
        Ok(TargetSelector {
            selector: compiled,
            anchors,
        })
    }

    /// Whether a Device with `labels` is selected.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.selector.matches(labels)
    }

    /// A label every selected Device carries, when the selector names one.
    pub fn anchor(&self) -> Option<Anchor<'_>> {
        self.anchors().next()
    }

    /// Every label every selected Device carries (the index resolves
    /// through the one fewest Devices carry).
    pub fn anchors(&self) -> impl Iterator<Item = Anchor<'_>> {
        self.anchors.iter().map(|(k, v)| match v {
            Some(values) => Anchor::Values(k.as_str(), values.as_slice()),
            None => Anchor::Key(k.as_str()),
        })
    }
}

/// The `kubectl -l` form, e.g. `site=lyon,board in (rpi4,rpi5)`.
impl std::fmt::Display for TargetSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.selector.selects_all() {
            f.write_str("(every Device)")
        } else {
            self.selector.fmt(f)
        }
    }
}

fn check(selector: &LabelSelector) -> Result<(), SelectorError> {
    let labels = selector.match_labels.as_ref();
    if labels.is_some_and(|m| m.len() > MAX_SELECTOR_TERMS) {
        return Err(refuse(
            "matchLabels",
            format!("at most {MAX_SELECTOR_TERMS} labels are allowed"),
        ));
    }
    for (key, value) in labels.into_iter().flatten() {
        let field = format!("matchLabels[{key:?}]");
        check_key(key).map_err(|reason| refuse(&field, format!("key {reason}")))?;
        check_value(value).map_err(|reason| refuse(&field, format!("value {value:?} {reason}")))?;
    }
    let expressions = selector.match_expressions.as_deref().unwrap_or_default();
    if expressions.len() > MAX_SELECTOR_TERMS {
        return Err(refuse(
            "matchExpressions",
            format!("at most {MAX_SELECTOR_TERMS} requirements are allowed"),
        ));
    }
    for (i, e) in expressions.iter().enumerate() {
        let at = |f: &str| format!("matchExpressions[{i}].{f}");
        check_key(&e.key).map_err(|reason| refuse(at("key"), format!("{:?} {reason}", e.key)))?;
        let op = e.operator.as_str();
        if !OPERATORS.contains(&op) {
            let hint = OPERATORS
                .iter()
                .find(|o| o.eq_ignore_ascii_case(op))
                .map(|o| format!("did you mean {o}? "))
                .unwrap_or_default();
            return Err(refuse(
                at("operator"),
                format!(
                    "{op:?} is not an operator; {hint}use one of In, NotIn, Exists, DoesNotExist"
                ),
            ));
        }
        let values = e.values.as_deref().unwrap_or_default();
        let wants_values = matches!(op, "In" | "NotIn");
        if wants_values && values.is_empty() {
            return Err(refuse(
                at("values"),
                format!(
                    "operator {op} needs at least one value (use Exists to require only the key)"
                ),
            ));
        }
        if !wants_values && !values.is_empty() {
            return Err(refuse(
                at("values"),
                format!(
                    "operator {op} takes no values; remove values, or use In/NotIn to compare them"
                ),
            ));
        }
        if values.len() > MAX_SELECTOR_TERMS {
            return Err(refuse(
                at("values"),
                format!("at most {MAX_SELECTOR_TERMS} values are allowed"),
            ));
        }
        for (j, v) in values.iter().enumerate() {
            check_value(v)
                .map_err(|reason| refuse(at(&format!("values[{j}]")), format!("{v:?} {reason}")))?;
        }
    }
    Ok(())
}

/// A Kubernetes label key (`IsQualifiedName`): `[prefix/]name`.
fn check_key(key: &str) -> Result<(), String> {
    protocol::labels::validate_qualified_name(key).map_err(|e| e.to_string())
}

fn check_value(value: &str) -> Result<(), String> {
    protocol::labels::validate_label_value(value).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn req(key: &str, op: &str, values: Option<&[&str]>) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: values.map(|v| v.iter().map(|s| s.to_string()).collect()),
        }
    }

    fn sel(m: &[(&str, &str)], e: Vec<LabelSelectorRequirement>) -> LabelSelector {
        LabelSelector {
            match_labels: (!m.is_empty()).then(|| labels(m)),
            match_expressions: (!e.is_empty()).then_some(e),
        }
    }

    #[test]
    fn matches_labels_and_expressions() {
        let s = TargetSelector::new(&sel(
            &[("site", "lyon")],
            vec![
                req("board", "In", Some(&["rpi4", "rpi5"])),
                req("retired", "DoesNotExist", None),
                req("tier", "NotIn", Some(&["test"])),
                req("example.com/owner", "Exists", None),
            ],
        ))
        .unwrap();
        let ok = labels(&[
            ("site", "lyon"),
            ("board", "rpi4"),
            ("example.com/owner", "ops"),
        ]);
        assert!(s.matches(&ok));
        let mut l = ok.clone();
        l.insert("retired".into(), "".into());
        assert!(!s.matches(&l));
        let mut l = ok.clone();
        l.insert("tier".into(), "test".into());
        assert!(!s.matches(&l));
        let mut l = ok.clone();
        l.insert("board".into(), "rpi3".into());
        assert!(!s.matches(&l));
        assert_eq!(
            s.anchor(),
            Some(Anchor::Values("site", &["lyon".to_string()][..]))
        );
        let only_in = TargetSelector::new(&sel(
            &[],
            vec![
                req("x", "Exists", None),
                req("board", "In", Some(&["a", "b"])),
            ],
        ))
        .unwrap();
        let ab = ["a".to_string(), "b".to_string()];
        assert_eq!(only_in.anchor(), Some(Anchor::Values("board", &ab[..])));
        assert_eq!(
            only_in.anchors().collect::<Vec<_>>(),
            [Anchor::Values("board", &ab[..]), Anchor::Key("x")]
        );
        let exists = TargetSelector::new(&sel(
            &[],
            vec![
                req("x", "NotIn", Some(&["a"])),
                req("board", "Exists", None),
            ],
        ))
        .unwrap();
        assert_eq!(exists.anchor(), Some(Anchor::Key("board")));
        let not_in = TargetSelector::new(&sel(&[], vec![req("x", "NotIn", Some(&["a"]))])).unwrap();
        assert_eq!(not_in.anchor(), None);
        let all = TargetSelector::new(&LabelSelector::default()).unwrap();
        assert!(
            all.matches(&Labels::new()),
            "an empty selector selects every Device"
        );
        assert_eq!(all.to_string(), "(every Device)");
    }

    #[test]
    fn refuses_bad_selectors_naming_the_field() {
        let e = |s: LabelSelector| TargetSelector::new(&s).unwrap_err().to_string();
        let got = e(sel(&[], vec![req("site", "Equals", Some(&["x"]))]));
        assert!(
            got.starts_with("spec.targetSelector.matchExpressions[0].operator: \"Equals\" is not an operator; use one of In, NotIn"),
            "{got}"
        );
        let got = e(sel(&[], vec![req("site", "in", Some(&["x"]))]));
        assert!(got.contains("did you mean In?"), "{got}");
        let got = e(sel(
            &[],
            vec![
                req("a", "Exists", None),
                req("site", "Exists", Some(&["x"])),
            ],
        ));
        assert!(
            got.starts_with(
                "spec.targetSelector.matchExpressions[1].values: operator Exists takes no values"
            ),
            "{got}"
        );
        let got = e(sel(&[], vec![req("site", "In", Some(&[]))]));
        assert!(
            got.contains("matchExpressions[0].values: operator In needs at least one value"),
            "{got}"
        );
        let got = e(sel(&[], vec![req("site", "NotIn", None)]));
        assert!(
            got.contains("operator NotIn needs at least one value"),
            "{got}"
        );
        let got = e(sel(&[], vec![req("Bad Key", "Exists", None)]));
        assert!(
            got.starts_with(
                "spec.targetSelector.matchExpressions[0].key: \"Bad Key\" must be a label key"
            ),
            "{got}"
        );
        let got = e(sel(&[], vec![req("site", "In", Some(&["ok", "-no"]))]));
        assert!(
            got.starts_with(
                "spec.targetSelector.matchExpressions[0].values[1]: \"-no\" must be a label value"
            ),
            "{got}"
        );
        let got = e(sel(&[("site", "lyon!")], vec![]));
        assert!(
            got.starts_with("spec.targetSelector.matchLabels[\"site\"]: value \"lyon!\""),
            "{got}"
        );
        let got = e(sel(&[("Example.com/site", "x")], vec![]));
        assert!(got.contains("key must be a label key"), "{got}");
        assert!(TargetSelector::new(&sel(&[("example.com/site", "")], vec![])).is_ok());
        let long = "a".repeat(64);
        assert!(TargetSelector::new(&sel(&[(long.as_str(), "x")], vec![])).is_err());
        let many: Vec<LabelSelectorRequirement> = (0..=MAX_SELECTOR_TERMS)
            .map(|_| req("a", "Exists", None))
            .collect();
        assert!(e(sel(&[], many)).contains("at most"));
    }

    #[test]
    fn keys_follow_kubernetes() {
        for ok in ["site", "a.b_c-d", "example.com/site", "x/y", "A9"] {
            assert!(check_key(ok).is_ok(), "{ok}");
        }
        let long_prefix = format!("{}.io/site", "a".repeat(252));
        for bad in [
            "",
            "/site",
            "site/",
            "a/b/c",
            "-a",
            "UPPER.com/x",
            "a b",
            &long_prefix,
        ] {
            assert!(check_key(bad).is_err(), "{bad}");
        }
    }
}
