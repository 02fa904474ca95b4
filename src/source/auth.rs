//! Proving a delivery is authentic: HMAC signatures, shared tokens, or (on purpose) nothing.
//!
//! Every comparison of a secret runs in constant time, and a failure never says which part
//! was wrong: a forger learns nothing from the answer. The reason is kept for logs and
//! metrics ([`AuthError`]), and even there the secret itself never appears.

use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderName};
use serde::Deserialize;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::problem::Problems;
use crate::secret::{ExposeSecret, Secret, SecretSlice};

/// How a source proves a delivery is authentic (`sources.NAME.auth`).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum AuthSettings {
    /// Hex HMAC-SHA256 of the raw body in a header; any listed secret may match (rotation).
    HmacSha256 {
        #[serde(default = "default_signature_header")]
        header: String,
        secrets: Vec<Secret>,
    },
    /// A shared token in a header, or in the path when `path` ends in `/{token}`.
    Token {
        header: Option<String>,
        tokens: Vec<Secret>,
    },
    /// No authentication at all; must be written out on purpose.
    None,
}

fn default_signature_header() -> String {
    "x-signature".into()
}

type HmacSha256 = Hmac<Sha256>;

/// Why a delivery was refused (for logs and metrics only, never for the answer body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// The signature header or token is absent.
    Missing,
    /// It is present but malformed (not hex, wrong length, not UTF-8).
    Malformed,
    /// It is well formed and matches none of the live secrets.
    Mismatch,
}

impl AuthError {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed => "malformed",
            AuthError::Mismatch => "mismatch",
        }
    }
}

/// Where a shared token travels.
#[derive(Clone)]
pub enum TokenPlace {
    Header(HeaderName),
    /// The last path segment, for sources whose path ends in `/{token}`.
    Path,
}

/// The authentication rule of one source, with its secrets already resolved.
#[derive(Clone)]
pub enum Auth {
    /// One prepared MAC per live secret: any may match, so secrets can be rotated.
    HmacSha256 {
        header: HeaderName,
        keys: Vec<HmacSha256>,
    },
    Token {
        place: TokenPlace,
        tokens: Vec<SecretSlice<u8>>,
    },
    None,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl AuthSettings {
    /// Builds the rule, reading every secret now (once); problems go under `key` (the
    /// source's `auth`). `token_in_path`: the source's path ends in `/{token}`.
    pub(crate) fn build(
        &self,
        key: &str,
        token_in_path: bool,
        problems: &mut Problems,
    ) -> Option<Auth> {
        let mark = problems.mark();
        let auth = match self {
            AuthSettings::HmacSha256 { header, secrets } => {
                problems.require(
                    !secrets.is_empty(),
                    format!("{key}.secrets"),
                    "needs at least one secret",
                );
                let header = header_name(header, &format!("{key}.header"), problems);
                let keys = resolve_all(secrets, &format!("{key}.secrets"), problems)
                    .into_iter()
                    .map(|k| {
                        HmacSha256::new_from_slice(k.expose_secret())
                            .expect("HMAC takes a key of any length")
                    })
                    .collect();
                header.map(|header| Auth::HmacSha256 { header, keys })
            }
            AuthSettings::Token { header, tokens } => {
                problems.require(
                    !tokens.is_empty(),
                    format!("{key}.tokens"),
                    "needs at least one token",
                );
                let tokens = resolve_all(tokens, &format!("{key}.tokens"), problems);
                token_place(key, header.as_deref(), token_in_path, problems)
                    .map(|place| Auth::Token { place, tokens })
            }
            AuthSettings::None => Some(Auth::None),
        };
        auth.filter(|_| problems.none_since(mark))
    }
}

fn header_name(text: &str, key: &str, problems: &mut Problems) -> Option<HeaderName> {
    let name = HeaderName::from_bytes(text.as_bytes()).ok();
    if name.is_none() {
        problems.push(key, format!("'{text}' is not a valid header name"));
    }
    name
}

fn resolve_all(secrets: &[Secret], key: &str, problems: &mut Problems) -> Vec<SecretSlice<u8>> {
    secrets
        .iter()
        .enumerate()
        .filter_map(|(i, s)| problems.check(format!("{key}[{i}]"), s.resolve()))
        .collect()
}

fn token_place(
    key: &str,
    header: Option<&str>,
    token_in_path: bool,
    problems: &mut Problems,
) -> Option<TokenPlace> {
    match (header, token_in_path) {
        (None, false) => {
            problems.push(
                key,
                "a token needs a place: set auth.header, or end the path in '/{token}'",
            );
            None
        }
        (Some(_), true) => {
            problems.push(key, "set either auth.header or a '/{token}' path, not both");
            None
        }
        (Some(h), false) => {
            header_name(h, &format!("{key}.header"), problems).map(TokenPlace::Header)
        }
        (None, true) => Some(TokenPlace::Path),
    }
}

impl Auth {
    /// A one-line description without any secret (for `check-config` and start-up logs).
    pub(crate) fn describe(&self) -> String {
        match self {
            Auth::HmacSha256 { header, keys } => format!(
                "hmac-sha256 (header {header}, {} live secret{})",
                keys.len(),
                if keys.len() == 1 { "" } else { "s" }
            ),
            Auth::Token { place, tokens } => format!(
                "token (in {}, {} live token{})",
                match place {
                    TokenPlace::Header(h) => format!("header {h}"),
                    TokenPlace::Path => "the path".into(),
                },
                tokens.len(),
                if tokens.len() == 1 { "" } else { "s" }
            ),
            Auth::None => "none".into(),
        }
    }

