// Calls in the page: local devices, media tracks on the peer connections,
// the video grid and its stats overlay. Who is in the call, and to whom our
// media goes, is the engine's decision (wasm); it tells us with `call`
// events, and this module adds or removes tracks and asks it to renegotiate.

const $ = (id) => document.getElementById(id);

// Upload per participant, by the number of others in the call: a mesh of
// four sends three copies, so each gets less.
const BITRATE_CAP = { 1: 2_500_000, 2: 1_200_000, 3: 800_000 };
// How long the polite side of a pair waits for the other side's offer
// before it adds transceivers of its own (see `sendTo`).
const POLITE_WAIT_MS = 400;

export class Calls {
  constructor({ client, peerName, say }) {
    this.client = client; // () => FerryClient
    this.peerName = peerName;
    this.say = say; // system message in the chat
    this.call = null; // current call id
    this.ringing = null; // {call, from}
    this.local = null; // MediaStream from getUserMedia
    this.screen = null; // MediaStreamTrack while sharing
    this.micOn = true;
    this.camOn = true;
    this.senders = new Map(); // peer -> {audio, video}
    this.tiles = new Map(); // peer -> {el, video, stats}
    this.wanted = new Set(); // peers we are to send to (sendTo may wait)
    this.watched = new WeakSet(); // peer connections with a track listener
    this.remote = new Map(); // peer -> MediaStream of the tracks it sends us
    this.statsTimer = null;
    this.lastStats = new Map();
    this.notice = "";
    // Test hooks: the page's real code, with a different source of "screen".
    window.__ferry.calls = this;
    this.bind();
    this.render();
  }

  bind() {
    $("start-call").onclick = () => this.start();
    $("answer-call").onclick = () => this.answer();
    $("decline-call").onclick = () => { this.client().declineCall(); this.ringing = null; this.render(); };
    $("hang-up").onclick = () => this.hangUp();
    $("toggle-mic").onclick = () => this.setMic(!this.micOn);
    $("toggle-camera").onclick = () => this.setCamera(!this.camOn);
    $("toggle-screen").onclick = () => (this.screen ? this.stopScreen() : this.shareScreen());
    $("toggle-stats").onclick = () => this.toggleStats();
    $("mic-select").onchange = () => this.switchDevice("audio", $("mic-select").value);
    $("camera-select").onchange = () => this.switchDevice("video", $("camera-select").value);
  }

  // ---- Engine events -------------------------------------------------------

  onEvent(e) {
    switch (e.type) {
      case "incoming":
        this.ringing = { call: e.call, from: e.from };
        this.say(`${this.peerName(e.from)} is calling`);
        break;
      case "joined":
        this.call = e.call;
        this.ringing = null;
        this.addTile("self", "You");
        clearInterval(this.watchdog);
        this.watchdog = setInterval(() => this.ensureNegotiated(), 1500);
        break;
      case "send_media":
        this.addTile(e.peer, this.peerName(e.peer));
        this.sendTo(e.peer);
        break;
      case "stop_media":
        this.stopTo(e.peer);
        this.removeTile(e.peer);
        break;
      case "declined":
        this.say(`${this.peerName(e.peer)} ${e.reason === "busy" ? "is in another call" : e.reason === "full" ? "could not join: the call is full (4 people)" : "declined the call"}`);
        break;
      case "ended":
        if (this.ringing || this.call) this.say(`Call ended: ${e.reason}`);
        this.teardown();
        break;
    }
    this.render();
  }

  // A peer's connection is up: listen for its tracks (they may come before
  // the engine says it is a participant).
  watchPeer(peer) {
    const pc = this.client()?.peerConnection(peer);
    if (!pc || this.watched.has(pc)) return;
    this.watched.add(pc);
    pc.addEventListener("track", (ev) => this.remoteTrack(peer, ev));
    // Someone who arrives during our call is rung too.
    if (this.call && !this.senders.has(peer)) {
      try { this.client().inviteToCall(peer); } catch (e) { console.warn("invite:", e); }
    }
  }

  peerGone(peer) {
    this.wanted.delete(peer);
    this.senders.delete(peer);
    this.remote.delete(peer);
    this.removeTile(peer);
    this.render();
  }

