//! The browser driver for the Ferry peer engine.
//!
//! # Design
//!
//! All peer logic lives in [`ferry_core::Session`], which performs no I/O.
//! This crate is the thin layer that connects it to the browser:
//!
//! * the signaling server through a `WebSocket`;
//! * each remote peer through an `RTCPeerConnection` with one reliable,
//!   ordered `RTCDataChannel`, using trickle ICE;
//! * the clock through `performance.now()` and one `setTimeout`;
//! * the page through a single JavaScript callback that receives every
//!   [`ferry_core::Event`] as a plain object (`{type: "peer_state", ...}`).
//!
//! Every browser callback does the same three things: feed the input to the
//! session with the current time, carry out the session's outputs, and
//! re-arm the timer (see [`driver`]). Asynchronous WebRTC operations
//! (`createOffer`, `setRemoteDescription`, ...) run as futures whose
//! completion is fed back as a [`ferry_core::PeerEvent`]; the session issues
//! one such operation at a time per peer, so they never overlap.
//!
//! JavaScript errors are wrapped in [`Error`] at this boundary and turned into
//! `Error` objects with readable messages for the page.
#![forbid(unsafe_code)]

mod driver;
mod files;
mod peer;

use ferry_protocol::RoomCode;
use wasm_bindgen::prelude::*;

pub use driver::{FerryClient, preconnect};
pub use files::chunk_digests;

/// Everything that can go wrong in the browser driver.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A browser API threw or rejected.
    #[error("browser error: {0}")]
    Js(String),
    /// The engine refused the request.
    #[error(transparent)]
    Core(#[from] ferry_core::Error),
    /// Input broke the protocol's rules (room code, name, message size).
    #[error(transparent)]
    Protocol(#[from] ferry_protocol::ProtocolError),
    /// An option passed from JavaScript had the wrong shape.
    #[error("invalid option: {0}")]
    Options(String),
    /// A QR code could not be built for the text.
    #[error("cannot make a QR code: {0}")]
    Qr(String),
}

impl From<JsValue> for Error {
    fn from(value: JsValue) -> Self {
        let text = value
            .dyn_ref::<js_sys::Error>()
            .map(|e| String::from(e.message()))
            .or_else(|| value.as_string())
            .unwrap_or_else(|| format!("{value:?}"));
        Self::Js(text)
    }
}

impl From<Error> for JsValue {
    fn from(value: Error) -> Self {
        js_sys::Error::new(&value.to_string()).into()
    }
}

/// Installs a panic hook that logs Rust panics to the console.
#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

/// Makes a new random room code such as `k7mx-2qfa`.
#[wasm_bindgen(js_name = newRoomCode)]
pub fn new_room_code() -> Result<String, Error> {
    let crypto = web_sys::window()
        .ok_or_else(|| Error::Js("no window".into()))?
        .crypto()?;
    let mut bytes = [0u8; 64];
    loop {
        crypto.get_random_values_with_u8_array(&mut bytes)?;
        if let Some(code) = ferry_core::room_code::from_random(&bytes) {
            return Ok(code.to_string());
        }
    }
}

/// Checks a room code typed by a person and returns its normal form.
#[wasm_bindgen(js_name = normalizeRoomCode)]
pub fn normalize_room_code(code: &str) -> Result<String, Error> {
    Ok(RoomCode::new(code)?.to_string())
}

/// Renders `text` as a QR code in SVG.
#[wasm_bindgen(js_name = qrSvg)]
pub fn qr_svg(text: &str) -> Result<String, Error> {
    let code = qrcode::QrCode::new(text.as_bytes()).map_err(|e| Error::Qr(e.to_string()))?;
    Ok(code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(200, 200)
        .quiet_zone(true)
        .dark_color(qrcode::render::svg::Color("#0f172a"))
        .light_color(qrcode::render::svg::Color("#ffffff"))
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_bindgen_test::*;

    wasm_bindgen_test_configure!(run_in_browser);

    #[wasm_bindgen_test]
    fn room_codes_are_fresh_and_valid() {
        let a = new_room_code().unwrap();
        let b = new_room_code().unwrap();
        assert_ne!(a, b);
        assert_eq!(normalize_room_code(&a.to_uppercase()).unwrap(), a);
        assert!(normalize_room_code("no spaces").is_err());
    }

    async fn sleep(ms: i32) {
        let promise = js_sys::Promise::new(&mut |resolve, _| {
            web_sys::window()
                .unwrap()
                .set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms)
                .unwrap();
        });
        wasm_bindgen_futures::JsFuture::from(promise).await.unwrap();
    }

    #[wasm_bindgen_test]
    async fn an_unreachable_server_is_reported_and_retried() {
        use std::cell::RefCell;
        use std::rc::Rc;
        let seen: Rc<RefCell<Vec<String>>> = Rc::default();
        let sink = seen.clone();
        let on_event = Closure::<dyn FnMut(JsValue)>::new(move |e: JsValue| {
            let kind = js_sys::Reflect::get(&e, &"type".into())
                .unwrap()
                .as_string()
                .unwrap();
            let state = js_sys::Reflect::get(&e, &"state".into())
                .ok()
                .and_then(|s| s.as_string())
                .unwrap_or_default();
            sink.borrow_mut().push(format!("{kind}:{state}"));
        });
        let options = js_sys::JSON::parse(
            r#"{"serverUrl":"ws://127.0.0.1:9/ws","room":"Test-Room","name":"t"}"#,
        )
        .unwrap();
        let client = FerryClient::new(
            options,
            on_event
                .as_ref()
                .unchecked_ref::<js_sys::Function>()
                .clone(),
        )
        .unwrap();
        assert_eq!(client.room(), "test-room");
        assert_eq!(client.peer_id(), None);
        assert!(matches!(
            client.send_chat("hi"),
            Err(Error::Core(ferry_core::Error::NoConnectedPeers))
        ));
        // The first attempt fails, and the retry (after 250 ms) fails too.
        sleep(1500).await;
        let seen = seen.borrow().clone();
        assert_eq!(seen.first().map(String::as_str), Some("server:connecting"));
        assert!(
            seen.iter().filter(|s| *s == "server:lost").count() >= 2,
            "{seen:?}"
        );
        client.leave();
        drop(on_event);
    }

    #[wasm_bindgen_test]
    fn bad_options_are_clear_errors() {
        let f = js_sys::Function::new_no_args("");
        let bad_room = js_sys::JSON::parse(r#"{"serverUrl":"ws://x/ws","room":"a b"}"#).unwrap();
        let err = FerryClient::new(bad_room, f.clone()).err().unwrap();
        assert!(err.to_string().contains("room code"), "{err}");
        let missing = js_sys::JSON::parse(r#"{"room":"ok"}"#).unwrap();
        let err = FerryClient::new(missing, f).err().unwrap();
        assert!(err.to_string().contains("serverUrl"), "{err}");
    }

    #[wasm_bindgen_test]
    fn qr_code_is_svg() {
        let svg = qr_svg("http://127.0.0.1:8080/#k7mx-2qfa").unwrap();
        assert!(svg.contains("<svg"));
        assert!(svg.contains("#0f172a"));
    }
}
