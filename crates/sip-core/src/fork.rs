//! The B leg(s) of `Dial()`, sans-IO: ring every target at once (every registered
//! contact of a line, every `&` target), pass the first ringing back, take the first
//! answer and CANCEL the rest, give up with CANCEL at the Dial timeout, and say how it
//! ended as Asterisk's DIALSTATUS.
//!
//! The driver turns [`ForkAction`]s into INVITE and CANCEL client transactions and
//! reports responses with [`Fork::handle_response`]; time is an input.
//!
//! DIALSTATUS from the final responses when nobody answers, as chan_sip's
//! `hangup_sip2cause` maps statuses to causes and app_dial's `handle_cause` causes to
//! DIALSTATUS: any 486 or 600 (busy) -> BUSY; else any 503, or a 5xx that function
//! does not name (congestion) -> CONGESTION; else (404, 408 and Timer B, 480, 500,
//! 502, 504, 603 ...) -> CHANUNAVAIL; the Dial timeout -> NOANSWER; the caller hanging
//! up -> CANCEL; no target at all -> CHANUNAVAIL.

use std::time::Instant;

/// Asterisk's DIALSTATUS of a Dial that ended (the edge's driver reports it to the
/// router as `phone.router.v1.DialStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialStatus {
    Answer,
    Busy,
    Noanswer,
    Cancel,
    Congestion,
    Chanunavail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BranchState {
    Calling,
    Ringing,
    Answered,
    /// A final non-2xx response, or cancelled.
    Done(u16),
    Cancelling,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForkAction {
    /// Send an INVITE to target `index`.
    Invite { index: usize },
    /// CANCEL the INVITE to target `index` (RFC 3261 §9: only after a provisional
    /// response; the driver holds it until one comes, or sends it when it does).
    Cancel { index: usize },
    /// Tell the caller it rings (the first 180/183 of any branch), with early media if
    /// that response carried SDP.
    Ringing { index: usize, early_media: bool },
    /// Target `index` answered: bridge the caller to it.
    Answered { index: usize },
    /// The Dial is over with this status.
    Finished(DialStatus),
}

#[derive(Debug, Clone)]
pub struct Fork {
    branches: Vec<BranchState>,
    deadline: Option<Instant>,
    rang: bool,
    finished: bool,
    actions: Vec<ForkAction>,
}

impl Fork {
    /// Starts ringing `targets` targets, giving up at `deadline` (no deadline for
    /// `Dial()` without a timeout).
    pub fn new(targets: usize, deadline: Option<Instant>) -> Self {
        let mut fork = Self {
            branches: vec![BranchState::Calling; targets],
            deadline,
            rang: false,
            finished: false,
            actions: (0..targets)
                .map(|index| ForkAction::Invite { index })
                .collect(),
        };
        if targets == 0 {
            fork.finish(DialStatus::Chanunavail);
        }
        fork
    }

    pub fn poll_actions(&mut self) -> Vec<ForkAction> {
        std::mem::take(&mut self.actions)
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline.filter(|_| !self.finished)
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// A response on branch `index`; `has_sdp` for early media on 183.
    pub fn handle_response(&mut self, index: usize, status: u16, has_sdp: bool) {
        let Some(state) = self.branches.get(index).copied() else {
            return;
        };
        match status {
            100 => {}
            101..=199 => {
                if state == BranchState::Calling {
                    self.branches[index] = BranchState::Ringing;
                }
                if !self.rang && !self.finished && status != 100 {
                    self.rang = true;
                    self.actions.push(ForkAction::Ringing {
                        index,
                        early_media: has_sdp,
                    });
                }
            }
            200..=299 => {
                if self.finished {
                    // A second answer after another branch won: the driver ACKs and BYEs it.
                    return;
                }
                self.branches[index] = BranchState::Answered;
                self.actions.push(ForkAction::Answered { index });
                self.cancel_others(Some(index));
                self.finish(DialStatus::Answer);
            }
            _ => {
                if !matches!(state, BranchState::Done(_)) {
                    self.branches[index] = BranchState::Done(status);
                }
                if !self.finished
                    && self
                        .branches
                        .iter()
                        .all(|b| matches!(b, BranchState::Done(_)))
                {
                    let status = self.status_from_failures();
                    self.finish(status);
                }
            }
        }
    }

    /// The Dial timeout passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.finished || self.deadline.is_none_or(|d| now < d) {
            return;
        }
        self.cancel_others(None);
        self.finish(DialStatus::Noanswer);
    }

    /// The caller hung up while it rang.
    pub fn caller_cancelled(&mut self) {
        if self.finished {
            return;
        }
        self.cancel_others(None);
        self.finish(DialStatus::Cancel);
    }

    fn cancel_others(&mut self, winner: Option<usize>) {
        for (index, state) in self.branches.iter_mut().enumerate() {
            if Some(index) == winner {
                continue;
            }
            if matches!(state, BranchState::Calling | BranchState::Ringing) {
                *state = BranchState::Cancelling;
                self.actions.push(ForkAction::Cancel { index });
            }
        }
    }

    fn status_from_failures(&self) -> DialStatus {
        let statuses: Vec<u16> = self
            .branches
            .iter()
            .filter_map(|b| match b {
                BranchState::Done(s) => Some(*s),
                _ => None,
            })
            .collect();
        if statuses.iter().any(|s| matches!(s, 486 | 600)) {
            DialStatus::Busy
        } else if statuses
            .iter()
            .any(|s| (500..600).contains(s) && !matches!(s, 500 | 501 | 502 | 504 | 505))
        {
            DialStatus::Congestion
        } else {
            DialStatus::Chanunavail
        }
    }

    fn finish(&mut self, status: DialStatus) {
        if !self.finished {
            self.finished = true;
            self.actions.push(ForkAction::Finished(status));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rings_all_takes_the_first_answer_and_cancels_the_rest() {
        let t0 = Instant::now();
        let mut f = Fork::new(3, Some(t0 + Duration::from_secs(20)));
        assert_eq!(
            f.poll_actions(),
            [
                ForkAction::Invite { index: 0 },
                ForkAction::Invite { index: 1 },
                ForkAction::Invite { index: 2 }
            ]
        );
        f.handle_response(0, 100, false);
        f.handle_response(1, 180, false);
        f.handle_response(0, 180, false);
        assert_eq!(
            f.poll_actions(),
            [ForkAction::Ringing {
                index: 1,
                early_media: false
            }],
            "one ringing to the caller"
        );
        f.handle_response(2, 200, true);
        assert_eq!(
            f.poll_actions(),
            [
                ForkAction::Answered { index: 2 },
                ForkAction::Cancel { index: 0 },
                ForkAction::Cancel { index: 1 },
                ForkAction::Finished(DialStatus::Answer)
            ]
        );
        assert!(f.is_finished() && f.poll_timeout().is_none());
        // The cancelled branches' 487s change nothing.
        f.handle_response(0, 487, false);
        f.handle_response(1, 200, false);
        assert!(f.poll_actions().is_empty());
    }

    #[test]
    fn timeout_cancels_with_noanswer_and_caller_cancel_with_cancel() {
        let t0 = Instant::now();
        let mut f = Fork::new(2, Some(t0 + Duration::from_secs(20)));
        f.poll_actions();
        f.handle_response(0, 183, true);
        assert_eq!(
            f.poll_actions(),
            [ForkAction::Ringing {
                index: 0,
                early_media: true
            }]
        );
        f.handle_timeout(t0 + Duration::from_secs(19));
        assert!(f.poll_actions().is_empty());
        assert_eq!(f.poll_timeout(), Some(t0 + Duration::from_secs(20)));
        f.handle_timeout(t0 + Duration::from_secs(20));
        assert_eq!(
            f.poll_actions(),
            [
                ForkAction::Cancel { index: 0 },
                ForkAction::Cancel { index: 1 },
                ForkAction::Finished(DialStatus::Noanswer)
            ]
        );

        let mut f = Fork::new(1, None);
        f.poll_actions();
        assert_eq!(
            f.poll_timeout(),
            None,
            "Dial() without a timeout rings until someone ends it"
        );
        f.caller_cancelled();
        assert_eq!(
            f.poll_actions(),
            [
                ForkAction::Cancel { index: 0 },
                ForkAction::Finished(DialStatus::Cancel)
            ]
        );
    }

    #[test]
    fn failures_map_to_dialstatus_as_asterisk() {
        let status = |codes: &[u16]| {
            let mut f = Fork::new(codes.len(), None);
            f.poll_actions();
            for (i, &c) in codes.iter().enumerate() {
                f.handle_response(i, c, false);
            }
            f.poll_actions().into_iter().find_map(|a| match a {
                ForkAction::Finished(s) => Some(s),
                _ => None,
            })
        };
        assert_eq!(status(&[486]), Some(DialStatus::Busy));
        assert_eq!(status(&[404, 600]), Some(DialStatus::Busy));
        assert_eq!(status(&[503]), Some(DialStatus::Congestion));
        assert_eq!(status(&[580]), Some(DialStatus::Congestion));
        assert_eq!(status(&[500]), Some(DialStatus::Chanunavail));
        assert_eq!(status(&[408]), Some(DialStatus::Chanunavail));
        assert_eq!(status(&[404]), Some(DialStatus::Chanunavail));
        assert_eq!(status(&[480, 603]), Some(DialStatus::Chanunavail));
        assert_eq!(status(&[404, 180]), None, "one still ringing");
        assert_eq!(
            Fork::new(0, None).poll_actions(),
            [ForkAction::Finished(DialStatus::Chanunavail)]
        );
    }
}
