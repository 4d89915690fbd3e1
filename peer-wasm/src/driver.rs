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
use crate::files::{self, Sink, SinkJob};
use crate::peer::PeerConn;
use ferry_core::transfer::{TransferEvent, TransferId, id_from_hex};
use js_sys::{Array, Promise};
use web_sys::File;

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
    /// The peer id this tab had before a reload, to keep it.
    #[serde(default)]
    rejoin_as: Option<String>,
    /// The resume token that went with it (from `resumeToken`).
    #[serde(default)]
    resume_token: Option<String>,
    /// The room's password, if it has one (or to give it one, when creating).
    #[serde(default)]
    password: Option<String>,
    /// URL of the OPFS writer worker script.
    #[serde(default = "default_sink_url")]
    sink_worker_url: String,
    /// URL of the hashing worker module.
    #[serde(default = "default_hash_url")]
    hash_worker_url: String,
    /// A function returning the object to write received files with, in
    /// place of the OPFS worker (for example a download stream where OPFS
    /// is missing); it may return `null` to keep the worker.
    #[serde(skip)]
    sink_factory: Option<js_sys::Function>,
    /// `"relay"` to connect only through TURN (hides this device's
    /// addresses from peers); `"all"` (the default) to use any route.
    #[serde(default)]
    ice_transport_policy: Option<String>,
    /// Chunk size this side offers as a sender, in bytes (a power of two;
    /// a tuning knob, see `docs/benchmarks.md`).
    #[serde(default)]
    chunk_size: Option<u32>,
    /// Chunks a receiver keeps requested at once (a tuning knob).
    #[serde(default)]
    window: Option<usize>,
    /// Most consecutive chunks a sender reads per `Blob` slice (a tuning knob).
    #[serde(default)]
    read_coalesce: Option<u64>,
    /// Least free window slots before a receiver asks for more (a tuning knob).
    #[serde(default)]
    request_batch: Option<usize>,
}

fn default_hash_url() -> String {
    "hash-worker.js".into()
}

fn default_sink_url() -> String {
    "sink-worker.js".into()
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
    relay_only: bool,
    on_event: js_sys::Function,
    timer: Option<i32>,
    /// When the armed timer fires, in session milliseconds.
    timer_deadline: u64,
    timer_cb: Option<Closure<dyn FnMut()>>,
    /// The timer that posts a write batch left waiting, and its callback.
    flush_timer: Option<i32>,
    flush_cb: Option<Closure<dyn FnMut()>>,
    outgoing_files: HashMap<TransferId, Vec<File>>,
    sink: Option<Sink>,
    sink_url: String,
    sink_factory: Option<js_sys::Function>,
    hash_url: String,
    last_save: HashMap<TransferId, u64>,
}

thread_local! {
    /// `window.performance`, looked up once: it is read on every event.
    static PERFORMANCE: Option<web_sys::Performance> =
        web_sys::window().and_then(|w| w.performance());
}

