//! The generic layer: any Asterisk `.conf` file as an ordered list of sections, each an
//! ordered list of `key=value` / `key => value` entries.
//!
//! What the reader does, following Asterisk's `main/config.c`:
//!
//! - `;` starts a comment that runs to the end of the line; `\;` is a literal `;` (the
//!   backslash is removed). `;--` opens a block comment that `--;` closes, across lines,
//!   but only when the next character is not a `-` too: `;-----` separator lines are
//!   line comments. Block comments nest, end with their file, and one left open is a
//!   warning (`config_text_file_load`).
//! - `[name]` opens a section. `[name](!)` marks it a template; `[name](a,b)` first copies
//!   every entry of sections `a` then `b` (as they stand at that line); `[name](+)` goes
//!   back to the last section called `name` and appends to it. Options combine:
//!   `[name](!,a)`. The options must follow the `]` at once, as in `process_text_line`;
//!   other text after the header is ignored, with a warning.
//! - `key=value` and `key => value` (the latter is an "object" line: a mailbox, an
//!   extension). Whitespace around key and value is trimmed. Repeated keys are kept, in
//!   order; [`Section::get`] returns the last one, as `ast_variable_retrieve` does, so an
//!   entry written after a template's overrides the template's. `key += value` appends
//!   to the section's last `key`. A line without `=`, or with nothing before it, is
//!   skipped with a warning.
//! - `#include file` and `#tryinclude file` (the name may be quoted with `"..."` or
//!   `<...>`, and may be a glob: `#include dialplan/*.conf` reads every match in name
//!   order) read other files in place, a relative path from the directory of the first
//!   file (Asterisk's configuration directory) or, failing that, the including file's.
//!   A missing `#include` is an error, a missing `#tryinclude` is skipped. `#exec` is
//!   refused with a warning, as Asterisk does unless `execincludes=yes`; an unknown
//!   directive or one without its file name is skipped with a warning.
//!
//! Errors, as in Asterisk: a header without `]` or its options without `)`, an unknown
//! template, `(+)` on a missing section, a key before any section, a missing include.
//! In addition, include cycles are detected and named.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Location, SyntaxError, Warning};

/// How deep `#include`s may nest before we call it a mistake. Asterisk has no limit but
/// recursion; a cycle through a symlink would otherwise exhaust the stack.
pub const MAX_INCLUDE_DEPTH: usize = 32;

/// A parsed configuration file, with every file it included.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pub sections: Vec<Section>,
    pub warnings: Vec<Warning>,
}

/// One `[section]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    /// Where the header is (the first header, for a section appended with `(+)`).
    pub location: Location,
    /// `(!)`: a template, not an object of its own. Typed views skip templates.
    pub is_template: bool,
    /// The templates named in the header, in order.
    pub templates: Vec<String>,
    /// Entries, inherited ones first (with the location of the template's line).
    pub entries: Vec<Entry>,
}

/// One `key=value` or `key => value` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: String,
    /// Written with `=>` rather than `=`.
    pub object: bool,
    pub location: Location,
    /// Copied in from this template rather than written in the section itself.
    pub inherited_from: Option<String>,
}

impl Config {
    /// Every non-template section called `name` (Asterisk allows repeats).
    pub fn sections_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Section> {
        self.sections
            .iter()
            .filter(move |s| !s.is_template && s.name == name)
    }

    /// The first non-template section called `name`.
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections
            .iter()
            .find(|s| !s.is_template && s.name == name)
    }
}

impl Section {
    /// The effective value of `key` (case-insensitive): the last one written.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.get_entry(key).map(|e| e.value.as_str())
    }

    /// The effective entry for `key` (case-insensitive): the last one written.
    pub fn get_entry(&self, key: &str) -> Option<&Entry> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.key.eq_ignore_ascii_case(key))
    }

    /// Every value of `key` (case-insensitive), in order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a Entry> {
        self.entries
            .iter()
            .filter(move |e| e.key.eq_ignore_ascii_case(key))
    }
}

