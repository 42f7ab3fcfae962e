//! The SQLite index: a `memories` table, an FTS5 table over its texts (porter-stemmed), and a
//! `meta` table with the last `EVENTS` sequence applied, all written in one transaction per
//! batch, so the file always says exactly which events it holds. WAL mode: searches read
//! on their own connection while the follower writes.
//!
//! Everything in a memory comes from its event, and its row id is the event's stream
//! sequence, so applying an event twice changes nothing, and a file rebuilt from the stream
//! holds the same rows, with the same full-text statistics, and ranks the same.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use shared::memory::{Answer, Hit, Kind, Query, words};

use crate::document::{self, Document};

/// Most distinct words of a query matched: a long instruction is still one search.
const MAX_QUERY_WORDS: usize = 64;
/// How long a connection waits for the other's lock before failing (WAL readers never wait
/// for the writer; this covers checkpoints and the writer's own start).
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Relative weights of the texts in ranking: what was produced, what it answered, the goal.
const WEIGHTS: (f64, f64, f64) = (1.0, 0.5, 0.25);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS memories (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    agent TEXT,
    about TEXT NOT NULL,
    approved INTEGER,
    team TEXT,
    scope TEXT NOT NULL,
    workflow TEXT NOT NULL,
    step TEXT,
    brief TEXT NOT NULL,
    goal TEXT NOT NULL,
    text TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS memories_created ON memories (created_ms);
CREATE VIRTUAL TABLE IF NOT EXISTS memories_fts USING fts5(text, brief, goal, tokenize = 'porter unicode61');
";

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("the memory index (SQLite): {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// One event read from `EVENTS`.
#[derive(Debug, Clone)]
pub struct Event {
    pub seq: u64,
    /// When the stream stored it (Unix ms).
    pub stored_ms: u64,
    pub payload: Vec<u8>,
}

/// What keeps the index bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_age_ms: u64,
    pub max_entries: u64,
}

/// A connection to an index file.
#[derive(Debug)]
pub struct Index {
    conn: Connection,
}

impl Index {
    /// Opens (creating if need be) the index at `path` for writing.
    pub fn open(path: &Path) -> Result<Self, IndexError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // WAL with NORMAL loses at most the last transactions on a power cut, never
        // consistency; they are in the stream and are applied again.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self { conn })
    }

    /// A read-only connection to the index at `path` (opened for writing first).
    pub fn reader(path: &Path) -> Result<Self, IndexError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        Ok(Self { conn })
    }

    /// A `meta` value (0 when unset).
    fn meta(&self, key: &str) -> Result<i64, IndexError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?
            .unwrap_or(0))
    }

    /// The last `EVENTS` sequence applied (0: none).
    pub fn last_seq(&self) -> Result<u64, IndexError> {
        Ok(u64::try_from(self.meta("last_seq")?).unwrap_or(0))
    }

    /// The identity of the stream the index was built from (its creation time), 0 if none.
    pub fn stream_id(&self) -> Result<i64, IndexError> {
        self.meta("stream_created")
    }

    /// Forgets everything (the stream it came from is gone) and records `stream_id` as the
    /// stream it will be built from.
    pub fn reset(&mut self, stream_id: i64) -> Result<(), IndexError> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM memories", [])?;
        tx.execute("DELETE FROM memories_fts", [])?;
        tx.execute("DELETE FROM meta", [])?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('stream_created', ?1)",
            [stream_id],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Applies `events` in order in one transaction: each that makes a memory not older than
    /// `retention` at `now_ms` is added (unless it is there already), then the oldest are
    /// pruned beyond `retention`, and the last sequence is recorded. Returns how many
    /// memories were added.
    pub fn apply(
        &mut self,
        events: &[Event],
        retention: Retention,
        now_ms: u64,
    ) -> Result<usize, IndexError> {
        let Some(last) = events.iter().map(|e| e.seq).max() else {
            return Ok(0);
        };
        let cutoff = now_ms.saturating_sub(retention.max_age_ms);
        let tx = self.conn.transaction()?;
        let mut added = 0;
        for event in events.iter().filter(|e| e.stored_ms >= cutoff) {
            if let Some(doc) = document::from_event(&event.payload) {
                added += insert(&tx, event, &doc)?;
            }
        }
        prune_in(&tx, retention, now_ms)?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('last_seq', ?1)
             ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
            [i64::try_from(last).unwrap_or(i64::MAX)],
        )?;
        tx.commit()?;
        Ok(added)
    }

    /// Removes the memories beyond `retention` at `now_ms`; returns how many.
    pub fn prune(&mut self, retention: Retention, now_ms: u64) -> Result<usize, IndexError> {
        let tx = self.conn.transaction()?;
        let pruned = prune_in(&tx, retention, now_ms)?;
        tx.commit()?;
        Ok(pruned)
    }

    /// How many memories the index holds.
    pub fn count(&self) -> Result<u64, IndexError> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM memories", [], |r| r.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The best `limit` memories for `query` (checked by the caller), best first: by bm25,
    /// then the newer first, then by id, so every index holding the same memories answers
    /// the same. Read in one transaction with the sequence it reflects.
    pub fn search(&mut self, query: &Query, limit: usize) -> Result<Answer, IndexError> {
        let tx = self.conn.transaction()?;
        let indexed_seq: i64 = tx
            .query_row("SELECT value FROM meta WHERE key = 'last_seq'", [], |r| {
                r.get(0)
            })
            .optional()?
            .unwrap_or(0);
        let (w1, w2, w3) = WEIGHTS;
        let mut statement = tx.prepare(&format!(
            "SELECT m.id, m.kind, m.agent, m.about, m.approved, m.team, m.scope, m.workflow, m.step,
                    m.brief, m.text, m.created_ms, bm25(memories_fts, {w1:?}, {w2:?}, {w3:?}) AS rank
             FROM memories_fts JOIN memories m ON m.seq = memories_fts.rowid
             WHERE memories_fts MATCH ?1
               AND (?2 IS NULL OR m.agent = ?2 OR instr(m.about, ',' || ?2 || ',') > 0)
               AND (?3 IS NULL OR m.team = ?3)
               AND (?4 IS NULL OR m.scope = ?4)
               AND (?5 IS NULL OR m.kind = ?5)
             ORDER BY rank, m.seq DESC, m.id
             LIMIT ?6"
        ))?;
        let rows = statement.query_map(
            params![
                match_expression(&query.q),
                query.agent,
                query.team,
                query.scope,
                query.kind.map(Kind::as_str),
                i64::try_from(limit).unwrap_or(i64::MAX),
            ],
            |r| {
                let kind: String = r.get(1)?;
                let about: String = r.get(3)?;
                let rank: f64 = r.get(12)?;
                let created: i64 = r.get(11)?;
                Ok(Hit {
                    id: r.get(0)?,
                    kind: Kind::parse(&kind).unwrap_or(Kind::StepOutput),
                    agent: r.get(2)?,
                    about: about
                        .split(',')
                        .filter(|a| !a.is_empty())
                        .map(str::to_owned)
                        .collect(),
                    approved: r.get(4)?,
                    team: r.get(5)?,
                    scope: r.get(6)?,
                    workflow: r.get(7)?,
                    step: r.get(8)?,
                    brief: r.get(9)?,
                    text: r.get(10)?,
                    // bm25 is lower for better matches; callers read higher as better.
                    score: -rank,
                    created_ms: u64::try_from(created).unwrap_or(0),
                })
            },
        )?;
        let hits = rows.collect::<Result<Vec<_>, _>>()?;
        Ok(Answer {
            hits,
            indexed_seq: u64::try_from(indexed_seq).unwrap_or(0),
        })
    }
}

