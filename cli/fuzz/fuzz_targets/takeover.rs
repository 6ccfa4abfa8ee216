//! The takeover socket's messages (FORMAT.md, "Takeover protocol") as the
//! successor, running as root, reads them from the daemon it replaces,
//! which is confined and may be compromised: the same framing (a 4-byte
//! length, then JSON), envelope and version check, and the decoding of the
//! handed state's held inodes and Index paths. Nothing panics; a length
//! over the limit is refused before anything is allocated; what decodes
//! encodes to JSON that decodes again to the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexus_cli::nexus::takeover_wire::{Envelope, Message, WireHeld, wire};

fuzz_target!(|data: &[u8]| {
    // The successor reads an offer, then the state: messages one after
    // another until one fails, as it stops at the first.
    let mut rest = data;
    while let Some((header, after)) = rest.split_first_chunk::<4>() {
        let Ok(len) = wire::body_len(*header) else {
            assert!(u32::from_be_bytes(*header) > wire::MAX_MESSAGE);
            return;
        };
        let Some((body, after)) = after.split_at_checked(len) else {
            return; // The stream ends within the body.
        };
        rest = after;
        let Ok(envelope) = wire::decode::<Envelope>(body) else {
            return;
        };
        let json = serde_json::to_vec(&envelope).expect("a decoded message encodes");
        let again: Envelope = wire::decode(&json).expect("an encoded message decodes");
        assert_eq!(serde_json::to_vec(&again).unwrap(), json);
        let Ok(message) = envelope.open() else {
            return;
        };
        if let Message::State(state) = message {
            for wire_held in &state.held {
                if let Ok(held) = wire_held.held() {
                    assert_eq!(WireHeld::of(&held).held().unwrap(), held);
                }
            }
            for path in &state.index_paths {
                let _ = hex::decode(path);
            }
        }
    }
});
