//! Admin accounts, sign-in, sessions and the checks in front of every changing server
//! function, against the real server on both backends.

use crate::helpers::{
    BACKENDS, Backend, TEST_PASSWORD, TestDb, UiClient, create_admin, encode, run_signet,
    signed_in, spawn_app, spawn_app_on, spawn_app_with,
};
use crate::keys::events_of;
use signet::domain::{KeyState, Role};
use signet::server::ServeOptions;
use signet::server::config::Config;

fn active_kid(app: &crate::helpers::TestApp, alg: &str) -> String {
    app.state
        .keys
        .snapshot()
        .keys
        .iter()
        .find(|k| k.alg.as_str() == alg && k.state == KeyState::Active)
        .map(|k| k.kid.to_string())
        .expect("an active key")
}

#[tokio::test]
async fn the_first_start_creates_one_admin_with_a_one_time_password() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let (email, password) = app.first_admin.clone().expect("first start made an admin");
        assert_eq!(email, "admin@localhost");
        assert!(password.len() >= 12);
        let admins = app.state.storage.list_admins().await.unwrap();
        assert_eq!(admins.len(), 1);
        assert!(admins[0].must_change_password);
        assert_eq!(admins[0].role, Role::Admin);
        // The password is stored only as an argon2id hash.
        assert!(
            admins[0]
                .password_hash
                .starts_with("$argon2id$v=19$m=19456,t=2,p=1$")
        );
        assert!(!admins[0].password_hash.contains(&password));

        // Signing in with it works, but only the password page is open until it is changed.
        let mut ui = UiClient::new(&app);
        let answer = ui.sign_in(&email, &password).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.json(), "/account/password");
        let page = ui.get("/config/jwks").await;
        assert_eq!(page.status, 303);
        let refused = ui.call("rotate_keys", "alg=").await;
        assert_eq!(refused.status, 403, "{}", refused.body);
        assert!(
            refused.body.contains("Choose a new password first"),
            "{}",
            refused.body
        );

        let short = ui
            .call(
                "change_password",
                &format!("current={}&new=short", encode(&password)),
            )
            .await;
        assert_eq!(short.status, 400);
        let changed = ui
            .call(
                "change_password",
                &format!(
                    "current={}&new={}",
                    encode(&password),
                    encode(TEST_PASSWORD)
                ),
            )
            .await;
        assert_eq!(changed.status, 200, "{}", changed.body);
        assert_eq!(ui.get("/config/jwks").await.status, 200);

        // A restart creates nobody and prints nothing.
        let db = app.stop().await;
        let again = spawn_app_on(db, ServeOptions { migrate: true })
            .await
            .unwrap_or_else(|(e, _)| panic!("{e}"));
        assert!(again.first_admin.is_none(), "{backend:?}");
        assert_eq!(again.state.storage.count_admins().await.unwrap(), 1);
    }
}

#[tokio::test]
async fn sign_in_refusals_look_alike_and_are_throttled() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        create_admin(&app, "ops@example.com", Role::Admin).await;
        let mut ui = UiClient::new(&app);

        let wrong = ui.sign_in("ops@example.com", "not the password").await;
        let unknown = ui.sign_in("nobody@example.com", "not the password").await;
        assert_eq!(wrong.status, 401);
        assert_eq!(unknown.status, 401);
        assert_eq!(
            wrong.body, unknown.body,
            "the answer must not tell whether the account exists"
        );
        assert!(ui.cookie.is_none());

        // Four more failures lock the account for a while, even for the right password.
        for _ in 0..4 {
            assert_eq!(
                ui.sign_in("ops@example.com", "wrong again").await.status,
                401
            );
        }
        let locked = ui.sign_in("ops@example.com", TEST_PASSWORD).await;
        assert_eq!(locked.status, 429, "{}", locked.body);
        assert!(locked.body.contains("try again in"), "{}", locked.body);
        // An unknown account is locked the same way after the same number of failures.
        for _ in 0..4 {
            ui.sign_in("nobody@example.com", "wrong").await;
        }
        let locked_unknown = ui.sign_in("nobody@example.com", "wrong").await;
        assert_eq!(locked_unknown.status, 429);

        let failed = events_of(&app, "admin.login_failed").await;
        assert_eq!(
            failed.len(),
            10,
            "{backend:?}: every checked failure is recorded"
        );
        assert!(failed.iter().all(|e| e.actor == "anonymous"));
        assert!(
            failed
                .iter()
                .all(|e| e.source.as_deref() == Some("127.0.0.1"))
        );
    }
}

