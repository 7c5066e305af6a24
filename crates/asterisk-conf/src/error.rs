//! Errors and warnings, each naming the file and line it is about.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A place in a configuration file: `file:line`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Location {
    pub file: Arc<Path>,
    /// 1-based line number.
    pub line: u32,
}

impl Location {
    pub fn new(file: impl Into<Arc<Path>>, line: u32) -> Self {
        Self {
            file: file.into(),
            line,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// A problem that Asterisk would log as a warning and then carry on: the file still
/// loads. Unknown keys are the common case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub location: Location,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: warning: {}", self.location, self.message)
    }
}

/// A configuration that cannot be used. `Display` gives `file:line: message`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The top-level file (or an `#include`d one) could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A line that does not follow the file syntax.
    #[error("{location}: {kind}")]
    Syntax {
        location: Location,
        kind: SyntaxError,
    },
    /// A well-formed line whose value makes no sense for its key.
    #[error("{location}: {key}: {message} (got '{value}')")]
    Value {
        location: Location,
        key: String,
        value: String,
        message: String,
    },
}

impl Error {
    /// The file and line the error is about, if it is about one.
    pub fn location(&self) -> Option<&Location> {
        match self {
            Error::Read { .. } => None,
            Error::Syntax { location, .. } | Error::Value { location, .. } => Some(location),
        }
    }

    pub(crate) fn syntax(location: &Location, kind: SyntaxError) -> Self {
        Error::Syntax {
            location: location.clone(),
            kind,
        }
    }

    pub(crate) fn value(
        location: &Location,
        key: &str,
        value: &str,
        message: impl Into<String>,
    ) -> Self {
        Error::Value {
            location: location.clone(),
            key: key.to_owned(),
            value: value.to_owned(),
            message: message.into(),
        }
    }
}

/// What is wrong with a line.
#[derive(Debug, thiserror::Error)]
pub enum SyntaxError {
    #[error("section header has no closing ']'")]
    UnterminatedSection,
    #[error("section header has an empty name")]
    EmptySectionName,
    #[error("section options have no closing ')'")]
    UnterminatedSectionOptions,
    #[error("'{0}' appears before any [section]")]
    NoSection(String),
    #[error("template '{0}' is not defined above this line")]
    UnknownTemplate(String),
    #[error("[{0}](+) appends to a section that does not exist above this line")]
    AppendToMissing(String),
    #[error("cannot include {}: {source}", path.display())]
    Include {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} includes itself (through {})", path.display(), chain)]
    IncludeCycle { path: PathBuf, chain: String },
    #[error("includes nest deeper than {0} files")]
    IncludeTooDeep(usize),
}
