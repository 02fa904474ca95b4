//! Secrets in the configuration: a literal, `env:NAME` or `file:/path`.
//!
//! A [`Secret`] never prints its value: `Debug` and `Display` show only where it comes from,
//! so a secret can't leak through a log line, a panic message or `check-config` output.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// Why a secret's value could not be read; names where it comes from, never the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
    #[error("cannot read secret file {path}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("secret from {0} is empty")]
    Empty(String),
}

pub use secrecy::{ExposeSecret, SecretSlice};

/// Where a secret's value comes from, as written in the config.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    spec: String,
}

impl Secret {
    pub fn literal(value: impl Into<String>) -> Self {
        Self { spec: value.into() }
    }

    /// Where the value comes from, safe to print (`env:EDUZZ_SECRET`, `file:/run/…`, `literal`).
    pub(crate) fn origin(&self) -> String {
        if self.spec.starts_with("env:") || self.spec.starts_with("file:") {
            self.spec.clone()
        } else {
            "literal".into()
        }
    }

    /// Reads the value now; the error names the origin, never the value. The value comes back
    /// in a [`SecretSlice`]: it cannot be printed by mistake and is zeroed when dropped.
    pub(crate) fn resolve(&self) -> Result<SecretSlice<u8>, SecretError> {
        let value = if let Some(name) = self.spec.strip_prefix("env:") {
            std::env::var(name).map_err(|_| SecretError::MissingEnv(name.to_string()))?
        } else if let Some(path) = self.spec.strip_prefix("file:") {
            std::fs::read_to_string(path)
                .map_err(|source| SecretError::File {
                    path: path.to_string(),
                    source,
                })?
                .trim_end_matches(['\n', '\r'])
                .to_string()
        } else {
            self.spec.clone()
        };
        if value.is_empty() {
            return Err(SecretError::Empty(self.origin()));
        }
        Ok(value.into_bytes().into())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.origin())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.origin())
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Secret {
            spec: String::deserialize(d)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::literal("hunter2");
        assert!(!format!("{s:?} {s}").contains("hunter2"));
        assert_eq!(s.resolve().unwrap().expose_secret(), b"hunter2");
    }

    #[test]
    fn env_and_file_secrets_resolve() {
        // A variable every test process has (setting one would race with other tests).
        let path = std::env::var("PATH").expect("PATH is set");
        let s = Secret::literal("env:PATH");
        assert_eq!(s.resolve().unwrap().expose_secret(), path.as_bytes());
        assert_eq!(s.origin(), "env:PATH");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "from-file\n").unwrap();
        let s = Secret::literal(format!("file:{}", path.display()));
        assert_eq!(s.resolve().unwrap().expose_secret(), b"from-file");
    }

    #[test]
    fn a_missing_env_var_is_named() {
        let s = Secret::literal("env:EKB_TEST_SECRET_SURELY_UNSET");
        let err = s.resolve().unwrap_err().to_string();
        assert!(err.contains("EKB_TEST_SECRET_SURELY_UNSET"));
    }
}