#[tokio::test]
async fn the_address_is_throttled_across_accounts() {
    let app = spawn_app(Backend::Sqlite).await;
    create_admin(&app, "ops@example.com", Role::Admin).await;
    let mut ui = UiClient::new(&app);
    // Spread over many accounts (never more than 4 each), 20 failures lock the address.
    for i in 0..20 {
        let answer = ui
            .sign_in(&format!("user{}@example.com", i / 4), "wrong")
            .await;
        assert_eq!(answer.status, 401);
    }
    let answer = ui.sign_in("ops@example.com", TEST_PASSWORD).await;
    assert_eq!(answer.status, 429, "{}", answer.body);
}

#[tokio::test]
async fn session_cookies_are_http_only_strict_and_survive_a_restart() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let mut ui = signed_in(&app, "ops@example.com", Role::Admin).await;
        let answer = ui.sign_in("ops@example.com", TEST_PASSWORD).await;
        let cookie = answer
            .set_cookie
            .iter()
            .find(|c| c.starts_with("signet_session="))
            .expect("session cookie");
        assert!(cookie.contains("HttpOnly"), "{cookie}");
        assert!(cookie.contains("SameSite=Strict"), "{cookie}");
        // Served on plain-HTTP localhost: browsers would drop a Secure cookie.
        assert!(!cookie.contains("Secure"), "{cookie}");

        // The session lives in the database, so a new process accepts it.
        let db = app.stop().await;
        let app = spawn_app_on(db, ServeOptions { migrate: true })
            .await
            .unwrap_or_else(|(e, _)| panic!("{e}"));
        ui.base = app.url.clone();
        ui.origin = Some(app.url.clone());
        assert_eq!(ui.get("/config/jwks").await.status, 200, "{backend:?}");
        let me = ui.call("who_am_i", "").await;
        assert_eq!(me.json()["email"], "ops@example.com");

        // The database holds a hash of the session id, never the cookie's value.
        let id = ui
            .cookie
            .clone()
            .unwrap()
            .trim_start_matches("signet_session=")
            .to_string();
        let stored = sqlx_scalar(&app.db, "SELECT id FROM sessions").await;
        assert!(!stored.iter().any(|s| s.contains(&id)));

        // Signing out ends it everywhere.
        assert_eq!(ui.call("sign_out", "").await.status, 200);
        assert!(ui.cookie.is_none());
        assert_eq!(ui.call("who_am_i", "").await.body, "null");
        assert_eq!(events_of(&app, "admin.logout").await.len(), 1);
    }
}

async fn sqlx_scalar(db: &TestDb, sql: &str) -> Vec<String> {
    use sqlx::Connection as _;
    if db.is_postgres() {
        let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::query_scalar(sql).fetch_all(&mut c).await.unwrap()
    } else {
        let mut c = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
        sqlx::query_scalar(sql).fetch_all(&mut c).await.unwrap()
    }
}

