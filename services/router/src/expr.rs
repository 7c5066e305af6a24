//! Asterisk's `$[...]` expressions (its `ast_expr2` grammar), lowest precedence first:
//!
//! | operators | meaning |
//! |---|---|
//! | `a ? b :: c` | b if a is true, else c (right-associative) |
//! | `a \| b` | a if a is true, else b |
//! | `a & b` | a if both are true, else 0 |
//! | `= == != < > <= >=` | 1 or 0; numbers compare as numbers, anything else as strings |
//! | `+ -` | arithmetic |
//! | `* / %` | arithmetic |
//! | `! -` (prefix) | not, negation |
//! | `a : re`, `a =~ re` | regex match (`:` anchored at the start): the first group, or the length matched |
//! | `( )` | grouping |
//!
//! "True" is anything but the empty string and zero. Strings with spaces or operator
//! characters are written in double quotes. A syntax error gives an error the caller logs,
//! and the expression's value is empty, as in Asterisk.
//!
//! Characters that came from outside (see [`crate::text`]) are always part of an operand:
//! a caller cannot inject an operator, a space or a quote.
//!
//! Arithmetic is floating point, as in Asterisk 1.6+ (`7 / 2` is `3.5`); a zero or
//! non-numeric divisor gives 2147483647, another non-numeric operand 0, as Asterisk does.
//!
//! Deviation: Asterisk computes in `long double` and prints fractions with 18 significant
//! digits; here it is `f64`, printed in the shortest form that reads back the same.

use crate::text::Text;

/// Why an expression has no value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExprError {
    #[error("syntax error in expression '{expression}': {message}")]
    Syntax { expression: String, message: String },
    #[error("invalid regular expression '{pattern}': {message}")]
    Regex { pattern: String, message: String },
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Value(Text),
    Op(&'static str),
}

const OPERATORS: [&str; 21] = [
    "::", "!=", "<=", ">=", "=~", "==", "|", "&", "=", "<", ">", "+", "-", "*", "/", "%", "!", ":",
    "?", "(", ")",
];

fn is_operator_char(c: char) -> bool {
    "|&=!<>+-*/%:?()\"".contains(c)
}

fn tokenize(input: &Text) -> Result<Vec<Token>, String> {
    let s = input.as_str();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let c = s[i..].chars().next().unwrap_or(' ');
        let outside = input.is_outside(i);
        if !outside && c.is_whitespace() {
            i += c.len_utf8();
            continue;
        }
        if !outside && c == '"' {
            let rest = &s[i + 1..];
            let close = rest
                .char_indices()
                .find(|&(j, ch)| ch == '"' && !input.is_outside(i + 1 + j))
                .map(|(j, _)| j)
                .ok_or("a quoted string is not closed")?;
            tokens.push(Token::Value(input.slice(i + 1, i + 1 + close)));
            i += close + 2;
            continue;
        }
        if !outside {
            if let Some(op) = OPERATORS.iter().find(|op| {
                s[i..].starts_with(*op) && (0..op.len()).all(|k| !input.is_outside(i + k))
            }) {
                tokens.push(Token::Op(op));
                i += op.len();
                continue;
            }
        }
        // An operand: outside characters of any kind, and dialplan characters that are
        // neither space nor operator.
        let start = i;
        while i < s.len() {
            let c = s[i..].chars().next().unwrap_or(' ');
            if !input.is_outside(i) && (c.is_whitespace() || is_operator_char(c)) {
                break;
            }
            i += c.len_utf8();
        }
        tokens.push(Token::Value(input.slice(start, i)));
    }
    Ok(tokens)
}

/// Evaluates the inside of `$[...]` (already substituted).
pub fn evaluate(input: &Text) -> Result<Text, ExprError> {
    let syntax = |message: String| ExprError::Syntax {
        expression: input.as_str().to_owned(),
        message,
    };
    let tokens = tokenize(input).map_err(|m| syntax(m.to_owned()))?;
    if tokens.is_empty() {
        return Ok(Text::default());
    }
    let mut parser = Parser {
        tokens: &tokens,
        pos: 0,
    };
    let value = parser.ternary().map_err(|e| match e {
        Failure::Syntax(m) => syntax(m),
        Failure::Regex(e) => e,
    })?;
    if parser.pos != tokens.len() {
        return Err(syntax(format!(
            "unexpected {} after a complete expression",
            describe(&tokens[parser.pos])
        )));
    }
    Ok(value)
}

