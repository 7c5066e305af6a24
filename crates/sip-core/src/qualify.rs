//! `qualify=yes`: is each registered phone still there? Sans-IO: the driver asks what
//! to probe, sends OPTIONS, and reports answers; time is an input.
//!
//! As chan_sip: every `qualifyfreq` seconds (60 by default) each binding of a line with
//! `qualify` gets an OPTIONS; a binding is reachable when the answer (any answer: a
//! phone that says 405 is there) came within the qualify time (2000 ms by default), and
//! unreachable when it did not. A binding not yet probed counts as reachable. An
//! unreachable binding is skipped when the line is dialled.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How a line is qualified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// An answer slower than this makes the binding unreachable.
    pub limit: Duration,
    /// Time between probes.
    pub every: Duration,
}

/// A binding: (line, contact URI).
pub type Key = (String, String);

#[derive(Debug, Clone)]
struct State {
    next_probe: Instant,
    /// The probe in flight: its branch and when it left.
    outstanding: Option<(String, Instant)>,
    reachable: bool,
    rtt: Option<Duration>,
}

#[derive(Debug, Default)]
pub struct Qualifier {
    policies: HashMap<String, Policy>,
    states: HashMap<Key, State>,
    branches: HashMap<String, Key>,
    /// What [`Qualifier::poll_timeout`] says, kept as the states change (the endpoint
    /// asks after every message; the states are one per qualified binding).
    next: Option<Instant>,
}

impl Qualifier {
    pub fn new(policies: HashMap<String, Policy>) -> Self {
        Self {
            policies,
            ..Self::default()
        }
    }

    /// Whether `line` is probed at all (`qualify=`).
    pub fn qualifies(&self, line: &str) -> bool {
        self.policies.contains_key(line)
    }

    /// Follows the registrar: new bindings are probed at once, gone ones forgotten.
    pub fn sync(&mut self, now: Instant, bindings: impl IntoIterator<Item = Key>) {
        let mut live: HashMap<Key, ()> = HashMap::new();
        for key in bindings {
            if self.policies.contains_key(&key.0) {
                self.states.entry(key.clone()).or_insert(State {
                    next_probe: now,
                    outstanding: None,
                    reachable: true,
                    rtt: None,
                });
                live.insert(key, ());
            }
        }
        self.states.retain(|key, _| live.contains_key(key));
        let states = &self.states;
        self.branches.retain(|_, key| states.contains_key(key));
        self.refresh();
    }

    /// Bindings to probe now; report each with [`Qualifier::sent`].
    pub fn due(&self, now: Instant) -> Vec<Key> {
        let mut due: Vec<Key> = self
            .states
            .iter()
            .filter(|(_, s)| s.outstanding.is_none() && s.next_probe <= now)
            .map(|(k, _)| k.clone())
            .collect();
        due.sort();
        due
    }

