//! Reading the slug and the event id out of a delivery's envelope.
//!
//! The body is parsed once into a [`serde_json::Value`]; routing reads message keys from the
//! same document later. Errors say exactly which field is missing or of the wrong type, so a
//! sender (or an operator replaying by hand) can fix the payload without reading our code.

use bytes::Bytes;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::Format;

/// Longest slug accepted; longer ones are refused (they could not make a sane topic anyway).
pub const MAX_SLUG_LEN: usize = 200;
/// Longest event id accepted.
pub const MAX_ID_LEN: usize = 200;

/// The slug and id of a delivery, and its parsed document.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub slug: String,
    pub id: String,
    pub doc: Value,
}

/// Why a body is not an acceptable envelope; the text is safe to send back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("the body is empty; a JSON object was expected")]
    Empty,
    #[error("the body is not valid JSON: {0}")]
    Json(String),
    #[error("the body must be a JSON object, not {0}")]
    NotAnObject(&'static str),
    #[error("missing field '{field}': {hint}")]
    Missing { field: String, hint: &'static str },
    #[error("field '{field}' must be {expected}, not {found}")]
    WrongType {
        field: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("field '{field}' is longer than {max} characters")]
    TooLong { field: String, max: usize },
}

/// Where one source finds slug and id.
#[derive(Debug, Clone)]
pub struct EnvelopeFormat {
    pub format: Format,
    pub slug_pointer: Option<String>,
    pub id_pointer: Option<String>,
}

impl EnvelopeFormat {
    /// Parses `body` and returns the envelope, or what is wrong with it.
    pub fn parse(&self, body: &Bytes) -> Result<Envelope, EnvelopeError> {
        if body.iter().all(|b| b.is_ascii_whitespace()) {
            return Err(EnvelopeError::Empty);
        }
        let doc: Value =
            super::strict_json::parse(body).map_err(|e| EnvelopeError::Json(e.to_string()))?;
        if !doc.is_object() {
            return Err(EnvelopeError::NotAnObject(type_name(&doc)));
        }
        let slug = match self.format {
            Format::Eduzz => required_string(
                &doc,
                "/event",
                "event",
                "a string naming the event, e.g. \"nutror.lesson_started\"",
            )?,
            Format::Toolzz => {
                match doc.get("event") {
                    None => {
                        return Err(EnvelopeError::Missing {
                            field: "event".into(),
                            hint: "an object like {\"name\", \"slug\", \"send_at\"}",
                        })
                    }
                    Some(v) if !v.is_object() => {
                        return Err(EnvelopeError::WrongType {
                            field: "event".into(),
                            expected: "an object",
                            found: type_name(v),
                        })
                    }
                    Some(_) => {}
                }
                required_string(
                    &doc,
                    "/event/slug",
                    "event.slug",
                    "a string naming the event, e.g. \"activities.certificate.issued\"",
                )?
            }
            Format::Json => {
                let pointer = self.slug_pointer.as_deref().unwrap_or("/event");
                required_string(&doc, pointer, pointer, "the configured slug pointer")?
            }
        };
        check_len("slug", &slug, MAX_SLUG_LEN)?;

        let id = match (self.format, &self.id_pointer) {
            (Format::Eduzz, _) => {
                if slug == "ping" {
                    // Activation pings are answered whatever their id looks like.
                    optional_id(&doc, "/id", "id")?.unwrap_or_else(|| body_id(body))
                } else {
                    optional_id(&doc, "/id", "id")?.ok_or(EnvelopeError::Missing {
                        field: "id".into(),
                        hint: "the event id Eduzz sends with every event",
                    })?
                }
            }
            (Format::Json, Some(pointer)) => {
                optional_id(&doc, pointer, pointer)?.ok_or(EnvelopeError::Missing {
                    field: pointer.clone(),
                    hint: "the configured id pointer",
                })?
            }
            // Toolzz sends no id: the body's hash is stable across retries of one delivery.
            _ => body_id(body),
        };
        check_len("id", &id, MAX_ID_LEN)?;
        Ok(Envelope { slug, id, doc })
    }
}

/// A stable id for envelopes that carry none: the hex SHA-256 of the raw body.
pub fn body_id(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

fn required_string(
    doc: &Value,
    pointer: &str,
    field: &str,
    hint: &'static str,
) -> Result<String, EnvelopeError> {
    match doc.pointer(pointer) {
        None | Some(Value::Null) => Err(EnvelopeError::Missing {
            field: field.into(),
            hint,
        }),
        Some(Value::String(s)) if s.trim().is_empty() => Err(EnvelopeError::Missing {
            field: field.into(),
            hint,
        }),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(EnvelopeError::WrongType {
            field: field.into(),
            expected: "a string",
            found: type_name(other),
        }),
    }
}

/// The id at `pointer`, if any. Ids are strings: a number is refused, so `12345` and
/// `"12345"` can never be taken for the same event (or `1e2` become `"100.0"`); a blank id
/// counts as absent.
fn optional_id(doc: &Value, pointer: &str, field: &str) -> Result<Option<String>, EnvelopeError> {
    match doc.pointer(pointer) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(EnvelopeError::WrongType {
            field: field.into(),
            expected: "a string",
            found: type_name(other),
        }),
    }
}

fn check_len(field: &str, value: &str, max: usize) -> Result<(), EnvelopeError> {
    if value.chars().count() > max {
        Err(EnvelopeError::TooLong {
            field: field.into(),
            max,
        })
    } else {
        Ok(())
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eduzz() -> EnvelopeFormat {
        EnvelopeFormat {
            format: Format::Eduzz,
            slug_pointer: None,
            id_pointer: None,
        }
    }

    fn toolzz() -> EnvelopeFormat {
        EnvelopeFormat {
            format: Format::Toolzz,
            slug_pointer: None,
            id_pointer: None,
        }
    }

    fn fixture(name: &str) -> Bytes {
        let path = format!("{}/examples/payloads/{name}", env!("CARGO_MANIFEST_DIR"));
        Bytes::from(std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}")))
    }

    #[test]
    fn eduzz_fixtures_give_slug_and_id() {
        let env = eduzz()
            .parse(&fixture("nutror.module_completed.json"))
            .unwrap();
        assert_eq!(env.slug, "nutror.module_completed");
        assert_eq!(env.id, "uufzv5xh659yhlc8hwj386ftf");
        assert_eq!(env.doc.pointer("/data/module/id").unwrap(), "3253");
    }

    #[test]
    fn toolzz_fixture_gets_a_stable_derived_id() {
        let body = fixture("activities.certificate.issued.json");
        let a = toolzz().parse(&body).unwrap();
        let b = toolzz().parse(&body).unwrap();
        assert_eq!(a.slug, "activities.certificate.issued");
        assert_eq!(a.id, b.id);
        assert_eq!(a.id, body_id(&body));
        assert_eq!(a.id.len(), 64);
    }

    #[test]
    fn what_is_wrong_is_named() {
        let e = |f: &EnvelopeFormat, s: &str| f.parse(&Bytes::from(s.to_string())).unwrap_err();
        assert_eq!(e(&eduzz(), ""), EnvelopeError::Empty);
        assert!(matches!(e(&eduzz(), "{"), EnvelopeError::Json(_)));
        assert_eq!(e(&eduzz(), "[1]"), EnvelopeError::NotAnObject("an array"));
        assert!(e(&eduzz(), r#"{"id":"1"}"#).to_string().contains("'event'"));
        assert!(e(&eduzz(), r#"{"id":"1","event":7}"#)
            .to_string()
            .contains("must be a string, not a number"));
        assert!(e(&eduzz(), r#"{"event":"nutror.x"}"#)
            .to_string()
            .contains("'id'"));
        assert!(e(&eduzz(), r#"{"id":{},"event":"nutror.x"}"#)
            .to_string()
            .contains("'id'"));
        assert!(e(&toolzz(), r#"{"event":"x"}"#)
            .to_string()
            .contains("'event' must be an object"));
        assert!(e(&toolzz(), r#"{"event":{"name":"x"}}"#)
            .to_string()
            .contains("'event.slug'"));
        let long = format!(r#"{{"id":"1","event":"{}"}}"#, "a".repeat(201));
        assert!(matches!(e(&eduzz(), &long), EnvelopeError::TooLong { .. }));
    }

    #[test]
    fn ping_needs_no_id_and_ids_are_strings() {
        let ping = eduzz()
            .parse(&Bytes::from_static(br#"{"event":"ping"}"#))
            .unwrap();
        assert_eq!(ping.slug, "ping");
        for body in [
            r#"{"id":42,"event":"myeduzz.invoice_paid"}"#,
            r#"{"id":1e2,"event":"myeduzz.invoice_paid"}"#,
        ] {
            let e = eduzz().parse(&Bytes::from(body)).unwrap_err();
            assert_eq!(
                e.to_string(),
                "field 'id' must be a string, not a number",
                "{body}"
            );
        }
        let blank = eduzz()
            .parse(&Bytes::from_static(
                br#"{"id":"   ","event":"myeduzz.invoice_paid"}"#,
            ))
            .unwrap_err();
        assert!(matches!(blank, EnvelopeError::Missing { .. }), "{blank}");
        let s = eduzz()
            .parse(&Bytes::from_static(
                br#"{"id":"42","event":"myeduzz.invoice_paid"}"#,
            ))
            .unwrap();
        assert_eq!(s.id, "42");
    }

    #[test]
    fn json_format_uses_pointers() {
        let f = EnvelopeFormat {
            format: Format::Json,
            slug_pointer: Some("/type".into()),
            id_pointer: Some("/meta/uid".into()),
        };
        let env = f
            .parse(&Bytes::from_static(
                br#"{"type":"a.b","meta":{"uid":"u1"}}"#,
            ))
            .unwrap();
        assert_eq!((env.slug.as_str(), env.id.as_str()), ("a.b", "u1"));
    }

    #[test]
    fn invalid_utf8_and_deep_nesting_are_errors_not_panics() {
        let bad = Bytes::from_static(b"{\"id\":\"\xff\",\"event\":\"x\"}");
        assert!(matches!(eduzz().parse(&bad), Err(EnvelopeError::Json(_))));
        let deep = Bytes::from(format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)));
        assert!(matches!(eduzz().parse(&deep), Err(EnvelopeError::Json(_))));
    }
}
