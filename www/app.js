// The Ferry page: a thin view over the Rust/wasm client. All peer logic
// (joining, negotiation, reconnects, message validation) lives in wasm;
// this module renders its events and forwards clicks.
import init, { FerryClient, newRoomCode, normalizeRoomCode, preconnect, qrSvg } from "./pkg/ferry_wasm.js";
import { StreamSink } from "./stream-sink.js";
import { Calls } from "./call.js";

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
let calls = null;
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

function renderRecipients() {
  const sel = $("recipient");
  const current = sel.value;
  const options = [["", "everyone"], ...[...peers].filter(([, p]) => p.state === "connected").map(([id, p]) => [id, p.name || `Peer ${id.slice(0, 4)}`])];
  sel.replaceChildren(...options.map(([value, label]) => Object.assign(document.createElement("option"), { value, textContent: label })));
  if (options.some(([v]) => v === current)) sel.value = current;
}

function renderPeersNow() {
  renderRecipients();
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
  ferry.events.push({ at, wall: Date.now(), ...e });
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
      sessionStorage.setItem("ferry.identity", JSON.stringify({ room: e.room, peerId: e.peer_id, resumeToken: client?.resumeToken }));
      ferry.joinedAt = performance.now();
      $("self-id").textContent = `you are ${e.peer_id}`;
      renderPeers();
      break;
    case "server_error":
      if (e.code === "wrong_password") {
        // Back to the start, with the code filled in, to ask for it.
        const code = client?.room;
        leaveRoom(true);
        $("join-code").value = code || "";
        $("join-error").textContent = $("room-password").value
          ? "That password is not right for this room. Try again."
          : "This room has a password. Enter it above and press Join.";
        $("join-error").hidden = false;
        $("room-password").focus();
        break;
      }
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
    case "transfer":
      applyTransferEvent(e.event);
      break;
    case "call":
      callsView().onEvent(e.event);
      break;
  }
  if (e.type === "peer_state" && e.state === "connected") callsView().watchPeer(e.peer_id);
  if (e.type === "peer_left") callsView().peerGone(e.peer_id);
}

function callsView() {
  calls ??= new Calls({ client: () => client, peerName, say: (text) => addMessage({ text, system: true }) });
  return calls;
}

// ---- Files ----------------------------------------------------------------

const transfers = new Map(); // id -> transfer view state
let transfersDirty = false;

// Where the browser has the File System Access API, received files can go
// straight into a folder the user picks, with the sender's folder structure.
// They are received into private storage first (OPFS, resumable, verified
// chunk by chunk) and copied into the folder once their BLAKE3 matches, so
// the folder never holds a partial or unverified file.
const canPickFolder = () => typeof window.showDirectoryPicker === "function" && (sinkKind === null || sinkKind === "opfs");

// Where received files are written, picked by what the browser can do:
// "opfs" (a worker with sync access handles; resumable, then a download or
// a folder), else "stream" (a download streamed through a service worker;
// not resumable), else "none". Developers can force one with
// localStorage.setItem("ferry.sink", "stream").
let sinkKind = null;
let sinkProbe = null;

function probeSink() {
  sinkProbe ||= (async () => {
    const forced = localStorage.getItem("ferry.sink");
    if (forced !== "stream") {
      const ok = await new Promise((resolve) => {
        let w;
        try { w = new Worker("sink-worker.js"); } catch { resolve(false); return; }
        const timer = setTimeout(() => { w.terminate(); resolve(false); }, 5000);
        w.onmessage = (e) => { clearTimeout(timer); w.terminate(); resolve(!!e.data.ok); };
        w.onerror = () => { clearTimeout(timer); w.terminate(); resolve(false); };
        w.postMessage({ seq: 0, op: "probe" });
      });
      if (ok || forced === "opfs") return "opfs";
    }
    return "serviceWorker" in navigator && window.isSecureContext ? "stream" : "none";
  })().then((kind) => { sinkKind = kind; transfersChanged(); return kind; });
  return sinkProbe;
}

