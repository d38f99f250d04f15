//! `spawn_app` and the per-test databases behind it.

use signet::server::AppState;
use signet::server::config::Config;
use signet::server::startup::{Application, ServeOptions, StartupError};
use sqlx::Connection as _;
use std::sync::atomic::{AtomicU32, Ordering};
use tempfile::TempDir;
use tokio::sync::oneshot;

/// The PostgreSQL server the tests create their databases on. CI starts it; a test that
/// cannot reach it fails rather than being skipped.
pub fn pg_admin_url() -> String {
    std::env::var("PG_TEST_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub const BACKENDS: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

/// A database of its own for one test, with a data directory beside it. A PostgreSQL
/// database is dropped when this is dropped.
pub struct TestDb {
    pub url: String,
    pub data_dir: TempDir,
    pg_name: Option<String>,
    /// The PostgreSQL server's admin URL the database was created on.
    pg_admin: String,
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        Self::new_on(backend, &pg_admin_url()).await
    }

    /// A database of its own on the PostgreSQL server at `pg_admin` (for SQLite, as `new`).
    pub async fn new_on(backend: Backend, pg_admin: &str) -> Self {
        let data_dir = tempfile::tempdir().expect("temp dir");
        match backend {
            Backend::Sqlite => {
                // A nested path that does not exist yet: serve must create it.
                let file = data_dir.path().join("nested/dir/signet.db");
                Self {
                    url: format!("sqlite://{}", file.display()),
                    data_dir,
                    pg_name: None,
                    pg_admin: pg_admin.to_string(),
                }
            }
            Backend::Postgres => {
                static COUNTER: AtomicU32 = AtomicU32::new(0);
                let name = format!(
                    "signet_test_{}_{}_{}",
                    std::process::id(),
                    COUNTER.fetch_add(1, Ordering::Relaxed),
                    rand_suffix()
                );
                let mut admin = sqlx::PgConnection::connect(pg_admin)
                    .await
                    .expect("PostgreSQL must be reachable for the PostgreSQL tests (PG_TEST_URL)");
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut admin)
                    .await
                    .expect("create test database");
                let mut url = url::Url::parse(pg_admin).expect("PG_TEST_URL is a URL");
                url.set_path(&name);
                Self {
                    url: url.to_string(),
                    data_dir,
                    pg_name: Some(name),
                    pg_admin: pg_admin.to_string(),
                }
            }
        }
    }

    /// For SQLite, the database file.
    pub fn sqlite_file(&self) -> std::path::PathBuf {
        self.data_dir.path().join("nested/dir/signet.db")
    }

    /// The environment a server on this database runs with.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("SIGNET_LISTEN".into(), "127.0.0.1:0".into()),
            ("SIGNET_DATABASE_URL".into(), self.url.clone()),
            (
                "SIGNET_DATA_DIR".into(),
                self.data_dir.path().display().to_string(),
            ),
            ("SIGNET_LOG".into(), "warn".into()),
        ]
    }

    pub fn config(&self) -> Config {
        Config::from_sources(None, self.env()).expect("test config is valid")
    }

    /// Runs one SQL statement on this database from a separate connection, as an
    /// operator (or an attacker) with database access would.
    pub async fn execute(&self, sql: &str) -> Result<(), sqlx::Error> {
        if self.pg_name.is_some() {
            let mut c = sqlx::PgConnection::connect(&self.url).await?;
            sqlx::query(sql).execute(&mut c).await.map(|_| ())
        } else {
            let mut c = sqlx::SqliteConnection::connect(&self.url).await?;
            sqlx::query(sql).execute(&mut c).await.map(|_| ())
        }
    }

    /// Every row of these tables as text, in a stable order: to show that a request
    /// changed nothing.
    pub async fn dump_tables(
        &self,
        tables: &[&str],
    ) -> std::collections::BTreeMap<String, Vec<String>> {
        use sqlx::Row as _;
        let mut out = std::collections::BTreeMap::new();
        for table in tables {
            let rows: Vec<String> = if self.pg_name.is_some() {
                let mut c = sqlx::PgConnection::connect(&self.url)
                    .await
                    .expect("connect");
                sqlx::query(&format!("SELECT t::text FROM {table} t ORDER BY 1"))
                    .fetch_all(&mut c)
                    .await
                    .expect("dump table")
                    .iter()
                    .map(|r| r.get::<String, _>(0))
                    .collect()
            } else {
                let mut c = sqlx::SqliteConnection::connect(&self.url)
                    .await
                    .expect("connect");
                let columns: Vec<String> =
                    sqlx::query(&format!("SELECT name FROM pragma_table_info('{table}')"))
                        .fetch_all(&mut c)
                        .await
                        .expect("columns")
                        .iter()
                        .map(|r| r.get::<String, _>(0))
                        .collect();
                let row = columns
                    .iter()
                    .map(|c| format!("quote(\"{c}\")"))
                    .collect::<Vec<_>>()
                    .join(" || '|' || ");
                sqlx::query(&format!("SELECT {row} FROM {table} ORDER BY 1"))
                    .fetch_all(&mut c)
                    .await
                    .expect("dump table")
                    .iter()
                    .map(|r| r.get::<String, _>(0))
                    .collect()
            };
            out.insert(table.to_string(), rows);
        }
        out
    }

    pub fn is_postgres(&self) -> bool {
        self.pg_name.is_some()
    }

    /// Drops the PostgreSQL database now, killing its connections: the database "goes away".
    pub async fn drop_now(&self) {
        if let Some(name) = &self.pg_name {
            drop_pg_database(&self.pg_admin, name).await;
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = self.pg_name.take() {
            let admin = std::mem::take(&mut self.pg_admin);
            // Drop runs outside any async context we could borrow, so use a thread with its
            // own small runtime.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(drop_pg_database(&admin, &name));
            })
            .join();
        }
    }
}

