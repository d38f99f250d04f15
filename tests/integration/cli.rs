//! The `signet` binary itself: `config check`, `migrate` and `serve` as an operator runs them.

use crate::helpers::{Backend, TestDb, signet_command as signet};
use std::io::{BufRead as _, BufReader};
use std::process::{Command, Output, Stdio};

fn with(db: &TestDb, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = db.env();
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push((k.to_string(), v.to_string()));
    }
    env
}

fn run(cmd: &mut Command) -> (Output, String, String) {
    let out = cmd.output().expect("signet runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    (out, stdout, stderr)
}

#[tokio::test]
async fn config_check_prints_effective_config_with_secrets_redacted() {
    let db = TestDb::new(Backend::Sqlite).await;
    let key = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let env = with(
        &db,
        &[("SIGNET_ENC_KEYS", key), ("SIGNET_ENC_KEY_ACTIVE", "k1")],
    );
    let (out, stdout, _) = run(signet(&env).args(["config", "check"]));
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("listen = \"127.0.0.1:0\"  # env SIGNET_LISTEN"),
        "{stdout}"
    );
    assert!(
        stdout.contains("rotation_cron = \"0 30 3 1 * * *\"  # default"),
        "{stdout}"
    );
    assert!(stdout.contains("enc_keys = \"REDACTED\""), "{stdout}");
    assert!(!stdout.contains("AAECAw"), "{stdout}");
    // config check changes nothing: no database, no key file.
    assert!(!db.sqlite_file().exists());
}

#[tokio::test]
async fn config_check_names_each_invalid_field_and_fails() {
    let db = TestDb::new(Backend::Sqlite).await;
    let cases: &[(&str, &str, &str)] = &[
        ("SIGNET_LISTEN", "localhost", "listen"),
        (
            "SIGNET_DATABASE_URL",
            "mysql://db/signet",
            "unknown database scheme 'mysql'",
        ),
        ("SIGNET_ROTATION_CRON", "0 30 3 1 *", "expected 7 fields"),
        ("SIGNET_ROTATION_CRON", "0 0 0 30 2 * *", "never fires"),
        ("SIGNET_ENC_KEYS", "k1:tooshort", "enc_keys"),
        ("SIGNET_RETENTION", "30 days", "retention"),
        (
            "SIGNET_ALGORITHMS",
            "EdDSA,HS256",
            "unknown algorithm 'HS256'",
        ),
    ];
    for (var, value, expected) in cases {
        let env = with(&db, &[(var, value)]);
        let (out, stdout, stderr) = run(signet(&env).args(["config", "check"]));
        assert_eq!(
            out.status.code(),
            Some(2),
            "{var}={value}: {stdout}{stderr}"
        );
        assert!(stderr.contains(expected), "{var}={value}: {stderr}");
        let field = var.trim_start_matches("SIGNET_").to_ascii_lowercase();
        assert!(
            stderr.contains(&field),
            "{var}={value} does not name {field}: {stderr}"
        );
    }
}

#[tokio::test]
async fn config_check_rejects_an_unreadable_key_file() {
    let db = TestDb::new(Backend::Sqlite).await;
    let path = db.data_dir.path().join("signet.kek");
    std::fs::write(&path, "local1:not-a-key").unwrap();
    set_mode(&path, 0o600);
    let (out, _, stderr) = run(signet(&db.env()).args(["config", "check"]));
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("enc_keys") && stderr.contains("signet.kek"),
        "{stderr}"
    );

    std::fs::write(&path, "local1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
    set_mode(&path, 0o644);
    let (out, _, stderr) = run(signet(&db.env()).args(["config", "check"]));
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("readable by other users"), "{stderr}");
}

