//! How many topics senders can make the bridge create: a template with `{slug}` or `{app}`
//! names topics after what strangers post, so the ones named after undocumented slugs are
//! counted, and past `topics.max_dynamic` such events go to the overflow topic.

use std::collections::HashSet;
use std::sync::Mutex;

use crate::event::TopicName;

/// The topics named after undocumented slugs so far, and where the rest go.
#[derive(Debug)]
pub(crate) struct TopicBudget {
    max: usize,
    pub(crate) overflow: TopicName,
    taken: Mutex<HashSet<TopicName>>,
}

impl TopicBudget {
    /// At most `max` topics named after undocumented slugs; the rest go to `overflow`.
    pub(crate) fn new(max: usize, overflow: TopicName) -> TopicBudget {
        TopicBudget {
            max,
            overflow,
            taken: Mutex::default(),
        }
    }

    /// Whether `topic` may be used: it already is, or there is room for one more.
    pub(crate) fn admit(&self, topic: &TopicName) -> bool {
        let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        if taken.contains(topic) {
            return true;
        }
        if taken.len() >= self.max {
            return false;
        }
        taken.insert(topic.clone());
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
        let topic = TopicName::from;
        let budget = TopicBudget::new(2, topic("overflow"));
        assert!(budget.admit(&topic("a")));
        assert!(budget.admit(&topic("b")));
        assert!(!budget.admit(&topic("c")), "past the budget");
        assert!(
            budget.admit(&topic("a")),
            "a topic once admitted is always admitted"
        );
        assert!(!budget.admit(&topic("d")));
    }
}
