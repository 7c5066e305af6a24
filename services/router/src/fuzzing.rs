//! The invariants the `dialplan` fuzz target (`fuzz/fuzz_targets/dialplan.rs`) and the
//! router's robustness test check on arbitrary input. Not part of the API.

use crate::apps::{parse_dial, parse_mailbox, split_condition, Target};
use crate::expr;
use crate::pattern::Pattern;
use crate::subst::{self, Env};
use crate::text::Text;

struct FuzzEnv {
    exten: Text,
}

impl Env for FuzzEnv {
    fn variable(&self, name: &str) -> Option<Text> {
        match name {
            "EXTEN" => Some(self.exten.clone()),
            "LINE" => Some(Text::trusted("13235550100")),
            _ => None,
        }
    }
    fn caller_id(&self) -> (&Text, &Text) {
        (&self.exten, &self.exten)
    }
    fn epoch(&self) -> f64 {
        1_700_000_000.0
    }
}

/// `data` is split in two at the first NUL: a dialplan template and a caller's number.
/// Asserts: no panic anywhere; a caller's text alone is one operand, so an expression
/// made only of it evaluates to itself; a caller's text never splits a Dial string.
pub fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (template, caller) = text.split_once('\0').unwrap_or((&text, ""));

    // Expressions from the dialplan, and from the caller.
    let _ = expr::evaluate(&Text::trusted(template));
    if !caller.is_empty() {
        let value = expr::evaluate(&Text::outside(caller)).expect("one operand always parses");
        assert_eq!(value.as_str(), caller, "the caller's text is one operand");
    }

    // Substitution with the caller's text as ${EXTEN}.
    let env = FuzzEnv {
        exten: Text::outside(caller),
    };
    let mut warnings = Vec::new();
    let substituted = subst::substitute(template, &env, &mut warnings);

    // Argument parsers on the result.
    let _ = Target::parse(&substituted);
    let _ = split_condition(&substituted);
    let _ = parse_mailbox(&substituted);
    let dial = parse_dial(&substituted);
    let mut injected = Text::trusted("SIP/");
    injected.push_text(&Text::outside(caller));
    let only_caller = parse_dial(&injected);
    assert!(
        only_caller.targets.len() <= 1,
        "one target at most: {only_caller:?}"
    );
    let _ = dial;

    // Patterns.
    if let Ok(pattern) = Pattern::parse(template) {
        let _ = pattern.matches(caller);
        let _ = pattern.cmp_specificity(&pattern);
    }
}