  // ---- Local media ---------------------------------------------------------

  async openDevices() {
    const audio = $("mic-select").value ? { deviceId: { exact: $("mic-select").value } } : true;
    const video = { width: { ideal: 640 }, height: { ideal: 480 }, ...($("camera-select").value ? { deviceId: { exact: $("camera-select").value } } : {}) };
    this.notice = "";
    try {
      this.local = await navigator.mediaDevices.getUserMedia({ audio, video });
    } catch (e) {
      try {
        this.local = await navigator.mediaDevices.getUserMedia({ audio });
        this.notice = `No camera (${e.name === "NotAllowedError" ? "permission denied" : "none found"}): you are in the call with sound only.`;
      } catch (e2) {
        this.local = new MediaStream();
        this.notice = `No camera or microphone (${e2.name === "NotAllowedError" ? "permission denied" : "none found"}): you can see and hear the others, but they cannot see or hear you. Allow access in the browser's site settings and call again.`;
      }
    }
    this.micOn = this.local.getAudioTracks().length > 0;
    this.camOn = this.local.getVideoTracks().length > 0;
    await this.listDevices();
    const tile = this.tiles.get("self");
    if (tile) tile.video.srcObject = this.local;
  }

  async listDevices() {
    let devices = [];
    try { devices = await navigator.mediaDevices.enumerateDevices(); } catch { return; }
    for (const [kind, id] of [["audioinput", "mic-select"], ["videoinput", "camera-select"]]) {
      const sel = $(id);
      const current = sel.value;
      sel.replaceChildren(...devices.filter((d) => d.kind === kind).map((d, i) => {
        const o = document.createElement("option");
        o.value = d.deviceId;
        o.textContent = d.label || `${kind === "audioinput" ? "Microphone" : "Camera"} ${i + 1}`;
        return o;
      }));
      if (current) sel.value = current;
    }
  }

  async start() {
    await this.openDevices();
    try {
      this.client().startCall();
    } catch (e) {
      this.say(`Could not start a call: ${e.message || e}`);
      this.teardown();
    }
    this.render();
  }

  async answer() {
    await this.openDevices();
    try {
      this.client().answerCall();
    } catch (e) {
      this.say(`Could not answer: ${e.message || e}`);
      this.teardown();
    }
    this.render();
  }

  hangUp() {
    try { this.client().hangUp(); } catch { /* already over */ }
    this.teardown();
    this.render();
  }

  // A safety net: a track that some offer/answer round left out (a request
  // that crossed another negotiation) gets another round.
  ensureNegotiated() {
    for (const [peer, s] of this.senders) {
      const pc = this.client()?.peerConnection(peer);
      if (!pc || pc.signalingState !== "stable") continue;
      const left_out = [s.audio, s.video].some((sender) => {
        const t = sender && pc.getTransceivers().find((t) => t.sender === sender);
        return t && !t.stopped && t.currentDirection !== "sendrecv" && t.currentDirection !== "sendonly";
      });
      if (left_out) {
        console.warn(`renegotiating with ${peer}: a track was left out`);
        this.client().renegotiate(peer);
      }
    }
  }

  teardown() {
    clearInterval(this.watchdog);
    this.watchdog = null;
    for (const peer of [...this.senders.keys()]) this.stopTo(peer);
    this.wanted.clear();
    for (const t of this.local?.getTracks() || []) t.stop();
    this.screen?.stop();
    this.screen = null;
    this.local = null;
    this.call = null;
    this.ringing = null;
    for (const peer of [...this.tiles.keys()]) this.removeTile(peer);
    this.toggleStats(false);
  }

  videoTrack() {
    if (this.screen) return this.screen;
    return this.camOn ? this.local?.getVideoTracks()[0] || null : null;
  }