// Accepts once the sink is known; says what to do when there is none.
async function acceptWhenReady(x, how) {
  const kind = await probeSink();
  if (kind === "none") {
    showFilesError("This browser cannot store received files here (no private file storage and no service workers). Leave private browsing or use another browser, then ask for the files again.");
    return;
  }
  if (x.state !== "offered") return;
  act(() => { client.acceptTransfer(x.id); x.state = "active"; x.message = how(kind); });
}

async function pickFolder() {
  try {
    return await window.showDirectoryPicker({ id: "ferry-received", mode: "readwrite" });
  } catch (err) {
    if (err.name === "AbortError") return null; // The user closed the picker.
    throw err;
  }
}

// A name in `dir` that is not taken: "a.txt", then "a (1).txt", …
async function freeName(dir, name) {
  const dot = name.lastIndexOf(".");
  const [stem, ext] = dot > 0 ? [name.slice(0, dot), name.slice(dot)] : [name, ""];
  for (let i = 0; i < 1000; i++) {
    const candidate = i === 0 ? name : `${stem} (${i})${ext}`;
    try {
      await dir.getFileHandle(candidate);
    } catch (err) {
      if (err.name === "NotFoundError") return candidate;
      if (err.name !== "TypeMismatchError") throw err;
    }
  }
  throw new Error(`too many files named ${name}`);
}

// Copies one verified file from private storage into the picked folder,
// creating its subfolders; never overwrites a file that is already there.
async function copyToFolder(x, i) {
  const f = x.files[i];
  const file = await client.savedFile(x.id, i);
  const parts = f.path.split("/");
  let dir = x.folder;
  for (const p of parts.slice(0, -1)) dir = await dir.getDirectoryHandle(p, { create: true });
  const name = await freeName(dir, parts[parts.length - 1]);
  const handle = await dir.getFileHandle(name, { create: true });
  const writable = await handle.createWritable();
  await file.stream().pipeTo(writable); // Closes (commits) the file at the end.
  f.savedAs = [...parts.slice(0, -1), name].join("/");
  if (f.url) URL.revokeObjectURL(f.url);
  f.url = null;
  try { client.discardSavedFile(x.id, i); } catch { /* cleaned on a later visit */ }
}

function saveToFolder(x, i) {
  x.saving = (x.saving || Promise.resolve()).then(() => copyToFolder(x, i)).then(
    () => { folderMessage(x); transfersChanged(); },
    (err) => {
      x.message = `Could not save ${x.files[i].path} in “${x.folder.name}”: ${err.message}. Use its Save link instead.`;
      client?.savedFile(x.id, i).then((file) => { x.files[i].url = URL.createObjectURL(file); transfersChanged(); });
      transfersChanged();
    },
  );
}

// Starts a download of every file, a little apart so that the browser
// takes them all (it asks once whether the page may download many files).
async function saveAll(files) {
  for (const f of files) {
    const a = Object.assign(document.createElement("a"), { href: f.url, download: f.path.split("/").join("_") });
    a.click();
    await new Promise((r) => setTimeout(r, 150));
  }
}

function folderMessage(x) {
  if (x.state !== "completed" || x.dir !== "in") return;
  const saved = x.files.filter((f) => f.savedAs).length;
  if (saved === x.files.length) x.message = `Saved in the folder “${x.folder.name}”; every file matches its BLAKE3 hash.`;
  else if (!x.message.startsWith("Could not")) x.message = `All files arrived and match their BLAKE3 hashes; saving in “${x.folder.name}” (${saved} of ${x.files.length})…`;
}

async function saveAllToFolder(x) {
  const folder = await pickFolder();
  if (!folder) return;
  x.folder = folder;
  x.files.forEach((f, i) => { if (f.verified && !f.savedAs) saveToFolder(x, i); });
}

function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  const units = ["KB", "MB", "GB", "TB"];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

function formatEta(ms) {
  if (ms == null) return "";
  const s = Math.ceil(ms / 1000);
  if (s < 60) return `${s}s left`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60}s left`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min left`;
}

