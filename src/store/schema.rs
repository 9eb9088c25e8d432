//! Append-only migrations keyed on `PRAGMA user_version`.
//!
//! Never edit or remove an entry: a store on disk has run the old text. Add a new entry instead.
//! All pending migrations run in one exclusive transaction, so a crash mid-upgrade leaves the
//! old schema intact.

use rusqlite::Connection;

use crate::error::Result;

/// Each entry moves the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    r#"
    CREATE TABLE messages (
        seq        INTEGER PRIMARY KEY,      -- local arrival order; FTS rowid
        id         TEXT NOT NULL UNIQUE,     -- ULID, mesh-wide identity and dedup key
        origin     TEXT NOT NULL,            -- node that accepted it from the sender
        sender     TEXT NOT NULL,
        target     TEXT NOT NULL,            -- 'name', '#topic' or '*'
        topic      TEXT,
        type       TEXT NOT NULL,
        priority   TEXT NOT NULL,
        subject    TEXT,
        body       TEXT NOT NULL,
        data       TEXT,                     -- JSON object
        reply_to   TEXT,
        thread_id  TEXT NOT NULL,
        created_at INTEGER NOT NULL          -- ms since the epoch
    );
    CREATE INDEX messages_thread ON messages(thread_id);
    CREATE INDEX messages_sender ON messages(sender, id);

    CREATE TABLE inbox (
        agent        TEXT NOT NULL,
        msg_id       TEXT NOT NULL,
        read_at      INTEGER,                -- NULL while unread
        delivered_at INTEGER,                -- first ack from a session of the agent
        PRIMARY KEY (agent, msg_id)
    ) WITHOUT ROWID;
    CREATE INDEX inbox_unread ON inbox(agent, msg_id) WHERE read_at IS NULL;

    CREATE TABLE agents (
        name        TEXT PRIMARY KEY,
        node        TEXT NOT NULL,
        status      TEXT NOT NULL DEFAULT 'available',
        status_text TEXT,
        last_seen   INTEGER,
        created_at  INTEGER NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE subscriptions (
        topic      TEXT NOT NULL,
        agent      TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (topic, agent)
    ) WITHOUT ROWID;

    CREATE TABLE tokens (
        name       TEXT PRIMARY KEY,
        hash       TEXT NOT NULL UNIQUE,     -- hex SHA-256 of the token
        created_at INTEGER NOT NULL
    ) WITHOUT ROWID;

    CREATE VIRTUAL TABLE messages_fts USING fts5(
        subject, body, content='messages', content_rowid='seq'
    );
    CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
        INSERT INTO messages_fts(rowid, subject, body) VALUES (new.seq, new.subject, new.body);
    END;
    "#,
    // 2: index in bulk, once per group commit, instead of a trigger per message: FTS5 flushes a
    // segment at every statement savepoint, which made the trigger the writer's biggest cost.
    r#"
    DROP TRIGGER messages_fts_insert;
    CREATE TABLE fts_progress (last_seq INTEGER NOT NULL);
    INSERT INTO fts_progress (last_seq) SELECT coalesce(max(seq), 0) FROM messages;
    "#,
    // 3: the replication log for the mesh.
    r#"
    CREATE TABLE events (
        origin  TEXT NOT NULL,      -- node that made the change (this node, for its own log)
        seq     INTEGER NOT NULL,   -- 1, 2, 3, ... per origin
        payload TEXT NOT NULL,      -- JSON EventBody
        PRIMARY KEY (origin, seq)
    ) WITHOUT ROWID;
    CREATE TABLE peer_cursors (
        origin TEXT PRIMARY KEY,    -- a peer node
        seq    INTEGER NOT NULL     -- its events applied here, up to and including this one
    ) WITHOUT ROWID;
    "#,
    // 4: the log is only ever this node's own, appended at the end: a rowid table keyed by
    // seq appends without comparing text keys (the composite key cost a tenth of throughput).
    r#"
    CREATE TABLE events_v4 (
        seq     INTEGER PRIMARY KEY,
        origin  TEXT NOT NULL,
        payload TEXT NOT NULL
    );
    INSERT INTO events_v4 (seq, origin, payload) SELECT seq, origin, payload FROM events;
    DROP TABLE events;
    ALTER TABLE events_v4 RENAME TO events;
    "#,
    // 5: whether every change so far is in the log (a node without a mesh logs nothing).
    r#"
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
    INSERT INTO meta (key, value) VALUES ('log_complete', '1');
    "#,
    // 6: when and where each replicated row last changed, kept after a delete (a tombstone),
    // so that concurrent changes made on two nodes resolve the same way on every node.
    r#"
    CREATE TABLE stamps (
        kind TEXT NOT NULL,         -- 'agent', 'subscription' or 'token'
        a    TEXT NOT NULL,         -- agent name; topic for a subscription; token owner
        b    TEXT NOT NULL,         -- subscriber for a subscription, else ''
        at   INTEGER NOT NULL,      -- ms since the epoch, made to increase per row
        by   TEXT NOT NULL,         -- node that made the change
        PRIMARY KEY (kind, a, b)
    ) WITHOUT ROWID;
    "#,
    // 7: which data dir (instance) holds each peer node id, so that a second data dir claiming
    // the same node id is refused instead of being applied against the first one's cursor.
    r#"
    CREATE TABLE peer_instances (
        node     TEXT PRIMARY KEY,
        instance TEXT NOT NULL,
        seen_at  INTEGER
    ) WITHOUT ROWID;
    "#,
    // 8: names are one name in any case; a peer's event spelling a name in another case finds
    // this node's row by its folded name (`names::Spellings`).
    r#"
    CREATE INDEX agents_folded ON agents(lower(name));
    "#,
    // 9: a message's inbox rows by message: retention deletes them with it (and finds whether
    // all are read) without scanning every inbox.
    r#"
    CREATE INDEX inbox_by_message ON inbox(msg_id);
    "#,
    // 10: other origins' entries as applied here, so this node can relay them to peers that
    // are not linked to their origin (nodes behind NAT meeting at a hub). A message entry is
    // a reference, like this node's own log; `prev` is the entry of the same origin applied
    // just before, so a receiver can tell a gap (entries applied before this table existed).
    r#"
    CREATE TABLE relayed (
        origin  TEXT NOT NULL,      -- the origin's log key (its instance id)
        seq     INTEGER NOT NULL,   -- the entry's number in the origin's log
        prev    INTEGER NOT NULL,
        payload TEXT NOT NULL,
        PRIMARY KEY (origin, seq)
    ) WITHOUT ROWID;
    "#,
    // 11: how far each peer has applied each log this node keeps for it (its own `events`,
    // and the origins in `relayed`), and when it last said so: compaction deletes what every
    // peer heard from recently has applied (`store::compact`).
    r#"
    CREATE TABLE peer_applied (
        peer    TEXT NOT NULL,      -- the peer's log key (instance id)
        origin  TEXT NOT NULL,      -- whose log: this node's instance, or a relayed origin
        seq     INTEGER NOT NULL,   -- applied up to and including this entry
        seen_at INTEGER NOT NULL,   -- ms since the epoch: last report, or last seen linked
        PRIMARY KEY (peer, origin)
    ) WITHOUT ROWID;
    "#,
    // 12: no query looks messages up by sender (`EXPLAIN QUERY PLAN` of every one of them);
    // the index only cost a b-tree insert, and its pages written, per message.
    r#"
    DROP INDEX messages_sender;
    "#,
    // 13: the thread index holds replies only (a root's thread is its own id, found by the id
    // index): most messages are roots, and each cost a b-tree insert here (`in_thread`).
    r#"
    DROP INDEX messages_thread;
    CREATE INDEX messages_replies ON messages(thread_id) WHERE thread_id <> id;
    "#,
    // 14: the full-text index keeps no per-document sizes (`columnsize=0`): that row was a
    // b-tree insert per message, about a fifth of what indexing cost the writer. bm25 then
    // counts a matched document's tokens at search time instead, on the reader thread. The
    // rows indexed so far are indexed again; later ones are the writer's, as before.
    r#"
    DROP TABLE messages_fts;
    CREATE VIRTUAL TABLE messages_fts USING fts5(
        subject, body, content='messages', content_rowid='seq', columnsize=0
    );
    INSERT INTO messages_fts (rowid, subject, body)
        SELECT seq, subject, body FROM messages WHERE seq <= (SELECT last_seq FROM fts_progress);
    "#,
];

