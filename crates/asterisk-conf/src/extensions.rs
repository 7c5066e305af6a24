//! `extensions.conf` to a dialplan AST, as pbx_config reads it: `[general]`, `[globals]`
//! and contexts of `exten =>`, `same =>`, `include =>`, `ignorepat =>` and `switch =>`
//! lines. Every item keeps the file and line it came from, for error messages and for
//! the router's traces.
//!
//! Priorities are resolved here as pbx_config does: `n` is the previous line's priority
//! plus one, `s` (or `same`) is the previous line's priority, a name is the priority of
//! that label in the same extension, and any of them may add `+N` (`n+1`, `n+101`,
//! `busy+101`); a label written `n(name)` is attached to the resolved number. The
//! previous line is the previous `exten`/`same` line of the same context section,
//! whatever its extension. `${NAME}` in an extension is replaced by the `[globals]`
//! variable, as pbx_config substitutes it. The application's arguments run to the
//! last `)`; what follows it is dropped.
//!
//! Sections with the same name are one context, as `ast_context_find_or_create` merges
//! them. Where pbx_config logs a line and skips it, so do we, with a warning naming the
//! file and line: a `same =>` with no line before it, an `n` or `s` priority on the
//! first line, a priority or label that is not one, a priority or a label given twice
//! for one extension (the later line is skipped), a label without its `)`, an empty
//! application.

use std::path::Path;