function transfersChanged() {
  if (transfersDirty) return;
  transfersDirty = true;
  requestAnimationFrame(() => { transfersDirty = false; renderTransfers(); });
}

function applyTransferEvent(t) {
  const x = transfers.get(t.id);
  switch (t.type) {
    case "offered":
    case "resuming":
      probeSink();
      transfers.set(t.id, {
        id: t.id, dir: "in", peer: t.peer, total: t.total_bytes, done: 0, rate: 0, eta: null,
        files: t.files.map((f) => ({ path: f.path, size: f.size, verified: false })),
        state: t.type === "offered" ? "offered" : "active",
        message: t.type === "resuming" ? "Resuming where it stopped…" : "",
      });
      break;
    case "offer_rejected":
      showFilesError(`${peerName(t.peer)} offered files that cannot be saved safely and were refused: ${t.reason}`);
      break;
    case "accepted":
      if (x) { x.state = "active"; x.message = ""; }
      break;
    case "declined":
      if (x) { x.state = "declined"; x.message = `Declined${t.reason ? `: ${t.reason}` : ""}`; }
      break;
    case "progress":
      if (x) {
        x.done = t.done_bytes; x.rate = t.rate_bps; x.eta = t.eta_ms;
        if (x.state === "offered") x.state = "active";
        if (x.state === "interrupted") { x.state = "active"; x.message = ""; }
      }
      break;
    case "file_verified":
      if (x) {
        const f = x.files[t.file];
        f.verified = true;
        f.hash = t.hash;
        if (x.folder) { saveToFolder(x, t.file); break; }
        client?.savedFile(t.id, t.file).then((file) => {
          if (file) f.url = URL.createObjectURL(file);
          else f.savedAs = "Downloads"; // Streamed straight into the downloads.
          transfersChanged();
        }, (err) => { x.message = `Cannot open ${f.path}: ${err.message}`; transfersChanged(); });
      }
      break;
    case "completed":
      if (x) {
        x.state = "completed"; x.done = x.total;
        x.message = x.dir === "in" ? "All files arrived and match their BLAKE3 hashes." : "Delivered and verified by the receiver.";
        if (x.folder) folderMessage(x);
      }
      break;
    case "cancelled":
      if (x) {
        x.state = "cancelled";
        for (const f of x.files) if (!f.verified) f.url = null;
        x.message = t.by_peer ? `Cancelled by ${peerName(x.peer)}${t.reason ? `: ${t.reason}` : ""}` : "Cancelled.";
        if (x.dir === "in") x.files.forEach((f) => { if (f.url) URL.revokeObjectURL(f.url); f.url = null; f.verified = false; });
      }
      break;
    case "interrupted":
      if (x) { x.state = "interrupted"; x.message = t.reason; }
      break;
    case "failed":
      if (x) { x.state = "failed"; x.message = t.reason; }
      break;
  }
  transfersChanged();
}

function showFilesError(text) {
  const el = $("files-error");
  el.textContent = text || "";
  el.hidden = !text;
}

const STATE_TEXT = {
  hashing: "Preparing…", offered: "Waiting for an answer", active: "Transferring", completed: "Done",
  cancelled: "Cancelled", declined: "Declined", failed: "Failed", interrupted: "Paused",
};

function renderTransfers() {
  const list = $("transfers");
  const wanted = [...transfers.values()].reverse().map(renderTransfer);
  // Keep existing elements (and the buttons in them) where they are, so that
  // progress updates never swap a button out from under the pointer.
  wanted.forEach((li, i) => { if (list.children[i] !== li) list.insertBefore(li, list.children[i] || null); });
  while (list.children.length > wanted.length) list.lastChild.remove();
}

function shapeOf(x) {
  return JSON.stringify([x.id, x.state, x.message, x.peer, !!x.folder, sinkKind, x.files.map((f) => [f.verified, !!f.url, f.savedAs])]);
}

