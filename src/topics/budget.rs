//! How many topics senders can make the bridge create: a template with `{slug}` or `{app}`
//! names topics after what strangers post, so the ones named after undocumented slugs are
//! counted, and past `topics.max_dynamic` such events go to the overflow topic.

use std::collections::HashSet;
use std::sync::Mutex;

/// The topics named after undocumented slugs so far, and where the rest go.
#[derive(Debug)]
pub(crate) struct TopicBudget {
    max: usize,
    pub(crate) overflow: String,
    taken: Mutex<HashSet<String>>,
}

impl TopicBudget {
    /// At most `max` topics named after undocumented slugs; the rest go to `overflow`.
    pub(crate) fn new(max: usize, overflow: String) -> TopicBudget {
        TopicBudget {
            max,
            overflow,
            taken: Mutex::default(),
        }
    }

    /// Whether `topic` may be used: it already is, or there is room for one more.
    pub(crate) fn admit(&self, topic: &str) -> bool {
        let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        if taken.contains(topic) {
            return true;
        }
        if taken.len() >= self.max {
            return false;
        }
        taken.insert(topic.to_string());
        if taken.len() == self.max {
            tracing::warn!(
                limit = self.max,
                overflow_topic = %self.overflow,
                "topics.max_dynamic reached: events with new undocumented slugs now go to the overflow topic"
            );
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_past_the_budget_are_refused_and_those_admitted_stay_admitted() {
        let budget = TopicBudget::new(2, "overflow".into());
        assert!(budget.admit("a"));
        assert!(budget.admit("b"));
        assert!(!budget.admit("c"), "past the budget");
        assert!(
            budget.admit("a"),
            "a topic once admitted is always admitted"
        );
        assert!(!budget.admit("d"));
    }
}