use crate::error::{Error, Location, Warning};
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
    /// A label of the same extension (`busy+101`).
    Label,
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
    // pbx_config reads [globals] first: extensions may name its variables.
    for section in config.sections.iter().filter(|s| !s.is_template) {
        if section.name.eq_ignore_ascii_case("globals") {
            plan.globals.extend(section.entries.iter().map(setting));
        }
    }
    for section in config.sections.iter().filter(|s| !s.is_template) {
        match section.name.as_str() {
            "general" => plan.general.extend(section.entries.iter().map(setting)),
            name if name.eq_ignore_ascii_case("globals") => {}
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
                        &plan.globals,
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
    globals: &[Setting],
    warnings: &mut Vec<Warning>,
) -> Result<(), Error> {
    let mut skip = |message: String| {
        warnings.push(Warning {
            location: entry.location.clone(),
            message: format!("{message}; line ignored"),
        })
    };
    match entry.key.to_ascii_lowercase().as_str() {
        "exten" | "same" => {
            let same = entry.key.eq_ignore_ascii_case("same");
            let mut notes = Vec::new();
            let line =
                match parse_extension_line(entry, same, state, &context.lines, globals, &mut notes)
                {
                    Ok(line) => line,
                    Err(message) => {
                        skip(message);
                        return Ok(());
                    }
                };
            warnings.extend(notes.into_iter().map(|message| Warning {
                location: entry.location.clone(),
                message,
            }));
            // ast_add_extension2 refuses a priority or a label already in use: the
            // later line is the one that goes.
            if let Some(existing) = context.lines.iter().find(|l| {
                l.extension == line.extension
                    && l.caller_id == line.caller_id
                    && l.priority == line.priority
            }) {
                let message = format!(
                    "extension '{}' priority {} is already defined at {}",
                    line.extension,
                    priority_text(line.priority),
                    existing.location
                );
                warnings.push(Warning {
                    location: entry.location.clone(),
                    message: format!("{message}; line ignored"),
                });
                return Ok(());
            }
            if let Some(label) = &line.label {
                if let Some(existing) = context.lines.iter().find(|l| {
                    l.extension == line.extension
                        && l.caller_id == line.caller_id
                        && l.label.as_deref() == Some(label)
                }) {
                    let message = format!(
                        "label '{label}' of extension '{}' is already used at {}",
                        line.extension, existing.location
                    );
                    warnings.push(Warning {
                        location: entry.location.clone(),
                        message: format!("{message}; line ignored"),
                    });
                    return Ok(());
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
                // ast_context_add_include2 refuses it with a warning; the file loads.
                skip("include => needs a context name".into());
                return Ok(());
            }
            context.includes.push(Include {
                context: name.to_owned(),
                timespec,
                location: entry.location.clone(),
            });
        }
        "ignorepat" => context.ignore_patterns.push(setting(entry)),
        // Kept; whether they run is the router's to say (its --check-dialplan does).
        "switch" | "lswitch" | "eswitch" => context.switches.push(setting(entry)),
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
    lines: &[ExtensionLine],
    globals: &[Setting],
    notes: &mut Vec<String>,
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
        let field = substitute_globals(field, globals);
        let (extension, caller_id) = match field.split_once('/') {
            Some((e, cid)) => (e.trim().to_owned(), Some(cid.trim().to_owned())),
            None => (field.clone(), None),
        };
        if extension.is_empty() {
            return Err("extension is empty".into());
        }
        (extension, caller_id, rest)
    };

    let (priority_field, app_field) = match rest.split_once(',') {
        Some((priority, app)) => (priority.trim(), app),
        None => (rest.trim(), ""),
    };
    if priority_field.is_empty() {
        return Err("line has no priority and application".into());
    }
    let (written, label, priority) = resolve_priority(
        priority_field,
        state,
        lines,
        &extension,
        caller_id.as_deref(),
    )?;
    // A hint's third field is a device (`SIP/100`), not an application call.
    let (application, arguments) = if priority == Priority::Hint {
        (app_field.trim().to_owned(), String::new())
    } else {
        parse_application(app_field.trim(), notes)?
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

/// `${NAME}` in an extension replaced by the `[globals]` variable (empty if none), as
/// pbx_config substitutes the extension field before it adds the line.
fn substitute_globals(field: &str, globals: &[Setting]) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let name = after[..end].trim();
        if let Some(value) = globals.iter().rev().find(|g| g.name == name) {
            out.push_str(&value.value);
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// A priority as pbx_config reads it: an optional `(label)`, then `hint`, `n`/`next`,
/// `s`/`same`, a number or a label of the same extension, then an optional `+N`.
fn resolve_priority(
    text: &str,
    state: &SectionState,
    lines: &[ExtensionLine],
    extension: &str,
    caller_id: Option<&str>,
) -> Result<(WrittenPriority, Option<String>, Priority), String> {
    let (base, label) = match text.split_once('(') {
        Some((base, rest)) => {
            let Some(end) = rest.find(')') else {
                return Err(format!("label missing trailing ')' in priority '{text}'"));
            };
            let label = rest[..end].trim();
            (base.trim(), (!label.is_empty()).then(|| label.to_owned()))
        }
        None => (text, None),
    };
    let (base, plus) = match base.split_once('+') {
        Some((base, plus)) => (base.trim(), Some(plus.trim())),
        None => (base.trim(), None),
    };
    let first = |what: &str| {
        format!("priority '{base}' ({what}) on the first line of a context: nothing to follow")
    };
    let (written, number) = match base.to_ascii_lowercase().as_str() {
        "hint" => {
            if label.is_some() {
                return Err("a hint has no label".into());
            }
            return Ok((WrittenPriority::Hint, None, Priority::Hint));
        }
        "n" | "next" => (
            WrittenPriority::Next,
            state
                .last_priority
                .map(|p| p + 1)
                .ok_or_else(|| first("next"))?,
        ),
        "s" | "same" => (
            WrittenPriority::Same,
            state.last_priority.ok_or_else(|| first("same"))?,
        ),
        _ => match leading_number(base) {
            Some(n) if n < 1 => {
                return Err(format!("invalid priority '{base}': priorities start at 1"))
            }
            Some(n) => (WrittenPriority::Number(n as u32), n as u32),
            None => {
                let found = lines.iter().find(|l| {
                    l.extension == extension
                        && l.caller_id.as_deref() == caller_id
                        && l.label.as_deref() == Some(base)
                });
                match found.map(|l| l.priority) {
                    Some(Priority::Number(n)) => (WrittenPriority::Label, n),
                    _ => {
                        return Err(format!(
                            "invalid priority/label '{base}': not a number, n, s, hint or a label of extension '{extension}' above"
                        ))
                    }
                }
            }
        },
    };
    let offset = plus.map_or(0, |p| leading_number(p).unwrap_or(0));
    let number = i64::from(number) + offset;
    let number = u32::try_from(number)
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| format!("invalid priority '{text}'"))?;
    Ok((written, label, Priority::Number(number)))
}

/// The integer at the start of `text` (`sscanf("%d")`): optional sign, digits.
fn leading_number(text: &str) -> Option<i64> {
    let text = text.trim_start();
    let (sign, digits) = match text.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, text.strip_prefix('+').unwrap_or(text)),
    };
    let end = digits.bytes().take_while(u8::is_ascii_digit).count();
    if end == 0 {
        return None;
    }
    digits[..end.min(9)].parse::<i64>().ok().map(|n| sign * n)
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

/// `App(args)`, `App()`, `App`, or the old `App,args`. As pbx_config reads it: the
/// arguments run from the first `(` to the last `)` (text after it is dropped, with a
/// note); a missing `)` takes the rest of the line, with a note; a name holding `${` or
/// `$[` is kept whole, with no arguments.
fn parse_application(text: &str, notes: &mut Vec<String>) -> Result<(String, String), String> {
    if text.is_empty() {
        return Err("application is missing".into());
    }
    let (name, arguments) = match text.find(['(', ',']) {
        Some(i) if text[i..].starts_with('(') => {
            let name = &text[..i];
            if name.contains("${") || name.contains("$[") {
                return Ok((text.to_owned(), String::new()));
            }
            let data = &text[i + 1..];
            match data.rfind(')') {
                Some(end) => {
                    let after = data[end + 1..].trim();
                    if !after.is_empty() {
                        notes.push(format!(
                            "text after the ')' of {}(...) dropped: '{after}'",
                            name.trim()
                        ));
                    }
                    (name, &data[..end])
                }
                None => {
                    notes.push(format!(
                        "no closing ')' for {}(...): its arguments run to the end of the line",
                        name.trim()
                    ));
                    (name, data)
                }
            }
        }
        Some(i) => (&text[..i], &text[i + 1..]),
        None => (text, ""),
    };
    let name = name.trim();
    if name.is_empty() {
        return Err("application is missing".into());
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
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
        // `s` repeats priority 2 for the same extension: a duplicate, skipped with a
        // warning as ast_add_extension2 refuses it.
        let plan = plan.unwrap();
        assert_eq!(plan.context("c").unwrap().lines.len(), 2);
        assert_eq!(
            plan.warnings[0].to_string(),
            "extensions.conf:4: warning: extension '100' priority 2 is already defined at extensions.conf:3; line ignored"
        );
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
    fn priorities_with_offsets_and_labels_as_pbx_config_reads_them() {
        let plan = parse(
            "[c]\nexten => 1,1,Dial(SIP/a)\n same => n+1(busy),Busy()\n same => n+101,NoOp(x)\nexten => 1,busy+101,Hangup()\n",
        )
        .unwrap();
        let lines = plan.context("c").unwrap().extension("1");
        let numbers: Vec<_> = lines.iter().map(|l| l.priority).collect();
        // n+1 after 1 is 3 (labelled busy); n+101 after it is 105; busy+101 is 104.
        assert_eq!(numbers, [1, 3, 104, 105].map(Priority::Number));
        assert_eq!(lines[1].label.as_deref(), Some("busy"));
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    }

    #[test]
    fn text_after_the_applications_parenthesis_is_dropped() {
        let plan = parse(
            "[c]\nexten => 1,1,Progress() \"comment\"\n same => n,Answer(),\n same => n,Gosub(x,s,1(${EXTEN}))${dept}\n same => n,Dial(SIP/a\n same => n,${APP}(x)\n",
        )
        .unwrap();
        let c = plan.context("c").unwrap();
        let apps: Vec<(&str, &str)> = c
            .lines
            .iter()
            .map(|l| (l.application.as_str(), l.arguments.as_str()))
            .collect();
        assert_eq!(
            apps,
            [
                ("Progress", ""),
                ("Answer", ""),
                ("Gosub", "x,s,1(${EXTEN})"),
                ("Dial", "SIP/a"),
                ("${APP}(x)", ""),
            ]
        );
        let notes: Vec<String> = plan.warnings.iter().map(|w| w.to_string()).collect();
        assert_eq!(
            notes,
            [
                "extensions.conf:2: warning: text after the ')' of Progress(...) dropped: '\"comment\"'",
                "extensions.conf:3: warning: text after the ')' of Answer(...) dropped: ','",
                "extensions.conf:4: warning: text after the ')' of Gosub(...) dropped: '${dept}'",
                "extensions.conf:5: warning: no closing ')' for Dial(...): its arguments run to the end of the line",
            ]
        );
    }

    #[test]
    fn extensions_name_globals() {
        let plan =
            parse("[globals]\nNODE=1234\nOC1=8\n[c]\nexten => ${NODE},1,NoOp()\nexten => ${OC1}9901,1,NoOp()\nexten => ${NONE}5,1,NoOp()\n")
                .unwrap();
        let names: Vec<&str> = plan
            .context("c")
            .unwrap()
            .lines
            .iter()
            .map(|l| l.extension.as_str())
            .collect();
        assert_eq!(names, ["1234", "89901", "5"]);
    }

    #[test]
    fn broken_lines_are_skipped_with_a_warning_as_pbx_config_does() {
        for (text, expected) in [
            ("[c]\nsame => n,NoOp()\n", "extensions.conf:2: warning: 'same =>' with no 'exten =>' line before it in this context; line ignored"),
            ("[c]\nexten => 1,n,NoOp()\n", "extensions.conf:2: warning: priority 'n' (next) on the first line of a context: nothing to follow; line ignored"),
            ("[c]\nexten => 1,one,NoOp()\n", "extensions.conf:2: warning: invalid priority/label 'one': not a number, n, s, hint or a label of extension '1' above; line ignored"),
            ("[c]\nexten => 1,0,NoOp()\n", "extensions.conf:2: warning: invalid priority '0': priorities start at 1; line ignored"),
            ("[c]\nexten => _[12X,1,NoOp()\n", "extensions.conf:2: warning: '[' without ']' in extension; line ignored"),
            ("[c]\nexten => 1\n", "extensions.conf:2: warning: line has no priority and application; line ignored"),
            ("[c]\nexten => 1,1\n", "extensions.conf:2: warning: application is missing; line ignored"),
            ("[c]\nexten => 1,1,\n", "extensions.conf:2: warning: application is missing; line ignored"),
            ("[c]\nexten => 1,1,(x)\n", "extensions.conf:2: warning: application is missing; line ignored"),
            ("[c]\nexten => ,1,NoOp()\n", "extensions.conf:2: warning: extension is empty; line ignored"),
            ("[c]\nexten => 1,1(a,NoOp()\n", "extensions.conf:2: warning: label missing trailing ')' in priority '1(a'; line ignored"),
            ("[c]\nsame => NoOp(x)\n", "extensions.conf:2: warning: 'same =>' with no 'exten =>' line before it in this context; line ignored"),
            ("[c]\nexten => 1,1,NoOp()\nsame => NoOp(x)\n", "extensions.conf:3: warning: invalid priority/label 'NoOp': not a number, n, s, hint or a label of extension '1' above; line ignored"),
            ("[c]\nexten => 1,1(x),NoOp()\nexten => 1,2(x),NoOp()\n", "extensions.conf:3: warning: label 'x' of extension '1' is already used at extensions.conf:2; line ignored"),
        ] {
            let plan = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(plan.warnings[0].to_string(), expected, "{text}");
        }
    }
}
