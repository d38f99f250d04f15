//! The benchmark's baseline: a bare axum server that answers `GET /.well-known/jwks.json`
//! with fixed bytes read from a file. `bench/run` loads it side by side with Signet.
//!
//! Usage: bare_jwks ADDR FILE

#[cfg(feature = "ssr")]
#[tokio::main]
async fn main() -> std::io::Result<()> {
    use axum::routing::get;
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(file)) = (args.next(), args.next()) else {
        eprintln!("usage: bare_jwks ADDR FILE");
        std::process::exit(2);
    };
    let body: &'static [u8] = Box::leak(std::fs::read(file)?.into_boxed_slice());
    let app = axum::Router::new().route(
        "/.well-known/jwks.json",
        get(move || async move {
            (
                [
                    (axum::http::header::CONTENT_TYPE, "application/json"),
                    (axum::http::header::CACHE_CONTROL, "public, max-age=300"),
                ],
                body,
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await
}

#[cfg(not(feature = "ssr"))]
fn main() {}
