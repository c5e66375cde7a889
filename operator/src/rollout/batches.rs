//! `spec.rollout` of a BatchSequence rollout, checked ([`RolloutSpec::new`]),
//! and the split of the targets into batches ([`RolloutSpec::split`]).

use std::collections::BTreeSet;

use crate::apply::PlanError;
use crate::crd::{IntOrString, MAX_BATCHES, Rollout};
use crate::targeting::TargetSelector;

/// A count of devices, as `limit` and `maxUnavailable` give it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// This many devices.
    Devices(u32),
    /// This percentage (1 to 100) of the targets.
    Percent(u32),
}

impl Count {
    /// Reads `value` of `field`, refusing 0, negative counts and
    /// percentages outside 1% to 100% (the CRD's CEL rule does the same).
    pub fn parse(field: &str, value: &IntOrString) -> Result<Count, PlanError> {
        let refuse = |reason: String| PlanError::InvalidRolloutField {
            field: field.to_string(),
            reason,
        };
        match value {
            IntOrString::Int(n) if *n >= 1 => Ok(Count::Devices(*n as u32)),
            IntOrString::Int(n) => Err(refuse(format!(
                "{n} is not allowed; give a count of at least 1 or a percentage such as \"25%\""
            ))),
            IntOrString::String(s) => {
                let pct = s
                    .strip_suffix('%')
                    .and_then(|p| p.parse::<u32>().ok())
                    .filter(|p| (1..=100).contains(p));
                pct.map(Count::Percent).ok_or_else(|| {
                    refuse(format!(
                        "`{s}` is not a percentage from 1% to 100% (e.g. \"25%\") nor a count (write a count without quotes)"
                    ))
                })
            }
        }
    }

    /// The number of devices out of `total`, rounding a percentage up
    /// (`up`) or down, never below 1.
    pub fn of(self, total: usize, up: bool) -> usize {
        let n = match self {
            Count::Devices(n) => n as usize,
            Count::Percent(p) => {
                let scaled = total * p as usize;
                if up {
                    scaled.div_ceil(100)
                } else {
                    scaled / 100
                }
            }
        };
        n.max(1)
    }
}

/// One batch, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchSpec {
    /// Which targets it may take; `None`: any.
    pub selector: Option<TargetSelector>,
    /// At most this many.
    pub limit: Option<Count>,
    /// Percent of its devices that must be Healthy.
    pub success_threshold: u32,
}

/// A BatchSequence rollout's settings, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutSpec {
    /// The explicit batches (the implicit last one is added by [`Self::split`]).
    pub batches: Vec<BatchSpec>,
    /// The implicit last batch's threshold (the rollout's).
    pub success_threshold: u32,
    /// At most this many targets between written and Healthy.
    pub max_unavailable: Option<Count>,
}

impl RolloutSpec {
    /// Checks `rollout`'s BatchSequence fields, naming the field at fault.
    pub fn new(rollout: &Rollout) -> Result<RolloutSpec, PlanError> {
        let threshold = |field: String, v: u32| {
            if (1..=100).contains(&v) {
                Ok(v)
            } else {
                Err(PlanError::InvalidRolloutField {
                    field,
                    reason: format!("{v} is not a percentage from 1 to 100"),
                })
            }
        };
        if rollout.batches.len() > MAX_BATCHES {
            return Err(PlanError::InvalidRolloutField {
                field: "batches".into(),
                reason: format!(
                    "{} batches; at most {MAX_BATCHES} are allowed",
                    rollout.batches.len()
                ),
            });
        }
        let success_threshold = threshold("successThreshold".into(), rollout.success_threshold)?;
        let max_unavailable = rollout
            .max_unavailable
            .as_ref()
            .map(|v| Count::parse("maxUnavailable", v))
            .transpose()?;
        let mut batches = Vec::with_capacity(rollout.batches.len());
        for (i, b) in rollout.batches.iter().enumerate() {
            let selector = b
                .selector
                .as_ref()
                .map(TargetSelector::new)
                .transpose()
                .map_err(|e| PlanError::InvalidRolloutField {
                    field: format!("batches[{i}].selector.{}", e.field),
                    reason: e.reason,
                })?;
            let limit = b
                .limit
                .as_ref()
                .map(|v| Count::parse(&format!("batches[{i}].limit"), v))
                .transpose()?;
            let success_threshold = match b.success_threshold {
                Some(v) => threshold(format!("batches[{i}].successThreshold"), v)?,
                None => success_threshold,
            };
            batches.push(BatchSpec {
                selector,
                limit,
                success_threshold,
            });
        }
        Ok(RolloutSpec {
            batches,
            success_threshold,
            max_unavailable,
        })
    }

    /// The number of batches, the implicit last one included.
    pub fn len(&self) -> usize {
        self.batches.len() + 1
    }

    /// Always false: there is at least the implicit last batch.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The threshold of batch `i`.
    pub fn threshold(&self, i: usize) -> u32 {
        self.batches
            .get(i)
            .map_or(self.success_threshold, |b| b.success_threshold)
    }

