//! Configuration: a TOML file (`--config`) overridden by `SIGNET_*` environment variables.
//!
//! Every setting is first collected as text together with where it came from (default,
//! file or environment), then parsed into a typed [`Config`]. All problems are reported
//! at once, each naming the setting and its source, so an operator fixes them in one go.

use crate::domain::audit::Level;
use crate::domain::{AlgorithmList, CronSchedule, Email, Retention, RsaBits};
use crate::server::crypto::kek::{self, Keyring};
use crate::server::crypto::pkcs11::{Pin, TokenChoice, TokenConfig};
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use url::Url;

/// Every setting, in the order `config check` prints them. The environment variable of a
/// setting is `SIGNET_` followed by its name in upper case.
pub const SETTINGS: &[&str] = &[
    "listen",
    "public_url",
    "database_url",
    "data_dir",
    "rotation_cron",
    "retention",
    "algorithms",
    "rsa_bits",
    "enc_keys",
    "enc_key_active",
    "trusted_proxies",
    "log",
    "log_format",
    "max_token_ttl",
    "jwks_max_age",
    "rotation_event_level",
    "session_idle",
    "session_lifetime",
    "first_admin_email",
    "event_retention",
    "retired_keys_cap",
    "key_pool",
    "key_backend",
    "pkcs11_module",
    "pkcs11_token",
    "pkcs11_slot",
    "pkcs11_pin_file",
    "pkcs11_pin",
    "pkcs11_orphan_grace",
];

/// Settings whose values are secret and never printed.
const SECRET_SETTINGS: &[&str] = &["enc_keys", "pkcs11_pin"];

/// `SIGNET_*` variables that are not settings but are still ours.
const OTHER_ENV: &[&str] = &["SIGNET_CONFIG", "SIGNET_FAULT"];

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    File(PathBuf),
    Env(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(p) => write!(f, "file {}", p.display()),
            Source::Env(var) => write!(f, "env {var}"),
        }
    }
}

/// One invalid setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub source: Source,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.field, self.source, self.message)
    }
}

/// Everything wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub Vec<FieldError>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Which database engine a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        })
    }
}

/// A database URL whose scheme has been checked.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl {
    url: String,
    backend: Backend,
}

impl DatabaseUrl {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let scheme = s
            .split_once(':')
            .map(|(scheme, _)| scheme.to_ascii_lowercase())
            .ok_or_else(|| {
                format!("'{s}' has no scheme (expected sqlite://... or postgres://...)")
            })?;
        let backend = match scheme.as_str() {
            "sqlite" => Backend::Sqlite,
            "postgres" | "postgresql" => Backend::Postgres,
            other => {
                return Err(format!(
                    "unknown database scheme '{other}' (expected sqlite or postgres)"
                ));
            }
        };
        if backend == Backend::Sqlite && sqlite_path(s).is_none() {
            return Err(format!("'{s}' names no database file"));
        }
        if backend == Backend::Postgres {
            Url::parse(s).map_err(|e| format!("not a valid PostgreSQL URL: {e}"))?;
        }
        Ok(Self {
            url: s.to_string(),
            backend,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// For SQLite, the database file (relative paths are relative to the working directory).
    pub fn sqlite_file(&self) -> Option<PathBuf> {
        match self.backend {
            Backend::Sqlite => sqlite_path(&self.url),
            Backend::Postgres => None,
        }
    }

    /// The URL with any password replaced, for logs and `config check`.
    pub fn redacted(&self) -> String {
        match Url::parse(&self.url) {
            Ok(mut u) if u.password().is_some() => {
                let _ = u.set_password(Some("REDACTED"));
                u.to_string()
            }
            _ => self.url.clone(),
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({})", self.redacted())
    }
}

/// `sqlite://data/x.db`, `sqlite:data/x.db` and `sqlite:///abs/x.db` name files; query
/// parameters are options, not part of the path.
fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url.split_once(':')?.1;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return None;
    }
    Some(PathBuf::from(path))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where private keys' key-encryption keys come from.
#[derive(Debug, Clone)]
pub enum KekSource {
    /// `SIGNET_ENC_KEYS` and `SIGNET_ENC_KEY_ACTIVE`.
    Configured(Keyring),
    /// The embedded default: a key file in the data directory, created on first start.
    DataDir(PathBuf),
}

/// Where new keys are generated: sealed under the KEK in the database, or on a PKCS#11
/// token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyBackend {
    Software,
    Pkcs11,
}

impl fmt::Display for KeyBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyBackend::Software => "software",
            KeyBackend::Pkcs11 => "pkcs11",
        })
    }
}

