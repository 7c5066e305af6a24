//! `extensions.conf` to a dialplan AST, as pbx_config reads it: `[general]`, `[globals]`
//! and contexts of `exten =>`, `same =>`, `include =>`, `ignorepat =>` and `switch =>`
//! lines. Every item keeps the file and line it came from, for error messages and for
//! the router's traces.
//!
//! Priorities are resolved here as pbx_config does: `n` is the previous line's priority
//! plus one, `s` (or `same`) is the previous line's priority, and a label written
//! `n(name)` is attached to the resolved number. The previous line is the previous
//! `exten`/`same` line of the same context section, whatever its extension.
//!
//! Sections with the same name are one context, as `ast_context_find_or_create` merges
//! them. Deviations (pbx_config logs these and skips the line; we refuse the file): a
//! `same =>` or an `n` priority with no line before it, a priority given twice for one
//! extension, and unbalanced `[...]` in a pattern are errors.

use std::path::Path;

use crate::error::{Error, Location, SyntaxError, Warning};
use crate::tree::{self, Config, Entry, Source};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dialplan {
    /// `[general]` settings (`static`, `writeprotect`, `autofallthrough`, ...).
    pub general: Vec<Setting>,
    /// `[globals]` variables, in order.
    pub globals: Vec<Setting>,
    pub contexts: Vec<Context>,
    pub warnings: Vec<Warning>,
}

impl Dialplan {
    pub fn context(&self, name: &str) -> Option<&Context> {
        self.contexts.iter().find(|c| c.name == name)
    }

    /// The value of a `[general]` setting, if set (last one wins).
    pub fn general(&self, key: &str) -> Option<&str> {
        self.general
            .iter()
            .rev()
            .find(|s| s.name.eq_ignore_ascii_case(key))
            .map(|s| s.value.as_str())
    }
}

/// A `name=value` line of `[general]` or `[globals]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub name: String,
    pub value: String,
    pub location: Location,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    pub name: String,
    pub location: Location,
    /// `include =>` lines, in order: searched after the context's own extensions.
    pub includes: Vec<Include>,
    pub lines: Vec<ExtensionLine>,
    pub ignore_patterns: Vec<Setting>,
    /// `switch =>`, `lswitch =>`, `eswitch =>` lines (kept, not run).
    pub switches: Vec<Setting>,
}

impl Context {
    /// The lines of one extension as written (pattern and caller ID match included),
    /// sorted by priority.
    pub fn extension<'a>(&'a self, extension: &'a str) -> Vec<&'a ExtensionLine> {
        let mut lines: Vec<_> = self
            .lines
            .iter()
            .filter(|l| l.extension == extension)
            .collect();
        lines.sort_by_key(|l| l.priority);
        lines
    }
}

/// `include => context` or `include => context,timespec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    pub context: String,
    /// The time restriction (`9:00-17:00,mon-fri,*,*`), kept as written.
    pub timespec: Option<String>,
    pub location: Location,
}

/// The priority of a line once `n` and `s` are resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    Number(u32),
    /// `exten => 100,hint,SIP/100`: a device state hint, not a step of the dialplan.
    Hint,
}

/// How the priority was written, for messages that quote the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WrittenPriority {
    Number(u32),
    Next,
    Same,
    Hint,
}

/// One `exten =>` or `same =>` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionLine {
    /// The extension as written: `911`, `s`, `_1NXXNXXXXXX`.
    pub extension: String,
    /// The caller ID match after `/`: `exten => 123/5551234,...`.
    pub caller_id: Option<String>,
    pub priority: Priority,
    pub written_priority: WrittenPriority,
    pub label: Option<String>,
    /// The application name as written: `Dial`, `NoOp`.
    pub application: String,
    /// Everything between the application's parentheses, unexpanded.
    pub arguments: String,
    /// Written as `same =>`.
    pub same: bool,
    pub location: Location,
}

/// Reads `extensions.conf` from the file system.
pub fn load(path: impl AsRef<Path>) -> Result<Dialplan, Error> {
    from_config(tree::load(path)?)
}

/// Reads `extensions.conf` from `source`.
pub fn load_from(source: &dyn Source, path: &Path) -> Result<Dialplan, Error> {
    from_config(tree::load_from(source, path)?)
}

