//! `voicemail.conf` as app_voicemail reads it: `[general]`, `[zonemessages]`, and every
//! other section a voicemail context holding mailbox lines
//! `box => pin,full name,email,pager email,options`.
//!
//! Text settings (`emailsubject`, `emailbody`, the date formats, ...) are kept exactly as
//! written, `\n` and `${VM_...}` included: they are templates that the mailer expands.

use std::path::Path;

use crate::error::{Error, Location, Warning};
use crate::tree::{self, Config, Entry, Source};
use crate::values::{invalid, is_false, is_true, parse_bool, parse_number, Secret};

/// app_voicemail's defaults where the file is silent.
pub mod defaults {
    pub const FORMAT: &str = "wav";
    pub const SERVER_EMAIL: &str = "asterisk";
    pub const SKIP_MS: u32 = 3000;
    pub const MAX_LOGINS: u32 = 3;
    pub const MAX_MSG: u32 = 100;
    pub const SILENCE_THRESHOLD: u32 = 128;
    pub const DATE_FORMAT: &str = "%A, %B %d, %Y at %r";
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoicemailConf {
    pub general: General,
    pub zones: Vec<Zone>,
    pub contexts: Vec<Context>,
    /// The `aliasescontext=` section's lines: other names for mailboxes.
    pub aliases: Vec<Alias>,
    pub warnings: Vec<Warning>,
}

/// `1234@devices => 1234@default` in the section `aliasescontext=` names: the mailbox
/// `1234@devices` is `1234@default`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alias {
    pub number: String,
    pub context: String,
    pub target_number: String,
    pub target_context: String,
    pub location: Location,
}

impl VoicemailConf {
    /// The mailbox `number@context`, or the one it is an alias of.
    pub fn mailbox(&self, context: &str, number: &str) -> Option<&Mailbox> {
        let direct = self
            .contexts
            .iter()
            .find(|c| c.name == context)
            .and_then(|c| c.mailboxes.iter().find(|m| m.number == number));
        direct.or_else(|| {
            let alias = self
                .aliases
                .iter()
                .find(|a| a.number == number && a.context == context)?;
            self.contexts
                .iter()
                .find(|c| c.name == alias.target_context)?
                .mailboxes
                .iter()
                .find(|m| m.number == alias.target_number)
        })
    }

    pub fn zone(&self, name: &str) -> Option<&Zone> {
        self.zones.iter().find(|z| z.name == name)
    }
}

/// `[general]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct General {
    /// `format=wav49|wav`: every format a message is stored in; the first is attached.
    pub formats: Vec<String>,
    pub server_email: String,
    pub from_string: Option<String>,
    pub attach: bool,
    pub skip_ms: u32,
    /// Seconds of silence that end a recording; 0 turns silence detection off.
    pub max_silence: u32,
    pub silence_threshold: u32,
    pub max_logins: u32,
    pub max_msg: u32,
    /// Longest message in seconds; 0 means no limit.
    pub max_secs: u32,
    /// Shorter messages are discarded.
    pub min_secs: u32,
    pub email_date_format: String,
    pub pager_date_format: String,
    pub send_voicemail: bool,
    /// A `[zonemessages]` name.
    pub tz: Option<String>,
    pub email_subject: Option<String>,
    pub email_body: Option<String>,
    pub pager_subject: Option<String>,
    pub pager_body: Option<String>,
    /// Delete the message after emailing it.
    pub delete: bool,
    /// `aliasescontext=`: the section of mailbox aliases.
    pub aliases_context: Option<String>,
    pub location: Option<Location>,
}

impl Default for General {
    fn default() -> Self {
        Self {
            formats: vec![defaults::FORMAT.to_owned()],
            server_email: defaults::SERVER_EMAIL.to_owned(),
            from_string: None,
            attach: false,
            skip_ms: defaults::SKIP_MS,
            max_silence: 0,
            silence_threshold: defaults::SILENCE_THRESHOLD,
            max_logins: defaults::MAX_LOGINS,
            max_msg: defaults::MAX_MSG,
            max_secs: 0,
            min_secs: 0,
            email_date_format: defaults::DATE_FORMAT.to_owned(),
            pager_date_format: defaults::DATE_FORMAT.to_owned(),
            send_voicemail: false,
            tz: None,
            email_subject: None,
            email_body: None,
            pager_subject: None,
            pager_body: None,
            delete: false,
            aliases_context: None,
            location: None,
        }
    }
}

