//! What the edge keeps on disk across restarts, as a table and a journal after it:
//! `<name>.json` (the whole table, keyed by a string, as of the last compaction) and
//! `<name>.journal` (one JSON line per changed key: its whole new value, or a value
//! that says it is gone). The shards hand their changes over; a thread of its own
//! appends them, and rewrites the table when the journal has grown past a few times
//! its size, at start and at shutdown. Two tables use it: the registrations (a line's
//! bindings) and the answered calls (a call's [`CallRecord`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::endpoint::CallRecord;
use crate::registrar::Binding;

/// A value kept in a journaled table.
pub trait Kept: Serialize + DeserializeOwned + Clone + Send + 'static {
    /// This value removes its key (a line without bindings, a call that ended).
    fn is_gone(&self) -> bool;
    /// At compaction: drops what has expired by `unix_now`; false drops the key.
    fn keep(&mut self, _unix_now: u64) -> bool {
        !self.is_gone()
    }
}

impl Kept for Vec<Binding> {
    fn is_gone(&self) -> bool {
        self.is_empty()
    }

    fn keep(&mut self, unix_now: u64) -> bool {
        self.retain(|b| b.expires_at > unix_now);
        !self.is_empty()
    }
}

impl Kept for Option<CallRecord> {
    fn is_gone(&self) -> bool {
        self.is_none()
    }
}

pub type Table<V> = HashMap<String, V>;

/// How long the writer lets changes gather before it writes them: what a crash can
/// lose of the newest changes, at most.
const BATCH: std::time::Duration = std::time::Duration::from_millis(50);

/// Changes handed to the writer thread.
pub struct Journal<V> {
    pending: Mutex<Pending<V>>,
    wake: Condvar,
}

struct Pending<V> {
    /// Changes not written yet, the latest per key.
    changes: Table<V>,
    /// The table as loaded, for the writer to start from.
    start: Option<Table<V>>,
    closed: bool,
}

impl<V> Default for Journal<V> {
    fn default() -> Self {
        Self {
            pending: Mutex::new(Pending {
                changes: HashMap::new(),
                start: None,
                closed: false,
            }),
            wake: Condvar::new(),
        }
    }
}

/// One line of a journal. The registrations' first journals named the fields
/// `line` and `bindings`; they are still read.
#[derive(Serialize, serde::Deserialize)]
struct Entry<V> {
    #[serde(alias = "line")]
    key: String,
    #[serde(alias = "bindings")]
    value: V,
}

impl<V: Kept> Journal<V> {
    fn lock(&self) -> MutexGuard<'_, Pending<V>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The table as loaded, for the writer to start from.
    pub fn starting_from(table: Table<V>) -> Self {
        let journal = Self::default();
        journal.lock().start = Some(table);
        journal
    }

    /// Changes to write; `close` writes them and stops the writer.
    pub fn add(&self, changes: Table<V>, close: bool) {
        let mut pending = self.lock();
        pending.changes.extend(changes);
        pending.closed |= close;
        self.wake.notify_one();
    }

    /// The writer: appends what the shards hand over, compacts now and then, until
    /// the journal is closed. `what` names the table in logs.
    pub fn write(&self, path: &Path, what: &str) {
        // The journal may compact once it holds this many entries past the table's size.
        const SLACK: usize = 1_000;
        let mut table = self.lock().start.take().unwrap_or_default();
        let mut appended = 0;
        let mut healthy = compact(path, &mut table).is_ok();
        loop {
            let (mut changes, closed) = {
                let mut pending = self.lock();
                while pending.changes.is_empty() && !pending.closed {
                    pending = self.wake.wait(pending).unwrap_or_else(|e| e.into_inner());
                }
                // Changes close together go in one write (a burst of calls is one
                // append, not one per call).
                if !pending.closed {
                    pending = self
                        .wake
                        .wait_timeout(pending, BATCH)
                        .map(|(pending, _)| pending)
                        .unwrap_or_else(|e| e.into_inner().0);
                }
                (std::mem::take(&mut pending.changes), pending.closed)
            };
            // A key that came and went before it was written needs no line.
            changes.retain(|key, value| !value.is_gone() || table.contains_key(key));
            let written = healthy && (changes.is_empty() || append(path, &changes).is_ok());
            appended += changes.len();
            for (key, value) in changes {
                if value.is_gone() {
                    table.remove(&key);
                } else {
                    table.insert(key, value);
                }
            }
            if !written || closed || appended > 4 * table.len() + SLACK {
                healthy = match compact(path, &mut table) {
                    Ok(()) => {
                        appended = 0;
                        true
                    }
                    Err(e) => {
                        tracing::error!(path = %path.display(), error = %e, "cannot persist {what}");
                        false
                    }
                };
            }
            if closed {
                return;
            }
        }
    }
}

/// The journal beside a table's file.
pub fn journal_path(path: &Path) -> PathBuf {
    path.with_extension("journal")
}

