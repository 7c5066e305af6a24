//! The applications the router runs, and the parsing of their arguments (after
//! substitution, on trusted separators only: see [`crate::text`]).

use crate::subst::leading_int;
use crate::text::Text;

/// Every application the router runs. Anything else is [`App::Unsupported`]: the
/// dialplan loads, the check lists it, and a call that reaches it is hung up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum App {
    NoOp,
    Set,
    Goto,
    GotoIf,
    Gosub,
    Return,
    Dial,
    Answer,
    Hangup,
    Wait,
    WaitExten,
    Playback,
    Progress,
    Ringing,
    Busy,
    Congestion,
    VoiceMail,
    VoiceMailMain,
    Log,
    Verbose,
    /// app_while: `While(expr)` ... `EndWhile()`, with `ExitWhile()` and
    /// `ContinueWhile()`.
    While,
    EndWhile,
    ExitWhile,
    ContinueWhile,
    Unsupported,
}

impl App {
    /// Application names are case-insensitive, as in Asterisk.
    pub fn from_name(name: &str) -> Self {
        match name.to_ascii_lowercase().as_str() {
            "noop" => App::NoOp,
            "set" => App::Set,
            "goto" => App::Goto,
            "gotoif" => App::GotoIf,
            "gosub" => App::Gosub,
            "return" => App::Return,
            "dial" => App::Dial,
            "answer" => App::Answer,
            "hangup" => App::Hangup,
            "wait" => App::Wait,
            "waitexten" => App::WaitExten,
            "playback" => App::Playback,
            "progress" => App::Progress,
            "ringing" => App::Ringing,
            "busy" => App::Busy,
            "congestion" => App::Congestion,
            "voicemail" => App::VoiceMail,
            "voicemailmain" => App::VoiceMailMain,
            "log" => App::Log,
            "verbose" => App::Verbose,
            "while" => App::While,
            "endwhile" => App::EndWhile,
            "exitwhile" => App::ExitWhile,
            "continuewhile" => App::ContinueWhile,
            _ => App::Unsupported,
        }
    }

    /// Whether the application can run in the `h` extension, after the caller is gone.
    pub fn runs_after_hangup(self) -> bool {
        matches!(
            self,
            App::NoOp
                | App::Set
                | App::Goto
                | App::GotoIf
                | App::Gosub
                | App::Return
                | App::Hangup
                | App::Wait
                | App::Log
                | App::Verbose
                | App::While
                | App::EndWhile
                | App::ExitWhile
                | App::ContinueWhile
        )
    }
}

/// Functions `Set()` can write.
pub const WRITABLE_FUNCTIONS: &[&str] = &["CALLERID", "TIMEOUT"];

/// Where Goto, GotoIf and Gosub go: `[[context,]extension,]priority`.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub context: Option<Text>,
    pub extension: Option<Text>,
    /// A number or a label.
    pub priority: Text,
    /// Gosub's arguments, from `priority(arg1,arg2)`.
    pub args: Vec<Text>,
}

impl Target {
    pub fn parse(text: &Text) -> Option<Self> {
        let parts: Vec<Text> = text.split_trusted(',').iter().map(Text::trim).collect();
        let (context, extension, priority) = match parts.as_slice() {
            [p] => (None, None, p.clone()),
            [e, p] => (None, Some(e.clone()), p.clone()),
            [c, e, p] => (Some(c.clone()), Some(e.clone()), p.clone()),
            _ => return None,
        };
        // Gosub: `priority(args)`.
        let (priority, args) = match priority.find_trusted('(') {
            Some(open) if priority.as_str().ends_with(')') => {
                let inner = priority.slice(open + 1, priority.as_str().len() - 1);
                let args = if inner.is_empty() {
                    Vec::new()
                } else {
                    inner.split_trusted(',')
                };
                (priority.slice(0, open).trim(), args)
            }
            _ => (priority, Vec::new()),
        };
        if priority.is_empty() {
            return None;
        }
        Some(Self {
            context: context.filter(|c| !c.is_empty()),
            extension: extension.filter(|e| !e.is_empty()),
            priority,
            args,
        })
    }
}

