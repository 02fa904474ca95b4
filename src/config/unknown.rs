//! Unknown keys, found by serde itself.
//!
//! Every settings struct denies unknown fields, so serde's own error names the stray key and
//! the fields the struct *does* have (`unknown field `akc`, expected one of `ack`, …`): the
//! hint comes from the real schema, never from a hand-kept list. To report every stray key of
//! a file at once, each one is taken out of the document and deserialisation runs again
//! (a few microseconds each), until only real problems are left.

use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_path_to_error::Segment;

use crate::problem::Problems;

/// Most stray keys reported in one file (the loop ends sooner on anything else).
const MAX_UNKNOWN: usize = 256;

/// Deserialises `tree`, reporting every unknown key with a "did you mean" hint and the first
/// other error with its key path. `None` when anything but unknown keys is wrong; with only
/// stray keys the settings still come back (without them), so the builds can report more.
pub(super) fn deserialize<T: DeserializeOwned>(
    mut tree: Value,
    problems: &mut Problems,
) -> Option<T> {
    for _ in 0..MAX_UNKNOWN {
        let error = match serde_path_to_error::deserialize::<_, T>(&tree) {
            Ok(v) => return Some(v),
            Err(e) => e,
        };
        let mut segments: Vec<Segment> = error.path().iter().cloned().collect();
        let message = error.inner().to_string();
        if let Some((field, expected)) = unknown_field(&message) {
            // The path ends at the stray key itself; it lives in the object before it.
            if matches!(segments.last(), Some(Segment::Map { key }) if *key == field) {
                segments.pop();
            }
            let at = dotted(&segments);
            problems.push(
                join(&at, &field),
                format!("unknown key{}", hint(&field, &expected)),
            );
            // Taken out, so the next round finds the next stray key (or none).
            object_at(&mut tree, &segments).and_then(|o| o.remove(&field))?;
            continue;
        }
        let at = dotted(&segments);
        if let Some(missing) = quoted_after(&message, "missing field `") {
            // A required key spelt wrong is reported as that typo, not only as "missing"
            // (a tagged value such as `auth` checks its tag before any other key).
            let typo = object_at(&mut tree, &segments).and_then(|o| near_miss(o, &missing));
            match typo {
                Some(typo) => problems.push(
                    join(&at, &typo),
                    format!("unknown key; did you mean '{missing}'?"),
                ),
                None => problems.push(or_file(&at), message),
            }
            return None;
        }
        let hinted = match unknown_variant(&message) {
            Some((value, expected)) => format!("{message}{}", hint(&value, &expected)),
            None => message,
        };
        problems.push(or_file(&at), hinted);
        return None;
    }
    None
}

/// `server.listen`, `routes.0.topic`: keys joined by dots, indices as numbers.
fn dotted(segments: &[Segment]) -> String {
    let parts: Vec<String> = segments
        .iter()
        .filter_map(|s| match s {
            Segment::Map { key } => Some(key.clone()),
            Segment::Seq { index } => Some(index.to_string()),
            Segment::Enum { .. } | Segment::Unknown => None,
        })
        .collect();
    parts.join(".")
}

fn join(at: &str, key: &str) -> String {
    if at.is_empty() {
        key.to_string()
    } else {
        format!("{at}.{key}")
    }
}

fn or_file(at: &str) -> String {
    if at.is_empty() {
        "file".into()
    } else {
        at.to_string()
    }
}

/// The object the error's path leads to.
fn object_at<'v>(
    tree: &'v mut Value,
    segments: &[Segment],
) -> Option<&'v mut serde_json::Map<String, Value>> {
    let mut node = tree;
    for s in segments {
        node = match s {
            Segment::Map { key } => node.get_mut(key.as_str())?,
            Segment::Seq { index } => node.get_mut(*index)?,
            Segment::Enum { .. } | Segment::Unknown => node,
        };
    }
    node.as_object_mut()
}

/// serde's "unknown field `x`, expected one of `a`, `b`" (or "expected `a`", "expected `a`
/// or `b`", "there are no fields"): the field and what the struct expects.
fn unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    split_expected(message.strip_prefix("unknown field `")?)
}

/// serde's "unknown variant `x`, expected one of `a`, `b`".
fn unknown_variant(message: &str) -> Option<(String, Vec<String>)> {
    split_expected(message.strip_prefix("unknown variant `")?)
}

fn split_expected(rest: &str) -> Option<(String, Vec<String>)> {
    let (name, expected) = match rest.rfind("`, expected ") {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest.strip_suffix("`, there are no fields")?, ""),
    };
    let expected = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    Some((name.to_string(), expected))
}

fn quoted_after(message: &str, prefix: &str) -> Option<String> {
    let rest = message.strip_prefix(prefix)?;
    Some(rest[..rest.find('`')?].to_string())
}

/// A key of `object` that looks like a typo of `wanted`.
fn near_miss(object: &serde_json::Map<String, Value>, wanted: &str) -> Option<String> {
    let wanted = [wanted.to_string()];
    object
        .keys()
        .find(|k| closest(k, &wanted).is_some())
        .cloned()
}

/// `; did you mean 'x'?` for the closest of `candidates`, or nothing when none is close.
fn hint(word: &str, candidates: &[String]) -> String {
    closest(word, candidates)
        .map(|k| format!("; did you mean '{k}'?"))
        .unwrap_or_default()
}

/// The candidate nearest to `word` (fewest edits, then most alike), if any is near: a typo
/// (at most two edits) or a shared start (Jaro-Winkler ≥ 0.85).
fn closest<'c>(word: &str, candidates: &'c [String]) -> Option<&'c str> {
    candidates
        .iter()
        .map(|k| {
            let lev = strsim::levenshtein(k, word);
            let jw = strsim::jaro_winkler(k, word);
            (lev, jw, k.as_str())
        })
        .filter(|(lev, jw, _)| *lev <= 2 || *jw >= 0.85)
        .min_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)))
        .map(|(_, _, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_are_read() {
        let (f, e) =
            unknown_field("unknown field `akc`, expected one of `ack`, `publish_timeout`").unwrap();
        assert_eq!((f.as_str(), e.len()), ("akc", 2));
        let (f, e) = unknown_field("unknown field `x`, expected `header` or `secrets`").unwrap();
        assert_eq!(
            (f.as_str(), e),
            ("x", vec!["header".into(), "secrets".into()])
        );
        let (f, e) = unknown_field("unknown field `x`, there are no fields").unwrap();
        assert_eq!((f.as_str(), e.len()), ("x", 0));
        assert_eq!(
            quoted_after("missing field `type`", "missing field `").as_deref(),
            Some("type")
        );
    }

    #[test]
    fn hints_pick_the_nearest_key() {
        let keys: Vec<String> = ["max_body_bytes", "max_header_bytes", "listen"]
            .map(String::from)
            .to_vec();
        assert_eq!(closest("max_header_byte", &keys), Some("max_header_bytes"));
        assert_eq!(closest("lsten", &keys), Some("listen"));
        assert_eq!(closest("completely_else", &keys), None);
    }
}