/// The effective, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub public_url: Url,
    pub database_url: DatabaseUrl,
    pub data_dir: PathBuf,
    pub rotation_cron: CronSchedule,
    pub retention: Retention,
    pub algorithms: AlgorithmList,
    pub rsa_bits: RsaBits,
    pub kek: KekSource,
    pub trusted_proxies: Vec<IpNet>,
    pub log: String,
    pub log_format: LogFormat,
    /// The longest lifetime `POST /sign` grants; always shorter than `retention`.
    pub max_token_ttl: Retention,
    /// The cap on the JWKS `Cache-Control: max-age`.
    pub jwks_max_age: Retention,
    /// The audit level of rotation events.
    pub rotation_event_level: Level,
    /// An admin session ends after this long without a request.
    pub session_idle: Retention,
    /// An admin session ends this long after sign-in, however busy.
    pub session_lifetime: Retention,
    /// The email of the admin created on the first start.
    pub first_admin_email: Email,
    /// Audit events older than this are deleted by housekeeping (the chain stays
    /// verifiable: the deletion is itself an event naming where the chain now starts).
    pub event_retention: Retention,
    /// How many records of `revoked` and of `expired` keys are kept per algorithm
    /// (metadata only; the private halves are long gone). Older ones are pruned.
    pub retired_keys_cap: usize,
    /// How many keys per enabled algorithm `serve` keeps generated ahead, at low
    /// priority, so a rotation does no generation (0: none).
    pub key_pool: usize,
    /// Where new keys are generated.
    pub key_backend: KeyBackend,
    /// The token, when `pkcs11_module` is set: needed to generate with `key_backend =
    /// "pkcs11"`, and to keep signing with keys that live on it after switching back.
    pub pkcs11: Option<TokenConfig>,
    /// How old an object Signet made on the token must be before housekeeping destroys it
    /// for being referred to by no key (younger ones may belong to a rotation whose
    /// transaction has not committed yet).
    pub pkcs11_orphan_grace: Retention,
    /// The text (secrets already redacted) and source of every setting, for `config check`.
    raw: BTreeMap<&'static str, (String, Source)>,
    /// Things worth telling the operator that do not stop Signet.
    pub warnings: Vec<String>,
}

