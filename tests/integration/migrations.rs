//! Schema handling on both backends: SQLite migrates itself, PostgreSQL waits for the
//! operator, and neither starts on a schema it does not understand.

use crate::helpers::{Backend, TestDb, spawn_app_on, spawn_app_with};
use signet::server::config::DatabaseUrl;
use signet::server::startup::{ServeOptions, StartupError};
use signet::server::storage::{self, StorageError};

#[tokio::test]
async fn sqlite_serve_creates_directory_file_and_schema() {
    let db = TestDb::new(Backend::Sqlite).await;
    assert!(!db.sqlite_file().exists());
    let app = spawn_app_on(db, ServeOptions::default())
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    assert!(app.db.sqlite_file().exists());
    assert!(
        app.state
            .storage
            .pending_migrations()
            .await
            .unwrap()
            .is_empty()
    );
    let first = app.state.storage.instance_info().await.unwrap();

    // A restart on the same file keeps the installation.
    let db = app.stop().await;
    let app = spawn_app_on(db, ServeOptions::default())
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    assert_eq!(app.state.storage.instance_info().await.unwrap(), first);
}

/// The environment of a server on `db` whose data directory (`fresh/data` beside the
/// database) does not exist yet.
#[cfg(unix)]
fn fresh_data_dir(db: &TestDb) -> (std::path::PathBuf, signet::server::config::Config) {
    let data_dir = db.data_dir.path().join("fresh/data");
    let mut env = db.env();
    env.retain(|(k, _)| k != "SIGNET_DATA_DIR");
    env.push(("SIGNET_DATA_DIR".into(), data_dir.display().to_string()));
    let config = signet::server::config::Config::from_sources(None, env).expect("valid config");
    (data_dir, config)
}

#[cfg(unix)]
#[tokio::test]
async fn sqlite_files_and_the_data_directory_are_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &std::path::Path| {
        std::fs::metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o777
    };
    let with = |file: &std::path::Path, suffix: &str| {
        let mut name = file.as_os_str().to_os_string();
        name.push(suffix);
        std::path::PathBuf::from(name)
    };
    let db = TestDb::new(Backend::Sqlite).await;
    let (data_dir, config) = fresh_data_dir(&db);
    let app = spawn_app_with(db, config).await;
    // Every directory serve created, for the data and for the database.
    assert_eq!(mode(&data_dir), 0o700);
    assert_eq!(mode(data_dir.parent().unwrap()), 0o700);
    assert_eq!(mode(&data_dir.join("signet.kek")), 0o600);
    let file = app.db.sqlite_file();
    assert_eq!(mode(file.parent().unwrap()), 0o700);
    assert_eq!(mode(file.parent().unwrap().parent().unwrap()), 0o700);
    for suffix in ["", "-wal", "-shm"] {
        assert_eq!(mode(&with(&file, suffix)), 0o600, "signet.db{suffix}");
    }

    // An installation whose files are open to others is tightened at the next start.
    let db = app.stop().await;
    for suffix in ["", "-wal", "-shm"] {
        let path = with(&file, suffix);
        if !path.exists() {
            std::fs::write(&path, b"").unwrap();
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let (_, config) = fresh_data_dir(&db);
    let app = spawn_app_with(db, config).await;
    for suffix in ["", "-wal", "-shm"] {
        assert_eq!(mode(&with(&file, suffix)), 0o600, "signet.db{suffix}");
    }
    assert!(app.state.storage.ping().await.is_ok());
}

#[tokio::test]
async fn postgres_serve_refuses_pending_migrations_and_changes_nothing() {
    let db = TestDb::new(Backend::Postgres).await;
    let (err, db) = match spawn_app_on(db, ServeOptions::default()).await {
        Ok(_) => panic!("serve must refuse a PostgreSQL database with pending migrations"),
        Err(e) => e,
    };
    let message = err.to_string();
    assert!(matches!(err, StartupError::PendingMigrations(ref p) if !p.is_empty()));
    assert!(message.contains("signet migrate"), "{message}");
    assert!(message.contains("--migrate"), "{message}");

    // Refusing left the database untouched.
    let storage = storage::connect(&DatabaseUrl::parse(&db.url).unwrap())
        .await
        .unwrap();
    let tables: i64 = count_tables(&db.url).await;
    assert_eq!(tables, 0);

    // `signet migrate` (the same call) then lets serve start without the flag.
    assert!(storage.migrate().await.unwrap() >= 1);
    assert_eq!(storage.migrate().await.unwrap(), 0, "migrate is idempotent");
    storage.close().await;
    let app = spawn_app_on(db, ServeOptions::default())
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    assert_eq!(app.get("/health/ready").await.status(), 200);
}

#[tokio::test]
async fn postgres_serve_with_migrate_flag_applies_them() {
    let db = TestDb::new(Backend::Postgres).await;
    let app = spawn_app_on(db, ServeOptions { migrate: true })
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    assert!(
        app.state
            .storage
            .pending_migrations()
            .await
            .unwrap()
            .is_empty()
    );
    assert!(count_tables(&app.db.url).await >= 2);
}

#[tokio::test]
async fn refuses_a_schema_from_a_newer_signet_on_both_backends() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let db = migrated(backend).await;
        // The two engines spell a blob literal differently.
        let blob = if db.is_postgres() { "'\\x00'" } else { "X'00'" };
        db.execute(&format!(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (99990101000000, 'from the future', TRUE, {blob}, 1)"
        ))
        .await
        .unwrap();
        match spawn_app_on(db, ServeOptions { migrate: true }).await {
            Ok(_) => panic!("{backend:?}: must refuse a newer schema"),
            Err((err, _)) => assert!(
                matches!(
                    err,
                    StartupError::Storage(StorageError::NewerSchema(99990101000000))
                ),
                "{backend:?}: {err}"
            ),
        }
    }
}

#[tokio::test]
async fn refuses_an_edited_migration_on_both_backends() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let db = migrated(backend).await;
        let blob = if db.is_postgres() { "'\\x00'" } else { "X'00'" };
        db.execute(&format!(
            "UPDATE _sqlx_migrations SET checksum = {blob} WHERE version = 1"
        ))
        .await
        .unwrap();
        match spawn_app_on(db, ServeOptions { migrate: true }).await {
            Ok(_) => panic!("{backend:?}: must refuse a changed migration"),
            Err((err, _)) => assert!(
                matches!(
                    err,
                    StartupError::Storage(StorageError::ChangedMigration(1))
                ),
                "{backend:?}: {err}"
            ),
        }
    }
}

/// A fresh database with every migration applied, as `signet migrate` leaves it.
async fn migrated(backend: Backend) -> TestDb {
    let db = TestDb::new(backend).await;
    let storage = storage::connect(&DatabaseUrl::parse(&db.url).unwrap())
        .await
        .unwrap();
    storage.migrate().await.unwrap();
    storage.close().await;
    db
}

async fn count_tables(pg_url: &str) -> i64 {
    use sqlx::Connection as _;
    let mut c = sqlx::PgConnection::connect(pg_url).await.unwrap();
    sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        .fetch_one(&mut c)
        .await
        .unwrap()
}
