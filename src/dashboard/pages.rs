//! The dashboard's HTTP routes: the page and its assets (compiled in), and logging in and out.
//! Everything else a page does goes over its live WebSocket ([`super::live`]).
//!
//! Every answer carries a strict Content-Security-Policy (scripts and styles only from the
//! node itself, no inline script, no framing), so even a body that slipped into the page as
//! markup could not run. Writes (login, logout) are CSRF-safe three times over: the cookie is
//! `SameSite=Strict`, the `Origin` must be the node's own, and logout needs the session's CSRF
//! token in a header.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use super::login::cookie_value;
use crate::node::http::{AppState, Transport};

const INDEX: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const VIEWS_JS: &str = include_str!("assets/views.js");
const APP_CSS: &str = include_str!("assets/app.css");
const ICON: &str = include_str!("assets/icon.svg");

/// The policy every dashboard answer carries. `connect-src 'self'` covers the page's own
/// `ws://`/`wss://` origin.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// The header a page sends its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The compiled-in files: path, content type, body.
const ASSETS: &[(&str, &str, &str)] = &[
    ("/", "text/html; charset=utf-8", INDEX),
    (
        "/dashboard/app.js",
        "text/javascript; charset=utf-8",
        APP_JS,
    ),
    (
        "/dashboard/views.js",
        "text/javascript; charset=utf-8",
        VIEWS_JS,
    ),
    ("/dashboard/app.css", "text/css; charset=utf-8", APP_CSS),
    ("/dashboard/icon.svg", "image/svg+xml", ICON),
];

/// The dashboard's routes, merged into the node's.
pub fn routes() -> axum::Router<AppState> {
    let mut r = axum::Router::new();
    for &(path, content_type, body) in ASSETS {
        r = r.route(path, get(move || async move { asset(content_type, body) }));
    }
    r.route("/dashboard/session", get(session))
        .route("/dashboard/login", post(login))
        .route("/dashboard/logout", post(logout))
}

/// The headers every dashboard answer carries.
fn guarded(mut r: Response) -> Response {
    let h = r.headers_mut();
    for (k, v) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    r
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    guarded(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

fn refuse(status: StatusCode, why: &str) -> Response {
    let body = serde_json::json!({ "error": why });
    guarded((status, Json(body)).into_response())
}

/// `http(s)://HOST` as the request names it: what a same-origin page's `Origin` is.
pub fn own_origin(headers: &HeaderMap, tls: bool) -> Option<String> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    Some(format!("{}://{host}", if tls { "https" } else { "http" }))
}

/// A write must come from a page of this node: its `Origin` is the node's own.
pub fn same_origin(headers: &HeaderMap, tls: bool) -> bool {
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    matches!((origin, own_origin(headers, tls)), (Some(o), Some(own)) if o == own)
}

fn is_tls(t: Option<axum::Extension<Transport>>) -> bool {
    t.is_some_and(|t| t.tls)
}

/// The cookie's value, if the request has the session cookie.
pub fn session_id(s: &AppState, headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|h| cookie_value(h, s.dashboard.cookie_name()))
        .map(str::to_owned)
}

/// What a logged-in page is told about itself.
#[derive(Debug, Serialize, Deserialize)]
pub struct Me {
    /// The name the page acts as.
    pub agent: String,
    /// The token writes carry.
    pub csrf: String,
    /// The node serving it.
    pub node: String,
}

fn me(s: &AppState, session: &super::login::Session) -> Json<Me> {
    Json(Me {
        agent: session.name.clone(),
        csrf: session.csrf.clone(),
        node: s.router.node_id.clone(),
    })
}

async fn session(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let Some(id) = session_id(&s, &headers) else {
        return refuse(StatusCode::UNAUTHORIZED, "not logged in");
    };
    match s.dashboard.session(&id).await {
        Some(session) => guarded(me(&s, &session).into_response()),
        None => {
            let clear = s.dashboard.set_cookie(None);
            let mut r = refuse(StatusCode::UNAUTHORIZED, "the session has ended");
            if let Ok(v) = HeaderValue::from_str(&clear) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginForm {
    code: String,
}

async fn login(
    State(s): State<AppState>,
    transport: Option<axum::Extension<Transport>>,
    headers: HeaderMap,
    body: Result<Json<LoginForm>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if !same_origin(&headers, is_tls(transport)) {
        return refuse(StatusCode::FORBIDDEN, "cross-origin login refused");
    }
    let Ok(Json(form)) = body else {
        return refuse(StatusCode::BAD_REQUEST, "expected {\"code\": \"...\"}");
    };
    let Some((id, session)) = s.dashboard.redeem(form.code.trim()) else {
        tracing::info!("refused a dashboard login: wrong, used or expired code");
        return refuse(
            StatusCode::UNAUTHORIZED,
            "this login link is wrong, expired or already used: run `switchboard dashboard` for a new one",
        );
    };
    tracing::info!(agent = %session.name, "dashboard login");
    let mut r = guarded(me(&s, &session).into_response());
    if let Ok(v) = HeaderValue::from_str(&s.dashboard.set_cookie(Some(&id))) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn logout(
    State(s): State<AppState>,
    transport: Option<axum::Extension<Transport>>,
    headers: HeaderMap,
) -> Response {
    if !same_origin(&headers, is_tls(transport)) {
        return refuse(StatusCode::FORBIDDEN, "cross-origin logout refused");
    }
    let Some(id) = session_id(&s, &headers) else {
        return refuse(StatusCode::UNAUTHORIZED, "not logged in");
    };
    let csrf = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    match s.dashboard.session(&id).await {
        Some(session) if csrf.is_some_and(|c| crate::auth::constant_time_eq(c, &session.csrf)) => {
            s.dashboard.logout(&id);
            tracing::info!(agent = %session.name, "dashboard logout");
        }
        Some(_) => return refuse(StatusCode::FORBIDDEN, "missing or wrong CSRF token"),
        None => {}
    }
    let mut r = guarded(StatusCode::NO_CONTENT.into_response());
    if let Ok(v) = HeaderValue::from_str(&s.dashboard.set_cookie(None)) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[cfg(test)]
mod tests {
    /// Bodies are untrusted: no asset may ever turn text into markup.
    #[test]
    fn assets_never_parse_markup() {
        for js in [super::APP_JS, super::VIEWS_JS] {
            for sink in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
            ] {
                assert!(!js.contains(sink), "an asset uses {sink}");
            }
        }
        assert!(!super::INDEX.contains("<script>"), "no inline script");
        assert!(!super::INDEX.contains("style="), "no inline style");
    }
}
