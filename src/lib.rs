//! Tether: a self-hosted issue tracker whose HTTP API speaks Yandex Tracker's dialect.
//!
//! The library holds everything; `main.rs` only parses the command line. Tests build the same router and serve it
//! on `127.0.0.1:0` with [`http::serve`].

pub mod cli;
pub mod domain;
pub mod error;
pub mod http;
pub mod integrations;
pub mod outbox;
pub mod store;
pub mod web;

pub use http::{AppState, router, serve};

/// A new random API token (256 bits, URL-safe). Only its hash is stored.
pub fn new_token() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    format!("tth_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}
