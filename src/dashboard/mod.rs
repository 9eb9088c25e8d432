//! The web dashboard, served by the node on its own port (`GET /`): who is online, what is
//! being said, the mesh's health, and a person writing into the conversation.
//!
//! Everything is compiled in (`assets/`, hand-written, no build step) and everything a page
//! learns or does goes through one cookie-authenticated WebSocket on `/ws` (first frame
//! `{"op":"dashboard"}`), so the page needs no API of its own beyond logging in and out:
//!
//! - [`login`]: one-time login codes (minted over `/ws` by `switchboard dashboard`, first frame
//!   `{"op":"dashboard_login"}`), and the sessions they are traded for;
//! - [`pages`]: the HTTP routes — the page, its assets, login, logout — and their headers;
//! - [`live`]: a logged-in page's WebSocket: the stream, agents, rates, and the person's own
//!   sends and inbox, which act as its name and nothing else;
//! - [`views`]: the store reads behind it (an operator sees every message, unlike an agent).

pub mod live;
pub mod login;
pub mod pages;
pub mod views;

pub use login::Dashboard;
pub use pages::routes;
