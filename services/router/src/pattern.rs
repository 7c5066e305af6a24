//! Extension names and patterns, matched and ordered as Asterisk does.
//!
//! A pattern starts with `_`. `X` is any digit, `Z` 1-9, `N` 2-9, `[1-5,7]` a set
//! (ranges with `-`), `.` one or more of anything, `!` zero or more of anything; `.` and
//! `!` end the pattern (Asterisk ignores what follows them). Other characters match
//! themselves. Spaces and dashes are ignored in patterns and in plain names
//! (`555-1234` is `5551234`).
//!
//! Order, from Asterisk's `ext_cmp`: plain names before patterns; two patterns compare
//! position by position, the position that matches fewer characters first (a literal
//! before `N` before `Z` before `X` before a larger set), then, at equal counts, the one
//! matching the lower character; `.` comes after any set and `!` after `.`; a pattern
//! that has ended sorts after one that goes on. The first extension in this order that
//! matches the dialled number wins.

use std::cmp::Ordering;

/// One position of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Element {
    /// A set of bytes: a literal is a set of one.
    Set(Box<ByteSet>),
    /// `.`: one or more of anything, to the end.
    OneOrMore,
    /// `!`: zero or more of anything, to the end.
    ZeroOrMore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct ByteSet([u64; 4]);

impl ByteSet {
    fn insert(&mut self, b: u8) {
        self.0[usize::from(b >> 6)] |= 1 << (b & 63);
    }
    fn contains(&self, b: u8) -> bool {
        self.0[usize::from(b >> 6)] & (1 << (b & 63)) != 0
    }
    fn len(&self) -> u32 {
        self.0.iter().map(|w| w.count_ones()).sum()
    }
    fn lowest(&self) -> Option<u8> {
        (0..=255u8).find(|&b| self.contains(b))
    }
    fn range(lo: u8, hi: u8) -> Self {
        let mut set = Self::default();
        for b in lo..=hi {
            set.insert(b);
        }
        set
    }
}

/// Why a pattern cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("'[' without ']' in pattern")]
    UnclosedSet,
    #[error("empty set '[]' in pattern")]
    EmptySet,
}

/// A compiled extension: a plain name or a `_` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    written: String,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// A plain name with spaces and dashes removed.
    Plain(String),
    Pattern(Vec<Element>),
}

fn ignored(b: u8) -> bool {
    b == b' ' || b == b'-'
}

/// A plain name as it is compared: without spaces and dashes.
pub fn normalize(name: &str) -> std::borrow::Cow<'_, str> {
    if name.bytes().any(ignored) {
        std::borrow::Cow::Owned(name.chars().filter(|&c| c != ' ' && c != '-').collect())
    } else {
        std::borrow::Cow::Borrowed(name)
    }
}

