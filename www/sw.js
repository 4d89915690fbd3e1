// Service worker for browsers without OPFS sync access handles (for example
// private windows that have no origin private file system). It turns a
// stream of verified chunks from the page into an ordinary download:
// the page registers a stream here with a MessagePort, then navigates a
// hidden frame to ferry-stream/<token>/<name>, and this worker answers that
// request with a ReadableStream fed from the port. Chunks are acknowledged
// only while the stream's queue has room, so memory stays bounded whatever
// the file size; the page's transfer engine waits for those
// acknowledgements before it asks the sender for more.
//
// Port messages from the page: {chunk: ArrayBuffer, seq} | {end: true} |
// {abort: reason}. To the page: {registered} | {ack: seq} | {cancelled}.

const streams = new Map(); // token -> {port, name, size}

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (e) => e.waitUntil(self.clients.claim()));

self.addEventListener("message", (e) => {
  const m = e.data;
  if (!m || m.type !== "ferry-stream" || !e.ports[0] || !/^[0-9a-f]{32}$/.test(m.token)) return;
  const port = e.ports[0];
  streams.set(m.token, { port, name: String(m.name || "download"), size: Number(m.size) });
  port.postMessage({ registered: true });
});

self.addEventListener("fetch", (e) => {
  const m = new URL(e.request.url).pathname.match(/\/ferry-stream\/([0-9a-f]{32})\//);
  if (!m) return;
  const s = streams.get(m[1]);
  streams.delete(m[1]);
  if (!s) {
    e.respondWith(new Response("This download is no longer available.", { status: 404 }));
    return;
  }
  let waiting = [];
  const stream = new ReadableStream(
    {
      start(controller) {
        s.port.onmessage = ({ data }) => {
          if (data.chunk) {
            if (data.chunk.byteLength > 0) controller.enqueue(new Uint8Array(data.chunk));
            if (controller.desiredSize > 0) s.port.postMessage({ ack: data.seq });
            else waiting.push(data.seq);
          } else if (data.end) {
            controller.close();
            s.port.close();
          } else if (data.abort) {
            controller.error(new Error(data.abort));
            s.port.close();
          }
        };
      },
      pull() {
        const acks = waiting;
        waiting = [];
        for (const seq of acks) s.port.postMessage({ ack: seq });
      },
      cancel() {
        s.port.postMessage({ cancelled: true });
      },
    },
    new ByteLengthQueuingStrategy({ highWaterMark: 4 << 20 }),
  );
  const headers = {
    "Content-Type": "application/octet-stream",
    "Content-Disposition": `attachment; filename*=UTF-8''${encodeURIComponent(s.name)}`,
    "X-Content-Type-Options": "nosniff",
  };
  if (Number.isFinite(s.size) && s.size >= 0) headers["Content-Length"] = String(s.size);
  e.respondWith(new Response(stream, { headers }));
});