async fn drop_pg_database(admin_url: &str, name: &str) {
    if let Ok(mut admin) = sqlx::PgConnection::connect(admin_url).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut admin)
            .await;
    }
}

fn rand_suffix() -> u32 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

/// The real `signet` binary with exactly the given environment: no SIGNET_* variable of
/// the test process leaks in.
pub fn signet_command(env: &[(String, String)]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_signet"));
    for (key, _) in std::env::vars() {
        if key.starts_with("SIGNET_") {
            cmd.env_remove(key);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd
}

/// Runs `signet ARGS...` to completion. Async, so a server running in the test's own
/// (single-threaded) runtime keeps being served meanwhile: a blocking wait would stall
/// its transactions and make the CLI wait on locks the server cannot release.
pub async fn run_signet(env: &[(String, String)], args: &[&str]) -> std::process::Output {
    let mut cmd = tokio::process::Command::from(signet_command(env));
    cmd.args(args).output().await.expect("signet runs")
}

/// A running server and a client for it.
pub struct TestApp {
    pub url: String,
    /// The email and one-time password of the admin this start created, if it did.
    pub first_admin: Option<(String, String)>,
    pub client: reqwest::Client,
    pub state: AppState,
    pub db: TestDb,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestApp {
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.at(path))
            .send()
            .await
            .expect("request reaches the server")
    }

    /// Shuts the server down gracefully and waits for it to finish.
    pub async fn stop(mut self) -> TestDb {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("server task")
                .expect("server ran cleanly");
        }
        // Moving `db` out of a type with Drop needs a swap.
        let placeholder = TestDb {
            url: String::new(),
            data_dir: tempfile::tempdir().expect("temp dir"),
            pg_name: None,
            pg_admin: String::new(),
        };
        std::mem::replace(&mut self.db, placeholder)
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Starts the real server on a fresh database of the given kind.
pub async fn spawn_app(backend: Backend) -> TestApp {
    let db = TestDb::new(backend).await;
    spawn_app_on(db, ServeOptions { migrate: true })
        .await
        .unwrap_or_else(|(e, _)| panic!("server starts: {e}"))
}

/// Starts the real server on an existing test database with its own configuration.
pub async fn spawn_app_with(db: TestDb, config: Config) -> TestApp {
    start(db, config, ServeOptions { migrate: true })
        .await
        .unwrap_or_else(|(e, _)| panic!("server starts: {e}"))
}

/// Starts the real server on an existing test database.
pub async fn spawn_app_on(
    db: TestDb,
    options: ServeOptions,
) -> Result<TestApp, (StartupError, TestDb)> {
    let config = db.config();
    start(db, config, options).await
}

async fn start(
    db: TestDb,
    config: Config,
    options: ServeOptions,
) -> Result<TestApp, (StartupError, TestDb)> {
    let mut app = match Application::build(config, options).await {
        Ok(app) => app,
        Err(e) => return Err((e, db)),
    };
    let first_admin = app.take_first_admin();
    let url = app.url();
    let state = app.state().clone();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    Ok(TestApp {
        url,
        first_admin,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client"),
        state,
        db,
        shutdown: Some(tx),
        task: Some(task),
    })
}

/// A browser's view of the admin UI: a session cookie, and requests that carry this
/// site's `Origin` like a page of it would.
pub struct UiClient {
    pub base: String,
    pub cookie: Option<String>,
    pub origin: Option<String>,
    /// Sent as `X-Forwarded-For`: the client address a trusted proxy reports.
    pub forwarded_for: Option<String>,
    client: reqwest::Client,
}

/// A server function's answer.
#[derive(Debug)]
pub struct UiAnswer {
    pub status: reqwest::StatusCode,
    pub body: String,
    pub set_cookie: Vec<String>,
}

impl UiAnswer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

impl UiClient {
    pub fn new(app: &TestApp) -> Self {
        Self::at(&app.url)
    }

    /// A browser's view of the server at `base` (e.g. a `signet serve` process).
    pub fn at(base: &str) -> Self {
        Self {
            base: base.to_string(),
            cookie: None,
            origin: Some(base.to_string()),
            forwarded_for: None,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
        }
    }

    /// Calls the server function at `/ui/{name}` with a form-encoded body (already
    /// encoded), keeping the session cookie it sets.
    pub async fn call(&mut self, name: &str, body: &str) -> UiAnswer {
        let mut req = self
            .client
            .post(format!("{}/ui/{name}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_string());
        if let Some(c) = &self.cookie {
            req = req.header("cookie", c.clone());
        }
        if let Some(o) = &self.origin {
            req = req.header("origin", o.clone());
        }
        if let Some(f) = &self.forwarded_for {
            req = req.header("x-forwarded-for", f.clone());
        }
        let res = req.send().await.expect("request reaches the server");
        self.answer(res).await
    }

    pub async fn get(&mut self, path: &str) -> UiAnswer {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some(c) = &self.cookie {
            req = req.header("cookie", c.clone());
        }
        let res = req.send().await.expect("request reaches the server");
        self.answer(res).await
    }

    /// A raw GET carrying the session, for streams.
    pub async fn get_raw(&self, path: &str) -> reqwest::Response {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some(c) = &self.cookie {
            req = req.header("cookie", c.clone());
        }
        req.send().await.expect("request reaches the server")
    }

    async fn answer(&mut self, res: reqwest::Response) -> UiAnswer {
        let status = res.status();
        let set_cookie: Vec<String> = res
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect();
        for c in &set_cookie {
            let pair = c.split(';').next().unwrap_or_default().to_string();
            if pair.starts_with("signet_session=") {
                let removed = c.contains("Max-Age=0") || pair == "signet_session=";
                self.cookie = (!removed).then_some(pair);
            }
        }
        let body = res.text().await.unwrap_or_default();
        UiAnswer {
            status,
            body,
            set_cookie,
        }
    }

    /// Signs in through the sign-in server function.
    pub async fn sign_in(&mut self, email: &str, password: &str) -> UiAnswer {
        let body = format!(
            "email={}&password={}&next=%2Fconfig%2Fjwks",
            encode(email),
            encode(password)
        );
        self.call("sign_in", &body).await
    }
}

/// Percent-encodes a form value.
pub fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub const TEST_PASSWORD: &str = "correct horse battery staple";

/// Creates an admin with a known password through the same code the CLI uses.
pub async fn create_admin(app: &TestApp, email: &str, role: signet::domain::Role) {
    signet::server::accounts::admins::create_admin(
        app.state.storage.as_ref(),
        email,
        role,
        Some(TEST_PASSWORD.to_string()),
        &signet::server::audit::Actor::cli(),
    )
    .await
    .expect("admin created");
}

/// A signed-in UI client for a new admin with this role.
pub async fn signed_in(app: &TestApp, email: &str, role: signet::domain::Role) -> UiClient {
    create_admin(app, email, role).await;
    let mut ui = UiClient::new(app);
    let answer = ui.sign_in(email, TEST_PASSWORD).await;
    assert_eq!(answer.status, 200, "sign-in failed: {}", answer.body);
    assert!(ui.cookie.is_some(), "sign-in set no session cookie");
    ui
}

/// A `signet serve` process of the real binary, killed when dropped.
pub struct ServeProcess {
    pub url: String,
    child: tokio::process::Child,
}

impl ServeProcess {
    /// Spawns `signet serve ARGS...` without waiting for it: for kills during startup.
    pub fn spawn(
        env: &[(String, String)],
        args: &[&str],
        stderr: std::fs::File,
    ) -> tokio::process::Child {
        let mut cmd = tokio::process::Command::from(signet_command(env));
        cmd.arg("serve")
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true);
        cmd.spawn().expect("spawn signet serve")
    }

    /// Starts `signet serve ARGS...` and waits for the line with its URL (stderr goes to
    /// the given file, so a failure can show the server's log).
    pub async fn start(env: &[(String, String)], args: &[&str], stderr: std::fs::File) -> Self {
        use tokio::io::AsyncBufReadExt as _;
        let mut child = Self::spawn(env, args, stderr);
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let first = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
            .await
            .expect("signet serve printed its URL within 30 s")
            .expect("read stdout");
        let Some(line) = first else {
            let status = child.wait().await;
            panic!("signet serve exited before printing its URL: {status:?}");
        };
        let url = line
            .trim()
            .strip_prefix("Signet is running at ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_string();
        // Keep reading, so the rest of the banner never meets a closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { url, child }
    }

    /// SIGKILL, and wait until the process is gone.
    pub async fn sigkill(mut self) {
        self.child.start_kill().expect("SIGKILL");
        self.child.wait().await.expect("reap signet serve");
    }
}

/// Creates an API token with the real CLI and returns its secret.
pub async fn cli_token(env: &[(String, String)], name: &str, scopes: &[&str]) -> String {
    let mut args = vec!["token", "create", name];
    for s in scopes {
        args.push("--scope");
        args.push(s);
    }
    let out = run_signet(env, &args).await;
    assert!(
        out.status.success(),
        "token create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A PostgreSQL server of a test's own (never the machine's shared cluster): `initdb` in a
/// temporary directory, on a free loopback port, started and stopped with `pg_ctl` from
/// Debian's packages. initdb and postgres refuse to run as root, so as root they run as
/// the `postgres` OS user (the directory is theirs); otherwise as the current user.
pub struct PgServer {
    dir: TempDir,
    bin: std::path::PathBuf,
    pub port: u16,
    as_postgres: bool,
}

impl PgServer {
    /// Creates the cluster and starts it.
    pub fn start_new() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server packages in /usr/lib/postgresql")
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .filter(|b| b.join("initdb").exists() && b.join("pg_ctl").exists())
            .max_by_key(|b| {
                b.parent()
                    .and_then(|v| v.file_name())
                    .and_then(|v| v.to_str())
                    .and_then(|v| v.parse::<u32>().ok())
                    .unwrap_or(0)
            })
            .expect("initdb and pg_ctl under /usr/lib/postgresql/*/bin");
        let dir = tempfile::tempdir().expect("temp dir");
        let as_postgres = std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        if as_postgres {
            let ok = std::process::Command::new("chown")
                .arg("postgres:")
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(ok.success(), "chown the cluster directory to postgres");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let server = Self {
            dir,
            bin,
            port,
            as_postgres,
        };
        let data = server.data_dir();
        server.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        server.start();
        server
    }

    fn data_dir(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let program = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            std::process::Command::new(&program)
        };
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("run {tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("postgres.log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data_dir(),
                "-l",
                &log,
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }

    /// Stops the server at once, as a crash or a pulled cable would.
    pub fn stop_immediate(&self) {
        self.run(
            "pg_ctl",
            &["-D", &self.data_dir(), "-m", "immediate", "-w", "stop"],
        );
    }

    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let program = self.bin.join("pg_ctl");
        let data = self.data_dir();
        let args = ["-D", data.as_str(), "-m", "immediate", "-w", "stop"];
        let _ = if self.as_postgres {
            std::process::Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&program)
                .args(args)
                .output()
        } else {
            std::process::Command::new(&program).args(args).output()
        };
    }
}

/// Creates an API token with these scopes through the same code the CLI uses.
pub async fn api_token(app: &TestApp, name: &str, scopes: &[&str]) -> String {
    let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
    signet::server::accounts::tokens::create(
        app.state.storage.as_ref(),
        name,
        &scopes,
        &signet::server::audit::Actor::cli(),
    )
    .await
    .expect("token created")
}
