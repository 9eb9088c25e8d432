//! The web dashboard in a real headless Chromium: logging in with the link `switchboard
//! dashboard` prints, agents coming and going, the live stream, a hostile body, the views, a
//! person writing to an agent, logging out. Screenshots of each view go to docs/screenshots/.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard::protocol::SendRequest;

use crate::browser::Browser;
use crate::common::{NodeProc, eventually, next_push, tempdir};

/// The link `switchboard dashboard ARGS` prints: its last line.
pub async fn login_link(node: &NodeProc, args: &[&str]) -> String {
    let mut all = vec!["dashboard"];
    all.extend_from_slice(args);
    let out = node.cli(&all).await;
    out.lines().last().unwrap().trim().to_owned()
}

/// Opens `link` and waits until the page is logged in and live.
pub async fn log_in(b: &Browser, link: &str) {
    b.c.goto(link).await.unwrap();
    b.until(
        15,
        "the dashboard to log in and go live",
        "return !document.getElementById('app').hidden && document.getElementById('conn').textContent === 'live'",
    )
    .await;
}

fn send(to: &str, body: &str) -> SendRequest {
    SendRequest {
        to: to.into(),
        body: body.into(),
        ..Default::default()
    }
}

/// The agents table as [name, "online"/"offline", unread].
async fn agents(b: &Browser) -> Vec<Value> {
    let v = b
        .js("return [...document.querySelectorAll('#agents tbody tr')].map(r => [r.dataset.agent, r.className, r.cells[5].textContent])")
        .await;
    v.as_array().cloned().unwrap_or_default()
}

async fn agent_is(b: &Browser, name: &str, state: &str) -> bool {
    agents(b)
        .await
        .iter()
        .any(|a| a[0] == name && a[1] == state)
}

