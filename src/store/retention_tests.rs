//! Retention on real SQLite: what is due, what goes with a message, and that threads, search
//! and the full-text index stay consistent.

use std::time::Duration;

use super::{BATCH, Pruned, Scan, dry_run, prune_batch, vacuum};
use crate::config::Retention;
use crate::message::{MessageType, Priority};
use crate::store::NewMessage;
use crate::store::queries;
use crate::store::tests::Db;

fn mail(id: &str, at: i64, to: &[&str], reply_to: Option<&str>) -> NewMessage {
    NewMessage {
        id: id.into(),
        origin: "n1".into(),
        sender: "alice".into(),
        target: to.join(","),
        topic: None,
        kind: MessageType::Message,
        priority: Priority::Normal,
        subject: Some(format!("subject of {id}")),
        body: format!("needle body of {id}"),
        data: None,
        reply_to: reply_to.map(Into::into),
        thread_id: None,
        created_at: at,
        recipients: to.iter().map(|s| s.to_string()).collect(),
    }
}

fn secs(read: Option<u64>, unread: Option<u64>) -> Retention {
    Retention {
        read: read.map(Duration::from_secs),
        unread: unread.map(Duration::from_secs),
        every: None,
    }
}

fn count(db: &Db, sql: &str) -> i64 {
    db.tx().query_row(sql, [], |r| r.get(0)).unwrap()
}

fn prune_all(db: &Db, policy: &Retention, now: i64) -> Pruned {
    let mut total = Pruned::default();
    let mut after = 0;
    loop {
        let (p, scan) = prune_batch(&db.tx(), policy, now, after, 2, false).unwrap();
        total += p;
        match scan {
            Scan::After(s) => after = s,
            Scan::Done => return total,
        }
    }
}

