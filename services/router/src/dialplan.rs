//! The dialplan compiled for lookup: per context, plain extensions in a hash map and
//! patterns in Asterisk's order, indexed by prefix (see [`PatternIndex`]), so that
//! finding the extension for a number costs a few hash lookups and a scan of the few
//! patterns that can start with its first digits.
//!
//! Lookup in a context (Asterisk's `pbx_find_extension`): its own extensions first
//! (plain names, then patterns in `ext_cmp` order, an extension with a caller-ID match
//! before the same one without), then each `include =>` in order, depth first, each
//! context at most once. Includes with a time restriction are not supported: they are
//! reported by the check and skipped.

use std::collections::HashMap;
use std::sync::Arc;

use asterisk_conf::extensions::{self as ast, Priority};
use asterisk_conf::Location;

use crate::apps::App;
use crate::pattern::{normalize, Pattern};

/// How deep includes are followed.
pub const MAX_INCLUDE_DEPTH: usize = 32;

/// A loaded dialplan, shared by every call that started while it was current.
#[derive(Debug)]
pub struct Dialplan {
    contexts: HashMap<String, Context>,
    pub globals: Vec<(String, String)>,
    /// Lines the router cannot run, with where they are (see [`Dialplan::check`]).
    unsupported: Vec<Unsupported>,
}

/// A line the router does not run, found when loading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    pub location: Location,
    pub message: String,
}

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

#[derive(Debug)]
pub struct Context {
    pub name: String,
    /// Extensions in Asterisk's order.
    extensions: Vec<Extension>,
    /// Normalized plain name -> indices into `extensions` (caller-ID variants first).
    plain: HashMap<String, Vec<u32>>,
    patterns: PatternIndex,
    includes: Vec<String>,
}

/// One extension (one name or pattern, and optional caller-ID match) with its steps.
#[derive(Debug)]
pub struct Extension {
    pub pattern: Pattern,
    pub caller_id: Option<Pattern>,
    /// Steps in priority order.
    pub steps: Vec<Step>,
}

/// One priority of an extension.
#[derive(Debug, Clone)]
pub struct Step {
    pub priority: u32,
    pub label: Option<String>,
    pub app: App,
    /// The application name as written (for logs and traces).
    pub app_name: String,
    /// The arguments, unsubstituted.
    pub args: String,
    pub location: Location,
}

impl Extension {
    pub fn step(&self, priority: u32) -> Option<&Step> {
        self.steps
            .binary_search_by_key(&priority, |s| s.priority)
            .ok()
            .map(|i| &self.steps[i])
    }

    pub fn label(&self, label: &str) -> Option<u32> {
        self.steps
            .iter()
            .find(|s| s.label.as_deref() == Some(label))
            .map(|s| s.priority)
    }

    /// The first priority after `priority`, if any.
    pub fn next_after(&self, priority: u32) -> Option<u32> {
        self.steps
            .iter()
            .map(|s| s.priority)
            .find(|&p| p > priority)
    }
}

/// A found extension: the context it is in (the searched one or an included one),
/// its index there, and the extension.
#[derive(Debug, Clone, Copy)]
pub struct Found<'a> {
    pub context: &'a str,
    pub index: usize,
    pub extension: &'a Extension,
}

impl Dialplan {
    /// Compiles the AST. Never fails: what cannot run is recorded as unsupported, so that
    /// a dialplan written for Asterisk always loads.
    pub fn compile(plan: &ast::Dialplan) -> Arc<Self> {
        let mut unsupported = Vec::new();
        let mut contexts = HashMap::new();
        for ctx in &plan.contexts {
            contexts.insert(ctx.name.clone(), compile_context(ctx, &mut unsupported));
        }
        for ctx in &plan.contexts {
            for include in &ctx.includes {
                if include.timespec.is_some() {
                    unsupported.push(Unsupported {
                        location: include.location.clone(),
                        message: format!(
                            "include => {} with a time restriction is not supported; it is skipped",
                            include.context
                        ),
                    });
                } else if !contexts.contains_key(&include.context) {
                    unsupported.push(Unsupported {
                        location: include.location.clone(),
                        message: format!("include => {}: no such context", include.context),
                    });
                }
            }
            for switch in &ctx.switches {
                unsupported.push(Unsupported {
                    location: switch.location.clone(),
                    message: format!("{} => is not supported", switch.name),
                });
            }
        }
        unsupported.sort_by(|a, b| {
            (a.location.file.as_ref(), a.location.line)
                .cmp(&(b.location.file.as_ref(), b.location.line))
        });
        Arc::new(Self {
            contexts,
            globals: plan
                .globals
                .iter()
                .map(|g| (g.name.clone(), g.value.clone()))
                .collect(),
            unsupported,
        })
    }

