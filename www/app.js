// The Ferry page: a thin view over the Rust/wasm client. All peer logic
// (joining, negotiation, reconnects, message validation) lives in wasm;
// this module renders its events and forwards clicks.
import init, { FerryClient, newRoomCode, normalizeRoomCode, preconnect, qrSvg } from "./pkg/ferry_wasm.js";

const $ = (id) => document.getElementById(id);

const ADJECTIVES = ["Amber", "Brisk", "Calm", "Daring", "Eager", "Fuzzy", "Gentle", "Happy", "Jolly", "Keen", "Lucky", "Mellow", "Nimble", "Quiet", "Rapid", "Sunny", "Tidy", "Vivid", "Witty", "Zesty"];
const ANIMALS = ["Otter", "Falcon", "Panda", "Lynx", "Heron", "Koala", "Marten", "Puffin", "Quokka", "Robin", "Seal", "Tapir", "Wombat", "Yak", "Zebra", "Badger", "Crane", "Dingo", "Gecko", "Ibis"];

const STATE_LABEL = {
  connecting: "Connecting…",
  connected: "Connected",
  disconnected: "Reconnecting…",
  failed: "Could not connect",
  closed: "Disconnected",
};
const STATE_PILL = { connecting: "pill-warn", connected: "pill-ok", disconnected: "pill-warn", failed: "pill-bad", closed: "pill-muted" };

// Test and benchmark hooks: timings and the live client.
const ferry = (window.__ferry = { FerryClient, client: null, joinedAt: null, startedAt: null, openedAt: {}, events: [] });

let client = null;
let peers = new Map(); // id -> {name, state, route}
let selfId = null;

function randomName() {
  const pick = (list) => list[crypto.getRandomValues(new Uint8Array(1))[0] % list.length];
  return `${pick(ADJECTIVES)} ${pick(ANIMALS)}`;
}

function displayName() {
  return $("name").value.trim().slice(0, 40) || "Guest";
}

function colorFor(id) {
  let h = 0;
  for (const c of id) h = (h * 31 + c.charCodeAt(0)) % 360;
  return `hsl(${h} 60% 48%)`;
}

function setServerStatus(state, text, pill) {
  const el = $("server-status");
  el.dataset.state = state;
  el.textContent = text;
  el.className = `pill ${pill}`;
}

function showBanner(text, bad = false) {
  const b = $("banner");
  if (!text) { b.hidden = true; return; }
  b.textContent = text;
  b.classList.toggle("bad", bad);
  b.hidden = false;
}

// Coalesce peer-list updates into one DOM rebuild per frame: a join brings
// a burst of events, and each extra frame delays the handshake's next step.
let peersDirty = false;
function renderPeers() {
  if (peersDirty) return;
  peersDirty = true;
  requestAnimationFrame(() => {
    peersDirty = false;
    renderPeersNow();
  });
}

function renderPeersNow() {
  const list = $("peers");
  list.replaceChildren();
  const me = document.createElement("li");
  me.className = "peer";
  me.dataset.self = "true";
  me.append(avatar(displayName(), selfId || "me"), peerMain(`${displayName()} (you)`, selfId ? "In the room" : "Joining…"));
  list.append(me);
  for (const [id, p] of peers) {
    const li = document.createElement("li");
    li.className = "peer";
    li.dataset.peerId = id;
    li.dataset.state = p.state;
    if (p.route) li.dataset.route = p.route;
    const pill = document.createElement("span");
    pill.className = `pill ${STATE_PILL[p.state] || "pill-muted"}`;
    pill.textContent = STATE_LABEL[p.state] || p.state;
    const main = peerMain(p.name || `Peer ${id.slice(0, 4)}`, "");
    main.querySelector(".peer-sub").append(pill);
    li.append(avatar(p.name || id, id), main);
    if (p.route && p.state === "connected") {
      const r = document.createElement("span");
      r.className = "route";
      r.title = "Candidate type of the selected route: host (direct), srflx (through NAT), relay (through TURN)";
      r.textContent = p.route;
      li.append(r);
    }
    list.append(li);
  }
  $("peer-count").textContent = String(peers.size + 1);
}

function avatar(name, id) {
  const a = document.createElement("span");
  a.className = "avatar";
  a.style.background = colorFor(id);
  a.textContent = (name.trim()[0] || "?").toUpperCase();
  return a;
}

function peerMain(name, sub) {
  const d = document.createElement("div");
  d.className = "peer-main";
  const n = document.createElement("div");
  n.className = "peer-name";
  n.textContent = name;
  const s = document.createElement("div");
  s.className = "peer-sub";
  s.textContent = sub;
  d.append(n, s);
  return d;
}

