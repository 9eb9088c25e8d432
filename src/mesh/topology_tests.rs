//! The topology's rules, tie-breaks first.

use super::*;

fn order(incarnation: u64, seq: u64) -> Order {
    Order { incarnation, seq }
}

fn addr(node: &str, url: &str) -> PeerAddr {
    PeerAddr {
        node: node.into(),
        url: url.into(),
    }
}

const DIAL: Option<&str> = Some("ws://127.0.0.1:1");

#[test]
fn a_first_link_joins_and_a_newer_incarnation_replaces_it() {
    let mut t = Topology::new("a");
    let first = t.join("b", DIAL, order(1, 1), "b", "first").unwrap();
    assert!(first.replaced.is_none());
    assert!(t.is_live("b", first.id));
    let second = t.join("b", None, order(2, 0), "b", "second").unwrap();
    assert_eq!(second.replaced, Some("first"));
    assert!(second.id > first.id);
    assert!(!t.is_live("b", first.id));
    assert_eq!(t.handle("b"), Some(&"second"));
}

#[test]
fn a_link_from_an_older_run_is_refused() {
    let mut t = Topology::new("a");
    let live = t.join("b", None, order(5, 0), "b", ()).unwrap();
    assert_eq!(
        t.join("b", DIAL, order(4, 9), "b", ()).unwrap_err(),
        Refused::OlderRun
    );
    assert!(t.is_live("b", live.id));
}

#[test]
fn of_opposite_links_both_ends_keep_the_one_the_lower_id_dialed() {
    // On "a" (sorts first): its own dial stays, whichever came first.
    let mut a = Topology::new("a");
    a.join("b", DIAL, order(1, 1), "b", "dialed").unwrap();
    assert_eq!(
        a.join("b", None, order(1, 1), "b", "accepted").unwrap_err(),
        Refused::Duplicate
    );
    let mut a = Topology::new("a");
    a.join("b", None, order(1, 1), "b", "accepted").unwrap();
    let j = a.join("b", DIAL, order(1, 1), "b", "dialed").unwrap();
    assert_eq!(j.replaced, Some("accepted"));
    // On "b": the link "a" dialed (accepted here) stays.
    let mut b = Topology::new("b");
    b.join("a", None, order(1, 1), "a", "accepted").unwrap();
    assert_eq!(
        b.join("a", DIAL, order(1, 1), "a", "dialed").unwrap_err(),
        Refused::Duplicate
    );
    let mut b = Topology::new("b");
    b.join("a", DIAL, order(1, 1), "a", "dialed").unwrap();
    let j = b.join("a", None, order(1, 1), "a", "accepted").unwrap();
    assert_eq!(j.replaced, Some("dialed"));
}

#[test]
fn of_links_in_the_same_direction_the_later_dial_wins() {
    for dialed in [DIAL, None] {
        let mut t = Topology::new("a");
        t.join("b", dialed, order(1, 7), "b", "seven").unwrap();
        // An earlier dial seen late loses.
        assert_eq!(
            t.join("b", dialed, order(1, 6), "b", "six").unwrap_err(),
            Refused::Duplicate
        );
        // A later one replaces.
        let j = t.join("b", dialed, order(1, 8), "b", "eight").unwrap();
        assert_eq!(j.replaced, Some("seven"));
        assert_eq!(t.handle("b"), Some(&"eight"));
    }
}

#[test]
fn only_the_live_link_leaving_unlinks_the_peer() {
    let mut t = Topology::new("a");
    let old = t.join("b", None, order(1, 1), "b", ()).unwrap();
    let new = t.join("b", None, order(1, 2), "b", ()).unwrap();
    assert!(!t.leave("b", old.id));
    assert_eq!(t.counts().0, 1);
    assert!(t.leave("b", new.id));
    assert!(!t.leave("b", new.id));
    assert_eq!(t.counts().0, 0);
}

#[test]
fn a_dialed_link_is_remembered_and_told_to_other_peers() {
    let mut t = Topology::new("a");
    t.join("b", Some("ws://10.0.0.2:7"), order(1, 1), "b", ())
        .unwrap();
    t.join("c", None, order(1, 1), "c", ()).unwrap();
    // c's URL is unknown: not told.
    assert_eq!(t.linked_except("c"), vec![addr("b", "ws://10.0.0.2:7")]);
    assert!(t.linked_except("b").is_empty());
    assert_eq!(t.counts(), (2, 2));
}