/// Reads a persisted table, if any: the table, then the journal's changes in order (a
/// torn last line, from a crash mid-write, is skipped).
pub fn load<V: Kept>(path: &Path, what: &str) -> Table<V> {
    let mut table: Table<V> = match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), error = %e, "{what} file unreadable; starting empty");
            HashMap::new()
        }),
        Err(_) => HashMap::new(),
    };
    let journal = std::fs::read(journal_path(path)).unwrap_or_default();
    for (n, line) in journal.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<Entry<V>>(line) {
            Ok(Entry { key, value }) if value.is_gone() => {
                table.remove(&key);
            }
            Ok(Entry { key, value }) => {
                table.insert(key, value);
            }
            Err(e) => {
                tracing::warn!(path = %journal_path(path).display(), line = n + 1, error = %e, "{what} journal line unreadable; skipped")
            }
        }
    }
    table
}

/// Appends changes to the journal.
fn append<V: Kept>(path: &Path, changes: &Table<V>) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = Vec::new();
    #[derive(Serialize)]
    struct EntryRef<'a, V> {
        key: &'a str,
        value: &'a V,
    }
    for (key, value) in changes {
        serde_json::to_writer(&mut out, &EntryRef { key, value }).map_err(std::io::Error::other)?;
        out.push(b'\n');
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(journal_path(path))?
        .write_all(&out)
}

/// Writes the whole table (dropping what has expired), then empties the journal. A
/// crash between the two replays the journal onto a table that has it already: each
/// entry is a key's whole value, so that changes nothing.
fn compact<V: Kept>(path: &Path, table: &mut Table<V>) -> std::io::Result<()> {
    let now = crate::driver::unix_now();
    table.retain(|_, value| value.keep(now));
    write_table(path, table)?;
    std::fs::File::create(journal_path(path)).map(drop)
}

/// Writes a table atomically: a temporary file, then a rename.
pub fn write_table<V: Serialize>(path: &Path, table: &Table<V>) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec(table).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    fn binding(contact: &str, expires_at: u64) -> Binding {
        Binding {
            contact: contact.into(),
            expires_at,
            source: "192.0.2.10:5060".parse().unwrap(),
            transport: "udp".into(),
            call_id: "c".into(),
            cseq: 1,
            user_agent: None,
            nat: false,
            registered_at: 0,
        }
    }

    #[test]
    fn the_journal_replays_onto_the_table_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registrations.json");
        let later = crate::driver::unix_now() + 3600;
        let table = HashMap::from([
            ("a".to_owned(), vec![binding("sip:a@x", later)]),
            ("b".to_owned(), vec![binding("sip:b@x", later)]),
        ]);
        write_table(&path, &table).unwrap();
        let changes = HashMap::from([
            ("a".to_owned(), Vec::new()),
            ("c".to_owned(), vec![binding("sip:c@x", later)]),
        ]);
        append(&path, &changes).unwrap();
        let mut torn = std::fs::read(journal_path(&path)).unwrap();
        // A line as the first journals wrote them, then a torn one.
        torn.extend_from_slice(b"{\"line\":\"b\",\"bindings\":[]}\n{\"key\":\"d\",\"val");
        std::fs::write(journal_path(&path), torn).unwrap();
        let mut lines: Vec<String> = load::<Vec<Binding>>(&path, "registrations")
            .into_keys()
            .collect();
        lines.sort();
        assert_eq!(lines, ["c"]);
    }

    #[test]
    fn the_writer_appends_changes_and_compacts_when_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registrations.json");
        let later = crate::driver::unix_now() + 3600;
        let start = HashMap::from([
            ("a".to_owned(), vec![binding("sip:a@x", later)]),
            // Expired: dropped by the first compaction.
            ("old".to_owned(), vec![binding("sip:old@x", 1)]),
        ]);
        let journal = Arc::new(Journal::starting_from(start));
        let writer = {
            let (path, journal) = (path.clone(), journal.clone());
            std::thread::spawn(move || journal.write(&path, "registrations"))
        };
        journal.add(
            HashMap::from([("b".to_owned(), vec![binding("sip:b@x", later)])]),
            false,
        );
        // Appended, not yet compacted: the journal holds it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::metadata(journal_path(&path)).map_or(0, |m| m.len()) == 0 {
            assert!(Instant::now() < deadline, "nothing appended");
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut lines: Vec<String> = load::<Vec<Binding>>(&path, "registrations")
            .into_keys()
            .collect();
        lines.sort();
        assert_eq!(lines, ["a", "b"]);
        journal.add(HashMap::from([("a".to_owned(), Vec::new())]), true);
        writer.join().unwrap();
        assert_eq!(std::fs::metadata(journal_path(&path)).unwrap().len(), 0);
        let table: Table<Vec<Binding>> =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(table.into_keys().collect::<Vec<_>>(), ["b"]);
    }
}
