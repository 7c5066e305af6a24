//! `phone.mailer.v1.Mailer`: `Deliver` composes the email (and the pager mail) from the
//! request and voicemail.conf, reads the recording to attach, and stores the finished
//! messages in the outbox before it answers; a repeated request for the same message
//! returns the delivery already stored. `GetDelivery` and `ListPending` read the outbox.

use std::sync::Arc;

use asterisk_conf::voicemail::{Mailbox, VoicemailConf};
use chrono::{TimeZone, Utc};
use phone_blobs::{check_key, BlobError, Blobs};
use phone_proto::mailer::v1 as pb;
use phone_proto::mailer::v1::mailer_server::Mailer;
use service_runtime::telemetry;
use tonic::{Request, Response, Status};

use crate::compose::{self, Composed, Notice};
use crate::outbox::{now_ms, Mail, Outbox, Record, State};
use crate::smtp;

pub struct Api {
    pub conf: Arc<VoicemailConf>,
    /// Mailboxes defined by resources (Kubernetes `Mailbox`), by (context, box).
    pub resource_mailboxes:
        Arc<std::sync::RwLock<std::collections::HashMap<(String, String), Mailbox>>>,
    /// Where the voicemail service keeps the recordings.
    pub recordings: Blobs,
    pub outbox: Arc<Outbox>,
    pub shutdown: service_runtime::Shutdown,
}

fn unavailable(e: BlobError) -> Status {
    Status::unavailable(e.to_string())
}

/// The delivery as the API shows it.
pub fn delivery(record: &Record) -> pb::Delivery {
    pb::Delivery {
        message_id: record.id.clone(),
        state: match record.state {
            State::Pending => pb::DeliveryState::Pending,
            State::Sent => pb::DeliveryState::Sent,
            State::Failed => pb::DeliveryState::Failed,
        } as i32,
        attempts: record.attempts,
        created_time: record.created_ms.div_euclid(1000),
        next_attempt_time: match record.state {
            State::Pending => record.next_attempt_ms.div_euclid(1000),
            _ => 0,
        },
        last_error: record.last_error.clone(),
        email_message_id: record
            .mails
            .first()
            .map(|m| m.header_id.clone())
            .unwrap_or_default(),
    }
}

/// A message id is one storage key part: it names the outbox's objects.
fn check_id(id: &str) -> Result<(), Status> {
    if id.contains('/') || check_key(id).is_err() {
        return Err(Status::invalid_argument(format!(
            "bad message id {id:?}: letters, digits, '-', '_', '.' only"
        )));
    }
    Ok(())
}

impl Api {
    /// The finished mails of a request: (kind, Message-ID, envelope, bytes).
    async fn compose(&self, request: &pb::DeliverRequest) -> Result<Vec<(Mail, Vec<u8>)>, Status> {
        let resource = self
            .resource_mailboxes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(request.context.clone(), request.mailbox.clone()))
            .cloned();
        let mailbox = self
            .conf
            .mailbox(&request.context, &request.mailbox)
            .or(resource.as_ref())
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no mailbox {}@{} in voicemail.conf or Mailbox resources",
                    request.mailbox, request.context
                ))
            })?;
        // The recordings must be this mailbox's: a request cannot make the mailer read
        // (and mail out) any other object of the store.
        let own = format!("voicemail/{}/{}/", request.context, request.mailbox);
        for recording in &request.recordings {
            if !recording.key.starts_with(&own) || check_key(&recording.key).is_err() {
                return Err(Status::invalid_argument(format!(
                    "recording key {:?} is not under {own}",
                    recording.key
                )));
            }
        }
        let notice = Notice {
            message_id: request.message_id.clone(),
            mailbox: request.mailbox.clone(),
            context: request.context.clone(),
            message_number: request.message_number.max(1),
            caller_id_number: request.caller_id_number.clone(),
            caller_id_name: request.caller_id_name.clone(),
            origin_time: Utc
                .timestamp_opt(request.origin_time, 0)
                .single()
                .unwrap_or_else(Utc::now),
            duration_secs: request.duration_secs,
            recordings: request
                .recordings
                .iter()
                .map(|r| (r.format.clone(), r.key.clone()))
                .collect(),
        };
        let mut out = Vec::new();
        let email = compose::email(&self.conf, mailbox, &notice);
        let pager = compose::pager(&self.conf, mailbox, &notice);
        if email.is_none() && pager.is_none() {
            return Err(Status::failed_precondition(format!(
                "mailbox {}@{} has no email or pager address",
                request.mailbox, request.context
            )));
        }
        if let Some(email) = email {
            let recording = match &email.attachment {
                Some(attachment) => match self.recordings.get(&attachment.key).await {
                    Ok(Some(bytes)) => Some(bytes),
                    Ok(None) => {
                        // Deleted before the mail was made: the email still says a
                        // message came.
                        tracing::warn!(key = %attachment.key, id = %request.message_id, "the recording is gone; emailing without it");
                        None
                    }
                    Err(e) => return Err(unavailable(e)),
                },
                None => None,
            };
            out.push(finish("email", &email, recording)?);
        }
        if let Some(pager) = pager {
            out.push(finish("pager", &pager, None)?);
        }
        Ok(out)
    }
}