fn ids(db: &Db) -> Vec<String> {
    let tx = db.tx();
    let mut stmt = tx.prepare("SELECT id FROM messages ORDER BY seq").unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

#[test]
fn read_mail_goes_after_its_last_read_and_unread_mail_stays_by_default() {
    let db = Db::in_memory();
    let tx = db.tx();
    queries::insert_message(&tx, mail("m1", 1_000, &["bob", "carol"], None), None).unwrap();
    queries::insert_message(&tx, mail("m2", 1_000, &["bob"], None), None).unwrap();
    queries::insert_message(&tx, mail("new", 100_000, &["dave"], None), None).unwrap();
    queries::index_new_messages(&tx).unwrap();
    // bob reads both at 2 s; carol reads m1 only at 5 s.
    let both = vec!["m1".to_owned(), "m2".to_owned()];
    queries::mark_read(&tx, "bob", &both, false, 2_000, None).unwrap();
    queries::mark_read(&tx, "carol", &["m1".into()], false, 5_000, None).unwrap();
    let policy = secs(Some(10), None);
    // Nothing is 10 s past its last read at 11.999 s; at 12 s m2 is (bob read it at 2 s).
    assert_eq!(prune_all(&db, &policy, 11_999).messages, 0);
    assert_eq!(prune_all(&db, &policy, 12_000).messages, 1);
    assert_eq!(ids(&db), ["m1", "new"]);
    assert_eq!(
        count(&db, "SELECT count(*) FROM inbox WHERE msg_id = 'm2'"),
        0
    );
    // m1's last read was carol's, at 5 s.
    assert_eq!(prune_all(&db, &policy, 14_999).messages, 0);
    let gone = prune_all(&db, &policy, 15_000);
    assert_eq!((gone.messages, gone.inbox_rows), (1, 2));
    assert_eq!(
        count(&db, "SELECT count(*) FROM inbox WHERE agent != 'dave'"),
        0
    );
}

#[test]
fn unread_mail_stays_by_default_and_the_newest_stays_until_another_arrives() {
    let db = Db::in_memory();
    let tx = db.tx();
    queries::insert_message(&tx, mail("m3", 1_000, &["bob"], None), None).unwrap();
    queries::insert_message(&tx, mail("m4", 1_000, &["bob"], None), None).unwrap();
    assert_eq!(
        prune_all(&db, &secs(Some(10), None), i64::MAX / 2).messages,
        0
    );
    // m4 is the newest: it stays until another arrives, so that no seq is used twice.
    let unread = secs(Some(10), Some(60));
    assert_eq!(prune_all(&db, &unread, 61_000).messages, 1);
    assert_eq!(ids(&db), ["m4"]);
    queries::insert_message(&tx, mail("m5", 70_000, &["bob"], None), None).unwrap();
    assert_eq!(prune_all(&db, &unread, 71_000).messages, 1);
    assert_eq!(ids(&db), ["m5"]);
}

#[test]
fn mail_read_by_some_recipients_ages_as_unread_and_unaddressed_mail_as_read_when_sent() {
    let db = Db::in_memory();
    let tx = db.tx();
    queries::insert_message(&tx, mail("m1", 1_000, &["bob", "carol"], None), None).unwrap();
    queries::mark_read(&tx, "bob", &["m1".into()], false, 2_000, None).unwrap();
    queries::insert_message(&tx, mail("topic", 1_000, &[], None), None).unwrap();
    queries::insert_message(&tx, mail("newest", 200_000, &["bob"], None), None).unwrap();
    let policy = secs(Some(5), Some(100));
    assert_eq!(prune_all(&db, &policy, 50_000).messages, 1);
    assert_eq!(ids(&db), ["m1", "newest"]);
    assert_eq!(prune_all(&db, &policy, 101_000).messages, 1);
    assert_eq!(ids(&db), ["newest"]);
}

#[test]
fn search_threads_and_the_index_stay_consistent() {
    let db = Db::in_memory();
    let tx = db.tx();
    queries::insert_message(&tx, mail("root", 1_000, &["bob"], None), None).unwrap();
    queries::insert_message(&tx, mail("reply", 9_000, &["bob"], Some("root")), None).unwrap();
    queries::insert_message(&tx, mail("other", 9_000, &["carol"], None), None).unwrap();
    // The root is indexed, the reply not yet (indexing runs every 100 ms).
    tx.execute(
        "INSERT INTO messages_fts (rowid, subject, body) SELECT seq, subject, body FROM messages WHERE id = 'root'",
        [],
    )
    .unwrap();
    tx.execute(
        "UPDATE fts_progress SET last_seq = (SELECT seq FROM messages WHERE id = 'root')",
        [],
    )
    .unwrap();
    queries::mark_read(&tx, "bob", &["root".into()], false, 2_000, None).unwrap();
    assert_eq!(prune_all(&db, &secs(Some(5), None), 8_000).messages, 1);
    queries::index_new_messages(&tx).unwrap();
    tx.execute_batch("INSERT INTO messages_fts (messages_fts) VALUES ('integrity-check')")
        .unwrap();
    let found = queries::search(&tx, "bob", "\"needle\"", 10).unwrap();
    assert_eq!(
        found.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        ["reply"]
    );
    // The thread shows what is left of it; the root itself is gone.
    let thread = queries::thread(&tx, "bob", "reply").unwrap();
    assert_eq!(thread.len(), 1);
    assert_eq!(thread[0].thread_id, "root");
    assert!(queries::thread(&tx, "bob", "root").is_err());
}

#[test]
fn a_dry_run_counts_what_a_prune_deletes_and_deletes_nothing() {
    let db = Db::in_memory();
    let tx = db.tx();
    for i in 0..(BATCH + 10) {
        let id = format!("m{i:04}");
        queries::insert_message(&tx, mail(&id, 1_000, &["bob"], None), None).unwrap();
    }
    // The youngest is too young: the scan stops there.
    queries::insert_message(&tx, mail("young", 99_000, &["bob"], None), None).unwrap();
    let policy = secs(None, Some(10));
    let dry = dry_run(&tx, &policy, 100_000).unwrap();
    assert_eq!(
        (dry.messages, dry.inbox_rows),
        (u64::from(BATCH) + 10, u64::from(BATCH) + 10)
    );
    assert!(dry.bytes > 0);
    assert_eq!(
        count(&db, "SELECT count(*) FROM messages"),
        i64::from(BATCH) + 11
    );
    assert_eq!(prune_all(&db, &policy, 100_000), dry);
    assert_eq!(ids(&db), ["young"]);
    // Nothing is due under a policy that keeps everything.
    assert_eq!(
        dry_run(&tx, &secs(None, None), i64::MAX).unwrap(),
        Pruned::default()
    );
}

/// A new store gets incremental vacuum from its first table on, without a rebuild.
#[test]
fn a_new_store_is_made_with_incremental_vacuum() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    super::enable_incremental_vacuum(&conn, &path).unwrap();
    conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x);")
        .unwrap();
    let mode: i64 = conn
        .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, 2);
}

#[test]
fn freed_pages_go_back_to_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    // A store made before incremental vacuum: rebuilt once when opened.
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x);")
            .unwrap();
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    super::enable_incremental_vacuum(&conn, &path).unwrap();
    let mode: i64 = conn
        .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, 2);
    conn.execute_batch(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500) \
         INSERT INTO t SELECT randomblob(4000) FROM n; DELETE FROM t;",
    )
    .unwrap();
    let pages = |c: &rusqlite::Connection| -> i64 {
        c.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap()
    };
    let before = pages(&conn);
    let free: i64 = conn
        .query_row("PRAGMA freelist_count", [], |r| r.get(0))
        .unwrap();
    assert!(free > 400, "{free}");
    assert_eq!(vacuum(&conn, 100).unwrap() as i64, free - 100);
    assert_eq!(pages(&conn), before - 100);
    assert_eq!(vacuum(&conn, 100_000).unwrap(), 0);
    assert!(pages(&conn) < before / 10, "{} of {before}", pages(&conn));
}