impl Pattern {
    pub fn parse(written: &str) -> Result<Self, PatternError> {
        let kind = match written.strip_prefix('_') {
            None => Kind::Plain(normalize(written).into_owned()),
            Some(body) => Kind::Pattern(parse_elements(body.as_bytes())?),
        };
        Ok(Self {
            written: written.to_owned(),
            kind,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.written
    }

    pub fn is_pattern(&self) -> bool {
        matches!(self.kind, Kind::Pattern(_))
    }

    /// The normalized name of a plain extension.
    pub fn plain(&self) -> Option<&str> {
        match &self.kind {
            Kind::Plain(name) => Some(name),
            Kind::Pattern(_) => None,
        }
    }

    /// Whether `number` is matched.
    pub fn matches(&self, number: &str) -> bool {
        match &self.kind {
            Kind::Plain(name) => normalize(number) == name.as_str(),
            Kind::Pattern(elements) => match_elements(elements, number.as_bytes()),
        }
    }

    /// For the lookup index: the byte sets of the pattern's leading positions, up to
    /// `max`, stopping at `.` or `!` (which match anything). A number the pattern matches
    /// starts with one byte of each set, in order.
    pub(crate) fn leading_sets(&self, max: usize) -> Vec<Vec<u8>> {
        let Kind::Pattern(elements) = &self.kind else {
            return Vec::new();
        };
        elements
            .iter()
            .take(max)
            .map_while(|e| match e {
                Element::Set(set) => Some((0..=255u8).filter(|&b| set.contains(b)).collect()),
                Element::OneOrMore | Element::ZeroOrMore => None,
            })
            .collect()
    }

    /// Asterisk's `ext_cmp`: the order in which extensions are tried.
    pub fn cmp_specificity(&self, other: &Self) -> Ordering {
        match (&self.kind, &other.kind) {
            (Kind::Plain(a), Kind::Plain(b)) => a.cmp(b),
            (Kind::Plain(_), Kind::Pattern(_)) => Ordering::Less,
            (Kind::Pattern(_), Kind::Plain(_)) => Ordering::Greater,
            (Kind::Pattern(a), Kind::Pattern(b)) => cmp_elements(a, b),
        }
    }
}

fn parse_elements(body: &[u8]) -> Result<Vec<Element>, PatternError> {
    let mut elements = Vec::new();
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        i += 1;
        let set = match b {
            b' ' | b'-' => continue,
            b'.' => {
                elements.push(Element::OneOrMore);
                break;
            }
            b'!' => {
                elements.push(Element::ZeroOrMore);
                break;
            }
            b'X' | b'x' => ByteSet::range(b'0', b'9'),
            b'Z' | b'z' => ByteSet::range(b'1', b'9'),
            b'N' | b'n' => ByteSet::range(b'2', b'9'),
            b'[' => {
                let end = body[i..]
                    .iter()
                    .position(|&c| c == b']')
                    .ok_or(PatternError::UnclosedSet)?;
                let inner = &body[i..i + end];
                i += end + 1;
                let mut set = ByteSet::default();
                let mut j = 0;
                while j < inner.len() {
                    if j + 2 < inner.len() && inner[j + 1] == b'-' {
                        for c in inner[j]..=inner[j + 2] {
                            set.insert(c);
                        }
                        j += 3;
                    } else {
                        // Commas separate items in `[1-5,7]`; they are not members.
                        if inner[j] != b',' {
                            set.insert(inner[j]);
                        }
                        j += 1;
                    }
                }
                if set.len() == 0 {
                    return Err(PatternError::EmptySet);
                }
                set
            }
            literal => {
                let mut set = ByteSet::default();
                set.insert(literal);
                set
            }
        };
        elements.push(Element::Set(Box::new(set)));
    }
    Ok(elements)
}

fn match_elements(elements: &[Element], number: &[u8]) -> bool {
    let mut digits = number.iter().copied().filter(|&b| !ignored(b));
    for element in elements {
        match element {
            Element::OneOrMore => return digits.next().is_some(),
            Element::ZeroOrMore => return true,
            Element::Set(set) => match digits.next() {
                Some(b) if set.contains(b) => {}
                _ => return false,
            },
        }
    }
    digits.next().is_none()
}

/// The rank of one position, as Asterisk's `ext_cmp_pattern_pos` scores it: lower
/// sorts first.
fn rank(element: Option<&Element>) -> u32 {
    match element {
        Some(Element::Set(set)) => set.len() << 8 | u32::from(set.lowest().unwrap_or(0)),
        Some(Element::OneOrMore) => 0x18000,
        Some(Element::ZeroOrMore) => 0x28000,
        None => 0x30000,
    }
}

fn cmp_elements(a: &[Element], b: &[Element]) -> Ordering {
    let mut i = 0;
    loop {
        let (x, y) = (a.get(i), b.get(i));
        let order = rank(x).cmp(&rank(y)).then_with(|| match (x, y) {
            // Same size and lowest member: the set holding lower characters first.
            (Some(Element::Set(p)), Some(Element::Set(q))) => {
                let bits = |s: &ByteSet| -> [u64; 4] { s.0.map(u64::reverse_bits) };
                let (p, q) = (bits(p), bits(q));
                // Lower characters are the most significant: compare from byte 0 up.
                q.cmp(&p)
            }
            _ => Ordering::Equal,
        });
        if order != Ordering::Equal || (x.is_none() && y.is_none()) {
            return order;
        }
        if matches!(x, Some(Element::OneOrMore | Element::ZeroOrMore)) {
            return Ordering::Equal;
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap()
    }

    #[test]
    fn classes_sets_and_wildcards() {
        assert!(p("_1NXXNXXXXXX").matches("13235550100"));
        assert!(!p("_1NXXNXXXXXX").matches("11235550100"), "N is 2-9");
        assert!(!p("_1NXXNXXXXXX").matches("1323555010"), "too short");
        assert!(!p("_1NXXNXXXXXX").matches("132355501000"), "too long");
        assert!(p("_NXXNXXXXXX").matches("3235550100"));
        assert!(p("_Z").matches("1") && !p("_Z").matches("0"));
        assert!(p("_[1-5,7]XX").matches("700") && p("_[1-5,7]XX").matches("300"));
        assert!(!p("_[1-5,7]XX").matches("600") && !p("_[1-5,7]XX").matches(",00"));
        assert!(p("_+X!").matches("+13235550100") && p("_+X!").matches("+1"));
        assert!(!p("_+X!").matches("+"));
        assert!(p("_9.").matches("9011") && !p("_9.").matches("9"));
        assert!(p("_9!").matches("9"));
        assert!(p("_x").matches("5"), "lower-case classes");
        assert!(p("555-1234").matches("5551234") && p("5551234").matches("555-1234"));
        assert!(p("_555-XXXX").matches("5551234"));
        assert!(p("s").matches("s") && !p("s").matches("S"));
        assert_eq!(Pattern::parse("_[12"), Err(PatternError::UnclosedSet));
        assert_eq!(Pattern::parse("_[]1"), Err(PatternError::EmptySet));
    }

    fn sorted(list: &[&str]) -> Vec<String> {
        let mut patterns: Vec<Pattern> = list.iter().map(|s| p(s)).collect();
        patterns.sort_by(|a, b| a.cmp_specificity(b));
        patterns.into_iter().map(|p| p.written).collect()
    }

    #[test]
    fn asterisk_order() {
        // Plain before pattern; literal before N before Z before X; `.` then `!` last.
        assert_eq!(
            sorted(&[
                "_X.",
                "_!",
                "_1NXXNXXXXXX",
                "_NXXNXXXXXX",
                "911",
                "_9!",
                "_9.",
                "_1X",
                "_1Z",
                "_1N",
                "_12"
            ]),
            [
                "911",
                "_12",
                "_1NXXNXXXXXX",
                "_1N",
                "_1Z",
                "_1X",
                "_9.",
                "_9!",
                "_NXXNXXXXXX",
                "_X.",
                "_!"
            ]
        );
        // Equal-size sets: the one with lower characters first.
        assert_eq!(
            sorted(&["_[5-7]", "_[1-3]", "_[13]", "_[12]"]),
            ["_[12]", "_[13]", "_[1-3]", "_[5-7]"]
        );
    }
}
