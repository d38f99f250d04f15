//! Building and running the server: `Application::build(config)` does every check and
//! binds the listener (port 0 in tests), `run_until_stopped` serves until shutdown.

use crate::server::accounts::{admins, tokens};
use crate::server::audit::Actor;
use crate::server::config::{Backend, Config, KekSource, KeyBackend};
use crate::server::crypto::kek::{self, KekError, Keyring};
use crate::server::crypto::pkcs11::{OpenError, Token};
use crate::server::keys::{KeyError, KeyService};
use crate::server::scheduler;
use crate::server::state::AppState;
use crate::server::storage::{self, PendingMigration, Storage, StorageError};
use axum::Router;
use chrono::Utc;
use leptos::prelude::LeptosOptions;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;

/// Choices made on the command line rather than in the configuration.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServeOptions {
    /// Apply pending migrations on PostgreSQL instead of refusing to start.
    pub migrate: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot create the data directory {}: {}", .0.display(), .1)]
    DataDir(PathBuf, std::io::Error),
    #[error("key-encryption key: {0}")]
    Kek(#[from] KekError),
    #[error("cannot open the database {url}: {source}")]
    Connect { url: String, source: StorageError },
    #[error(
        "the PostgreSQL database has {} pending migration(s) ({}); run `signet migrate` first, \
         or start with `signet serve --migrate`",
        .0.len(),
        describe_pending(.0)
    )]
    PendingMigrations(Vec<PendingMigration>),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("signing keys: {0}")]
    Keys(#[from] KeyError),
    #[error("first admin: {0}")]
    Admin(#[from] admins::AuthError),
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("PKCS#11 token: {0}")]
    Token(#[from] OpenError),
    #[error(
        "no database at {}: this command only reads, and `signet serve` creates it (check \
         database_url)",
        .0.display()
    )]
    NoDatabase(PathBuf),
}

fn describe_pending(pending: &[PendingMigration]) -> String {
    pending
        .iter()
        .map(|m| format!("{} {}", m.version, m.description))
        .collect::<Vec<_>>()
        .join(", ")
}

pub struct Application {
    listener: TcpListener,
    router: Router,
    addr: SocketAddr,
    state: AppState,
    /// The email and one-time password of the admin created on this first start.
    first_admin: Option<(String, String)>,
}

impl Application {
    /// Prepares everything `serve` needs, in order: data directory, KEK, database and its
    /// schema, listener. Any failure stops here, before a single request is accepted.
    pub async fn build(config: Config, options: ServeOptions) -> Result<Self, StartupError> {
        let (storage, keyring) = open(&config, options).await?;
        crate::server::files::warn_if_open(&config.data_dir, "data directory");
        let config = Arc::new(config);
        let keyring = Arc::new(keyring);
        let installation = storage.instance_info().await?.installation_id;
        let token = open_token(&config, &installation)?;
        let keys = Arc::new(
            KeyService::new(storage.clone(), keyring.clone(), config.clone()).with_token(token),
        );
        key_audit_log(storage.as_ref()).await?;
        keys.bootstrap(&Actor::system()).await?;
        keys.expire(Utc::now()).await?;
        keys.destroy_orphans(Utc::now()).await?;
        let first_admin = admins::ensure_first_admin(storage.as_ref(), &config.first_admin_email)
            .await?
            .map(|password| (config.first_admin_email.to_string(), password));

        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| StartupError::Bind(config.listen, e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| StartupError::Bind(config.listen, e))?;

        let tail = crate::server::events::Tail::new(storage.clone());
        let state = AppState {
            config,
            storage,
            keyring,
            tail,
            keys,
            recent_tokens: Default::default(),
            leptos_options: Arc::new(leptos_options(addr)),
        };
        let router = crate::server::http::router(state.clone());
        Ok(Self {
            listener,
            router,
            addr,
            state,
            first_admin,
        })
    }

    /// The first admin's email and one-time password, if this start created it. Taken
    /// once, so it is printed once.
    pub fn take_first_admin(&mut self) -> Option<(String, String)> {
        self.first_admin.take()
    }