/// Builds the dialplan of an already parsed file.
pub fn from_config(config: Config) -> Result<Dialplan, Error> {
    let mut plan = Dialplan {
        warnings: config.warnings.clone(),
        ..Dialplan::default()
    };
    for section in config.sections.iter().filter(|s| !s.is_template) {
        match section.name.as_str() {
            "general" => plan.general.extend(section.entries.iter().map(setting)),
            "globals" => plan.globals.extend(section.entries.iter().map(setting)),
            name => {
                let index = match plan.contexts.iter().position(|c| c.name == name) {
                    Some(i) => i,
                    None => {
                        plan.contexts.push(Context {
                            name: name.to_owned(),
                            location: section.location.clone(),
                            includes: Vec::new(),
                            lines: Vec::new(),
                            ignore_patterns: Vec::new(),
                            switches: Vec::new(),
                        });
                        plan.contexts.len() - 1
                    }
                };
                let mut state = SectionState::default();
                for entry in &section.entries {
                    add_entry(
                        &mut plan.contexts[index],
                        entry,
                        &mut state,
                        &mut plan.warnings,
                    )?;
                }
            }
        }
    }
    check_includes(&mut plan);
    Ok(plan)
}

fn setting(entry: &Entry) -> Setting {
    Setting {
        name: entry.key.clone(),
        value: entry.value.clone(),
        location: entry.location.clone(),
    }
}

/// pbx_config's `lastpri` and last extension, reset at each section header.
#[derive(Default)]
struct SectionState {
    last_extension: Option<(String, Option<String>)>,
    last_priority: Option<u32>,
}

fn add_entry(
    context: &mut Context,
    entry: &Entry,
    state: &mut SectionState,
    warnings: &mut Vec<Warning>,
) -> Result<(), Error> {
    let err = |message: String| Error::syntax(&entry.location, SyntaxError::Dialplan(message));
    match entry.key.to_ascii_lowercase().as_str() {
        "exten" | "same" => {
            let same = entry.key.eq_ignore_ascii_case("same");
            let line = parse_extension_line(entry, same, state).map_err(err)?;
            if let Some(existing) = context.lines.iter().find(|l| {
                l.extension == line.extension
                    && l.caller_id == line.caller_id
                    && l.priority == line.priority
            }) {
                return Err(err(format!(
                    "extension '{}' priority {} is already defined at {}",
                    line.extension,
                    priority_text(line.priority),
                    existing.location
                )));
            }
            if let Some(label) = &line.label {
                if let Some(existing) = context.lines.iter().find(|l| {
                    l.extension == line.extension
                        && l.caller_id == line.caller_id
                        && l.label.as_deref() == Some(label)
                }) {
                    return Err(err(format!(
                        "label '{label}' of extension '{}' is already used at {}",
                        line.extension, existing.location
                    )));
                }
            }
            context.lines.push(line);
        }
        "include" => {
            let (name, timespec) = match entry.value.split_once(',') {
                Some((name, spec)) => (name.trim(), Some(spec.trim().to_owned())),
                None => (entry.value.trim(), None),
            };
            if name.is_empty() {
                return Err(err("include => needs a context name".into()));
            }
            context.includes.push(Include {
                context: name.to_owned(),
                timespec,
                location: entry.location.clone(),
            });
        }
        "ignorepat" => context.ignore_patterns.push(setting(entry)),
        "switch" | "lswitch" | "eswitch" => {
            warnings.push(Warning {
                location: entry.location.clone(),
                message: format!("{} => is kept but not run", entry.key),
            });
            context.switches.push(setting(entry));
        }
        _ => warnings.push(Warning {
            location: entry.location.clone(),
            message: format!(
                "unknown line '{} =>' in context [{}] ignored",
                entry.key, context.name
            ),
        }),
    }
    Ok(())
}

fn parse_extension_line(
    entry: &Entry,
    same: bool,
    state: &mut SectionState,
) -> Result<ExtensionLine, String> {
    let value = entry.value.as_str();
    let (extension, caller_id, rest) = if same {
        let Some((extension, caller_id)) = state.last_extension.clone() else {
            return Err("'same =>' with no 'exten =>' line before it in this context".into());
        };
        (extension, caller_id, value)
    } else {
        let end = field_end(value)?;
        let field = value[..end].trim();
        let rest = value.get(end + 1..).unwrap_or("");
        let (extension, caller_id) = match field.split_once('/') {
            Some((e, cid)) => (e.trim(), Some(cid.trim().to_owned())),
            None => (field, None),
        };
        if extension.is_empty() {
            return Err("extension is empty".into());
        }
        (extension.to_owned(), caller_id, rest)
    };

    let Some((priority_field, app_field)) = rest.split_once(',') else {
        if rest.trim().is_empty() {
            return Err("line has no priority and application".into());
        }
        return Err(format!("no application after priority '{}'", rest.trim()));
    };
    let (written, label) = parse_priority(priority_field.trim())?;
    let priority = match written {
        WrittenPriority::Number(0) => return Err("priorities start at 1".into()),
        WrittenPriority::Number(n) => Priority::Number(n),
        WrittenPriority::Hint => Priority::Hint,
        WrittenPriority::Next => match state.last_priority {
            Some(p) => Priority::Number(p + 1),
            None => {
                return Err("priority 'n' on the first line of a context: nothing to follow".into())
            }
        },
        WrittenPriority::Same => match state.last_priority {
            Some(p) => Priority::Number(p),
            None => return Err("priority 's' on the first line of a context".into()),
        },
    };
    // A hint's third field is a device (`SIP/100`), not an application call.
    let (application, arguments) = if priority == Priority::Hint {
        (app_field.trim().to_owned(), String::new())
    } else {
        parse_application(app_field.trim())?
    };
    if let Priority::Number(p) = priority {
        state.last_priority = Some(p);
    }
    state.last_extension = Some((extension.clone(), caller_id.clone()));
    Ok(ExtensionLine {
        extension,
        caller_id,
        priority,
        written_priority: written,
        label,
        application,
        arguments,
        same,
        location: entry.location.clone(),
    })
}