/// Adds `doc` (from `event`) unless a memory with its id or sequence is there; returns 1 if
/// it was added.
fn insert(
    tx: &rusqlite::Transaction<'_>,
    event: &Event,
    doc: &Document,
) -> Result<usize, IndexError> {
    let seq = i64::try_from(event.seq).unwrap_or(i64::MAX);
    // Commas around each name, so a filter matches a whole name (names are tokens: no comma).
    let about = if doc.about.is_empty() {
        String::new()
    } else {
        format!(",{},", doc.about.join(","))
    };
    let added = tx.execute(
        "INSERT OR IGNORE INTO memories
            (seq, id, kind, agent, about, approved, team, scope, workflow, step, brief, goal, text, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        params![
            seq,
            doc.id,
            doc.kind.as_str(),
            doc.agent,
            about,
            doc.approved,
            doc.team,
            doc.scope,
            doc.workflow,
            doc.step,
            doc.brief,
            doc.goal,
            doc.text,
            i64::try_from(event.stored_ms).unwrap_or(i64::MAX),
        ],
    )?;
    if added == 1 {
        tx.execute(
            "INSERT INTO memories_fts (rowid, text, brief, goal) VALUES (?1, ?2, ?3, ?4)",
            params![seq, doc.text, doc.brief, doc.goal],
        )?;
    }
    Ok(added)
}

/// Deletes what is older than `retention.max_age_ms` and, beyond `retention.max_entries`,
/// the oldest by sequence.
fn prune_in(
    tx: &rusqlite::Transaction<'_>,
    retention: Retention,
    now_ms: u64,
) -> Result<usize, IndexError> {
    let cutoff = i64::try_from(now_ms.saturating_sub(retention.max_age_ms)).unwrap_or(i64::MAX);
    let keep = i64::try_from(retention.max_entries).unwrap_or(i64::MAX);
    // The newest sequence that is dropped by the count, if any.
    let beyond: Option<i64> = tx
        .query_row(
            "SELECT seq FROM memories ORDER BY seq DESC LIMIT 1 OFFSET ?1",
            [keep],
            |r| r.get(0),
        )
        .optional()?;
    let upto = beyond.unwrap_or(0);
    let condition = "created_ms < ?1 OR seq <= ?2";
    let params = params![cutoff, upto];
    tx.execute(
        &format!(
            "DELETE FROM memories_fts WHERE rowid IN (SELECT seq FROM memories WHERE {condition})"
        ),
        params,
    )?;
    Ok(tx.execute(&format!("DELETE FROM memories WHERE {condition}"), params)?)
}

/// The FTS5 expression for a query text: each distinct word (lowercased) as a quoted
/// string, any of them matching. Quoting makes every word a plain term, so nothing a caller
/// types is FTS5 syntax.
pub fn match_expression(q: &str) -> String {
    let mut seen = Vec::new();
    for word in words(q) {
        let word = word.to_lowercase();
        if !seen.contains(&word) && seen.len() < MAX_QUERY_WORDS {
            seen.push(word);
        }
    }
    seen.iter()
        .map(|w| format!("\"{w}\""))
        .collect::<Vec<_>>()
        .join(" OR ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const DAY_MS: u64 = 86_400_000;
    const NOW: u64 = 100 * DAY_MS;
    const KEEP_ALL: Retention = Retention {
        max_age_ms: 30 * DAY_MS,
        max_entries: 1_000,
    };

    fn event(seq: u64, body: Value) -> Event {
        Event {
            seq,
            stored_ms: NOW - DAY_MS + seq,
            payload: body.to_string().into_bytes(),
        }
    }

    fn step(seq: u64, wf: &str, step: &str, agent: &str, instruction: &str, output: &str) -> Event {
        event(
            seq,
            json!({"workflow": wf, "kind": "step_finished", "step": step, "step_kind": "work",
                "agent": agent, "instruction": instruction, "output": output,
                "goal": "Launch a bike-share", "team": "research"}),
        )
    }

    fn history() -> Vec<Event> {
        vec![
            step(
                1,
                "w1",
                "costs",
                "researcher",
                "Find the costs",
                "Bikes cost 900 EUR each; docks 4000 EUR.",
            ),
            event(
                2,
                json!({"workflow": "w1", "kind": "step_started", "step": "x"}),
            ),
            step(
                3,
                "w1",
                "riders",
                "analyst",
                "Estimate riders",
                "About 2000 riders a day in summer.",
            ),
            event(
                4,
                json!({"workflow": "w1", "kind": "reviewed", "step": "@review", "agent": "reviewer",
                "judged": ["researcher", "writer"], "approved": false,
                "feedback": "Add the maintenance costs of the bikes.", "goal": "Launch a bike-share", "team": "research"}),
            ),
            step(
                5,
                "w2",
                "costs",
                "researcher",
                "Find the costs of scooters",
                "Scooters cost 600 EUR.",
            ),
            event(
                6,
                json!({"workflow": "w2", "kind": "done", "status": "completed", "agent": "writer",
                "output": "Scooters are cheaper than bikes.", "goal": "Compare scooters", "team": null}),
            ),
        ]
    }

    fn built(dir: &Path, name: &str, events: &[Event]) -> Index {
        let mut index = Index::open(&dir.join(name)).unwrap();
        index.apply(events, KEEP_ALL, NOW).unwrap();
        index
    }

    fn ids(answer: &Answer) -> Vec<String> {
        answer.hits.iter().map(|h| h.id.clone()).collect()
    }

    #[test]
    fn searches_rank_by_relevance_and_filter() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = built(dir.path(), "m.db", &history());
        assert_eq!(index.count().unwrap(), 5);
        let answer = index
            .search(&Query::text("maintenance cost of bikes"), 10)
            .unwrap();
        assert_eq!(answer.indexed_seq, 6);
        // Stemmed: "cost" finds "costs"; the review says all three words.
        assert_eq!(answer.hits[0].id, "review:w1:@review");
        assert!(answer.hits.windows(2).all(|w| w[0].score >= w[1].score));
        let review = &answer.hits[0];
        assert_eq!(review.kind, Kind::Review);
        assert_eq!(review.about, ["researcher", "writer"]);
        assert_eq!(review.approved, Some(false));
        // By agent: its own work and reviews of it.
        let mut q = Query::text("costs");
        q.agent = Some("researcher".into());
        let found = index.search(&q, 10).unwrap();
        assert_eq!(
            ids(&found)
                .into_iter()
                .collect::<std::collections::BTreeSet<_>>(),
            [
                "review:w1:@review",
                "step_output:w1:costs",
                "step_output:w2:costs"
            ]
            .map(String::from)
            .into()
        );
        // A name with `_` (a LIKE wildcard) matches itself only.
        q.agent = Some("research_r".into());
        assert!(index.search(&q, 10).unwrap().hits.is_empty());
        let mut q = Query::text("costs scooters bikes");
        q.scope = Some("w2".into());
        let mut in_w2 = ids(&index.search(&q, 10).unwrap());
        in_w2.sort_unstable();
        assert_eq!(in_w2, ["step_output:w2:costs", "task:w2"]);
        q.kind = Some(Kind::Task);
        assert_eq!(ids(&index.search(&q, 10).unwrap()), ["task:w2"]);
        let mut q = Query::text("costs");
        q.team = Some("research".into());
        assert_eq!(index.search(&q, 1).unwrap().hits.len(), 1);
        // Words only: FTS5 syntax in a query is just text.
        assert!(
            index
                .search(&Query::text("\"costs\" NEAR( OR *"), 10)
                .is_ok()
        );
    }

    #[test]
    fn an_event_applied_again_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = built(dir.path(), "m.db", &history());
        let before = index
            .search(&Query::text("costs riders bikes"), 10)
            .unwrap();
        // The whole history again, then one event again in a later batch.
        assert_eq!(index.apply(&history(), KEEP_ALL, NOW).unwrap(), 0);
        assert_eq!(index.apply(&history()[..1], KEEP_ALL, NOW).unwrap(), 0);
        assert_eq!(index.count().unwrap(), 5);
        let after = index
            .search(&Query::text("costs riders bikes"), 10)
            .unwrap();
        assert_eq!(after, before);
        // The same memory in a later event (a replay) is not added twice either.
        let replayed = step(
            9,
            "w1",
            "costs",
            "researcher",
            "Find the costs",
            "Other text",
        );
        assert_eq!(index.apply(&[replayed], KEEP_ALL, NOW).unwrap(), 0);
        assert_eq!(index.last_seq().unwrap(), 9);
    }

    #[test]
    fn a_rebuilt_index_answers_the_same_in_the_same_order() {
        let dir = tempfile::tempdir().unwrap();
        let events = history();
        // One index applied event by event, one in a single batch.
        let mut first = Index::open(&dir.path().join("a.db")).unwrap();
        for e in &events {
            first.apply(std::slice::from_ref(e), KEEP_ALL, NOW).unwrap();
        }
        let mut second = built(dir.path(), "b.db", &events);
        for q in [
            "costs",
            "bikes scooters",
            "maintenance",
            "riders day summer",
        ] {
            let (a, b) = (
                first.search(&Query::text(q), 10).unwrap(),
                second.search(&Query::text(q), 10).unwrap(),
            );
            assert!(!a.hits.is_empty(), "{q}");
            assert_eq!(a, b, "{q}");
        }
    }

    #[test]
    fn retention_prunes_by_age_and_by_count() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = built(dir.path(), "m.db", &history());
        // By count: the newest three stay.
        let three = Retention {
            max_entries: 3,
            ..KEEP_ALL
        };
        assert_eq!(index.prune(three, NOW).unwrap(), 2);
        let mut left = ids(&index
            .search(&Query::text("costs riders bikes scooters maintenance"), 10)
            .unwrap());
        left.sort();
        assert_eq!(
            left,
            ["review:w1:@review", "step_output:w2:costs", "task:w2"]
        );
        // By age: a day later with a one-day retention, all are gone.
        let one_day = Retention {
            max_age_ms: DAY_MS,
            ..KEEP_ALL
        };
        index.prune(one_day, NOW + DAY_MS).unwrap();
        assert_eq!(index.count().unwrap(), 0);
        assert!(
            index
                .search(&Query::text("costs"), 10)
                .unwrap()
                .hits
                .is_empty()
        );
        // A rebuild does not index what is already too old.
        let mut late = Index::open(&dir.path().join("late.db")).unwrap();
        assert_eq!(late.apply(&history(), one_day, NOW + DAY_MS).unwrap(), 0);
        assert_eq!(late.last_seq().unwrap(), 6);
    }

    #[test]
    fn a_reset_forgets_everything() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = built(dir.path(), "m.db", &history());
        index.reset(42).unwrap();
        assert_eq!((index.count().unwrap(), index.last_seq().unwrap()), (0, 0));
        assert_eq!(index.stream_id().unwrap(), 42);
    }

    #[test]
    fn a_reader_sees_what_the_writer_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let mut writer = Index::open(&path).unwrap();
        let mut reader = Index::reader(&path).unwrap();
        assert!(
            reader
                .search(&Query::text("costs"), 10)
                .unwrap()
                .hits
                .is_empty()
        );
        writer.apply(&history(), KEEP_ALL, NOW).unwrap();
        assert_eq!(
            reader
                .search(&Query::text("costs"), 10)
                .unwrap()
                .indexed_seq,
            6
        );
    }

    #[test]
    fn query_words_are_quoted_terms() {
        assert_eq!(
            match_expression("Cost, cost; \"NEAR\"(x)*"),
            "\"cost\" OR \"near\" OR \"x\""
        );
    }
}
