//! `GET /`: the chat page, a small reference client embedded in the binary.
//!
//! The page is one HTML document with its CSS and JavaScript inline, assembled once from the
//! files in `src/page/`. Its Content-Security-Policy allows exactly that inline style and script
//! (by hash), connections to this origin (the WebSocket), and nothing else.

use ct_codecs::{Base64, Encoder as _};

const HTML: &str = include_str!("page/chat.html");
const STYLE: &str = include_str!("page/chat.css");
const SCRIPT: &str = include_str!("page/chat.js");

/// The page and the `Content-Security-Policy` header value that goes with it.
pub struct Page {
    pub html: String,
    pub csp: String,
}

impl Page {
    pub fn new() -> Page {
        let html = HTML.replace("/*STYLE*/", STYLE).replace("/*SCRIPT*/", SCRIPT);
        let csp = format!(
            "default-src 'none'; script-src '{}'; style-src '{}'; connect-src 'self'; \
             img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            hash(SCRIPT),
            hash(STYLE)
        );
        Page { html, csp }
    }

    /// The HTTP response for `GET /`.
    pub fn response(&self) -> String {
        let headers = format!(
            "Content-Security-Policy: {}\r\nX-Content-Type-Options: nosniff\r\n\
             Referrer-Policy: no-referrer\r\n",
            self.csp
        );
        crate::http::response(200, "text/html; charset=utf-8", &headers, &self.html)
    }
}

impl Default for Page {
    fn default() -> Page {
        Page::new()
    }
}

/// A CSP source expression for inline content: `sha256-<base64>`.
fn hash(content: &str) -> String {
    let digest = hmac_sha256::Hash::hash(content.as_bytes());
    format!("sha256-{}", Base64::encode_to_string(digest).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_is_assembled_and_the_policy_covers_exactly_its_inline_parts() {
        let page = Page::new();
        assert!(!page.html.contains("/*STYLE*/") && !page.html.contains("/*SCRIPT*/"));
        assert!(page.html.contains(SCRIPT) && page.html.contains(STYLE));
        assert!(page.csp.contains(&hash(SCRIPT)) && page.csp.contains(&hash(STYLE)));
        assert!(!page.csp.contains("unsafe-inline"));
        // A known vector: SHA-256 of the empty string.
        assert_eq!(hash(""), "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
        // A few KB, not more: the channel list took it past 16 KiB.
        assert!(page.html.len() < 24 * 1024, "a few KB, not more");
    }
}
