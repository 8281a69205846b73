//! The client message parser and validator on arbitrary text: it answers Ok or a typed error,
//! never panics, and an accepted chat message always satisfies the content rules.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shequ_chat::protocol::{ClientMessage, parse_client, validate_content};

fuzz_target!(|text: &str| {
    if let Ok(ClientMessage::Chat { content, .. }) = parse_client(text, 2000) {
        assert!(validate_content(&content, 2000).is_ok());
        assert!(!content.trim().is_empty());
        assert!(content.chars().count() <= 2000);
    }
});
