//! The transfer frame and manifest decoders, and a receiving engine fed
//! arbitrary frames: nothing may panic, and nothing unverified is written.
#![no_main]

use ferry_core::transfer::frame::Frame;
use ferry_core::transfer::{TransferConfig, TransferEngine, TransferOutput, manifest};
use ferry_protocol::PeerId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = Frame::decode(data) {
        assert_eq!(Frame::decode(&f.encode()).ok(), Some(f));
    }
    let _ = manifest::decode(data);
    let mut engine = TransferEngine::new(TransferConfig::default());
    let peer = PeerId::new("p").expect("valid id");
    for (i, part) in data.split(|b| *b == 0xFE).enumerate() {
        let _ = engine.handle_frame(&peer, part, i as u64);
        engine.handle_timeout(i as u64 * 1000);
        while let Some(o) = engine.poll_output() {
            assert!(!matches!(o, TransferOutput::WriteChunk { .. }), "wrote unverified data");
        }
    }
});