function updateProgress(x) {
  const v = x.view;
  const share = x.total ? Math.min(1, x.done / x.total) : x.state === "completed" ? 1 : 0;
  v.fill.style.transform = `scaleX(${share})`;
  v.stats.textContent = x.state === "active"
    ? `${formatBytes(x.done)} of ${formatBytes(x.total)} · ${formatBytes(x.rate)}/s · ${formatEta(x.eta)}`
    : `${formatBytes(x.done)} of ${formatBytes(x.total)}`;
}

function renderTransfer(x) {
  const shape = shapeOf(x);
  if (x.view && x.view.shape === shape) {
    updateProgress(x);
    return x.view.li;
  }
  const li = x.view?.li || document.createElement("li");
  li.replaceChildren();
  li.className = "transfer";
  li.dataset.transferId = x.id;
  li.dataset.direction = x.dir;
  li.dataset.state = x.state;
  const head = document.createElement("div");
  head.className = "transfer-head";
  const title = document.createElement("div");
  const n = x.files.length;
  const what = n === 1 ? x.files[0].path : `${n} files`;
  title.innerHTML = "";
  title.append(
    Object.assign(document.createElement("div"), { className: "transfer-title", textContent: x.dir === "in" ? `${peerName(x.peer)} sends ${what}` : `${what} to ${x.peer ? peerName(x.peer) : "…"}` }),
    Object.assign(document.createElement("div"), { className: "transfer-sub", textContent: `${formatBytes(x.total)} · ${STATE_TEXT[x.state] || x.state}` }),
  );
  const actions = document.createElement("div");
  actions.className = "transfer-actions";
  const button = (label, testid, cls, fn) => {
    const b = Object.assign(document.createElement("button"), { className: `btn ${cls}`, textContent: label });
    b.dataset.testid = testid;
    b.addEventListener("click", fn);
    actions.append(b);
  };
  if (x.dir === "in" && x.state === "offered") {
    button("Accept", "accept-transfer", "btn-primary", () => acceptWhenReady(x, (kind) => (kind === "stream" ? "Each file downloads as it arrives; this browser cannot resume it after a reload." : "")));
    if (canPickFolder()) {
      button("Accept into folder…", "accept-into-folder", "", () => pickFolder().then((folder) => {
        if (!folder || x.state !== "offered") return;
        return probeSink().then((kind) => {
          if (kind === "opfs") x.folder = folder;
          return acceptWhenReady(x, () => (x.folder ? `Saving into “${folder.name}” as each file is verified.` : ""));
        });
      }, (err) => showFilesError(`Cannot use that folder: ${err.message}`)));
    }
    button("Decline", "decline-transfer", "", () => act(() => { client.declineTransfer(x.id, "declined"); x.state = "declined"; x.message = "You declined."; }));
  } else if (["offered", "active", "interrupted"].includes(x.state) && x.id) {
    button("Cancel", "cancel-transfer", "btn-ghost", () => act(() => client.cancelTransfer(x.id)));
  } else if (x.dir === "in" && x.state === "completed" && !x.folder) {
    const ready = x.files.filter((f) => f.url);
    if (ready.length > 1) button(`Save all (${ready.length})`, "save-all", "", () => saveAll(ready));
    if (canPickFolder()) button("Save all to folder…", "save-to-folder", "", () => saveAllToFolder(x).catch((err) => showFilesError(`Cannot use that folder: ${err.message}`)));
  }
  head.append(title, actions);
  li.append(head);
  const bar = Object.assign(document.createElement("div"), { className: "bar" });
  const fill = document.createElement("span");
  bar.append(fill);
  const stats = Object.assign(document.createElement("div"), { className: "transfer-sub" });
  stats.dataset.testid = "transfer-stats";
  if (x.state !== "offered" || x.dir === "out") li.append(bar, stats);
  x.view = { li, shape, fill, stats };
  updateProgress(x);
  const files = document.createElement("ul");
  files.className = "transfer-files";
  for (const [i, f] of x.files.slice(0, 8).entries()) {
    const row = document.createElement("li");
    row.dataset.file = String(i);
    row.dataset.verified = String(f.verified);
    if (f.hash) row.dataset.hash = f.hash;
    row.append(
      Object.assign(document.createElement("span"), { className: "fname", textContent: f.path, title: f.path }),
      Object.assign(document.createElement("span"), { className: "fsize", textContent: formatBytes(f.size) }),
    );
    if (f.verified && x.dir === "in" && x.state !== "cancelled") {
      const badge = Object.assign(document.createElement("span"), { className: "badge badge-ok", textContent: "✓ verified", title: `BLAKE3 ${f.hash}` });
      badge.dataset.testid = "verified";
      row.append(badge);
      if (f.savedAs === "Downloads" && !x.folder) {
        const saved = Object.assign(document.createElement("span"), { className: "saved", textContent: "in Downloads" });
        saved.dataset.testid = "saved-in-downloads";
        row.append(saved);
      } else if (f.savedAs) {
        const renamed = f.savedAs !== f.path ? ` as ${f.savedAs.split("/").pop()}` : "";
        const saved = Object.assign(document.createElement("span"), { className: "saved", textContent: `in folder${renamed}`, title: `${x.folder.name}/${f.savedAs}` });
        saved.dataset.testid = "saved-in-folder";
        row.append(saved);
      } else if (f.url) {
        const a = Object.assign(document.createElement("a"), { className: "save", href: f.url, textContent: "Save", download: f.path.split("/").join("_") });
        a.dataset.testid = "save-file";
        row.append(a);
      }
    }
    files.append(row);
  }
  if (x.files.length > 8) files.append(Object.assign(document.createElement("li"), { className: "transfer-sub", textContent: `and ${x.files.length - 8} more` }));
  li.append(files);
  if (x.message) {
    const m = Object.assign(document.createElement("div"), { className: "transfer-msg", textContent: x.message });
    m.dataset.testid = "transfer-message";
    li.append(m);
  }
  return li;
}