    /// When [`Self::due`] or [`Self::check`] next has something: a probe to send, or
    /// one whose answer is late.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next
    }

    fn refresh(&mut self) {
        self.next = self
            .states
            .iter()
            .filter_map(|(key, state)| match &state.outstanding {
                None => Some(state.next_probe),
                Some((_, sent)) if state.reachable => {
                    let limit = self.policies.get(&key.0)?.limit;
                    Some(*sent + limit + Duration::from_millis(1))
                }
                Some(_) => None,
            })
            .min();
    }

    /// A due probe that could not be sent (no way to the binding now): tried again a
    /// period later.
    pub fn postpone(&mut self, key: &Key, now: Instant) {
        let every = self.policies.get(&key.0).map(|p| p.every);
        if let (Some(state), Some(every)) = (self.states.get_mut(key), every) {
            state.next_probe = now + every;
        }
        self.refresh();
    }

    pub fn sent(&mut self, key: &Key, branch: String, now: Instant) {
        let Some(policy) = self.policies.get(&key.0).copied() else {
            return;
        };
        if let Some(state) = self.states.get_mut(key) {
            state.outstanding = Some((branch.clone(), now));
            state.next_probe = now + policy.every;
            self.branches.insert(branch, key.clone());
        }
        self.refresh();
    }

    /// An answer to the probe with `branch`. Returns the binding whose reachability
    /// changed, if it did.
    pub fn answered(&mut self, branch: &str, now: Instant) -> Option<Key> {
        let key = self.branches.remove(branch)?;
        let limit = self.policies.get(&key.0)?.limit;
        let state = self.states.get_mut(&key)?;
        let (_, sent) = state.outstanding.take()?;
        let rtt = now.saturating_duration_since(sent);
        state.rtt = Some(rtt);
        let reachable = rtt <= limit;
        let changed = state.reachable != reachable;
        state.reachable = reachable;
        self.refresh();
        changed.then_some(key)
    }

    /// Probes unanswered past their limit make their binding unreachable. Returns the
    /// bindings that changed.
    pub fn check(&mut self, now: Instant) -> Vec<Key> {
        let mut changed = Vec::new();
        for (key, state) in &mut self.states {
            let Some(policy) = self.policies.get(&key.0) else {
                continue;
            };
            if let Some((_, sent)) = &state.outstanding {
                if now.saturating_duration_since(*sent) > policy.limit && state.reachable {
                    state.reachable = false;
                    changed.push(key.clone());
                }
            }
        }
        changed.sort();
        self.refresh();
        changed
    }

    /// A probe whose transaction ended without any answer: the next one may go.
    pub fn gave_up(&mut self, branch: &str) {
        if let Some(key) = self.branches.remove(branch) {
            if let Some(state) = self.states.get_mut(&key) {
                state.outstanding = None;
                state.reachable = false;
            }
        }
        self.refresh();
    }

    /// Whether the binding answers; true when not qualified or not yet probed.
    pub fn reachable(&self, line: &str, contact: &str) -> bool {
        self.states
            .get(&(line.to_owned(), contact.to_owned()))
            .is_none_or(|s| s.reachable)
    }

    pub fn rtt(&self, line: &str, contact: &str) -> Option<Duration> {
        self.states.get(&(line.to_owned(), contact.to_owned()))?.rtt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        (
            "13235550100".into(),
            "sip:13235550100@192.0.2.20:5062".into(),
        )
    }

    fn qualifier() -> Qualifier {
        let policy = Policy {
            limit: Duration::from_millis(2000),
            every: Duration::from_secs(60),
        };
        Qualifier::new(HashMap::from([("13235550100".to_owned(), policy)]))
    }

    #[test]
    fn probes_on_schedule_and_judges_by_the_limit() {
        let mut q = qualifier();
        let t0 = Instant::now();
        q.sync(t0, [key(), ("other-line".into(), "sip:x".into())]);
        assert_eq!(q.due(t0), [key()], "unqualified lines are not probed");
        assert!(q.reachable(&key().0, &key().1), "reachable until probed");
        q.sent(&key(), "b1".into(), t0);
        assert!(q.due(t0).is_empty(), "one probe at a time");
        assert_eq!(
            q.answered("b1", t0 + Duration::from_millis(30)),
            None,
            "still reachable: no change"
        );
        assert_eq!(q.rtt(&key().0, &key().1), Some(Duration::from_millis(30)));
        assert!(q.due(t0 + Duration::from_secs(59)).is_empty());
        assert_eq!(q.due(t0 + Duration::from_secs(60)), [key()]);

        // No answer within 2 s: unreachable; a prompt answer later: reachable again.
        let t1 = t0 + Duration::from_secs(60);
        q.sent(&key(), "b2".into(), t1);
        assert!(q.check(t1 + Duration::from_millis(1999)).is_empty());
        assert_eq!(q.check(t1 + Duration::from_millis(2001)), [key()]);
        assert!(!q.reachable(&key().0, &key().1));
        assert_eq!(
            q.answered("b2", t1 + Duration::from_secs(3)),
            None,
            "too slow stays unreachable"
        );
        let t2 = t1 + Duration::from_secs(60);
        q.sent(&key(), "b3".into(), t2);
        assert_eq!(
            q.answered("b3", t2 + Duration::from_millis(50)),
            Some(key())
        );
        assert!(q.reachable(&key().0, &key().1));
        assert_eq!(q.answered("unknown", t2), None);
    }

    #[test]
    fn gone_bindings_are_forgotten_and_given_up_probes_free_the_slot() {
        let mut q = qualifier();
        let t0 = Instant::now();
        q.sync(t0, [key()]);
        q.sent(&key(), "b1".into(), t0);
        q.gave_up("b1");
        assert!(!q.reachable(&key().0, &key().1));
        assert_eq!(q.due(t0 + Duration::from_secs(60)), [key()]);
        q.sync(t0, []);
        assert!(q.due(t0 + Duration::from_secs(120)).is_empty());
        assert!(q.reachable(&key().0, &key().1), "no longer tracked");
    }
}