/// Prints the configuration back in Asterisk syntax. Templates are printed already
/// applied (each section lists its inherited entries itself), so reading the output
/// again gives the same sections and entries.
impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for section in &self.sections {
            write!(f, "[{}]", escape_semicolons(&section.name))?;
            if section.is_template {
                f.write_str("(!)")?;
            }
            f.write_str("\n")?;
            for entry in &section.entries {
                let op = if entry.object { "=>" } else { "=" };
                writeln!(
                    f,
                    "{} {op} {}",
                    escape_semicolons(&entry.key),
                    escape_semicolons(&entry.value)
                )?;
            }
            f.write_str("\n")?;
        }
        Ok(())
    }
}

fn escape_semicolons(s: &str) -> String {
    s.replace(';', "\\;")
}

/// Where file contents come from: the file system, or memory (tests, fuzzing, the
/// configuration shipped inside a binary).
pub trait Source {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// The files directly in `dir` (for `#include` globs).
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
}

/// Reads from the file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct FileSystem;

impl Source for FileSystem {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() || entry.path().is_file() {
                files.push(entry.path());
            }
        }
        Ok(files)
    }
}

/// Files held in memory, by path.
#[derive(Debug, Clone, Default)]
pub struct MemorySource {
    files: HashMap<PathBuf, Vec<u8>>,
}

impl MemorySource {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(mut self, path: impl Into<PathBuf>, contents: impl Into<Vec<u8>>) -> Self {
        self.insert(path, contents);
        self
    }

    pub fn insert(&mut self, path: impl Into<PathBuf>, contents: impl Into<Vec<u8>>) {
        self.files.insert(path.into(), contents.into());
    }
}

impl Source for MemorySource {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.files
            .get(path)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        Ok(self
            .files
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .cloned()
            .collect())
    }
}

/// Reads `path` and everything it includes from the file system.
pub fn load(path: impl AsRef<Path>) -> Result<Config, Error> {
    load_from(&FileSystem, path.as_ref())
}

/// Reads `path` and everything it includes from `source`.
pub fn load_from(source: &dyn Source, path: &Path) -> Result<Config, Error> {
    let bytes = source.read(path).map_err(|e| Error::Read {
        path: path.to_owned(),
        source: e,
    })?;
    let mut reader = Reader {
        source,
        config: Config::default(),
        current: None,
        block_comments: Vec::new(),
        include_stack: vec![path.to_owned()],
    };
    reader.read_file(path, &bytes)?;
    Ok(reader.config)
}

/// Parses `text` as the contents of the file `name`. `#include`s are looked up in
/// memory only, so they fail; use [`load_from`] with a [`MemorySource`] for those.
pub fn parse_str(name: impl AsRef<Path>, text: &str) -> Result<Config, Error> {
    let name = name.as_ref();
    let source = MemorySource::new().with(name, text.as_bytes());
    load_from(&source, name)
}

struct Reader<'a> {
    source: &'a dyn Source,
    config: Config,
    /// Index of the section new entries go to.
    current: Option<usize>,
    /// Nesting of `;--` block comments in the file being read (each file starts with
    /// none), and the line each open one began on.
    block_comments: Vec<u32>,
    include_stack: Vec<PathBuf>,
}