/// `GotoIf(condition?[label1][:label2])`: the condition and both branches.
pub fn split_condition(args: &Text) -> (Text, Option<Text>, Option<Text>) {
    let Some((condition, branches)) = args.split_once_trusted('?') else {
        return (args.clone(), None, None);
    };
    let (yes, no) = match branches.split_once_trusted(':') {
        Some((y, n)) => (y, Some(n)),
        None => (branches, None),
    };
    let non_empty = |t: Text| Some(t.trim()).filter(|t| !t.is_empty());
    (condition, non_empty(yes), no.and_then(non_empty))
}

/// Asterisk's `pbx_checkcondition`: empty is false; a leading integer is its value;
/// anything else is true.
pub fn condition_is_true(condition: &str) -> bool {
    let t = condition.trim();
    if t.is_empty() {
        return false;
    }
    let digits = t.strip_prefix(['-', '+']).unwrap_or(t);
    if digits.starts_with(|c: char| c.is_ascii_digit()) {
        leading_int(t) != 0
    } else {
        true
    }
}

/// One `SIP/...` target of Dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialTarget {
    pub peer: String,
    pub number: Option<String>,
}

/// What Dial() asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialSpec {
    pub targets: Vec<DialTarget>,
    pub timeout_secs: Option<u32>,
    pub ringback: bool,
    pub callee_transfer: bool,
    pub caller_transfer: bool,
    /// `g`: go on in the dialplan when the callee hangs up.
    pub continue_after_answer: bool,
    pub options: String,
    /// Targets that were refused, with why (for the log).
    pub refused: Vec<String>,
    /// Options the router does not act on (for the log).
    pub ignored_options: Vec<char>,
}

/// A peer name as sip.conf sections are written.
fn valid_peer(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 80
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.+-".contains(c))
}

/// A number for the Request-URI user part: digits and the few characters dial strings
/// use. Anything else (`&`, `/`, `@`, `;`, `<`, spaces...) is refused, not escaped.
fn valid_number(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "+*#._-".contains(c))
}

