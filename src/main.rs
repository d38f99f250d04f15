//! The `signet` binary. Everything it does lives in the library (`server::cli`).

#[cfg(feature = "ssr")]
#[tokio::main]
async fn main() -> std::process::ExitCode {
    signet::server::cli::run().await
}

#[cfg(not(feature = "ssr"))]
fn main() {
    // Built without `ssr` only as part of the browser bundle, which has no binary.
}