    /// Checks one delivery: its headers, the token found in its path, and its raw body.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        path_token: Option<&str>,
        body: &[u8],
    ) -> Result<(), AuthError> {
        match self {
            Auth::None => Ok(()),
            Auth::HmacSha256 { header, keys } => {
                let value = headers.get(header).ok_or(AuthError::Missing)?;
                let text = value.to_str().map_err(|_| AuthError::Malformed)?.trim();
                let text = strip_prefix_ignore_case(text, "sha256=");
                let signature = hex::decode(text).map_err(|_| AuthError::Malformed)?;
                if signature.len() != 32 {
                    return Err(AuthError::Malformed);
                }
                // Check every key, whatever matched, so timing says nothing about which one.
                let mut ok = false;
                for key in keys {
                    let mut mac = key.clone();
                    mac.update(body);
                    ok |= mac.verify_slice(&signature).is_ok();
                }
                if ok {
                    Ok(())
                } else {
                    Err(AuthError::Mismatch)
                }
            }
            Auth::Token { place, tokens } => {
                let given: &[u8] = match place {
                    TokenPlace::Header(h) => headers.get(h).ok_or(AuthError::Missing)?.as_bytes(),
                    TokenPlace::Path => path_token.ok_or(AuthError::Missing)?.as_bytes(),
                };
                let mut ok = false;
                for token in tokens {
                    ok |= bool::from(given.ct_eq(token.expose_secret()));
                }
                if ok {
                    Ok(())
                } else {
                    Err(AuthError::Mismatch)
                }
            }
        }
    }
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> &'a str {
    match text.get(..prefix.len()) {
        Some(head) if head.eq_ignore_ascii_case(prefix) => &text[prefix.len()..],
        _ => text,
    }
}

/// Hex HMAC-SHA256 of `body` under `secret`: what a sender puts in `x-signature`.
pub fn sign_hex(secret: &[u8], body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(settings: AuthSettings, token_in_path: bool) -> Auth {
        let mut problems = Problems::default();
        let auth = settings.build("auth", token_in_path, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        auth.unwrap()
    }

    fn hmac_auth(secrets: &[&str]) -> Auth {
        build(
            AuthSettings::HmacSha256 {
                header: "x-signature".into(),
                secrets: secrets.iter().map(|s| Secret::literal(*s)).collect(),
            },
            false,
        )
    }

    fn headers(name: &str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
        h
    }

    #[test]
    fn hmac_matches_a_known_vector() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn any_live_secret_verifies_and_others_do_not() {
        let auth = hmac_auth(&["old", "new"]);
        let body = br#"{"id":"1","event":"ping"}"#;
        for secret in ["old", "new"] {
            let sig = sign_hex(secret.as_bytes(), body);
            assert_eq!(
                auth.verify(&headers("x-signature", &sig), None, body),
                Ok(())
            );
            let upper = format!("sha256={}", sig.to_uppercase());
            assert_eq!(
                auth.verify(&headers("X-Signature", &upper), None, body),
                Ok(())
            );
        }
        let forged = sign_hex(b"guess", body);
        assert_eq!(
            auth.verify(&headers("x-signature", &forged), None, body),
            Err(AuthError::Mismatch)
        );
    }

    #[test]
    fn a_signature_over_another_body_fails() {
        let auth = hmac_auth(&["k"]);
        let sig = sign_hex(b"k", b"{\"a\":1}");
        assert_eq!(
            auth.verify(&headers("x-signature", &sig), None, b"{\"a\":2}"),
            Err(AuthError::Mismatch)
        );
    }

    #[test]
    fn missing_and_malformed_signatures_are_told_apart() {
        let auth = hmac_auth(&["k"]);
        assert_eq!(
            auth.verify(&HeaderMap::new(), None, b"x"),
            Err(AuthError::Missing)
        );
        assert_eq!(
            auth.verify(&headers("x-signature", "zz"), None, b"x"),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            auth.verify(&headers("x-signature", "abcd"), None, b"x"),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            auth.verify(&headers("x-other", &sign_hex(b"k", b"x")), None, b"x"),
            Err(AuthError::Missing)
        );
    }

    #[test]
    fn tokens_from_path_and_header() {
        let in_path = build(
            AuthSettings::Token {
                header: None,
                tokens: vec![Secret::literal("t0k")],
            },
            true,
        );
        assert_eq!(in_path.verify(&HeaderMap::new(), Some("t0k"), b""), Ok(()));
        assert_eq!(
            in_path.verify(&HeaderMap::new(), Some("t0"), b""),
            Err(AuthError::Mismatch)
        );
        assert_eq!(
            in_path.verify(&HeaderMap::new(), None, b""),
            Err(AuthError::Missing)
        );

        let in_header = build(
            AuthSettings::Token {
                header: Some("x-token".into()),
                tokens: vec![Secret::literal("t0k")],
            },
            false,
        );
        assert_eq!(
            in_header.verify(&headers("x-token", "t0k"), None, b""),
            Ok(())
        );
        assert!(!in_header.describe().contains("t0k"));
    }
}