#[tokio::test]
async fn the_dashboard_shows_the_mesh_live_and_a_person_writes_into_it() {
    let dir = tempdir();
    let node = NodeProc::start(dir.path(), &[]).await;
    let link = login_link(&node, &[]).await;
    assert!(
        link.starts_with(&format!("http://127.0.0.1:{}/#code=", node.port)),
        "{link}"
    );
    let b = Browser::start().await;
    log_in(&b, &link).await;
    // The code is gone from the address bar (and the history) once used.
    let url = b.c.current_url().await.unwrap();
    assert!(!url.as_str().contains("code"), "{url}");
    assert_eq!(
        b.js("return document.getElementById('me').textContent")
            .await,
        "human"
    );

    // Agents appear and leave without a reload.
    let alice = node.client("alice").await;
    let bob = node.client("bob").await;
    eventually(10, "alice and bob listed online", || async {
        agent_is(&b, "alice", "online").await && agent_is(&b, "bob", "online").await
    })
    .await;
    bob.send(send("alice", "are the builds green?"))
        .await
        .unwrap();
    drop(alice);
    eventually(10, "alice listed offline after she left", || async {
        agent_is(&b, "alice", "offline").await
    })
    .await;
    eventually(10, "alice's unread count", || async {
        agents(&b)
            .await
            .iter()
            .any(|a| a[0] == "alice" && a[2] == "1")
    })
    .await;
    b.shot("agents").await;

    // A message an agent sends appears in the stream within a second.
    b.click("#tabs button[data-view=stream]").await;
    let body = format!("deploy finished {}", ulid::Ulid::new());
    bob.send(send("alice", &body)).await.unwrap();
    let sent = Instant::now();
    let find = format!(
        "return [...document.querySelectorAll('#stream .body')].some(e => e.textContent === {})",
        json!(body)
    );
    b.until(10, "the message in the stream", &find).await;
    let took = sent.elapsed();
    assert!(
        took <= Duration::from_secs(1),
        "the stream showed it after {took:?}"
    );

    // A hostile body is text: no element is made of it, nothing runs.
    let hostile = "<img src=x onerror=alert(1)>";
    bob.send(send("alice", hostile)).await.unwrap();
    let shown = format!(
        "return [...document.querySelectorAll('#stream .body')].some(e => e.textContent === {})",
        json!(hostile)
    );
    b.until(10, "the hostile body shown as text", &shown).await;
    assert_eq!(
        b.js("return document.querySelectorAll('#app img').length")
            .await,
        0
    );
    assert!(
        b.c.get_alert_text().await.is_err(),
        "a body ran script (an alert is open)"
    );
    b.shot("stream").await;

    // The stream filters by agent.
    b.fill("#filters input[name=agent]", "nobody-at-all").await;
    b.click("#filters button[type=submit]").await;
    b.until(
        10,
        "an empty filtered stream",
        "return document.querySelectorAll('#stream li').length === 0",
    )
    .await;
    b.click("#filters button[type=reset]").await;
    b.until(10, "the stream back", &shown).await;

    // The thread of a message, from its "thread" button.
    let thread = format!(
        "const li = [...document.querySelectorAll('#stream li')].find(l => l.querySelector('.body').textContent === {}); \
         li.querySelector('.actions button').click(); return true",
        json!(body)
    );
    b.js(&thread).await;
    b.until(
        10,
        "the thread view",
        "return document.querySelectorAll('#thread li').length === 1",
    )
    .await;
    b.shot("thread").await;

    // Full-text search over every message.
    b.click("#tabs button[data-view=search]").await;
    b.fill("#search-form input[name=query]", "builds green")
        .await;
    b.click("#search-form button[type=submit]").await;
    b.until(10, "a search result", "return [...document.querySelectorAll('#results .body')].some(e => e.textContent === 'are the builds green?')")
        .await;
    b.shot("search").await;

    // Topics and their subscribers.
    bob.subscribe("builds".into(), true).await.unwrap();
    b.click("#tabs button[data-view=topics]").await;
    b.until(10, "the topic listed", "return [...document.querySelectorAll('#topics tbody tr')].some(r => r.dataset.topic === 'builds' && r.cells[1].textContent === 'bob')")
        .await;
    b.shot("topics").await;

    b.click("#tabs button[data-view=mesh]").await;
    b.until(
        10,
        "the node's facts",
        "return document.querySelector('#mesh-self dd') !== null",
    )
    .await;
    b.shot("mesh").await;

    b.click("#tabs button[data-view=rates]").await;
    b.until(
        10,
        "numbers under the charts",
        "return document.getElementById('now-messages').textContent !== ''",
    )
    .await;
    b.shot("rates").await;

    // The person writes to an agent: an ordinary message, from its own name.
    let mut bob_mail = bob.pushes();
    b.fill("#compose input[name=to]", "bob").await;
    b.fill("#compose textarea[name=body]", "please rerun the tests")
        .await;
    b.click("#compose button[type=submit]").await;
    b.until(
        10,
        "the send confirmed",
        "return document.getElementById('compose-status').textContent.startsWith('Sent')",
    )
    .await;
    let got = next_push(&mut bob_mail).await;
    assert_eq!(
        (got.from.as_str(), got.body.as_str()),
        ("human", "please rerun the tests")
    );
    let inbox = node.cli(&["inbox", "--as", "bob", "--json"]).await;
    assert!(inbox.contains("please rerun the tests"), "{inbox}");

    // The person's inbox, and a reply in the thread.
    let question = bob.send(send("human", "which suite?")).await.unwrap();
    b.click("#tabs button[data-view=inbox]").await;
    b.until(10, "the question in the person's inbox", "return [...document.querySelectorAll('#inbox .body')].some(e => e.textContent === 'which suite?')")
        .await;
    b.shot("inbox").await;
    b.js("[...document.querySelectorAll('#inbox li')][0].querySelectorAll('.actions button')[1].click(); return true")
        .await;
    b.fill("#compose textarea[name=body]", "the integration suite")
        .await;
    b.click("#compose button[type=submit]").await;
    let reply = next_push(&mut bob_mail).await;
    assert_eq!(reply.body, "the integration suite");
    assert_eq!(reply.reply_to.as_deref(), Some(question.id.as_str()));
    assert_eq!(reply.thread_id, question.thread_id);

    // On a phone.
    b.c.set_window_size(390, 844).await.unwrap();
    b.click("#tabs button[data-view=agents]").await;
    b.shot("phone").await;
    b.c.set_window_size(1280, 900).await.unwrap();

    // Logging out ends the session at the node, not only in this browser.
    let cookie =
        b.c.get_all_cookies()
            .await
            .unwrap()
            .into_iter()
            .find(|c| c.name() == format!("switchboard_{}", node.port))
            .expect("the session cookie");
    assert!(
        cookie.http_only().unwrap_or(false),
        "the cookie is HttpOnly"
    );
    let cookie = format!("{}={}", cookie.name(), cookie.value());
    assert_eq!(session_status(node.port, &cookie).await, 200);
    b.click("#logout").await;
    b.until(
        10,
        "the login page after logout",
        "return !document.getElementById('login').hidden",
    )
    .await;
    eventually(10, "the old cookie refused", || async {
        session_status(node.port, &cookie).await == 401
    })
    .await;
    b.close().await;
}

/// The status of `GET /dashboard/session` with `cookie`.
pub async fn session_status(port: u16, cookie: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let req = format!(
        "GET /dashboard/session HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut buf))
        .await
        .unwrap()
        .unwrap();
    buf.split_whitespace().nth(1).unwrap().parse().unwrap()
}
