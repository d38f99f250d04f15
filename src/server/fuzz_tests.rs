//! Fuzzing: every parser that takes outside input runs on arbitrary input for a fixed
//! number of cases, and must answer (Ok or Err) without panicking. Inputs mix random
//! text with fragments of valid syntax, so the cases reach past the first check.
//!
//! The cron, retention, duration, kid and algorithm parsers are pure; the JWT header and
//! verification path runs against the key snapshot of a real server on a fresh SQLite
//! file; the configuration parser runs on arbitrary `SIGNET_*` values and TOML files.

use crate::domain::{Algorithm, AlgorithmList, CronSchedule, Email, Kid, Retention, RsaBits};
use crate::server::config::{Config, SETTINGS};
use crate::server::keys::KeySnapshot;
use crate::server::keys::jwt;
use crate::server::startup::{Application, ServeOptions};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chrono::{DateTime, TimeZone as _, Utc};
use proptest::prelude::*;
use std::sync::{Arc, OnceLock};

const CASES: u32 = 2000;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        // A panic is the failure we look for; shrinking it is worth a little time, but
        // a failure must not run for minutes.
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    }
}

/// One cron field: valid pieces, edge values, and junk.
fn cron_field() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("*".to_string()),
        Just("?".to_string()),
        (0u32..100).prop_map(|n| n.to_string()),
        (0u32..70, 0u32..70).prop_map(|(a, b)| format!("{a}-{b}")),
        (0u32..70, 0u32..70).prop_map(|(a, b)| format!("{a}/{b}")),
        (0u32..70, 0u32..70, 0u32..70).prop_map(|(a, b, c)| format!("{a},{b},{c}")),
        prop_oneof![
            Just("JAN"),
            Just("Mon-Fri"),
            Just("L"),
            Just("W"),
            Just("#"),
            Just("1970"),
            Just("2020"),
            Just("2100-2099"),
            Just("9999"),
            Just("4294967296"),
            Just("-1"),
            Just("*/0"),
        ]
        .prop_map(str::to_string),
        "[ -~]{0,6}",
        "\\PC{0,4}",
    ]
}

fn cron_expr() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::collection::vec(cron_field(), 0..9).prop_map(|f| f.join(" ")),
        proptest::collection::vec(cron_field(), 7).prop_map(|f| f.join(" ")),
        ".{0,40}",
    ]
}

fn instant() -> impl Strategy<Value = DateTime<Utc>> {
    // 1970 to about 2200.
    (0i64..7_258_118_400).prop_map(|s| Utc.timestamp_opt(s, 0).single().unwrap_or_default())
}

fn duration_text() -> impl Strategy<Value = String> {
    prop_oneof![
        (any::<u64>(), "[smhdwy ]{0,2}").prop_map(|(n, u)| format!("{n}{u}")),
        ("[0-9]{0,25}", "[a-zA-Z]{0,3}").prop_map(|(n, u)| format!("{n}{u}")),
        "[ -~]{0,12}",
        "\\PC{0,8}",
        ".{0,16}",
    ]
}

fn kid_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9_-]{40,46}",
        "[A-Za-z0-9_./%\\\\-]{43}",
        "(\\.\\./){1,5}[a-z]{0,10}",
        ".{0,80}",
        "\\PC{43}",
    ]
}

/// A server on a fresh SQLite file, started once for all cases of the JWT fuzzers.
struct Server {
    issuer: String,
    snapshot: Arc<KeySnapshot>,
    /// A valid token per enabled algorithm, for mutation.
    tokens: Vec<String>,
    _dir: tempfile::TempDir,
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let env = vec![
            ("SIGNET_LISTEN".to_string(), "127.0.0.1:0".to_string()),
            (
                "SIGNET_DATA_DIR".to_string(),
                dir.path().display().to_string(),
            ),
        ];
        let config = Config::from_sources(None, env).expect("config");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let app = rt
            .block_on(Application::build(config, ServeOptions::default()))
            .expect("server builds");
        let state = app.state().clone();
        let snapshot = state.keys.snapshot();
        let issuer = state.config.issuer();
        let tokens = state
            .keys
            .enabled()
            .iter()
            .map(|alg| {
                let mut claims = serde_json::Map::new();
                claims.insert("sub".into(), "fuzz".into());
                claims.insert("aud".into(), "api".into());
                jwt::sign(&snapshot, &issuer, claims, *alg, 600, Utc::now())
                    .expect("signs")
                    .token
            })
            .collect();
        Server {
            issuer,
            snapshot,
            tokens,
            _dir: dir,
        }
    })
}