/// A `[zonemessages]` line: `name=Time/Zone|format for saying the date`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    pub name: String,
    /// An IANA time zone name, such as `America/Los_Angeles`.
    pub timezone: String,
    /// How the envelope is spoken (`'vm-received' Q 'digits/at' IMp`).
    pub say_format: String,
    pub location: Location,
}

/// A voicemail context: a section other than `[general]` and `[zonemessages]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    pub name: String,
    pub mailboxes: Vec<Mailbox>,
}

/// `box => pin,full name,email,pager email,options`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    pub context: String,
    pub number: String,
    pub pin: Secret,
    /// A leading `-` on the PIN: the user may not change it.
    pub pin_locked: bool,
    pub full_name: String,
    pub email: Option<String>,
    pub pager: Option<String>,
    /// `key=value` options after the pager field, separated by `|`, in order.
    pub options: Vec<(String, String)>,
    pub location: Location,
}

impl Mailbox {
    /// The last value of a per-mailbox option (`attach`, `tz`, ...).
    pub fn option(&self, key: &str) -> Option<&str> {
        self.options
            .iter()
            .rev()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    /// The zone name in force: the mailbox's `tz=` option, else `[general]`'s.
    pub fn tz<'a>(&'a self, general: &'a General) -> Option<&'a str> {
        self.option("tz").or(general.tz.as_deref())
    }

    /// Whether the email carries the recording: the mailbox's `attach=`, else `[general]`'s.
    pub fn attach(&self, general: &General) -> bool {
        self.option("attach").map(is_true).unwrap_or(general.attach)
    }
}

/// Mailbox options app_voicemail understands; others are warned about.
const MAILBOX_OPTIONS: &[&str] = &[
    "attach",
    "attachfmt",
    "attachextension",
    "callback",
    "delete",
    "dialout",
    "emailbody",
    "emailsubject",
    "envelope",
    "exitcontext",
    "forcegreetings",
    "forcename",
    "hidefromdir",
    "locale",
    "maxmsg",
    "maxsecs",
    "messagewrap",
    "minpassword",
    "nextaftercmd",
    "operator",
    "review",
    "saycid",
    "sayduration",
    "saydurationm",
    "sendvoicemail",
    "serveremail",
    "tempgreetwarn",
    "tz",
    "volgain",
    "fromstring",
];

/// Reads `voicemail.conf` from the file system.
pub fn load(path: impl AsRef<Path>) -> Result<VoicemailConf, Error> {
    from_config(tree::load(path)?)
}

/// Reads `voicemail.conf` from `source`.
pub fn load_from(source: &dyn Source, path: &Path) -> Result<VoicemailConf, Error> {
    from_config(tree::load_from(source, path)?)
}

/// Builds the typed view of an already parsed file.
pub fn from_config(config: Config) -> Result<VoicemailConf, Error> {
    let mut warnings = config.warnings.clone();
    let mut general = General::default();
    let mut zones: Vec<Zone> = Vec::new();
    let mut contexts: Vec<Context> = Vec::new();
    let mut aliases: Vec<Alias> = Vec::new();
    // app_voicemail reads [general] before any mailbox: the aliases' section is known.
    let aliases_context = config
        .sections
        .iter()
        .filter(|s| s.name == "general")
        .flat_map(|s| s.entries.iter())
        .rev()
        .find(|e| e.key.eq_ignore_ascii_case("aliasescontext"))
        .map(|e| e.value.trim().to_owned())
        .filter(|v| !v.is_empty());

    for section in config.sections.iter().filter(|s| !s.is_template) {
        match section.name.as_str() {
            "general" => {
                general.location.get_or_insert(section.location.clone());
                for entry in &section.entries {
                    let applied = apply_general(entry, &mut general, &mut warnings);
                    crate::values::keep_going(applied, &mut warnings)?;
                }
            }
            "zonemessages" => {
                for entry in &section.entries {
                    let (timezone, say_format) = match entry.value.split_once('|') {
                        Some((tz, fmt)) => (tz.trim(), fmt.trim()),
                        None => (entry.value.trim(), ""),
                    };
                    // app_voicemail takes the zone as written; one that is not even
                    // shaped like a zone name is skipped.
                    if !is_timezone_name(timezone) {
                        warnings.push(Warning {
                            location: entry.location.clone(),
                            message: format!(
                                "zone '{}': '{timezone}' is not a time zone name (Area/City); line ignored",
                                entry.key
                            ),
                        });
                        continue;
                    }
                    zones.retain(|z| z.name != entry.key);
                    zones.push(Zone {
                        name: entry.key.clone(),
                        timezone: timezone.to_owned(),
                        say_format: say_format.to_owned(),
                        location: entry.location.clone(),
                    });
                }
            }
            name if aliases_context.as_deref() == Some(name) => {
                for entry in &section.entries {
                    match parse_alias(entry) {
                        Some(alias) => aliases.push(alias),
                        None => warnings.push(Warning {
                            location: entry.location.clone(),
                            message: format!(
                                "alias '{} => {}' is not 'box@context => box@context'; line ignored",
                                entry.key, entry.value
                            ),
                        }),
                    }
                }
            }
            name => {
                let index = match contexts.iter().position(|c| c.name == name) {
                    Some(i) => i,
                    None => {
                        contexts.push(Context {
                            name: name.to_owned(),
                            mailboxes: Vec::new(),
                        });
                        contexts.len() - 1
                    }
                };
                for entry in &section.entries {
                    let mailbox = match parse_mailbox(name, entry, &mut warnings) {
                        Ok(Some(mailbox)) => mailbox,
                        Ok(None) => continue,
                        Err(e) => {
                            crate::values::keep_going(Err(e), &mut warnings)?;
                            continue;
                        }
                    };
                    let boxes = &mut contexts[index].mailboxes;
                    if let Some(previous) = boxes.iter().position(|m| m.number == mailbox.number) {
                        warnings.push(Warning {
                            location: entry.location.clone(),
                            message: format!(
                                "mailbox {}@{name} is defined again (first at {}); this line replaces it",
                                mailbox.number, boxes[previous].location
                            ),
                        });
                        boxes[previous] = mailbox;
                    } else {
                        boxes.push(mailbox);
                    }
                }
            }
        }
    }

    let conf = VoicemailConf {
        general,
        zones,
        contexts,
        aliases,
        warnings,
    };
    let mut warnings = check_zone_references(&conf);
    let mut conf = conf;
    conf.warnings.append(&mut warnings);
    Ok(conf)
}

fn apply_general(
    entry: &Entry,
    general: &mut General,
    warnings: &mut Vec<Warning>,
) -> Result<(), Error> {
    let value = entry.value.as_str();
    let text = || Some(value.to_owned());
    match entry.key.to_ascii_lowercase().as_str() {
        "format" => {
            let formats: Vec<String> = value
                .split('|')
                .map(|f| f.trim().to_ascii_lowercase())
                .filter(|f| !f.is_empty())
                .collect();
            if formats.is_empty() {
                return Err(invalid(
                    entry,
                    "expected at least one format, such as wav49|wav",
                ));
            }
            general.formats = formats;
        }
        "serveremail" => general.server_email = value.to_owned(),
        "fromstring" => general.from_string = text(),
        "attach" => general.attach = parse_bool(entry)?,
        "skipms" => general.skip_ms = parse_number(entry)?,
        "maxsilence" => general.max_silence = parse_number(entry)?,
        "silencethreshold" => general.silence_threshold = parse_number(entry)?,
        "maxlogins" => general.max_logins = parse_number(entry)?,
        "maxmsg" => general.max_msg = parse_number(entry)?,
        // `maxmessage`/`minmessage` are the old names.
        "maxsecs" | "maxmessage" => general.max_secs = parse_number(entry)?,
        "minsecs" | "minmessage" => general.min_secs = parse_number(entry)?,
        "emaildateformat" => general.email_date_format = value.to_owned(),
        "pagerdateformat" => general.pager_date_format = value.to_owned(),
        "sendvoicemail" => general.send_voicemail = parse_bool(entry)?,
        "tz" => general.tz = text(),
        "emailsubject" => general.email_subject = text(),
        "emailbody" => general.email_body = text(),
        "pagersubject" => general.pager_subject = text(),
        "pagerbody" => general.pager_body = text(),
        "delete" => general.delete = parse_bool(entry)?,
        "aliasescontext" => general.aliases_context = text(),
        _ => warnings.push(Warning {
            location: entry.location.clone(),
            message: format!("unknown key '{}' in [general] ignored", entry.key),
        }),
    }
    Ok(())
}

/// `box@context => box@context`.
fn parse_alias(entry: &Entry) -> Option<Alias> {
    let (number, context) = entry.key.trim().split_once('@')?;
    let (target_number, target_context) = entry.value.trim().split_once('@')?;
    let parts = [number, context, target_number, target_context].map(str::trim);
    if parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    Some(Alias {
        number: parts[0].to_owned(),
        context: parts[1].to_owned(),
        target_number: parts[2].to_owned(),
        target_context: parts[3].to_owned(),
        location: entry.location.clone(),
    })
}

/// A mailbox line; `None` (with a warning) for one no caller could reach: app_voicemail
/// stores any name, but a name with `@` or spaces cannot be dialled as `box@context`.
fn parse_mailbox(
    context: &str,
    entry: &Entry,
    warnings: &mut Vec<Warning>,
) -> Result<Option<Mailbox>, Error> {
    if !entry.object {
        warnings.push(Warning {
            location: entry.location.clone(),
            message: format!("mailbox {} is written with '=' rather than '=>'", entry.key),
        });
    }
    let number = entry.key.trim();
    if !number
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.+*#".contains(c))
    {
        let hint = if number.contains('@') {
            " (an alias: name its section with aliasescontext= in [general])"
        } else {
            ""
        };
        warnings.push(Warning {
            location: entry.location.clone(),
            message: format!(
                "mailbox '{number}' in [{context}] cannot be reached by a caller{hint}; line ignored"
            ),
        });
        return Ok(None);
    }
    let mut fields = entry.value.splitn(5, ',');
    let raw_pin = fields.next().unwrap_or_default().trim();
    let (pin_locked, pin) = match raw_pin.strip_prefix('-') {
        Some(pin) => (true, pin),
        None => (false, raw_pin),
    };
    let full_name = fields.next().unwrap_or_default().trim().to_owned();
    let non_empty = |s: Option<&str>| {
        s.map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let email = non_empty(fields.next());
    let pager = non_empty(fields.next());
    let mut options = Vec::new();
    if let Some(raw) = fields.next() {
        for option in raw.split('|').map(str::trim).filter(|o| !o.is_empty()) {
            let Some((key, value)) = option.split_once('=') else {
                return Err(invalid(
                    entry,
                    &format!("option '{option}' is not key=value"),
                ));
            };
            let key = key.trim().to_ascii_lowercase();
            if !MAILBOX_OPTIONS.contains(&key.as_str()) {
                warnings.push(Warning {
                    location: entry.location.clone(),
                    message: format!("unknown mailbox option '{key}' ignored"),
                });
            }
            if key == "attach" && !is_true(value) && !is_false(value) {
                return Err(invalid(entry, "attach= must be yes or no"));
            }
            options.push((key, value.trim().to_owned()));
        }
    }
    Ok(Some(Mailbox {
        context: context.to_owned(),
        number: number.to_owned(),
        pin: Secret::new(pin),
        pin_locked,
        full_name,
        email,
        pager,
        options,
        location: entry.location.clone(),
    }))
}

/// `Area/City`, `Etc/UTC` or `UTC`: the shape of an IANA zone name. Whether the zone
/// exists is checked by whoever formats dates with it.
fn is_timezone_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/_-+".contains(c))
}

fn check_zone_references(conf: &VoicemailConf) -> Vec<Warning> {
    let mut warnings = Vec::new();
    if let (Some(tz), Some(location)) = (&conf.general.tz, &conf.general.location) {
        if conf.zone(tz).is_none() {
            warnings.push(Warning {
                location: location.clone(),
                message: format!("tz={tz} names no [zonemessages] entry; dates use UTC"),
            });
        }
    }
    for mailbox in conf.contexts.iter().flat_map(|c| &c.mailboxes) {
        if let Some(tz) = mailbox.option("tz") {
            if conf.zone(tz).is_none() {
                warnings.push(Warning {
                    location: mailbox.location.clone(),
                    message: format!("tz={tz} names no [zonemessages] entry"),
                });
            }
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<VoicemailConf, Error> {
        from_config(tree::parse_str("voicemail.conf", text)?)
    }

    #[test]
    fn defaults_when_silent() {
        let conf = parse("[default]\n100 => 4242\n").unwrap();
        assert_eq!(conf.general, General::default());
        let mb = conf.mailbox("default", "100").unwrap();
        assert_eq!(mb.pin.expose(), "4242");
        assert_eq!(mb.full_name, "");
        assert_eq!(mb.email, None);
        assert!(!mb.attach(&conf.general));
    }

    #[test]
    fn full_mailbox_line_with_options() {
        let conf = parse(
            "[zonemessages]\neastern=America/New_York|'vm-received' Q\n\
             [office]\n200 => -9999,Front Desk,desk@example.com,pager@example.com,attach=no|tz=eastern|saycid=yes\n",
        )
        .unwrap();
        let mb = conf.mailbox("office", "200").unwrap();
        assert!(mb.pin_locked);
        assert_eq!(mb.pin.expose(), "9999");
        assert_eq!(mb.full_name, "Front Desk");
        assert_eq!(mb.email.as_deref(), Some("desk@example.com"));
        assert_eq!(mb.pager.as_deref(), Some("pager@example.com"));
        assert_eq!(mb.option("tz"), Some("eastern"));
        assert!(!mb.attach(&conf.general));
        assert_eq!(mb.tz(&conf.general), Some("eastern"));
        assert!(conf.warnings.is_empty(), "{:?}", conf.warnings);
    }

    #[test]
    fn errors_and_warnings_name_the_line() {
        // app_voicemail logs what it cannot read and goes on with its default.
        let conf = parse("[general]\nmaxmsg=lots\n").unwrap();
        assert_eq!(conf.general.max_msg, defaults::MAX_MSG);
        assert_eq!(
            conf.warnings[0].to_string(),
            "voicemail.conf:2: warning: maxmsg: expected a whole number (got 'lots'); line ignored"
        );
        let conf = parse("[zonemessages]\nbad=Not A Zone|x\n").unwrap();
        assert!(conf.zones.is_empty());
        assert!(conf.warnings[0]
            .to_string()
            .starts_with("voicemail.conf:2: warning: zone 'bad'"));
        let conf = parse("[default]\n1 => 1,a,b,c,attach\n").unwrap();
        assert!(
            conf.warnings[0]
                .to_string()
                .contains("option 'attach' is not key=value"),
            "{:?}",
            conf.warnings
        );
        let conf = parse("[general]\ntz=mars\nvmfoo=1\n").unwrap();
        let text: Vec<String> = conf.warnings.iter().map(ToString::to_string).collect();
        assert!(
            text.contains(
                &"voicemail.conf:3: warning: unknown key 'vmfoo' in [general] ignored".to_owned()
            ),
            "{text:?}"
        );
        assert!(text.iter().any(|w| w.contains("tz=mars")), "{text:?}");
    }

    #[test]
    fn text_templates_are_kept_raw() {
        let conf = parse(
            "[general]\nemailbody=Dear ${VM_NAME}:\\n\\n\\tjust wanted to let you know\nemailsubject=[PBX]: New message ${VM_MSGNUM} in mailbox ${VM_MAILBOX}\n",
        )
        .unwrap();
        assert_eq!(
            conf.general.email_body.as_deref(),
            Some("Dear ${VM_NAME}:\\n\\n\\tjust wanted to let you know")
        );
        assert_eq!(
            conf.general.email_subject.as_deref(),
            Some("[PBX]: New message ${VM_MSGNUM} in mailbox ${VM_MAILBOX}")
        );
    }
}