  // Adds our tracks to the connection with `peer`; the browser's
  // negotiationneeded then starts an offer/answer round. Transceivers of an
  // earlier call (or that the peer's offer created) are reused, so calling
  // again and again does not grow the session.
  //
  // Both sides of a pair start sending at about the same time, and if both
  // offered new transceivers at once, the polite side would roll its offer
  // back: Chromium then leaves the tracks those rolled-back transceivers
  // receive muted for good (frames are decoded, the tile stays black). So
  // the impolite side adds its transceivers at once (and receive-only ones
  // for kinds it does not send, so that its offer always has room for the
  // other side's media), while the polite side waits a moment for that
  // offer and puts its tracks on the transceivers it created, which only
  // changes their direction.
  sendTo(peer, waited = 0) {
    const pc = this.client()?.peerConnection(peer);
    if (!pc || !this.local || !this.call) return;
    this.watchPeer(peer);
    const s = this.senders.get(peer) || {};
    const used = new Set([...this.senders.values()].flatMap((x) => [x.audio, x.video]));
    const reusable = (kind) => pc.getTransceivers().find((t) => !t.stopped && !t.sender.track && !used.has(t.sender)
      && t.receiver.track?.kind === kind && (t.direction === "recvonly" || t.direction === "inactive"));
    const audio = this.local.getAudioTracks()[0];
    const video = this.videoTrack() || this.local.getVideoTracks()[0];
    const polite = this.client().isPolite(peer);
    if (waited === 0) this.wanted.add(peer);
    else if (!this.wanted.has(peer)) return; // stopped while waiting
    if (polite && waited < POLITE_WAIT_MS) {
      const missing = (audio && !s.audio && !reusable("audio")) || (video && !s.video && !reusable("video"));
      if (missing) {
        setTimeout(() => this.sendTo(peer, waited + 50), 50);
        return;
      }
    }
    const attach = (kind, track) => {
      const t = reusable(kind);
      if (t) {
        t.direction = "sendrecv";
        t.sender.replaceTrack(track).catch((e) => console.warn("replaceTrack:", e));
        t.sender.setStreams?.(this.local);
        return t.sender;
      }
      return pc.addTrack(track, this.local);
    };
    if (audio && !s.audio) s.audio = attach("audio", audio);
    if (video && !s.video) {
      s.video = attach("video", video);
      if (!this.videoTrack()) s.video.replaceTrack(null);
    }
    if (!polite) {
      for (const kind of ["audio", "video"]) {
        if (!pc.getTransceivers().some((t) => !t.stopped && t.receiver.track?.kind === kind)) {
          pc.addTransceiver(kind, { direction: "recvonly" });
        }
      }
    }
    this.senders.set(peer, s);
    this.capBitrates();
  }

  // Stops sending to `peer`: its transceivers stay, receive-only, for the
  // next call.
  stopTo(peer) {
    this.wanted.delete(peer);
    const pc = this.client()?.peerConnection(peer);
    const s = this.senders.get(peer);
    this.senders.delete(peer);
    if (!pc || !s) return;
    for (const sender of [s.audio, s.video]) {
      const t = sender && pc.getTransceivers().find((t) => t.sender === sender);
      if (!t || t.stopped) continue;
      sender.replaceTrack(null).catch(() => {});
      t.direction = "recvonly";
    }
    try { this.client().renegotiate(peer); } catch { /* the peer is gone */ }
    this.capBitrates();
  }

  // Caps each video sender so that a mesh fits a modest uplink. Encodings
  // exist once negotiation ran, so this retries briefly.
  capBitrates(attempt = 0) {
    const cap = BITRATE_CAP[Math.max(1, this.senders.size)] || BITRATE_CAP[3];
    let pending = false;
    for (const s of this.senders.values()) {
      if (!s.video) continue;
      const p = s.video.getParameters();
      if (!p.encodings || !p.encodings.length) { pending = true; continue; }
      if (p.encodings[0].maxBitrate === cap) continue;
      p.encodings[0].maxBitrate = cap;
      s.video.setParameters(p).catch((e) => console.warn("bitrate cap:", e));
    }
    if (pending && attempt < 20) setTimeout(() => this.capBitrates(attempt + 1), 250);
  }

  setMic(on) {
    for (const t of this.local?.getAudioTracks() || []) t.enabled = on;
    this.micOn = on && (this.local?.getAudioTracks().length || 0) > 0;
    this.render();
  }