function addMessage({ from, text, mine = false, system = false }) {
  $("messages-empty")?.remove();
  const li = document.createElement("li");
  li.className = `msg${mine ? " mine" : ""}${system ? " system" : ""}`;
  if (!system) {
    const meta = document.createElement("span");
    meta.className = "meta";
    const time = new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    meta.textContent = `${mine ? "You" : from} · ${time}`;
    li.append(meta);
    li.dataset.from = mine ? "me" : from;
  }
  const bubble = document.createElement("span");
  bubble.className = "bubble";
  bubble.textContent = text;
  li.append(bubble);
  const list = $("messages");
  list.append(li);
  list.scrollTop = list.scrollHeight;
}

function peerName(id) {
  return peers.get(id)?.name || `Peer ${id.slice(0, 4)}`;
}

// Events are applied to the page in batches, at most one render per
// UI_BATCH_MS. A join brings a burst of events within a few milliseconds,
// and on a slow machine every extra frame rendered in between delays the
// handshake's next step on the main thread.
const UI_BATCH_MS = 60;
let pendingEvents = [];
let flushTimer = null;

function onEvent(e) {
  const at = performance.now();
  ferry.events.push({ at, ...e });
  if (e.type === "peer_state" && e.state === "connected" && !(e.peer_id in ferry.openedAt)) {
    ferry.openedAt[e.peer_id] = at;
    ferry.onOpened?.(e.peer_id);
    setTimeout(runAfterHandshake, UI_BATCH_MS);
  }
  pendingEvents.push(e);
  flushTimer ??= setTimeout(flushEvents, UI_BATCH_MS);
}

function flushEvents() {
  flushTimer = null;
  for (const e of pendingEvents.splice(0)) applyEvent(e);
}

function applyEvent(e) {
  switch (e.type) {
    case "server":
      if (e.state === "joined") {
        setServerStatus("joined", "Server connected", "pill-ok");
        showBanner(null);
      } else if (e.state === "lost") {
        const secs = Math.max(1, Math.round((e.retry_in_ms || 0) / 1000));
        setServerStatus("lost", "Server unreachable", "pill-bad");
        const direct = [...peers.values()].some((p) => p.state === "connected");
        showBanner(`The signaling server is unreachable; retrying in ${secs}s. ${direct ? "Your direct connections keep working, so chat still flows." : "New people cannot join until it is back."}`);
      } else if (e.state === "connecting" || e.state === "joining") {
        if ($("server-status").dataset.state !== "lost") setServerStatus(e.state, "Connecting to server…", "pill-warn");
      } else if (e.state === "closed") {
        setServerStatus("closed", "Not connected", "pill-muted");
      }
      break;
    case "joined":
      selfId = e.peer_id;
      ferry.joinedAt = performance.now();
      $("self-id").textContent = `you are ${e.peer_id}`;
      renderPeers();
      break;
    case "server_error":
      showBanner(serverErrorText(e), true);
      break;
    case "peer_joined":
      peers.set(e.peer_id, { name: e.name, state: "connecting", route: null });
      addMessage({ text: `${peerName(e.peer_id)} joined`, system: true });
      renderPeers();
      break;
    case "peer_left":
      if (peers.has(e.peer_id)) addMessage({ text: `${peerName(e.peer_id)} left`, system: true });
      peers.delete(e.peer_id);
      renderPeers();
      break;
    case "peer_state": {
      const p = peers.get(e.peer_id) || { name: "", route: null };
      p.state = e.state;
      peers.set(e.peer_id, p);
      if (e.state === "connected" && document.activeElement === document.body) $("chat-input").focus({ preventScroll: true });
      renderPeers();
      break;
    }
    case "peer_route": {
      const p = peers.get(e.peer_id);
      if (p) { p.route = e.local; renderPeers(); }
      break;
    }
    case "chat":
      addMessage({ from: peerName(e.from), text: e.text });
      break;
    case "peer_error":
      console.warn(`peer ${e.peer_id}: ${e.message}`);
      break;
  }
}

function serverErrorText(e) {
  switch (e.code) {
    case "room_full": return "This room is full (8 people at most). Ask someone to leave, or create a new room.";
    case "unsupported_version": return "This page is out of date for the server. Reload the page.";
    case "invalid_room": return "That room code is not valid. Codes use letters, digits and dashes.";
    default: return `Server: ${e.message}`;
  }
}

function roomLink(code) {
  return `${location.origin}${location.pathname}#${code}`;
}

// Work that can wait (the QR code, the URL) runs once the first peer is
// connected or after QUIET_MS, so that it does not hold up the handshake's
// next step on the main thread.
const QUIET_MS = 300;
let afterHandshakeFns = [];
function afterHandshake(fn) {
  afterHandshakeFns.push(fn);
  setTimeout(runAfterHandshake, QUIET_MS);
}
function runAfterHandshake() {
  for (const fn of afterHandshakeFns.splice(0)) fn();
}