#[tokio::test]
async fn a_stolen_session_value_is_useless_once_disabled_reset_or_stale() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut boss = signed_in(&app, "boss@example.com", Role::Admin).await;
    let mut ops = signed_in(&app, "ops@example.com", Role::Admin).await;
    assert_eq!(
        ops.call("who_am_i", "").await.json()["email"],
        "ops@example.com"
    );

    // Disabling ends the sessions at once.
    let target = app
        .state
        .storage
        .list_admins()
        .await
        .unwrap()
        .into_iter()
        .find(|a| a.email.as_str() == "ops@example.com")
        .unwrap();
    let off = boss
        .call(
            "set_admin_disabled",
            &format!("id={}&disabled=true", target.id),
        )
        .await;
    assert_eq!(off.status, 200, "{}", off.body);
    assert_eq!(ops.call("rotate_keys", "alg=").await.status, 401);
    // A disabled account cannot sign in, with the usual message.
    let refused = ops.sign_in("ops@example.com", TEST_PASSWORD).await;
    assert_eq!(refused.status, 401);
    // Nobody can disable themselves.
    let me = app
        .state
        .storage
        .list_admins()
        .await
        .unwrap()
        .into_iter()
        .find(|a| a.email.as_str() == "boss@example.com")
        .unwrap();
    let own = boss
        .call("set_admin_disabled", &format!("id={}&disabled=true", me.id))
        .await;
    assert_eq!(own.status, 409, "{}", own.body);

    // Re-enabled, then reset from the CLI: the old session is over.
    boss.call(
        "set_admin_disabled",
        &format!("id={}&disabled=false", target.id),
    )
    .await;
    let mut ops = UiClient::new(&app);
    assert_eq!(
        ops.sign_in("ops@example.com", TEST_PASSWORD).await.status,
        200
    );
    let env = app.db.env();
    let out = run_signet(&env, &["admin", "reset-password", "ops@example.com"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let otp = String::from_utf8(out.stdout).unwrap();
    assert_eq!(otp.lines().count(), 1, "the password alone on stdout");
    assert_eq!(ops.call("who_am_i", "").await.body, "null");
    let answer = ops.sign_in("ops@example.com", otp.trim()).await;
    assert_eq!(answer.json(), "/account/password");
}

#[tokio::test]
async fn sessions_end_when_idle_and_at_their_absolute_lifetime() {
    for (idle, lifetime) in [("2s", "1h"), ("1h", "2s")] {
        let db = TestDb::new(Backend::Sqlite).await;
        let mut env = db.env();
        env.push(("SIGNET_SESSION_IDLE".into(), idle.into()));
        env.push(("SIGNET_SESSION_LIFETIME".into(), lifetime.into()));
        let config = Config::from_sources(None, env);
        if idle == "1h" {
            // An idle time longer than the lifetime is refused.
            assert!(config.is_err());
            let mut env = db.env();
            env.push(("SIGNET_SESSION_IDLE".into(), "2s".into()));
            env.push(("SIGNET_SESSION_LIFETIME".into(), "2s".into()));
            let app = spawn_app_with(db, Config::from_sources(None, env).unwrap()).await;
            let mut ui = signed_in(&app, "ops@example.com", Role::Viewer).await;
            for _ in 0..3 {
                // Busy the whole time, yet the session ends after its lifetime.
                tokio::time::sleep(std::time::Duration::from_millis(900)).await;
                ui.call("who_am_i", "").await;
            }
            assert_eq!(ui.call("who_am_i", "").await.body, "null");
            continue;
        }
        let app = spawn_app_with(db, config.unwrap()).await;
        let mut ui = signed_in(&app, "ops@example.com", Role::Viewer).await;
        assert_eq!(
            ui.call("who_am_i", "").await.json()["email"],
            "ops@example.com"
        );
        tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
        assert_eq!(
            ui.call("who_am_i", "").await.body,
            "null",
            "idle session still valid"
        );
    }
}

/// Every server function that changes something, with a valid body.
fn changing_calls(kid: &str, admin_id: &str) -> Vec<(&'static str, String)> {
    vec![
        ("rotate_keys", "alg=".into()),
        ("rotate_and_revoke", "alg=EdDSA&reason=test".into()),
        ("revoke_key", format!("kid={kid}&reason=test")),
        (
            "save_schedule",
            "expression=0+0+4+*+*+*+*&retention=40d".into(),
        ),
        ("create_admin", "email=new%40example.com&role=viewer".into()),
        ("set_admin_disabled", format!("id={admin_id}&disabled=true")),
        ("create_token", "name=ci&scopes[0]=sign".into()),
        ("revoke_token", "id=0000000000000000".into()),
    ]
}

#[tokio::test]
async fn anonymous_viewer_and_foreign_origin_callers_change_nothing() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let kid = active_kid(&app, "EdDSA");
        let mut viewer = signed_in(&app, "viewer@example.com", Role::Viewer).await;
        let mut admin = signed_in(&app, "ops@example.com", Role::Admin).await;
        let first = app.state.storage.list_admins().await.unwrap();
        let admin_id = first
            .iter()
            .find(|a| a.email.as_str() == "admin@localhost")
            .map(|a| a.id.clone())
            .unwrap();
        let before_events = app.state.storage.audit_chain().await.unwrap().1;
        let before_keys = app.state.storage.list_keys().await.unwrap().len();

        let mut anonymous = UiClient::new(&app);
        let mut foreign = UiClient::new(&app);
        foreign.cookie = admin.cookie.clone();
        foreign.origin = Some("https://evil.example".into());
        let mut no_origin = UiClient::new(&app);
        no_origin.cookie = admin.cookie.clone();
        no_origin.origin = None;

        for (name, body) in changing_calls(&kid, &admin_id) {
            let a = anonymous.call(name, &body).await;
            assert_eq!(a.status, 401, "{backend:?} anonymous {name}: {}", a.body);
            let v = viewer.call(name, &body).await;
            assert_eq!(v.status, 403, "{backend:?} viewer {name}: {}", v.body);
            assert!(v.body.contains("viewer"), "{}", v.body);
            let f = foreign.call(name, &body).await;
            assert_eq!(
                f.status, 403,
                "{backend:?} foreign origin {name}: {}",
                f.body
            );
            assert!(f.body.contains("did not come from this site"), "{}", f.body);
            let n = no_origin.call(name, &body).await;
            assert_eq!(n.status, 403, "{backend:?} no origin {name}: {}", n.body);
        }
        // Nothing changed: no event, no key, no admin, no token.
        assert_eq!(
            app.state.storage.audit_chain().await.unwrap().1,
            before_events
        );
        assert_eq!(
            app.state.storage.list_keys().await.unwrap().len(),
            before_keys
        );
        assert_eq!(active_kid(&app, "EdDSA"), kid);
        assert_eq!(app.state.storage.list_admins().await.unwrap().len(), 3);
        assert!(
            app.state
                .storage
                .list_api_tokens()
                .await
                .unwrap()
                .is_empty()
        );

        // A viewer can read everything.
        for name in [
            "load_keys",
            "current_schedule",
            "list_admins",
            "list_tokens",
            "instance_status",
        ] {
            let r = viewer.call(name, "").await;
            assert_eq!(r.status, 200, "{backend:?} viewer reads {name}: {}", r.body);
            assert_eq!(
                anonymous.call(name, "").await.status,
                401,
                "anonymous reads {name}"
            );
        }

        // The same calls from the admin, from this site, do change things.
        let rotated = admin.call("rotate_keys", "alg=EdDSA").await;
        assert_eq!(rotated.status, 200, "{}", rotated.body);
        assert_ne!(active_kid(&app, "EdDSA"), kid);
        let events = events_of(&app, "keys.rotated").await;
        let last = events.first().unwrap();
        assert_eq!(last.actor, "ops@example.com");
        assert_eq!(last.trigger, "ui");
        let token = admin.call("create_token", "name=ci&scopes[0]=sign").await;
        assert_eq!(token.status, 200, "{}", token.body);
        assert!(token.json()["secret"].as_str().unwrap().starts_with("sgt_"));
    }
}

