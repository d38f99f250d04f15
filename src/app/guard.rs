//! Who may call a server function, and how errors reach the page.
//!
//! Every server function starts with [`require`]: a signed-in admin with the role it
//! needs and, for a change, a request from this site (`Origin`). A refusal answers 401
//! or 403 with a message the page shows as it is.

use leptos::prelude::ServerFnError;

/// The text of a server function error, for the page.
pub fn describe(e: &ServerFnError) -> String {
    match e {
        ServerFnError::ServerError(m) => m.clone(),
        ServerFnError::Request(_) | ServerFnError::Response(_) => {
            "The server could not be reached. Check the connection and try again.".into()
        }
        other => other.to_string(),
    }
}

#[cfg(feature = "ssr")]
pub use server::*;

#[cfg(feature = "ssr")]
mod server {
    use super::*;
    use crate::domain::Role;
    use crate::server::AppState;
    use crate::server::session::{self, Denied};
    use crate::server::storage::AdminRow;
    use crate::server::web;
    use axum::http::StatusCode;
    use axum::http::request::Parts;
    use leptos::prelude::{expect_context, use_context};
    use tower_sessions::Session;

    /// Whether a server function changes state (and so must come from this site).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Access {
        Read,
        Change,
    }

    /// A caller who passed [`require`].
    pub struct Caller {
        pub state: AppState,
        pub admin: AdminRow,
        pub session: Session,
        /// The client address, for the audit log.
        pub source: Option<String>,
    }

    impl Caller {
        pub fn actor(&self) -> crate::server::keys::Actor {
            crate::server::auth::admin_actor(&self.admin, self.source.clone())
        }
    }

    /// A refusal: sets the HTTP status and returns the message as the error.
    pub fn refuse(status: StatusCode, message: impl Into<String>) -> ServerFnError {
        if let Some(res) = use_context::<leptos_axum::ResponseOptions>() {
            res.set_status(status);
        }
        ServerFnError::ServerError(message.into())
    }

    /// An internal failure: logged with its cause, reported without it. A database that
    /// cannot be reached is an outage, not a fault: 503 and a sentence saying so.
    pub fn internal<E: std::fmt::Display + 'static>(e: E) -> ServerFnError {
        if unavailable(&e) {
            tracing::warn!(error = %e, "server function: database unavailable");
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                sentence(crate::server::storage::UNAVAILABLE_MESSAGE),
            );
        }
        tracing::error!(error = %e, "server function failed");
        refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal error; the server log has the details.",
        )
    }

    /// Whether an error any server function may meet comes from an unreachable database.
    fn unavailable(e: &dyn std::any::Any) -> bool {
        use crate::server::auth::AuthError;
        use crate::server::keys::{KeyError, ScheduleError};
        use crate::server::storage::StorageError;
        use crate::server::tokens::TokenError;
        let storage = e
            .downcast_ref::<StorageError>()
            .or_else(|| match e.downcast_ref::<KeyError>() {
                Some(KeyError::Storage(s)) => Some(s),
                _ => None,
            })
            .or_else(|| match e.downcast_ref::<ScheduleError>() {
                Some(ScheduleError::Storage(s)) => Some(s),
                _ => None,
            })
            .or_else(|| match e.downcast_ref::<AuthError>() {
                Some(AuthError::Storage(s)) => Some(s),
                _ => None,
            })
            .or_else(|| match e.downcast_ref::<TokenError>() {
                Some(TokenError::Storage(s)) => Some(s),
                _ => None,
            });
        storage.is_some_and(StorageError::is_unavailable)
    }

    fn denied(d: Denied) -> ServerFnError {
        let status = match d {
            Denied::SignedOut => StatusCode::UNAUTHORIZED,
            Denied::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Denied::PasswordChange | Denied::Role(_) | Denied::Origin => StatusCode::FORBIDDEN,
        };
        refuse(status, capitalize(&d.to_string()))
    }

    fn capitalize(s: &str) -> String {
        let mut c = s.chars();
        c.next()
            .map(|f| f.to_uppercase().chain(c).collect())
            .unwrap_or_default()
    }

    /// An error's text as a sentence for the page: capitalized, with a full stop.
    pub fn sentence(s: &str) -> String {
        format!("{}.", capitalize(s))
    }

    /// The request's parts, session and source address.
    pub fn request() -> Result<(AppState, Parts, Session, Option<String>), ServerFnError> {
        let state = expect_context::<AppState>();
        let parts = use_context::<Parts>().ok_or_else(|| internal("no request in context"))?;
        let session = parts
            .extensions
            .get::<Session>()
            .cloned()
            .ok_or_else(|| internal("no session layer on this route"))?;
        let source = web::source_of(&state, web::peer(&parts), &parts.headers);
        Ok((state, parts, session, source))
    }

    /// Checks origin (for changes), session and role.
    pub async fn require(role: Role, access: Access) -> Result<Caller, ServerFnError> {
        require_inner(role, access, false).await
    }

    /// Like [`require`], but also lets in an admin who still holds a one-time password
    /// (the password change itself, and sign-out).
    pub async fn require_any_password(access: Access) -> Result<Caller, ServerFnError> {
        require_inner(Role::Viewer, access, true).await
    }

    async fn require_inner(
        role: Role,
        access: Access,
        allow_one_time: bool,
    ) -> Result<Caller, ServerFnError> {
        let (state, parts, session, source) = request()?;
        if access == Access::Change && !session::same_origin(&parts.headers, &state.config) {
            return Err(denied(Denied::Origin));
        }
        let admin = session::current(&session, state.storage.as_ref(), &state.config)
            .await
            .map_err(denied)?
            .ok_or_else(|| denied(Denied::SignedOut))?;
        if admin.must_change_password && !allow_one_time {
            return Err(denied(Denied::PasswordChange));
        }
        if !admin.role.allows(role) {
            return Err(denied(Denied::Role(admin.role)));
        }
        Ok(Caller {
            state,
            admin,
            session,
            source,
        })
    }

    /// For the sign-in form, which has no session yet: only the origin check.
    pub fn require_same_origin() -> Result<(AppState, Session, Option<String>), ServerFnError> {
        let (state, parts, session, source) = request()?;
        if !session::same_origin(&parts.headers, &state.config) {
            return Err(denied(Denied::Origin));
        }
        Ok((state, session, source))
    }
}