impl Config {
    /// Loads the file (if any) and applies the process environment on top.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::from_sources(file, std::env::vars())
    }

    /// Loads from an explicit environment, so tests need not touch the process's.
    pub fn from_sources(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let mut raw: BTreeMap<&'static str, (String, Source)> = BTreeMap::new();

        if let Some(path) = file {
            read_file(path, &mut raw, &mut errors);
        }
        for (var, value) in env {
            let Some(name) = var.strip_prefix("SIGNET_") else {
                continue;
            };
            let name = name.to_ascii_lowercase();
            match SETTINGS.iter().find(|s| **s == name) {
                Some(setting) => {
                    raw.insert(setting, (value, Source::Env(var)));
                }
                None if OTHER_ENV.contains(&var.as_str()) => {}
                // A warning, not an error: orchestrators inject variables such as
                // Kubernetes' SIGNET_PORT for a service named "signet".
                None => warnings.push(format!(
                    "{var} is not a Signet setting and is ignored (check the spelling)"
                )),
            }
        }

        let mut p = Parser {
            raw: &mut raw,
            errors: &mut errors,
        };
        let listen = p.field("listen", "127.0.0.1:3000", |s| {
            s.parse::<SocketAddr>()
                .map_err(|_| format!("'{s}' is not a socket address such as 127.0.0.1:3000"))
        });
        let data_dir = p.field("data_dir", "data", |s| {
            if s.trim().is_empty() {
                Err("must not be empty".to_string())
            } else {
                Ok(PathBuf::from(s))
            }
        });
        let default_db = match &data_dir {
            Some(dir) => format!("sqlite://{}", dir.join("signet.db").display()),
            None => "sqlite://data/signet.db".to_string(),
        };
        let database_url = p.field("database_url", &default_db, DatabaseUrl::parse);
        let default_public = match listen {
            Some(addr) => default_public_url(addr),
            None => "http://127.0.0.1:3000".to_string(),
        };
        let public_url_given = p.raw.contains_key("public_url");
        let public_url = p.field("public_url", &default_public, parse_public_url);
        // The issuer must be the address clients use. Listening beyond loopback without
        // saying what that is would publish `http://localhost:PORT` as the issuer.
        if let Some(addr) = listen.filter(|a| !a.ip().is_loopback())
            && !public_url_given
        {
            p.fail(
                "public_url",
                format!(
                    "required when listening on {addr}, which is not a loopback address: \
                     set it to the URL clients reach Signet at (the issuer), e.g. \
                     https://keys.example.com"
                ),
            );
        }
        let rotation_cron = p.field(
            "rotation_cron",
            crate::domain::schedule::DEFAULT_ROTATION_CRON,
            |s| CronSchedule::parse(s).map_err(|e| e.to_string()),
        );
        let retention = p.field("retention", "30d", |s| {
            Retention::parse(s).map_err(|e| e.to_string())
        });
        let algorithms = p.field("algorithms", "EdDSA,RS256", |s| {
            AlgorithmList::parse(s).map_err(|e| e.to_string())
        });
        let rsa_bits = p.field("rsa_bits", "2048", |s| {
            RsaBits::parse(s).map_err(|e| e.to_string())
        });
        let enc_keys = p.field("enc_keys", "", |s| Ok(s.to_string()));
        let enc_key_active = p.field("enc_key_active", "", |s| Ok(s.trim().to_string()));
        let trusted_proxies = p.field("trusted_proxies", "", parse_proxies);
        let log = p.field("log", "info", |s| {
            // tracing-subscriber 0.3 panics on some non-ASCII directives (a byte index
            // inside a character, found by `config_from_env_never_panics`); no target or
            // level name needs anything but ASCII.
            if !s.is_ascii() {
                return Err("not a log filter: only ASCII characters are allowed".into());
            }
            tracing_subscriber::EnvFilter::try_new(s)
                .map(|_| s.to_string())
                .map_err(|e| format!("not a log filter: {e}"))
        });
        let log_format = p.field("log_format", "text", |s| match s.trim() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format '{other}' (expected text or json)"
            )),
        });

        let max_token_ttl = p.field("max_token_ttl", "1h", |s| {
            Retention::parse(s).map_err(|e| e.to_string().replace("retention", "the lifetime"))
        });
        let jwks_max_age = p.field("jwks_max_age", "300s", |s| {
            Retention::parse(s)
                .map_err(|e| e.to_string().replace("retention", "the cache lifetime"))
        });
        let rotation_event_level = p.field("rotation_event_level", "notice", |s| {
            Level::parse(s.trim()).ok_or_else(|| {
                format!("unknown level '{s}' (expected info, notice, warning or critical)")
            })
        });
        let session_idle = p.field("session_idle", "30m", |s| {
            Retention::parse(s).map_err(|e| e.to_string().replace("retention", "the idle time"))
        });
        let session_lifetime = p.field("session_lifetime", "12h", |s| {
            Retention::parse(s)
                .map_err(|e| e.to_string().replace("retention", "the session lifetime"))
        });
        if let (Some(idle), Some(lifetime)) = (session_idle, session_lifetime)
            && idle > lifetime
        {
            p.fail(
                "session_idle",
                format!("the idle time ({idle}) must not exceed the session lifetime ({lifetime})"),
            );
        }
        let first_admin_email = p.field("first_admin_email", "admin@localhost", |s| {
            Email::parse(s).map_err(|e| e.to_string())
        });
        let event_retention = p.field("event_retention", "90d", |s| {
            let r = Retention::parse(s)
                .map_err(|e| e.to_string().replace("retention", "the event retention"))?;
            if r.as_secs() < 86_400 {
                return Err(format!(
                    "the event retention ({r}) must be at least 1d: the audit log is the record of what happened"
                ));
            }
            Ok(r)
        });
        let retired_keys_cap = p.field("retired_keys_cap", "100", |s| {
            match s.trim().parse::<usize>() {
                Ok(n) if (1..=100_000).contains(&n) => Ok(n),
                _ => Err(format!(
                    "'{s}' is not a number of keys between 1 and 100000"
                )),
            }
        });
        let key_pool = p.field("key_pool", "2", |s| match s.trim().parse::<usize>() {
            Ok(n) if n <= 64 => Ok(n),
            _ => Err(format!("'{s}' is not a number of keys between 0 and 64")),
        });
        let key_backend = p.field("key_backend", "software", |s| match s.trim() {
            "software" => Ok(KeyBackend::Software),
            "pkcs11" => Ok(KeyBackend::Pkcs11),
            other => Err(format!(
                "unknown key backend '{other}' (expected software or pkcs11)"
            )),
        });
        let pkcs11 = token_config(&mut p, key_backend);
        let pkcs11_orphan_grace = p.field("pkcs11_orphan_grace", "10m", |s| {
            Retention::parse(s).map_err(|e| e.to_string().replace("retention", "the grace period"))
        });
        if pkcs11_orphan_grace.is_some_and(|g| g.as_secs() < 60) {
            warnings.push(
                "pkcs11_orphan_grace is under a minute: housekeeping may destroy the keys of a \
                 rotation still in flight on another instance (or one whose clock is behind)"
                    .into(),
            );
        }
        // Invariant 4 (docs/design.md): a token must never outlive the publication of its key.
        if let (Some(ttl), Some(retention)) = (max_token_ttl, retention)
            && ttl >= retention
        {
            p.fail(
                "max_token_ttl",
                format!(
                    "the maximum token lifetime ({ttl}) must be shorter than the retention ({retention})"
                ),
            );
        }

        let kek = match (&enc_keys, &enc_key_active, &data_dir) {
            (Some(keys), Some(active), _) if !keys.trim().is_empty() || !active.is_empty() => {
                match Keyring::parse(keys, active) {
                    Ok(ring) => Some(KekSource::Configured(ring)),
                    Err(e) => {
                        let field = if matches!(e, kek::KekError::UnknownActive(_)) {
                            "enc_key_active"
                        } else {
                            "enc_keys"
                        };
                        p.fail(field, e.to_string());
                        None
                    }
                }
            }
            (Some(_), Some(_), Some(dir)) => {
                let path = dir.join(kek::KEK_FILE);
                // A key file that exists must be usable; one that does not is created by
                // `serve` (not by `config check`, which changes nothing).
                match kek::read_key_file(&path) {
                    Ok(_) => Some(KekSource::DataDir(path)),
                    Err(kek::KekError::Missing(_)) => Some(KekSource::DataDir(path)),
                    Err(e) => {
                        p.fail("enc_keys", format!("no KEK configured, and {e}"));
                        None
                    }
                }
            }
            _ => None,
        };

        if !errors.is_empty() {
            return Err(ConfigError(errors));
        }
        // Only redacted text is kept, so neither `describe` nor `Debug` can show a secret.
        for name in SECRET_SETTINGS {
            if let Some((value, _)) = raw.get_mut(name).filter(|(v, _)| !v.is_empty()) {
                *value = "REDACTED".to_string();
            }
        }
        if let (Some((value, _)), Some(url)) = (raw.get_mut("database_url"), &database_url) {
            *value = url.redacted();
        }
        // Every `None` above pushed an error, so all are present here.
        match (
            listen,
            public_url,
            database_url,
            data_dir,
            rotation_cron,
            retention,
            algorithms,
            rsa_bits,
            kek,
            trusted_proxies,
            log,
            log_format,
            max_token_ttl,
            jwks_max_age,
            rotation_event_level,
            session_idle,
            session_lifetime,
            first_admin_email,
            event_retention,
            retired_keys_cap,
            key_pool,
            key_backend,
            pkcs11,
            pkcs11_orphan_grace,
        ) {
            (
                Some(listen),
                Some(public_url),
                Some(database_url),
                Some(data_dir),
                Some(rotation_cron),
                Some(retention),
                Some(algorithms),
                Some(rsa_bits),
                Some(kek),
                Some(trusted_proxies),
                Some(log),
                Some(log_format),
                Some(max_token_ttl),
                Some(jwks_max_age),
                Some(rotation_event_level),
                Some(session_idle),
                Some(session_lifetime),
                Some(first_admin_email),
                Some(event_retention),
                Some(retired_keys_cap),
                Some(key_pool),
                Some(key_backend),
                Some(pkcs11),
                Some(pkcs11_orphan_grace),
            ) => Ok(Config {
                listen,
                public_url,
                database_url,
                data_dir,
                rotation_cron,
                retention,
                algorithms,
                rsa_bits,
                kek,
                trusted_proxies,
                log,
                log_format,
                max_token_ttl,
                jwks_max_age,
                rotation_event_level,
                session_idle,
                session_lifetime,
                first_admin_email,
                event_retention,
                retired_keys_cap,
                key_pool,
                key_backend,
                pkcs11,
                pkcs11_orphan_grace,
                raw,
                warnings,
            }),
            _ => unreachable!("a missing setting always records an error"),
        }
    }

    /// The issuer (`iss`), without a trailing slash.
    pub fn issuer(&self) -> String {
        self.public_url.as_str().trim_end_matches('/').to_string()
    }

    /// The effective settings as `name = value  # source` lines, secrets redacted.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for name in SETTINGS {
            let Some((value, source)) = self.raw.get(name) else {
                continue;
            };
            out.push_str(&format!("{name} = {value:?}  # {source}\n"));
        }
        let kek = match &self.kek {
            KekSource::Configured(ring) => {
                format!("configured, active key id {:?}", ring.active_id())
            }
            KekSource::DataDir(path) if path.exists() => {
                format!("embedded default, key file {}", path.display())
            }
            KekSource::DataDir(path) => format!(
                "embedded default, key file {} (created on first start)",
                path.display()
            ),
        };
        out.push_str(&format!("# key-encryption key: {kek}\n"));
        out
    }
}

