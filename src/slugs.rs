//! Every slug the platforms document (from `shared/events.md`): `check-config`'s routing table,
//! and the bounded set of `slug` label values in metrics. Unknown slugs still route (by the
//! default rule); they only count under `slug="other"`, so a sender cannot grow `/metrics`.

use std::collections::HashSet;
use std::sync::LazyLock;

const NUTROR: &[&str] = &[
    "certificate_viewed",
    "community_viewed",
    "learner_help",
    "comment_created",
    "comment_deleted",
    "comment_replied",
    "enrollment_created",
    "file_downloaded",
    "inactive_student",
    "lesson_rated",
    "lesson_saved",
    "lesson_started",
    "lesson_watched",
    "module_completed",
    "notation_created",
    "complete_lesson_25",
    "complete_lesson_50",
    "complete_lesson_75",
    "complete_lesson_100",
];
const MYEDUZZ: &[&str] = &[
    "invoice_opened",
    "invoice_paid",
    "invoice_canceled",
    "invoice_waiting_refund",
    "invoice_refunded",
    "invoice_expired",
    "invoice_recovering",
    "invoice_waiting_payment",
    "invoice_refused",
    "invoice_overdue",
    "invoice_scheduled",
    "invoice_negotiated",
    // Eduzz's own example for invoice_negotiated sends this misspelling.
    "invoice_negotiatied",
    "invoice_updated",
    "contract_created",
    "contract_updated",
    "contract_status_updated",
    "commission_processed",
    "cart_abandonment",
];
const SUBSCRIPTIONS: &[&str] = &[
    "status_updated",
    "contract_created",
    "contract_updated",
    "contract_status_updated",
    "contract_changed",
];
const BLINKET: &[&str] = &[
    "attendance_added",
    "attendance_assigned",
    "attendance_canceled",
    "attendance_edited",
    "attendances_printed",
    "attendance_checkin",
    "attendance_tag_changed",
    "ticket_edited",
];
const ALPACLASS: &[&str] = &[
    "student_created",
    "student_certificate_accessed",
    "student_comment_created",
    "student_course_finished",
    "student_course_unfinished",
    "student_course_last_seen_at",
    "student_module_finished",
    "student_module_unfinished",
    "student_lesson_finished",
    "student_lesson_unfinished",
    "student_lesson_marked_as_favorite",
    "student_lesson_unmarked_as_favorite",
    "student_lesson_last_seen_at",
];

/// Toolzz's documented slugs.
pub(crate) const TOOLZZ: &[&str] = &[
    "activities.certificate.issued",
    "activities.course.completed",
    "activities.course.enrollment",
    "activities.trail.completed",
    "members.updated",
    // sic: Toolzz's documented spelling.
    "newslatter.created",
];

/// Eduzz's documented slugs (`app.name`), `ping` first.
pub(crate) fn eduzz() -> Vec<String> {
    let mut out = vec!["ping".to_string()];
    for (app, names) in [
        ("nutror", NUTROR),
        ("myeduzz", MYEDUZZ),
        ("subscriptions", SUBSCRIPTIONS),
        ("blinket", BLINKET),
        ("alpaclass", ALPACLASS),
    ] {
        out.extend(names.iter().map(|n| format!("{app}.{n}")));
    }
    out
}

/// Toolzz's documented slugs, owned.
pub(crate) fn toolzz() -> Vec<String> {
    TOOLZZ.iter().map(|s| s.to_string()).collect()
}

static DOCUMENTED: LazyLock<HashSet<String>> = LazyLock::new(|| {
    let mut all: HashSet<String> = eduzz().into_iter().collect();
    all.extend(toolzz());
    all
});

/// Whether `slug` is in the documented catalogue of either platform.
pub(crate) fn is_documented(slug: &str) -> bool {
    DOCUMENTED.contains(slug)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_holds_every_documented_slug() {
        for slug in [
            "ping",
            "nutror.lesson_started",
            "myeduzz.invoice_negotiated",
            "myeduzz.invoice_negotiatied",
            "subscriptions.status_updated",
            "subscriptions.contract_created",
            "subscriptions.contract_updated",
            "subscriptions.contract_status_updated",
            "subscriptions.contract_changed",
            "blinket.ticket_edited",
            "alpaclass.student_lesson_last_seen_at",
            "activities.certificate.issued",
            "newslatter.created",
        ] {
            assert!(is_documented(slug), "{slug}");
        }
        assert!(!is_documented("myeduzz.subscriptions_status_updated"));
        assert!(!is_documented("whatever.comes.next"));
    }
}