/// The end of the extension field: the first comma outside `[...]`, because character
/// classes may hold commas (`_[1-5,7]XX`).
fn field_end(value: &str) -> Result<usize, String> {
    let mut depth = 0usize;
    for (i, c) in value.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| "']' without '[' in extension".to_owned())?
            }
            ',' if depth == 0 => return Ok(i),
            _ => {}
        }
    }
    if depth > 0 {
        Err("'[' without ']' in extension".into())
    } else {
        Err("line has no priority and application".into())
    }
}

fn parse_priority(text: &str) -> Result<(WrittenPriority, Option<String>), String> {
    let (base, label) = match text.split_once('(') {
        Some((base, rest)) => {
            let Some(label) = rest.strip_suffix(')') else {
                return Err(format!("label in priority '{text}' has no closing ')'"));
            };
            let label = label.trim();
            if label.is_empty() || label.contains([',', '(', ')']) {
                return Err(format!("bad label in priority '{text}'"));
            }
            (base.trim(), Some(label.to_owned()))
        }
        None => (text, None),
    };
    let written = match base.to_ascii_lowercase().as_str() {
        "n" | "next" => WrittenPriority::Next,
        "s" | "same" => WrittenPriority::Same,
        "hint" => WrittenPriority::Hint,
        digits => WrittenPriority::Number(
            digits
                .parse()
                .map_err(|_| format!("priority '{text}' is not a number, n, s or hint"))?,
        ),
    };
    if written == WrittenPriority::Hint && label.is_some() {
        return Err("a hint has no label".into());
    }
    Ok((written, label))
}

/// `App(args)`, `App()`, `App`, or the old `App,args`.
fn parse_application(text: &str) -> Result<(String, String), String> {
    if text.is_empty() {
        return Err("application is missing".into());
    }
    let (name, arguments) = match text.find(['(', ',']) {
        Some(i) if text[i..].starts_with('(') => {
            let Some(inner) = text[i + 1..].trim_end().strip_suffix(')') else {
                return Err(format!(
                    "application '{}' has no closing ')'",
                    text[..i].trim()
                ));
            };
            (&text[..i], inner)
        }
        Some(i) => (&text[..i], &text[i + 1..]),
        None => (text, ""),
    };
    let name = name.trim();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("'{name}' is not an application name"));
    }
    Ok((name.to_owned(), arguments.to_owned()))
}

fn priority_text(priority: Priority) -> String {
    match priority {
        Priority::Number(n) => n.to_string(),
        Priority::Hint => "hint".into(),
    }
}