/// The `pkcs11_*` settings: `None` (no token) when `pkcs11_module` is empty, which only
/// `key_backend = "software"` allows. The outer `None` means an error was recorded.
fn token_config(p: &mut Parser<'_>, backend: Option<KeyBackend>) -> Option<Option<TokenConfig>> {
    let module = p.field("pkcs11_module", "", |s| Ok(s.trim().to_string()))?;
    let label = p.field("pkcs11_token", "", |s| Ok(s.trim().to_string()))?;
    let slot = p.field("pkcs11_slot", "", |s| match s.trim() {
        "" => Ok(None),
        n => n
            .parse::<u64>()
            .map(Some)
            .map_err(|_| format!("'{n}' is not a slot number")),
    })?;
    let pin_file = p.field("pkcs11_pin_file", "", |s| Ok(s.trim().to_string()))?;
    let pin = p.field("pkcs11_pin", "", |s| Ok(s.to_string()))?;
    if module.is_empty() {
        if backend == Some(KeyBackend::Pkcs11) {
            p.fail(
                "pkcs11_module",
                "required when key_backend is pkcs11: the path of the PKCS#11 module, e.g. \
                 /usr/lib/softhsm/libsofthsm2.so"
                    .into(),
            );
            return None;
        }
        return Some(None);
    }
    let mut ok = true;
    if !Path::new(&module).is_file() {
        p.fail("pkcs11_module", format!("{module} is not a file"));
        ok = false;
    }
    let token = match (label.is_empty(), slot) {
        (false, None) => Some(TokenChoice::Label(label)),
        (true, Some(slot)) => Some(TokenChoice::Slot(slot)),
        (true, None) => {
            p.fail(
                "pkcs11_token",
                "required with pkcs11_module: the label of the token (or set pkcs11_slot)".into(),
            );
            None
        }
        (false, Some(_)) => {
            p.fail(
                "pkcs11_slot",
                "set pkcs11_token or pkcs11_slot, not both".into(),
            );
            None
        }
    };
    let pin = match (pin_file.is_empty(), pin.is_empty()) {
        (false, true) => match std::fs::read_to_string(&pin_file) {
            Ok(text) if !text.trim_end_matches(['\r', '\n']).is_empty() => {
                Some(Pin::new(text.trim_end_matches(['\r', '\n']).to_string()))
            }
            Ok(_) => {
                p.fail("pkcs11_pin_file", format!("{pin_file} is empty"));
                None
            }
            Err(e) => {
                p.fail("pkcs11_pin_file", format!("cannot read {pin_file}: {e}"));
                None
            }
        },
        (true, false) => Some(Pin::new(pin)),
        (true, true) => {
            p.fail(
                "pkcs11_pin",
                "required with pkcs11_module: the user PIN, in SIGNET_PKCS11_PIN or a file \
                 named by pkcs11_pin_file"
                    .into(),
            );
            None
        }
        (false, false) => {
            p.fail(
                "pkcs11_pin_file",
                "set pkcs11_pin_file or SIGNET_PKCS11_PIN, not both".into(),
            );
            None
        }
    };
    match (ok, token, pin) {
        (true, Some(token), Some(pin)) => Some(Some(TokenConfig {
            module: PathBuf::from(module),
            token,
            pin,
        })),
        _ => None,
    }
}