#[tokio::test]
async fn pages_send_anonymous_visitors_to_login_and_carry_security_headers() {
    let app = spawn_app(Backend::Sqlite).await;
    for path in [
        "/",
        "/config/jwks",
        "/config/schedule",
        "/events",
        "/settings",
    ] {
        let res = app.get(path).await;
        assert_eq!(res.status(), 303, "{path}");
        let location = res.headers()["location"].to_str().unwrap().to_string();
        assert_eq!(location, format!("/login?next={}", encode(path)), "{path}");
    }
    let login = app.get("/login").await;
    assert_eq!(login.status(), 200);
    let h = login.headers();
    let csp = h["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(csp.contains("'wasm-unsafe-eval'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert_eq!(h["x-frame-options"], "DENY");
    // The nonce in the policy is the one on the page's scripts, and changes every time.
    let nonce = csp
        .split("'nonce-")
        .nth(1)
        .and_then(|s| s.split('\'').next())
        .unwrap()
        .to_string();
    let html = login.text().await.unwrap();
    assert!(
        html.contains(&format!("nonce=\"{nonce}\"")),
        "page scripts lack the nonce"
    );
    let again = app.get("/login").await;
    assert!(
        !again.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains(&nonce)
    );
    // The JWKS and the API carry the basic headers too.
    let jwks = app.get("/.well-known/jwks.json").await;
    assert_eq!(jwks.headers()["x-content-type-options"], "nosniff");
}

#[tokio::test]
async fn the_cli_creates_admins_and_prints_only_the_password() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let env = app.db.env();
        let out = run_signet(
            &env,
            &["admin", "create", "Viewer@Example.com", "--role", "viewer"],
        )
        .await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let otp = String::from_utf8(out.stdout).unwrap();
        assert_eq!(otp.lines().count(), 1);
        let mut ui = UiClient::new(&app);
        let answer = ui.sign_in("viewer@example.com", otp.trim()).await;
        assert_eq!(answer.status, 200, "{}", answer.body);

        // With --password-stdin, nothing on stdout, and the rule applies.
        let mut cmd = tokio::process::Command::from(crate::helpers::signet_command(&env));
        let mut child = cmd
            .args(["admin", "create", "ops@example.com", "--password-stdin"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        {
            use tokio::io::AsyncWriteExt as _;
            let mut stdin = child.stdin.take().unwrap();
            stdin
                .write_all(format!("{TEST_PASSWORD}\n").as_bytes())
                .await
                .unwrap();
        }
        let out = child.wait_with_output().await.unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout.is_empty());
        let mut ui = UiClient::new(&app);
        assert_eq!(
            ui.sign_in("ops@example.com", TEST_PASSWORD).await.json(),
            "/config/jwks"
        );

        // A duplicate, a bad email and a short password are refused, changing nothing.
        let dup = run_signet(&env, &["admin", "create", "OPS@example.com"]).await;
        assert!(!dup.status.success());
        assert!(String::from_utf8_lossy(&dup.stderr).contains("already exists"));
        let bad = run_signet(&env, &["admin", "create", "not-an-email"]).await;
        assert!(!bad.status.success());
        let unknown = run_signet(&env, &["admin", "reset-password", "ghost@example.com"]).await;
        assert!(!unknown.status.success());
        assert_eq!(
            app.state.storage.count_admins().await.unwrap(),
            3,
            "{backend:?}"
        );
        assert_eq!(events_of(&app, "admin.created").await.len(), 3);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn parallel_guesses_do_not_slip_past_the_throttle() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        create_admin(&app, "ops@example.com", Role::Admin).await;
        let attempts = (0..12).map(|i| {
            let mut ui = UiClient::new(&app);
            async move {
                ui.sign_in("ops@example.com", &format!("guess {i}"))
                    .await
                    .status
            }
        });
        let statuses = futures_util::future::join_all(attempts).await;
        let checked = statuses.iter().filter(|s| s.as_u16() == 401).count();
        let throttled = statuses.iter().filter(|s| s.as_u16() == 429).count();
        assert_eq!(checked + throttled, 12, "{backend:?}: {statuses:?}");
        assert!(
            checked <= 5,
            "{backend:?}: {checked} passwords were checked: {statuses:?}"
        );
        assert_eq!(events_of(&app, "admin.login_failed").await.len(), checked);
        // The right password is refused too while the lock lasts.
        let mut ui = UiClient::new(&app);
        assert_eq!(
            ui.sign_in("ops@example.com", TEST_PASSWORD).await.status,
            429
        );
    }
}

