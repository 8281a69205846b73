//! The server API's request parser on arbitrary method, path, query and body: it answers a call
//! or a refusal with a status the API documents and a one-line reason, and never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shequ_chat::api::parse;

fuzz_target!(|input: (&str, &str, &str, &[u8], u64)| {
    let (method, path, query, body, now_secs) = input;
    if let Err(refused) = parse(method, path, query, body, 2000, now_secs) {
        assert!([400, 404, 405].contains(&refused.status), "{refused:?}");
        assert!(!refused.message.is_empty() && !refused.message.contains('\n'));
    }
});