fn check_includes(plan: &mut Dialplan) {
    let names: Vec<String> = plan.contexts.iter().map(|c| c.name.clone()).collect();
    for context in &plan.contexts {
        for include in &context.includes {
            if !names.contains(&include.context) {
                plan.warnings.push(Warning {
                    location: include.location.clone(),
                    message: format!(
                        "[{}] includes context '{}', which does not exist",
                        context.name, include.context
                    ),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Dialplan, Error> {
        from_config(tree::parse_str("extensions.conf", text)?)
    }

    #[test]
    fn priorities_labels_and_same() {
        let plan = parse(
            "[c]\nexten => 100,1,Answer()\n same => n(menu),Playback(hello)\n same => s,NoOp(also 2? no: same as last)\n",
        );
        // `s` repeats priority 2 for the same extension: that is a duplicate.
        assert!(plan
            .unwrap_err()
            .to_string()
            .contains("priority 2 is already defined at extensions.conf:3"));
        let plan = parse(
            "[c]\nexten => 100,1,Answer()\n same => n(menu),Playback(hello)\n same => n,Goto(menu)\nexten => 100,hint,SIP/100\n",
        )
        .unwrap();
        let lines = plan.context("c").unwrap().extension("100");
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[1].priority, Priority::Number(2));
        assert_eq!(lines[1].label.as_deref(), Some("menu"));
        assert_eq!(lines[2].priority, Priority::Number(3));
        assert_eq!(lines[3].priority, Priority::Hint);
        assert_eq!(lines[3].application, "SIP/100");
    }

    #[test]
    fn applications_in_every_spelling() {
        let plan = parse(
            "[c]\nexten => 1,1,Hangup\nexten => 2,1,Dial,SIP/a,20\nexten => 3,1,Set(X=(a,b))\nexten => 4 , 1 , NoOp( spaced )\n",
        )
        .unwrap();
        let c = plan.context("c").unwrap();
        let app = |e: &str| {
            let l = c.extension(e)[0];
            (l.application.clone(), l.arguments.clone())
        };
        assert_eq!(app("1"), ("Hangup".into(), "".into()));
        assert_eq!(app("2"), ("Dial".into(), "SIP/a,20".into()));
        assert_eq!(app("3"), ("Set".into(), "X=(a,b)".into()));
        assert_eq!(app("4"), ("NoOp".into(), " spaced ".into()));
    }

    #[test]
    fn patterns_with_commas_and_caller_id() {
        let plan = parse("[c]\nexten => _[1-5,7]XX/_256NXXXXXX,1,NoOp()\n").unwrap();
        let line = &plan.context("c").unwrap().lines[0];
        assert_eq!(line.extension, "_[1-5,7]XX");
        assert_eq!(line.caller_id.as_deref(), Some("_256NXXXXXX"));
    }

    #[test]
    fn includes_globals_and_merged_sections() {
        let plan = parse(
            "[globals]\nTRUNK=flowroute\n[general]\nautofallthrough=yes\n[a]\ninclude => b\ninclude => c,9:00-17:00,mon-fri,*,*\nexten => 1,1,NoOp()\n[b]\nexten => 2,1,NoOp()\n[a]\nexten => 3,1,NoOp()\n",
        )
        .unwrap();
        assert_eq!(plan.globals[0].name, "TRUNK");
        assert_eq!(plan.globals[0].value, "flowroute");
        assert_eq!(plan.general("autofallthrough"), Some("yes"));
        let a = plan.context("a").unwrap();
        assert_eq!(a.includes.len(), 2);
        assert_eq!(
            a.includes[1].timespec.as_deref(),
            Some("9:00-17:00,mon-fri,*,*")
        );
        assert_eq!(a.lines.len(), 2, "the second [a] merges into the first");
        assert!(plan
            .warnings
            .iter()
            .any(|w| w.message.contains("includes context 'c'") && w.location.line == 7));
    }

    #[test]
    fn broken_lines_are_errors_with_location() {
        for (text, expected) in [
            ("[c]\nsame => n,NoOp()\n", "extensions.conf:2: 'same =>' with no 'exten =>' line before it in this context"),
            ("[c]\nexten => 1,n,NoOp()\n", "extensions.conf:2: priority 'n' on the first line of a context: nothing to follow"),
            ("[c]\nexten => 1,one,NoOp()\n", "extensions.conf:2: priority 'one' is not a number, n, s or hint"),
            ("[c]\nexten => 1,0,NoOp()\n", "extensions.conf:2: priorities start at 1"),
            ("[c]\nexten => 1,1,Dial(SIP/a\n", "extensions.conf:2: application 'Dial' has no closing ')'"),
            ("[c]\nexten => _[12X,1,NoOp()\n", "extensions.conf:2: '[' without ']' in extension"),
            ("[c]\nexten => 1\n", "extensions.conf:2: line has no priority and application"),
            ("[c]\nexten => 1,1\n", "extensions.conf:2: no application after priority '1'"),
            ("[c]\nexten => 1,1,\n", "extensions.conf:2: application is missing"),
            ("[c]\nexten => ,1,NoOp()\n", "extensions.conf:2: extension is empty"),
            ("[c]\nexten => 1,1(a,NoOp()\n", "extensions.conf:2: label in priority '1(a' has no closing ')'"),
            ("[c]\nexten => 1,1(x),NoOp()\nexten => 1,2(x),NoOp()\n", "extensions.conf:3: label 'x' of extension '1' is already used at extensions.conf:2"),
        ] {
            assert_eq!(parse(text).unwrap_err().to_string(), expected, "{text}");
        }
    }
}