/// Collects parse errors so that every bad setting is reported, not only the first.
struct Parser<'a> {
    raw: &'a mut BTreeMap<&'static str, (String, Source)>,
    errors: &'a mut Vec<FieldError>,
}

impl Parser<'_> {
    fn field<T>(
        &mut self,
        name: &'static str,
        default: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let (value, source) = self
            .raw
            .entry(name)
            .or_insert_with(|| (default.to_string(), Source::Default))
            .clone();
        match parse(&value) {
            Ok(v) => Some(v),
            Err(message) => {
                self.errors.push(FieldError {
                    field: name.to_string(),
                    source,
                    message,
                });
                None
            }
        }
    }

    fn fail(&mut self, name: &'static str, message: String) {
        let source = self
            .raw
            .get(name)
            .map(|(_, s)| s.clone())
            .unwrap_or(Source::Default);
        self.errors.push(FieldError {
            field: name.to_string(),
            source,
            message,
        });
    }
}

fn read_file(
    path: &Path,
    raw: &mut BTreeMap<&'static str, (String, Source)>,
    errors: &mut Vec<FieldError>,
) {
    let file_error = |message: String| FieldError {
        field: "--config".into(),
        source: Source::File(path.to_path_buf()),
        message,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return errors.push(file_error(format!("cannot read: {e}"))),
    };
    let table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => return errors.push(file_error(format!("not valid TOML: {e}"))),
    };
    for (key, value) in table {
        let Some(setting) = SETTINGS.iter().find(|s| **s == key) else {
            errors.push(FieldError {
                field: key,
                source: Source::File(path.to_path_buf()),
                message: "unknown setting".into(),
            });
            continue;
        };
        let text = match value {
            toml::Value::String(s) => Some(s),
            toml::Value::Integer(i) => Some(i.to_string()),
            toml::Value::Array(items) => items
                .into_iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .map(|v| v.join(",")),
            _ => None,
        };
        match text {
            Some(text) => {
                raw.insert(setting, (text, Source::File(path.to_path_buf())));
            }
            None => errors.push(FieldError {
                field: key,
                source: Source::File(path.to_path_buf()),
                message: "expected a string, an integer or a list of strings".into(),
            }),
        }
    }
}

