//! Every decoder that reads bytes from the network: client and server
//! signaling frames and data-channel peer messages. None may panic, and
//! whatever decodes must re-encode to something that decodes the same.
#![no_main]

use ferry_protocol::{ClientMessage, PeerMessage, ServerMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(m) = ClientMessage::decode(text) {
        assert_eq!(ClientMessage::decode(&m.encode()).ok(), Some(m));
    }
    if let Ok(m) = ServerMessage::decode(text) {
        assert_eq!(ServerMessage::decode(&m.encode()).ok(), Some(m));
    }
    if let Ok(m) = PeerMessage::decode(text) {
        assert_eq!(PeerMessage::decode(&m.encode()).ok(), Some(m));
    }
});
