//! The run loop: browser callbacks in, session outputs out.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};

use ferry_core::{Config, Event, Output, PeerEvent, Session};
use ferry_protocol::{PeerId, RoomCode};
use serde::{Deserialize, Serialize};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{CloseEvent, MessageEvent, WebSocket};

use crate::Error;
use crate::peer::PeerConn;

pub(crate) type Shared = Rc<RefCell<Driver>>;
pub(crate) type WeakShared = Weak<RefCell<Driver>>;

/// Options accepted by [`FerryClient::new`].
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Options {
    /// `ws://` or `wss://` URL of the signaling endpoint.
    server_url: String,
    /// Room code to join.
    room: String,
    /// Display name.
    #[serde(default)]
    name: String,
    /// Override of the per-link connect timeout, in milliseconds.
    #[serde(default)]
    connect_timeout_ms: Option<u64>,
}

struct Ws {
    socket: WebSocket,
    _on_open: Closure<dyn FnMut()>,
    _on_message: Closure<dyn FnMut(MessageEvent)>,
    _on_close: Closure<dyn FnMut(CloseEvent)>,
}

impl Drop for Ws {
    fn drop(&mut self) {
        self.socket.set_onopen(None);
        self.socket.set_onmessage(None);
        self.socket.set_onclose(None);
        let _ = self.socket.close();
    }
}

/// Driver state shared by every callback.
pub(crate) struct Driver {
    pub(crate) session: Session,
    epoch: f64,
    server_url: String,
    ws: Option<Ws>,
    ws_generation: u32,
    pub(crate) peers: HashMap<PeerId, PeerConn>,
    peer_generation: u32,
    ice_servers: JsValue,
    on_event: js_sys::Function,
    timer: Option<i32>,
    timer_cb: Option<Closure<dyn FnMut()>>,
}

fn performance_now() -> f64 {
    web_sys::window()
        .and_then(|w| w.performance())
        .map_or_else(js_sys::Date::now, |p| p.now())
}

impl Driver {
    pub(crate) fn now(&self) -> u64 {
        (performance_now() - self.epoch).max(0.0) as u64
    }

    fn perform(&mut self, output: Output, weak: &WeakShared) {
        match output {
            Output::ConnectServer => self.connect_server(weak),
            Output::SendServer(text) => {
                if let Some(ws) = &self.ws
                    && ws.socket.ready_state() == WebSocket::OPEN
                    && let Err(e) = ws.socket.send_with_str(&text)
                {
                    log_error(&format!("signaling send failed: {:?}", Error::from(e)));
                }
            }
            Output::CloseServer => {
                self.ws = None;
                self.ws_generation += 1;
            }
            Output::Peer { peer, command } => {
                if let ferry_core::PeerCommand::Create { open_channel, .. } = command {
                    self.peers.remove(&peer);
                    self.peer_generation += 1;
                    match PeerConn::new(
                        weak.clone(),
                        peer.clone(),
                        self.peer_generation,
                        &self.ice_servers,
                        open_channel,
                    ) {
                        Ok(conn) => {
                            self.peers.insert(peer, conn);
                        }
                        Err(e) => log_error(&format!("cannot create a peer connection: {e}")),
                    }
                } else if let ferry_core::PeerCommand::Close = command {
                    self.peers.remove(&peer);
                } else if let Some(conn) = self.peers.get(&peer) {
                    conn.perform(command);
                }
            }
            Output::Event(_) => {}
            _ => {}
        }
    }