function act(fn) {
  try { fn(); showFilesError(null); } catch (err) { showFilesError(err.message); }
  transfersChanged();
}

async function sendFiles(list) {
  if (!client) return;
  ferry.sendStartedAt = Date.now();
  const items = list.filter(({ file }) => file);
  if (!items.length) return;
  const target = $("recipient").value;
  const placeholder = { id: null, dir: "out", peer: target || null, total: items.reduce((a, { file }) => a + file.size, 0), done: 0, rate: 0, eta: null,
    files: items.map(({ file, path }) => ({ path: path || file.name, size: file.size, verified: false })), state: "hashing", message: "Computing BLAKE3 hashes…" };
  const key = `pending-${Math.random()}`;
  transfers.set(key, placeholder);
  transfersChanged();
  try {
    const ids = await client.offerFiles(items.map((i) => i.file), items.map((i) => i.path || i.file.name), target ? [target] : []);
    transfers.delete(key);
    const targets = target ? [target] : [...peers].filter(([, p]) => p.state === "connected").map(([id]) => id);
    ids.forEach((id, i) => transfers.set(id, { ...placeholder, id, peer: targets[i] ?? null, state: "offered", message: "Waiting for them to accept…" }));
    showFilesError(null);
  } catch (err) {
    transfers.delete(key);
    showFilesError(err.message.includes("no peer") ? "Nobody is connected yet. Share the link, then send the files." : `Could not send: ${err.message}`);
  }
  transfersChanged();
}

// Walks dropped folders; files keep their path relative to what was dropped.
async function collectDropped(dataTransfer) {
  const out = [];
  const walk = async (entry, prefix) => {
    if (entry.isFile) {
      const file = await new Promise((res, rej) => entry.file(res, rej));
      out.push({ file, path: prefix + entry.name });
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((res, rej) => reader.readEntries(res, rej));
        if (!batch.length) break;
        for (const e of batch) await walk(e, `${prefix}${entry.name}/`);
      }
    }
  };
  const entries = [...dataTransfer.items].map((i) => i.webkitGetAsEntry?.()).filter(Boolean);
  if (entries.length) {
    for (const e of entries) await walk(e, "");
  } else {
    for (const file of dataTransfer.files) out.push({ file, path: file.name });
  }
  return out;
}