#[test]
fn a_report_adds_dialers_once_and_a_stale_link_reports_nothing() {
    let mut t = Topology::new("a");
    let b = t.join("b", DIAL, order(1, 1), "b", ()).unwrap();
    let report = vec![
        addr("c", "ws://10.0.0.3:7"),
        addr("a", "ws://10.0.0.1:7"),         // ourselves
        addr("b", "ws://10.0.0.2:7"),         // the reporter
        addr("bad name!", "ws://10.0.0.4:7"), // invalid name
        addr("d", "http://10.0.0.4:7"),       // not a ws URL
    ];
    assert_eq!(
        t.heard_from("b", b.id, None, (7, false), None, report.clone()),
        Some(vec!["c".to_owned()])
    );
    // Heard again: its dialer runs already.
    assert_eq!(
        t.heard_from("b", b.id, None, (7, false), None, report),
        Some(vec![])
    );
    let look = t.look(&Target::Node("c".into()), None, 0);
    assert_eq!(
        look,
        Look {
            linked: false,
            url: Some("ws://10.0.0.3:7".into()),
            reported: true,
            dropped: false,
        }
    );
    let newer = t.join("b", DIAL, order(1, 2), "b", ()).unwrap();
    assert_eq!(
        t.heard_from(
            "b",
            b.id,
            None,
            (7, false),
            None,
            vec![addr("e", "ws://10.0.0.5:7")]
        ),
        None
    );
    // The live link's empty report withdraws c.
    assert_eq!(
        t.heard_from("b", newer.id, None, (7, false), None, vec![]),
        Some(vec![])
    );
    assert!(!t.look(&Target::Node("c".into()), None, 0).reported);
}

#[test]
fn an_accepted_peer_is_reachable_at_its_address_and_reported_port() {
    let mut t = Topology::new("a");
    let b = t.join("b", None, order(1, 1), "b", ()).unwrap();
    let ip: IpAddr = "::ffff:10.0.0.2".parse().unwrap();
    // The peer itself gets a discovery dialer, for when the link drops.
    assert_eq!(
        t.heard_from("b", b.id, Some(ip), (9, false), None, vec![]),
        Some(vec!["b".to_owned()])
    );
    assert_eq!(t.linked_except("c"), vec![addr("b", "ws://10.0.0.2:9")]);
    // Linked: its dialer idles.
    assert!(t.look(&Target::Node("b".into()), None, 0).linked);
    t.leave("b", b.id);
    let look = t.look(&Target::Node("b".into()), None, 0);
    assert_eq!(look.url.as_deref(), Some("ws://10.0.0.2:9"));
    assert!(!look.linked && !look.reported);
}

#[test]
fn a_peer_that_advertises_none_is_never_told_nor_dialed_and_a_url_replaces_the_address() {
    let mut t = Topology::new("hub");
    let ip: IpAddr = "10.0.0.2".parse().unwrap();
    let l1 = t.join("l1", None, order(1, 1), "i1", ()).unwrap();
    // No dialer for it, nothing to tell others, and a report of it by an older peer is void.
    assert_eq!(
        t.heard_from("l1", l1.id, Some(ip), (9, false), Some("none"), vec![]),
        Some(vec![])
    );
    assert!(t.linked_except("x").is_empty());
    assert!(t.known()[0].undialable);
    let c = t.join("c", DIAL, order(1, 1), "ic", ()).unwrap();
    let report = vec![addr("l1", "ws://10.0.0.2:9")];
    assert_eq!(
        t.heard_from("c", c.id, None, (7, false), None, report),
        Some(vec![])
    );
    t.leave("l1", l1.id);
    assert_eq!(t.look(&Target::Node("l1".into()), None, 0).url, None);
    // A peer that advertises a URL is told to others at that URL, not at its address.
    let d = t.join("d", None, order(1, 1), "id", ()).unwrap();
    let url = "wss://d.example.com:443";
    assert_eq!(
        t.heard_from("d", d.id, Some(ip), (9, true), Some(url), vec![]),
        Some(vec!["d".to_owned()])
    );
    assert!(t.linked_except("x").contains(&addr("d", url)));
    assert_eq!(t.linked_keys(), ["ic", "id"]);
    // A malformed advertisement is ignored: the address seen stands.
    assert_eq!(
        t.heard_from(
            "d",
            d.id,
            Some(ip),
            (9, true),
            Some("d.example.com"),
            vec![]
        ),
        Some(vec![])
    );
    assert!(
        t.linked_except("x")
            .contains(&addr("d", "wss://10.0.0.2:9"))
    );
}