#[tokio::test]
async fn guessing_the_current_password_is_throttled_too() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut ui = signed_in(&app, "ops@example.com", Role::Admin).await;
    let body = |current: &str| {
        format!(
            "current={}&new={}",
            encode(current),
            encode("a brand new password")
        )
    };
    for i in 0..5 {
        let wrong = ui
            .call("change_password", &body(&format!("guess {i}")))
            .await;
        assert_eq!(wrong.status, 400, "{}", wrong.body);
    }
    // Each wrong guess is on the record, under the signed-in admin.
    let failed = events_of(&app, "admin.login_failed").await;
    assert_eq!(failed.len(), 5);
    assert!(
        failed.iter().all(|e| e.actor.contains("ops@example.com")
            && e.details["why"] == "wrong current password (password change)"),
        "{failed:?}"
    );
    let locked = ui.call("change_password", &body(TEST_PASSWORD)).await;
    assert_eq!(locked.status, 429, "{}", locked.body);
    // Nothing changed: the old password still signs in once the lock is gone.
    app.db.execute("DELETE FROM login_throttle").await.unwrap();
    let mut fresh = UiClient::new(&app);
    assert_eq!(
        fresh.sign_in("ops@example.com", TEST_PASSWORD).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_admins_disabling_each_other_leave_one_enabled() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let mut boss = signed_in(&app, "boss@example.com", Role::Admin).await;
        let mut ops = signed_in(&app, "ops@example.com", Role::Admin).await;
        let id_of = |email: &'static str| {
            let storage = app.state.storage.clone();
            async move {
                storage
                    .list_admins()
                    .await
                    .unwrap()
                    .into_iter()
                    .find(|a| a.email.as_str() == email)
                    .unwrap()
                    .id
            }
        };
        let first = id_of("admin@localhost").await;
        let off = boss
            .call("set_admin_disabled", &format!("id={first}&disabled=true"))
            .await;
        assert_eq!(off.status, 200, "{}", off.body);
        let (boss_id, ops_id) = (
            id_of("boss@example.com").await,
            id_of("ops@example.com").await,
        );
        let (disable_ops, disable_boss) = (
            format!("id={ops_id}&disabled=true"),
            format!("id={boss_id}&disabled=true"),
        );
        let (a, b) = tokio::join!(
            boss.call("set_admin_disabled", &disable_ops),
            ops.call("set_admin_disabled", &disable_boss),
        );
        let enabled = app
            .state
            .storage
            .list_admins()
            .await
            .unwrap()
            .iter()
            .filter(|a| a.role == Role::Admin && a.disabled_at.is_none())
            .count();
        assert_eq!(enabled, 1, "{backend:?}: {} / {}", a.body, b.body);
        let mut statuses = [a.status.as_u16(), b.status.as_u16()];
        statuses.sort_unstable();
        // One wins; the other is refused (409), or finds its own session ended (401).
        assert_eq!(statuses[0], 200, "{backend:?}: {} / {}", a.body, b.body);
        assert!(
            matches!(statuses[1], 401 | 409),
            "{backend:?}: {statuses:?}"
        );
    }
}

