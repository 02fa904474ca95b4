//! Every slug the platforms document (from `shared/events.md`), for `check-config`'s routing
//! table and for tests. Unknown slugs still route (by the default rule); this list is only
//! what an operator is shown.

use crate::config::Format;

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
    "invoice_updated",
    "contract_created",
    "contract_updated",
    "contract_status_updated",
    "commission_processed",
    "cart_abandonment",
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
pub const TOOLZZ: &[&str] = &[
    "activities.certificate.issued",
    "activities.course.completed",
    "activities.course.enrollment",
    "activities.trail.completed",
    "members.updated",
];

/// Eduzz's documented slugs (`app.name`), `ping` first.
pub fn eduzz() -> Vec<String> {
    let mut out = vec!["ping".to_string()];
    for (app, names) in [
        ("nutror", NUTROR),
        ("myeduzz", MYEDUZZ),
        ("blinket", BLINKET),
        ("alpaclass", ALPACLASS),
    ] {
        out.extend(names.iter().map(|n| format!("{app}.{n}")));
    }
    out
}

/// The documented slugs a source of `format` may send.
pub fn for_format(format: Format) -> Vec<String> {
    match format {
        Format::Eduzz => eduzz(),
        Format::Toolzz => TOOLZZ.iter().map(|s| s.to_string()).collect(),
        Format::Json => {
            let mut all = eduzz();
            all.extend(TOOLZZ.iter().map(|s| s.to_string()));
            all
        }
    }
}
