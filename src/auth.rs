//! Token checking: who a JWT says the client is, and whether to believe it.
//!
//! jwt-simple checks the signature and the algorithm (so `alg: none` and an HS256 token signed
//! with an ES256 public key are refused). The claims are then checked here, for every token, with
//! the configured leeway: jwt-simple accepts a token without `exp`, and it cannot read a numeric
//! `sub`, which our sites' backends commonly issue.

use std::collections::HashSet;

use jwt_simple::JWTError;
use jwt_simple::prelude::*;
use serde_json::{Map, Value};

use crate::channels::claimed_patterns;
use crate::config::{Algorithm, AuthConfig, ConfigError};
use crate::hub::Identity;

/// Longest token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// Why a token was refused (answered and counted as `http::Refusal::Token`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Invalid(&'static str),
    Expired,
}

impl AuthError {
    /// One line for the HTTP response or the `error` frame.
    pub fn message(self) -> &'static str {
        match self {
            AuthError::Missing => "missing token",
            AuthError::Invalid(why) => why,
            AuthError::Expired => "token expired",
        }
    }
}

enum Key {
    HS256(HS256Key),
    HS384(HS384Key),
    HS512(HS512Key),
    ES256(ES256PublicKey),
    EdDSA(Ed25519PublicKey),
}

/// Checks tokens against the configured key and claims.
pub struct Verifier {
    key: Key,
    leeway_secs: u64,
    issuer: Option<String>,
    audience: Option<String>,
    user_id_claim: String,
    username_claim: String,
    /// The claim that lists a user's channels, when the config has a `channels` section.
    channels_claim: Option<String>,
}

impl Verifier {
    pub fn new(config: &AuthConfig) -> Result<Verifier, ConfigError> {
        let secret =
            || {
                config.secret.as_ref().map(|s| s.expose().as_bytes()).ok_or_else(|| {
                    ConfigError(format!("auth: {:?} needs a secret", config.algorithm))
                })
            };
        let pem = || -> Result<String, ConfigError> {
            let path = config.public_key_file.as_ref().ok_or_else(|| {
                ConfigError(format!("auth: {:?} needs auth.public_key_file", config.algorithm))
            })?;
            std::fs::read_to_string(path).map_err(|e| {
                ConfigError(format!("auth.public_key_file: cannot read {}: {e}", path.display()))
            })
        };
        let bad_pem = |e: jwt_simple::Error| {
            ConfigError(format!("auth.public_key_file: not a {:?} PEM key: {e}", config.algorithm))
        };
        let key = match config.algorithm {
            Algorithm::HS256 => Key::HS256(HS256Key::from_bytes(secret()?)),
            Algorithm::HS384 => Key::HS384(HS384Key::from_bytes(secret()?)),
            Algorithm::HS512 => Key::HS512(HS512Key::from_bytes(secret()?)),
            Algorithm::ES256 => Key::ES256(ES256PublicKey::from_pem(&pem()?).map_err(bad_pem)?),
            Algorithm::EdDSA => Key::EdDSA(Ed25519PublicKey::from_pem(&pem()?).map_err(bad_pem)?),
        };
        Ok(Verifier {
            key,
            leeway_secs: config.leeway_secs,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            user_id_claim: config.user_id_claim.clone(),
            username_claim: config.username_claim.clone(),
            channels_claim: None,
        })
    }

    /// Reads the channels a user may join from the claim named `claim` (`channels.claim`).
    pub fn with_channels_claim(self, claim: Option<&str>) -> Verifier {
        Verifier { channels_claim: claim.map(str::to_owned), ..self }
    }