/// Parses `Dial(SIP/a&SIP/b@peer&SIP/peer/number,timeout,options)`.
pub fn parse_dial(args: &Text) -> DialSpec {
    let parts = args.split_trusted(',');
    let mut spec = DialSpec {
        targets: Vec::new(),
        timeout_secs: None,
        ringback: false,
        callee_transfer: false,
        caller_transfer: false,
        continue_after_answer: false,
        options: String::new(),
        refused: Vec::new(),
        ignored_options: Vec::new(),
    };
    let targets = parts.first().cloned().unwrap_or_default();
    for target in targets.split_trusted('&') {
        let target = target.trim();
        match parse_target(&target) {
            Ok(t) => spec.targets.push(t),
            Err(why) => spec.refused.push(format!("'{}': {why}", target.as_str())),
        }
    }
    if let Some(timeout) = parts.get(1) {
        let t = timeout.as_str().trim();
        if !t.is_empty() {
            match t.parse::<f64>() {
                Ok(secs) if secs > 0.0 && secs < 86_400.0 => {
                    spec.timeout_secs = Some(secs.ceil() as u32)
                }
                _ => spec.refused.push(format!("timeout '{t}' ignored")),
            }
        }
    }
    if let Some(options) = parts.get(2) {
        spec.options = options.as_str().to_owned();
        let mut chars = options.as_str().chars().peekable();
        while let Some(c) = chars.next() {
            // Options may carry arguments in parentheses: skip them.
            if chars.peek() == Some(&'(') {
                let mut depth = 0;
                for d in chars.by_ref() {
                    match d {
                        '(' => depth += 1,
                        ')' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                }
            }
            match c {
                'r' => spec.ringback = true,
                't' => spec.callee_transfer = true,
                'T' => spec.caller_transfer = true,
                'g' => spec.continue_after_answer = true,
                ' ' => {}
                other => spec.ignored_options.push(other),
            }
        }
    }
    spec
}

fn parse_target(target: &Text) -> Result<DialTarget, String> {
    let Some((tech, resource)) = target.split_once_trusted('/') else {
        return Err("expected TECHNOLOGY/resource".into());
    };
    if !tech.as_str().eq_ignore_ascii_case("SIP") || tech.has_outside() {
        return Err(format!(
            "technology '{}' is not supported (only SIP)",
            tech.as_str()
        ));
    }
    // SIP/number@peer, SIP/peer/number or SIP/peer.
    let (peer, number) = if let Some(at) = resource.rfind_trusted('@') {
        (
            resource.slice(at + 1, resource.as_str().len()),
            Some(resource.slice(0, at)),
        )
    } else if let Some((peer, number)) = resource.split_once_trusted('/') {
        (peer, Some(number))
    } else {
        (resource, None)
    };
    let peer = peer.as_str().trim();
    if !valid_peer(peer) {
        return Err(format!("'{peer}' is not a peer name"));
    }
    let number = match number {
        Some(n) => {
            let n = n.as_str().trim();
            if !valid_number(n) {
                return Err(format!("'{n}' is not a number that can be dialled"));
            }
            Some(n.to_owned())
        }
        None => None,
    };
    Ok(DialTarget {
        peer: peer.to_owned(),
        number,
    })
}

/// A Q.850 cause from a number or Asterisk's name for it.
pub fn hangup_cause(text: &str) -> Option<u32> {
    let t = text.trim();
    if t.is_empty() {
        return None;
    }
    if let Ok(n) = t.parse::<u32>() {
        return (1..=127).contains(&n).then_some(n);
    }
    let name = t.to_ascii_uppercase();
    let name = name.strip_prefix("AST_CAUSE_").unwrap_or(&name);
    Some(match name {
        "UNALLOCATED" => 1,
        "NO_ROUTE_DESTINATION" => 3,
        "NORMAL_CLEARING" | "NORMAL" => 16,
        "USER_BUSY" | "BUSY" => 17,
        "NO_USER_RESPONSE" => 18,
        "NO_ANSWER" => 19,
        "CALL_REJECTED" => 21,
        "NUMBER_CHANGED" => 22,
        "INVALID_NUMBER_FORMAT" => 28,
        "NORMAL_UNSPECIFIED" => 31,
        "NORMAL_CIRCUIT_CONGESTION" | "CONGESTION" => 34,
        "NETWORK_OUT_OF_ORDER" => 38,
        "SWITCH_CONGESTION" => 42,
        "CHANNEL_UNACCEPTABLE" => 6,
        _ => return None,
    })
}

/// `VoiceMail(box[@context][&box2...][,options])`: the first mailbox and the options.
pub fn parse_mailbox(args: &Text) -> Option<(String, String, String)> {
    let parts = args.split_trusted(',');
    let boxes = parts.first()?.trim();
    let first = boxes.split_trusted('&').into_iter().next()?.trim();
    let (mailbox, context) = match first.split_once_trusted('@') {
        Some((b, c)) => (b.trim(), c.trim()),
        None => (first, Text::trusted("default")),
    };
    let ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-+".contains(c))
    };
    if !ok(mailbox.as_str()) || !ok(context.as_str()) {
        return None;
    }
    let options = parts
        .get(1)
        .map(|o| o.as_str().trim().to_owned())
        .unwrap_or_default();
    Some((
        mailbox.as_str().to_owned(),
        context.as_str().to_owned(),
        options,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goto_targets() {
        let t = Target::parse(&Text::trusted("1")).unwrap();
        assert_eq!(
            (t.context, t.extension, t.priority.as_str()),
            (None, None, "1")
        );
        let t = Target::parse(&Text::trusted("13235550100,1")).unwrap();
        assert_eq!(t.extension.unwrap().as_str(), "13235550100");
        let t = Target::parse(&Text::trusted("ctx, 100 ,start")).unwrap();
        assert_eq!(t.context.unwrap().as_str(), "ctx");
        assert_eq!(t.priority.as_str(), "start");
        let t = Target::parse(&Text::trusted("sub,s,1(a,b)")).unwrap();
        assert_eq!(
            t.args.iter().map(Text::as_str).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(Target::parse(&Text::trusted("a,b,c,d")).is_none());
        let mut evil = Text::outside("1,2,3");
        evil.push_trusted(",1");
        let t = Target::parse(&evil).unwrap();
        assert_eq!(t.extension.unwrap().as_str(), "1,2,3");
    }

    #[test]
    fn conditions() {
        let (c, y, n) = split_condition(&Text::trusted("1?voicemail:outbound"));
        assert_eq!(
            (c.as_str(), y.unwrap().as_str(), n.unwrap().as_str()),
            ("1", "voicemail", "outbound")
        );
        let (_, y, n) = split_condition(&Text::trusted("0?:x"));
        assert!(y.is_none() && n.unwrap().as_str() == "x");
        for (c, v) in [
            ("", false),
            ("0", false),
            ("1", true),
            ("abc", true),
            ("00", false),
            ("5x", true),
            ("-1", true),
            (" 0 ", false),
        ] {
            assert_eq!(condition_is_true(c), v, "{c:?}");
        }
    }

    #[test]
    fn dial_strings() {
        let d = parse_dial(&Text::trusted("SIP/13235550100,20"));
        assert_eq!(
            d.targets,
            [DialTarget {
                peer: "13235550100".into(),
                number: None
            }]
        );
        assert_eq!(d.timeout_secs, Some(20));
        let d = parse_dial(&Text::trusted("SIP/911@flowroute"));
        assert_eq!(
            d.targets,
            [DialTarget {
                peer: "flowroute".into(),
                number: Some("911".into())
            }]
        );
        let d = parse_dial(&Text::trusted(
            "SIP/a&SIP/flowroute/18005551234&IAX2/x,30,rtTgm(moh)M(x^y)",
        ));
        assert_eq!(d.targets.len(), 2);
        assert_eq!(
            d.targets[1],
            DialTarget {
                peer: "flowroute".into(),
                number: Some("18005551234".into())
            }
        );
        assert!(d.refused[0].contains("IAX2"));
        assert!(d.ringback && d.callee_transfer && d.caller_transfer && d.continue_after_answer);
        assert_eq!(d.ignored_options, ['m', 'M']);
    }

    #[test]
    fn dial_string_injection_is_impossible() {
        // Dial(SIP/${EXTEN}@flowroute,20) with a hostile dialled number.
        let mut args = Text::trusted("SIP/");
        args.push_text(&Text::outside("500&SIP/flowroute/01144207946000"));
        args.push_trusted("@flowroute,20");
        let d = parse_dial(&args);
        assert!(d.targets.is_empty(), "{d:?}");
        assert_eq!(d.timeout_secs, Some(20));
        // Dial(SIP/${EXTEN}) with an extension that tries to add options.
        let mut args = Text::trusted("SIP/");
        args.push_text(&Text::outside("1000,1,rM(evil)"));
        let d = parse_dial(&args);
        assert!(d.targets.is_empty() && d.timeout_secs.is_none() && d.options.is_empty());
    }

    #[test]
    fn causes_and_mailboxes() {
        assert_eq!(hangup_cause("16"), Some(16));
        assert_eq!(hangup_cause("USER_BUSY"), Some(17));
        assert_eq!(hangup_cause("AST_CAUSE_CONGESTION"), Some(34));
        assert_eq!(hangup_cause("999"), None);
        assert_eq!(hangup_cause(""), None);
        assert_eq!(
            parse_mailbox(&Text::trusted("13235550100@default,u")),
            Some(("13235550100".into(), "default".into(), "u".into()))
        );
        assert_eq!(
            parse_mailbox(&Text::trusted("100")),
            Some(("100".into(), "default".into(), "".into()))
        );
        let mut evil = Text::outside("1@x&2");
        evil.push_trusted("@default");
        assert_eq!(parse_mailbox(&evil), None);
    }
}