    /// Every line the router cannot run, with `file:line`, in file order.
    pub fn check(&self) -> &[Unsupported] {
        &self.unsupported
    }

    pub fn context(&self, name: &str) -> Option<&Context> {
        self.contexts.get(name)
    }

    /// The extension `number` reaches from `context` for a caller whose number is
    /// `caller_id`.
    pub fn find<'a>(&'a self, context: &str, number: &str, caller_id: &str) -> Option<Found<'a>> {
        let mut visited: Vec<&str> = Vec::new();
        self.find_in(context, number, caller_id, &mut visited, 0)
    }

    fn find_in<'a>(
        &'a self,
        context: &str,
        number: &str,
        caller_id: &str,
        visited: &mut Vec<&'a str>,
        depth: usize,
    ) -> Option<Found<'a>> {
        let ctx = self.contexts.get(context)?;
        if depth > MAX_INCLUDE_DEPTH || visited.contains(&ctx.name.as_str()) {
            return None;
        }
        visited.push(&ctx.name);
        if let Some(index) = ctx.find_own(number, caller_id) {
            return Some(Found {
                context: &ctx.name,
                index,
                extension: &ctx.extensions[index],
            });
        }
        for include in &ctx.includes {
            if let Some(found) = self.find_in(include, number, caller_id, visited, depth + 1) {
                return Some(found);
            }
        }
        None
    }
}

impl Context {
    fn find_own(&self, number: &str, caller_id: &str) -> Option<usize> {
        let cid_ok = |i: u32| {
            self.extensions[i as usize]
                .caller_id
                .as_ref()
                .is_none_or(|c| c.matches(caller_id))
        };
        if let Some(indices) = self.plain.get(normalize(number).as_ref()) {
            if let Some(&i) = indices.iter().find(|&&i| cid_ok(i)) {
                return Some(i as usize);
            }
        }
        self.patterns.find(number, |i| {
            self.extensions[i as usize].pattern.matches(number) && cid_ok(i)
        })
    }

    pub fn extensions(&self) -> &[Extension] {
        &self.extensions
    }
}

fn compile_context(ctx: &ast::Context, unsupported: &mut Vec<Unsupported>) -> Context {
    // Group lines by (extension, caller ID) as written.
    type Key = (String, Option<String>);
    let mut groups: Vec<(Key, Vec<&ast::ExtensionLine>)> = Vec::new();
    for line in &ctx.lines {
        if line.priority == Priority::Hint {
            continue;
        }
        let key = (line.extension.clone(), line.caller_id.clone());
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, lines)) => lines.push(line),
            None => groups.push((key, vec![line])),
        }
    }
    let mut extensions = Vec::new();
    for ((name, cid), lines) in groups {
        let location = lines[0].location.clone();
        let pattern = match Pattern::parse(&name) {
            Ok(p) => p,
            Err(e) => {
                unsupported.push(Unsupported {
                    location,
                    message: format!("extension '{name}': {e}; it never matches"),
                });
                continue;
            }
        };
        let caller_id = match cid.as_deref().map(Pattern::parse).transpose() {
            Ok(c) => c,
            Err(e) => {
                unsupported.push(Unsupported {
                    location,
                    message: format!(
                        "caller ID match '{}': {e}; it never matches",
                        cid.unwrap_or_default()
                    ),
                });
                continue;
            }
        };
        let mut steps: Vec<Step> = lines
            .iter()
            .filter_map(|line| {
                let Priority::Number(priority) = line.priority else {
                    return None;
                };
                let app = App::from_name(&line.application);
                if let App::Unsupported = app {
                    unsupported.push(Unsupported {
                        location: line.location.clone(),
                        message: format!(
                            "application {}() is not supported; a call reaching it is hung up",
                            line.application
                        ),
                    });
                }
                for function in unsupported_functions(&line.arguments) {
                    unsupported.push(Unsupported {
                        location: line.location.clone(),
                        message: format!(
                            "function {function}() is not supported; it reads as empty"
                        ),
                    });
                }
                for message in unrunnable_arguments(&line.application, &line.arguments) {
                    unsupported.push(Unsupported {
                        location: line.location.clone(),
                        message,
                    });
                }
                Some(Step {
                    priority,
                    label: line.label.clone(),
                    app,
                    app_name: line.application.clone(),
                    args: line.arguments.clone(),
                    location: line.location.clone(),
                })
            })
            .collect();
        steps.sort_by_key(|s| s.priority);
        extensions.push(Extension {
            pattern,
            caller_id,
            steps,
        });
    }
    extensions.sort_by(|a, b| {
        a.pattern
            .cmp_specificity(&b.pattern)
            .then_with(|| match (&a.caller_id, &b.caller_id) {
                (Some(x), Some(y)) => x.cmp_specificity(y),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            })
    });

    let mut plain: HashMap<String, Vec<u32>> = HashMap::new();
    let mut patterns = PatternIndex::default();
    for (i, e) in extensions.iter().enumerate() {
        let i = i as u32;
        match e.pattern.plain() {
            Some(name) => plain.entry(name.to_owned()).or_default().push(i),
            None => patterns.insert(i, &e.pattern),
        }
    }
    Context {
        name: ctx.name.clone(),
        extensions,
        plain,
        patterns,
        includes: ctx
            .includes
            .iter()
            .filter(|i| i.timespec.is_none())
            .map(|i| i.context.clone())
            .collect(),
    }
}