#[tokio::test]
async fn config_file_is_read_and_bad_toml_is_reported() {
    let db = TestDb::new(Backend::Sqlite).await;
    let file = db.data_dir.path().join("signet.toml");
    std::fs::write(&file, "retention = \"12h\"\nalgorithms = [\"ES256\"]\n").unwrap();
    let (out, stdout, stderr) = run(signet(&db.env())
        .arg("--config")
        .arg(&file)
        .args(["config", "check"]));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("retention = \"12h\"  # file"), "{stdout}");
    assert!(stdout.contains("algorithms = \"ES256\""), "{stdout}");

    std::fs::write(&file, "retention = \n").unwrap();
    let (out, _, stderr) = run(signet(&db.env())
        .arg("--config")
        .arg(&file)
        .args(["config", "check"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("not valid TOML"), "{stderr}");
}

#[tokio::test]
async fn serve_on_postgres_refuses_pending_migrations_until_migrate() {
    let db = TestDb::new(Backend::Postgres).await;
    let (out, _, stderr) = run(signet(&db.env()).arg("serve"));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("pending migration") && stderr.contains("signet migrate"),
        "{stderr}"
    );

    let (out, _, stderr) = run(signet(&db.env()).arg("migrate"));
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("migration(s) applied") && !stderr.contains(" 0 migration"),
        "{stderr}"
    );

    serve_answers_and_stops_on_sigterm(&db.env()).await;
}

#[tokio::test]
async fn serve_on_default_sqlite_creates_everything_and_shuts_down_gracefully() {
    let db = TestDb::new(Backend::Sqlite).await;
    // Only the data directory and a free port: the embedded default does the rest.
    let dir = db.data_dir.path().join("fresh");
    let env = vec![
        ("SIGNET_LISTEN".to_string(), "127.0.0.1:0".to_string()),
        ("SIGNET_DATA_DIR".to_string(), dir.display().to_string()),
        ("SIGNET_LOG".to_string(), "warn".to_string()),
    ];
    let stderr = serve_answers_and_stops_on_sigterm(&env).await;
    assert!(dir.join("signet.db").exists());
    assert!(dir.join("signet.kek").exists());
    assert!(
        stderr.contains("no key-encryption key configured"),
        "{stderr}"
    );
}

/// Starts `signet serve`, reads its URL from stdout, checks readiness, sends SIGTERM and
/// expects a clean exit. Returns what the process wrote to stderr.
async fn serve_answers_and_stops_on_sigterm(env: &[(String, String)]) -> String {
    let mut child = signet(env)
        .arg("serve")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn signet serve");
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await
    .unwrap()
    .unwrap();
    let url = line
        .trim()
        .strip_prefix("Signet is running at ")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_string();

    let ready = reqwest::get(format!("{url}/health/ready")).await.unwrap();
    assert_eq!(ready.status(), 200);

    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        output.status.success(),
        "exit status after SIGTERM: {:?}",
        output.status
    );
    String::from_utf8_lossy(&output.stderr).to_string()
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `signet keys` and `signet schedule show` only read: pointed at a SQLite file that is
/// not there, they say so and create neither the file nor its directory.
#[tokio::test]
async fn read_only_commands_refuse_a_missing_sqlite_database_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("absent").join("signet.db");
    let env = vec![
        (
            "SIGNET_DATABASE_URL".to_string(),
            format!("sqlite://{}", file.display()),
        ),
        (
            "SIGNET_DATA_DIR".to_string(),
            dir.path().display().to_string(),
        ),
        ("SIGNET_LOG".to_string(), "warn".to_string()),
    ];
    for args in [&["keys"][..], &["schedule", "show"][..]] {
        let (out, stdout, stderr) = run(signet(&env).args(args));
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stdout}{stderr}");
        assert!(
            stderr.contains("no database at") && stderr.contains(&file.display().to_string()),
            "{args:?}: {stderr}"
        );
        assert!(
            !file.exists() && !file.parent().unwrap().exists(),
            "{args:?} created it"
        );
        assert!(
            !dir.path().join("signet.kek").exists(),
            "{args:?} made a KEK"
        );
    }
}

/// `signet audit verify` only reads: without the key-encryption key it says which one it
/// needs, and creates none.
#[tokio::test]
async fn audit_verify_without_the_kek_creates_none() {
    let db = TestDb::new(Backend::Sqlite).await;
    let kek = db.data_dir.path().join("signet.kek");
    assert!(!kek.exists());
    let (out, stdout, stderr) = run(signet(&db.env()).args(["audit", "verify"]));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("signet.kek") && stderr.contains("enc_keys"),
        "{stderr}"
    );
    assert!(!kek.exists(), "audit verify created a KEK");
}
