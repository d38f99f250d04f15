//! The `signet` command line. Every subcommand loads the same configuration and calls the
//! same server code a running instance uses.
//!
//! Output convention: what a script may want to capture goes to stdout; messages and logs
//! go to stderr.

use crate::domain::{Algorithm, Kid};
use crate::server::audit::Actor;
use crate::server::config::Config;
use crate::server::keys::KeyService;
use crate::server::startup::{self, Application, ServeOptions};
use crate::server::{audit, startup as start, storage, telemetry};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Debug, Parser)]
#[command(name = "signet", version, about = "JWT signing keys, done right")]
struct Cli {
    /// TOML configuration file; SIGNET_* environment variables override it.
    #[arg(long, global = true, env = "SIGNET_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (admin UI, JWKS, API).
    Serve {
        /// On PostgreSQL, apply pending migrations instead of refusing to start.
        #[arg(long)]
        migrate: bool,
    },
    /// Apply pending database migrations.
    Migrate,
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Rotate the keys of every enabled algorithm, or of one.
    Rotate {
        /// Only this algorithm (e.g. EdDSA, RS256).
        #[arg(long, value_name = "ALG")]
        alg: Option<String>,
        /// Revoke the old active and next keys instead of retiring them (suspected
        /// compromise). Requires --reason.
        #[arg(long, requires = "reason")]
        revoke: bool,
        /// Why, for the audit log.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Revoke one key; it leaves the JWKS at once.
    Revoke {
        /// The key id.
        kid: String,
        /// Why, for the audit log.
        #[arg(long)]
        reason: String,
    },
    /// List the keys and their states.
    Keys {
        /// Print JSON (the same shape as GET /api/v1/keys).
        #[arg(long)]
        json: bool,
    },
    /// Re-wrap every stored private key under the active key-encryption key.
    Reencrypt,
    /// Manage API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Manage admin accounts of the web UI.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Work with the audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Work with the PKCS#11 token of the pkcs11_* settings.
    Hsm {
        #[command(subcommand)]
        command: HsmCommand,
    },
    /// Show the automatic-rotation schedule, or change it.
    Schedule {
        #[command(subcommand)]
        command: Option<ScheduleCommand>,
    },
}

#[derive(Debug, Subcommand)]
enum ScheduleCommand {
    /// Print the schedule, the last scheduled rotation and the next five (the default).
    Show,
    /// Change the schedule. Every running instance follows within a second.
    Set {
        /// The 7-field cron expression (sec min hour day_of_month month day_of_week
        /// year, UTC), quoted as one argument or given as seven.
        #[arg(required = true, num_args = 1..=7, value_name = "CRON")]
        cron: Vec<String>,
        /// Also change how long rotated keys stay published (e.g. 30d).
        #[arg(long)]
        retention: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token; prints its secret once, alone on stdout.
    Create {
        /// A unique name, e.g. the service that will use it.
        name: String,
        /// Scopes: keys:read, keys:write, audit:read, sign (repeatable).
        #[arg(long = "scope", required = true, num_args = 1..)]
        scopes: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Create an admin. Without --password-stdin, prints a generated one-time password
    /// alone on stdout; the admin chooses their own at the first sign-in.
    Create {
        email: String,
        /// admin (may change things) or viewer (may look).
        #[arg(long, default_value = "admin", value_parser = ["admin", "viewer"])]
        role: String,
        /// Read the password from the first line of stdin instead of generating one.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Give an admin a new one-time password (printed alone on stdout) and end their
    /// sessions.
    ResetPassword { email: String },
}

#[derive(Debug, Subcommand)]
enum HsmCommand {
    /// Open the module and log in; then, for every enabled algorithm, check the token's
    /// mechanisms and sign a test message with a throwaway key, verified in software.
    /// Prints pass or FAIL per algorithm; exits 1 if any fails. Stores nothing.
    Check,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the hash chain; report the first broken link.
    Verify,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate the configuration and print the effective values (secrets redacted).
    Check,
}

/// Exit code for an unusable configuration, distinct from runtime failures (1).
const EXIT_CONFIG: u8 = 2;

pub async fn run() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprint!("signet: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    telemetry::init(&config.log, config.log_format);
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }

    let result = match cli.command {
        Command::Serve { migrate } => serve(config, ServeOptions { migrate }).await,
        Command::Migrate => migrate(config).await,
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            print!("{}", config.describe());
            eprintln!("signet: configuration is valid");
            Ok(())
        }
        Command::Rotate {
            alg,
            revoke,
            reason,
        } => rotate(config, alg, revoke, reason).await,
        Command::Revoke { kid, reason } => revoke(config, kid, reason).await,
        Command::Keys { json } => keys(config, json).await,
        Command::Reencrypt => reencrypt(config).await,
        Command::Audit {
            command: AuditCommand::Verify,
        } => audit_verify(config).await,
        Command::Token {
            command: TokenCommand::Create { name, scopes },
        } => token_create(config, name, scopes).await,
        Command::Admin {
            command:
                AdminCommand::Create {
                    email,
                    role,
                    password_stdin,
                },
        } => admin_create(config, email, role, password_stdin).await,
        Command::Admin {
            command: AdminCommand::ResetPassword { email },
        } => admin_reset(config, email).await,
        Command::Hsm {
            command: HsmCommand::Check,
        } => hsm_check(config).await,
        Command::Schedule { command } => match command.unwrap_or(ScheduleCommand::Show) {
            ScheduleCommand::Show => schedule_show(config).await,
            ScheduleCommand::Set { cron, retention } => {
                schedule_set(config, cron.join(" "), retention).await
            }
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("signet: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config, options: ServeOptions) -> anyhow::Result<()> {
    let mut app = Application::build(config, options).await?;
    let url = app.url();
    tracing::info!(%url, "Signet is listening");
    let mut banner = format!("Signet is running at {url}\n");
    if let Some((email, password)) = app.take_first_admin() {
        // Printed once, to the operator's terminal, never to the log.
        banner.push_str(&format!(
            "\nFirst start: created the admin account {email}.\n\
             One-time password: {password}\n\
             It expires in 24 hours. Sign in at {url}/login and choose your own password.\n\n"
        ));
    }
    // Whoever started us may have stopped reading stdout (a script that only wanted the
    // URL); a closed pipe must not take the server down.
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(banner.as_bytes()).and_then(|()| out.flush());
    }
    app.run_until_stopped(startup::shutdown_signal()).await?;
    Ok(())
}

async fn migrate(config: Config) -> anyhow::Result<()> {
    let storage = storage::connect(&config.database_url).await?;
    let applied = storage.migrate().await?;
    storage.close().await;
    eprintln!(
        "signet: {applied} migration(s) applied to {}",
        config.database_url.redacted()
    );
    Ok(())
}

/// Opens the database and the key service the way `serve` does (SQLite is migrated,
/// PostgreSQL must be), and makes sure every enabled algorithm has its keys.
async fn open_keys(config: Config) -> anyhow::Result<(Arc<KeyService>, Arc<dyn storage::Storage>)> {
    let (storage, keyring) = start::open(&config, ServeOptions::default()).await?;
    let installation = storage.instance_info().await?.installation_id;
    let token = start::open_token(&config, &installation)?;
    let keys = Arc::new(
        KeyService::new(storage.clone(), Arc::new(keyring), Arc::new(config)).with_token(token),
    );
    keys.bootstrap(&Actor::cli()).await?;
    Ok((keys, storage))
}

async fn rotate(
    config: Config,
    alg: Option<String>,
    revoke: bool,
    reason: Option<String>,
) -> anyhow::Result<()> {
    let alg = alg.map(|a| Algorithm::parse(&a)).transpose()?;
    let (keys, storage) = open_keys(config).await?;
    let plan = keys.rotate(alg, revoke, reason, &Actor::cli()).await?;
    storage.close().await;
    for t in &plan.transitions {
        if t.from == t.to {
            eprintln!("signet: {} {} created as {}", t.alg, t.kid, t.to);
        } else {
            eprintln!("signet: {} {} {} -> {}", t.alg, t.kid, t.from, t.to);
        }
    }
    Ok(())
}

async fn revoke(config: Config, kid: String, reason: String) -> anyhow::Result<()> {
    let kid = Kid::parse(&kid)?;
    if reason.trim().is_empty() {
        anyhow::bail!("--reason must not be empty");
    }
    let (keys, storage) = open_keys(config).await?;
    keys.revoke(&kid, reason, &Actor::cli()).await?;
    storage.close().await;
    eprintln!("signet: revoked {kid}");
    Ok(())
}

/// Needs neither the database nor the key-encryption key.
async fn hsm_check(config: Config) -> anyhow::Result<()> {
    use crate::server::crypto::pkcs11::{Token, mechanism_names};
    let Some(settings) = config.pkcs11.clone() else {
        anyhow::bail!("pkcs11_module is not set: there is no token to check");
    };
    let algorithms = config.algorithms.as_slice().to_vec();
    let bits = config.rsa_bits;
    let (opened, results) = tokio::task::spawn_blocking(move || {
        // Its keys are session objects, gone with the session: no installation owns them.
        let token = Token::open(&settings, &[], "hsm-check")?;
        let opened = format!(
            "module {}: loaded\ntoken '{}' in slot {}: logged in",
            settings.module.display(),
            token.label(),
            token
                .slot_id()
                .map_or_else(|| "?".into(), |id| id.to_string())
        );
        let results: Vec<_> = algorithms
            .iter()
            .map(|&alg| (alg, token.self_test(alg, bits)))
            .collect();
        Ok::<_, anyhow::Error>((opened, results))
    })
    .await??;
    println!("{opened}");
    let mut failed = 0;
    for (alg, result) in &results {
        match result {
            Ok(()) => println!(
                "{alg:<6} pass  {}: a throwaway key signed, and the signature verified",
                mechanism_names(*alg)
            ),
            Err(e) => {
                failed += 1;
                println!("{alg:<6} FAIL  {e}");
            }
        }
    }
    if failed > 0 {
        anyhow::bail!(
            "{failed} of {} enabled algorithms cannot be used on this token",
            results.len()
        );
    }
    eprintln!("signet: the token can do every enabled algorithm");
    Ok(())
}

/// Read-only: needs no key-encryption key.
async fn keys(config: Config, json: bool) -> anyhow::Result<()> {
    let storage = start::open_existing_storage(&config, ServeOptions::default()).await?;
    let list = storage.list_keys().await;
    storage.close().await;
    let list = list?;
    if json {
        let answer = crate::server::keys::listing::listing(&list);
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        println!(
            "{:<7} {:<8} {:<44} {:<20} {:<9} PUBLISHED UNTIL",
            "ALG", "STATE", "KID", "CREATED", "BACKEND"
        );
        for k in &list {
            let until = match k.info.state {
                crate::domain::KeyState::Rotated => k
                    .info
                    .expires_at
                    .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                    .unwrap_or_default(),
                crate::domain::KeyState::Next | crate::domain::KeyState::Active => "-".into(),
                _ => "not published".into(),
            };
            println!(
                "{:<7} {:<8} {:<44} {:<20} {:<9} {}",
                k.info.alg,
                k.info.state,
                k.info.kid,
                k.info.created_at.format("%Y-%m-%d %H:%M"),
                k.backend(),
                until
            );
        }
    }
    Ok(())
}

/// Read-only: needs no key-encryption key. Before the first start stored a schedule, it
/// shows the configured one.
async fn schedule_show(config: Config) -> anyhow::Result<()> {
    let storage = start::open_existing_storage(&config, ServeOptions::default()).await?;
    let read = async {
        let stored = storage.get_schedule().await?;
        let last = storage
            .last_slot(crate::server::keys::SLOT_ROTATION)
            .await?;
        anyhow::Ok((stored, last))
    }
    .await;
    storage.close().await;
    let (stored, last) = read?;
    let schedule = match stored {
        Some(row) => crate::server::keys::Schedule::from_row(&row)?,
        None => crate::server::keys::Schedule {
            cron: config.rotation_cron.clone(),
            retention: config.retention,
            updated_at: None,
            cron_since: None,
        },
    };
    let time = crate::domain::time::format_utc;
    println!("cron:      {}", schedule.cron);
    println!("retention: {}", schedule.retention);
    match last {
        Some((slot, by)) => println!("last scheduled rotation: {} (by {by})", time(slot)),
        None => println!("last scheduled rotation: none yet"),
    }
    let upcoming = schedule.cron.upcoming(chrono::Utc::now(), 5);
    if upcoming.is_empty() {
        println!("next: never (the expression has no fire time left; set a new one)");
    }
    for t in upcoming {
        println!("next:      {}", time(t));
    }
    Ok(())
}

async fn schedule_set(
    config: Config,
    cron: String,
    retention: Option<String>,
) -> anyhow::Result<()> {
    let (keys, storage) = open_keys(config).await?;
    let old = keys.load_schedule().await?;
    let result = keys
        .set_schedule(&cron, retention.as_deref(), &Actor::cli())
        .await;
    storage.close().await;
    let new = result?;
    eprintln!(
        "signet: schedule changed from '{}' (retention {}) to '{}' (retention {})",
        old.cron, old.retention, new.cron, new.retention
    );
    Ok(())
}

async fn reencrypt(config: Config) -> anyhow::Result<()> {
    let (keys, storage) = open_keys(config).await?;
    let count = keys.reencrypt(&Actor::cli()).await?;
    storage.close().await;
    eprintln!("signet: {count} key(s) re-encrypted under the active key-encryption key");
    Ok(())
}

async fn audit_verify(config: Config) -> anyhow::Result<()> {
    // Only reads: creates neither the database nor a key-encryption key (a new one could
    // not authenticate a single event, and would be taken for the real one later).
    let keyring = start::read_keyring(&config).map_err(|e| {
        anyhow::anyhow!(
            "key-encryption key: {e}: the audit log is authenticated with the KEK that \
             sealed its keys (set enc_keys, or point data_dir at the directory that holds \
             signet.kek)"
        )
    })?;
    let storage = start::open_existing_storage(&config, ServeOptions::default()).await?;
    let log = storage.audit_log().await?;
    storage.close().await;
    let keys = audit::AuditKeys::new(keyring);
    match audit::verify_keyed_chain(&log, Some(&keys)) {
        Ok(n) => {
            println!("ok: {n} events, hash chain intact, every event authenticated");
            Ok(())
        }
        Err(e @ audit::ChainBreak::MissingKek { .. }) => {
            anyhow::bail!("audit log cannot be verified: {e}")
        }
        Err(e) => anyhow::bail!("audit log is broken: {e}"),
    }
}

async fn token_create(config: Config, name: String, scopes: Vec<String>) -> anyhow::Result<()> {
    let (storage, _) = start::open(&config, ServeOptions::default()).await?;
    let result =
        crate::server::accounts::tokens::create(storage.as_ref(), &name, &scopes, &Actor::cli())
            .await;
    storage.close().await;
    let secret = result?;
    println!("{secret}");
    eprintln!("signet: token '{name}' created; the secret above is shown only once");
    Ok(())
}

async fn admin_create(
    config: Config,
    email: String,
    role: String,
    password_stdin: bool,
) -> anyhow::Result<()> {
    let role = crate::domain::Role::parse(&role)
        .ok_or_else(|| anyhow::anyhow!("--role must be admin or viewer"))?;
    let password = if password_stdin {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        Some(line)
    } else {
        None
    };
    let (storage, _) = start::open(&config, ServeOptions::default()).await?;
    let result = crate::server::accounts::admins::create_admin(
        storage.as_ref(),
        &email,
        role,
        password,
        &Actor::cli(),
    )
    .await;
    storage.close().await;
    let (admin, generated) = result?;
    match generated {
        Some(password) => {
            println!("{password}");
            eprintln!(
                "signet: {role} {} created; the one-time password above is shown only once, \
                 expires in 24 hours and must be changed at the first sign-in",
                admin.email
            );
        }
        None => eprintln!("signet: {role} {} created", admin.email),
    }
    Ok(())
}

async fn admin_reset(config: Config, email: String) -> anyhow::Result<()> {
    let (storage, _) = start::open(&config, ServeOptions::default()).await?;
    let result =
        crate::server::accounts::admins::reset_password(storage.as_ref(), &email, &Actor::cli())
            .await;
    storage.close().await;
    let password = result?;
    println!("{password}");
    eprintln!(
        "signet: new one-time password for {} above (shown only once; it expires in 24 hours); \
         their sessions have ended and their sign-in throttle is lifted",
        email.trim().to_lowercase()
    );
    Ok(())
}