/// A server behind a trusted proxy (the test client), so each `UiClient` can sign in from
/// the address its `forwarded_for` names.
async fn spawn_behind_proxy(backend: Backend) -> crate::helpers::TestApp {
    let db = TestDb::new(backend).await;
    let mut env = db.env();
    env.push(("SIGNET_TRUSTED_PROXIES".into(), "127.0.0.1".into()));
    let config = Config::from_sources(None, env).expect("valid config");
    spawn_app_with(db, config).await
}

fn client_at(app: &crate::helpers::TestApp, address: &str) -> UiClient {
    let mut ui = UiClient::new(app);
    ui.forwarded_for = Some(address.to_string());
    ui
}

#[tokio::test(flavor = "multi_thread")]
async fn an_attacker_elsewhere_cannot_lock_the_owner_out() {
    for backend in BACKENDS {
        let app = spawn_behind_proxy(backend).await;
        create_admin(&app, "ops@example.com", Role::Admin).await;

        // One address guessing: after 5 failures that (account, address) pair is locked,
        // even for the right password.
        let mut attacker = client_at(&app, "203.0.113.7");
        let first = attacker.sign_in("ops@example.com", "guess").await;
        assert_eq!(first.status, 401, "{}", first.body);
        for i in 0..4 {
            let answer = attacker
                .sign_in("ops@example.com", &format!("guess {i}"))
                .await;
            assert_eq!(answer.status, 401, "{backend:?}: {}", answer.body);
            assert_eq!(answer.body, first.body, "every refusal reads the same");
        }
        let locked = attacker.sign_in("ops@example.com", TEST_PASSWORD).await;
        assert_eq!(locked.status, 429, "{backend:?}: {}", locked.body);
        assert!(locked.body.contains("try again in"), "{}", locked.body);

        // The owner, from another address, with the right password, gets in.
        let mut owner = client_at(&app, "198.51.100.1");
        let answer = owner.sign_in("ops@example.com", TEST_PASSWORD).await;
        assert_eq!(answer.status, 200, "{backend:?}: {}", answer.body);

        // The attacker's address is locked as a whole after 20 failures, across accounts.
        for i in 0..15 {
            let answer = attacker
                .sign_in(&format!("user{}@example.com", i / 4), "wrong")
                .await;
            assert_eq!(answer.status, 401, "{backend:?} #{i}: {}", answer.body);
        }
        let address_locked = attacker.sign_in("someone@example.com", "wrong").await;
        assert_eq!(
            address_locked.status, 429,
            "{backend:?}: {}",
            address_locked.body
        );

        // Spraying the account from many addresses only slows it down: the owner from a
        // clean address still gets in, after a delay capped at a few seconds.
        let sprays = (0..12).map(|i| {
            let mut ui = client_at(&app, &format!("192.0.2.{}", 10 + i / 2));
            async move {
                ui.sign_in("ops@example.com", &format!("spray {i}"))
                    .await
                    .status
            }
        });
        let statuses = futures_util::future::join_all(sprays).await;
        assert!(
            statuses.iter().all(|s| s.as_u16() == 401),
            "{backend:?}: {statuses:?}"
        );
        let mut owner = client_at(&app, "198.51.100.2");
        let started = std::time::Instant::now();
        let answer = owner.sign_in("ops@example.com", TEST_PASSWORD).await;
        let waited = started.elapsed();
        assert_eq!(answer.status, 200, "{backend:?}: {}", answer.body);
        assert!(
            waited >= std::time::Duration::from_secs(2)
                && waited < std::time::Duration::from_secs(6),
            "{backend:?}: the owner waited {waited:?}"
        );
        eprintln!("{backend:?}: owner signed in after {waited:?} while the account was sprayed");

        // Every checked failure is an admin.login_failed event from its address.
        let failed = events_of(&app, "admin.login_failed").await;
        assert_eq!(failed.len(), 5 + 15 + 12, "{backend:?}");
        assert!(
            failed
                .iter()
                .any(|e| e.source.as_deref() == Some("203.0.113.7"))
        );
    }
}

