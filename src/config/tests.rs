use super::*;

#[test]
fn config_file_loses_to_overrides() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(CONFIG_FILE),
        "listen = \"127.0.0.1:9000\"\nnode_id = \"filenode\"\n[limits]\nsend_per_second = 7\n",
    )
    .unwrap();
    let c = NodeConfig::resolve(
        dir.path().into(),
        NodeOverrides {
            node_id: Some("flagnode".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(c.listen, "127.0.0.1:9000");
    assert_eq!(c.node_id, "flagnode");
    assert_eq!(c.limits.send_per_second, 7);
}

#[test]
fn advertise_is_a_url_or_none() {
    assert_eq!(Advertise::parse("none", false).unwrap(), Advertise::None);
    assert_eq!(
        Advertise::parse("NONE", true).unwrap().wire().unwrap(),
        "none"
    );
    assert_eq!(
        Advertise::parse("wss://hub.example.com:8765", true).unwrap(),
        Advertise::Url("wss://hub.example.com:8765".into())
    );
    assert_eq!(Advertise::Default.wire(), None);
    let e = Advertise::parse("hub.example.com", false).unwrap_err();
    assert!(e.to_string().contains("--advertise"), "{e}");
    let e = Advertise::parse("ws://hub.example.com:8765", true).unwrap_err();
    assert!(e.to_string().contains("wss://"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(CONFIG_FILE), "advertise = \"none\"\n").unwrap();
    let c = NodeConfig::resolve(dir.path().into(), NodeOverrides::default()).unwrap();
    assert_eq!(c.advertise, Advertise::None);
}

#[test]
fn config_typos_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(CONFIG_FILE), "lisen = \"x\"\n").unwrap();
    let e = NodeConfig::resolve(dir.path().into(), NodeOverrides::default()).unwrap_err();
    assert!(e.to_string().contains("lisen"), "{e}");
}

#[test]
fn tls_settings() {
    let dir = tempfile::tempdir().unwrap();
    let resolve = |o: NodeOverrides| NodeConfig::resolve(dir.path().into(), o);
    assert_eq!(resolve(NodeOverrides::default()).unwrap().tls, None);
    let c = resolve(NodeOverrides {
        tls_self_signed: true,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(c.tls, Some(TlsSource::SelfSigned));
    let e = resolve(NodeOverrides {
        tls_cert: Some("c.pem".into()),
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("--tls-key"), "{e}");
    std::fs::write(
        dir.path().join(CONFIG_FILE),
        "[tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\nca = \"/ca.pem\"\n",
    )
    .unwrap();
    let c = resolve(NodeOverrides::default()).unwrap();
    assert_eq!(
        c.tls,
        Some(TlsSource::Files {
            cert: "/c.pem".into(),
            key: "/k.pem".into()
        })
    );
    assert_eq!(c.tls_ca, vec![PathBuf::from("/ca.pem")]);
    // A flag replaces the table's whole setting.
    let c = resolve(NodeOverrides {
        tls_self_signed: true,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(c.tls, Some(TlsSource::SelfSigned));
}

#[test]
fn plain_peers_on_other_machines_need_allow_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let o = |allow| NodeOverrides {
        peers: vec!["ws://10.9.8.7:8765".into()],
        allow_plaintext: allow,
        ..Default::default()
    };
    let e = NodeConfig::resolve(dir.path().into(), o(false)).unwrap_err();
    assert!(e.to_string().contains("--allow-plaintext"), "{e}");
    assert!(NodeConfig::resolve(dir.path().into(), o(true)).is_ok());
}

#[test]
fn endpoints() {
    assert_eq!(ws_endpoint("ws://h:1"), "ws://h:1/ws");
    assert_eq!(ws_endpoint("ws://h:1/"), "ws://h:1/ws");
    assert_eq!(ws_endpoint("ws://h:1/custom"), "ws://h:1/custom");
    assert!(validate_ws_url("http://x").is_err());
}
