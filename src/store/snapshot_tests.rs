//! A snapshot rebuilds what the log would have: the state of one store taken in small pages
//! into another, applied twice, against rows the receiver changed since.

use rusqlite::Connection;

use crate::message::{MessageType, Priority, Status};
use crate::store::log::ReplicatedMessage;
use crate::store::queries;
use crate::store::rows::AgentRow;
use crate::store::snapshot::{Pos, Start, apply_page, begin, finish, page};
use crate::store::tests::Db;

fn note(id: &str, to: &[&str]) -> ReplicatedMessage {
    ReplicatedMessage {
        id: id.into(),
        origin: "n1".into(),
        sender: "alice".into(),
        target: to[0].into(),
        topic: None,
        kind: MessageType::Message,
        priority: Priority::Normal,
        subject: None,
        body: format!("body of {id} {}", "x".repeat(200)),
        data: None,
        reply_to: None,
        thread_id: None,
        created_at: 1,
        recipients: to.iter().map(|s| (*s).to_owned()).collect(),
    }
}

fn agent(name: &str, status: Status) -> AgentRow {
    AgentRow {
        name: name.into(),
        node: "n1".into(),
        status,
        status_text: None,
        last_seen: Some(5),
    }
}

/// Everything a node's clients can see, as text, in a fixed order.
fn state(c: &Connection) -> Vec<String> {
    let rows = |sql: &str| -> Vec<String> {
        c.prepare(sql)
            .unwrap()
            .query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    };
    [
        "SELECT id || body || thread_id FROM messages ORDER BY id",
        "SELECT agent || msg_id || coalesce(read_at, '-') FROM inbox ORDER BY agent, msg_id",
        "SELECT name || node || status FROM agents ORDER BY name",
        "SELECT topic || agent FROM subscriptions ORDER BY topic, agent",
        "SELECT name || hash FROM tokens ORDER BY name",
        "SELECT kind || a || b || at || by FROM stamps ORDER BY kind, a, b",
    ]
    .iter()
    .flat_map(|q| rows(q))
    .collect()
}

/// Copies `from`'s snapshot into `to` in pages of about `bytes`; returns the page count.
fn copy(from: &Connection, to: &Db, bytes: usize) -> (Start, usize) {
    let start = begin(from).unwrap();
    let (mut pos, mut pages) = (Some(Pos::default()), 0);
    while let Some(p) = pos {
        let (items, next) = page(from, &p, bytes).unwrap();
        apply_page(&to.tx(), items).unwrap();
        pos = next;
        pages += 1;
    }
    (start, pages)
}

fn producer() -> Db {
    let db = Db::in_memory();
    let tx = db.tx();
    crate::store::log::configure(&tx, "n1", true).unwrap();
    for n in 0..50 {
        let id = format!("m{n:03}");
        queries::insert_message(&tx, note(&id, &["bob", "carol"]), Some("n1")).unwrap();
    }
    // bob read some; carol read one that is not here (it comes from elsewhere, later).
    let ids: Vec<String> = (0..10).map(|n| format!("m{n:03}")).collect();
    queries::mark_read(&tx, "bob", &ids, false, 77, Some("n1")).unwrap();
    queries::mark_read(&tx, "carol", &["elsewhere".into()], false, 78, Some("n1")).unwrap();
    for (name, status) in [
        ("alice", Status::Busy),
        ("bob", Status::Away),
        ("carol", Status::Available),
        ("dave", Status::Available),
    ] {
        queries::upsert_agent(&tx, &agent(name, status), 1000, Some("n1")).unwrap();
    }
    queries::set_subscription(&tx, "ops", "bob", true, 1000, Some("n1")).unwrap();
    queries::set_subscription(&tx, "ops", "carol", true, 1000, Some("n1")).unwrap();
    queries::set_subscription(&tx, "ops", "carol", false, 1001, Some("n1")).unwrap();
    queries::put_token(&tx, "bob", "hash-b", 1000, Some("n1")).unwrap();
    queries::put_token(&tx, "carol", "hash-c", 1000, Some("n1")).unwrap();
    queries::delete_token(&tx, "carol", Some("n1")).unwrap();
    queries::forget_agent(&tx, "dave", 2000, "n1").unwrap();
    db
}

#[test]
fn a_snapshot_in_small_pages_rebuilds_the_whole_state_and_applies_twice_alike() {
    let a = producer();
    let b = Db::in_memory();
    let (start, pages) = copy(&a.tx(), &b, 4_000);
    assert!(pages > 5, "{pages} pages");
    assert!(start.head > 50);
    assert_eq!(state(&a.tx()), state(&b.tx()));
    // A snapshot again (a link cut mid-way sends it from the start) changes nothing.
    copy(&a.tx(), &b, 1 << 20);
    assert_eq!(state(&a.tx()), state(&b.tx()));
    // Unread mail, and only that, comes back to be pushed.
    let c = Db::in_memory();
    let start = begin(&a.tx()).unwrap();
    let (items, _) = page(&a.tx(), &Pos::default(), 1 << 20).unwrap();
    let applied = apply_page(&c.tx(), items).unwrap();
    let first = &applied.messages[0];
    assert_eq!(first.message.id, "m000");
    assert_eq!(first.recipients, ["carol"], "bob read m000");
    assert_eq!(applied.messages.len(), 50);
    let _ = start;
}

#[test]
fn rows_the_receiver_changed_later_win_over_the_snapshot_as_over_the_log() {
    let a = producer();
    let b = Db::in_memory();
    // b set bob busy after a's change (a later stamp), and re-subscribed carol.
    queries::upsert_agent(&b.tx(), &agent("bob", Status::Busy), 5000, Some("n2")).unwrap();
    queries::set_subscription(&b.tx(), "ops", "carol", true, 5000, Some("n2")).unwrap();
    copy(&a.tx(), &b, 1 << 20);
    let bob = queries::agents(&b.tx())
        .unwrap()
        .into_iter()
        .find(|r| r.name == "bob")
        .unwrap();
    assert_eq!(bob.status, Status::Busy);
    let subs = queries::subscriptions(&b.tx()).unwrap();
    assert_eq!(subs.len(), 2, "{subs:?}");
    // The forgotten name stays forgotten: its tombstone came along.
    assert!(queries::forgotten_name(&b.tx(), "dave").unwrap().is_some());
}

#[test]
fn finishing_moves_the_cursors_to_the_producers_point_never_back() {
    let b = Db::in_memory();
    let tx = b.tx();
    let own = crate::store::instances::own(&tx).unwrap();
    crate::store::apply::apply(&tx, "o2", vec![]).unwrap();
    tx.execute("INSERT OR REPLACE INTO peer_cursors VALUES ('o2', 40)", [])
        .unwrap();
    let start = Start {
        head: 900,
        cursors: vec![("o2".into(), 30), ("o3".into(), 12), (own.clone(), 5)],
    };
    let moved = finish(&tx, "n1", &start).unwrap();
    assert_eq!(
        moved,
        [("n1".to_owned(), 900), ("o2".into(), 40), ("o3".into(), 12)]
    );
    assert_eq!(crate::store::log::cursor(&tx, &own).unwrap(), 0);
}
