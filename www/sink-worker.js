// Writes received chunks to the origin private file system (OPFS) with
// synchronous access handles, which only exist in workers. Writes land in
// place, so a partial file survives a reload and the transfer resumes.
// Messages: {seq, op: "write", path, size, offset, data} (data: one or more
// consecutive chunks) | {seq, op: "close", path}
// | {seq, op: "file", path} (closes it, answers with the File) | {seq, op:
// "delete", dir} (a folder or a single file) | {seq, op: "probe"} (fails
// where OPFS sync access handles do not work); every message is answered
// {seq, ok, error?, file?, data?} (data: a written buffer, handed back for
// reuse).

const handles = new Map(); // path -> FileSystemSyncAccessHandle

async function fileHandle(path, create) {
  const parts = path.split("/");
  let dir = await navigator.storage.getDirectory();
  for (const p of parts.slice(0, -1)) dir = await dir.getDirectoryHandle(p, { create });
  return dir.getFileHandle(parts[parts.length - 1], { create });
}

async function open(path) {
  let h = handles.get(path);
  if (!h) {
    const fh = await fileHandle(path, true);
    h = await fh.createSyncAccessHandle();
    handles.set(path, h);
  }
  return h;
}

async function handle(msg) {
  switch (msg.op) {
    case "write": {
      const h = await open(msg.path);
      const data = new Uint8Array(msg.data);
      // The file gets its final size at the first write rather than growing
      // write by write (a little cheaper, and a file that does not fit the
      // storage quota should fail here rather than near its end).
      if (msg.size > h.getSize()) h.truncate(msg.size);
      let done = 0;
      while (done < data.length) {
        done += h.write(data.subarray(done), { at: msg.offset + done });
      }
      if (data.length === 0 && h.getSize() !== 0) h.truncate(0);
      return;
    }
    case "close": {
      const h = handles.get(msg.path);
      if (h) {
        h.flush();
        h.close();
        handles.delete(msg.path);
      }
      return;
    }
    case "file": {
      const h = handles.get(msg.path);
      if (h) {
        h.flush();
        h.close();
        handles.delete(msg.path);
      }
      return (await fileHandle(msg.path, false)).getFile();
    }
    case "delete": {
      for (const [path, h] of handles) {
        if (path === msg.dir || path.startsWith(msg.dir + "/")) {
          h.close();
          handles.delete(path);
        }
      }
      const root = await navigator.storage.getDirectory();
      const parts = msg.dir.split("/");
      let dir = root;
      for (const p of parts.slice(0, -1)) dir = await dir.getDirectoryHandle(p, { create: true });
      try {
        await dir.removeEntry(parts[parts.length - 1], { recursive: true });
      } catch (e) {
        if (e.name !== "NotFoundError") throw e;
      }
      return;
    }
    case "probe": {
      // Can this browser write here? (No OPFS in some private windows.)
      const root = await navigator.storage.getDirectory();
      const fh = await root.getFileHandle(".ferry-probe", { create: true });
      (await fh.createSyncAccessHandle()).close();
      await root.removeEntry(".ferry-probe");
      return;
    }
    default:
      throw new Error(`unknown op ${msg.op}`);
  }
}

// One message at a time, in order: a write never overtakes a close.
let chain = Promise.resolve();
self.onmessage = (e) => {
  const msg = e.data;
  chain = chain.then(() => handle(msg)).then(
    (file) => {
      // A written buffer goes back to the page, which fills it again.
      if (msg.op === "write" && msg.data.byteLength) self.postMessage({ seq: msg.seq, ok: true, data: msg.data }, [msg.data]);
      else self.postMessage({ seq: msg.seq, ok: true, file });
    },
    (err) => self.postMessage({ seq: msg.seq, ok: false, error: `${err.name}: ${err.message}` }),
  );
};
