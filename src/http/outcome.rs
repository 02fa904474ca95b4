//! How what became of an event is answered: one [`Outcome`] → one HTTP answer, in the status
//! the source's sender counts as success, with a JSON body whose fields are in the same
//! (alphabetical) order in every answer.

use std::time::Duration;

use http::StatusCode;
use serde_json::json;

use super::answer::{self, Answer};
use crate::delivery::Refusal;
use crate::pipeline::{EventRef, Outcome};

/// The answer for what the pipeline did with a delivery; a taken event gets `accepted` (the
/// status its source's sender counts as success), every other 2xx is 200.
pub(crate) fn answer_for(outcome: &Outcome, accepted: StatusCode) -> Answer {
    let ok = |body| answer::json(StatusCode::OK, body);
    match outcome {
        Outcome::Unauthorized(_) => answer::error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the delivery could not be authenticated",
        ),
        Outcome::Invalid(e) => {
            answer::error(StatusCode::BAD_REQUEST, "invalid_envelope", &e.to_string())
        }
        Outcome::Ping => ok(json!({"status": "ok", "event": "ping"})),
        Outcome::Dropped { event, rule } => {
            ok(json!({"status": "dropped", "id": event.id, "event": event.slug, "rule": rule}))
        }
        Outcome::Accepted { event, topic } => {
            answer::json(accepted, Taken::new("accepted", event, Some(topic)))
        }
        Outcome::Published {
            event,
            topic,
            delivered,
        } => ok(
            json!({"status": "published", "id": event.id, "event": event.slug,
            "topic": topic, "partition": delivered.partition, "offset": delivered.offset}),
        ),
        Outcome::DeadLettered { event, topic } => answer::json(
            StatusCode::OK,
            Taken::new("dead_lettered", event, Some(topic)),
        ),
        Outcome::Duplicate { event } => {
            answer::json(StatusCode::OK, Taken::new("duplicate", event, None))
        }
        Outcome::Refused(Refusal::Busy(why)) => answer::busy(why, 5),
        Outcome::Refused(Refusal::Unavailable { answer, .. }) => {
            answer::unavailable("unavailable", answer, Duration::from_secs(10))
        }
        Outcome::Refused(r @ Refusal::InProgress { retry_after }) => {
            answer::unavailable("in_progress", &r.to_string(), *retry_after)
        }
        // The body was read whole: the connection stays usable.
        Outcome::Refused(r @ Refusal::TooLarge { .. }) => answer::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "record_too_large",
            &r.to_string(),
        ),
    }
}

/// The answer to an event taken, dead-lettered or found a duplicate, written without building
/// a JSON tree first (the fields in the order the other answers have them: alphabetical).
#[derive(serde::Serialize)]
struct Taken<'a> {
    event: &'a str,
    id: &'a str,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<&'a str>,
}

impl<'a> Taken<'a> {
    fn new(status: &'static str, event: &'a EventRef, topic: Option<&'a str>) -> Taken<'a> {
        Taken {
            event: &event.slug,
            id: &event.id,
            status,
            topic,
        }
    }
}

/// An error answer whose code is also the outcome recorded for the request.
pub(super) fn refuse(
    status: StatusCode,
    code: &'static str,
    message: &str,
) -> (Answer, &'static str) {
    (answer::error(status, code, message), code)
}

/// Like [`refuse`], and the connection closes (the body was not read whole).
pub(super) fn refuse_closing(
    status: StatusCode,
    code: &'static str,
    message: &str,
) -> (Answer, &'static str) {
    (answer::closing(answer::error(status, code, message)), code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body(answer: Answer) -> String {
        let bytes = answer.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn taken_answers_keep_their_fields_in_alphabetical_order() {
        let event = EventRef {
            id: "e1".into(),
            slug: "nutror.lesson_started".into(),
        };
        let topic = "lms.lessons".to_string();
        let cases = [
            (
                Outcome::Accepted {
                    event: event.clone(),
                    topic: topic.clone(),
                },
                StatusCode::ACCEPTED,
                r#"{"event":"nutror.lesson_started","id":"e1","status":"accepted","topic":"lms.lessons"}"#,
            ),
            (
                Outcome::DeadLettered {
                    event: event.clone(),
                    topic,
                },
                StatusCode::OK,
                r#"{"event":"nutror.lesson_started","id":"e1","status":"dead_lettered","topic":"lms.lessons"}"#,
            ),
            (
                Outcome::Duplicate { event },
                StatusCode::OK,
                r#"{"event":"nutror.lesson_started","id":"e1","status":"duplicate"}"#,
            ),
        ];
        for (outcome, status, expected) in cases {
            let answer = answer_for(&outcome, StatusCode::ACCEPTED);
            assert_eq!(answer.status(), status);
            assert_eq!(body(answer).await, format!("{expected}\n"));
        }
    }

    #[tokio::test]
    async fn a_taken_event_gets_the_senders_success_status_and_the_same_body() {
        let event = EventRef {
            id: "e1".into(),
            slug: "nutror.lesson_started".into(),
        };
        let taken = || Outcome::Accepted {
            event: event.clone(),
            topic: "t".into(),
        };
        let eduzz = answer_for(&taken(), StatusCode::OK);
        let json = answer_for(&taken(), StatusCode::ACCEPTED);
        assert_eq!(
            (eduzz.status(), json.status()),
            (StatusCode::OK, StatusCode::ACCEPTED)
        );
        let (a, b) = (body(eduzz).await, body(json).await);
        assert_eq!(a, b);
        assert!(a.contains(r#""status":"accepted""#), "{a}");
        // Every other 2xx is 200 whatever the source's accepted status.
        for other in [
            Outcome::Ping,
            Outcome::Duplicate {
                event: event.clone(),
            },
        ] {
            assert_eq!(
                answer_for(&other, StatusCode::ACCEPTED).status(),
                StatusCode::OK
            );
        }
    }
}