#[test]
fn leaving_withdraws_what_the_peer_reported() {
    let mut t = Topology::new("a");
    let b = t.join("b", DIAL, order(1, 1), "b", ()).unwrap();
    t.heard_from(
        "b",
        b.id,
        None,
        (7, false),
        None,
        vec![addr("c", "ws://10.0.0.3:7")],
    );
    assert_eq!(t.counts(), (1, 2));
    t.leave("b", b.id);
    assert!(!t.look(&Target::Node("c".into()), None, 0).reported);
    // b stays known (remembered), c does not.
    assert_eq!(t.counts(), (0, 1));
}

#[test]
fn a_reported_nodes_urls_take_turns() {
    let mut t = Topology::new("a");
    let b = t.join("b", DIAL, order(1, 1), "b", ()).unwrap();
    let d = t.join("d", DIAL, order(1, 1), "d", ()).unwrap();
    t.heard_from(
        "b",
        b.id,
        None,
        (7, false),
        None,
        vec![addr("c", "ws://10.0.0.3:7")],
    );
    t.heard_from(
        "d",
        d.id,
        None,
        (7, false),
        None,
        vec![addr("c", "ws://10.0.0.30:7")],
    );
    let urls: HashSet<String> = (0..4)
        .filter_map(|i| t.look(&Target::Node("c".into()), None, i).url)
        .collect();
    assert_eq!(urls.len(), 2);
}

#[test]
fn a_url_that_answers_as_another_node_is_forgotten_for_that_node() {
    let mut t = Topology::new("a");
    let b = t.join("b", DIAL, order(1, 1), "b", ()).unwrap();
    t.heard_from(
        "b",
        b.id,
        None,
        (7, false),
        None,
        vec![addr("c", "ws://10.0.0.3:7")],
    );
    t.forget_url("c", "ws://10.0.0.3:7");
    assert_eq!(t.look(&Target::Node("c".into()), None, 0).url, None);
}

#[test]
fn a_node_is_forgotten_only_when_nobody_links_configures_or_reports_it() {
    let mut t = Topology::new("a");
    let b = t.join("b", DIAL, order(1, 1), "b", ()).unwrap();
    t.heard_from(
        "b",
        b.id,
        None,
        (7, false),
        None,
        vec![addr("c", "ws://10.0.0.3:7")],
    );
    assert!(!t.forget_node("c", true), "reported");
    assert!(!t.forget_node("b", true), "linked");
    t.leave("b", b.id);
    assert!(t.forget_node("c", true));
    // Forgotten: a later report starts a dialer again.
    let b = t.join("b", DIAL, order(1, 2), "b", ()).unwrap();
    let again = t.heard_from(
        "b",
        b.id,
        None,
        (7, false),
        None,
        vec![addr("c", "ws://10.0.0.3:7")],
    );
    assert_eq!(again, Some(vec!["c".to_owned()]));
    t.configured_at("ws://x:1", "e", None);
    assert!(!t.forget_node("e", true), "configured");
}

#[test]
fn a_configured_url_that_now_leads_elsewhere_drops_the_old_node() {
    let mut t = Topology::new("a");
    let url = "ws://10.0.0.2:7";
    let b = t.join("b", Some(url), order(1, 1), "b", ()).unwrap();
    t.configured_at(url, "b", None);
    t.leave("b", b.id);
    assert_eq!(t.counts(), (0, 1));
    assert!(
        t.look(&Target::Node("b".into()), None, 0).linked,
        "its own dialer has it"
    );
    t.configured_at(url, "x", Some("b"));
    // b is neither configured nor remembered at that URL any more: only x is known.
    assert_eq!(t.counts(), (0, 1));
    assert!(t.forget_node("b", true));
    let look = t.look(&Target::Url(url.into()), Some("x"), 0);
    assert_eq!(
        look,
        Look {
            linked: false,
            url: Some(url.into()),
            reported: true,
            dropped: false,
        }
    );
}