    /// Verifies a token at the given time (Unix seconds) and extracts the identity.
    pub fn verify(&self, token: &str, now_unix_secs: u64) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Invalid("token too long"));
        }
        self.check_signature(token, now_unix_secs)?;
        let claims = decode_claims(token).ok_or(AuthError::Invalid("malformed token"))?;
        self.check_claims(&claims, now_unix_secs)?;
        let user_id = match claims.get(&self.user_id_claim) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) if n.is_u64() || n.is_i64() => n.to_string(),
            _ => return Err(AuthError::Invalid("token has no user id")),
        };
        let username = match claims.get(&self.username_claim) {
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            _ => user_id.clone(),
        };
        let expires_unix_secs = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        let channels = self
            .channels_claim
            .as_ref()
            .map_or_else(Vec::new, |claim| claimed_patterns(claims.get(claim)));
        Ok(Identity { user_id, username, expires_unix_secs, channels })
    }

    fn check_signature(&self, token: &str, now_unix_secs: u64) -> Result<(), AuthError> {
        let options = VerificationOptions {
            time_tolerance: Some(Duration::from_secs(self.leeway_secs)),
            artificial_time: Some(UnixTimeStamp::from_secs(now_unix_secs)),
            allowed_issuers: self.issuer.as_ref().map(|i| HashSet::from([i.clone()])),
            allowed_audiences: self.audience.as_ref().map(|a| HashSet::from([a.clone()])),
            max_token_length: Some(MAX_TOKEN_BYTES),
            ..VerificationOptions::default()
        };
        let options = Some(options);
        let result = match &self.key {
            Key::HS256(k) => k.verify_token::<NoCustomClaims>(token, options).map(drop),
            Key::HS384(k) => k.verify_token::<NoCustomClaims>(token, options).map(drop),
            Key::HS512(k) => k.verify_token::<NoCustomClaims>(token, options).map(drop),
            Key::ES256(k) => k.verify_token::<NoCustomClaims>(token, options).map(drop),
            Key::EdDSA(k) => k.verify_token::<NoCustomClaims>(token, options).map(drop),
        };
        let Err(error) = result else {
            return Ok(());
        };
        if let Some(e) = error.downcast_ref::<JWTError>() {
            return Err(match e {
                JWTError::TokenHasExpired => AuthError::Expired,
                JWTError::TokenNotValidYet => AuthError::Invalid("token not valid yet"),
                JWTError::ClockDrift => AuthError::Invalid("token issued in the future"),
                JWTError::RequiredIssuerMismatch | JWTError::RequiredIssuerMissing => {
                    AuthError::Invalid("wrong issuer")
                }
                JWTError::RequiredAudienceMismatch | JWTError::RequiredAudienceMissing => {
                    AuthError::Invalid("wrong audience")
                }
                JWTError::AlgorithmMismatch => AuthError::Invalid("wrong algorithm"),
                _ => AuthError::Invalid("invalid token"),
            });
        }
        // jwt-simple parses the header, checks the signature, and only then reads the claims into
        // its own types, which want `sub` as a string. A JSON error with a header that parses is
        // therefore a signed token whose claims did not fit those types: a numeric `sub`. Its
        // claims are checked in `check_claims` like every other token's. (The test
        // `numeric_sub_with_bad_signature_is_refused` keeps this reading honest.)
        if error.downcast_ref::<serde_json::Error>().is_some()
            && Token::decode_metadata(token).is_ok()
        {
            return Ok(());
        }
        Err(AuthError::Invalid("invalid token"))
    }

    fn check_claims(&self, claims: &Map<String, Value>, now: u64) -> Result<(), AuthError> {
        let time = |name: &str| -> Result<Option<u64>, AuthError> {
            match claims.get(name) {
                None => Ok(None),
                Some(v) => v
                    .as_u64()
                    .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
                    .map(Some)
                    .ok_or(AuthError::Invalid("malformed time claim")),
            }
        };
        let leeway = self.leeway_secs;
        let exp = time("exp")?.ok_or(AuthError::Invalid("token has no exp"))?;
        if now > exp.saturating_add(leeway) {
            return Err(AuthError::Expired);
        }
        if time("nbf")?.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
            return Err(AuthError::Invalid("token not valid yet"));
        }
        if time("iat")?.is_some_and(|iat| iat > now.saturating_add(leeway)) {
            return Err(AuthError::Invalid("token issued in the future"));
        }
        if let Some(issuer) = &self.issuer
            && claims.get("iss").and_then(Value::as_str) != Some(issuer.as_str())
        {
            return Err(AuthError::Invalid("wrong issuer"));
        }
        if let Some(audience) = &self.audience {
            let ok = match claims.get("aud") {
                Some(Value::String(a)) => a == audience,
                Some(Value::Array(all)) => all.iter().any(|a| a.as_str() == Some(audience)),
                _ => false,
            };
            if !ok {
                return Err(AuthError::Invalid("wrong audience"));
            }
        }
        Ok(())
    }
}

