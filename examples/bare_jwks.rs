//! The benchmark's baseline: a bare axum server that answers `GET /.well-known/jwks.json`
//! with fixed bytes read from a file, and optionally the same response headers as Signet
//! (read from a `curl -D` dump), so both put the same bytes on the wire. `bench/run`
//! loads it side by side with Signet.
//!
//! Usage: bare_jwks ADDR BODY_FILE [HEADERS_FILE]

#[cfg(feature = "ssr")]
#[tokio::main]
async fn main() -> std::io::Result<()> {
    use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
    use axum::routing::get;
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(file)) = (args.next(), args.next()) else {
        eprintln!("usage: bare_jwks ADDR BODY_FILE [HEADERS_FILE]");
        std::process::exit(2);
    };
    let body: &'static [u8] = Box::leak(std::fs::read(file)?.into_boxed_slice());
    let mut headers = HeaderMap::new();
    match args.next() {
        // Every header of the dump but those hyper writes itself.
        Some(dump) => {
            for line in std::fs::read_to_string(dump)?.lines().skip(1) {
                let Some((name, value)) = line.split_once(':') else {
                    continue;
                };
                let name = name.trim().to_ascii_lowercase();
                if ["date", "content-length", "connection"].contains(&name.as_str()) {
                    continue;
                }
                if let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(value.trim()),
                ) {
                    headers.insert(n, v);
                }
            }
        }
        None => {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            headers.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300"),
            );
        }
    }
    let app = axum::Router::new().route(
        "/.well-known/jwks.json",
        get(move || {
            let headers = headers.clone();
            async move { (headers, body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await
}

#[cfg(not(feature = "ssr"))]
fn main() {}