/// Asterisk's truth: not empty and not a number equal to zero.
pub fn is_true(value: &str) -> bool {
    match to_number(value) {
        Some(n) => n != 0.0,
        None => !value.is_empty(),
    }
}

fn describe(token: &Token) -> String {
    match token {
        Token::Op(op) => format!("'{op}'"),
        Token::Value(v) => format!("'{}'", v.as_str()),
    }
}

enum Failure {
    Syntax(String),
    Regex(ExprError),
}

type Parsed = Result<Text, Failure>;

struct Parser<'a> {
    tokens: &'a [Token],
    pos: usize,
}

impl Parser<'_> {
    fn peek_op(&self) -> Option<&'static str> {
        match self.tokens.get(self.pos) {
            Some(Token::Op(op)) => Some(op),
            _ => None,
        }
    }

    fn eat(&mut self, ops: &[&str]) -> Option<&'static str> {
        let op = self.peek_op().filter(|op| ops.contains(op))?;
        self.pos += 1;
        Some(op)
    }

    fn ternary(&mut self) -> Parsed {
        let condition = self.or()?;
        if self.eat(&["?"]).is_none() {
            return Ok(condition);
        }
        let then = self.ternary()?;
        if self.eat(&["::"]).is_none() {
            return Err(Failure::Syntax("'?' without '::'".into()));
        }
        let otherwise = self.ternary()?;
        Ok(if is_true(condition.as_str()) {
            then
        } else {
            otherwise
        })
    }

    fn or(&mut self) -> Parsed {
        let mut left = self.and()?;
        while self.eat(&["|"]).is_some() {
            let right = self.and()?;
            if !is_true(left.as_str()) {
                left = right;
            }
        }
        Ok(left)
    }

    fn and(&mut self) -> Parsed {
        let mut left = self.comparison()?;
        while self.eat(&["&"]).is_some() {
            let right = self.comparison()?;
            if !is_true(left.as_str()) || !is_true(right.as_str()) {
                left = Text::trusted("0");
            }
        }
        Ok(left)
    }

    fn comparison(&mut self) -> Parsed {
        let mut left = self.additive()?;
        while let Some(op) = self.eat(&["=", "==", "!=", "<", ">", "<=", ">="]) {
            let right = self.additive()?;
            let order = match (to_number(left.as_str()), to_number(right.as_str())) {
                (Some(a), Some(b)) => a.partial_cmp(&b),
                _ => Some(left.as_str().cmp(right.as_str())),
            };
            use std::cmp::Ordering::*;
            let result = match (op, order) {
                (_, None) => false,
                ("=" | "==", Some(o)) => o == Equal,
                ("!=", Some(o)) => o != Equal,
                ("<", Some(o)) => o == Less,
                (">", Some(o)) => o == Greater,
                ("<=", Some(o)) => o != Greater,
                (_, Some(o)) => o != Less,
            };
            left = Text::trusted(if result { "1" } else { "0" });
        }
        Ok(left)
    }

    fn additive(&mut self) -> Parsed {
        let mut left = self.multiplicative()?;
        while let Some(op) = self.eat(&["+", "-"]) {
            let right = self.multiplicative()?;
            left = arithmetic(&left, &right, |a, b| {
                Some(if op == "+" { a + b } else { a - b })
            });
        }
        Ok(left)
    }

    fn multiplicative(&mut self) -> Parsed {
        let mut left = self.unary()?;
        while let Some(op) = self.eat(&["*", "/", "%"]) {
            let right = self.unary()?;
            left = match (op, to_number(right.as_str())) {
                // Asterisk's op_div: a zero or non-numeric divisor gives INT_MAX.
                ("/", None | Some(0.0)) if to_number(left.as_str()).is_some() => {
                    Text::trusted(i32::MAX.to_string())
                }
                _ => arithmetic(&left, &right, |a, b| match op {
                    "*" => Some(a * b),
                    "/" => Some(a / b),
                    _ if b == 0.0 => None,
                    _ => Some(a % b),
                }),
            };
        }
        Ok(left)
    }

    fn unary(&mut self) -> Parsed {
        match self.eat(&["!", "-"]) {
            Some("!") => {
                let value = self.unary()?;
                Ok(Text::trusted(if is_true(value.as_str()) {
                    "0"
                } else {
                    "1"
                }))
            }
            Some(_) => {
                let value = self.unary()?;
                Ok(match to_number(value.as_str()) {
                    Some(n) => number(-n),
                    None => Text::trusted("0"),
                })
            }
            None => self.regex(),
        }
    }

    fn regex(&mut self) -> Parsed {
        let mut left = self.primary()?;
        while let Some(op) = self.eat(&[":", "=~"]) {
            let right = self.primary()?;
            left = regex_match(&left, &right, op == ":").map_err(Failure::Regex)?;
        }
        Ok(left)
    }

    fn primary(&mut self) -> Parsed {
        match self.tokens.get(self.pos) {
            Some(Token::Value(v)) => {
                self.pos += 1;
                Ok(v.clone())
            }
            Some(Token::Op("(")) => {
                self.pos += 1;
                let value = self.ternary()?;
                if self.eat(&[")"]).is_none() {
                    return Err(Failure::Syntax("'(' without ')'".into()));
                }
                Ok(value)
            }
            Some(token) => Err(Failure::Syntax(format!(
                "expected a value, found {}",
                describe(token)
            ))),
            None => Err(Failure::Syntax(
                "the expression ends where a value was expected".into(),
            )),
        }
    }
}

