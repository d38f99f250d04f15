//! Limits of the events page's live tail and export: one shared poller per instance,
//! caps on open streams, streams that end at shutdown, and exports that page in one
//! direction.

use crate::helpers::{
    BACKENDS, Backend, TEST_PASSWORD, TestApp, TestDb, UiClient, create_admin, signed_in,
    signet_command, spawn_app,
};
use signet::domain::Role;
use signet::domain::audit::{Level, Trigger};
use signet::server::audit::NewEvent;
use signet::server::events as live;
use std::time::Duration;

async fn seed(app: &TestApp, n: usize) {
    for i in 0..n {
        app.state
            .storage
            .append_event(&NewEvent {
                level: Level::Info,
                kind: "schedule.changed",
                actor: "seed".into(),
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

async fn newest_id(app: &TestApp) -> i64 {
    app.state
        .storage
        .list_events(&signet::server::storage::EventQuery {
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap()[0]
        .id
}

/// Another signed-in session of the same admin.
async fn another_session(app: &TestApp, email: &str) -> UiClient {
    let mut ui = UiClient::new(app);
    let answer = ui.sign_in(email, TEST_PASSWORD).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    ui
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_gets_429_past_its_streams_and_the_instance_past_its_own() {
    let app = spawn_app(Backend::Sqlite).await;
    let ui = signed_in(&app, "viewer@example.com", Role::Viewer).await;
    let mut open = Vec::new();
    for _ in 0..live::PER_SESSION {
        let s = ui.get_raw("/events/stream").await;
        assert_eq!(s.status(), 200);
        open.push(s);
    }
    let refused = ui.get_raw("/events/stream").await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "too_many_streams");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("for this session"), "{message}");
    assert!(message.contains(&format!("at most {}", live::PER_SESSION)));

    // Another session still gets its own.
    let other = another_session(&app, "viewer@example.com").await;
    let s = other.get_raw("/events/stream").await;
    assert_eq!(s.status(), 200);
    open.push(s);

    // The instance's cap counts every stream: fill it up to one short.
    let mut held = Vec::new();
    while app.state.tail.streams() < live::PER_INSTANCE - 1 {
        held.push(
            app.state
                .tail
                .open(&format!("elsewhere {}", held.len()))
                .unwrap(),
        );
    }
    let third = another_session(&app, "viewer@example.com").await;
    let last = third.get_raw("/events/stream").await;
    assert_eq!(last.status(), 200);
    open.push(last);
    let refused = third.get_raw("/events/stream").await;
    assert_eq!(refused.status(), 429);
    let body: serde_json::Value = refused.json().await.unwrap();
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("on this server"), "{message}");
    assert!(message.contains(&format!("at most {}", live::PER_INSTANCE)));

    // A freed place can be taken again.
    held.pop();
    let again = third.get_raw("/events/stream").await;
    assert_eq!(again.status(), 200);
}

/// Reads a stream until `n` audit events arrived; returns their ids.
async fn read_ids(stream: &mut reqwest::Response, n: usize) -> Vec<i64> {
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while text.matches("event: audit").count() < n {
        let chunk = tokio::time::timeout_at(deadline, stream.chunk())
            .await
            .expect("the events arrive within 20 s")
            .unwrap()
            .expect("stream open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    text.lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .map(|v| v.parse().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_poller_reads_once_a_second_for_every_stream() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        create_admin(&app, "viewer@example.com", Role::Viewer).await;
        let mut sessions = Vec::new();
        for _ in 0..3 {
            sessions.push(another_session(&app, "viewer@example.com").await);
        }
        let before = newest_id(&app).await;
        // Nine streams over three sessions.
        let mut streams = Vec::new();
        for ui in &sessions {
            for _ in 0..3 {
                let s = ui
                    .get_raw(&format!(
                        "/events/stream?kind=schedule.changed&after={before}"
                    ))
                    .await;
                assert_eq!(s.status(), 200);
                streams.push(s);
            }
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let start = app.state.tail.polls();
        let t0 = std::time::Instant::now();
        seed(&app, 20).await;
        // Every stream gets every new event, in order, once.
        for s in &mut streams {
            let ids = read_ids(s, 20).await;
            assert_eq!(
                ids,
                ((before + 1)..=(before + 20)).collect::<Vec<_>>(),
                "{backend:?}"
            );
        }
        tokio::time::sleep(Duration::from_secs(4).saturating_sub(t0.elapsed())).await;
        let polls = app.state.tail.polls() - start;
        let secs = t0.elapsed().as_secs_f64();
        eprintln!("{backend:?}: {polls} poller reads in {secs:.1} s for 9 streams");
        assert!(
            polls as f64 <= secs + 1.0,
            "{backend:?}: {polls} reads in {secs:.1} s for 9 streams"
        );
        assert!(
            polls >= 2,
            "{backend:?}: the poller is not polling ({polls})"
        );
        assert_eq!(app.state.tail.streams(), 9);
    }
}

#[tokio::test]
async fn the_poller_stops_when_the_last_stream_closes() {
    let app = spawn_app(Backend::Sqlite).await;
    let slot = app.state.tail.open("only").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(app.state.tail.polls() >= 1);
    drop(slot);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let idle = app.state.tail.polls();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(app.state.tail.polls(), idle, "reads with no stream open");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_ends_open_streams_and_the_server_exits() {
    let db = TestDb::new(Backend::Sqlite).await;
    let env = db.env();
    let mut create = tokio::process::Command::from(signet_command(&env));
    create
        .args([
            "admin",
            "create",
            "viewer@example.com",
            "--role",
            "viewer",
            "--password-stdin",
        ])
        .stdin(std::process::Stdio::piped());
    let mut child = create.spawn().unwrap();
    {
        use tokio::io::AsyncWriteExt as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(format!("{TEST_PASSWORD}\n").as_bytes())
            .await
            .unwrap();
    }
    assert!(child.wait().await.unwrap().success());

    let mut server = signet_command(&env)
        .arg("serve")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = server.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        use std::io::BufRead as _;
        let mut reader = std::io::BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        line
    })
    .await
    .unwrap();
    let url = line
        .trim()
        .strip_prefix("Signet is running at ")
        .unwrap_or_else(|| panic!("serve did not start: {line}"))
        .to_string();
    let mut ui = UiClient::at(&url);
    assert_eq!(
        ui.sign_in("viewer@example.com", TEST_PASSWORD).await.status,
        200
    );
    let mut streams = Vec::new();
    for _ in 0..2 {
        let s = ui.get_raw("/events/stream").await;
        assert_eq!(s.status(), 200);
        streams.push(s);
    }

    let pid = server.id().to_string();
    let t0 = std::time::Instant::now();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = loop {
        if let Some(status) = server.try_wait().unwrap() {
            break status;
        }
        if t0.elapsed() > Duration::from_secs(5) {
            let _ = server.kill();
            panic!("serve still running 5 s after SIGTERM with open streams");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("serve exited {:?} after SIGTERM", t0.elapsed());
    assert!(status.success(), "{status:?}");
    for s in &mut streams {
        // The stream ended (cleanly or with the connection).
        let end = tokio::time::timeout(Duration::from_secs(2), async {
            while let Ok(Some(_)) = s.chunk().await {}
        })
        .await;
        assert!(end.is_ok());
    }
}

#[tokio::test]
async fn export_after_an_id_returns_each_row_once_in_order() {
    for backend in BACKENDS {
        let app = spawn_app(backend).await;
        let first = newest_id(&app).await;
        seed(&app, 2600).await;
        let newest = newest_id(&app).await;
        let mut ui = signed_in(&app, "viewer@example.com", Role::Viewer).await;
        let after = first + 40;

        let export = ui
            .get(&format!(
                "/events/export?format=json&kind=schedule.changed&after={after}"
            ))
            .await;
        assert_eq!(export.status, 200, "{}", export.body);
        let rows: Vec<serde_json::Value> = serde_json::from_str(&export.body).unwrap();
        let ids: Vec<i64> = rows.iter().map(|r| r["id"].as_i64().unwrap()).collect();
        assert_eq!(
            ids,
            ((after + 1)..=newest).collect::<Vec<_>>(),
            "{backend:?}: forward from after=, each row once"
        );

        // Without after=, newest first, all of them once.
        let export = ui
            .get("/events/export?format=csv&kind=schedule.changed")
            .await;
        let ids: Vec<i64> = export
            .body
            .lines()
            .skip(1)
            .map(|l| l.split(',').next().unwrap().parse().unwrap())
            .filter(|id| *id > first)
            .collect();
        assert_eq!(
            ids,
            ((first + 1)..=newest).rev().collect::<Vec<_>>(),
            "{backend:?}: backward, each row once"
        );
    }
}
