//! Feeds arbitrary server frames and data-channel text into a joined
//! session: the engine must never panic, whatever a server or peer sends.
#![no_main]

use ferry_core::{Config, PeerEvent, Session};
use ferry_protocol::{PeerId, RoomCode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let room = RoomCode::new("fuzz").expect("valid room");
    let mut s = Session::new(Config::new(room, "f"), 0);
    s.server_opened(1);
    s.server_text(
        r#"{"type":"joined","version":1,"room":"fuzz","peer_id":"me","peers":[{"id":"a","name":""}],"heartbeat_ms":5000}"#,
        2,
    );
    let peer = PeerId::new("a").expect("valid id");
    for (i, chunk) in data.split(|b| *b == 0).enumerate() {
        let now = 3 + i as u64 * 7;
        let text = String::from_utf8_lossy(chunk);
        if i % 2 == 0 {
            s.server_text(&text, now);
        } else {
            s.peer_event(&peer, PeerEvent::Text(text.into_owned()), now);
        }
        s.handle_timeout(now);
        while s.poll_output().is_some() {}
    }
});