/// A number as Asterisk reads one: decimal, optional sign, fraction and exponent.
pub fn to_number(s: &str) -> Option<f64> {
    let t = s.trim();
    let body = t.strip_prefix(['+', '-']).unwrap_or(t);
    let first = body.chars().next()?;
    if !(first.is_ascii_digit() || first == '.') {
        return None;
    }
    if !body
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
    {
        return None;
    }
    t.parse::<f64>().ok().filter(|n| n.is_finite())
}

fn number(n: f64) -> Text {
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        Text::trusted(format!("{}", n as i64))
    } else {
        Text::trusted(format!("{n}"))
    }
}

fn arithmetic(a: &Text, b: &Text, op: impl Fn(f64, f64) -> Option<f64>) -> Text {
    match (to_number(a.as_str()), to_number(b.as_str())) {
        (Some(x), Some(y)) => match op(x, y) {
            Some(n) if n.is_finite() => number(n),
            // A remainder by zero: Asterisk warns and gives 0.
            _ => Text::trusted("0"),
        },
        // A non-numeric operand: Asterisk warns and gives 0.
        _ => Text::trusted("0"),
    }
}

/// Longest regex source accepted, and the compiled size limit: patterns may come from
/// variables, so they are bounded (the `regex` crate already runs in linear time).
const REGEX_MAX_SOURCE: usize = 1024;
const REGEX_SIZE_LIMIT: usize = 1 << 20;

pub(crate) fn compile_regex(pattern: &str) -> Result<regex::Regex, ExprError> {
    let bad = |message: String| ExprError::Regex {
        pattern: pattern.to_owned(),
        message,
    };
    if pattern.len() > REGEX_MAX_SOURCE {
        return Err(bad(format!("longer than {REGEX_MAX_SOURCE} characters")));
    }
    regex::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| bad(e.to_string()))
}