function signalingUrl() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}/ws`;
}

// Keep a signaling connection ready so that joining skips the handshakes.
function warmUp() {
  try { preconnect(signalingUrl()); } catch (err) { console.warn(err); }
}

// Paint first, then connect: the room view is rendered, and its frame has
// finished (two animation frames), before the client starts. Otherwise that
// frame's layout, paint and raster land between the handshake's steps, and on
// a slow machine one frame can cost as much as the whole join.
let pendingStart = null;

function enterRoom(code) {
  leaveRoom(false);
  peers = new Map();
  selfId = null;
  ferry.clickedAt = performance.now();
  $("landing").hidden = true;
  $("room").hidden = false;
  $("room-code").textContent = code;
  const link = roomLink(code);
  $("room-link").value = link;
  $("qr").replaceChildren();
  document.title = `Ferry · ${code}`;
  $("messages").replaceChildren(Object.assign(document.createElement("li"), { className: "empty", id: "messages-empty", textContent: "No messages yet. Share the link and say hello." }));
  renderPeersNow();
  const token = {};
  pendingStart = token;
  requestAnimationFrame(() => requestAnimationFrame(() => setTimeout(() => {
    if (pendingStart !== token) return;
    pendingStart = null;
    ferry.startedAt = performance.now();
    ferry.openedAt = {};
    client = new FerryClient({ serverUrl: signalingUrl(), room: code, name: displayName(), iceServers: [] }, onEvent);
    ferry.client = client;
    // The QR code and the URL can wait until the handshake is done.
    afterHandshake(() => {
      if (client?.room !== code) return;
      try { $("qr").innerHTML = qrSvg(link); } catch (err) { console.warn(err); }
      if (location.hash !== `#${code}`) history.replaceState(null, "", `#${code}`);
    });
  }, 0)));
}

function leaveRoom(toLanding = true) {
  pendingEvents = [];
  pendingStart = null;
  if (client) {
    try { client.leave(); } catch (err) { console.warn(err); }
    client.free();
    client = null;
    ferry.client = null;
  }
  if (toLanding) {
    warmUp();
    peers = new Map();
    $("room").hidden = true;
    $("landing").hidden = false;
    showBanner(null);
    setServerStatus("idle", "Not connected", "pill-muted");
    history.replaceState(null, "", location.pathname);
    document.title = "Ferry — direct rooms between browsers";
  }
}

function joinFromHash() {
  const code = decodeURIComponent(location.hash.slice(1));
  if (!code) return false;
  try {
    enterRoom(normalizeRoomCode(code));
    return true;
  } catch (err) {
    $("join-error").textContent = `The link has an invalid room code: ${err.message}`;
    $("join-error").hidden = false;
    return false;
  }
}

async function main() {
  await init();
  const stored = localStorage.getItem("ferry.name");
  $("name").value = stored || randomName();
  $("name").addEventListener("change", () => {
    localStorage.setItem("ferry.name", displayName());
    renderPeers();
  });
  $("create").addEventListener("click", () => enterRoom(newRoomCode()));
  $("join-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const err = $("join-error");
    try {
      const code = normalizeRoomCode($("join-code").value);
      err.hidden = true;
      enterRoom(code);
    } catch (e) {
      err.textContent = "Enter a room code like k7mx-2qfa: letters, digits and dashes.";
      err.hidden = false;
    }
  });
  $("leave").addEventListener("click", () => leaveRoom(true));
  $("copy-link").addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText($("room-link").value);
      $("copy-link").textContent = "Copied";
    } catch {
      $("room-link").select();
      $("copy-link").textContent = "Press Ctrl+C";
    }
    setTimeout(() => ($("copy-link").textContent = "Copy"), 1500);
  });
  $("chat-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = $("chat-input");
    const text = input.value.trim();
    const err = $("chat-error");
    if (!text || !client) return;
    try {
      client.sendChat(text);
      addMessage({ text, mine: true });
      input.value = "";
      err.hidden = true;
    } catch (e) {
      err.textContent = e.message.includes("no peer")
        ? "Nobody is connected yet. Share the link, then send again."
        : e.message;
      err.hidden = false;
    }
  });
  window.addEventListener("hashchange", () => {
    const code = decodeURIComponent(location.hash.slice(1));
    if (code && (!client || client.room !== code)) joinFromHash();
  });
  // Tell the room right away instead of waiting for the heartbeat.
  window.addEventListener("pagehide", () => client?.leave());
  if (!joinFromHash()) warmUp();
}

main().catch((err) => {
  console.error(err);
  showBanner(`Ferry could not start: ${err.message}`, true);
});
