//! The admin UI's server functions and HTTP routes as a browser calls them: key actions,
//! schedule edits, the events page (pages, filters, export, live tail) and PEM downloads.

use crate::helpers::{BACKENDS, Backend, TestApp, UiClient, encode, signed_in, spawn_app};
use signet::domain::audit::{Level, Trigger};
use signet::domain::{KeyState, Role};
use signet::server::audit::NewEvent;

async fn seed_events(app: &TestApp, n: usize) {
    for i in 0..n {
        let kind = if i % 3 == 0 {
            "token.created"
        } else {
            "schedule.changed"
        };
        app.state
            .storage
            .append_event(&NewEvent {
                level: if i % 10 == 0 {
                    Level::Warning
                } else {
                    Level::Info
                },
                kind,
                actor: format!("seed{}", i % 2),
                trigger: Trigger::Cli,
                source: None,
                kids: Vec::new(),
                reason: None,
                details: serde_json::json!({ "i": i }),
            })
            .await
            .unwrap();
    }
}

fn ids(page: &serde_json::Value) -> Vec<i64> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect()
}

/// Every event the events page lists for `filter`, following its cursor to the end.
async fn every_page(ui: &mut UiClient, filter: &str) -> Vec<serde_json::Value> {
    let mut events = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = ui
            .call("list_events_page", &format!("{filter}{cursor}"))
            .await;
        assert_eq!(page.status, 200, "{}", page.body);
        let page = page.json();
        events.extend(page["events"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_i64() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => return events,
        }
    }
}

#[tokio::test]
async fn event_pages_follow_the_cursor_and_the_filters() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        seed_events(&app, 130).await;
        let mut ui = signed_in(&app, "viewer@example.com", Role::Viewer).await;
        let filter = "filter[level]=&filter[kind]=token.created&filter[actor]=seed0&filter[since]=&filter[until]=";

        // seed0 writes even i; token.created is i % 3 == 0: i in {0, 6, 12, ...}: 22 events.
        let events = every_page(&mut ui, filter).await;
        for e in &events {
            assert_eq!(e["kind"], "token.created");
            assert_eq!(e["actor"], "seed0");
        }
        let seen: Vec<i64> = events.iter().map(|e| e["id"].as_i64().unwrap()).collect();
        assert_eq!(seen.len(), 22, "{backend:?}");
        assert!(
            seen.windows(2).all(|w| w[0] > w[1]),
            "newest first, no repeats"
        );

        // Unfiltered: 50 per page, and the pages meet without gap or overlap.
        let all = "filter[level]=&filter[kind]=&filter[actor]=&filter[since]=&filter[until]=";
        let p1 = ui.call("list_events_page", all).await.json();
        let c = p1["next_cursor"].as_i64().unwrap();
        let p2 = ui
            .call("list_events_page", &format!("{all}&cursor={c}"))
            .await
            .json();
        let (a, b) = (ids(&p1), ids(&p2));
        assert_eq!(a.len(), 50);
        assert_eq!(*a.last().unwrap(), c);
        assert_eq!(b[0], c - 1);

        // A time window pages by (at, id) on its index: every event once, newest first,
        // the same as the unfiltered pages.
        let window = "filter[level]=&filter[kind]=&filter[actor]=&filter[since]=2000-01-01T00:00&filter[until]=2999-01-01T00:00";
        let mut pages = Vec::new();
        for filter in [window, all] {
            let events = every_page(&mut ui, filter).await;
            pages.push(
                events
                    .iter()
                    .map(|e| e["id"].as_i64().unwrap())
                    .collect::<Vec<_>>(),
            );
        }
        assert!(pages[0].len() > 130, "{backend:?}: {}", pages[0].len());
        assert_eq!(pages[0], pages[1], "{backend:?}");

        // A level filter, and a time window that excludes everything.
        let warn = ui
            .call(
                "list_events_page",
                "filter[level]=warning&filter[kind]=&filter[actor]=&filter[since]=&filter[until]=",
            )
            .await
            .json();
        assert_eq!(ids(&warn).len(), 13);
        let none = ui
            .call("list_events_page", "filter[level]=&filter[kind]=&filter[actor]=&filter[since]=2999-01-01T00:00&filter[until]=")
            .await
            .json();
        assert!(ids(&none).is_empty());
        let bad = ui
            .call(
                "list_events_page",
                "filter[level]=loud&filter[kind]=&filter[actor]=&filter[since]=&filter[until]=",
            )
            .await;
        assert_eq!(bad.status, 400, "{}", bad.body);
    }
}