function setUpFiles() {
  $("pick-files").addEventListener("change", (e) => {
    sendFiles([...e.target.files].map((file) => ({ file, path: file.name })));
    e.target.value = "";
  });
  $("pick-folder").addEventListener("change", (e) => {
    sendFiles([...e.target.files].map((file) => ({ file, path: file.webkitRelativePath || file.name })));
    e.target.value = "";
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", async (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    sendFiles(await collectDropped(e.dataTransfer));
  });
}

function serverErrorText(e) {
  switch (e.code) {
    case "room_full": return "This room is full (8 people at most). Ask someone to leave, or create a new room.";
    case "unsupported_version": return "This page is out of date for the server. Reload the page.";
    case "invalid_room": return "That room code is not valid. Codes use letters, digits and dashes.";
    case "too_many_rooms": return "The server is at its limit of rooms right now. Try again in a few minutes.";
    case "rate_limited": return "Too many messages too fast; some were dropped. Slow down a little.";
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
  $("join-error").hidden = true;
  const password = $("room-password").value;
  $("room-locked").hidden = !password;
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
    // After a reload, ask for the same peer id so that transfers resume.
    const previous = JSON.parse(sessionStorage.getItem("ferry.identity") || "null");
    const rejoinAs = previous && previous.room === code ? previous.peerId : undefined;
    const resumeToken = rejoinAs ? previous.resumeToken : undefined;
    // Developers can tune the transfer engine (chunkSize, window) from the
    // console: localStorage.setItem("ferry.tuning", '{"window":128}').
    let tuning = {};
    try { tuning = JSON.parse(localStorage.getItem("ferry.tuning") || "{}") || {}; } catch { /* ignore */ }
    const sinkFactory = () => (sinkKind === "stream" ? new StreamSink("sw.js") : null);
    client = new FerryClient({ ...tuning, serverUrl: signalingUrl(), room: code, name: displayName(), iceServers: [], rejoinAs, resumeToken, password, sinkFactory }, onEvent);
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
  calls?.teardown();
  calls?.render();
  pendingEvents = [];
  pendingStart = null;
  transfers.clear();
  transfersChanged();
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

// Received files stay in the origin private file system while the page that
// received them offers them for saving. On a later visit, remove those that
// no download is resuming and that nobody touched for a day.
async function cleanStorage() {
  const DAY = 24 * 3600 * 1000;
  let root;
  try {
    root = await (await navigator.storage.getDirectory()).getDirectoryHandle("ferry");
  } catch {
    return;
  }
  const keep = new Set(Object.keys(localStorage).filter((k) => k.startsWith("ferry.partial.")).map((k) => k.slice("ferry.partial.".length)));
  for await (const [name, dir] of root.entries()) {
    if (keep.has(name) || dir.kind !== "directory") continue;
    let newest = 0;
    for await (const [, f] of dir.entries()) {
      if (f.kind === "file") newest = Math.max(newest, (await f.getFile()).lastModified);
    }
    if (Date.now() - newest > DAY) await root.removeEntry(name, { recursive: true }).catch(() => {});
  }
}

async function main() {
  await init();
  cleanStorage().catch((err) => console.warn("storage clean-up:", err));
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
  setUpFiles();
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
  // Not `leave`: the server keeps this tab's seat for a grace period, so a
  // reload comes back as the same peer and nobody sees it leave.
  window.addEventListener("pagehide", () => client?.suspend());
  if (!joinFromHash()) warmUp();
}

main().catch((err) => {
  console.error(err);
  showBanner(`Ferry could not start: ${err.message}`, true);
});

// The call panel works before anyone is connected (a call started alone
// rings whoever joins later).
callsView();
