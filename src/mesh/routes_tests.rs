use super::*;

fn beat(node: &str, incarnation: u64, n: u64) -> Beat {
    Beat {
        node: node.into(),
        instance: format!("i-{node}"),
        incarnation,
        beat: n,
        head: Some(n),
    }
}

fn ids() -> impl FnMut() -> u64 {
    let mut next = 100;
    move || {
        next += 1;
        next
    }
}

/// Routes at node `me`, route numbers from 101, and the time the test starts.
fn start(me: &str) -> (Routes, impl FnMut() -> u64, Instant) {
    (Routes::new(me), ids(), Instant::now())
}

fn none(_: &str) -> bool {
    false
}

fn reached(node: &str, epoch: u64, replaced: Option<u64>) -> Change {
    Change::Reached {
        node: node.into(),
        epoch,
        replaced,
    }
}

fn lost(node: &str, epoch: u64) -> Change {
    Change::Lost {
        node: node.into(),
        epoch,
    }
}

#[test]
fn a_node_behind_a_hub_is_reached_while_its_beats_advance() {
    let (mut r, mut id, t) = start("l2");
    // The hub lists itself (linked) and l1.
    let hub_says = |n| vec![beat("hub", 1, n), beat("l1", 7, n)];
    let c = r.heard("hub", hub_says(1), |n| n == "hub", &mut id, t);
    assert_eq!(c, [reached("l1", 101, None)]);
    assert_eq!(r.via("l1"), Some("hub"));
    assert_eq!(r.via("hub"), None, "a linked node needs no route");
    // Beats that advance keep it; the same beats again change nothing.
    assert!(
        r.heard("hub", hub_says(2), |n| n == "hub", &mut id, t)
            .is_empty()
    );
    assert!(
        r.heard("hub", hub_says(2), |n| n == "hub", &mut id, t)
            .is_empty()
    );
    // The hub loses l1: it no longer lists it, and the route ends at once.
    let c = r.heard("hub", vec![beat("hub", 1, 3)], |n| n == "hub", &mut id, t);
    assert_eq!(c, [lost("l1", 101)]);
    // A stale report of l1 (an echo of a beat already seen) cannot bring it back...
    assert!(
        r.heard("hub", hub_says(2), |n| n == "hub", &mut id, t)
            .is_empty()
    );
    assert_eq!(r.via("l1"), None);
    // ... a newer beat does, under a new epoch.
    let c = r.heard("hub", hub_says(4), |n| n == "hub", &mut id, t);
    assert_eq!(c, [reached("l1", 102, None)]);
    // The link to the hub ends: so does every route through it.
    assert_eq!(r.link_gone("hub"), [lost("l1", 102)]);
}

#[test]
fn relays_that_echo_each_other_lose_a_dead_node_after_the_silence() {
    let (mut r, mut id, t) = start("p");
    r.heard("a", vec![beat("x", 1, 5)], none, &mut id, t);
    // b repeats the same beat (it had it from a, say): nothing newer, nothing changes.
    r.heard("b", vec![beat("x", 1, 5)], none, &mut id, t);
    // a keeps listing x but its beat never advances: x is dead behind a loop.
    let later = t + SILENCE / 2;
    assert!(
        r.heard("a", vec![beat("x", 1, 5)], none, &mut id, later)
            .is_empty()
    );
    assert!(r.expire(later).is_empty());
    assert_eq!(r.expire(t + SILENCE), [lost("x", 101)]);
}

#[test]
fn a_route_stays_with_its_peer_while_it_keeps_up_and_moves_when_it_falls_silent() {
    let (mut r, mut id, t) = start("p");
    r.heard("a", vec![beat("x", 1, 1)], none, &mut id, t);
    // b is a little faster each time: the route stays with a, which keeps up.
    for n in 2..6 {
        let at = t + Duration::from_secs(n);
        assert!(
            r.heard("b", vec![beat("x", 1, n)], none, &mut id, at)
                .is_empty()
        );
        assert!(
            r.heard("a", vec![beat("x", 1, n)], none, &mut id, at)
                .is_empty()
        );
    }
    assert_eq!(r.via("x"), Some("a"));
    // a falls behind: after SWITCH_AFTER without anything newer from it, b takes over.
    let late = t + Duration::from_secs(5) + SWITCH_AFTER;
    let c = r.heard("b", vec![beat("x", 1, 9)], none, &mut id, late);
    assert_eq!(c, [reached("x", 102, Some(101))]);
    assert_eq!(r.via("x"), Some("b"));
    // Linking x itself ends the route.
    assert_eq!(r.linked("x"), [lost("x", 102)]);
    assert!(r.beats_for("q", |n| n == "x").iter().any(|b| b.node == "x"));
}

#[test]
fn what_is_passed_on_skips_the_peer_a_node_is_reached_through() {
    let (mut r, mut id, t) = start("hub");
    let snap = |inc, version| Snapshot {
        incarnation: inc,
        version,
        agents: Vec::new(),
    };
    r.heard("l1", vec![beat("l1", 1, 1)], |n| n == "l1", &mut id, t);
    r.heard("l2", vec![beat("l2", 1, 1)], |n| n == "l2", &mut id, t);
    assert!(r.snapshot("l1", snap(1, 1)));
    assert!(!r.snapshot("l1", snap(1, 1)), "not newer");
    let linked = |n: &str| n == "l1" || n == "l2";
    let to_l2: Vec<String> = r
        .beats_for("l2", linked)
        .into_iter()
        .map(|b| b.node)
        .collect();
    assert_eq!(to_l2, ["l1"]);
    assert_eq!(r.snapshots_for("l2", linked).len(), 1);
    assert!(r.snapshots_for("l1", linked).is_empty());
    // This node itself is never an entry.
    assert!(!r.snapshot("hub", snap(1, 1)));
}

#[test]
fn a_snapshot_from_before_a_restart_is_not_shown() {
    let (mut r, mut id, t) = start("p");
    r.heard("a", vec![beat("x", 1, 1)], none, &mut id, t);
    r.snapshot(
        "x",
        Snapshot {
            incarnation: 1,
            version: 3,
            agents: Vec::new(),
        },
    );
    assert!(matches!(r.shown("x"), Some((101, Some(_)))));
    // x restarted: its beats carry the new incarnation, its new snapshot has not come yet.
    r.heard("a", vec![beat("x", 2, 1)], none, &mut id, t);
    assert!(matches!(r.shown("x"), Some((101, None))));
    assert_eq!(r.relayed()[0].via, "a");
    assert_eq!(r.forget("x"), [lost("x", 101)]);
    assert!(r.relayed().is_empty());
}