/// The token's claims as JSON; the signature must have been checked already.
fn decode_claims(token: &str) -> Option<Map<String, Value>> {
    let payload = token.split('.').nth(1)?;
    let bytes = Base64UrlSafeNoPadding::decode_to_vec(payload, None).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Signs a token with the configured HS secret, for `shequ-chat token`.
pub fn mint(
    config: &AuthConfig,
    sub: &str,
    name: Option<&str>,
    ttl_secs: u64,
) -> Result<String, ConfigError> {
    let secret = config
        .secret
        .as_ref()
        .ok_or_else(|| ConfigError("auth: no secret to sign with".into()))?
        .expose()
        .as_bytes();
    let mut custom = Map::new();
    if let Some(name) = name {
        custom.insert(config.username_claim.clone(), Value::String(name.into()));
    }
    let mut claims = Claims::with_custom_claims(custom, Duration::from_secs(ttl_secs));
    if config.user_id_claim == "sub" {
        claims = claims.with_subject(sub);
    } else {
        claims.custom.insert(config.user_id_claim.clone(), Value::String(sub.into()));
    }
    if let Some(issuer) = &config.issuer {
        claims = claims.with_issuer(issuer);
    }
    if let Some(audience) = &config.audience {
        claims = claims.with_audience(audience);
    }
    let signed = match config.algorithm {
        Algorithm::HS256 => HS256Key::from_bytes(secret).authenticate(claims),
        Algorithm::HS384 => HS384Key::from_bytes(secret).authenticate(claims),
        Algorithm::HS512 => HS512Key::from_bytes(secret).authenticate(claims),
        other => {
            return Err(ConfigError(format!(
                "auth: {other:?} tokens are signed by the site's backend; this command signs HS tokens"
            )));
        }
    };
    signed.map_err(|e| ConfigError(format!("cannot sign: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    const SECRET: &str = "unit-test-secret-0123456789";
    const NOW: u64 = 1_764_200_000;

    fn hs_config() -> AuthConfig {
        AuthConfig { secret: Some(Secret::new(SECRET)), leeway_secs: 5, ..AuthConfig::default() }
    }

    fn sign(claims: serde_json::Value) -> String {
        let header =
            Base64UrlSafeNoPadding::encode_to_string(r#"{"alg":"HS256","typ":"JWT"}"#).unwrap();
        let body = Base64UrlSafeNoPadding::encode_to_string(claims.to_string()).unwrap();
        let signed = format!("{header}.{body}");
        let tag = HS256Key::from_bytes(SECRET.as_bytes()).authentication_tag(signed.as_bytes());
        format!("{signed}.{}", Base64UrlSafeNoPadding::encode_to_string(tag).unwrap())
    }

    fn verify(token: &str) -> Result<Identity, AuthError> {
        Verifier::new(&hs_config()).unwrap().verify(token, NOW)
    }

    #[test]
    fn good_token_gives_identity() {
        let id = verify(&sign(serde_json::json!({"sub": "42", "name": "alice", "exp": NOW + 60})))
            .unwrap();
        assert_eq!(id.user_id, "42");
        assert_eq!(id.username, "alice");
        assert_eq!(id.expires_unix_secs, NOW + 60);
    }

    #[test]
    fn numeric_sub_becomes_a_string_and_name_falls_back() {
        let id = verify(&sign(serde_json::json!({"sub": 42, "exp": NOW + 60}))).unwrap();
        assert_eq!(id.user_id, "42");
        assert_eq!(id.username, "42");
    }

    #[test]
    fn numeric_sub_with_bad_signature_is_refused() {
        let token = sign(serde_json::json!({"sub": 42, "exp": NOW + 60}));
        let (rest, _) = token.rsplit_once('.').unwrap();
        let forged = format!("{rest}.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
        assert_eq!(verify(&forged), Err(AuthError::Invalid("invalid token")));
    }

    #[test]
    fn numeric_sub_still_checks_expiry() {
        let token = sign(serde_json::json!({"sub": 42, "exp": NOW - 60}));
        assert_eq!(verify(&token), Err(AuthError::Expired));
    }

    #[test]
    fn exp_is_required() {
        let token = sign(serde_json::json!({"sub": "42"}));
        assert_eq!(verify(&token), Err(AuthError::Invalid("token has no exp")));
    }

    #[test]
    fn leeway_is_the_configured_one_not_fifteen_minutes() {
        assert!(verify(&sign(serde_json::json!({"sub": "1", "exp": NOW - 4}))).is_ok());
        let token = sign(serde_json::json!({"sub": "1", "exp": NOW - 6}));
        assert_eq!(verify(&token), Err(AuthError::Expired));
        let token = sign(serde_json::json!({"sub": "1", "exp": NOW + 60, "nbf": NOW + 6}));
        assert_eq!(verify(&token), Err(AuthError::Invalid("token not valid yet")));
    }

    #[test]
    fn alg_none_is_refused() {
        let header = Base64UrlSafeNoPadding::encode_to_string(r#"{"alg":"none"}"#).unwrap();
        let body = Base64UrlSafeNoPadding::encode_to_string(
            serde_json::json!({"sub": "1", "exp": NOW + 60}).to_string(),
        )
        .unwrap();
        assert!(matches!(verify(&format!("{header}.{body}.")), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn issuer_and_audience_are_checked() {
        let config = AuthConfig {
            issuer: Some("site".into()),
            audience: Some("chat".into()),
            ..hs_config()
        };
        let v = Verifier::new(&config).unwrap();
        let ok = sign(serde_json::json!({"sub": 1, "exp": NOW + 60, "iss": "site", "aud": "chat"}));
        assert!(v.verify(&ok, NOW).is_ok());
        let bad_iss =
            sign(serde_json::json!({"sub": 1, "exp": NOW + 60, "iss": "x", "aud": "chat"}));
        assert_eq!(v.verify(&bad_iss, NOW), Err(AuthError::Invalid("wrong issuer")));
        let bad_aud =
            sign(serde_json::json!({"sub": "1", "exp": NOW + 60, "iss": "site", "aud": "x"}));
        assert_eq!(v.verify(&bad_aud, NOW), Err(AuthError::Invalid("wrong audience")));
    }

    #[test]
    fn the_channels_claim_is_read_only_when_configured() {
        let token = sign(serde_json::json!({"sub": "1", "exp": NOW + 60,
                                            "rooms": ["staff", "room:*", "bad name"]}));
        let plain = Verifier::new(&hs_config()).unwrap();
        assert!(plain.verify(&token, NOW).unwrap().channels.is_empty());
        let with = Verifier::new(&hs_config()).unwrap().with_channels_claim(Some("rooms"));
        let channels = with.verify(&token, NOW).unwrap().channels;
        let expected: Vec<_> = ["staff", "room:*"]
            .iter()
            .map(|p| crate::channels::Pattern::parse(p).unwrap())
            .collect();
        assert_eq!(channels, expected);
    }

    #[test]
    fn minted_token_verifies() {
        let config = hs_config();
        let token = mint(&config, "7", Some("bob"), 60).unwrap();
        #[allow(clippy::disallowed_methods)] // a real token needs the real time
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let id = Verifier::new(&config).unwrap().verify(&token, now).unwrap();
        assert_eq!((id.user_id.as_str(), id.username.as_str()), ("7", "bob"));
    }

    #[test]
    fn garbage_is_invalid_not_a_panic() {
        for token in ["x", "a.b.c", "....", "eyJ.eyJ.sig", "\u{0}"] {
            assert!(matches!(verify(token), Err(AuthError::Invalid(_))), "{token}");
        }
        assert_eq!(verify(""), Err(AuthError::Missing));
    }
}
