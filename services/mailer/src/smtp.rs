//! Sending over SMTP with `lettre`: plain, STARTTLS or implicit TLS, with AUTH when a
//! user is set. The password comes only from the environment (a Kubernetes Secret) and
//! is never logged. A failure says whether it is permanent (a 5xx answer: not retried)
//! or temporary (refused, timed out, 4xx: retried by the outbox).

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::{Attachment as Part, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::compose::Composed;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Security {
    /// No TLS (a relay on the same host or network).
    None,
    /// STARTTLS, required.
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
}

/// SMTP settings; each is also a `PHONE_SMTP_*` environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct SmtpArgs {
    /// The SMTP server; without it, emails are written as .eml files to the outbox folder.
    #[arg(long = "smtp-host", env = "PHONE_SMTP_HOST")]
    pub host: Option<String>,
    #[arg(long = "smtp-port", env = "PHONE_SMTP_PORT", default_value_t = 587)]
    pub port: u16,
    #[arg(
        long = "smtp-security",
        env = "PHONE_SMTP_SECURITY",
        value_enum,
        default_value = "starttls"
    )]
    pub security: Security,
    /// The AUTH user; the password is `PHONE_SMTP_PASSWORD`.
    #[arg(long = "smtp-user", env = "PHONE_SMTP_USER")]
    pub user: Option<String>,
    #[arg(skip = std::env::var("PHONE_SMTP_PASSWORD").ok().map(asterisk_conf::Secret::new))]
    pub password: Option<asterisk_conf::Secret>,
    /// A PEM file of CA certificates to trust besides the public roots (a server with
    /// a certificate from an internal CA).
    #[arg(long = "smtp-ca-file", env = "PHONE_SMTP_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    /// How long one SMTP conversation may take.
    #[arg(
        id = "smtp_timeout_ms",
        long = "smtp-timeout-ms",
        env = "PHONE_SMTP_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    pub timeout_ms: u64,
}

impl SmtpArgs {
    /// No SMTP server: mail is written to files.
    pub fn none() -> Self {
        Self {
            host: None,
            port: 587,
            security: Security::Starttls,
            user: None,
            password: None,
            ca_file: None,
            timeout_ms: 30_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The server refused for good (5xx): retrying would not help.
    #[error("permanent SMTP failure: {0}")]
    Permanent(String),
    /// Refused connection, timeout, 4xx: worth another try later.
    #[error("temporary SMTP failure: {0}")]
    Temporary(String),
    /// The email could not be built (a bad address in voicemail.conf).
    #[error("cannot build the email: {0}")]
    Build(String),
}

/// The MIME message: a text part, and the recording when there is one.
pub fn message(mail: &Composed, recording: Option<Vec<u8>>) -> Result<Message, SendError> {
    let mailbox = |(name, address): &(String, String)| -> Result<Mailbox, SendError> {
        let address = address
            .parse()
            .map_err(|e| SendError::Build(format!("{address}: {e}")))?;
        Ok(Mailbox::new(
            Some(name.clone()).filter(|n| !n.is_empty()),
            address,
        ))
    };
    let builder = Message::builder()
        .from(mailbox(&mail.from)?)
        .to(mailbox(&mail.to)?)
        .subject(mail.subject.clone())
        .message_id(Some(mail.message_id.clone()));
    let text = SinglePart::plain(mail.body.clone());
    let built = match (&mail.attachment, recording) {
        (Some(attachment), Some(bytes)) => {
            let content_type = ContentType::parse(&attachment.content_type)
                .map_err(|e| SendError::Build(e.to_string()))?;
            builder.multipart(
                MultiPart::mixed()
                    .singlepart(text)
                    .singlepart(Part::new(attachment.filename.clone()).body(bytes, content_type)),
            )
        }
        _ => builder.singlepart(text),
    };
    built.map_err(|e| SendError::Build(e.to_string()))
}

/// An SMTP client.
#[derive(Clone)]
pub struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
}

impl Smtp {
    pub fn new(args: &SmtpArgs, host: &str) -> Result<Self, SendError> {
        let extra_roots = match &args.ca_file {
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| SendError::Build(format!("{}: {e}", path.display())))?;
                vec![Certificate::from_pem(&pem)
                    .map_err(|e| SendError::Build(format!("{}: {e}", path.display())))?]
            }
            None => Vec::new(),
        };
        let tls = |h: &str| {
            let mut builder = TlsParameters::builder(h.to_owned());
            for cert in &extra_roots {
                builder = builder.add_root_certificate(cert.clone());
            }
            builder.build().map_err(|e| SendError::Build(e.to_string()))
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(args.port)
            .timeout(Some(Duration::from_millis(args.timeout_ms.max(100))));
        builder = match args.security {
            Security::None => builder.tls(Tls::None),
            Security::Starttls => builder.tls(Tls::Required(tls(host)?)),
            Security::Tls => builder.tls(Tls::Wrapper(tls(host)?)),
        };
        if let (Some(user), Some(password)) = (&args.user, &args.password) {
            builder =
                builder.credentials(Credentials::new(user.clone(), password.expose().to_owned()));
        }
        Ok(Self {
            transport: builder.build(),
        })
    }

    pub async fn send(&self, message: Message) -> Result<(), SendError> {
        classify(self.transport.send(message).await)
    }

    /// Sends a finished message (the outbox's `.eml`) to the envelope's recipients.
    pub async fn send_raw(
        &self,
        envelope: &lettre::address::Envelope,
        message: &[u8],
    ) -> Result<(), SendError> {
        classify(self.transport.send_raw(envelope, message).await)
    }
}

fn classify<T>(result: Result<T, lettre::transport::smtp::Error>) -> Result<(), SendError> {
    match result {
        Ok(_) => Ok(()),
        Err(e) if e.is_permanent() => Err(SendError::Permanent(e.to_string())),
        Err(e) => Err(SendError::Temporary(e.to_string())),
    }
}
