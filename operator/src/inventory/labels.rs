//! The label rule: `metadata.labels` are the targeting labels; the board's
//! own labels (its agent configuration's `[labels]`, sent in each
//! heartbeat) are merged in, and an administrator's win.
//!
//! The annotation [`BOARD_LABELS_ANNOTATION`] records the board labels the
//! operator last merged, i.e. the labels the board owns. A board label is
//! set when its key is absent from `metadata.labels`, or present with the
//! value the annotation says the board gave (board-owned); a board-owned
//! label the board no longer declares is removed. A key set or changed by
//! anyone else is left alone. Consequences: an administrator overrides a
//! board label by setting another value; removing a board label does not
//! stick (the board sets it again) unless the board stops declaring it.

use std::collections::BTreeMap;

use protocol::Heartbeat;
use protocol::labels::{validate_label_key, validate_label_value};

pub use crate::crd::device::BOARD_LABELS_ANNOTATION;

/// Labels by key.
pub type Labels = BTreeMap<String, String>;

/// A board label the operator drops because Kubernetes would refuse it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct InvalidLabel {
    /// The key as the board sent it.
    pub key: String,
    /// The value as the board sent it.
    pub value: String,
    /// Why it is refused.
    pub reason: String,
}

/// The board's labels from `heartbeat`, split into those Kubernetes
/// accepts and those it would refuse (each judged alone: one bad label
/// does not drop the others).
pub fn board_labels(heartbeat: &Heartbeat<'_>) -> (Labels, Vec<InvalidLabel>) {
    let mut valid = Labels::new();
    let mut invalid = Vec::new();
    for (k, v) in heartbeat.labels.iter() {
        let (key, value) = (k.as_str(), v.as_str());
        let check = validate_label_key(key)
            .map_err(|e| format!("key: {e}"))
            .and_then(|()| validate_label_value(value).map_err(|e| format!("value: {e}")));
        match check {
            Ok(()) => {
                valid.insert(key.to_string(), value.to_string());
            }
            Err(reason) => invalid.push(InvalidLabel {
                key: key.to_string(),
                value: value.to_string(),
                reason,
            }),
        }
    }
    (valid, invalid)
}

/// The board labels recorded in the annotation's value; an unreadable
/// annotation (edited by hand) counts as none recorded, so that nothing
/// is taken for board-owned.
pub fn recorded(annotation: Option<&str>) -> Labels {
    annotation
        .and_then(|a| serde_json::from_str(a).ok())
        .unwrap_or_default()
}

/// The annotation's value for `owned`.
pub fn annotation_value(owned: &Labels) -> String {
    serde_json::to_string(owned).unwrap_or_else(|_| "{}".into())
}

/// The result of [`merge`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Merged {
    /// The object's labels after the merge.
    pub labels: Labels,
    /// The board labels it now holds as the board's: the annotation's new
    /// value.
    pub owned: Labels,
}

/// Merges `board` (valid labels only) into the object's `current` labels,
/// given the board labels `last` merged (the annotation).
pub fn merge(current: &Labels, last: &Labels, board: &Labels) -> Merged {
    let board_owned = |k: &str| current.get(k).is_some_and(|v| last.get(k) == Some(v));
    let mut labels = current.clone();
    for key in last.keys() {
        if !board.contains_key(key) && board_owned(key) {
            labels.remove(key);
        }
    }
    let mut owned = Labels::new();
    for (key, value) in board {
        if !current.contains_key(key) || board_owned(key) {
            labels.insert(key.clone(), value.clone());
            owned.insert(key.clone(), value.clone());
        }
    }
    Merged { labels, owned }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Text;

    fn l(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn board_labels_fill_absent_keys() {
        let m = merge(&l(&[]), &l(&[]), &l(&[("board", "rpi4"), ("site", "lyon")]));
        assert_eq!(m.labels, l(&[("board", "rpi4"), ("site", "lyon")]));
        assert_eq!(m.owned, m.labels);
    }

    #[test]
    fn an_administrators_value_wins() {
        // The admin set site=paris before the board said lyon.
        let m = merge(&l(&[("site", "paris")]), &l(&[]), &l(&[("site", "lyon")]));
        assert_eq!(m.labels, l(&[("site", "paris")]));
        assert!(m.owned.is_empty());
        // The admin changed a board-owned label: it is theirs now.
        let m = merge(
            &l(&[("site", "paris")]),
            &l(&[("site", "lyon")]),
            &l(&[("site", "nice")]),
        );
        assert_eq!(m.labels, l(&[("site", "paris")]));
        assert!(m.owned.is_empty());
        // An admin label the board never declared is kept.
        let m = merge(&l(&[("team", "ops")]), &l(&[]), &l(&[]));
        assert_eq!(m.labels, l(&[("team", "ops")]));
    }

    #[test]
    fn the_board_changes_and_drops_its_own_labels() {
        let m = merge(
            &l(&[("site", "lyon"), ("board", "rpi4"), ("team", "ops")]),
            &l(&[("site", "lyon"), ("board", "rpi4")]),
            &l(&[("site", "nice")]),
        );
        assert_eq!(m.labels, l(&[("site", "nice"), ("team", "ops")]));
        assert_eq!(m.owned, l(&[("site", "nice")]));
    }

    #[test]
    fn a_board_owned_label_an_admin_changed_is_not_removed() {
        let m = merge(&l(&[("site", "paris")]), &l(&[("site", "lyon")]), &l(&[]));
        assert_eq!(m.labels, l(&[("site", "paris")]));
    }

    #[test]
    fn an_admin_removing_the_label_gives_the_board_its_value_back() {
        let m = merge(&l(&[]), &l(&[("site", "lyon")]), &l(&[("site", "lyon")]));
        assert_eq!(m.labels, l(&[("site", "lyon")]));
    }

    #[test]
    fn merging_twice_changes_nothing() {
        let current = l(&[("site", "paris"), ("x", "1")]);
        let board = l(&[("site", "lyon"), ("board", "rpi4")]);
        let once = merge(&current, &l(&[]), &board);
        let twice = merge(&once.labels, &once.owned, &board);
        assert_eq!(once, twice);
    }

    #[test]
    fn invalid_board_labels_are_dropped_one_by_one() {
        let mut hb = Heartbeat::default();
        for (k, v) in [
            ("board", "rpi4"),
            ("Bad Key", "x"),
            ("site", "not valid!"),
            ("example.com/zone", "a"),
        ] {
            hb.labels
                .insert(Text::borrowed(k), Text::borrowed(v))
                .unwrap();
        }
        let (valid, invalid) = board_labels(&hb);
        assert_eq!(valid, l(&[("board", "rpi4"), ("example.com/zone", "a")]));
        let keys: Vec<&str> = invalid.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(keys, ["Bad Key", "site"]);
        assert!(invalid[1].reason.starts_with("value"), "{:?}", invalid[1]);
    }

    #[test]
    fn an_unreadable_annotation_records_nothing() {
        assert!(recorded(Some("not json")).is_empty());
        assert!(recorded(None).is_empty());
        let owned = l(&[("site", "lyon")]);
        assert_eq!(recorded(Some(&annotation_value(&owned))), owned);
    }
}