#[tokio::test]
async fn resetting_the_password_lifts_the_accounts_throttle() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        create_admin(&app, "ops@example.com", Role::Admin).await;
        let mut ui = UiClient::new(&app);
        for _ in 0..5 {
            assert_eq!(ui.sign_in("ops@example.com", "wrong").await.status, 401);
        }
        assert_eq!(
            ui.sign_in("ops@example.com", TEST_PASSWORD).await.status,
            429
        );
        let out = run_signet(
            &app.db.env(),
            &["admin", "reset-password", "OPS@example.com"],
        )
        .await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("expires in 24 hours"), "{stderr}");
        // No counter or lock of the account is left.
        let left = sqlx_scalar(
            &app.db,
            "SELECT key FROM login_throttle WHERE key LIKE '%ops@example.com%'",
        )
        .await;
        assert!(left.is_empty(), "{backend:?}: {left:?}");
        let otp = String::from_utf8(out.stdout).unwrap();
        let answer = ui.sign_in("ops@example.com", otp.trim()).await;
        assert_eq!(answer.status, 200, "{backend:?}: {}", answer.body);
    }
}

#[tokio::test]
async fn control_characters_in_the_credentials_read_like_any_failure() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        create_admin(&app, "ops@example.com", Role::Admin).await;
        let mut ui = UiClient::new(&app);
        let wrong = ui.sign_in("ops@example.com", "not the password").await;
        assert_eq!(wrong.status, 401);
        let cases: &[(&str, &str)] = &[
            ("ops@example.com\0", TEST_PASSWORD),
            ("\0", "x"),
            ("ops\0@example.com", TEST_PASSWORD),
            ("ops\u{1}@example.com", "x"),
            ("ops@exa\tmple.com", "x"),
            ("\u{7f}\u{9b}@example.com", "x"),
            ("ops@example.com", "correct horse\0battery staple"),
            ("ops@example.com", "\0\u{1}\u{1b}[31m"),
        ];
        for (email, password) in cases {
            let answer = ui.sign_in(email, password).await;
            assert_eq!(
                (answer.status.as_u16(), &answer.body),
                (401, &wrong.body),
                "{backend:?}: {email:?} / {password:?}"
            );
        }
        let failed = events_of(&app, "admin.login_failed").await;
        assert_eq!(failed.len(), 1 + cases.len(), "{backend:?}");
        // Still nobody else got in, and the owner still does.
        assert_eq!(
            ui.sign_in("ops@example.com", TEST_PASSWORD).await.status,
            200
        );
    }
}