/// Functions named in `${NAME(` that the router cannot evaluate (writable-only ones such
/// as `TIMEOUT` count as supported).
/// What a supported application is given that the router cannot do as Asterisk would:
/// `Set()` of a function it does not write (the line is logged and skipped at run
/// time), `Dial()` to a technology other than SIP (the Dial fails).
fn unrunnable_arguments(application: &str, args: &str) -> Vec<String> {
    let mut found = Vec::new();
    if application.eq_ignore_ascii_case("Set") || application.eq_ignore_ascii_case("MSet") {
        for assignment in top_level_split(args, ',') {
            let Some((name, _)) = assignment.split_once('=') else {
                continue;
            };
            let name = name.trim().trim_start_matches('_');
            let Some(open) = name.find('(') else {
                continue;
            };
            let function = &name[..open];
            let upper = function.to_ascii_uppercase();
            if !function.is_empty()
                && !function.contains('$')
                && !crate::apps::WRITABLE_FUNCTIONS.contains(&upper.as_str())
            {
                found.push(format!(
                    "Set({function}(...)=...): the router does not write {function}(); the line is skipped"
                ));
            }
        }
    }
    if application.eq_ignore_ascii_case("Dial") {
        let targets = top_level_split(args, ',').into_iter().next().unwrap_or("");
        for target in top_level_split(targets, '&') {
            let tech = target.split('/').next().unwrap_or("").trim();
            if target.contains('/') && !tech.eq_ignore_ascii_case("SIP") && !tech.contains('$') {
                found.push(format!(
                    "Dial({tech}/...): only SIP channels can be dialled here; that target fails"
                ));
            }
        }
    }
    found
}