/// Indexes every message stored since the last call; run once per transaction, before commit.
pub const INDEX_NEW_MESSAGES: &str = "
    INSERT INTO messages_fts (rowid, subject, body)
        SELECT seq, subject, body FROM messages WHERE seq > (SELECT last_seq FROM fts_progress);
    UPDATE fts_progress SET last_seq = (SELECT coalesce(max(seq), 0) FROM messages);
";

/// Brings the schema up to date.
pub fn migrate(conn: &mut Connection) -> Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)?;
    let version: usize = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > MIGRATIONS.len() {
        return Err(crate::error::Error::Config(format!(
            "the store has schema version {version}, newer than this switchboard knows ({}); \
             upgrade switchboard",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn search(conn: &Connection, word: &str) -> Vec<i64> {
        conn.prepare("SELECT rowid FROM messages_fts WHERE messages_fts MATCH ?1 ORDER BY rank")
            .unwrap()
            .query_map([word], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    /// A store made before migration 14 keeps every message findable, ranked, indexed once;
    /// what was stored but not yet indexed is indexed by the next run, as before.
    #[test]
    fn the_index_without_sizes_keeps_what_was_indexed() {
        let mut conn = Connection::open_in_memory().unwrap();
        let tx = conn.transaction().unwrap();
        for sql in &MIGRATIONS[..13] {
            tx.execute_batch(sql).unwrap();
        }
        tx.pragma_update(None, "user_version", 13).unwrap();
        let insert = "INSERT INTO messages (id, origin, sender, target, type, priority, body, \
                      thread_id, created_at) VALUES (?1, 'n', 'a', 'b', 'message', 'normal', ?2, ?1, 0)";
        tx.execute(insert, ["m1", "deploy the fleet"]).unwrap();
        tx.execute(insert, ["m2", "deploy deploy deploy"]).unwrap();
        tx.execute_batch(INDEX_NEW_MESSAGES).unwrap();
        tx.execute(insert, ["m3", "deploy later"]).unwrap();
        tx.commit().unwrap();

        migrate(&mut conn).unwrap();
        assert_eq!(search(&conn, "deploy"), [2, 1], "indexed before, ranked");
        conn.execute_batch(INDEX_NEW_MESSAGES).unwrap();
        assert_eq!(search(&conn, "deploy"), [2, 3, 1], "shorter ranks higher");
        assert_eq!(search(&conn, "later"), [3]);
        conn.execute_batch("INSERT INTO messages_fts (messages_fts) VALUES ('integrity-check')")
            .unwrap();
    }
}
