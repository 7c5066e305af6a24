//! Substitution of `${...}` and `$[...]` in application arguments, as Asterisk's
//! `pbx_substitute_variables_helper` does, and the dialplan functions.
//!
//! - `${NAME}`: a channel variable, a built-in (`EXTEN`, `CONTEXT`, `PRIORITY`,
//!   `CHANNEL`, `UNIQUEID`, `EPOCH`, `DIALSTATUS`, `VMSTATUS`, ...) or a global.
//! - `${NAME:offset:length}`: a substring; negative offset from the end, negative length
//!   leaves characters off the end.
//! - `${FUNC(args)}`: a function (`CALLERID`, `LEN`, `IF`, `ISNULL`, `EXISTS`, `CUT`,
//!   `REGEX`, `STRFTIME`), also with `:offset:length`.
//! - `${${NAME}}`: inner references are substituted first.
//! - `$[...]`: an expression ([`crate::expr`]), after substituting its inside.
//!
//! One pass: values are never substituted again. A name built from outside text (the
//! caller's) is only ever a plain variable, never a function call or a substring
//! specification (see [`crate::text`]).

use chrono::TimeZone;

use crate::expr;
use crate::text::Text;

/// What substitution reads from the channel.
pub trait Env {
    /// A variable by name: channel variable, built-in or global.
    fn variable(&self, name: &str) -> Option<Text>;
    /// `CALLERID(num)` and `CALLERID(name)`.
    fn caller_id(&self) -> (&Text, &Text);
    /// Unix time now, in seconds (time is an input of the core, never read here).
    fn epoch(&self) -> f64;
}

/// Substitutes `template` (dialplan text). Problems (bad expressions, unknown functions)
/// are appended to `warnings`; their part of the result is empty, as in Asterisk.
pub fn substitute(template: &str, env: &dyn Env, warnings: &mut Vec<String>) -> Text {
    substitute_text(&Text::trusted(template), env, warnings)
}

fn substitute_text(template: &Text, env: &dyn Env, warnings: &mut Vec<String>) -> Text {
    let s = template.as_str();
    if !s.contains('$') {
        return template.clone();
    }
    let mut out = Text::default();
    let mut i = 0;
    let mut literal_start = 0;
    while i < s.len() {
        let bytes = s.as_bytes();
        let opener = if bytes[i] == b'$' && !template.is_outside(i) {
            match bytes.get(i + 1) {
                Some(b'{') if !template.is_outside(i + 1) => Some((b'{', b'}')),
                Some(b'[') if !template.is_outside(i + 1) => Some((b'[', b']')),
                _ => None,
            }
        } else {
            None
        };
        let Some((open, close)) = opener else {
            i += 1;
            continue;
        };
        let Some(end) = matching(template, i + 2, open, close) else {
            warnings.push(format!("no closing '{}' in '{s}'", close as char));
            break;
        };
        out.push_text(&template.slice(literal_start, i));
        let inner = substitute_text(&template.slice(i + 2, end), env, warnings);
        let value = if open == b'{' {
            resolve(&inner, env, warnings)
        } else {
            match expr::evaluate(&inner) {
                Ok(v) => v,
                Err(e) => {
                    warnings.push(e.to_string());
                    Text::default()
                }
            }
        };
        out.push_text(&value);
        i = end + 1;
        literal_start = i;
    }
    out.push_text(&template.slice(literal_start, s.len()));
    out
}

/// The index of the `close` matching an `open` just before `from` (trusted ones only).
fn matching(text: &Text, from: usize, open: u8, close: u8) -> Option<usize> {
    let mut depth = 1usize;
    for (i, b) in text.as_str().bytes().enumerate().skip(from) {
        if text.is_outside(i) {
            continue;
        }
        if b == open {
            depth += 1;
        } else if b == close {
            depth -= 1;
            if depth == 0 {
                return Some(i);
            }
        }
    }
    None
}

/// `NAME`, `NAME:o:l`, `FUNC(args)`, `FUNC(args):o:l`. The structure (the function
/// name, its parentheses, the `:` of a substring) must be dialplan text; arguments may
/// hold the caller's. A name that is (partly) the caller's is a plain variable.
fn resolve(name: &Text, env: &dyn Env, warnings: &mut Vec<String>) -> Text {
    let (base, substring) = split_substring(name);
    let value = match function_parts(&base) {
        Some((function, args)) => match call_function(&function, &args, env) {
            Ok(v) => v,
            Err(message) => {
                warnings.push(message);
                Text::default()
            }
        },
        None => env.variable(base.as_str()).unwrap_or_default(),
    };
    match substring {
        Some((offset, length)) => value.substring(offset, length),
        None => value,
    }
}