    fn connect_server(&mut self, weak: &WeakShared) {
        self.ws = None;
        self.ws_generation += 1;
        let generation = self.ws_generation;
        let warm = take_warm_socket(&self.server_url);
        if let Some(socket) = &warm
            && socket.ready_state() == WebSocket::OPEN
        {
            // Already open: its `open` event has fired, so report it ourselves
            // once this callback returns.
            let weak = weak.clone();
            wasm_bindgen_futures::spawn_local(async move {
                with_session(&weak, move |d, now| {
                    if d.ws_generation == generation {
                        d.session.server_opened(now);
                    }
                });
            });
        }
        let socket = match warm.map_or_else(|| WebSocket::new(&self.server_url), Ok) {
            Ok(s) => s,
            Err(e) => {
                log_error(&format!(
                    "cannot open {}: {}",
                    self.server_url,
                    Error::from(e)
                ));
                let weak = weak.clone();
                wasm_bindgen_futures::spawn_local(async move {
                    with_session(&weak, move |d, now| {
                        if d.ws_generation == generation {
                            d.session.server_closed(now);
                        }
                    });
                });
                return;
            }
        };
        let w = weak.clone();
        let on_open = Closure::<dyn FnMut()>::new(move || {
            with_session(&w, move |d, now| {
                if d.ws_generation == generation {
                    d.session.server_opened(now);
                }
            });
        });
        let w = weak.clone();
        let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |e: MessageEvent| {
            if let Some(text) = e.data().as_string() {
                with_session(&w, move |d, now| {
                    if d.ws_generation == generation {
                        d.session.server_text(&text, now);
                    }
                });
            }
        });
        let w = weak.clone();
        let on_close = Closure::<dyn FnMut(CloseEvent)>::new(move |_e: CloseEvent| {
            with_session(&w, move |d, now| {
                if d.ws_generation == generation {
                    d.ws = None;
                    d.session.server_closed(now);
                }
            });
        });
        socket.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        socket.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        socket.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        self.ws = Some(Ws {
            socket,
            _on_open: on_open,
            _on_message: on_message,
            _on_close: on_close,
        });
    }

    fn arm_timer(&mut self, weak: &WeakShared) {
        let Some(window) = web_sys::window() else {
            return;
        };
        if let Some(handle) = self.timer.take() {
            window.clear_timeout_with_handle(handle);
        }
        let Some(deadline) = self.session.poll_timeout() else {
            return;
        };
        let delay = deadline.saturating_sub(self.now()).min(i32::MAX as u64) as i32;
        if self.timer_cb.is_none() {
            let w = weak.clone();
            self.timer_cb = Some(Closure::<dyn FnMut()>::new(move || {
                with_session(&w, move |d, now| {
                    d.timer = None;
                    d.session.handle_timeout(now);
                });
            }));
        }
        if let Some(cb) = &self.timer_cb {
            self.timer = window
                .set_timeout_with_callback_and_timeout_and_arguments_0(
                    cb.as_ref().unchecked_ref(),
                    delay,
                )
                .ok();
        }
    }

    fn shutdown(&mut self) {
        if let (Some(window), Some(handle)) = (web_sys::window(), self.timer.take()) {
            window.clear_timeout_with_handle(handle);
        }
        self.ws = None;
        self.peers.clear();
    }
}

thread_local! {
    /// A signaling socket opened ahead of time by [`preconnect`].
    static WARM: RefCell<Option<(String, WebSocket)>> = const { RefCell::new(None) };
}

/// Takes the pre-opened socket for `url`, if it is still usable.
fn take_warm_socket(url: &str) -> Option<WebSocket> {
    let (warm_url, socket) = WARM.with(|w| w.borrow_mut().take())?;
    let usable = matches!(
        socket.ready_state(),
        WebSocket::CONNECTING | WebSocket::OPEN
    );
    if warm_url == url && usable {
        Some(socket)
    } else {
        let _ = socket.close();
        None
    }
}

/// Opens the signaling WebSocket to `url` ahead of time, so that the next
/// [`FerryClient`] for that server joins without waiting for the TCP and
/// WebSocket handshakes. Call it when the page loads and after leaving a room.
#[wasm_bindgen]
pub fn preconnect(url: &str) -> Result<(), Error> {
    let current = WARM.with(|w| {
        w.borrow().as_ref().is_some_and(|(u, s)| {
            u == url && matches!(s.ready_state(), WebSocket::CONNECTING | WebSocket::OPEN)
        })
    });
    if !current {
        let socket = WebSocket::new(url)?;
        if let Some((_, old)) = WARM.with(|w| w.borrow_mut().replace((url.to_owned(), socket))) {
            let _ = old.close();
        }
    }
    Ok(())
}

/// Runs `f` on the driver with the current time, then carries out every
/// output and delivers events to the page. If the driver is busy (a callback
/// fired while we were inside it), the work is retried on a microtask.
pub(crate) fn with_session(weak: &WeakShared, f: impl FnOnce(&mut Driver, u64) + 'static) {
    let Some(shared) = weak.upgrade() else {
        return;
    };
    let Ok(mut d) = shared.try_borrow_mut() else {
        let weak = weak.clone();
        wasm_bindgen_futures::spawn_local(async move { with_session(&weak, f) });
        return;
    };
    let now = d.now();
    f(&mut d, now);
    drop(d);
    pump(&shared);
}

