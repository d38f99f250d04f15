//! Bad-input suite: a table of what an attacker or a confused client would send to every
//! API route, to the UI's server functions and to the UI's own routes. Every request must
//! be refused with a 4xx (a JSON `{error, message}` on the API), or, where the route
//! answers about the input rather than refusing it (`/verify`, an event filter), answer
//! that nothing matched. Afterwards no key, event, admin, token or schedule row has
//! changed (compared through SQL), on both backends.
//!
//! Sign-in attempts legitimately write `admin.login_failed` events and throttle rows, so
//! they run after the comparison and are checked for their answers (and for leaving keys,
//! admins and tokens alone).

use crate::helpers::{
    BACKENDS, Backend, TestApp, UiClient, api_token, encode, signed_in, spawn_app,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use signet::domain::{KeyState, Role};
use signet::server::audit::Actor;
use std::collections::BTreeMap;

/// The tables whose rows no refused request may change. (`sessions`, `login_throttle`,
/// `scheduler_slots` and `instance` change on their own or on sign-in attempts.)
const GUARDED: [&str; 7] = [
    "signing_keys",
    "key_version",
    "audit_events",
    "audit_head",
    "api_tokens",
    "schedule",
    "admins",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// A 4xx with a JSON `{error, message}`.
    Refused,
    /// `/verify`: 200 with `"valid": false`.
    Invalid,
    /// An event query: 200 with no events (the filter was taken as text, not SQL).
    NoEvents,
}

struct ApiCase {
    name: String,
    method: Method,
    path: String,
    /// The `Authorization` header, verbatim.
    auth: Option<String>,
    content_type: Option<&'static str>,
    body: Option<Vec<u8>>,
    want: Want,
}

struct Tokens {
    full: String,
    reader: String,
    revoked: String,
}

fn case(name: &str, method: Method, path: &str, token: &str, body: Option<&str>) -> ApiCase {
    ApiCase {
        name: name.to_string(),
        method,
        path: path.to_string(),
        auth: Some(format!("Bearer {token}")),
        content_type: body.map(|_| "application/json"),
        body: body.map(|b| b.as_bytes().to_vec()),
        want: Want::Refused,
    }
}

fn post(name: &str, path: &str, token: &str, body: &str) -> ApiCase {
    case(name, Method::POST, path, token, Some(body))
}

fn want(mut c: ApiCase, want: Want) -> ApiCase {
    c.want = want;
    c
}

fn deep(n: usize) -> String {
    format!("{}{}", "[".repeat(n), "]".repeat(n))
}

fn hs256(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let signing = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, signing.as_bytes());
    format!("{signing}.{}", B64.encode(tag.as_ref()))
}

fn unsigned(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    )
}

/// Tokens an attacker forges from what is public: the JWKS and a token they saw.
fn forged_tokens(app: &TestApp, jwks: &[Value], seen: &str, pem: &str) -> Vec<(String, String)> {
    let snapshot = app.state.keys.snapshot();
    let active = |alg: &str| {
        snapshot
            .keys
            .iter()
            .find(|k| k.state == KeyState::Active && k.alg.as_str() == alg)
            .unwrap()
            .kid
            .to_string()
    };
    let ed = active("EdDSA");
    let rs = active("RS256");
    let ed_jwk = jwks
        .iter()
        .find(|k| k["kid"] == ed.as_str())
        .cloned()
        .unwrap();
    let ed_x = B64.decode(ed_jwk["x"].as_str().unwrap()).unwrap();
    let issuer = app.state.config.issuer();
    let now = chrono::Utc::now().timestamp();
    let claims = json!({ "iss": issuer, "sub": "attacker", "iat": now, "exp": now + 600 });
    let seen_parts: Vec<&str> = seen.split('.').collect();
    let mut out = vec![
        (
            "HS256 keyed with the EdDSA public key".to_string(),
            hs256(
                &json!({"alg": "HS256", "kid": ed, "typ": "JWT"}),
                &claims,
                &ed_x,
            ),
        ),
        (
            "HS256 keyed with the EdDSA JWK text".to_string(),
            hs256(
                &json!({"alg": "HS256", "kid": ed}),
                &claims,
                ed_jwk.to_string().as_bytes(),
            ),
        ),
        (
            "HS256 keyed with the RS256 public PEM".to_string(),
            hs256(&json!({"alg": "HS256", "kid": rs}), &claims, pem.as_bytes()),
        ),
        (
            "HS256 with an empty key".to_string(),
            hs256(&json!({"alg": "HS256", "kid": rs}), &claims, b""),
        ),
        (
            "jwk header with an attacker's oct key".to_string(),
            hs256(
                &json!({"alg": "HS256", "kid": "mine", "jwk": {"kty": "oct", "k": B64.encode("secret")}}),
                &claims,
                b"secret",
            ),
        ),
        (
            "jku header".to_string(),
            hs256(
                &json!({"alg": "HS256", "kid": ed, "jku": "http://127.0.0.1:1/jwks.json"}),
                &claims,
                b"secret",
            ),
        ),
        (
            "kid with path traversal".to_string(),
            hs256(
                &json!({"alg": "HS256", "kid": "../../../../etc/passwd"}),
                &claims,
                b"",
            ),
        ),
        (
            "kid with control characters".to_string(),
            hs256(&json!({"alg": "HS256", "kid": "a\u{0}b\nc"}), &claims, b""),
        ),
        (
            "kid as a number".to_string(),
            unsigned(&json!({"alg": "EdDSA", "kid": 7}), &claims, seen_parts[2]),
        ),
        (
            "the seen token's header with alg RS256".to_string(),
            unsigned(
                &json!({"alg": "RS256", "kid": ed, "typ": "JWT"}),
                &serde_json::from_slice::<Value>(&B64.decode(seen_parts[1]).unwrap()).unwrap(),
                seen_parts[2],
            ),
        ),
        (
            "the seen token with claims changed".to_string(),
            format!(
                "{}.{}.{}",
                seen_parts[0],
                B64.encode(claims.to_string()),
                seen_parts[2]
            ),
        ),
        (
            "the seen token without its signature".to_string(),
            format!("{}.{}.", seen_parts[0], seen_parts[1]),
        ),
        (
            "four parts".to_string(),
            format!("{seen}.{}", seen_parts[2]),
        ),
        ("not base64".to_string(), "!!!.???.***".to_string()),
        ("empty".to_string(), String::new()),
        ("dots only".to_string(), "..".to_string()),
    ];
    for alg in ["none", "None", "NONE", "nOnE"] {
        for kid in [ed.as_str(), rs.as_str()] {
            out.push((
                format!("alg {alg}, kid {}", &kid[..6]),
                unsigned(&json!({"alg": alg, "kid": kid, "typ": "JWT"}), &claims, ""),
            ));
        }
    }
    out
}