#[tokio::test]
async fn exports_hold_the_whole_filtered_view() {
    let app = spawn_app(Backend::Sqlite).await;
    seed_events(&app, 2100).await;
    let mut ui = signed_in(&app, "viewer@example.com", Role::Viewer).await;

    let csv = ui
        .get("/events/export?format=csv&kind=schedule.changed")
        .await;
    assert_eq!(csv.status, 200);
    let lines: Vec<&str> = csv.body.lines().collect();
    assert_eq!(
        lines[0],
        "id,at,level,kind,actor,trigger,source,kids,reason,details"
    );
    assert_eq!(lines.len() - 1, 1400, "every page of the filtered view");
    assert!(lines[1..].iter().all(|l| l.contains(",schedule.changed,")));

    let json = ui.get("/events/export?format=json&actor=seed1").await;
    assert_eq!(json.status, 200);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&json.body).unwrap();
    assert_eq!(rows.len(), 1050);
    assert!(rows.iter().all(|r| r["actor"] == "seed1"));
    assert!(
        rows.windows(2)
            .all(|w| w[0]["id"].as_i64() > w[1]["id"].as_i64())
    );
    // Nothing of the hash chain's internals leaks into the export.
    assert!(rows[0].get("hash").is_none());

    assert_eq!(ui.get("/events/export?format=xml").await.status, 400);
    let mut anonymous = crate::helpers::UiClient::new(&app);
    assert_eq!(anonymous.get("/events/export?format=csv").await.status, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_live_tail_streams_events_made_elsewhere() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let ui = signed_in(&app, "viewer@example.com", Role::Viewer).await;
        let newest = app
            .state
            .storage
            .list_events(&signet::server::storage::EventQuery {
                limit: 1,
                ..Default::default()
            })
            .await
            .unwrap()[0]
            .id;
        let mut stream = ui
            .get_raw(&format!("/events/stream?kind=keys.rotated&after={newest}"))
            .await;
        assert_eq!(stream.status(), 200);
        assert_eq!(stream.headers()["content-type"], "text/event-stream");

        // An event of another kind is filtered out; a rotation by the CLI comes through.
        seed_events(&app, 1).await;
        let out = crate::helpers::run_signet(&app.db.env(), &["rotate", "--alg", "EdDSA"]).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        let mut text = String::new();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while !text.contains("keys.rotated") {
            let chunk = tokio::time::timeout_at(deadline, stream.chunk())
                .await
                .expect("the rotation arrives within 10 s")
                .unwrap()
                .expect("stream open");
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        assert!(text.contains("event: audit"), "{text}");
        assert!(!text.contains("token.created"), "{text}");
        assert!(text.contains("cli:"), "{backend:?}: {text}");
    }
}

#[tokio::test]
async fn the_jwks_page_actions_change_the_published_set() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let mut ui = signed_in(&app, "ops@example.com", Role::Admin).await;
        let page = ui.call("load_keys", "").await.json();
        let active = |page: &serde_json::Value, alg: &str| {
            page["keys"]
                .as_array()
                .unwrap()
                .iter()
                .find(|k| k["alg"] == alg && k["state"] == "active")
                .map(|k| k["kid"].as_str().unwrap().to_string())
                .unwrap()
        };
        let old = active(&page, "RS256");
        let jwk = page["keys"].as_array().unwrap()[0]["jwk"]
            .as_str()
            .unwrap()
            .to_string();
        for private in ["\"d\"", "\"p\"", "\"q\"", "\"dp\"", "\"dq\"", "\"qi\""] {
            assert!(!jwk.contains(private));
        }

        // Rotate one algorithm: the old key shows as rotated and stays published.
        let r = ui.call("rotate_keys", "alg=RS256").await;
        assert_eq!(r.status, 200, "{}", r.body);
        let page = ui.call("load_keys", "").await.json();
        let new = active(&page, "RS256");
        assert_ne!(new, old);
        let old_row = page["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == old.as_str())
            .unwrap();
        assert_eq!(old_row["state"], "rotated");
        let jwks: serde_json::Value = app
            .get("/.well-known/jwks.json")
            .await
            .json()
            .await
            .unwrap();
        let published: Vec<&str> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        assert!(published.contains(&old.as_str()) && published.contains(&new.as_str()));

        // Revoke needs a reason; with one, the key leaves the JWKS at once.
        let no_reason = ui.call("revoke_key", &format!("kid={old}&reason=+")).await;
        assert_eq!(no_reason.status, 400);
        let revoked = ui
            .call(
                "revoke_key",
                &format!("kid={old}&reason={}", encode("leaked in a log")),
            )
            .await;
        assert_eq!(revoked.status, 200, "{}", revoked.body);
        let jwks: serde_json::Value = app
            .get("/.well-known/jwks.json")
            .await
            .json()
            .await
            .unwrap();
        assert!(!jwks.to_string().contains(&old));
        let again = ui
            .call("revoke_key", &format!("kid={old}&reason=twice"))
            .await;
        assert_eq!(again.status, 409, "{}", again.body);

        // Rotate and revoke: the active and next EdDSA keys go, fresh ones come.
        let before: Vec<String> = app
            .state
            .keys
            .snapshot()
            .keys
            .iter()
            .filter(|k| {
                k.alg.as_str() == "EdDSA" && matches!(k.state, KeyState::Active | KeyState::Next)
            })
            .map(|k| k.kid.to_string())
            .collect();
        let rr = ui
            .call("rotate_and_revoke", "alg=EdDSA&reason=compromise+drill")
            .await;
        assert_eq!(rr.status, 200, "{}", rr.body);
        let jwks: serde_json::Value = app
            .get("/.well-known/jwks.json")
            .await
            .json()
            .await
            .unwrap();
        for kid in &before {
            assert!(
                !jwks.to_string().contains(kid.as_str()),
                "{backend:?}: {kid} still published"
            );
        }
        let revoked_events = crate::keys::events_of(&app, "keys.revoked").await;
        assert_eq!(
            revoked_events[0].reason.as_deref(),
            Some("compromise drill")
        );
        assert_eq!(revoked_events[0].actor, "ops@example.com");

        // Bad input: an unknown algorithm and kid, with nothing changed.
        assert_eq!(ui.call("rotate_keys", "alg=HS256").await.status, 400);
        assert_eq!(
            ui.call("revoke_key", "kid=not*a*kid&reason=x").await.status,
            400
        );
    }
}

