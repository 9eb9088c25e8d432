//! The files in schemas/ are generated from the code; they must not drift.
//! `SWITCHBOARD_UPDATE_SCHEMAS=1 cargo test schemas` rewrites them.

use std::path::Path;

fn check(name: &str, value: serde_json::Value) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("schemas")
        .join(name);
    let text = serde_json::to_string_pretty(&value).unwrap() + "\n";
    if std::env::var_os("SWITCHBOARD_UPDATE_SCHEMAS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        return;
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == text,
        "schemas/{name} is out of date; run SWITCHBOARD_UPDATE_SCHEMAS=1 cargo test schemas"
    );
}

#[test]
fn schemas_match_the_code() {
    for (name, value) in switchboard::schemas::all() {
        check(name, value);
    }
}

#[test]
fn tools_list_is_small() {
    let tools = switchboard::schemas::all()
        .into_iter()
        .find(|(n, _)| *n == "tools.json")
        .unwrap()
        .1;
    let size = serde_json::to_string(&tools).unwrap().len();
    assert!(
        size <= 8 * 1024,
        "tools/list is {size} bytes; the budget is 8 KiB"
    );
}
