//! Problems found while turning settings into running parts, each with the key it concerns.
//!
//! Every component builds its own part from its own settings and reports what is wrong into
//! one [`Problems`] list, so `check-config` (and start-up) can say *everything* that is wrong
//! with a file at once, each line naming the key to fix.

use std::fmt;

/// One thing wrong with a configuration, with the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// The problems collected while building, in the order found.
#[derive(Debug, Default)]
pub(crate) struct Problems(Vec<Problem>);

impl Problems {
    /// Records that `key` is wrong, and why.
    pub(crate) fn push(&mut self, key: impl Into<String>, message: impl fmt::Display) {
        self.0.push(Problem {
            key: key.into(),
            message: message.to_string(),
        });
    }

    /// The value of `result`, or `None` with its error (and the error's causes) recorded
    /// under `key`.
    pub(crate) fn check<T, E: std::error::Error>(
        &mut self,
        key: impl Into<String>,
        result: Result<T, E>,
    ) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.push(key, with_causes(&e));
                None
            }
        }
    }

    /// Records `message` under `key` unless `ok` holds.
    pub(crate) fn require(&mut self, ok: bool, key: impl Into<String>, message: impl fmt::Display) {
        if !ok {
            self.push(key, message);
        }
    }

    /// Where the list stands now, to ask later whether anything was added since.
    pub(crate) fn mark(&self) -> usize {
        self.0.len()
    }

    /// Whether no problem was recorded since `mark`: a part is built only from clean settings.
    pub(crate) fn none_since(&self, mark: usize) -> bool {
        self.0.len() == mark
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn into_vec(self) -> Vec<Problem> {
        self.0
    }
}

/// An error and its chain of causes on one line: `cannot read x: No such file or directory`.
pub(crate) fn with_causes(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}