    /// The address actually bound (differs from the configured one when that had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL at which this instance answers.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes, lets requests in flight finish, then closes the
    /// database pool.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let storage = self.state.storage.clone();
        let instance = scheduler::instance_id();
        let rotation = scheduler::Rotation {
            keys: self.state.keys.clone(),
            storage: storage.clone(),
            instance: instance.clone(),
        };
        let housekeeping = scheduler::Housekeeping {
            keys: self.state.keys.clone(),
            storage: storage.clone(),
            config: self.state.config.clone(),
            instance,
        };
        // Keys for the next rotations are made ahead, at low priority.
        if let Err(e) = self.state.keys.start_pool() {
            tracing::warn!(error = %e, "cannot start the key generator; rotations generate their own keys");
        }
        let background = [
            tokio::spawn(watch_keys(
                self.state.keys.clone(),
                self.state.storage.clone(),
            )),
            tokio::spawn(tokens::watch_revocations(
                self.state.recent_tokens.clone(),
                self.state.storage.clone(),
            )),
            // The first look happens at once: a slot missed while no instance ran is
            // caught up now.
            tokio::spawn(async move { scheduler::run(&rotation, &scheduler::SystemClock).await }),
            tokio::spawn(
                async move { scheduler::run(&housekeeping, &scheduler::SystemClock).await },
            ),
        ];
        // Open live tails end with the server rather than hold its shutdown up.
        let tail = self.state.tail.clone();
        let shutdown = async move {
            shutdown.await;
            tail.close();
        };
        let served = axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await;
        for task in background {
            task.abort();
        }
        self.state.keys.stop_pool();
        storage.close().await;
        served
    }
}

/// Opens the PKCS#11 token when `pkcs11_module` is set. With `key_backend = "pkcs11"` the
/// token must be able to do every enabled algorithm; otherwise it is only used for the
/// keys that already live on it.
pub fn open_token(config: &Config, installation: &str) -> Result<Option<Arc<Token>>, OpenError> {
    let Some(token) = &config.pkcs11 else {
        return Ok(None);
    };
    let algorithms: &[crate::domain::Algorithm] = match config.key_backend {
        KeyBackend::Pkcs11 => config.algorithms.as_slice(),
        KeyBackend::Software => &[],
    };
    let token = Token::open(token, algorithms, installation)?;
    tracing::info!(token = token.label(), backend = %config.key_backend, "PKCS#11 token open");
    Ok(Some(Arc::new(token)))
}

/// What every command that touches the database does first: data directory, KEK,
/// connection, and schema (migrated on SQLite; on PostgreSQL only with `--migrate`).
pub async fn open(
    config: &Config,
    options: ServeOptions,
) -> Result<(Arc<dyn Storage>, Keyring), StartupError> {
    // Mode 0700: it holds the KEK file and, by default, the database.
    crate::server::files::create_private_dir_all(&config.data_dir)
        .map_err(|e| StartupError::DataDir(config.data_dir.clone(), e))?;
    let keyring = load_keyring(config)?;
    let storage = open_storage(config, options).await?;
    storage.set_audit_keys(crate::server::audit::AuditKeys::new(keyring.clone()));
    Ok((storage, keyring))
}

/// The database alone, for commands that only read (`signet keys`, `schedule show`):
/// they work without the key-encryption key and never create one, nor a SQLite file that
/// is not there.
pub async fn open_existing_storage(
    config: &Config,
    options: ServeOptions,
) -> Result<Arc<dyn Storage>, StartupError> {
    if let Some(file) = config.database_url.sqlite_file()
        && !file.exists()
    {
        return Err(StartupError::NoDatabase(file));
    }
    open_storage(config, options).await
}

/// The database alone: connected (a SQLite file is created if missing) and its schema
/// prepared.
pub async fn open_storage(
    config: &Config,
    options: ServeOptions,
) -> Result<Arc<dyn Storage>, StartupError> {
    let storage = storage::connect(&config.database_url)
        .await
        .map_err(|source| StartupError::Connect {
            url: config.database_url.redacted(),
            source,
        })?;
    prepare_schema(storage.as_ref(), options).await?;
    Ok(storage)
}

/// The configured key-encryption keys, or the embedded default's key file if it exists:
/// for commands that only read, which must never create one.
pub fn read_keyring(config: &Config) -> Result<Keyring, KekError> {
    match &config.kek {
        KekSource::Configured(ring) => Ok(ring.clone()),
        KekSource::DataDir(path) => kek::read_key_file(path),
    }
}

