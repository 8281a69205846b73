//! The request and auth path on arbitrary bytes: the HTTP head parser, query and header parsing,
//! the upgrade checks, and token verification (HS256, with the token taken from the request).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use shequ_chat::auth::Verifier;
use shequ_chat::config::{AuthConfig, Secret};
use shequ_chat::http::read_head;

fn verifier() -> &'static Verifier {
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let config = AuthConfig {
            secret: Some(Secret::new("fuzzing-secret-0123456789")),
            ..AuthConfig::default()
        };
        Verifier::new(&config).expect("verifier")
    })
}

fuzz_target!(|bytes: &[u8]| {
    let mut reader = futures_lite::io::Cursor::new(bytes.to_vec());
    let Ok((request, _rest)) = smol::block_on(read_head(&mut reader)) else {
        return;
    };
    let _ = request.websocket_key();
    let _ = request.header("origin");
    let _ = request.query_param("since").map(|s| s.parse::<u64>());
    for token in [request.query_param("token"), request.bearer_token().map(str::to_string)]
        .into_iter()
        .flatten()
    {
        let _ = verifier().verify(&token, 1_764_200_000);
    }
});