#[tokio::test]
async fn one_time_passwords_expire_after_24_hours() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let env = app.db.env();
        // The first start's one-time password, and a new one, expire a day after issue.
        let first = app
            .state
            .storage
            .list_admins()
            .await
            .unwrap()
            .remove(0)
            .password_expires_at
            .expect("a one-time password expires");
        let day = chrono::Duration::hours(24);
        let now = chrono::Utc::now();
        assert!(first > now + day - chrono::Duration::minutes(5) && first <= now + day);

        let out = run_signet(
            &env,
            &["admin", "create", "viewer@example.com", "--role", "viewer"],
        )
        .await;
        assert!(out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("expires in 24 hours"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let otp = String::from_utf8(out.stdout).unwrap().trim().to_string();

        // Past its expiry, the right one-time password is refused, saying why.
        app.db
            .execute(
                "UPDATE admins SET password_expires_at = '2000-01-01T00:00:00+00:00' \
                 WHERE email = 'viewer@example.com'",
            )
            .await
            .unwrap();
        let mut ui = UiClient::new(&app);
        let expired = ui.sign_in("viewer@example.com", &otp).await;
        assert_eq!(expired.status, 401, "{backend:?}: {}", expired.body);
        assert!(expired.body.contains("expired"), "{}", expired.body);
        assert!(
            expired
                .body
                .contains("signet admin reset-password viewer@example.com"),
            "{}",
            expired.body
        );
        assert!(ui.cookie.is_none());
        let failed = events_of(&app, "admin.login_failed").await;
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].details["why"], "one-time password expired");
        // A wrong password for that account still gets the plain refusal.
        let wrong = ui.sign_in("viewer@example.com", "not it at all").await;
        assert_eq!(wrong.status, 401);
        assert!(!wrong.body.contains("expired"), "{}", wrong.body);

        // A fresh one (an admin resets it) works.
        let out = run_signet(&env, &["admin", "reset-password", "viewer@example.com"]).await;
        assert!(out.status.success());
        let otp = String::from_utf8(out.stdout).unwrap();
        let answer = ui.sign_in("viewer@example.com", otp.trim()).await;
        assert_eq!(answer.status, 200, "{backend:?}: {}", answer.body);
        assert_eq!(answer.json(), "/account/password");
        // A chosen password never expires.
        let changed = ui
            .call(
                "change_password",
                &format!(
                    "current={}&new={}",
                    encode(otp.trim()),
                    encode(TEST_PASSWORD)
                ),
            )
            .await;
        assert_eq!(changed.status, 200, "{}", changed.body);
        let email = signet::domain::Email::parse("viewer@example.com").unwrap();
        let row = app
            .state
            .storage
            .find_admin_by_email(&email)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.password_expires_at, None);

        // The Settings page says so when it shows a new one.
        let mut admin = signed_in(&app, "ops@example.com", Role::Admin).await;
        let created = admin
            .call("create_admin", "email=new%40example.com&role=viewer")
            .await;
        assert_eq!(created.status, 200, "{}", created.body);
        assert!(
            created.body.contains("expires in 24 hours"),
            "{}",
            created.body
        );
    }
}