/// `text` split at `sep` outside parentheses, brackets and `${...}`.
fn top_level_split(text: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            c if c == sep && depth <= 0 => {
                parts.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn unsupported_functions(args: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = args;
    while let Some(i) = rest.find("${") {
        rest = &rest[i + 2..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if rest[name.len()..].starts_with('(') {
            let upper = name.to_ascii_uppercase();
            if !crate::subst::READABLE_FUNCTIONS.contains(&upper.as_str())
                && !crate::apps::WRITABLE_FUNCTIONS.contains(&upper.as_str())
                && !found.contains(&name)
            {
                found.push(name);
            }
        }
    }
    found
}

/// How many leading bytes of a number the pattern index looks at.
const INDEX_DEPTH: usize = 6;
/// The most prefixes one pattern is filed under; a pattern whose leading positions
/// allow more is filed under a shorter prefix.
const INDEX_FANOUT: usize = 1000;

/// Patterns filed by the bytes a matching number must start with.
///
/// A pattern is filed at depth `d` under every `d`-byte prefix its first `d` positions
/// allow, `d` as large as possible up to [`INDEX_DEPTH`] without stopping at `.`/`!`
/// and without more than [`INDEX_FANOUT`] prefixes (`_1323NXXXXXX` under `132`.. at
/// depth 6 as 8 prefixes; `_X.` at depth 1 as 10; `_.` at depth 0, everywhere). To find
/// a number, look up its first 0, 1, ... 6 bytes, one list per depth; each list is in
/// Asterisk's order, so the answer is the lowest-ranked match among the lists' first
/// matches. That is exactly the first match of the whole ordered list.
#[derive(Debug, Default)]
struct PatternIndex {
    /// depth -> prefix (packed in a u64) -> pattern indices, ascending.
    levels: [HashMap<u64, Vec<u32>, PrefixHasher>; INDEX_DEPTH + 1],
}

impl PatternIndex {
    fn insert(&mut self, index: u32, pattern: &Pattern) {
        let mut sets = pattern.leading_sets(INDEX_DEPTH);
        while sets.iter().map(Vec::len).product::<usize>() > INDEX_FANOUT {
            sets.pop();
        }
        let depth = sets.len();
        let mut prefixes: Vec<u64> = vec![0];
        for set in &sets {
            prefixes = prefixes
                .iter()
                .flat_map(|p| set.iter().map(move |&b| (p << 8) | u64::from(b)))
                .collect();
        }
        for prefix in prefixes {
            // Indices arrive in ascending order, so every list stays sorted.
            self.levels[depth].entry(prefix).or_default().push(index);
        }
    }

    fn find(&self, number: &str, matches: impl Fn(u32) -> bool) -> Option<usize> {
        let mut best = u32::MAX;
        let mut prefix = 0u64;
        let mut bytes = number.bytes().filter(|&b| b != b' ' && b != b'-');
        for (depth, level) in self.levels.iter().enumerate() {
            if depth > 0 {
                match bytes.next() {
                    Some(b) => prefix = (prefix << 8) | u64::from(b),
                    None => break,
                }
            }
            if level.is_empty() {
                continue;
            }
            if let Some(list) = level.get(&prefix) {
                if let Some(&i) = list
                    .iter()
                    .take_while(|&&i| i < best)
                    .find(|&&i| matches(i))
                {
                    best = i;
                }
            }
        }
        (best != u32::MAX).then_some(best as usize)
    }
}

/// A multiplicative hash for the packed prefixes (the default SipHash costs more than
/// the rest of a lookup; the keys come from the dialplan, not from callers' choice of
/// many keys).
#[derive(Debug, Default, Clone, Copy)]
struct PrefixHasher;

impl std::hash::BuildHasher for PrefixHasher {
    type Hasher = PrefixHash;
    fn build_hasher(&self) -> PrefixHash {
        PrefixHash(0)
    }
}

#[derive(Debug)]
struct PrefixHash(u64);

impl std::hash::Hasher for PrefixHash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use asterisk_conf::fuzzing::XorShift;

    /// The index finds exactly what a scan of the whole ordered list finds.
    #[test]
    fn the_index_agrees_with_a_linear_scan() {
        let pieces = [
            "1", "2", "9", "0", "X", "N", "Z", "[2-4]", "[13,7]", "*", "#", "+",
        ];
        let ends = ["", "", ".", "!"];
        let mut rng = XorShift(7);
        for round in 0..40 {
            let mut text = String::from("[c]\n");
            let mut seen = std::collections::HashSet::new();
            for _ in 0..(20 + round * 5) {
                let len = 1 + rng.next_u64() % 8;
                let mut pattern = String::from("_");
                for _ in 0..len {
                    pattern.push_str(rng.pick(&pieces));
                }
                pattern.push_str(rng.pick(&ends));
                if seen.insert(pattern.clone()) {
                    text.push_str(&format!("exten => {pattern},1,NoOp()\n"));
                }
            }
            text.push_str("exten => 911,1,NoOp()\n");
            if seen.insert("_!".into()) {
                text.push_str("exten => _!,1,NoOp()\n");
            }
            let ast = asterisk_conf::extensions::from_config(
                asterisk_conf::parse_str("x.conf", &text).unwrap(),
            )
            .unwrap();
            let plan = Dialplan::compile(&ast);
            let ctx = plan.context("c").unwrap();
            let digits = ["0", "1", "2", "3", "4", "7", "9", "*", "#", "+"];
            for _ in 0..300 {
                let len = rng.next_u64() % 10;
                let number: String = (0..len).map(|_| rng.pick(&digits)).collect();
                let expected = ctx
                    .extensions
                    .iter()
                    .position(|e| e.pattern.matches(&number));
                assert_eq!(ctx.find_own(&number, ""), expected, "{number:?} in\n{text}");
            }
        }
    }
}