fn finish(
    kind: &str,
    composed: &Composed,
    recording: Option<Vec<u8>>,
) -> Result<(Mail, Vec<u8>), Status> {
    let message = smtp::message(composed, recording).map_err(|e| {
        Status::failed_precondition(format!("voicemail.conf makes a bad {kind} mail: {e}"))
    })?;
    let envelope = message.envelope();
    let mail = Mail {
        kind: kind.to_owned(),
        header_id: composed.message_id.clone(),
        from: envelope.from().map(ToString::to_string).unwrap_or_default(),
        to: envelope.to().iter().map(ToString::to_string).collect(),
        sent: false,
    };
    Ok((mail, message.formatted()))
}

#[tonic::async_trait]
impl Mailer for Api {
    async fn deliver(
        &self,
        request: Request<pb::DeliverRequest>,
    ) -> Result<Response<pb::Delivery>, Status> {
        let request = request.into_inner();
        check_id(&request.message_id)?;
        let _guard = self.outbox.lock(&request.message_id).await;
        if let Some(record) = self
            .outbox
            .lookup(&request.message_id)
            .await
            .map_err(unavailable)?
        {
            tracing::info!(id = %request.message_id, state = ?record.state, "delivery requested again; nothing new sent");
            return Ok(Response::new(delivery(&record)));
        }
        if self.shutdown.is_triggered() {
            return Err(Status::unavailable("draining: no new deliveries"));
        }
        let mails = self.compose(&request).await?;
        let now = now_ms();
        let record = Record {
            id: request.message_id.clone(),
            context: request.context.clone(),
            mailbox: request.mailbox.clone(),
            state: State::Pending,
            created_ms: now,
            attempts: 0,
            next_attempt_ms: now,
            last_error: String::new(),
            mails: mails.iter().map(|(m, _)| m.clone()).collect(),
            trace: telemetry::traceparent(&tracing::Span::current()),
        };
        let emls = mails
            .into_iter()
            .map(|(mail, bytes)| (mail.kind, bytes))
            .collect();
        self.outbox
            .add(record.clone(), emls)
            .await
            .map_err(unavailable)?;
        Ok(Response::new(delivery(&record)))
    }

    async fn get_delivery(
        &self,
        request: Request<pb::GetDeliveryRequest>,
    ) -> Result<Response<pb::Delivery>, Status> {
        let id = request.into_inner().message_id;
        check_id(&id)?;
        match self.outbox.lookup(&id).await.map_err(unavailable)? {
            Some(record) => Ok(Response::new(delivery(&record))),
            None => Err(Status::not_found(format!("no delivery of message {id}"))),
        }
    }

    async fn list_pending(
        &self,
        _: Request<pb::ListPendingRequest>,
    ) -> Result<Response<pb::ListPendingResponse>, Status> {
        let mut deliveries: Vec<pb::Delivery> = self
            .outbox
            .pending()
            .await
            .map_err(unavailable)?
            .iter()
            .map(delivery)
            .collect();
        deliveries.sort_by_key(|d| (d.created_time, d.message_id.clone()));
        Ok(Response::new(pb::ListPendingResponse { deliveries }))
    }
}