fn load_keyring(config: &Config) -> Result<Keyring, KekError> {
    match &config.kek {
        KekSource::Configured(ring) => Ok(ring.clone()),
        KekSource::DataDir(path) => {
            let (ring, created) = kek::load_or_create_key_file(path)?;
            if created {
                tracing::warn!(
                    path = %path.display(),
                    "no key-encryption key configured: created one in the data directory. \
                     Back it up apart from the database, or set SIGNET_ENC_KEYS and \
                     SIGNET_ENC_KEY_ACTIVE; without it the stored private keys cannot be opened"
                );
            }
            Ok(ring)
        }
    }
}

/// Keys an audit log from before the keyed chain (migration 0007), so that a start
/// authenticates the old events even when it writes none. A broken log is refused and
/// reported, not fatal: revoking a key must still work.
async fn key_audit_log(storage: &dyn Storage) -> Result<(), StorageError> {
    match storage.key_audit_chain().await {
        Ok(_) => Ok(()),
        Err(StorageError::Corrupt(why)) => {
            tracing::error!("{why}");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// SQLite is migrated by `serve` itself: it is embedded and has a single owner. PostgreSQL
/// is shared by several instances, so schema changes are an operator's explicit step.
async fn prepare_schema(storage: &dyn Storage, options: ServeOptions) -> Result<(), StartupError> {
    let pending = storage.pending_migrations().await?;
    if pending.is_empty() {
        return Ok(());
    }
    if storage.backend() == Backend::Postgres && !options.migrate {
        return Err(StartupError::PendingMigrations(pending));
    }
    let applied = storage.migrate().await?;
    tracing::info!(applied, backend = %storage.backend(), "database migrated");
    Ok(())
}

/// Where the compiled site (wasm, JS, CSS, public assets) lives.
///
/// `LEPTOS_SITE_ROOT` wins when set (cargo-leptos sets it). Otherwise the site is looked
/// for next to the executable, as cargo-leptos lays it out (`<target>/site` beside
/// `<target>/debug/signet`) and as an install would (`site/` beside the binary), so the
/// binary serves its UI whatever directory it is started from.
pub fn site_root() -> PathBuf {
    if let Some(root) = std::env::var_os("LEPTOS_SITE_ROOT") {
        return PathBuf::from(root);
    }
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf));
    let mut candidates = Vec::new();
    if let Some(dir) = exe_dir {
        candidates.push(dir.join("site"));
        if let Some(parent) = dir.parent() {
            candidates.push(parent.join("site"));
        }
    }
    candidates.push(PathBuf::from("target/site"));
    candidates
        .iter()
        .find(|c| c.join("pkg").is_dir())
        .cloned()
        .unwrap_or_else(|| {
            tracing::warn!(
                "the site (wasm, CSS) was not found next to the binary; \
                 build it with `cargo leptos build` or set LEPTOS_SITE_ROOT"
            );
            PathBuf::from("target/site")
        })
}

fn leptos_options(addr: SocketAddr) -> LeptosOptions {
    LeptosOptions::builder()
        .output_name("signet")
        .site_root(site_root().to_string_lossy().to_string())
        .site_pkg_dir("pkg")
        .site_addr(addr)
        .build()
}

/// How often each instance checks whether another process changed the keys.
const KEY_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// Keeps this instance's key snapshot current when another instance or the CLI changes
/// the keys: at once on a PostgreSQL NOTIFY, and by a cheap version read twice a second
/// in any case (SQLite, or a lost notification).
pub async fn watch_keys(keys: Arc<KeyService>, storage: Arc<dyn Storage>) {
    let (tx, mut notified) = tokio::sync::mpsc::channel::<()>(16);
    let _listener = AbortOnDrop(tokio::spawn(async move {
        if let Err(e) = storage.listen_key_changes(tx).await {
            tracing::warn!(error = %e, "key change notifications stopped; polling only");
        }
    }));
    let mut tick = tokio::time::interval(KEY_POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(()) = notified.recv() => {}
        }
        let now = Utc::now();
        if keys.snapshot().next_expiry.is_some_and(|t| t <= now)
            && let Err(e) = keys.expire(now).await
        {
            tracing::warn!(error = %e, "cannot expire rotated keys");
        }
        match keys.reload_if_changed().await {
            Ok(true) => tracing::info!("keys changed elsewhere; reloaded"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot check for key changes"),
        }
    }
}

/// Stops a spawned task when its owner goes away (here: when the watcher is aborted at
/// shutdown, so the listener's connection does not outlive the pool).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}
