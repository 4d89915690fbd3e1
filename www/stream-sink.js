// The download-stream sink: used where the browser has no OPFS sync access
// handles. It speaks the OPFS worker's message protocol (see
// sink-worker.js), so the engine drives it the same way, but each file
// becomes a download streamed through the service worker in sw.js. Chunks
// go out strictly in order (a chunk that arrives early waits for the gap
// before it, at most one request window); each write is acknowledged only
// when the download stream has taken it. A download cannot be resumed after
// a reload, so this sink says `resumable = false`.

const hex = (bytes) => [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");

export class StreamSink {
  constructor(swUrl = "sw.js") {
    this.onmessage = null;
    this.resumable = false;
    this.files = new Map(); // path -> stream state
    this.worker = navigator.serviceWorker
      .register(swUrl)
      .then(() => navigator.serviceWorker.ready)
      .then((r) => r.active);
    // Messages to the service worker keep it alive during long downloads.
    this.keepAlive = setInterval(() => {
      if (this.files.size) this.worker.then((w) => w.postMessage({ type: "ping" }), () => {});
    }, 10_000);
  }

  postMessage(msg) {
    this.handle(msg).then(
      (file) => this.reply({ seq: msg.seq, ok: true, file }),
      (err) => this.reply({ seq: msg.seq, ok: false, error: `${err.name}: ${err.message}` }),
    );
  }

  terminate() {
    clearInterval(this.keepAlive);
    for (const path of [...this.files.keys()]) this.abort(path, "The page closed the download.");
  }

  reply(data) {
    if (this.onmessage) this.onmessage({ data });
  }

  async handle(msg) {
    switch (msg.op) {
      case "write":
        return this.write(msg);
      case "close":
      case "file": {
        const f = this.files.get(msg.path);
        if (!f) throw new Error("no such download");
        await f.ready;
        if (f.held.size || f.acks.size) throw new Error("the download is not complete");
        f.port.postMessage({ end: true });
        this.forget(msg.path);
        return undefined; // The file went to the browser's downloads.
      }
      case "delete":
        for (const path of [...this.files.keys()]) {
          if (path === msg.dir || path.startsWith(msg.dir + "/")) this.abort(path, "The transfer was cancelled.");
        }
        return undefined;
      default:
        throw new Error(`unknown op ${msg.op}`);
    }
  }

  stream(path, name, size) {
    let f = this.files.get(path);
    if (f) return f;
    f = { next: 0, held: new Map(), acks: new Map(), seq: 0, port: null, frame: null };
    f.ready = this.open(f, name, size);
    this.files.set(path, f);
    return f;
  }

  async open(f, name, size) {
    const sw = await this.worker;
    const token = hex(crypto.getRandomValues(new Uint8Array(16)));
    const channel = new MessageChannel();
    f.port = channel.port1;
    await new Promise((registered) => {
      f.port.onmessage = ({ data }) => {
        if (data.registered) registered();
        else if (data.ack) {
          const w = f.acks.get(data.ack);
          f.acks.delete(data.ack);
          if (w) w.resolve();
        } else if (data.cancelled) {
          this.fail(f, new Error("the download was cancelled in the browser"));
        }
      };
      sw.postMessage({ type: "ferry-stream", token, name, size }, [channel.port2]);
    });
    f.frame = Object.assign(document.createElement("iframe"), { hidden: true, src: `ferry-stream/${token}/${encodeURIComponent(name)}` });
    document.body.append(f.frame);
  }

  async write(msg) {
    const f = this.stream(msg.path, msg.name, msg.size);
    await f.ready;
    if (msg.offset < f.next) return undefined; // Already in the stream.
    return new Promise((resolve, reject) => {
      f.held.set(msg.offset, { data: msg.data, resolve, reject });
      while (f.held.has(f.next)) {
        const w = f.held.get(f.next);
        f.held.delete(f.next);
        f.next += w.data.byteLength;
        f.seq += 1;
        f.acks.set(f.seq, w);
        f.port.postMessage({ chunk: w.data, seq: f.seq }, [w.data]);
      }
    });
  }

  fail(f, err) {
    for (const w of [...f.held.values(), ...f.acks.values()]) w.reject(err);
    f.held.clear();
    f.acks.clear();
  }

  abort(path, reason) {
    const f = this.files.get(path);
    if (!f) return;
    if (f.port) f.port.postMessage({ abort: reason });
    this.fail(f, new Error(reason));
    this.forget(path);
  }

  forget(path) {
    const f = this.files.get(path);
    this.files.delete(path);
    // The frame has handed the response to the download manager by now;
    // removing it later keeps the page tidy.
    if (f && f.frame) setTimeout(() => f.frame.remove(), 60_000);
  }
}
