//! Text that remembers which of its characters came from outside: the dialled number,
//! the caller ID, SIP headers. This is how dial-string and expression injection are
//! ruled out rather than filtered:
//!
//! - Only characters written in the dialplan (or derived from the configuration)
//!   separate things: `,` between application arguments, `&` between Dial targets,
//!   `/` and `@` inside a target, `?` and `:` in GotoIf, `=` in Set, and operators and
//!   spaces in `$[...]`. A `&` dialled by a caller is part of a number, never a second
//!   target.
//! - Substitution is one pass: what a variable holds is never evaluated again, and a
//!   name made from outside text is looked up as a plain variable, never as a function.
//!
//! Asterisk itself has no such protection (its advice is to wrap `${EXTEN}` in
//! `FILTER()`); this is a deliberate, safe deviation. Offsets are in characters.

use std::fmt;

/// A string with a flag per byte: set where the byte came from outside.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Text {
    text: String,
    /// `None`: all trusted. Else one flag per byte of `text`.
    outside: Option<Vec<bool>>,
}

impl Text {
    /// Text written in the dialplan or made by the system.
    pub fn trusted(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            outside: None,
        }
    }

    /// Text from outside (the network).
    pub fn outside(text: impl Into<String>) -> Self {
        let text = text.into();
        let outside = if text.is_empty() {
            None
        } else {
            Some(vec![true; text.len()])
        };
        Self { text, outside }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn into_string(self) -> String {
        self.text
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// Whether the byte at `index` came from outside.
    pub fn is_outside(&self, index: usize) -> bool {
        self.outside
            .as_ref()
            .is_some_and(|flags| flags.get(index).copied().unwrap_or(false))
    }

    /// Whether any byte came from outside.
    pub fn has_outside(&self) -> bool {
        self.outside.as_ref().is_some_and(|f| f.iter().any(|&b| b))
    }

    pub fn push_text(&mut self, other: &Text) {
        match (&mut self.outside, &other.outside) {
            (None, None) => {}
            (flags, other_flags) => {
                let mine = flags.get_or_insert_with(|| vec![false; self.text.len()]);
                match other_flags {
                    Some(theirs) => mine.extend_from_slice(theirs),
                    None => mine.extend(std::iter::repeat_n(false, other.text.len())),
                }
            }
        }
        self.text.push_str(&other.text);
    }

    pub fn push_trusted(&mut self, s: &str) {
        if let Some(flags) = &mut self.outside {
            flags.extend(std::iter::repeat_n(false, s.len()));
        }
        self.text.push_str(s);
    }

    /// The bytes `start..end` (on character boundaries).
    pub fn slice(&self, start: usize, end: usize) -> Text {
        Text {
            text: self.text[start..end].to_owned(),
            outside: self.outside.as_ref().map(|f| f[start..end].to_vec()),
        }
    }

    /// Byte offsets of every character that is `c` and was written in the dialplan.
    pub fn trusted_positions(&self, c: char) -> impl Iterator<Item = usize> + '_ {
        self.text
            .char_indices()
            .filter(move |&(i, ch)| ch == c && !self.is_outside(i))
            .map(|(i, _)| i)
    }

    /// The first trusted `c`.
    pub fn find_trusted(&self, c: char) -> Option<usize> {
        self.trusted_positions(c).next()
    }

    /// The last trusted `c`.
    pub fn rfind_trusted(&self, c: char) -> Option<usize> {
        self.trusted_positions(c).last()
    }

    /// Splits at every trusted `c` outside parentheses (as Asterisk's argument parser
    /// keeps `Set(X=(a,b))` whole).
    pub fn split_trusted(&self, c: char) -> Vec<Text> {
        let mut parts = Vec::new();
        let mut depth = 0usize;
        let mut start = 0;
        for (i, ch) in self.text.char_indices() {
            if self.is_outside(i) {
                continue;
            }
            match ch {
                '(' => depth += 1,
                ')' => depth = depth.saturating_sub(1),
                _ if ch == c && depth == 0 => {
                    parts.push(self.slice(start, i));
                    start = i + ch.len_utf8();
                }
                _ => {}
            }
        }
        parts.push(self.slice(start, self.text.len()));
        parts
    }

    /// Splits once at the first trusted `c`.
    pub fn split_once_trusted(&self, c: char) -> Option<(Text, Text)> {
        let i = self.find_trusted(c)?;
        Some((
            self.slice(0, i),
            self.slice(i + c.len_utf8(), self.text.len()),
        ))
    }

    /// Without leading and trailing whitespace.
    pub fn trim(&self) -> Text {
        let start = self.text.len() - self.text.trim_start().len();
        let end = self.text.trim_end().len();
        if start >= end {
            return Text::default();
        }
        self.slice(start, end)
    }

    /// Asterisk's substring `${VAR:offset:length}`: a negative offset counts from the
    /// end, a negative length leaves that many characters off the end.
    pub fn substring(&self, offset: i64, length: Option<i64>) -> Text {
        let boundaries: Vec<usize> = self
            .text
            .char_indices()
            .map(|(i, _)| i)
            .chain(std::iter::once(self.text.len()))
            .collect();
        let chars = (boundaries.len() - 1) as i64;
        let mut start = if offset < 0 { chars + offset } else { offset };
        start = start.clamp(0, chars);
        let end = match length {
            None => chars,
            Some(len) if len < 0 => (chars + len).max(start),
            Some(len) => (start + len).min(chars),
        };
        self.slice(
            boundaries[start as usize],
            boundaries[end.max(start) as usize],
        )
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Text::trusted(s)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.has_outside() {
            write!(f, "Text({:?}, outside)", self.text)
        } else {
            write!(f, "Text({:?})", self.text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mixed() -> Text {
        let mut t = Text::trusted("SIP/");
        t.push_text(&Text::outside("500&SIP/x"));
        t.push_trusted("&SIP/b,20");
        t
    }

    #[test]
    fn only_trusted_separators_split() {
        let t = mixed();
        let args = t.split_trusted(',');
        assert_eq!(args.len(), 2);
        let targets = args[0].split_trusted('&');
        let texts: Vec<&str> = targets.iter().map(Text::as_str).collect();
        assert_eq!(texts, ["SIP/500&SIP/x", "SIP/b"]);
        assert!(targets[0].has_outside() && !targets[1].has_outside());
        assert_eq!(targets[0].find_trusted('/'), Some(3));
        assert_eq!(targets[0].rfind_trusted('/'), Some(3));
    }

    #[test]
    fn parentheses_keep_arguments_whole() {
        let parts = Text::trusted("X=(a,b),c").split_trusted(',');
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].as_str(), "X=(a,b)");
    }

    #[test]
    fn substrings_as_asterisk() {
        let t = Text::trusted("SIP/13235550100-0000000a");
        assert_eq!(t.substring(4, Some(11)).as_str(), "13235550100");
        assert_eq!(
            Text::trusted("+13235550100").substring(1, None).as_str(),
            "13235550100"
        );
        let n = Text::trusted("12345");
        assert_eq!(n.substring(-3, None).as_str(), "345");
        assert_eq!(n.substring(-3, Some(2)).as_str(), "34");
        assert_eq!(n.substring(0, Some(-2)).as_str(), "123");
        assert_eq!(n.substring(1, Some(-1)).as_str(), "234");
        assert_eq!(n.substring(10, None).as_str(), "");
        assert_eq!(n.substring(-10, Some(2)).as_str(), "12");
        assert_eq!(n.substring(3, Some(-4)).as_str(), "");
        assert_eq!(Text::trusted("héllo").substring(1, Some(2)).as_str(), "él");
        let o = Text::outside("12345").substring(1, Some(2));
        assert!(o.is_outside(0) && o.is_outside(1));
    }
}