/// Feeds a transport event for one peer connection, if it is still current.
pub(crate) fn feed_peer(weak: &WeakShared, peer: &PeerId, generation: u32, event: PeerEvent) {
    let peer = peer.clone();
    with_session(weak, move |d, now| {
        if d.peers.get(&peer).map(PeerConn::generation) == Some(generation) {
            d.session.peer_event(&peer, event, now);
        }
    });
}

fn pump(shared: &Shared) {
    let weak = Rc::downgrade(shared);
    let (events, on_event) = {
        let Ok(mut d) = shared.try_borrow_mut() else {
            return;
        };
        let mut events = Vec::new();
        while let Some(out) = d.session.poll_output() {
            match out {
                Output::Event(e) => events.push(e),
                other => d.perform(other, &weak),
            }
        }
        d.arm_timer(&weak);
        (events, d.on_event.clone())
    };
    // Deliver with no borrow held: the page may call back into the client.
    for event in events {
        dispatch(&on_event, &event);
    }
}

fn dispatch(on_event: &js_sys::Function, event: &Event) {
    let serializer = serde_wasm_bindgen::Serializer::json_compatible();
    match event.serialize(&serializer) {
        Ok(value) => {
            if let Err(e) = on_event.call1(&JsValue::NULL, &value) {
                log_error(&format!("event handler threw: {}", Error::from(e)));
            }
        }
        Err(e) => log_error(&format!("cannot convert event: {e}")),
    }
}

pub(crate) fn log_error(message: &str) {
    web_sys::console::error_1(&JsValue::from_str(message));
}

/// A member of a Ferry room, running in this page.
///
/// ```js
/// const client = new FerryClient(
///   { serverUrl: "ws://127.0.0.1:8080/ws", room: "k7mx-2qfa", name: "Ada" },
///   (event) => console.log(event.type, event),
/// );
/// client.sendChat("hello");
/// ```
#[wasm_bindgen]
pub struct FerryClient {
    shared: Shared,
}

#[wasm_bindgen]
impl FerryClient {
    /// Joins a room. `options` is `{serverUrl, room, name?, iceServers?,
    /// connectTimeoutMs?}`; `on_event` receives every event as an object.
    #[wasm_bindgen(constructor)]
    pub fn new(options: JsValue, on_event: js_sys::Function) -> Result<FerryClient, Error> {
        let opts: Options = serde_wasm_bindgen::from_value(options.clone())
            .map_err(|e| Error::Options(e.to_string()))?;
        let room = RoomCode::new(&opts.room)?;
        ferry_protocol::validate_name(&opts.name)?;
        let ice_servers = js_sys::Reflect::get(&options, &JsValue::from_str("iceServers"))
            .ok()
            .filter(js_sys::Array::is_array)
            .unwrap_or_else(|| js_sys::Array::new().into());
        let mut config = Config::new(room, opts.name);
        if let Some(ms) = opts.connect_timeout_ms {
            config.connect_timeout = ms;
        }
        let epoch = performance_now();
        let shared = Rc::new(RefCell::new(Driver {
            session: Session::new(config, 0),
            epoch,
            server_url: opts.server_url,
            ws: None,
            ws_generation: 0,
            peers: HashMap::new(),
            peer_generation: 0,
            ice_servers,
            on_event,
            timer: None,
            timer_cb: None,
        }));
        pump(&shared);
        Ok(FerryClient { shared })
    }

    /// Sends a chat message to every connected peer; returns how many.
    #[wasm_bindgen(js_name = sendChat)]
    pub fn send_chat(&self, text: &str) -> Result<u32, Error> {
        let n = self.shared.borrow_mut().session.send_chat(text)?;
        pump(&self.shared);
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// Leaves the room, closing the signaling connection and every peer
    /// connection.
    pub fn leave(&self) {
        self.shared.borrow_mut().session.leave();
        pump(&self.shared);
        self.shared.borrow_mut().shutdown();
    }

    /// Our peer id, once joined.
    #[wasm_bindgen(getter, js_name = peerId)]
    pub fn peer_id(&self) -> Option<String> {
        self.shared
            .borrow()
            .session
            .peer_id()
            .map(ToString::to_string)
    }

    /// The room code, normalized.
    #[wasm_bindgen(getter)]
    pub fn room(&self) -> String {
        self.shared.borrow().session.room().to_string()
    }
}
