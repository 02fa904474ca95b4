//! Topic names: templates like `eduzz.{app}.{slug}`, and Kafka's naming rules.
//!
//! Kafka accepts topic names of 1 to 249 characters from `[A-Za-z0-9._-]`, except `.` and `..`.
//! A template's fixed text is checked against those rules when the config loads. The parts
//! that come from a delivery (the slug) are not under our control, so a rendered name that
//! breaks the rules is *sanitised*: illegal characters become `_` and a short hash of the
//! original name is appended. The hash keeps the mapping stable (the same slug always lands
//! on the same topic) and keeps two different illegal slugs from silently sharing a topic.

use sha2::{Digest, Sha256};

use crate::event::TopicName;

/// Longest topic name Kafka accepts.
pub const MAX_TOPIC_LEN: usize = 249;
/// Hex characters of the hash appended to a sanitised name.
const HASH_CHARS: usize = 8;

fn is_legal_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-'
}

/// Why a topic name or template is not legal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("a topic name cannot be empty")]
    Empty,
    #[error("'{0}' is not a legal topic name")]
    Dots(String),
    #[error("topic names are at most {MAX_TOPIC_LEN} characters (this one has {0})")]
    TooLong(usize),
    #[error("'{0}' is not allowed in a topic name (only A-Z a-z 0-9 . _ -)")]
    IllegalChar(char),
    #[error("a topic template cannot be empty")]
    EmptyTemplate,
    #[error("'{0}' has a '{{' that is never closed")]
    Unclosed(String),
    #[error("'{0}' has a '}}' that was never opened")]
    Unopened(String),
    #[error("'{{{0}}}' is not a placeholder (use {{slug}}, {{source}} or {{app}})")]
    Placeholder(String),
}

/// Whether `name` is a legal Kafka topic name; the error says why not.
pub fn check_topic_name(name: &str) -> Result<(), TopicError> {
    if name.is_empty() {
        return Err(TopicError::Empty);
    }
    if name == "." || name == ".." {
        return Err(TopicError::Dots(name.to_string()));
    }
    if name.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong(name.len()));
    }
    if let Some(c) = name.chars().find(|c| !is_legal_char(*c)) {
        return Err(TopicError::IllegalChar(c));
    }
    Ok(())
}

/// Whether a rendered name can be used as it is: legal, not an internal topic (`__…`), and
/// not shaped like a sanitised name, so that no slug can land on another slug's sanitised
/// topic (`a/b` becomes `a_b-c14cddc0`; the slug `a_b-c14cddc0` is then sanitised too).
fn usable_as_is(name: &str) -> bool {
    check_topic_name(name).is_ok() && !name.starts_with("__") && !looks_sanitised(name)
}

/// Ends in `-` and [`HASH_CHARS`] lowercase hex characters, as every sanitised name does.
fn looks_sanitised(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() > HASH_CHARS
        && b[b.len() - HASH_CHARS - 1] == b'-'
        && b[b.len() - HASH_CHARS..]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

/// Makes any string a usable topic name, the same way every time, never the same for two
/// different strings.
///
/// Usable names come back unchanged; anything else (illegal characters, too long, internal
/// `__…` names, names shaped like a sanitised one) has illegal characters replaced by `_`,
/// leading underscores dropped, is cut to fit, and ends in `-` plus 8 hex characters of the
/// SHA-256 of the original. Sanitised names and names used as they are cannot meet, since
/// only sanitised ones have that ending.
pub fn sanitize_topic(name: &str) -> String {
    if usable_as_is(name) {
        return name.to_string();
    }
    let digest = Sha256::digest(name.as_bytes());
    let hash = &hex::encode(digest)[..HASH_CHARS];
    let budget = MAX_TOPIC_LEN - HASH_CHARS - 1;
    let mut out: String = name
        .chars()
        .map(|c| if is_legal_char(c) { c } else { '_' })
        .skip_while(|c| *c == '_')
        .take(budget)
        .collect();
    out.push('-');
    out.push_str(hash);
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Slug,
    Source,
    App,
}

/// A parsed topic template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    text: String,
    parts: Vec<Part>,
}

/// What a template is rendered with.
#[derive(Debug, Clone, Copy)]
pub struct TopicVars<'a> {
    pub slug: &'a str,
    pub source: &'a str,
}

