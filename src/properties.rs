//! Properties of topic naming and routing, over generated inputs.

use crate::config::Config;
use crate::kafka::topic::{check_topic_name, sanitize_topic, Template, TopicVars};
use crate::route::{Decision, Router};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Whatever the slug, the topic is legal and never internal, sanitising is stable, and
    /// an ordinary legal name is used as it is.
    #[test]
    fn sanitised_topics_are_always_legal(name in ".{0,300}") {
        let t = sanitize_topic(&name);
        prop_assert!(check_topic_name(&t).is_ok(), "{:?} -> {:?}", name, t);
        prop_assert!(!t.starts_with("__"), "{:?} -> {:?}", name, t);
        prop_assert_eq!(&sanitize_topic(&name), &t);
        if check_topic_name(&name).is_ok() && !name.starts_with("__") && !name.contains('-') {
            prop_assert_eq!(t, name);
        }
    }

    /// A sanitised topic is never the topic of another slug, however that slug is spelt.
    #[test]
    fn a_sanitised_topic_belongs_to_one_slug(name in ".{0,60}") {
        let t = sanitize_topic(&name);
        prop_assume!(t != name);
        prop_assert_ne!(sanitize_topic(&t), t);
    }

    /// Two different names never share a topic silently.
    #[test]
    fn distinct_names_get_distinct_topics(a in ".{0,60}", b in ".{0,60}") {
        prop_assume!(a != b);
        prop_assert_ne!(sanitize_topic(&a), sanitize_topic(&b));
    }

    /// Near misses that differ only in an illegal character stay apart too.
    #[test]
    fn names_differing_in_illegal_characters_stay_apart(base in "[a-z.]{1,40}", x in "[ /é#]", y in "[ /é#]") {
        prop_assume!(x != y);
        prop_assert_ne!(sanitize_topic(&format!("{base}{x}")), sanitize_topic(&format!("{base}{y}")));
    }

    /// Templates render legal topics for any slug and source.
    #[test]
    fn templates_render_legal_topics(slug in ".{0,250}", source in "[a-z]{1,10}") {
        for text in ["{slug}", "{source}.{app}.{slug}", "events-{app}", "x"] {
            let t = Template::parse(text).unwrap();
            let topic = t.render(TopicVars { slug: &slug, source: &source });
            prop_assert!(check_topic_name(&topic).is_ok(), "{} with {:?} -> {:?}", text, slug, topic);
        }
    }

    /// The first rule that matches wins, whatever the rules and the slug.
    #[test]
    fn the_first_matching_rule_wins(
        rules in prop::collection::vec(("[ab]{0,3}(\\.[ab]{0,2})?", any::<bool>()), 0..8),
        slug in "[ab]{0,3}(\\.[ab]{0,2})?",
    ) {
        let mut text = String::from(
            "[sources.eduzz]\npath = \"/e\"\nformat = \"eduzz\"\nauth = { type = \"none\" }\n\n[default_route]\ntopic = \"default\"\n",
        );
        for (i, (lit, prefix)) in rules.iter().enumerate() {
            let pattern = if *prefix { format!("{lit}*") } else { lit.clone() };
            text.push_str(&format!("\n[[routes]]\nmatch = \"{pattern}\"\ntopic = \"t{i}\"\n"));
        }
        // A rule with an empty literal and no star would match only the empty slug, which
        // the envelope never lets through; skip such configs.
        prop_assume!(rules.iter().all(|(lit, prefix)| *prefix || !lit.is_empty()));
        let router: Router = Config::from_toml(&text).unwrap().router;
        let expected = rules
            .iter()
            .position(|(lit, prefix)| if *prefix { slug.starts_with(lit.as_str()) } else { slug == *lit })
            .map(|i| format!("t{i}"))
            .unwrap_or_else(|| "default".into());
        prop_assume!(!slug.is_empty());
        match router.route("eduzz", &slug, "id", &serde_json::json!({})) {
            Decision::Publish { topic, .. } => prop_assert_eq!(topic, expected),
            other => prop_assert!(false, "unexpected {:?}", other),
        }
    }
}
