// Hashes a range of a file's chunks off the main thread, with the same Rust
// code the page uses. Several of these run at once, one per core.
// Message: {seq, file, chunkSize, first, count}; answer: {seq, ok, out | error}.
import init, { chunkDigests } from "./pkg/ferry_wasm.js";

const ready = init();

self.onmessage = async (e) => {
  const { seq, file, chunkSize, first, count } = e.data;
  try {
    await ready;
    const out = await chunkDigests(file, chunkSize, first, count);
    self.postMessage({ seq, ok: true, out }, [out.buffer]);
  } catch (err) {
    self.postMessage({ seq, ok: false, error: String((err && err.message) || err) });
  }
};
