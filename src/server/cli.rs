//! The `signet` command line. Every subcommand loads the same configuration and calls the
//! same server code a running instance uses.
//!
//! Output convention: what a script may want to capture goes to stdout; messages and logs
//! go to stderr.

use crate::server::config::Config;
use crate::server::startup::{self, Application, ServeOptions};
use crate::server::{storage, telemetry};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

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
    let app = Application::build(config, options).await?;
    let url = app.url();
    tracing::info!(%url, "Signet is listening");
    println!("Signet is running at {url}");
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