/// JSON header values an attacker would try, the real kids among them.
fn header_json(kids: Vec<String>) -> impl Strategy<Value = String> {
    let kid = prop_oneof![
        proptest::sample::select(kids).prop_map(serde_json::Value::String),
        kid_text().prop_map(serde_json::Value::String),
        Just(serde_json::Value::Null),
        any::<i64>().prop_map(serde_json::Value::from),
    ];
    let alg = prop_oneof![
        proptest::sample::select(vec![
            "none", "None", "NONE", "HS256", "HS512", "RS256", "PS256", "ES256", "EdDSA", "ES384",
            "", "rs256",
        ])
        .prop_map(|s| serde_json::Value::String(s.to_string())),
        ".{0,8}".prop_map(serde_json::Value::String),
        Just(serde_json::json!(["RS256"])),
    ];
    let extra = proptest::sample::select(vec![
        r#""jwk":{"kty":"oct","k":"AAAA"}"#,
        r#""jku":"http://evil.example/jwks""#,
        r#""x5u":"http://evil.example/x5u""#,
        r#""crit":["exp"]"#,
        r#""typ":"JWT""#,
        r#""cty":"JWT""#,
        r#""b64":false"#,
        "",
    ]);
    (kid, alg, extra).prop_map(|(kid, alg, extra)| {
        let mut h = format!(r#"{{"alg":{alg},"kid":{kid}"#);
        if !extra.is_empty() {
            h.push(',');
            h.push_str(extra);
        }
        h.push('}');
        h
    })
}

fn claims_json() -> impl Strategy<Value = String> {
    let exp = prop_oneof![
        Just("9999999999".to_string()),
        Just("-1".to_string()),
        Just("1e400".to_string()),
        Just("\"tomorrow\"".to_string()),
        Just("null".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
    ];
    let aud = prop_oneof![
        Just(r#""api""#.to_string()),
        Just(r#"["api","other"]"#.to_string()),
        Just("[]".to_string()),
        Just("7".to_string()),
    ];
    (exp, aud, ".{0,10}").prop_map(|(exp, aud, sub)| {
        let iss = &server().issuer;
        format!(
            r#"{{"iss":{},"exp":{exp},"aud":{aud},"sub":{}}}"#,
            serde_json::Value::String(iss.clone()),
            serde_json::Value::String(sub)
        )
    })
}

fn token_text() -> impl Strategy<Value = String> {
    let srv = server();
    let kids: Vec<String> = srv
        .snapshot
        .keys
        .iter()
        .map(|k| k.kid.as_str().to_string())
        .collect();
    let valid = proptest::sample::select(srv.tokens.clone());
    prop_oneof![
        // Forged header and claims, with a signature of a real token, of random bytes,
        // or none at all.
        (
            header_json(kids),
            claims_json(),
            valid.clone(),
            proptest::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(h, c, real, random)| {
                let real_sig = real.rsplit('.').next().unwrap_or_default().to_string();
                let sig = if random.len() % 3 == 0 {
                    String::new()
                } else if random.len() % 3 == 1 {
                    real_sig
                } else {
                    B64.encode(random)
                };
                format!("{}.{}.{sig}", B64.encode(h), B64.encode(c))
            }),
        // A real token with bytes flipped, cut, or doubled.
        (valid.clone(), any::<usize>(), any::<u8>()).prop_map(|(t, at, byte)| {
            let mut bytes = t.into_bytes();
            let i = at % bytes.len();
            bytes[i] = byte;
            String::from_utf8_lossy(&bytes).to_string()
        }),
        (valid.clone(), any::<usize>()).prop_map(|(t, at)| {
            let cut = at % (t.len() + 1);
            t.get(..cut).unwrap_or_default().to_string()
        }),
        valid.prop_map(|t| format!("{t}.{t}")),
        // Base64 of arbitrary JSON-ish text in each part.
        (".{0,60}", ".{0,60}", "[A-Za-z0-9_-]{0,90}").prop_map(|(h, c, s)| format!(
            "{}.{}.{s}",
            B64.encode(h),
            B64.encode(c)
        )),
        // Raw junk.
        ".{0,200}",
        "[A-Za-z0-9_.=+/-]{0,300}",
    ]
}

/// A `SIGNET_*` environment: a few settings with arbitrary values, some of them
/// fragments of valid ones.
fn env_pairs() -> impl Strategy<Value = Vec<(String, String)>> {
    let name = prop_oneof![
        proptest::sample::select(SETTINGS.to_vec()).prop_map(|s| s.to_string()),
        "[a-z_]{1,12}",
    ];
    let value = prop_oneof![
        duration_text(),
        cron_expr(),
        kid_text(),
        proptest::sample::select(vec![
            "127.0.0.1:0",
            "0.0.0.0:99999",
            "[::1]:0",
            "sqlite://",
            "sqlite:///../../etc/passwd",
            "postgres://u:p@h:0/db?sslmode=require",
            "mysql://x",
            "EdDSA,RS256,EdDSA",
            "HS256",
            "k1:AAAA",
            "k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            "10.0.0.0/33",
            "::/0",
            "http://",
            "https://example.com/a?b#c",
            "json",
            "critical",
            "0",
            "-1",
            "18446744073709551616",
        ])
        .prop_map(str::to_string),
        ".{0,30}",
    ];
    proptest::collection::vec((name, value), 0..6).prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(k, v)| (format!("SIGNET_{}", k.to_ascii_uppercase()), v))
            .collect()
    })
}

/// A TOML file: arbitrary text, or settings with values of every TOML type.
fn toml_text() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        ".{0,20}".prop_map(|s| toml::Value::String(s).to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| toml::Value::Float(f).to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        Just("[\"EdDSA\", 3, [\"x\"]]".to_string()),
        Just("{ a = 1 }".to_string()),
        Just("1979-05-27T07:32:00Z".to_string()),
        Just("\"\"\"\nmulti\n\"\"\"".to_string()),
    ];
    let key = prop_oneof![
        proptest::sample::select(SETTINGS.to_vec()).prop_map(|s| s.to_string()),
        "[a-z_]{1,10}",
        Just("\"quoted key\"".to_string()),
    ];
    prop_oneof![
        proptest::collection::vec((key, value), 0..8).prop_map(|lines| {
            lines
                .into_iter()
                .map(|(k, v)| format!("{k} = {v}\n"))
                .collect::<String>()
        }),
        ".{0,200}",
        Just("[section]\nlisten = 1\n[section]\n".to_string()),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn cron_parsers_never_panic(s in cron_expr(), now in instant(), handled in instant()) {
        let _ = CronSchedule::parse(&s);
        if let Ok(c) = CronSchedule::parse_stored(&s) {
            // The slot arithmetic the scheduler runs on whatever was stored.
            let _ = CronSchedule::parse_at(&s, now);
            let _ = c.next_after(now);
            let _ = c.upcoming(now, 5);
            let _ = c.latest_at_or_before(now);
            let _ = c.due(handled, now);
            let _ = c.to_string();
        }
    }

    #[test]
    fn retention_and_duration_parsers_never_panic(s in duration_text()) {
        if let Ok(r) = Retention::parse(&s) {
            // What parses displays as something that parses to the same.
            prop_assert_eq!(Retention::parse(&r.to_string()), Ok(r));
        }
    }

    #[test]
    fn kid_algorithm_and_email_parsers_never_panic(s in kid_text(), t in ".{0,40}") {
        if let Ok(kid) = Kid::parse(&s) {
            prop_assert_eq!(kid.as_str().len(), 43);
            prop_assert!(kid.as_str().bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        }
        let _ = Algorithm::parse(&t);
        let _ = AlgorithmList::parse(&t);
        let _ = RsaBits::parse(&t);
        let _ = Email::parse(&t);
    }

    #[test]
    fn jwt_header_and_verify_never_panic(token in token_text(), aud in prop_oneof![Just(None), Just(Some("api".to_string())), ".{0,8}".prop_map(Some)]) {
        let srv = server();
        let _ = jsonwebtoken::decode_header(&token);
        let verified = jwt::verify(&srv.snapshot, &srv.issuer, &token, aud.as_deref());
        // Only an unmodified token of ours can pass.
        if let jwt::Verified::Valid { .. } = verified {
            prop_assert!(srv.tokens.contains(&token), "accepted a forged token: {token}");
        }
    }

    #[test]
    fn config_from_env_never_panics(env in env_pairs()) {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut env = env;
        // Always an own data directory, so no case reads or writes the working directory.
        env.retain(|(k, _)| k != "SIGNET_DATA_DIR");
        env.push(("SIGNET_DATA_DIR".into(), dir.path().display().to_string()));
        if let Ok(c) = Config::from_sources(None, env) {
            let _ = c.describe();
            let _ = c.issuer();
        }
    }

    #[test]
    fn config_from_toml_never_panics(text in toml_text()) {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("signet.toml");
        std::fs::write(&file, &text).expect("write");
        let env = vec![("SIGNET_DATA_DIR".to_string(), dir.path().display().to_string())];
        if let Ok(c) = Config::from_sources(Some(&file), env) {
            let _ = c.describe();
        }
    }
}
