//! Logging setup: `SIGNET_LOG` is the filter, `SIGNET_LOG_FORMAT` picks text or JSON.
//! Logs go to stderr, so stdout stays free for what commands print for scripts.

use crate::server::config::LogFormat;
use tracing_subscriber::EnvFilter;

pub fn init(filter: &str, format: LogFormat) {
    let mut directives = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    // cryptoki logs an ERROR for every vendor mechanism a token lists that it has no name
    // for (SoftHSM2 lists several): noise, unless asked for by name.
    if !filter.contains("cryptoki")
        && let Ok(quiet) = "cryptoki::mechanism=off".parse()
    {
        directives = directives.add_directive(quiet);
    }
    let filter = directives;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // `try_init` fails only if a subscriber is already set (tests), which is fine.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