#[test]
fn discovery_is_bounded() {
    let mut t = Topology::new("a");
    let b = t.join("b", DIAL, order(1, 1), "b", ()).unwrap();
    let report: Vec<PeerAddr> = (0..DISCOVERY_MAX + 10)
        .map(|i| addr(&format!("n{i}"), "ws://10.0.0.3:7"))
        .collect();
    let fresh = t
        .heard_from("b", b.id, None, (7, false), None, report)
        .unwrap_or_default();
    assert_eq!(fresh.len(), DISCOVERY_MAX);
    assert_eq!(t.counts().1, 1 + DISCOVERY_MAX);
}

#[test]
fn an_accepted_peer_that_serves_tls_is_reachable_at_wss() {
    let mut t = Topology::new("a");
    let b = t.join("b", None, order(1, 1), "b", ()).unwrap();
    let ip: IpAddr = "10.0.0.2".parse().unwrap();
    t.heard_from("b", b.id, Some(ip), (9, true), None, vec![]);
    assert_eq!(t.linked_except("c"), vec![addr("b", "wss://10.0.0.2:9")]);
}

#[test]
fn a_dropped_node_is_gone_at_once_until_it_links_or_is_reported_again() {
    let mut t = Topology::new("a");
    let b = t.join("b", DIAL, order(1, 1), "b", "b").unwrap();
    t.heard_from(
        "b",
        b.id,
        None,
        (7, false),
        None,
        vec![addr("c", "ws://10.0.0.3:7")],
    );
    let c = t
        .join("c", Some("ws://10.0.0.3:7"), order(1, 2), "c", "c")
        .unwrap();
    t.configured_at("ws://10.0.0.3:7", "c", None);
    assert!(t.drop_node("nobody").is_none(), "unknown");

    // c is linked, configured and reported: dropping it takes all of that.
    let d = t.drop_node("c").unwrap();
    assert_eq!(d.link, Some((c.id, "c")));
    assert!(d.configured);
    assert_eq!(d.last_link, c.id);
    assert!(!t.is_live("c", c.id));
    assert!(t.known().iter().all(|k| k.node != "c"));
    assert_eq!(t.counts(), (1, 1));
    let dialer = t.look(&Target::Node("c".into()), None, 0);
    assert!(dialer.dropped && !dialer.linked && !dialer.reported && dialer.url.is_none());
    assert!(
        t.look(&Target::Url("ws://10.0.0.3:7".into()), Some("c"), 0)
            .dropped
    );
    // Its old link's end changes nothing; its discovery dialer may forget it now.
    assert!(!t.leave("c", c.id));
    assert!(t.forget_node("c", false));
    assert!(!t.is_dropped("c"));

    // Reported again by a linked peer, it is back (a new dialer looks for it).
    t.drop_node("b");
    let b = t.join("b", DIAL, order(1, 3), "b", "b").unwrap();
    assert!(!t.is_dropped("b"), "linked again");
    t.drop_node("b");
    let b2 = t.join("b", None, order(2, 0), "b", "b").unwrap();
    assert!(b2.id > b.id);
    assert_eq!(
        t.heard_from(
            "b",
            b2.id,
            None,
            (7, false),
            None,
            vec![addr("c", "ws://10.0.0.3:7")]
        ),
        Some(vec!["c".to_owned()])
    );
    assert!(
        t.known()
            .iter()
            .any(|k| k.node == "c" && k.reported_by == ["b"])
    );
}

#[test]
fn a_dropped_node_that_comes_back_in_between_is_not_forgotten_by_its_dialer() {
    let mut t: Topology<()> = Topology::new("a");
    let b = t.join("b", DIAL, order(1, 1), "b", ()).unwrap();
    t.heard_from(
        "b",
        b.id,
        None,
        (7, false),
        None,
        vec![addr("c", "ws://10.0.0.3:7")],
    );
    t.drop_node("c");
    // Before c's dialer acts on the drop, c links and leaves again.
    let c = t.join("c", None, order(1, 0), "c", ()).unwrap();
    assert!(t.leave("c", c.id));
    assert!(
        !t.forget_node("c", false),
        "no longer dropped: the hour counts again"
    );
}