fn regex_match(subject: &Text, pattern: &Text, anchored: bool) -> Result<Text, ExprError> {
    let source = if anchored {
        format!("^(?:{})", pattern.as_str())
    } else {
        pattern.as_str().to_owned()
    };
    let re = compile_regex(&source)?;
    let has_group = re.captures_len() > 1;
    let Some(captures) = re.captures(subject.as_str()) else {
        return Ok(Text::trusted(if has_group { "" } else { "0" }));
    };
    if has_group {
        return Ok(match captures.get(1) {
            Some(m) => subject.slice(m.start(), m.end()),
            None => Text::default(),
        });
    }
    let whole = captures
        .get(0)
        .map(|m| m.as_str().chars().count())
        .unwrap_or(0);
    Ok(Text::trusted(whole.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(s: &str) -> String {
        evaluate(&Text::trusted(s)).unwrap().into_string()
    }

    #[test]
    fn comparisons_numbers_and_strings() {
        assert_eq!(eval("13235550100 = 13235550100"), "1");
        assert_eq!(eval("13235550100 = 13105550100"), "0");
        assert_eq!(eval("10 < 9"), "0", "numbers compare as numbers");
        assert_eq!(eval("abc < abd"), "1", "strings compare as strings");
        assert_eq!(eval("10 < 9a"), "1", "one non-number: string comparison");
        assert_eq!(eval("1.0 == 1"), "1");
        assert_eq!(eval("a != b"), "1");
        assert_eq!(eval("5 >= 5"), "1");
        assert_eq!(eval("5<=4"), "0", "no spaces needed");
    }

    #[test]
    fn arithmetic_and_logic() {
        assert_eq!(eval("1 + 2 * 3"), "7");
        assert_eq!(eval("(1 + 2) * 3"), "9");
        assert_eq!(
            eval("7 / 2"),
            "3.5",
            "floating-point division, as Asterisk 1.6+"
        );
        assert_eq!(eval("8 / 2"), "4");
        assert_eq!(eval("7.5 / 2"), "3.75");
        assert_eq!(eval("7 % 3"), "1");
        assert_eq!(eval("- 3 + 5"), "2");
        assert_eq!(eval("1 / 0"), "2147483647");
        assert_eq!(eval("1 / x"), "2147483647");
        assert_eq!(eval("x / 2"), "0");
        assert_eq!(eval("5 % 0"), "0");
        assert_eq!(eval("a + 1"), "0");
        assert_eq!(eval("0 | b"), "b");
        assert_eq!(eval("a | b"), "a");
        assert_eq!(eval("a & b"), "a");
        assert_eq!(eval("a & 0"), "0");
        assert_eq!(eval("!0"), "1");
        assert_eq!(eval("!abc"), "0");
        assert_eq!(eval("1 ? yes :: no"), "yes");
        assert_eq!(eval("0 ? yes :: no"), "no");
        assert_eq!(eval("\"a b\" = \"a b\""), "1");
        assert_eq!(eval(""), "");
    }

    #[test]
    fn regex_operators() {
        assert_eq!(
            eval("13235550100 : \"1(...)\""),
            "323",
            "patterns with groups are quoted"
        );
        assert_eq!(eval("13235550100 : 132"), "3");
        assert_eq!(eval("13235550100 : 323"), "0", "':' is anchored");
        assert_eq!(eval("13235550100 =~ 323"), "3");
        assert_eq!(eval("abc =~ \"x(y)\""), "");
        assert!(matches!(
            evaluate(&Text::trusted("a : \"(\"")),
            Err(ExprError::Regex { .. })
        ));
    }

    #[test]
    fn syntax_errors() {
        for bad in ["= 5", "1 +", "(1", "1 ? 2", "\"open", "1 2"] {
            assert!(
                matches!(evaluate(&Text::trusted(bad)), Err(ExprError::Syntax { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn outside_text_is_always_one_operand() {
        // The seed's GotoIf($[${EXTEN} = ${LINE}]) with a hostile EXTEN.
        let mut t = Text::outside("1 | 1");
        t.push_trusted(" = 13235550100");
        assert_eq!(evaluate(&t).unwrap().as_str(), "0");
        let mut t = Text::outside("\") | (\"");
        t.push_trusted(" = x");
        assert_eq!(evaluate(&t).unwrap().as_str(), "0");
        // An empty value from outside still leaves a syntax error, not a match.
        let mut t = Text::outside("");
        t.push_trusted(" = 1");
        assert!(evaluate(&t).is_err());
    }
}