impl Template {
    /// Parses `eduzz.{app}.{slug}`; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Template, TopicError> {
        if text.is_empty() {
            return Err(TopicError::EmptyTemplate);
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match rest.find('{') {
                Some(0) => {
                    let end = rest
                        .find('}')
                        .ok_or_else(|| TopicError::Unclosed(text.to_string()))?;
                    let part = match &rest[1..end] {
                        "slug" => Part::Slug,
                        "source" => Part::Source,
                        "app" => Part::App,
                        other => return Err(TopicError::Placeholder(other.to_string())),
                    };
                    parts.push(part);
                    rest = &rest[end + 1..];
                }
                found => {
                    let end = found.unwrap_or(rest.len());
                    let literal = &rest[..end];
                    if literal.contains('}') {
                        return Err(TopicError::Unopened(text.to_string()));
                    }
                    if let Some(c) = literal.chars().find(|c| !is_legal_char(*c)) {
                        return Err(TopicError::IllegalChar(c));
                    }
                    parts.push(Part::Literal(literal.to_string()));
                    rest = &rest[end..];
                }
            }
        }
        if !parts.iter().any(|p| !matches!(p, Part::Literal(_))) {
            check_topic_name(text)?;
        }
        Ok(Template {
            text: text.to_string(),
            parts,
        })
    }

    /// Whether rendered names depend on the delivery (`{slug}` or `{app}`): such a template
    /// can name as many topics as senders make up slugs.
    pub fn follows_slug(&self) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::Slug | Part::App))
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Renders the template and sanitises the result into a legal topic name.
    pub fn render(&self, vars: TopicVars<'_>) -> TopicName {
        let mut out = String::with_capacity(self.text.len() + vars.slug.len());
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Slug => out.push_str(vars.slug),
                Part::Source => out.push_str(vars.source),
                Part::App => out.push_str(app_of(vars.slug)),
            }
        }
        TopicName::from(sanitize_topic(&out))
    }
}

/// The application part of a slug: the text before the first dot (`nutror` of
/// `nutror.lesson_started`), or the whole slug when it has no dot.
pub(crate) fn app_of(slug: &str) -> &str {
    slug.split('.').next().unwrap_or(slug)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(slug: &'a str) -> TopicVars<'a> {
        TopicVars {
            slug,
            source: "eduzz",
        }
    }

    #[test]
    fn templates_render_their_placeholders() {
        let t = Template::parse("{source}.{app}.{slug}").unwrap();
        assert_eq!(
            t.render(vars("nutror.lesson_started")),
            "eduzz.nutror.nutror.lesson_started"
        );
        let t = Template::parse("events-{app}").unwrap();
        assert_eq!(t.render(vars("ping")), "events-ping");
    }

    #[test]
    fn bad_templates_say_why() {
        assert!(Template::parse("").is_err());
        let why = |t: &str| Template::parse(t).unwrap_err().to_string();
        assert!(why("a b{slug}").contains("' '"));
        assert!(why("{nope}").contains("{nope}"));
        assert!(why("x{slug").contains("never closed"));
        assert!(why("x}").contains("never opened"));
        assert!(Template::parse("..").is_err());
        assert!(Template::parse(&"a".repeat(250)).is_err());
    }

    #[test]
    fn legal_names_pass_through_sanitising() {
        for name in ["nutror.lesson_started", "a", "A-b_c.9", &"x".repeat(249)] {
            assert_eq!(sanitize_topic(name), name);
        }
    }

    #[test]
    fn illegal_names_become_legal_stable_and_distinct() {
        let a = sanitize_topic("nutror.lição/1");
        let b = sanitize_topic("nutror.lição/2");
        assert!(check_topic_name(&a).is_ok(), "{a}");
        assert_eq!(a, sanitize_topic("nutror.lição/1"));
        assert_ne!(a, b);
        assert!(a.starts_with("nutror.li__o_1-"), "{a}");
        for weird in ["", ".", "..", &"é".repeat(400), "a b c"] {
            let s = sanitize_topic(weird);
            assert!(check_topic_name(&s).is_ok(), "{weird:?} -> {s:?}");
        }
    }

    #[test]
    fn no_slug_reaches_another_slugs_topic_or_an_internal_one() {
        let odd = sanitize_topic("a/b");
        assert!(odd.starts_with("a_b-"), "{odd}");
        // The legal slug that spells the sanitised name gets a topic of its own.
        let twin = sanitize_topic(&odd);
        assert_ne!(twin, odd);
        assert!(check_topic_name(&twin).is_ok());
        for internal in ["__consumer_offsets", "__transaction_state", "__x"] {
            let t = sanitize_topic(internal);
            assert!(!t.starts_with("__"), "{internal} -> {t}");
            assert!(check_topic_name(&t).is_ok(), "{t}");
        }
        assert_eq!(sanitize_topic("_single"), "_single");
    }

    #[test]
    fn app_is_the_text_before_the_first_dot() {
        assert_eq!(app_of("myeduzz.invoice_paid"), "myeduzz");
        assert_eq!(app_of("activities.certificate.issued"), "activities");
        assert_eq!(app_of("ping"), "ping");
    }
}
