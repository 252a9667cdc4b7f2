//! Any WebSocket text frame: `Message::from_wire` returns, never panics. Whatever decodes
//! re-encodes to a frame that decodes to the same message and encodes to the same bytes
//! (parse → encode → parse is the identity after the first parse), and its content survives
//! `sorted_json` (the form the store keeps) unchanged.
#![no_main]

use edgehub::{Message, sorted_json};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = Message::from_wire(data) else {
        return;
    };
    let _ = msg.resource();
    let _ = msg.is_reserved_operation();
    let wire = msg.to_wire();
    let back = Message::from_wire(wire.as_bytes()).expect("an encoded message decodes");
    assert_eq!(back, msg, "decode(encode(m)) != m for {wire}");
    assert_eq!(back.to_wire(), wire, "encoding is not stable");
    let stored = sorted_json(&msg.content);
    let content: serde_json::Value = serde_json::from_str(&stored).expect("sorted_json is JSON");
    assert_eq!(
        content, msg.content,
        "sorted_json changed the content: {stored}"
    );
});
