//! The benchmark's floor for `POST /api/v1/sign`: a bare axum server that takes the same
//! JSON, adds `iss`, `iat` and `exp`, signs with a key parsed once (aws-lc, as Signet)
//! and answers the same JSON, with no token check, no audit and no database. What Signet
//! adds to it is what Signet costs; what it costs against an in-process signer is the
//! HTTP round trip. `bench/run` loads it side by side with Signet.
//!
//! Usage: bare_sign ADDR

#[cfg(feature = "ssr")]
#[tokio::main]
async fn main() -> std::io::Result<()> {
    use axum::Json;
    use axum::routing::post;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use serde_json::{Map, Value, json};
    use signet::domain::{Algorithm, RsaBits};
    use signet::server::crypto::{Signer, generate};
    use std::sync::Arc;

    let Some(addr) = std::env::args().nth(1) else {
        eprintln!("usage: bare_sign ADDR");
        std::process::exit(2);
    };
    let keys: Arc<Vec<(Algorithm, String, String, Signer)>> = Arc::new(
        [Algorithm::EdDSA, Algorithm::RS256]
            .into_iter()
            .map(|alg| {
                let key = generate(alg, RsaBits::B2048).expect("key");
                let header = json!({ "alg": alg.as_str(), "typ": "JWT", "kid": key.kid.as_str() });
                let signer = Signer::parse(alg, &key.private).expect("signer");
                (
                    alg,
                    key.kid.to_string(),
                    B64.encode(header.to_string()),
                    signer,
                )
            })
            .collect(),
    );
    let app = axum::Router::new().route(
        "/api/v1/sign",
        post(move |Json(body): Json<Value>| {
            let keys = keys.clone();
            async move {
                let alg = body["alg"].as_str().unwrap_or("EdDSA").to_string();
                let ttl = body["ttl"].as_i64().unwrap_or(300);
                let mut claims: Map<String, Value> = match body.get("claims") {
                    Some(Value::Object(c)) => c.clone(),
                    _ => Map::new(),
                };
                let now = chrono::Utc::now().timestamp();
                claims.insert("iss".into(), json!("http://127.0.0.1:3994"));
                claims.insert("iat".into(), json!(now));
                claims.insert("exp".into(), json!(now + ttl));
                let (alg, kid, header, signer) = keys
                    .iter()
                    .find(|(a, ..)| a.as_str() == alg)
                    .unwrap_or(&keys[0]);
                let mut token = header.clone();
                token.push('.');
                B64.encode_string(serde_json::to_vec(&claims).unwrap_or_default(), &mut token);
                let signature = signer.sign(token.as_bytes()).unwrap_or_default();
                token.push('.');
                B64.encode_string(signature, &mut token);
                Json(json!({ "alg": alg, "kid": kid, "token": token }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await
}

#[cfg(not(feature = "ssr"))]
fn main() {}