fn performance_now() -> f64 {
    PERFORMANCE.with(|p| p.as_ref().map_or_else(js_sys::Date::now, |p| p.now()))
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
                        &self.rtc_config(),
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
            Output::ReadChunk {
                id,
                file,
                chunk,
                offset,
                len,
            } => {
                let source = self
                    .outgoing_files
                    .get(&id)
                    .and_then(|f| f.get(file as usize))
                    .cloned();
                let weak = weak.clone();
                wasm_bindgen_futures::spawn_local(async move {
                    let result = match &source {
                        Some(f) => files::read_slice(f, offset, len).await,
                        None => Err(Error::Js("the file is no longer available".into())),
                    };
                    with_session(&weak, move |d, now| match result {
                        Ok(data) => d.session.chunk_read(&id, file, chunk, data, now),
                        Err(e) => d.session.read_failed(&id, &e.to_string()),
                    });
                });
            }
            Output::WriteChunk {
                id,
                file,
                chunk,
                offset,
                data,
            } => {
                if let Err((id, e)) = self.sink_write(weak, &id, file, chunk, offset, &data) {
                    let weak = weak.clone();
                    let reason = e.to_string();
                    wasm_bindgen_futures::spawn_local(async move {
                        with_session(&weak, move |d, _| d.session.write_failed(&id, &reason));
                    });
                }
            }
            Output::Event(_) => {}
            _ => {}
        }
    }

    /// The configuration for a new peer connection: the STUN and TURN
    /// servers the signaling server handed out, then the page's own.
    fn rtc_config(&self) -> web_sys::RtcConfiguration {
        let servers = js_sys::Array::new();
        let ser = serde_wasm_bindgen::Serializer::json_compatible();
        for s in self.session.ice_servers() {
            if let Ok(v) = s.serialize(&ser) {
                servers.push(&v);
            }
        }
        if let Some(page) = self.ice_servers.dyn_ref::<js_sys::Array>() {
            for v in page.iter() {
                servers.push(&v);
            }
        }
        let config = web_sys::RtcConfiguration::new();
        config.set_ice_servers(&servers);
        if self.relay_only {
            config.set_ice_transport_policy(web_sys::RtcIceTransportPolicy::Relay);
        }
        config
    }

    fn sink(&mut self, weak: &WeakShared) -> Result<&mut Sink, Error> {
        if self.sink.is_none() {
            let pending: Rc<RefCell<HashMap<u32, SinkJob>>> = Rc::default();
            let spare: files::Spare = Rc::default();
            let (w, p, kept) = (weak.clone(), pending.clone(), spare.clone());
            let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |e: MessageEvent| {
                let data = e.data();
                let get = |k: &str| {
                    js_sys::Reflect::get(&data, &JsValue::from_str(k)).unwrap_or(JsValue::UNDEFINED)
                };
                let seq = get("seq").as_f64().unwrap_or(-1.0) as u32;
                let ok = get("ok").as_bool().unwrap_or(false);
                let error = get("error")
                    .as_string()
                    .unwrap_or_else(|| "unknown storage error".into());
                let Some(job) = p.borrow_mut().remove(&seq) else {
                    return;
                };
                // A written batch's buffer, handed back to be filled again.
                if let Ok(buf) = get("data").dyn_into::<js_sys::ArrayBuffer>() {
                    files::keep_spare(&kept, buf);
                }
                match job {
                    SinkJob::Write { id, file, chunks } => with_session(&w, move |d, now| {
                        if ok {
                            for chunk in chunks {
                                d.session.chunk_written(&id, file, chunk, now);
                            }
                        } else {
                            d.session.write_failed(&id, &error);
                        }
                    }),
                    SinkJob::Promise { resolve, reject } => {
                        let _ = if ok {
                            resolve.call1(&JsValue::NULL, &get("file"))
                        } else {
                            reject.call1(&JsValue::NULL, &js_sys::Error::new(&error))
                        };
                    }
                    SinkJob::Quiet => {
                        if !ok {
                            log_error(&format!("storage: {error}"));
                        }
                    }
                }
            });
            self.sink = Some(Sink::new(
                &self.sink_url,
                self.sink_factory.as_ref(),
                on_message,
                pending,
                spare,
            )?);
        }
        self.sink
            .as_mut()
            .ok_or_else(|| Error::Js("no storage worker".into()))
    }

    fn file_path(&self, id: &TransferId, file: u32) -> Result<String, Error> {
        let manifest = self
            .session
            .transfers()
            .manifest_hash(id)
            .ok_or_else(|| Error::Js("no such download".into()))?;
        Ok(format!("{}/{file}", files::opfs_dir(&manifest)))
    }

    /// Hands a verified chunk to the sink, which gathers consecutive ones
    /// into one write; arms the timer that posts a batch left waiting.
    fn sink_write(
        &mut self,
        weak: &WeakShared,
        id: &TransferId,
        file: u32,
        chunk: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<(), (TransferId, Error)> {
        let path = self.file_path(id, file).map_err(|e| (*id, e))?;
        let t = self.session.transfers();
        let (name, size) = t
            .files(id)
            .and_then(|f| f.get(file as usize))
            .map(|f| (f.path.replace('/', "_"), f.size))
            .ok_or_else(|| (*id, Error::Js("no such download".into())))?;
        // A quarter of the window at most, so a small window never waits
        // on a batch that its own requests cannot fill.
        let config = t.config();
        let batch_bytes = files::WRITE_BATCH
            .min(config.window as u64 * u64::from(config.chunk_size) / 4)
            .max(1);
        let write = files::ChunkWrite {
            id: *id,
            file,
            chunk,
            offset,
            path,
            name,
            size,
            data,
        };
        let waiting = self
            .sink(weak)
            .map_err(|e| (*id, e))?
            .write(write, batch_bytes)?;
        if waiting {
            self.arm_flush_timer(weak);
        } else {
            self.clear_flush_timer();
        }
        Ok(())
    }

    /// Posts a batch that has waited [`files::WRITE_BATCH_WAIT_MS`] for
    /// its next chunk.
    fn arm_flush_timer(&mut self, weak: &WeakShared) {
        if self.flush_timer.is_some() {
            return;
        }
        let Some(window) = web_sys::window() else {
            return;
        };
        let cb = self.flush_cb.get_or_insert_with(|| {
            let w = weak.clone();
            Closure::<dyn FnMut()>::new(move || {
                with_session(&w, move |d, _| {
                    d.flush_timer = None;
                    if let Some(Err((id, e))) = d.sink.as_mut().map(Sink::flush) {
                        d.session.write_failed(&id, &e.to_string());
                    }
                });
            })
        });
        self.flush_timer = window
            .set_timeout_with_callback_and_timeout_and_arguments_0(
                cb.as_ref().unchecked_ref(),
                files::WRITE_BATCH_WAIT_MS,
            )
            .ok();
    }

    fn clear_flush_timer(&mut self) {
        if let (Some(window), Some(handle)) = (web_sys::window(), self.flush_timer.take()) {
            window.clear_timeout_with_handle(handle);
        }
    }

    fn save_progress(&mut self, id: &TransferId) {
        if self.sink.as_ref().is_some_and(|s| !s.resumable) {
            return;
        }
        let t = self.session.transfers();
        // Never for a declined, cancelled or finished download: its saved
        // progress would make the next offer of the same files resume
        // without asking.
        if !t.is_receiving(id) {
            return;
        }
        if let (Some(m), Some(have)) = (t.manifest_hash(id), t.have_maps(id)) {
            files::save_progress(&m, t.config().chunk_size, have);
        }
    }

    /// Side effects of transfer events on storage; returns a replacement
    /// event type for the page, if any.
    fn on_transfer_event(
        &mut self,
        event: &TransferEvent,
        weak: &WeakShared,
        now: u64,
    ) -> Option<&'static str> {
        let incoming = |d: &Self, id: &str| {
            id_from_hex(id).filter(|i| d.session.transfers().manifest_hash(i).is_some())
        };
        match event {
            TransferEvent::Offered { id, .. } => {
                let id = incoming(self, id)?;
                let t = self.session.transfers();
                let manifest = t.manifest_hash(&id)?;
                let sizes: Vec<u64> = t.files(&id)?.iter().map(|f| f.size).collect();
                let have = files::load_progress(&manifest, t.config().chunk_size, &sizes)?;
                // Accepted before this reload: resume without asking again.
                self.session.accept_transfer(&id, Some(have), now).ok()?;
                Some("resuming")
            }
            TransferEvent::Progress { id, .. } => {
                let id = incoming(self, id)?;
                if self
                    .last_save
                    .get(&id)
                    .is_none_or(|t| now.saturating_sub(*t) >= 500)
                {
                    self.last_save.insert(id, now);
                    self.save_progress(&id);
                }
                None
            }
            TransferEvent::FileVerified { id, .. } => {
                let id = incoming(self, id)?;
                self.save_progress(&id);
                None
            }
            TransferEvent::Completed { id }
            | TransferEvent::Declined { id, .. }
            | TransferEvent::Failed { id, .. }
            | TransferEvent::Cancelled { id, .. } => {
                let tid = id_from_hex(id)?;
                self.outgoing_files.remove(&tid);
                let manifest = self.session.transfers().manifest_hash(&tid)?;
                match event {
                    TransferEvent::Completed { .. } | TransferEvent::Declined { .. } => {
                        files::forget_progress(&manifest);
                    }
                    TransferEvent::Cancelled { .. } => {
                        // Nothing partial may look complete: remove it all.
                        files::forget_progress(&manifest);
                        let dir = files::opfs_dir(&manifest);
                        if let Ok(sink) = self.sink(weak) {
                            let _ = sink.simple("delete", "dir", &dir, SinkJob::Quiet);
                        }
                    }
                    _ => self.save_progress(&tid),
                }
                None
            }
            _ => None,
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
        let Some(deadline) = self.session.poll_timeout() else {
            if let Some(handle) = self.timer.take() {
                window.clear_timeout_with_handle(handle);
            }
            return;
        };
        // A timer that fires no later than needed can stay: firing early is
        // harmless (the session re-arms), and re-arming on every chunk is
        // measurable work.
        if self.timer.is_some() && self.timer_deadline <= deadline {
            return;
        }
        if let Some(handle) = self.timer.take() {
            window.clear_timeout_with_handle(handle);
        }
        self.timer_deadline = deadline;
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
        self.clear_flush_timer();
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
                Output::Event(e) => {
                    let replace = match &e {
                        Event::Transfer { event } => {
                            let now = d.now();
                            d.on_transfer_event(event, &weak, now)
                        }
                        _ => None,
                    };
                    events.push((e, replace));
                }
                other => d.perform(other, &weak),
            }
        }
        d.arm_timer(&weak);
        (events, d.on_event.clone())
    };
    // Deliver with no borrow held: the page may call back into the client.
    for (event, replace) in events {
        dispatch(&on_event, &event, replace);
    }
}