impl Reader<'_> {
    fn read_file(&mut self, path: &Path, bytes: &[u8]) -> Result<(), Error> {
        let file: Arc<Path> = Arc::from(path);
        let text = match std::str::from_utf8(bytes) {
            Ok(text) => std::borrow::Cow::Borrowed(text),
            Err(e) => {
                let line = bytes[..e.valid_up_to()]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count() as u32
                    + 1;
                self.config.warnings.push(Warning {
                    location: Location::new(file.clone(), line),
                    message: "text is not UTF-8; invalid bytes replaced with U+FFFD".into(),
                });
                String::from_utf8_lossy(bytes)
            }
        };
        // Block comments belong to their file.
        let outer = std::mem::take(&mut self.block_comments);
        let mut result = Ok(());
        for (index, raw) in text.lines().enumerate() {
            let line_no = u32::try_from(index + 1).unwrap_or(u32::MAX);
            let location = Location::new(file.clone(), line_no);
            let line = self.strip_comments(raw, line_no);
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            result = self.process_line(line, &location, path);
            if result.is_err() {
                break;
            }
        }
        if let Some(&opened) = self.block_comments.first() {
            self.config.warnings.push(Warning {
                location: Location::new(file.clone(), opened),
                message: "block comment ';--' is never closed with '--;': the rest of the file is a comment".into(),
            });
        }
        self.block_comments = outer;
        result
    }

    /// Removes comments, turning `\;` into `;` and tracking `;-- --;` blocks.
    fn strip_comments(&mut self, raw: &str, line_no: u32) -> String {
        // `;--` opens a block only when not followed by another `-` (`;-----` is a
        // separator line, a line comment).
        let opens = |at: &str| at.starts_with(";--") && !at[3..].starts_with('-');
        let mut out = String::with_capacity(raw.len());
        let bytes = raw.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if !self.block_comments.is_empty() {
                if raw[i..].starts_with("--;") {
                    self.block_comments.pop();
                    i += 3;
                } else if opens(&raw[i..]) {
                    self.block_comments.push(line_no);
                    i += 3;
                } else {
                    i += utf8_len(bytes[i]);
                }
                continue;
            }
            match bytes[i] {
                b'\\' if bytes.get(i + 1) == Some(&b';') => {
                    out.push(';');
                    i += 2;
                }
                b';' if opens(&raw[i..]) => {
                    self.block_comments.push(line_no);
                    i += 3;
                }
                b';' => break,
                _ => {
                    let n = utf8_len(bytes[i]);
                    out.push_str(&raw[i..i + n]);
                    i += n;
                }
            }
        }
        out
    }

    fn process_line(&mut self, line: &str, location: &Location, path: &Path) -> Result<(), Error> {
        if let Some(rest) = line.strip_prefix('[') {
            return self.section_header(rest, location);
        }
        if let Some(rest) = line.strip_prefix('#') {
            return self.directive(rest, location, path);
        }
        let Some(current) = self.current else {
            let key = line.split('=').next().unwrap_or(line).trim();
            return Err(Error::syntax(
                location,
                SyntaxError::NoSection(key.to_owned()),
            ));
        };
        let Some(eq) = line.find('=') else {
            self.warn(location, format!("no '=' in line '{line}'; line ignored"));
            return Ok(());
        };
        let mut key = line[..eq].trim();
        let mut value = &line[eq + 1..];
        // `key += more`: appended to the section's last `key` (or a new one).
        if let Some(appended) = key.strip_suffix('+') {
            key = appended.trim_end();
            let entries = &mut self.config.sections[current].entries;
            if let Some(last) = entries.iter_mut().rev().find(|e| e.key == key) {
                last.value = format!("{}{}", last.value, value).trim().to_owned();
                return Ok(());
            }
        }
        let object = value.starts_with('>');
        if object {
            value = &value[1..];
        }
        if key.is_empty() {
            self.warn(
                location,
                format!("no name before '=' in line '{line}'; line ignored"),
            );
            return Ok(());
        }
        self.config.sections[current].entries.push(Entry {
            key: key.to_owned(),
            value: value.trim().to_owned(),
            object,
            location: location.clone(),
            inherited_from: None,
        });
        Ok(())
    }

    fn warn(&mut self, location: &Location, message: String) {
        self.config.warnings.push(Warning {
            location: location.clone(),
            message,
        });
    }

    fn section_header(&mut self, rest: &str, location: &Location) -> Result<(), Error> {
        let Some(close) = rest.find(']') else {
            return Err(Error::syntax(location, SyntaxError::UnterminatedSection));
        };
        let name = rest[..close].trim();
        if name.is_empty() {
            return Err(Error::syntax(location, SyntaxError::EmptySectionName));
        }
        let after = &rest[close + 1..];
        let mut is_template = false;
        let mut append = false;
        let mut templates = Vec::new();
        // Options only right after the `]`, as process_text_line reads them.
        if let Some(options) = after.strip_prefix('(') {
            let Some(end) = options.find(')') else {
                return Err(Error::syntax(
                    location,
                    SyntaxError::UnterminatedSectionOptions,
                ));
            };
            let trailing = options[end + 1..].trim();
            if !trailing.is_empty() {
                self.warn(
                    location,
                    format!("text after the section's options ignored: '{trailing}'"),
                );
            }
            for option in options[..end].split(',').map(str::trim) {
                match option {
                    "" => {}
                    "!" => is_template = true,
                    "+" => append = true,
                    name => templates.push(name.to_owned()),
                }
            }
        } else if !after.trim().is_empty() {
            self.warn(
                location,
                format!(
                    "text after the section header ignored: '{}' (options go right after ']')",
                    after.trim()
                ),
            );
        }

        if append {
            let Some(index) = self.config.sections.iter().rposition(|s| s.name == name) else {
                return Err(Error::syntax(
                    location,
                    SyntaxError::AppendToMissing(name.to_owned()),
                ));
            };
            self.current = Some(index);
            // `(+)` may still name templates to pull in (rare, but Asterisk allows it).
            self.inherit(index, &templates, location)?;
            if is_template {
                self.config.sections[index].is_template = true;
            }
            return Ok(());
        }

        self.config.sections.push(Section {
            name: name.to_owned(),
            location: location.clone(),
            is_template,
            templates: templates.clone(),
            entries: Vec::new(),
        });
        let index = self.config.sections.len() - 1;
        self.current = Some(index);
        self.inherit(index, &templates, location)
    }

    fn inherit(
        &mut self,
        index: usize,
        templates: &[String],
        location: &Location,
    ) -> Result<(), Error> {
        for template in templates {
            // The last section of that name defined *before* this one.
            let Some(source) = self.config.sections[..index]
                .iter()
                .rposition(|s| &s.name == template)
            else {
                return Err(Error::syntax(
                    location,
                    SyntaxError::UnknownTemplate(template.clone()),
                ));
            };
            let copied: Vec<Entry> = self.config.sections[source]
                .entries
                .iter()
                .map(|e| Entry {
                    inherited_from: Some(e.inherited_from.clone().unwrap_or(template.clone())),
                    ..e.clone()
                })
                .collect();
            self.config.sections[index].entries.extend(copied);
        }
        Ok(())
    }

    fn directive(&mut self, rest: &str, location: &Location, path: &Path) -> Result<(), Error> {
        let (name, arg) = match rest.find(|c: char| c.is_whitespace() || c == '"' || c == '<') {
            Some(i) => (&rest[..i], rest[i..].trim()),
            None => (rest, ""),
        };
        let directive = match name.to_ascii_lowercase().as_str() {
            "include" => "#include",
            "tryinclude" => "#tryinclude",
            "exec" => {
                self.config.warnings.push(Warning {
                    location: location.clone(),
                    message: "#exec is not supported (Asterisk's execincludes=no); line ignored"
                        .into(),
                });
                return Ok(());
            }
            _ => {
                self.config.warnings.push(Warning {
                    location: location.clone(),
                    message: format!("unknown directive '#{name}'; line ignored"),
                });
                return Ok(());
            }
        };
        let file = unquote(arg);
        if file.is_empty() {
            self.warn(
                location,
                format!("{directive} needs a file name; line ignored"),
            );
            return Ok(());
        }
        let targets = self.include_targets(file, path);
        if targets.is_empty() {
            if directive == "#tryinclude" {
                return Ok(());
            }
            let tried = self.candidates(file, path);
            return Err(Error::syntax(
                location,
                SyntaxError::Include {
                    path: tried
                        .into_iter()
                        .next()
                        .unwrap_or_else(|| PathBuf::from(file)),
                    source: io::Error::new(io::ErrorKind::NotFound, "no such file"),
                },
            ));
        }
        for target in targets {
            self.include(&target, directive, location)?;
        }
        Ok(())
    }

    /// Where a relative include is looked for: Asterisk's configuration directory (the
    /// first file's), then the including file's directory.
    fn candidates(&self, file: &str, path: &Path) -> Vec<PathBuf> {
        if Path::new(file).is_absolute() {
            return vec![PathBuf::from(file)];
        }
        let mut dirs: Vec<PathBuf> = Vec::new();
        for dir in [
            self.include_stack.first().and_then(|p| p.parent()),
            path.parent(),
        ]
        .into_iter()
        .flatten()
        {
            if !dirs.iter().any(|d| d == dir) {
                dirs.push(dir.to_owned());
            }
        }
        dirs.into_iter().map(|d| d.join(file)).collect()
    }

    /// The files an include names: the first candidate that exists, or every match of
    /// a glob in name order (the first directory with matches).
    fn include_targets(&self, file: &str, path: &Path) -> Vec<PathBuf> {
        let globbing = file.contains(['*', '?', '[']);
        for candidate in self.candidates(file, path) {
            if !globbing {
                if self.source.read(&candidate).is_ok() {
                    return vec![candidate];
                }
                continue;
            }
            let (Some(dir), Some(pattern)) = (
                candidate.parent(),
                candidate.file_name().and_then(|n| n.to_str()),
            ) else {
                continue;
            };
            let mut found: Vec<PathBuf> = self
                .source
                .list(dir)
                .unwrap_or_default()
                .into_iter()
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|name| glob_match(pattern, name))
                })
                .collect();
            found.sort();
            if !found.is_empty() {
                return found;
            }
        }
        Vec::new()
    }

    fn include(
        &mut self,
        target: &Path,
        directive: &'static str,
        location: &Location,
    ) -> Result<(), Error> {
        let target = target.to_owned();
        if self.include_stack.contains(&target) {
            let chain = self
                .include_stack
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" -> ");
            return Err(Error::syntax(
                location,
                SyntaxError::IncludeCycle {
                    path: target,
                    chain,
                },
            ));
        }
        if self.include_stack.len() >= MAX_INCLUDE_DEPTH {
            return Err(Error::syntax(
                location,
                SyntaxError::IncludeTooDeep(MAX_INCLUDE_DEPTH),
            ));
        }
        let bytes = match self.source.read(&target) {
            Ok(bytes) => bytes,
            Err(e) if directive == "#tryinclude" && e.kind() == io::ErrorKind::NotFound => {
                return Ok(())
            }
            Err(e) => {
                return Err(Error::syntax(
                    location,
                    SyntaxError::Include {
                        path: target,
                        source: e,
                    },
                ))
            }
        };
        self.include_stack.push(target.clone());
        let result = self.read_file(&target, &bytes);
        self.include_stack.pop();
        result
    }
}

