// PeerServer as it ships, for `cargo xtask bench signaling`. Only its limit
// on concurrent connections is raised, so that it can hold the benchmark's
// connections; everything else is the package's default.
const { PeerServer } = require("peer");

const port = Number(process.argv[2] || 9000);
PeerServer({ port, host: "127.0.0.1", path: "/", concurrent_limit: 1_000_000 });
