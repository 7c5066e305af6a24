//! Value conventions shared by Asterisk's modules.

use std::fmt;

use crate::error::Error;
use crate::tree::Entry;

/// Asterisk's `ast_true`: yes, true, y, t, 1, on (any case).
pub fn is_true(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "yes" | "true" | "y" | "t" | "1" | "on"
    )
}

/// Asterisk's `ast_false`: no, false, n, f, 0, off (any case).
pub fn is_false(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "no" | "false" | "n" | "f" | "0" | "off"
    )
}

/// A boolean that must be one of Asterisk's spellings.
pub(crate) fn parse_bool(entry: &Entry) -> Result<bool, Error> {
    if is_true(&entry.value) {
        Ok(true)
    } else if is_false(&entry.value) {
        Ok(false)
    } else {
        Err(invalid(entry, "expected yes or no"))
    }
}

pub(crate) fn parse_number<T: std::str::FromStr>(entry: &Entry) -> Result<T, Error> {
    entry
        .value
        .trim()
        .parse()
        .map_err(|_| invalid(entry, "expected a whole number"))
}

/// What chan_sip and app_voicemail do with a value they cannot read: log it and keep
/// the setting as it was. A value error becomes a warning naming the line; other
/// errors stay errors.
pub(crate) fn keep_going(
    result: Result<(), Error>,
    warnings: &mut Vec<crate::error::Warning>,
) -> Result<(), Error> {
    match result {
        Err(Error::Value {
            location,
            key,
            value,
            message,
        }) => {
            warnings.push(crate::error::Warning {
                location,
                message: format!("{key}: {message} (got '{value}'); line ignored"),
            });
            Ok(())
        }
        other => other,
    }
}

pub(crate) fn invalid(entry: &Entry, message: &str) -> Error {
    Error::value(&entry.location, &entry.key, &entry.value, message)
}

/// A password or shared secret. Its `Debug` and `Display` never show the value, so it
/// cannot leak into logs by accident; [`Secret::expose`] is the one way to read it.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A caller ID as Asterisk writes it: `"Name" <number>`, `Name <number>` or `number`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CallerId {
    pub name: String,
    pub number: String,
}

impl CallerId {
    /// Parses like `ast_callerid_parse`.
    pub fn parse(text: &str) -> Self {
        let text = text.trim();
        if let (Some(open), true) = (text.rfind('<'), text.ends_with('>')) {
            let number = text[open + 1..text.len() - 1].trim().to_owned();
            let name = text[..open].trim().trim_matches('"').trim().to_owned();
            return Self { name, number };
        }
        let unquoted = text.trim_matches('"');
        if !unquoted.is_empty()
            && unquoted
                .chars()
                .all(|c| c.is_ascii_digit() || "+*#-() ".contains(c))
        {
            Self {
                name: String::new(),
                number: unquoted.replace([' ', '-', '(', ')'], ""),
            }
        } else {
            Self {
                name: unquoted.to_owned(),
                number: String::new(),
            }
        }
    }
}

impl fmt::Display for CallerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.name.is_empty(), self.number.is_empty()) {
            (true, _) => f.write_str(&self.number),
            (false, true) => write!(f, "\"{}\"", self.name),
            (false, false) => write!(f, "\"{}\" <{}>", self.name, self.number),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_follow_ast_true_and_ast_false() {
        for yes in ["yes", "YES", "true", "y", "t", "1", "on"] {
            assert!(is_true(yes), "{yes}");
            assert!(!is_false(yes), "{yes}");
        }
        for no in ["no", "False", "n", "f", "0", "off"] {
            assert!(is_false(no), "{no}");
            assert!(!is_true(no), "{no}");
        }
        assert!(!is_true("maybe") && !is_false("maybe"));
    }

    #[test]
    fn caller_id_forms() {
        assert_eq!(
            CallerId::parse("\"First Last\" <13235550100>"),
            CallerId {
                name: "First Last".into(),
                number: "13235550100".into()
            }
        );
        assert_eq!(CallerId::parse("Desk <100>").name, "Desk");
        assert_eq!(CallerId::parse("13235550100").number, "13235550100");
        assert_eq!(CallerId::parse("Front Desk").name, "Front Desk");
        assert_eq!(CallerId::parse("").number, "");
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("password");
        assert!(!format!("{s:?} {s}").contains("password"));
        assert_eq!(s.expose(), "password");
    }
}