/// Splits `NAME:offset:length` at the first dialplan `:` outside dialplan parentheses.
fn split_substring(name: &Text) -> (Text, Option<(i64, Option<i64>)>) {
    let s = name.as_str();
    let mut depth = 0usize;
    for (i, c) in s.char_indices() {
        if name.is_outside(i) {
            continue;
        }
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ':' if depth == 0 => {
                let spec = &s[i + 1..];
                let (offset, length) = match spec.split_once(':') {
                    Some((o, l)) => (o, Some(leading_int(l))),
                    None => (spec, None),
                };
                return (name.slice(0, i), Some((leading_int(offset), length)));
            }
            _ => {}
        }
    }
    (name.clone(), None)
}

/// `FUNC(args)` with a dialplan-written name and parentheses.
fn function_parts(base: &Text) -> Option<(String, Text)> {
    let s = base.as_str();
    let open = base.find_trusted('(')?;
    let close = s.len().checked_sub(1)?;
    if !s.ends_with(')') || base.is_outside(close) || close <= open {
        return None;
    }
    let name = &s[..open];
    if name.is_empty()
        || (0..open).any(|i| base.is_outside(i))
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return None;
    }
    Some((name.to_owned(), base.slice(open + 1, close)))
}

/// C's `atoi`: the leading integer, 0 when there is none.
pub fn leading_int(s: &str) -> i64 {
    let t = s.trim_start();
    let (sign, digits) = match t.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, t.strip_prefix('+').unwrap_or(t)),
    };
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse::<i64>().map(|n| sign * n).unwrap_or(0)
}