fn api_cases(
    t: &Tokens,
    kids: &Kids,
    forged: &[(String, String)],
    revoked_key_token: &str,
    aud_token: &str,
) -> Vec<ApiCase> {
    let full = t.full.as_str();
    let mut cases = Vec::new();

    // Who is calling.
    for (name, auth) in [
        ("no Authorization", None),
        ("empty Bearer", Some("Bearer ".to_string())),
        (
            "Basic credentials",
            Some("Basic YWRtaW46YWRtaW4=".to_string()),
        ),
        ("lowercase bearer", Some(format!("bearer {full}"))),
        (
            "unknown id",
            Some("Bearer sgt_0011223344556677_nope".to_string()),
        ),
        (
            "real id, forged secret",
            Some(format!("Bearer {}x", &full[..full.len() - 1])),
        ),
        ("revoked token", Some(format!("Bearer {}", t.revoked))),
        ("SQL as token", Some("Bearer sgt_' OR '1'='1_x".to_string())),
        (
            "SQL in the id",
            Some("Bearer sgt_1' OR 1=1 --_secret".to_string()),
        ),
        (
            "oversized token",
            Some(format!("Bearer sgt_{}", "A".repeat(16_000))),
        ),
        (
            "token without prefix",
            Some("Bearer 0011223344556677_x".to_string()),
        ),
    ] {
        for (method, path, body) in [
            (Method::GET, "/api/v1/keys", None),
            (Method::POST, "/api/v1/keys/rotate", Some("{}")),
            (Method::POST, "/api/v1/sign", Some(r#"{"claims":{}}"#)),
            (
                Method::PUT,
                "/api/v1/schedule",
                Some(r#"{"cron":"0 0 4 * * * *"}"#),
            ),
        ] {
            let mut c = case(&format!("{name}: {method} {path}"), method, path, "", body);
            c.auth = auth.clone();
            cases.push(c);
        }
    }
    // A token without the scope.
    for (method, path, body) in [
        (Method::POST, "/api/v1/keys/rotate", Some("{}")),
        (
            Method::POST,
            &*format!("/api/v1/keys/{}/revoke", kids.next_ed),
            Some(r#"{"reason":"x"}"#),
        ),
        (
            Method::PUT,
            "/api/v1/schedule",
            Some(r#"{"cron":"0 0 4 * * * *"}"#),
        ),
        (Method::GET, "/api/v1/events", None),
        (Method::POST, "/api/v1/sign", Some(r#"{"claims":{}}"#)),
    ] {
        cases.push(case(
            &format!("reader token: {method} {path}"),
            method,
            path,
            &t.reader,
            body,
        ));
    }

    // Bodies every JSON route refuses.
    let next = &kids.next_ed;
    let revoke_path = format!("/api/v1/keys/{next}/revoke");
    for (method, path) in [
        (Method::POST, "/api/v1/keys/rotate"),
        (Method::POST, revoke_path.as_str()),
        (Method::PUT, "/api/v1/schedule"),
        (Method::POST, "/api/v1/sign"),
        (Method::POST, "/api/v1/verify"),
    ] {
        let big = format!(r#"{{"reason":"{}"}}"#, "x".repeat(70 * 1024));
        for (name, body) in [
            ("malformed JSON", "{".to_string()),
            ("trailing garbage", "{} {}".to_string()),
            ("single quotes", "{'a': 1}".to_string()),
            ("a JSON array", "[]".to_string()),
            ("a JSON string", "\"rotate\"".to_string()),
            ("null", "null".to_string()),
            ("deep nesting", deep(10_000)),
            (
                "deep nesting in a field",
                format!(r#"{{"claims":{}}}"#, deep(5_000)),
            ),
            ("oversized body", big),
            (
                "unknown field",
                r#"{"unknown":1,"claims":{},"token":"x","cron":"0 0 4 * * * *","reason":"x"}"#
                    .to_string(),
            ),
            ("NUL bytes", "{\"reason\":\"\u{0}\"".to_string()),
        ] {
            cases.push(case(
                &format!("{name}: {method} {path}"),
                method.clone(),
                path,
                full,
                Some(&body),
            ));
        }
        // Raw bytes that are not UTF-8 at all.
        let mut c = case(
            &format!("bytes 0xff: {method} {path}"),
            method.clone(),
            path,
            full,
            None,
        );
        c.content_type = Some("application/json");
        c.body = Some(vec![b'{', 0xff, 0xfe, b'}']);
        cases.push(c);
        // JSON sent as something else.
        let mut c = case(
            &format!("text/plain: {method} {path}"),
            method.clone(),
            path,
            full,
            Some("{}"),
        );
        c.content_type = Some("text/plain");
        cases.push(c);
        let mut c = case(
            &format!("form body: {method} {path}"),
            method.clone(),
            path,
            full,
            Some("a=1"),
        );
        c.content_type = Some("application/x-www-form-urlencoded");
        cases.push(c);
    }

    // Rotate.
    for body in [
        r#"{"alg":"HS256"}"#,
        r#"{"alg":"none"}"#,
        r#"{"alg":"ES256"}"#,
        r#"{"alg":""}"#,
        r#"{"alg":"EdDSA\u0000"}"#,
        r#"{"alg":5}"#,
        r#"{"alg":["EdDSA"]}"#,
        r#"{"revoke":"yes"}"#,
        r#"{"revoke":1}"#,
        r#"{"revoke":true}"#,
        r#"{"revoke":true,"reason":"   "}"#,
        r#"{"revoke":true,"reason":"line\nbreak"}"#,
        r#"{"revoke":true,"reason":"nul\u0000"}"#,
        r#"{"revoke":true,"reason":5}"#,
        r#"{"alg":"EdDSA","extra":true}"#,
    ] {
        cases.push(post(
            &format!("rotate {body}"),
            "/api/v1/keys/rotate",
            full,
            body,
        ));
    }
    let long_reason = format!(r#"{{"revoke":true,"reason":"{}"}}"#, "r".repeat(600));
    cases.push(post(
        "rotate with a 600-character reason",
        "/api/v1/keys/rotate",
        full,
        &long_reason,
    ));

    // Revoke: the kid in the path.
    for kid in [
        "..%2F..%2F..%2Fetc%2Fpasswd",
        "%2E%2E",
        "..%5C..%5Cwindows",
        "%00",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA%00",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA%0A",
        "%0D%0AX-Injected:%201",
        "%27%20OR%20%271%27%3D%271",
        "1%3B%20DROP%20TABLE%20signing_keys",
        "%E2%80%AE",
        "%FF%FE",
        // 43 characters of the right alphabet, but no such key.
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        // 44 characters.
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        cases.push(post(
            &format!("revoke kid {kid}"),
            &format!("/api/v1/keys/{kid}/revoke"),
            full,
            r#"{"reason":"attack"}"#,
        ));
    }
    let long_kid = "A".repeat(8_000);
    cases.push(post(
        "revoke an 8000-character kid",
        &format!("/api/v1/keys/{long_kid}/revoke"),
        full,
        r#"{"reason":"x"}"#,
    ));
    for (name, body) in [
        ("no reason", r#"{}"#),
        ("empty reason", r#"{"reason":""}"#),
        ("blank reason", r#"{"reason":"  \t "}"#),
        (
            "reason with a newline",
            r#"{"reason":"a\nforged log line"}"#,
        ),
        ("reason with NUL", r#"{"reason":"a\u0000b"}"#),
        ("reason a number", r#"{"reason":1}"#),
        ("reason null", r#"{"reason":null}"#),
    ] {
        cases.push(post(
            &format!("revoke next key: {name}"),
            &revoke_path,
            full,
            body,
        ));
    }
    let long = format!(r#"{{"reason":"{}"}}"#, "y".repeat(501));
    cases.push(post(
        "revoke next key: 501-character reason",
        &revoke_path,
        full,
        &long,
    ));
    // Keys that cannot be revoked (again).
    cases.push(post(
        "revoke a revoked key",
        &format!("/api/v1/keys/{}/revoke", kids.revoked),
        full,
        r#"{"reason":"again"}"#,
    ));
    let mut no_body = case(
        "revoke without a body",
        Method::POST,
        &revoke_path,
        full,
        None,
    );
    no_body.body = None;
    cases.push(no_body);

    // Schedule.
    for body in [
        // Ran out, or never fires.
        r#"{"cron":"0 0 0 1 1 * 2020"}"#,
        r#"{"cron":"0 0 0 1 1 * 2000-2020"}"#,
        r#"{"cron":"0 0 0 30 2 * *"}"#,
        r#"{"cron":"0 0 0 31 4 * *"}"#,
        r#"{"cron":"0 0 0 31 2,4,6,9,11 * *"}"#,
        // Not seven fields, or not cron.
        r#"{"cron":"0 4 * * *"}"#,
        r#"{"cron":"0 0 4 * * * * *"}"#,
        r#"{"cron":""}"#,
        r#"{"cron":"@daily"}"#,
        r#"{"cron":"61 0 4 * * * *"}"#,
        r#"{"cron":"0 0 25 * * * *"}"#,
        r#"{"cron":"*/0 * * * * * *"}"#,
        r#"{"cron":"0 0 4 * * * 99999"}"#,
        r#"{"cron":"0 0 4 * * * *; DROP TABLE schedule; --"}"#,
        r#"{"cron":"0 0 4 * * * *\u0000"}"#,
        r#"{"cron":5}"#,
        r#"{"cron":null}"#,
        r#"{"retention":"40d"}"#,
        // Retention shorter than the longest token lifetime (1h), or not a duration.
        r#"{"cron":"0 0 4 * * * *","retention":"30m"}"#,
        r#"{"cron":"0 0 4 * * * *","retention":"1h"}"#,
        r#"{"cron":"0 0 4 * * * *","retention":"59m"}"#,
        r#"{"cron":"0 0 4 * * * *","retention":"0d"}"#,
        r#"{"cron":"0 0 4 * * * *","retention":"-1d"}"#,
        r#"{"cron":"0 0 4 * * * *","retention":"1y"}"#,
        r#"{"cron":"0 0 4 * * * *","retention":"3651d"}"#,
        r#"{"cron":"0 0 4 * * * *","retention":"99999999999999999999d"}"#,
        r#"{"cron":"0 0 4 * * * *","retention":40}"#,
        r#"{"cron":"0 0 4 * * * *","retention":"40d","extra":1}"#,
    ] {
        cases.push(case(
            &format!("schedule {body}"),
            Method::PUT,
            "/api/v1/schedule",
            full,
            Some(body),
        ));
    }
    let long_cron = format!(r#"{{"cron":"{}"}}"#, "1,".repeat(20_000));
    cases.push(case(
        "schedule with a 40 KB expression",
        Method::PUT,
        "/api/v1/schedule",
        full,
        Some(&long_cron),
    ));

    // Events: limits, cursors, filters.
    for query in [
        "limit=0",
        "limit=501",
        "limit=-1",
        "limit=abc",
        "limit=99999999999999999999",
        "limit=1.5",
        "cursor=abc",
        "cursor=99999999999999999999",
        "cursor=1%20OR%201%3D1",
        "cursor=1;DROP%20TABLE%20audit_events",
        "level=bogus",
        "level=%27%20OR%201%3D1%20--",
        "kind=a%00b",
        "actor=%0Aforged",
        "since=yesterday",
        "until=2026-13-45T00:00:00Z",
        "since=1",
        "unknown=1",
        "limit=10&limit=20",
    ] {
        cases.push(case(
            &format!("events ?{query}"),
            Method::GET,
            &format!("/api/v1/events?{query}"),
            full,
            None,
        ));
    }
    let long_kind = format!("/api/v1/events?kind={}", "k".repeat(300));
    cases.push(case(
        "events with a 300-character kind",
        Method::GET,
        &long_kind,
        full,
        None,
    ));
    for query in [
        "kind=%27%20OR%20%271%27%3D%271",
        "actor=%27%3B%20DELETE%20FROM%20audit_events%3B%20--",
        "kind=keys.rotated%27%20UNION%20SELECT%20*%20FROM%20api_tokens%20--",
        "actor=%25",
        "kind=%25",
        "actor=_",
    ] {
        cases.push(want(
            case(
                &format!("events SQL in a filter ?{query}"),
                Method::GET,
                &format!("/api/v1/events?{query}"),
                full,
                None,
            ),
            Want::NoEvents,
        ));
    }

    // Sign.
    for body in [
        r#"{"claims":"x"}"#,
        r#"{"claims":[]}"#,
        r#"{"claims":null}"#,
        r#"{}"#,
        r#"{"claims":{"iss":"https://evil.example"}}"#,
        r#"{"claims":{"exp":99999999999}}"#,
        r#"{"claims":{"iat":0}}"#,
        r#"{"claims":{},"alg":"HS256"}"#,
        r#"{"claims":{},"alg":"none"}"#,
        r#"{"claims":{},"alg":"ES256"}"#,
        r#"{"claims":{},"alg":5}"#,
        r#"{"claims":{},"ttl":0}"#,
        r#"{"claims":{},"ttl":3601}"#,
        r#"{"claims":{},"ttl":-1}"#,
        r#"{"claims":{},"ttl":"1h"}"#,
        r#"{"claims":{},"ttl":1.5}"#,
        r#"{"claims":{},"ttl":18446744073709551616}"#,
        r#"{"claims":{},"kid":"mine"}"#,
        r#"{"claims":{},"header":{"alg":"none"}}"#,
    ] {
        cases.push(post(&format!("sign {body}"), "/api/v1/sign", full, body));
    }

    // Verify: refused bodies, and tokens that must come back invalid.
    for body in [
        r#"{}"#,
        r#"{"token":5}"#,
        r#"{"token":null}"#,
        r#"{"token":"x","audience":5}"#,
        r#"{"token":"x","alg":"HS256"}"#,
    ] {
        cases.push(post(
            &format!("verify {body}"),
            "/api/v1/verify",
            full,
            body,
        ));
    }
    for (name, token) in forged {
        let body = json!({ "token": token }).to_string();
        cases.push(want(
            post(
                &format!("verify forged: {name}"),
                "/api/v1/verify",
                full,
                &body,
            ),
            Want::Invalid,
        ));
    }
    let body = json!({ "token": revoked_key_token }).to_string();
    cases.push(want(
        post(
            "verify a token of a revoked key",
            "/api/v1/verify",
            full,
            &body,
        ),
        Want::Invalid,
    ));
    let body = json!({ "token": aud_token }).to_string();
    cases.push(want(
        post(
            "verify a token with aud, no audience given",
            "/api/v1/verify",
            full,
            &body,
        ),
        Want::Invalid,
    ));
    let body = json!({ "token": aud_token, "audience": "other" }).to_string();
    cases.push(want(
        post(
            "verify a token for another audience",
            "/api/v1/verify",
            full,
            &body,
        ),
        Want::Invalid,
    ));

    // Routes and methods that do not exist.
    for (method, path) in [
        (Method::GET, "/api/v1/"),
        (Method::GET, "/api/v1/..%2F..%2Fetc%2Fpasswd"),
        (Method::GET, "/api/v1/keys/..%2F..%2F"),
        (Method::DELETE, "/api/v1/keys"),
        (Method::PUT, "/api/v1/keys/rotate"),
        (Method::GET, "/api/v1/keys/rotate"),
        (Method::DELETE, "/api/v1/schedule"),
        (Method::GET, "/api/v1/sign"),
        (Method::PATCH, "/api/v1/verify"),
    ] {
        cases.push(case(&format!("{method} {path}"), method, path, full, None));
    }
    // Public endpoints with bad parameters.
    for path in [
        "/.well-known/jwks.json?alg=HS256",
        "/.well-known/jwks.json?alg=none",
        "/.well-known/jwks.json?alg=%00",
    ] {
        let mut c = case(path, Method::GET, path, "", None);
        c.auth = None;
        cases.push(c);
    }
    cases
}

struct Kids {
    next_ed: String,
    revoked: String,
}

/// Sends one API case and checks its answer; returns a description of a mismatch.
async fn send(app: &TestApp, c: &ApiCase) -> Option<String> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(20))
        .build()
        .unwrap();
    let mut req = client.request(c.method.clone(), app.at(&c.path));
    if let Some(a) = &c.auth {
        req = req.header("authorization", a);
    }
    if let Some(ct) = c.content_type {
        req = req.header("content-type", ct);
    }
    if let Some(b) = &c.body {
        req = req.body(b.clone());
    }
    let res = match req.send().await {
        Ok(r) => r,
        Err(e) => return Some(format!("{}: no answer: {e}", c.name)),
    };
    let status = res.status();
    let text = res.text().await.unwrap_or_default();
    let body: Option<Value> = serde_json::from_str(&text).ok();
    let shown = text.chars().take(300).collect::<String>();
    match c.want {
        Want::Refused => {
            if !status.is_client_error() {
                return Some(format!("{}: {status} (wanted 4xx): {shown}", c.name));
            }
            let ok = body.as_ref().is_some_and(|b| {
                b["error"].as_str().is_some_and(|e| !e.is_empty())
                    && b["message"].as_str().is_some_and(|m| !m.is_empty())
                    && b.as_object().is_some_and(|o| o.len() == 2)
            });
            if !ok {
                return Some(format!(
                    "{}: {status} without a JSON {{error, message}}: {shown}",
                    c.name
                ));
            }
        }
        Want::Invalid => {
            if status != StatusCode::OK || body.as_ref().is_none_or(|b| b["valid"] != false) {
                return Some(format!(
                    "{}: {status} (wanted 200, valid false): {shown}",
                    c.name
                ));
            }
        }
        Want::NoEvents => {
            let none = body
                .as_ref()
                .and_then(|b| b["events"].as_array())
                .is_some_and(|e| e.is_empty());
            if status != StatusCode::OK || !none {
                return Some(format!(
                    "{}: {status} (wanted 200 and no events): {shown}",
                    c.name
                ));
            }
        }
    }
    None
}

/// Every row of the guarded tables, as text, through SQL.
async fn snapshot(app: &TestApp) -> BTreeMap<String, Vec<String>> {
    app.db.dump_tables(&GUARDED).await
}

struct UiCase {
    name: String,
    who: Who,
    function: &'static str,
    body: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Admin,
    Viewer,
    Anonymous,
    ForeignOrigin,
    NoOrigin,
    ForgedCookie,
    SignedOut,
}

fn ui_cases(kids: &Kids, admin_id: &str) -> Vec<UiCase> {
    let mut cases = Vec::new();
    let mut add = |who: Who, function: &'static str, body: String| {
        cases.push(UiCase {
            name: format!("{who:?} {function} {body}"),
            who,
            function,
            body,
        });
    };
    let next = &kids.next_ed;
    let valid: Vec<(&'static str, String)> = vec![
        ("rotate_keys", "alg=".into()),
        ("rotate_and_revoke", "alg=EdDSA&reason=test".into()),
        ("revoke_key", format!("kid={next}&reason=test")),
        (
            "save_schedule",
            "expression=0+0+4+*+*+*+*&retention=40d".into(),
        ),
        ("create_admin", "email=new%40example.com&role=viewer".into()),
        ("set_admin_disabled", format!("id={admin_id}&disabled=true")),
        ("create_token", "name=ci&scopes[0]=sign".into()),
        ("revoke_token", "id=0000000000000000".into()),
        (
            "change_password",
            format!("current=x&new={}", encode("a much longer new password")),
        ),
    ];
    // Valid requests from callers who may not make them.
    for who in [
        Who::Viewer,
        Who::Anonymous,
        Who::ForeignOrigin,
        Who::NoOrigin,
        Who::ForgedCookie,
        Who::SignedOut,
    ] {
        for (f, body) in &valid {
            // A signed-in viewer may change their own password: a wrong current one is a
            // failed login, recorded like the sign-ins below.
            if who == Who::Viewer && *f == "change_password" {
                continue;
            }
            add(who, f, body.clone());
        }
    }
    // Bad input from an admin.
    for (f, body) in [
        ("rotate_keys", "alg=HS256".to_string()),
        ("rotate_keys", "alg=none".into()),
        ("rotate_keys", "alg=EdDSA%00".into()),
        ("rotate_keys", String::new()),
        ("rotate_keys", "%%%".into()),
        ("rotate_keys", format!("alg={}", "A".repeat(70_000))),
        ("rotate_and_revoke", "alg=EdDSA&reason=".into()),
        ("rotate_and_revoke", "alg=EdDSA&reason=a%0Aforged".into()),
        ("rotate_and_revoke", "alg=EdDSA&reason=a%00b".into()),
        ("rotate_and_revoke", "alg=HS256&reason=x".into()),
        (
            "rotate_and_revoke",
            format!("alg=EdDSA&reason={}", "r".repeat(600)),
        ),
        (
            "revoke_key",
            "kid=..%2F..%2F..%2Fetc%2Fpasswd&reason=x".into(),
        ),
        ("revoke_key", "kid=%00&reason=x".into()),
        (
            "revoke_key",
            "kid=%27%20OR%20%271%27%3D%271&reason=x".into(),
        ),
        ("revoke_key", format!("kid={}&reason=x", "A".repeat(43))),
        ("revoke_key", format!("kid={}&reason=x", kids.revoked)),
        ("revoke_key", format!("kid={next}&reason=")),
        ("revoke_key", format!("kid={next}&reason=%00")),
        ("revoke_key", format!("kid={next}")),
        (
            "save_schedule",
            "expression=0+0+0+1+1+*+2020&retention=40d".into(),
        ),
        (
            "save_schedule",
            "expression=0+0+0+30+2+*+*&retention=40d".into(),
        ),
        ("save_schedule", "expression=0+4+*+*+*&retention=40d".into()),
        (
            "save_schedule",
            "expression=%3B+DROP+TABLE+schedule&retention=40d".into(),
        ),
        (
            "save_schedule",
            "expression=0+0+4+*+*+*+*&retention=30m".into(),
        ),
        (
            "save_schedule",
            "expression=0+0+4+*+*+*+*&retention=0d".into(),
        ),
        (
            "save_schedule",
            "expression=0+0+4+*+*+*+*&retention=1y".into(),
        ),
        (
            "save_schedule",
            "expression=0+0+4+*+*+*+*%00&retention=40d".into(),
        ),
        ("create_admin", "email=not-an-email&role=viewer".into()),
        (
            "create_admin",
            "email=a%00%40example.com&role=viewer".into(),
        ),
        ("create_admin", "email=x%40example.com&role=root".into()),
        ("create_admin", "email=admin%40localhost&role=admin".into()),
        (
            "create_admin",
            format!("email={}%40example.com&role=viewer", "a".repeat(300)),
        ),
        (
            "set_admin_disabled",
            "id=%27%20OR%201%3D1%20--&disabled=true".into(),
        ),
        (
            "set_admin_disabled",
            format!("id={admin_id}&disabled=maybe"),
        ),
        ("set_admin_disabled", "id=&disabled=true".into()),
        ("create_token", "name=..%2Fx&scopes[0]=sign".into()),
        ("create_token", "name=ci&scopes[0]=admin".into()),
        ("create_token", "name=ci".into()),
        ("create_token", "name=a%00b&scopes[0]=sign".into()),
        (
            "create_token",
            format!("name={}&scopes[0]=sign", "n".repeat(65)),
        ),
        ("create_token", "name=taken&scopes[0]=sign".into()),
        ("revoke_token", "id=%27%20OR%201%3D1%20--".into()),
        ("revoke_token", "id=".into()),
        ("no_such_function", "a=1".into()),
    ] {
        add(Who::Admin, f, body);
    }
    cases
}

/// UI routes (not server functions) with bad parameters, for a signed-in admin.
fn ui_routes(kids: &Kids) -> Vec<String> {
    vec![
        "/events/export?format=xml".into(),
        "/events/export?format=csv&level=bogus".into(),
        "/events/export?format=json&after=abc".into(),
        "/events/export?format=json&kind=a%00b".into(),
        "/events/export?format=json&since=yesterday".into(),
        "/events/stream?after=abc".into(),
        "/events/stream?level=bogus".into(),
        "/config/jwks/..%2F..%2Fetc%2Fpasswd/public.pem".into(),
        "/config/jwks/%00/public.pem".into(),
        format!("/config/jwks/{}/public.pem", "A".repeat(43)),
        format!("/config/jwks/{}%0A/public.pem", kids.next_ed),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_changes_nothing() {
    let mut tried = 0usize;
    let mut failures = Vec::new();
    for backend in BACKENDS {
        let (n, failed) = bad_input_on(backend).await;
        tried += n;
        failures.extend(failed.into_iter().map(|f| format!("{backend:?}: {f}")));
    }
    eprintln!("bad-input suite: {tried} requests tried on two backends");
    assert!(
        failures.is_empty(),
        "{} of {tried} requests were not refused cleanly:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

async fn bad_input_on(backend: Backend) -> (usize, Vec<String>) {
    let app = spawn_app(backend).await;
    let full = api_token(
        &app,
        "full",
        &["keys:read", "keys:write", "sign", "audit:read"],
    )
    .await;
    let reader = api_token(&app, "reader", &["keys:read"]).await;
    let revoked = api_token(&app, "gone", &["keys:read", "keys:write", "sign"]).await;
    api_token(&app, "taken", &["sign"]).await;
    let revoked_id = revoked
        .strip_prefix("sgt_")
        .and_then(|r| r.split_once('_'))
        .map(|(id, _)| id.to_string())
        .unwrap();
    assert!(
        signet::server::accounts::tokens::revoke(
            app.state.storage.as_ref(),
            &revoked_id,
            &Actor::cli()
        )
        .await
        .unwrap()
    );
    let tokens = Tokens {
        full: full.clone(),
        reader,
        revoked,
    };
    let http = reqwest::Client::new();
    let sign = |claims: Value| {
        http.post(app.at("/api/v1/sign"))
            .bearer_auth(&full)
            .json(&json!({ "claims": claims, "alg": "EdDSA" }))
            .send()
    };
    // A token the attacker saw, and one of a key revoked since.
    let seen: Value = sign(json!({"sub": "seen"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let seen = seen["token"].as_str().unwrap().to_string();
    let aud: Value = sign(json!({"sub": "aud", "aud": "billing"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let aud = aud["token"].as_str().unwrap().to_string();
    let doomed: Value = sign(json!({"sub": "doomed"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let doomed_kid = signet::domain::Kid::parse(doomed["kid"].as_str().unwrap()).unwrap();
    let doomed = doomed["token"].as_str().unwrap().to_string();
    app.state
        .keys
        .revoke(&doomed_kid, "compromised".into(), &Actor::cli())
        .await
        .unwrap();

    let mut admin = signed_in(&app, "ops@example.com", Role::Admin).await;
    let viewer = signed_in(&app, "viewer@example.com", Role::Viewer).await;
    let mut signed_out = signed_in(&app, "gone@example.com", Role::Admin).await;
    let stale_cookie = signed_out.cookie.clone();
    assert_eq!(signed_out.call("sign_out", "").await.status, 200);
    signed_out.cookie = stale_cookie;

    let snapshot_keys = app.state.keys.snapshot();
    let next_ed = snapshot_keys
        .keys
        .iter()
        .find(|k| k.state == KeyState::Next && k.alg.as_str() == "EdDSA")
        .unwrap()
        .kid
        .to_string();
    let rs_active = snapshot_keys
        .keys
        .iter()
        .find(|k| k.state == KeyState::Active && k.alg.as_str() == "RS256")
        .unwrap()
        .kid
        .to_string();
    let pem = admin
        .get(&format!("/config/jwks/{rs_active}/public.pem"))
        .await;
    assert_eq!(pem.status, 200, "{}", pem.body);
    let kids = Kids {
        next_ed,
        revoked: doomed_kid.to_string(),
    };
    let admin_id = app
        .state
        .storage
        .list_admins()
        .await
        .unwrap()
        .into_iter()
        .find(|a| a.email.as_str() == "admin@localhost")
        .unwrap()
        .id;
    let jwks: Value = http
        .get(app.at("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let forged = forged_tokens(&app, jwks["keys"].as_array().unwrap(), &seen, &pem.body);

    let before = snapshot(&app).await;
    let mut failures = Vec::new();
    let mut tried = 0usize;

    for c in api_cases(&tokens, &kids, &forged, &doomed, &aud) {
        tried += 1;
        if let Some(f) = send(&app, &c).await {
            failures.push(f);
        }
    }

    let mut anonymous = UiClient::new(&app);
    let mut foreign = UiClient::new(&app);
    foreign.cookie = admin.cookie.clone();
    foreign.origin = Some("https://evil.example".into());
    let mut no_origin = UiClient::new(&app);
    no_origin.cookie = admin.cookie.clone();
    no_origin.origin = None;
    let mut forged_cookie = UiClient::new(&app);
    forged_cookie.cookie = Some(format!("signet_session={}", "A".repeat(22)));
    let mut viewer = viewer;
    for c in ui_cases(&kids, &admin_id) {
        let client = match c.who {
            Who::Admin => &mut admin,
            Who::Viewer => &mut viewer,
            Who::Anonymous => &mut anonymous,
            Who::ForeignOrigin => &mut foreign,
            Who::NoOrigin => &mut no_origin,
            Who::ForgedCookie => &mut forged_cookie,
            Who::SignedOut => &mut signed_out,
        };
        tried += 1;
        let a = client.call(c.function, &c.body).await;
        let shown: String = a.body.chars().take(300).collect();
        if !a.status.is_client_error() {
            failures.push(format!("UI {}: {} (wanted 4xx): {shown}", c.name, a.status));
        } else if a.body.trim().is_empty() || a.body.to_lowercase().contains("internal") {
            failures.push(format!(
                "UI {}: {} without a clear message: {shown}",
                c.name, a.status
            ));
        }
    }
    for path in ui_routes(&kids) {
        tried += 1;
        // The status only: a stream that was (wrongly) opened would never end.
        let status = admin.get_raw(&path).await.status();
        if !status.is_client_error() {
            failures.push(format!("UI GET {path}: {status} (wanted 4xx)"));
        }
    }

    let after = snapshot(&app).await;
    for table in GUARDED {
        if before[table] != after[table] {
            let added: Vec<&String> = after[table]
                .iter()
                .filter(|r| !before[table].contains(r))
                .collect();
            let gone: Vec<&String> = before[table]
                .iter()
                .filter(|r| !after[table].contains(r))
                .collect();
            failures.push(format!(
                "table {table} changed: rows gone {gone:?}, rows added {added:?}"
            ));
        }
    }

    // Sign-in attempts: the same refusal for each, and nothing but their own events and
    // throttle rows written.
    let mut fresh = UiClient::new(&app);
    for (email, password) in [
        ("ops@example.com", "wrong password"),
        ("ops@example.com\u{0}", crate::helpers::TEST_PASSWORD),
        ("ops\u{0}@example.com", "x"),
        ("ops@exa\u{1}mple.com", crate::helpers::TEST_PASSWORD),
        ("' OR '1'='1", "' OR '1'='1"),
        ("nobody@example.com", "x"),
        ("", ""),
    ] {
        tried += 1;
        let a = fresh.sign_in(email, password).await;
        // Refused, or (after a few failures for one account) throttled.
        if !matches!(
            a.status,
            StatusCode::UNAUTHORIZED | StatusCode::TOO_MANY_REQUESTS
        ) {
            failures.push(format!(
                "sign-in {email:?}: {} (wanted 401 or 429): {}",
                a.status, a.body
            ));
        }
    }
    let long_email = format!("{}@example.com", "a".repeat(10_000));
    tried += 1;
    let a = fresh.sign_in(&long_email, "x").await;
    if !a.status.is_client_error() {
        failures.push(format!("sign-in with a 10 KB email: {}", a.status));
    }
    tried += 1;
    let a = viewer
        .call(
            "change_password",
            &format!("current=x&new={}", encode("a much longer new password")),
        )
        .await;
    if a.status != StatusCode::BAD_REQUEST {
        failures.push(format!(
            "a viewer's wrong current password: {} (wanted 400): {}",
            a.status, a.body
        ));
    }
    let after_logins = snapshot(&app).await;
    for table in [
        "signing_keys",
        "key_version",
        "api_tokens",
        "schedule",
        "admins",
    ] {
        if after[table] != after_logins[table] {
            failures.push(format!("failed sign-ins changed {table}"));
        }
    }

    // Sessions that ran out are refused like no session.
    app.db
        .execute("UPDATE sessions SET expires_at = '2000-01-01T00:00:00+00:00'")
        .await
        .unwrap();
    for (f, body) in [
        ("rotate_keys", "alg="),
        ("load_keys", ""),
        ("list_admins", ""),
    ] {
        tried += 1;
        let a = admin.call(f, body).await;
        if a.status != StatusCode::UNAUTHORIZED {
            failures.push(format!(
                "expired session {f}: {} (wanted 401): {}",
                a.status, a.body
            ));
        }
    }
    let after_expiry = snapshot(&app).await;
    for table in GUARDED
        .iter()
        .filter(|t| **t != "audit_events" && **t != "audit_head")
    {
        if after_logins[*table] != after_expiry[*table] {
            failures.push(format!("an expired session changed {table}"));
        }
    }

    eprintln!(
        "bad-input suite {backend:?}: {tried} requests, {} not refused cleanly",
        failures.len()
    );
    (tried, failures)
}