fn dispatch(on_event: &js_sys::Function, event: &Event, replace: Option<&str>) {
    let serializer = serde_wasm_bindgen::Serializer::json_compatible();
    match event.serialize(&serializer) {
        Ok(value) => {
            if let Some(kind) = replace {
                // The page sees e.g. `resuming` instead of `offered`.
                if let Ok(inner) = js_sys::Reflect::get(&value, &JsValue::from_str("event")) {
                    let _ = js_sys::Reflect::set(
                        &inner,
                        &JsValue::from_str("type"),
                        &JsValue::from_str(kind),
                    );
                }
            }
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
        let mut opts: Options = serde_wasm_bindgen::from_value(options.clone())
            .map_err(|e| Error::Options(e.to_string()))?;
        opts.sink_factory = js_sys::Reflect::get(&options, &JsValue::from_str("sinkFactory"))
            .ok()
            .and_then(|f| f.dyn_into::<js_sys::Function>().ok());
        let room = RoomCode::new(&opts.room)?;
        ferry_protocol::validate_name(&opts.name)?;
        let ice_servers = js_sys::Reflect::get(&options, &JsValue::from_str("iceServers"))
            .ok()
            .filter(js_sys::Array::is_array)
            .unwrap_or_else(|| js_sys::Array::new().into());
        let mut config = Config::new(room, opts.name);
        config.rejoin_as = opts.rejoin_as.and_then(|id| PeerId::new(id).ok());
        config.resume_token = opts.resume_token;
        config.password = opts.password.filter(|p| !p.is_empty());
        if let Some(ms) = opts.connect_timeout_ms {
            config.connect_timeout = ms;
        }
        if let Some(cs) = opts.chunk_size {
            config.transfer.chunk_size = cs;
        }
        if let Some(w) = opts.window {
            config.transfer.window = w.clamp(1, 1024);
        }
        if let Some(n) = opts.read_coalesce {
            config.transfer.read_coalesce = n.clamp(1, 256);
        }
        if let Some(n) = opts.request_batch {
            config.transfer.request_batch = n.clamp(1, 1024);
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
            relay_only: opts.ice_transport_policy.as_deref() == Some("relay"),
            on_event,
            timer: None,
            timer_deadline: 0,
            timer_cb: None,
            flush_timer: None,
            flush_cb: None,
            outgoing_files: HashMap::new(),
            sink: None,
            sink_url: opts.sink_worker_url,
            sink_factory: opts.sink_factory,
            hash_url: opts.hash_worker_url,
            last_save: HashMap::new(),
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
        self.close(true);
    }

    /// Closes everything without telling the server that this peer left:
    /// the server keeps its seat for a grace period, and the same tab coming
    /// back (a reload, with `rejoinAs` and `resumeToken`) takes it again
    /// without the others ever seeing it leave. Call it on `pagehide`.
    pub fn suspend(&self) {
        self.close(false);
    }

    /// The token that takes this peer's seat back after a reload, if the
    /// server keeps seats; store it with the peer id.
    #[wasm_bindgen(getter, js_name = resumeToken)]
    pub fn resume_token(&self) -> Option<String> {
        self.shared
            .borrow()
            .session
            .resume_token()
            .map(str::to_owned)
    }
}

#[wasm_bindgen]
impl FerryClient {
    /// Starts a call and invites everyone connected; returns the call id.
    /// Add media tracks on each `send_media` event.
    #[wasm_bindgen(js_name = startCall)]
    pub fn start_call(&self) -> Result<String, Error> {
        let crypto = web_sys::window()
            .ok_or_else(|| Error::Js("no window".into()))?
            .crypto()?;
        let mut bytes = [0u8; 8];
        crypto.get_random_values_with_u8_array(&mut bytes)?;
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        self.shared.borrow_mut().session.start_call(&id)?;
        pump(&self.shared);
        Ok(id)
    }

    /// Answers the ringing call.
    #[wasm_bindgen(js_name = answerCall)]
    pub fn answer_call(&self) -> Result<(), Error> {
        self.shared.borrow_mut().session.answer_call()?;
        pump(&self.shared);
        Ok(())
    }

    /// Declines the ringing call.
    #[wasm_bindgen(js_name = declineCall)]
    pub fn decline_call(&self) -> Result<(), Error> {
        self.shared.borrow_mut().session.decline_call()?;
        pump(&self.shared);
        Ok(())
    }

    /// Leaves the call.
    #[wasm_bindgen(js_name = hangUp)]
    pub fn hang_up(&self) -> Result<(), Error> {
        self.shared.borrow_mut().session.hang_up()?;
        pump(&self.shared);
        Ok(())
    }

    /// Invites a peer that joined the room after the call started.
    #[wasm_bindgen(js_name = inviteToCall)]
    pub fn invite_to_call(&self, peer: &str) -> Result<(), Error> {
        let peer = PeerId::new(peer)?;
        self.shared.borrow_mut().session.invite_to_call(&peer)?;
        pump(&self.shared);
        Ok(())
    }

    /// The `RTCPeerConnection` to a peer, for adding media tracks, reading
    /// remote ones and statistics; `undefined` when there is none.
    #[wasm_bindgen(js_name = peerConnection)]
    pub fn peer_connection(&self, peer: &str) -> Option<web_sys::RtcPeerConnection> {
        let peer = PeerId::new(peer).ok()?;
        self.shared
            .borrow()
            .peers
            .get(&peer)
            .map(|p| p.connection().clone())
    }

    /// Whether this side is the polite one of perfect negotiation towards
    /// `peer`: the impolite side's offer wins when both offer at once.
    #[wasm_bindgen(js_name = isPolite)]
    pub fn is_polite(&self, peer: &str) -> bool {
        PeerId::new(peer).is_ok_and(|p| self.shared.borrow().session.polite_towards(&p))
    }

    /// Starts an offer/answer round with a peer after its tracks changed.
    pub fn renegotiate(&self, peer: &str) -> Result<(), Error> {
        let peer = PeerId::new(peer)?;
        self.shared.borrow_mut().session.renegotiate(&peer);
        pump(&self.shared);
        Ok(())
    }
}

impl FerryClient {
    fn close(&self, say_leave: bool) {
        {
            // Record exactly what is stored, so a reload refetches only the
            // chunks that were still in flight.
            let mut d = self.shared.borrow_mut();
            let ids = d.session.transfers().incoming_ids();
            for id in ids {
                d.save_progress(&id);
            }
        }
        if say_leave {
            self.shared.borrow_mut().session.leave();
        } else {
            self.shared.borrow_mut().session.suspend();
        }
        pump(&self.shared);
        self.shared.borrow_mut().shutdown();
    }
}

#[wasm_bindgen]
impl FerryClient {
    /// Offers files to peers. `paths` gives each file's relative path (for
    /// folders); `peers` lists peer ids, or is empty for everyone connected.
    /// Hashes the files first (reading them in slices, never whole) and
    /// resolves with the transfer ids.
    #[wasm_bindgen(js_name = offerFiles)]
    pub fn offer_files(&self, files: Array, paths: Array, peers: Array) -> Promise {
        let weak = Rc::downgrade(&self.shared);
        wasm_bindgen_futures::future_to_promise(async move {
            let files: Vec<File> = files
                .iter()
                .map(|f| f.dyn_into::<File>())
                .collect::<Result<_, _>>()
                .map_err(|_| Error::Options("files must be File objects".into()))?;
            let paths: Vec<String> = paths
                .iter()
                .map(|p| p.as_string().unwrap_or_default())
                .collect();
            let peers: Vec<String> = peers.iter().filter_map(|p| p.as_string()).collect();
            let chunk_size = {
                let shared = weak
                    .upgrade()
                    .ok_or_else(|| Error::Js("client closed".into()))?;
                shared.borrow().session.transfers().config().chunk_size
            };
            // Hash in one worker per core; fall back to this thread.
            let cores = web_sys::window()
                .map(|w| w.navigator().hardware_concurrency() as usize)
                .unwrap_or(2)
                .clamp(1, 8);
            let hash_url = weak
                .upgrade()
                .map(|s| s.borrow().hash_url.clone())
                .unwrap_or_default();
            let mut pool = files::HashPool::new(&hash_url, cores).ok();
            let mut sources = Vec::with_capacity(files.len());
            for (i, f) in files.iter().enumerate() {
                let pooled = match pool.as_mut() {
                    Some(p) => p
                        .hash(f, chunk_size)
                        .await
                        .map_err(|e| {
                            log_error(&format!("hash workers failed ({e}); hashing on the page"));
                        })
                        .ok(),
                    None => None,
                };
                if pooled.is_none() {
                    pool = None;
                }
                let digest = match pooled {
                    Some(d) => d,
                    None => files::hash_file(f, chunk_size).await?,
                };
                let path = paths
                    .get(i)
                    .filter(|p| !p.is_empty())
                    .cloned()
                    .unwrap_or_else(|| f.name());
                sources.push(ferry_core::transfer::SourceFile {
                    path,
                    size: f.size() as u64,
                    digest,
                });
            }
            let shared = weak
                .upgrade()
                .ok_or_else(|| Error::Js("client closed".into()))?;
            let ids = Array::new();
            {
                let mut d = shared.borrow_mut();
                let now = d.now();
                let targets: Vec<PeerId> = if peers.is_empty() {
                    d.session.connected_peers()
                } else {
                    peers
                        .iter()
                        .filter_map(|p| PeerId::new(p.as_str()).ok())
                        .collect()
                };
                if targets.is_empty() {
                    return Err(Error::Core(ferry_core::Error::NoConnectedPeers).into());
                }
                for peer in targets {
                    let id = files::random_id()?;
                    d.session
                        .offer_files(&peer, id, sources.clone(), now)
                        .map_err(Error::from)?;
                    d.outgoing_files.insert(id, files.clone());
                    ids.push(&JsValue::from_str(&files::hex(&id)));
                }
            }
            pump(&shared);
            Ok(ids.into())
        })
    }

    /// Accepts an offer (resuming saved progress if there is any).
    #[wasm_bindgen(js_name = acceptTransfer)]
    pub fn accept_transfer(&self, id: &str) -> Result<(), Error> {
        let id = id_from_hex(id).ok_or_else(|| Error::Options("bad transfer id".into()))?;
        {
            let mut d = self.shared.borrow_mut();
            let now = d.now();
            let t = d.session.transfers();
            let resume = t.manifest_hash(&id).zip(t.files(&id)).and_then(|(m, f)| {
                let sizes: Vec<u64> = f.iter().map(|f| f.size).collect();
                files::load_progress(&m, t.config().chunk_size, &sizes)
            });
            d.session.accept_transfer(&id, resume, now)?;
        }
        pump(&self.shared);
        Ok(())
    }

    /// Declines an offer.
    #[wasm_bindgen(js_name = declineTransfer)]
    pub fn decline_transfer(&self, id: &str, reason: &str) -> Result<(), Error> {
        let id = id_from_hex(id).ok_or_else(|| Error::Options("bad transfer id".into()))?;
        self.shared
            .borrow_mut()
            .session
            .decline_transfer(&id, reason)?;
        pump(&self.shared);
        Ok(())
    }

    /// Cancels a transfer in either direction.
    #[wasm_bindgen(js_name = cancelTransfer)]
    pub fn cancel_transfer(&self, id: &str) -> Result<(), Error> {
        let id = id_from_hex(id).ok_or_else(|| Error::Options("bad transfer id".into()))?;
        self.shared
            .borrow_mut()
            .session
            .cancel_transfer(&id, "cancelled by the user")?;
        pump(&self.shared);
        Ok(())
    }

    /// A received, verified file as a `File` (backed by disk, not memory),
    /// ready to hand to the user as a download.
    #[wasm_bindgen(js_name = savedFile)]
    pub fn saved_file(&self, id: &str, file: u32) -> Promise {
        let shared = self.shared.clone();
        let id = id_from_hex(id);
        Promise::new(&mut |resolve, reject| {
            let weak = Rc::downgrade(&shared);
            let mut d = shared.borrow_mut();
            let result = id
                .ok_or_else(|| Error::Options("bad transfer id".into()))
                .and_then(|id| d.file_path(&id, file))
                .and_then(|path| {
                    d.sink(&weak)?.simple(
                        "file",
                        "path",
                        &path,
                        SinkJob::Promise {
                            resolve,
                            reject: reject.clone(),
                        },
                    )
                });
            if let Err(e) = result {
                let _ = reject.call1(&JsValue::NULL, &JsValue::from(e));
            }
        })
    }

    /// Removes a received file from private storage, once the page has
    /// copied it somewhere else (a folder the user picked).
    #[wasm_bindgen(js_name = discardSavedFile)]
    pub fn discard_saved_file(&self, id: &str, file: u32) -> Result<(), Error> {
        let id = id_from_hex(id).ok_or_else(|| Error::Options("bad transfer id".into()))?;
        let weak = Rc::downgrade(&self.shared);
        let mut d = self.shared.borrow_mut();
        let path = d.file_path(&id, file)?;
        d.sink(&weak)?
            .simple("delete", "dir", &path, SinkJob::Quiet)
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