  // Camera off sends no video at all (the sender's track is removed, which
  // needs no renegotiation); camera on puts it back.
  setCamera(on) {
    if (on && !this.local?.getVideoTracks().length) {
      this.notice = "There is no camera to turn on.";
      this.render();
      return;
    }
    this.camOn = on;
    this.replaceVideo(this.videoTrack());
    this.render();
  }

  replaceVideo(track) {
    for (const [peer, s] of this.senders) {
      if (s.video) {
        s.video.replaceTrack(track).catch((e) => console.warn("replaceTrack:", e));
      } else if (track) {
        // We joined without video: add it now.
        const pc = this.client()?.peerConnection(peer);
        if (pc) { s.video = pc.addTrack(track, this.local); this.client().renegotiate(peer); }
      }
    }
    const tile = this.tiles.get("self");
    if (tile) tile.video.srcObject = track ? new MediaStream([track]) : null;
  }

  async shareScreen() {
    const get = window.__ferry.getDisplayMedia || ((c) => navigator.mediaDevices.getDisplayMedia(c));
    let stream;
    try {
      stream = await get({ video: true, audio: false });
    } catch (e) {
      this.notice = e.name === "NotAllowedError" ? "Screen sharing was not allowed." : `Cannot share the screen: ${e.message || e}`;
      this.render();
      return;
    }
    this.screen = stream.getVideoTracks()[0];
    this.screen.addEventListener("ended", () => this.stopScreen());
    this.replaceVideo(this.screen);
    this.render();
  }

  stopScreen() {
    const track = this.screen;
    this.screen = null;
    track?.stop();
    this.replaceVideo(this.videoTrack());
    this.render();
  }

  async switchDevice(kind, deviceId) {
    if (!this.local) return;
    let fresh;
    try {
      const s = await navigator.mediaDevices.getUserMedia({ [kind]: { deviceId: { exact: deviceId } } });
      fresh = s.getTracks()[0];
    } catch (e) {
      this.notice = `Cannot use that device: ${e.message || e}`;
      this.render();
      return;
    }
    const old = kind === "audio" ? this.local.getAudioTracks()[0] : this.local.getVideoTracks()[0];
    if (old) { this.local.removeTrack(old); old.stop(); }
    this.local.addTrack(fresh);
    if (kind === "audio") {
      fresh.enabled = this.micOn;
      for (const s of this.senders.values()) s.audio?.replaceTrack(fresh);
    } else if (!this.screen) {
      this.replaceVideo(this.camOn ? fresh : null);
    }
  }

  // ---- Remote media and tiles ---------------------------------------------

  // Each peer's received tracks live in one stream per connection, kept
  // across calls: a track may arrive before the call it belongs to is
  // joined (a native peer that calls adds its tracks at once), and the tile
  // made later shows it.
  remoteTrack(peer, ev) {
    let stream = this.remote.get(peer);
    if (!stream) {
      stream = new MediaStream();
      this.remote.set(peer, stream);
    }
    if (!stream.getTracks().includes(ev.track)) stream.addTrack(ev.track);
    ev.track.addEventListener("ended", () => stream.removeTrack(ev.track));
    if (!this.call) return;
    const tile = this.addTile(peer, this.peerName(peer));
    if (tile.video.srcObject !== stream) tile.video.srcObject = stream;
  }

  addTile(peer, name) {
    let t = this.tiles.get(peer);
    if (t) return t;
    const el = document.createElement("figure");
    el.className = "tile";
    el.dataset.peerId = peer;
    el.dataset.testid = peer === "self" ? "tile-self" : "tile";
    const video = document.createElement("video");
    video.autoplay = true;
    video.playsInline = true;
    if (peer === "self") { video.muted = true; video.srcObject = this.local; }
    else if (this.remote.has(peer)) video.srcObject = this.remote.get(peer);
    const label = document.createElement("figcaption");
    label.textContent = name || "Guest";
    const stats = document.createElement("pre");
    stats.className = "tile-stats";
    stats.hidden = !this.statsTimer;
    el.append(video, label, stats);
    $("call-grid").append(el);
    t = { el, video, stats };
    this.tiles.set(peer, t);
    return t;
  }