fn default_public_url(listen: SocketAddr) -> String {
    match listen.ip() {
        ip if ip.is_unspecified() => format!("http://localhost:{}", listen.port()),
        IpAddr::V6(ip) => format!("http://[{ip}]:{}", listen.port()),
        IpAddr::V4(ip) => format!("http://{ip}:{}", listen.port()),
    }
}

fn parse_public_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s.trim()).map_err(|e| format!("'{s}' is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("'{s}' must be an http or https URL"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "'{s}' must not have a query or fragment (it is the issuer)"
        ));
    }
    Ok(url)
}

fn parse_proxies(s: &str) -> Result<Vec<IpNet>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<IpNet>()
                .or_else(|_| p.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("'{p}' is not an IP address or CIDR range"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let mut pairs = env(pairs);
        if !pairs.iter().any(|(k, _)| k == "SIGNET_DATA_DIR") {
            pairs.push(("SIGNET_DATA_DIR".into(), dir.path().display().to_string()));
        }
        Config::from_sources(None, pairs)
    }

    fn fields(err: ConfigError) -> Vec<String> {
        err.0.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = Config::from_sources(None, Vec::new()).unwrap();
        assert_eq!(c.listen, "127.0.0.1:3000".parse().unwrap());
        assert_eq!(c.database_url.as_str(), "sqlite://data/signet.db");
        assert_eq!(c.issuer(), "http://127.0.0.1:3000");
        assert_eq!(c.rotation_cron.as_str(), "0 30 3 1 * * *");
        assert_eq!(c.retention, Retention::parse("30d").unwrap());
        assert_eq!(c.algorithms.to_string(), "EdDSA,RS256");
        assert_eq!(c.rsa_bits, RsaBits::B2048);
        assert!(matches!(c.kek, KekSource::DataDir(_)));
    }

    #[test]
    fn env_overrides_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("signet.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:4000\"\nalgorithms = [\"ES256\", \"PS256\"]\nrsa_bits = 3072\n",
        )
        .unwrap();
        let c = Config::from_sources(
            Some(&file),
            env(&[
                ("SIGNET_LISTEN", "127.0.0.1:5000"),
                ("SIGNET_DATA_DIR", dir.path().to_str().unwrap()),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen.port(), 5000);
        assert_eq!(c.algorithms.to_string(), "ES256,PS256");
        assert_eq!(c.rsa_bits, RsaBits::B3072);
        assert!(
            c.describe()
                .contains("listen = \"127.0.0.1:5000\"  # env SIGNET_LISTEN")
        );
    }

    #[test]
    fn reports_every_bad_field() {
        let err = load(&[
            ("SIGNET_LISTEN", "nowhere"),
            ("SIGNET_DATABASE_URL", "mysql://x"),
            ("SIGNET_ROTATION_CRON", "* * *"),
            ("SIGNET_RETENTION", "forever"),
        ])
        .unwrap_err();
        assert_eq!(
            fields(err.clone()),
            vec!["listen", "database_url", "rotation_cron", "retention"]
        );
        let text = err.to_string();
        assert!(text.contains("unknown database scheme 'mysql'"), "{text}");
        assert!(text.contains("env SIGNET_LISTEN"), "{text}");
    }

    #[test]
    fn unknown_names_warn_in_env_and_fail_in_file() {
        let c = load(&[("SIGNET_LISTN", "127.0.0.1:1")]).unwrap();
        assert_eq!(c.warnings.len(), 1);
        assert!(c.warnings[0].contains("SIGNET_LISTN"));

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "colour = \"blue\"\n").unwrap();
        let err = Config::from_sources(Some(&file), Vec::new()).unwrap_err();
        assert_eq!(fields(err), vec!["colour"]);
    }

    #[test]
    fn redacts_secrets() {
        let key = "k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        let c = load(&[
            ("SIGNET_ENC_KEYS", key),
            ("SIGNET_ENC_KEY_ACTIVE", "k1"),
            ("SIGNET_DATABASE_URL", "postgres://u:hunter2@db/signet"),
        ])
        .unwrap();
        let text = c.describe();
        assert!(!text.contains("AAAAAAAA"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!format!("{c:?}").contains("AAAAAAAA"));
    }

    #[test]
    fn token_lifetime_must_be_shorter_than_retention() {
        let err = load(&[("SIGNET_RETENTION", "1h"), ("SIGNET_MAX_TOKEN_TTL", "2h")]).unwrap_err();
        assert_eq!(fields(err.clone()), vec!["max_token_ttl"]);
        assert!(
            err.to_string().contains("shorter than the retention"),
            "{err}"
        );
        assert!(load(&[("SIGNET_RETENTION", "2h"), ("SIGNET_MAX_TOKEN_TTL", "1h")]).is_ok());
    }

    #[test]
    fn sqlite_urls_name_files() {
        let u = DatabaseUrl::parse("sqlite://data/signet.db?mode=rwc").unwrap();
        assert_eq!(u.sqlite_file(), Some(PathBuf::from("data/signet.db")));
        let u = DatabaseUrl::parse("sqlite:///var/lib/signet/s.db").unwrap();
        assert_eq!(u.sqlite_file(), Some(PathBuf::from("/var/lib/signet/s.db")));
        assert!(DatabaseUrl::parse("sqlite::memory:").is_err());
        assert!(DatabaseUrl::parse("signet.db").is_err());
    }

    #[test]
    fn bad_kek_is_named() {
        let err = load(&[
            ("SIGNET_ENC_KEYS", "k1:notbase64!"),
            ("SIGNET_ENC_KEY_ACTIVE", "k1"),
        ])
        .unwrap_err();
        assert_eq!(fields(err), vec!["enc_keys"]);
        let err = load(&[
            (
                "SIGNET_ENC_KEYS",
                "k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            ),
            ("SIGNET_ENC_KEY_ACTIVE", "k2"),
        ])
        .unwrap_err();
        assert_eq!(fields(err), vec!["enc_key_active"]);
    }

    #[test]
    fn proxies_and_public_url() {
        let c = load(&[
            ("SIGNET_TRUSTED_PROXIES", "10.0.0.0/8, 192.168.1.1"),
            ("SIGNET_PUBLIC_URL", "https://keys.example.com/"),
        ])
        .unwrap();
        assert_eq!(c.trusted_proxies.len(), 2);
        assert_eq!(c.issuer(), "https://keys.example.com");
        let err = load(&[("SIGNET_PUBLIC_URL", "ftp://x")]).unwrap_err();
        assert_eq!(fields(err), vec!["public_url"]);
    }

    #[test]
    fn listening_beyond_loopback_needs_a_public_url() {
        for listen in ["0.0.0.0:8080", "[::]:8080", "192.0.2.10:3000"] {
            let err = load(&[("SIGNET_LISTEN", listen)]).unwrap_err();
            assert_eq!(fields(err.clone()), vec!["public_url"], "{listen}");
            assert!(err.to_string().contains("not a loopback address"), "{err}");
            let c = load(&[
                ("SIGNET_LISTEN", listen),
                ("SIGNET_PUBLIC_URL", "https://keys.example.com"),
            ])
            .unwrap();
            assert_eq!(c.issuer(), "https://keys.example.com");
        }
        assert!(load(&[("SIGNET_LISTEN", "127.0.0.1:0")]).is_ok());
        assert!(load(&[("SIGNET_LISTEN", "[::1]:3000")]).is_ok());
    }
}
