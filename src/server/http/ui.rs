//! What the admin UI needs beyond Leptos: security headers on every response, the
//! sign-in gate in front of the pages, and PEM downloads of public keys. The live event
//! stream and the export are in [`super::events`].

use crate::domain::text::sentence;
use crate::domain::{Kid, Role};
use crate::server::accounts::sessions::{self, Denied};
use crate::server::crypto::PublicJwk;
use crate::server::error::Classify;
use crate::server::state::AppState;
use crate::server::storage::{AdminRow, UNAVAILABLE_MESSAGE};
use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use tower_sessions::Session;

/// The UI's own routes (the session layer wraps them in `http::router`).
pub fn router() -> Router<AppState> {
    Router::new().route("/config/jwks/{kid}/public.pem", get(download_pem))
}

/// Headers for every response. HTML pages get a stricter CSP with a per-response script
/// nonce from the shell (`app::shell`); everything else may not be framed or run anything.
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    let mut set = |name: header::HeaderName, value: &'static str| {
        if !h.contains_key(&name) {
            h.insert(name, HeaderValue::from_static(value));
        }
    };
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(header::REFERRER_POLICY, "no-referrer");
    set(header::X_FRAME_OPTIONS, "DENY");
    set(
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    );
    res
}

/// The CSP of an HTML page: scripts only from this site or carrying the nonce, wasm
/// allowed to compile, no inline styles, no framing.
pub fn page_csp(nonce: &str) -> String {
    format!(
        "default-src 'self'; script-src 'self' 'nonce-{nonce}' 'wasm-unsafe-eval'; \
         style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
         object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
}

/// The pages that need a signed-in admin: every page of the app but `/login`. (The UI's
/// other routes, such as the event stream, answer 401 themselves.)
const PRIVATE_PAGES: [&str; 6] = [
    "/",
    "/config/jwks",
    "/config/schedule",
    "/events",
    "/settings",
    "/account/password",
];

fn is_private_page(path: &str) -> bool {
    let path = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    PRIVATE_PAGES.contains(&path)
}

/// The password page an admin with a one-time password is sent to.
pub const PASSWORD_PAGE: &str = "/account/password";

/// Sends anonymous visitors of a page to `/login` (remembering where they were going),
/// admins holding a one-time password to the password page, and signed-in admins away
/// from `/login`. Server functions do their own checks; this only routes page loads.
pub async fn page_gate(
    State(state): State<AppState>,
    session: Session,
    req: Request,
    next: Next,
) -> Response {
    if req.method() != Method::GET {
        return next.run(req).await;
    }
    let path = req.uri().path().to_string();
    let private = is_private_page(&path);
    if !private && path != "/login" {
        return next.run(req).await;
    }
    let admin = match sessions::current(&session, state.storage.as_ref(), &state.config).await {
        Ok(admin) => admin,
        Err(_) => return unavailable(),
    };
    match admin {
        None if private => {
            let target = req
                .uri()
                .path_and_query()
                .map_or(path.clone(), |p| p.to_string());
            let next_param =
                url::form_urlencoded::byte_serialize(target.as_bytes()).collect::<String>();
            Redirect::to(&format!("/login?next={next_param}")).into_response()
        }
        Some(a) if a.must_change_password && path != PASSWORD_PAGE => {
            Redirect::to(PASSWORD_PAGE).into_response()
        }
        Some(_) if path == "/login" => Redirect::to("/").into_response(),
        _ => next.run(req).await,
    }
}

/// The database is away: 503 with the sentence the pages show.
fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        sentence(UNAVAILABLE_MESSAGE),
    )
        .into_response()
}

/// A failed service call on the UI's plain routes: the refusal's status and sentence, or
/// a logged internal error.
fn failed(e: impl Classify) -> Response {
    match e.answer("UI") {
        Some(r) => (r.status(), sentence(r.message())).into_response(),
        None => {
            tracing::error!(error = %e, "UI request failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "Internal error.").into_response()
        }
    }
}

/// The signed-in admin with at least `role`, for the UI's plain HTTP routes (reads only).
pub(super) async fn viewer(
    state: &AppState,
    session: &Session,
    role: Role,
) -> Result<AdminRow, Response> {
    let refuse = |status: StatusCode, d: Denied| (status, d.to_string()).into_response();
    match sessions::current(session, state.storage.as_ref(), &state.config).await {
        Ok(Some(a)) if a.must_change_password => {
            Err(refuse(StatusCode::FORBIDDEN, Denied::PasswordChange))
        }
        Ok(Some(a)) if a.role.allows(role) => Ok(a),
        Ok(Some(a)) => Err(refuse(StatusCode::FORBIDDEN, Denied::Role(a.role))),
        Ok(None) => Err(refuse(StatusCode::UNAUTHORIZED, Denied::SignedOut)),
        Err(d) => Err(refuse(StatusCode::SERVICE_UNAVAILABLE, d)),
    }
}

/// `GET /config/jwks/{kid}/public.pem`: a key's public half as a PEM file.
async fn download_pem(
    State(state): State<AppState>,
    session: Session,
    Path(kid): Path<String>,
) -> Response {
    if let Err(refused) = viewer(&state, &session, Role::Viewer).await {
        return refused;
    }
    let Ok(kid) = Kid::parse(&kid) else {
        return (StatusCode::BAD_REQUEST, "not a key id").into_response();
    };
    let keys = match state.storage.list_keys().await {
        Ok(keys) => keys,
        Err(e) => return failed(e),
    };
    let Some(key) = keys.iter().find(|k| k.info.kid == kid) else {
        return (StatusCode::NOT_FOUND, format!("no key with id {kid}")).into_response();
    };
    let pem = serde_json::from_str::<PublicJwk>(&key.public_jwk)
        .map_err(|_| ())
        .and_then(|jwk| crate::server::crypto::pem::public_pem(&jwk).map_err(|_| ()));
    match pem {
        Ok(pem) => (
            [
                (header::CONTENT_TYPE, "application/x-pem-file".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{}-{kid}.pem\"", key.info.alg),
                ),
            ],
            pem,
        )
            .into_response(),
        Err(()) => {
            tracing::error!(%kid, "stored public key cannot be written as PEM");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "this key cannot be written as PEM",
            )
                .into_response()
        }
    }
}

/// Server functions answer a request whose arguments do not decode (a missing field, a
/// wrong type, a body that is not a form) with 500 and the decoder's text. That is the
/// client's mistake: make it a 400 with a plain message, like every other bad input.
pub async fn bad_arguments_are_400(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    if response.status() != StatusCode::INTERNAL_SERVER_ERROR {
        return response;
    }
    let (parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024).await else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "Internal error.").into_response();
    };
    let text = String::from_utf8_lossy(&bytes);
    let argument_error = ["Args|", "Deserialization|", "MissingArg|"]
        .iter()
        .any(|p| text.starts_with(p));
    if argument_error {
        return (
            StatusCode::BAD_REQUEST,
            "The request's arguments are missing or malformed.",
        )
            .into_response();
    }
    Response::from_parts(parts, axum::body::Body::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_pages_are_everything_but_login() {
        for p in PRIVATE_PAGES {
            assert!(is_private_page(p), "{p}");
            if p != "/" {
                assert!(is_private_page(&format!("{p}/")), "{p}/");
            }
        }
        for p in [
            "/login",
            "/eventsx",
            "/favicon.svg",
            "/pkg/signet.js",
            "/.well-known/jwks.json",
        ] {
            assert!(!is_private_page(p), "{p}");
        }
    }
}