  removeTile(peer) {
    const t = this.tiles.get(peer);
    if (!t) return;
    t.video.srcObject = null;
    t.el.remove();
    this.tiles.delete(peer);
  }

  // ---- Stats overlay -------------------------------------------------------

  toggleStats(on = !this.statsTimer) {
    clearInterval(this.statsTimer);
    this.statsTimer = on ? setInterval(() => this.updateStats(), 1000) : null;
    for (const t of this.tiles.values()) t.stats.hidden = !on;
    $("toggle-stats").setAttribute("aria-pressed", on ? "true" : "false");
    if (on) this.updateStats();
  }

  // Figures for one remote peer, from getStats: what a user and a test read.
  async peerStats(peer) {
    const pc = this.client()?.peerConnection(peer);
    if (!pc) return null;
    const report = await pc.getStats();
    const out = { framesDecoded: 0, audioPackets: 0, audioEnergy: 0, videoBytes: 0, width: 0, height: 0, fps: 0, lost: 0, received: 0, rtt: null, route: null };
    let pair = null;
    for (const s of report.values()) {
      if (s.type === "inbound-rtp" && s.kind === "video") {
        out.framesDecoded += s.framesDecoded || 0;
        out.videoBytes += s.bytesReceived || 0;
        out.width = s.frameWidth || out.width;
        out.height = s.frameHeight || out.height;
        out.fps = s.framesPerSecond || out.fps;
        out.lost += s.packetsLost || 0;
        out.received += s.packetsReceived || 0;
      } else if (s.type === "inbound-rtp" && s.kind === "audio") {
        out.audioPackets += s.packetsReceived || 0;
        out.audioEnergy += s.totalAudioEnergy || 0;
        out.lost += s.packetsLost || 0;
        out.received += s.packetsReceived || 0;
      } else if (s.type === "transport" && s.selectedCandidatePairId) {
        pair = report.get(s.selectedCandidatePairId);
      }
    }
    if (pair) {
      out.rtt = pair.currentRoundTripTime ?? null;
      out.route = report.get(pair.localCandidateId)?.candidateType || null;
    }
    return out;
  }

  async updateStats() {
    for (const [peer, tile] of this.tiles) {
      if (peer === "self") { tile.stats.textContent = this.screen ? "sharing the screen" : ""; continue; }
      const s = await this.peerStats(peer);
      if (!s) continue;
      const last = this.lastStats.get(peer);
      const kbps = last ? Math.round(((s.videoBytes - last.videoBytes) * 8) / 1000) : 0;
      this.lastStats.set(peer, s);
      const loss = s.received + s.lost ? ((100 * s.lost) / (s.received + s.lost)).toFixed(1) : "0.0";
      tile.stats.textContent = `${kbps} kbit/s · ${s.width}×${s.height} @ ${Math.round(s.fps)} fps\nRTT ${s.rtt == null ? "–" : Math.round(s.rtt * 1000) + " ms"} · loss ${loss}% · ${s.route || "?"}`;
      tile.stats.dataset.route = s.route || "";
    }
  }

  // ---- Rendering -----------------------------------------------------------

  render() {
    const inCall = !!this.call;
    $("call").dataset.state = inCall ? "active" : this.ringing ? "ringing" : "idle";
    $("start-call").hidden = inCall || !!this.ringing;
    $("incoming").hidden = !this.ringing;
    if (this.ringing) $("incoming-text").textContent = `${this.peerName(this.ringing.from)} is calling…`;
    $("call-controls").hidden = !inCall;
    $("call-grid").hidden = !inCall;
    const mic = $("toggle-mic");
    mic.textContent = this.micOn ? "Mute" : "Unmute";
    mic.setAttribute("aria-pressed", this.micOn ? "false" : "true");
    const cam = $("toggle-camera");
    cam.textContent = this.camOn ? "Camera off" : "Camera on";
    cam.setAttribute("aria-pressed", this.camOn ? "false" : "true");
    const scr = $("toggle-screen");
    scr.textContent = this.screen ? "Stop sharing" : "Share screen";
    scr.setAttribute("aria-pressed", this.screen ? "true" : "false");
    $("call-notice").textContent = this.notice;
    $("call-notice").hidden = !this.notice;
  }
}
