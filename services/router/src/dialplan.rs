//! The dialplan compiled for lookup: per context, plain extensions in a hash map and
//! patterns in Asterisk's order, indexed by the first character they can match, so that
//! finding the extension for a number costs a hash lookup and a scan of the few
//! patterns that can start with its first digit.
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
    /// First byte -> indices of patterns that can start with it, in order.
    by_first_byte: Vec<Vec<u32>>,
    /// Patterns that match the empty number.
    empty: Vec<u32>,
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
        let candidates = match number.bytes().find(|&b| b != b' ' && b != b'-') {
            Some(first) => &self.by_first_byte[usize::from(first)],
            None => &self.empty,
        };
        candidates
            .iter()
            .find(|&&i| self.extensions[i as usize].pattern.matches(number) && cid_ok(i))
            .map(|&i| i as usize)
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
    let mut by_first_byte = vec![Vec::new(); 256];
    let mut empty = Vec::new();
    for (i, e) in extensions.iter().enumerate() {
        let i = i as u32;
        if let Some(name) = e.pattern.plain() {
            plain.entry(name.to_owned()).or_default().push(i);
            continue;
        }
        let (first, matches_empty) = e.pattern.first_bytes();
        if let Some(set) = first {
            for (b, bucket) in by_first_byte.iter_mut().enumerate() {
                if set[b >> 6] & (1u64 << (b & 63)) != 0 {
                    bucket.push(i);
                }
            }
        }
        if matches_empty {
            empty.push(i);
        }
    }
    Context {
        name: ctx.name.clone(),
        extensions,
        plain,
        by_first_byte,
        empty,
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