/// A shell glob of one file name: `*`, `?` and `[...]` (with `!` or `^` to negate and
/// `a-z` ranges), as glob(3) matches names in Asterisk's `#include`.
fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative matching with one backtrack point for the last `*`.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        let step = match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
                continue;
            }
            Some('?') => Some(pi + 1),
            Some('[') => class_match(&p, pi, n[ni]),
            Some(c) if *c == n[ni] => Some(pi + 1),
            _ => None,
        };
        match step {
            Some(next) => {
                pi = next;
                ni += 1;
            }
            None => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// `[...]` at `p[start]` against `c`: the index after the class when it matches.
fn class_match(p: &[char], start: usize, c: char) -> Option<usize> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some('!') | Some('^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < p.len() && (first || p[i] != ']') {
        first = false;
        if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|e| *e != ']') {
            if (p[i]..=p[i + 2]).contains(&c) {
                matched = true;
            }
            i += 3;
        } else {
            if p[i] == c {
                matched = true;
            }
            i += 1;
        }
    }
    if i >= p.len() {
        // No closing `]`: a literal `[`.
        return (c == '[').then_some(start + 1);
    }
    (matched != negate).then_some(i + 1)
}

fn unquote(arg: &str) -> &str {
    let arg = arg.trim();
    for (open, close) in [('"', '"'), ('<', '>')] {
        if let Some(inner) = arg.strip_prefix(open) {
            return inner.strip_suffix(close).unwrap_or(inner).trim();
        }
    }
    arg
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}