/// `FUNC(args)` to its parts.
pub fn function_call(s: &str) -> Option<(&str, &str)> {
    let open = s.find('(')?;
    let args = s[open + 1..].strip_suffix(')')?;
    let name = &s[..open];
    (!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .then_some((name, args))
}

/// Functions this router can read, by upper-case name.
pub const READABLE_FUNCTIONS: &[&str] = &[
    "CALLERID", "LEN", "IF", "ISNULL", "EXISTS", "CUT", "REGEX", "STRFTIME",
];

fn call_function(name: &str, args: &Text, env: &dyn Env) -> Result<Text, String> {
    let upper = name.to_ascii_uppercase();
    let bool_text = |b: bool| Text::trusted(if b { "1" } else { "0" });
    match upper.as_str() {
        "CALLERID" => {
            let (num, cid_name) = env.caller_id();
            match args.as_str().trim().to_ascii_lowercase().as_str() {
                "num" | "number" => Ok(num.clone()),
                "name" => Ok(cid_name.clone()),
                "all" => {
                    let mut all = Text::trusted("\"");
                    all.push_text(cid_name);
                    all.push_trusted("\" <");
                    all.push_text(num);
                    all.push_trusted(">");
                    Ok(all)
                }
                other => Err(format!("CALLERID({other}): unknown data item")),
            }
        }
        "LEN" => Ok(Text::trusted(args.as_str().chars().count().to_string())),
        "ISNULL" => Ok(bool_text(args.is_empty())),
        "EXISTS" => Ok(bool_text(!args.is_empty())),
        "IF" => {
            let (condition, branches) = args
                .split_once_trusted('?')
                .ok_or("IF: expected IF(condition?true:false)")?;
            let (yes, no) = branches
                .split_once_trusted(':')
                .unwrap_or((branches, Text::default()));
            Ok(if expr::is_true(condition.as_str().trim()) {
                yes
            } else {
                no
            })
        }
        "CUT" => cut(args, env),
        "REGEX" => {
            // REGEX("pattern" string)
            let s = args.as_str().trim_start();
            let rest = s
                .strip_prefix('"')
                .ok_or("REGEX: expected REGEX(\"pattern\" string)")?;
            let close = rest
                .find('"')
                .ok_or("REGEX: the pattern's quote is not closed")?;
            let pattern = &rest[..close];
            let subject = rest[close + 1..]
                .strip_prefix(' ')
                .unwrap_or(&rest[close + 1..]);
            let re = expr::compile_regex(pattern).map_err(|e| format!("REGEX: {e}"))?;
            Ok(bool_text(re.is_match(subject)))
        }
        "STRFTIME" => strftime(args, env),
        _ => Err(format!("function {name}() is not supported")),
    }
}

/// CUT(varname,delimiter,fields): fields `2`, `2-4`, `2-`, `-3`, joined with `&`.
fn cut(args: &Text, env: &dyn Env) -> Result<Text, String> {
    let parts = args.split_trusted(',');
    let [var, rest @ ..] = parts.as_slice() else {
        return Err("CUT: expected CUT(variable,delimiter,fields)".into());
    };
    let delimiter = rest
        .first()
        .and_then(|d| d.as_str().chars().next())
        .unwrap_or('-');
    let spec = rest.get(1).map(Text::as_str).unwrap_or("1");
    if var.has_outside() {
        return Err("CUT: the variable name comes from the caller; refused".into());
    }
    let value = env.variable(var.as_str().trim()).unwrap_or_default();
    let mut starts = vec![0];
    starts.extend(
        value
            .as_str()
            .char_indices()
            .filter(|&(_, c)| c == delimiter)
            .map(|(i, c)| i + c.len_utf8()),
    );
    let count = starts.len();
    let field = |n: usize| -> Text {
        let start = starts[n];
        let end = starts
            .get(n + 1)
            .map(|s| s - delimiter.len_utf8())
            .unwrap_or(value.as_str().len());
        value.slice(start, end)
    };
    let mut out = Text::default();
    let mut first = true;
    for range in spec.split('&') {
        let (lo, hi) = match range.split_once('-') {
            Some((a, b)) => (
                if a.trim().is_empty() {
                    1
                } else {
                    leading_int(a)
                },
                if b.trim().is_empty() {
                    count as i64
                } else {
                    leading_int(b)
                },
            ),
            None => {
                let n = leading_int(range);
                (n, n)
            }
        };
        if lo < 1 {
            return Err(format!("CUT: field '{range}' must start at 1"));
        }
        for n in lo..=hi.min(count as i64) {
            if !first {
                out.push_trusted(&delimiter.to_string());
            }
            first = false;
            out.push_text(&field((n - 1) as usize));
        }
    }
    Ok(out)
}

/// STRFTIME([epoch][,timezone][,format]), C `strftime` conversions.
fn strftime(args: &Text, env: &dyn Env) -> Result<Text, String> {
    let parts = args.split_trusted(',');
    let arg = |i: usize| parts.get(i).map(|t| t.as_str().trim()).unwrap_or("");
    let epoch = match arg(0) {
        "" => env.epoch(),
        e => expr::to_number(e).ok_or_else(|| format!("STRFTIME: '{e}' is not a Unix time"))?,
    };
    let format = match parts.get(2).map(Text::as_str) {
        None | Some("") => "%c",
        Some(f) => f,
    };
    let secs = epoch.floor() as i64;
    let nanos = ((epoch - epoch.floor()) * 1e9) as u32;
    let formatted = match arg(1) {
        "" => format_time(&chrono::Utc, secs, nanos, format),
        zone => {
            let tz: chrono_tz::Tz = zone
                .parse()
                .map_err(|_| format!("STRFTIME: unknown time zone '{zone}'"))?;
            format_time(&tz, secs, nanos, format)
        }
    }?;
    Ok(Text::trusted(formatted))
}

fn format_time<Tz: TimeZone>(
    zone: &Tz,
    secs: i64,
    nanos: u32,
    format: &str,
) -> Result<String, String>
where
    Tz::Offset: std::fmt::Display,
{
    use std::fmt::Write;
    let time = zone
        .timestamp_opt(secs, nanos)
        .single()
        .ok_or_else(|| format!("STRFTIME: {secs} is out of range"))?;
    let mut out = String::new();
    write!(out, "{}", time.format(format))
        .map_err(|_| format!("STRFTIME: bad format '{format}'"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Vars {
        vars: HashMap<String, Text>,
        num: Text,
        name: Text,
    }

    impl Env for Vars {
        fn variable(&self, name: &str) -> Option<Text> {
            self.vars.get(name).cloned()
        }
        fn caller_id(&self) -> (&Text, &Text) {
            (&self.num, &self.name)
        }
        fn epoch(&self) -> f64 {
            1_700_000_000.0
        }
    }

    fn env() -> Vars {
        let mut vars = HashMap::new();
        vars.insert("EXTEN".into(), Text::outside("+13235550100"));
        vars.insert("CHANNEL".into(), Text::trusted("SIP/13235550100-0000000a"));
        vars.insert("LINE".into(), Text::trusted("13235550100"));
        vars.insert("WHICH".into(), Text::trusted("LINE"));
        vars.insert("LIST".into(), Text::trusted("a-b-c-d"));
        vars.insert("EVIL".into(), Text::outside("${CHANNEL}"));
        Vars {
            vars,
            num: Text::outside("3105550199"),
            name: Text::outside("Caller & Co"),
        }
    }

    fn sub(s: &str) -> String {
        let mut w = Vec::new();
        let out = substitute(s, &env(), &mut w).into_string();
        assert!(w.is_empty(), "{w:?}");
        out
    }

    #[test]
    fn variables_substrings_and_nesting() {
        assert_eq!(sub("${CHANNEL:4:11}"), "13235550100");
        assert_eq!(sub("${EXTEN:1}"), "13235550100");
        assert_eq!(sub("1${EXTEN:-10}"), "13235550100");
        assert_eq!(sub("${EXTEN:-4:2}"), "01");
        assert_eq!(sub("${${WHICH}}"), "13235550100");
        assert_eq!(sub("${UNSET}x"), "x");
        assert_eq!(sub("no vars"), "no vars");
        assert_eq!(sub("$5 and $"), "$5 and $");
        assert_eq!(sub("$[${LINE} = 13235550100]"), "1");
        assert_eq!(sub("$[${EXTEN:1} = ${LINE}]"), "1");
    }

    #[test]
    fn functions() {
        assert_eq!(sub("${CALLERID(num)}"), "3105550199");
        assert_eq!(sub("${CALLERID(name)}"), "Caller & Co");
        assert_eq!(sub("${CALLERID(all)}"), "\"Caller & Co\" <3105550199>");
        assert_eq!(sub("${LEN(${LINE})}"), "11");
        assert_eq!(sub("${IF($[1 = 1]?yes:no)}"), "yes");
        assert_eq!(sub("${IF(0?yes:no)}"), "no");
        assert_eq!(sub("${ISNULL(${UNSET})}${EXISTS(${LINE})}"), "11");
        assert_eq!(sub("${CUT(LIST,-,2)}"), "b");
        assert_eq!(sub("${CUT(LIST,-,2-3)}"), "b-c");
        assert_eq!(sub("${CUT(LIST,-,3-)}"), "c-d");
        assert_eq!(sub("${CUT(LIST,-,1&4)}"), "a-d");
        assert_eq!(sub("${REGEX(\"^1[2-9]\" ${LINE})}"), "1");
        assert_eq!(sub("${REGEX(\"^0\" ${LINE})}"), "0");
        assert_eq!(
            sub("${STRFTIME(1700000000,America/Los_Angeles,%Y-%m-%d %H:%M)}"),
            "2023-11-14 14:13"
        );
        assert_eq!(sub("${STRFTIME(1700000000,,%s)}"), "1700000000");
        assert_eq!(sub("${CALLERID(num):0:3}"), "310");
    }

    #[test]
    fn problems_are_reported_and_empty() {
        let mut w = Vec::new();
        assert_eq!(substitute("a${NOPE(1)}b", &env(), &mut w).as_str(), "ab");
        assert!(w[0].contains("NOPE() is not supported"), "{w:?}");
        let mut w = Vec::new();
        assert_eq!(substitute("$[1 +]", &env(), &mut w).as_str(), "");
        assert!(w[0].contains("syntax error"), "{w:?}");
        let mut w = Vec::new();
        assert_eq!(
            substitute("${STRFTIME(1,Mars/Base,%Y)}", &env(), &mut w).as_str(),
            ""
        );
        let mut w = Vec::new();
        substitute("${UNCLOSED", &env(), &mut w);
        assert!(w[0].contains("no closing '}'"));
    }

    #[test]
    fn outside_text_is_never_evaluated() {
        // A value that looks like a reference stays text.
        assert_eq!(sub("${EVIL}"), "${CHANNEL}");
        let out = substitute("x${EVIL}", &env(), &mut Vec::new());
        assert!(out.is_outside(1) && !out.is_outside(0));
        // A name made from outside text is a plain variable, not a function.
        let mut e = env();
        e.vars.insert("X".into(), Text::outside("LEN(abc)"));
        let mut w = Vec::new();
        assert_eq!(substitute("${${X}}", &e, &mut w).as_str(), "");
        assert!(w.is_empty());
        e.vars.insert("Y".into(), Text::outside("LINE:0:3"));
        assert_eq!(substitute("${${Y}}", &e, &mut w).as_str(), "");
    }
}