#[tokio::test]
async fn schedule_edits_are_checked_and_recorded() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut ui = signed_in(&app, "ops@example.com", Role::Admin).await;
    let invalid = ui
        .call("save_schedule", "expression=0+30+3+1+*+*&retention=30d")
        .await;
    assert_eq!(invalid.status, 400, "{}", invalid.body);
    let short = ui
        .call("save_schedule", "expression=0+0+4+*+*+*+*&retention=30m")
        .await;
    assert_eq!(short.status, 400, "{}", short.body);
    assert!(short.body.contains("longer"), "{}", short.body);
    assert!(
        crate::keys::events_of(&app, "schedule.changed")
            .await
            .is_empty()
    );

    let ok = ui
        .call("save_schedule", "expression=0+0+4+*+*+Mon+*&retention=45d")
        .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let view = ok.json();
    assert_eq!(view["expression"], "0 0 4 * * Mon *");
    assert_eq!(view["retention"], "45d");
    assert_eq!(view["next"].as_array().unwrap().len(), 5);
    let events = crate::keys::events_of(&app, "schedule.changed").await;
    assert_eq!(events[0].actor, "ops@example.com");
}

#[tokio::test]
async fn public_keys_download_as_pem() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut ui = signed_in(&app, "viewer@example.com", Role::Viewer).await;
    let kid = app.state.keys.snapshot().keys[0].kid.to_string();
    let pem = ui.get(&format!("/config/jwks/{kid}/public.pem")).await;
    assert_eq!(pem.status, 200);
    assert!(
        pem.body.starts_with("-----BEGIN PUBLIC KEY-----\n"),
        "{}",
        pem.body
    );
    assert!(!pem.body.contains("PRIVATE"));
    assert_eq!(
        ui.get("/config/jwks/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA/public.pem")
            .await
            .status,
        404
    );
    let mut anonymous = crate::helpers::UiClient::new(&app);
    assert_eq!(
        anonymous
            .get(&format!("/config/jwks/{kid}/public.pem"))
            .await
            .status,
        401
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_live_tail_delivers_a_burst_in_order_and_ends_at_sign_out() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let mut ui = signed_in(&app, "viewer@example.com", Role::Viewer).await;
        let mut stream = ui.get_raw("/events/stream?kind=schedule.changed").await;
        assert_eq!(stream.status(), 200);
        // More than one read's worth arrives while the stream is open.
        seed_events(&app, 450).await;
        let expected = 300; // i % 3 != 0 of 0..450

        let mut text = String::new();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        while text.matches("event: audit").count() < expected {
            let chunk = tokio::time::timeout_at(deadline, stream.chunk())
                .await
                .expect("the burst arrives within 20 s")
                .unwrap()
                .expect("stream open");
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        let ids: Vec<i64> = text
            .lines()
            .filter_map(|l| l.strip_prefix("id: "))
            .map(|v| v.parse().unwrap())
            .collect();
        assert_eq!(ids.len(), expected, "{backend:?}");
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "{backend:?}: oldest first, none twice"
        );

        // Signing out elsewhere (same session) ends the stream; the session does not
        // come back.
        let mut other = crate::helpers::UiClient::new(&app);
        other.cookie = ui.cookie.clone();
        assert_eq!(other.call("sign_out", "").await.status, 200);
        let ended = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while let Ok(Some(_)) = stream.chunk().await {}
        })
        .await;
        assert!(
            ended.is_ok(),
            "{backend:?}: the stream outlived the session"
        );
        assert_eq!(ui.call("who_am_i", "").await.body, "null");
        let sessions = app
            .state
            .storage
            .load_session("no-such-session", chrono::Utc::now())
            .await
            .unwrap();
        assert!(sessions.is_none());
        let revived = app
            .state
            .storage
            .save_session(
                "gone",
                "{}",
                chrono::Utc::now() + chrono::Duration::hours(1),
                false,
            )
            .await
            .unwrap();
        assert!(!revived, "saving a deleted session must not recreate it");
    }
}