    /// Splits `targets` (sorted) into [`Self::len`] batches: each explicit
    /// batch takes, from the targets no earlier batch took, those its
    /// selector matches (`select` gives the Devices a selector matches), in
    /// id order, at most its limit; the last takes the rest. Also returns
    /// warnings naming the field, for batches that take nothing or whose
    /// limit is more than they could take. Within a batch's matching
    /// targets, those `first` says (the ones written already) come before
    /// the others, so that a newcomer does not push them out of it.
    pub fn split(
        &self,
        targets: &[String],
        select: impl Fn(&TargetSelector) -> Vec<String>,
        first: impl Fn(&str) -> bool,
    ) -> (Vec<Vec<String>>, Vec<String>) {
        let mut left: BTreeSet<&str> = targets.iter().map(String::as_str).collect();
        let mut out = Vec::with_capacity(self.len());
        let mut warnings = Vec::new();
        for (i, b) in self.batches.iter().enumerate() {
            let mut matching: Vec<&str> = match &b.selector {
                Some(s) => {
                    let selected: BTreeSet<String> = select(s).into_iter().collect();
                    left.iter()
                        .copied()
                        .filter(|t| selected.contains(*t))
                        .collect()
                }
                None => left.iter().copied().collect(),
            };
            // Stable: id order within each group.
            matching.sort_by_key(|t| !first(t));
            let limit = b.limit.map(|l| l.of(targets.len(), true));
            if matching.is_empty() {
                warnings.push(format!(
                    "spec.rollout.batches[{i}] takes no target (its selector matches none of the targets left); it is skipped"
                ));
            } else if let Some(Count::Devices(n)) = b.limit
                && n as usize > matching.len()
            {
                warnings.push(format!(
                    "spec.rollout.batches[{i}].limit is {n} but only {} targets are left for it",
                    matching.len()
                ));
            }
            let taken: Vec<String> = matching
                .into_iter()
                .take(limit.unwrap_or(usize::MAX))
                .map(str::to_string)
                .collect();
            for t in &taken {
                left.remove(t.as_str());
            }
            out.push(taken);
        }
        out.push(left.into_iter().map(str::to_string).collect());
        (out, warnings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::Batch;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn counts_parse_and_round() {
        let p = |v: IntOrString| Count::parse("maxUnavailable", &v);
        assert_eq!(p(IntOrString::Int(2)), Ok(Count::Devices(2)));
        assert_eq!(p(IntOrString::String("25%".into())), Ok(Count::Percent(25)));
        for bad in [
            IntOrString::Int(0),
            IntOrString::Int(-1),
            IntOrString::String("101%".into()),
            IntOrString::String("0%".into()),
            IntOrString::String("2".into()),
        ] {
            let e = p(bad.clone()).unwrap_err().to_string();
            assert!(
                e.starts_with("spec.rollout.maxUnavailable: "),
                "{bad:?}: {e}"
            );
        }
        assert_eq!(Count::Percent(25).of(10, false), 2);
        assert_eq!(Count::Percent(25).of(10, true), 3);
        assert_eq!(Count::Percent(1).of(10, false), 1, "floor 1");
    }

    #[test]
    fn batches_take_by_selector_then_limit_and_the_last_takes_the_rest() {
        let rollout = Rollout {
            batches: vec![
                Batch {
                    selector: Some(
                        serde_json::from_value(
                            serde_json::json!({"matchLabels": {"stage": "canary"}}),
                        )
                        .unwrap(),
                    ),
                    limit: Some(IntOrString::Int(2)),
                    success_threshold: Some(50),
                },
                Batch {
                    selector: None,
                    limit: Some(IntOrString::String("20%".into())),
                    success_threshold: None,
                },
            ],
            ..Rollout::default()
        };
        let spec = RolloutSpec::new(&rollout).unwrap();
        let targets = ids(&["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]);
        let canaries = ids(&["c", "e", "g", "zz"]);
        let (batches, warnings) = spec.split(&targets, |_| canaries.clone(), |_| false);
        assert_eq!(
            batches,
            vec![
                ids(&["c", "e"]),
                ids(&["a", "b"]),
                ids(&["d", "f", "g", "h", "i", "j"])
            ]
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(spec.threshold(0), 50);
        assert_eq!(spec.threshold(1), 100);
        assert_eq!(spec.threshold(2), 100);
        let (_, warnings) = spec.split(&targets, |_| Vec::new(), |_| false);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("batches[0]"), "{warnings:?}");
    }

    #[test]
    fn devices_written_already_keep_their_batch() {
        let rollout = Rollout {
            batches: vec![Batch {
                limit: Some(IntOrString::Int(2)),
                ..Batch::default()
            }],
            ..Rollout::default()
        };
        let spec = RolloutSpec::new(&rollout).unwrap();
        // c1 joined after c2 and c3 were written.
        let targets = ids(&["c1", "c2", "c3", "c4"]);
        let (batches, _) = spec.split(&targets, |_| Vec::new(), |t| t == "c2" || t == "c3");
        assert_eq!(batches, vec![ids(&["c2", "c3"]), ids(&["c1", "c4"])]);
    }

    #[test]
    fn bad_fields_are_named() {
        let rollout = Rollout {
            batches: vec![Batch {
                success_threshold: Some(0),
                ..Batch::default()
            }],
            ..Rollout::default()
        };
        let e = RolloutSpec::new(&rollout).unwrap_err().to_string();
        assert!(
            e.starts_with("spec.rollout.batches[0].successThreshold: 0"),
            "{e}"
        );
    }
}
