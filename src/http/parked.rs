//! The parked events, on the admin listener: list them, send them again now, or (confirmed by
//! their count) purge them.
//!
//! A parked event is one Kafka refused for good and no dead-letter topic took; it waits in
//! the spool and is retried now and then. Once its cause is fixed (a topic created, a size
//! limit raised, a dead-letter topic configured) `POST /parked/redrive` sends them all again
//! at once. `POST /parked/purge?confirm=N` deletes them from the spool, only if N is how many
//! there are: the operator says what they expect to lose, and a count that changed meanwhile
//! refuses (409). These endpoints change state: keep the admin listener on a private address
//! (the default is 127.0.0.1).

use http::StatusCode;
use serde_json::json;

use super::admin::AdminState;
use super::answer::{self, Answer};
use crate::spool::Spool;

/// Most parked events listed or purged at once.
const LIMIT: usize = 10_000;

/// `GET /parked`: the parked events, oldest first.
pub(super) async fn list(state: &AdminState) -> Answer {
    let Some(spool) = &state.spool else {
        return no_spool();
    };
    match spool.parked(LIMIT).await {
        Ok(entries) => {
            let events: Vec<_> = entries
                .iter()
                .map(|e| match e {
                    Ok(e) => json!({"seq": e.seq, "id": e.message.event_id, "source": e.message.source, "slug": e.message.slug, "topic": e.message.topic, "received_at": e.message.received_at(), "bytes": e.message.body.len()}),
                    Err(u) => json!({"seq": u.seq, "error": "cannot be decoded"}),
                })
                .collect();
            answer::json(
                StatusCode::OK,
                json!({"count": events.len(), "events": events}),
            )
        }
        Err(e) => unreadable(&e),
    }
}

/// `POST /parked/redrive`: every parked event is sent again now.
pub(super) fn redrive(state: &AdminState) -> Answer {
    if state.spool.is_none() {
        return no_spool();
    }
    state.control.redrive_parked();
    let parked = state
        .drain
        .parked
        .load(std::sync::atomic::Ordering::Relaxed);
    tracing::info!(parked, "parked events redriven through the admin listener");
    answer::json(
        StatusCode::ACCEPTED,
        json!({"status": "redriving", "parked": parked}),
    )
}

/// `POST /parked/purge?confirm=N`: deletes the parked events, if there are N.
pub(super) async fn purge(state: &AdminState, query: Option<&str>) -> Answer {
    let Some(spool) = &state.spool else {
        return no_spool();
    };
    let confirm = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("confirm="))
        .and_then(|n| n.parse::<usize>().ok());
    let Some(confirm) = confirm else {
        return answer::error(
            StatusCode::BAD_REQUEST,
            "confirm_required",
            "say how many parked events you mean to delete: POST /parked/purge?confirm=N (GET /parked counts them)",
        );
    };
    match purge_confirmed(spool, confirm).await {
        Ok(purged) => {
            state.control.redrive_parked(); // so the drain lets go of them now
            tracing::warn!(
                purged,
                "parked events purged from the spool through the admin listener; they are lost"
            );
            answer::json(StatusCode::OK, json!({"purged": purged}))
        }
        Err(Purge::Count(count)) => answer::json(
            StatusCode::CONFLICT,
            json!({"error": "count_changed", "message": format!("{count} events are parked, not {confirm}: nothing was deleted"), "count": count}),
        ),
        Err(Purge::Spool(e)) => unreadable(&e),
    }
}

enum Purge {
    Count(usize),
    Spool(crate::spool::SpoolError),
}

async fn purge_confirmed(spool: &Spool, confirm: usize) -> Result<usize, Purge> {
    let parked = spool.parked(LIMIT).await.map_err(Purge::Spool)?;
    if parked.len() != confirm {
        return Err(Purge::Count(parked.len()));
    }
    let seqs: Vec<u64> = parked
        .iter()
        .map(|e| match e {
            Ok(e) => e.seq,
            Err(u) => u.seq,
        })
        .collect();
    spool.delete(seqs).await.map_err(Purge::Spool)?;
    Ok(confirm)
}

fn no_spool() -> Answer {
    answer::error(
        StatusCode::NOT_FOUND,
        "no_spool",
        "nothing is parked without a spool (delivery.ack is not spooled)",
    )
}

fn unreadable(e: &crate::spool::SpoolError) -> Answer {
    tracing::warn!(error = %e, "cannot read the parked events");
    answer::error(
        StatusCode::SERVICE_UNAVAILABLE,
        "spool_unreadable",
        "the spool cannot be read right now",
    )
}
