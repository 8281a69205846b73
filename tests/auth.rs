//! Tokens: every refusal happens before the upgrade with a status and a reason; accepted tokens
//! give the identity in `welcome`; a session can be extended and ends with 4003 at expiry.

mod common;

use common::*;
use jwt_simple::prelude::*;
use serde_json::json;

fn refused(server: &Server, query: &str, headers: &[(&str, &str)]) -> (u16, String) {
    smol::block_on(Client::connect(server.addr, query, headers)).err().expect("was accepted")
}

#[test]
fn missing_expired_forged_and_none_tokens_get_401() {
    let server = Server::start(json!({}));
    assert_eq!(refused(&server, "", &[]), (401, "missing token\n".into()));
    let expired = sign_hs256(json!({"sub": "1", "exp": unix_now() - 10}));
    assert_eq!(refused(&server, &format!("token={expired}"), &[]), (401, "token expired\n".into()));

    let forged = sign_with_key(
        &HS256Key::from_bytes(b"some-other-secret-0123456789"),
        "HS256",
        json!({"sub": "1", "exp": unix_now() + 60}),
    );
    assert_eq!(refused(&server, &format!("token={forged}"), &[]).0, 401);

    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(json!({"sub": "1", "exp": unix_now() + 60}).to_string().as_bytes())
    );
    assert_eq!(refused(&server, &format!("token={none}"), &[]).0, 401);

    let no_exp = sign_hs256(json!({"sub": "1"}));
    assert_eq!(
        refused(&server, &format!("token={no_exp}"), &[]),
        (401, "token has no exp\n".into())
    );

    let future = sign_hs256(json!({"sub": "1", "exp": unix_now() + 600, "nbf": unix_now() + 300}));
    assert_eq!(refused(&server, &format!("token={future}"), &[]).0, 401);

    // The token never reaches the log.
    for line in server.log_lines() {
        assert!(!line.contains(&expired) && !line.contains(&forged), "token logged: {line}");
    }
}

#[test]
fn issuer_and_audience_are_enforced() {
    let server = Server::start(json!({"auth": {"issuer": "my-site", "audience": "chat"}}));
    let exp = unix_now() + 60;
    let wrong_iss = sign_hs256(json!({"sub": "1", "exp": exp, "iss": "evil", "aud": "chat"}));
    assert_eq!(
        refused(&server, &format!("token={wrong_iss}"), &[]),
        (401, "wrong issuer\n".into())
    );
    let wrong_aud = sign_hs256(json!({"sub": "1", "exp": exp, "iss": "my-site", "aud": "shop"}));
    assert_eq!(
        refused(&server, &format!("token={wrong_aud}"), &[]),
        (401, "wrong audience\n".into())
    );
    let good = sign_hs256(json!({"sub": "1", "exp": exp, "iss": "my-site", "aud": "chat"}));
    assert_eq!(server.welcome_for(&good)["user_id"], "1");
}

#[test]
fn numeric_sub_and_bearer_header() {
    let server = Server::start(json!({}));
    let numeric = sign_hs256(json!({"sub": 42, "exp": unix_now() + 60}));
    smol::block_on(async {
        let mut client = server.connect_token(&numeric).await;
        let welcome = client.recv_type("welcome").await;
        assert_eq!(welcome["user_id"], "42");
        assert_eq!(welcome["username"], "42", "the name falls back to the user id");

        let bearer = format!("Bearer {}", token("alice", 60));
        let mut by_header = Client::connect(server.addr, "", &[("authorization", &bearer)])
            .await
            .expect("bearer accepted");
        let welcome = by_header.recv_type("welcome").await;
        assert_eq!(
            (welcome["user_id"].as_str(), welcome["username"].as_str()),
            (Some("alice"), Some("user-alice"))
        );
    });
    let other = format!("Bearer {}", token("bob", 60));
    let (status, _) =
        refused(&server, &format!("token={}", token("alice", 60)), &[("authorization", &other)]);
    assert_eq!(status, 400, "disagreeing tokens");
}

#[test]
fn custom_user_id_and_name_claims() {
    let server = Server::start(json!({"auth": {"user_id_claim": "uid", "username_claim": "nick"}}));
    let t = sign_hs256(json!({"uid": 9001, "nick": "neo", "exp": unix_now() + 60}));
    smol::block_on(async {
        let mut client = server.connect_token(&t).await;
        let welcome = client.recv_type("welcome").await;
        assert_eq!(
            (welcome["user_id"].as_str(), welcome["username"].as_str()),
            (Some("9001"), Some("neo"))
        );
    });
}

fn public_key_server(algorithm: &str, pem: &str) -> Server {
    let path =
        std::env::temp_dir().join(format!("shequ-chat-{algorithm}-{}.pem", std::process::id()));
    std::fs::write(&path, pem).unwrap();
    Server::start(
        json!({"auth": {"algorithm": algorithm, "secret": null, "public_key_file": path}}),
    )
}

#[test]
fn es256_happy_path_and_algorithm_confusion() {
    let pair = ES256KeyPair::generate();
    let pem = pair.public_key().to_pem().unwrap();
    let server = public_key_server("ES256", &pem);
    let claims = Claims::create(Duration::from_secs(60)).with_subject("es-user");
    let good = pair.sign(claims).unwrap();
    assert_eq!(server.welcome_for(&good)["user_id"], "es-user");
    // An HS256 token keyed with the public key itself must not pass as ES256.
    let confused = sign_with_key(
        &HS256Key::from_bytes(pem.as_bytes()),
        "HS256",
        json!({"sub": "x", "exp": unix_now() + 60}),
    );
    assert_eq!(
        refused(&server, &format!("token={confused}"), &[]),
        (401, "wrong algorithm\n".into())
    );
}

#[test]
fn eddsa_happy_path() {
    let pair = Ed25519KeyPair::generate();
    let server = public_key_server("EdDSA", &pair.public_key().to_pem());
    let claims = Claims::create(Duration::from_secs(60)).with_subject("ed-user");
    let good = pair.sign(claims).unwrap();
    assert_eq!(server.welcome_for(&good)["user_id"], "ed-user");
}

#[test]
fn session_ends_with_4003_at_expiry_unless_refreshed() {
    let server = Server::start(json!({}));
    smol::block_on(async {
        let mut short = server.connect_token(&token("short", 2)).await;
        let mut refreshed = server.connect_token(&token("long", 2)).await;
        short.recv_type("welcome").await;
        refreshed.recv_type("welcome").await;
        refreshed.send_json(json!({"type": "auth", "token": token("long", 3600)})).await;
        // A token for someone else is refused without ending the session.
        refreshed.send_json(json!({"type": "auth", "token": token("mallory", 3600)})).await;
        let error = refreshed.recv_type("error").await;
        assert_eq!(error["code"], "auth_failed");
        refreshed.send_json(json!({"type": "auth", "token": "garbage"})).await;
        assert_eq!(refreshed.recv_type("error").await["code"], "auth_failed");

        assert_eq!(short.close_code().await, Ended::Closed(4003));
        // The refreshed session outlives the original expiry: a chat sent now still arrives.
        refreshed.chat_and_see("still here").await;
    });
}
