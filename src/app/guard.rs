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
    use crate::server::accounts::sessions::{self, Denied};
    use crate::server::error::{Classify, Refusal};
    use crate::server::storage::AdminRow;

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
        pub fn actor(&self) -> crate::server::audit::Actor {
            crate::server::accounts::admins::admin_actor(&self.admin, self.source.clone())
        }
    }

    /// A refusal: sets the HTTP status and returns the message as the error.
    pub fn refuse(status: StatusCode, message: impl Into<String>) -> ServerFnError {
        if let Some(res) = use_context::<leptos_axum::ResponseOptions>() {
            res.set_status(status);
        }
        ServerFnError::ServerError(message.into())
    }

    /// A failed service call, answered as [`crate::server::error`] classifies it: a refusal
    /// with its status and a sentence, or an internal failure, logged with its cause and
    /// reported without it. A database that cannot be reached is an outage (503), not a
    /// fault.
    pub fn internal<E: Classify>(e: E) -> ServerFnError {
        match e.answer("server function") {
            Some(r) => refusal(r),
            None => fault(e),
        }
    }

    /// A fault that is no service's (a session store error, a missing layer): logged with
    /// its cause and reported without it.
    pub fn fault<E: std::fmt::Display>(e: E) -> ServerFnError {
        tracing::error!(error = %e, "server function failed");
        refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal error; the server log has the details.",
        )
    }

    /// A refusal the service classified: its status and message as a sentence.
    pub fn refusal(r: Refusal) -> ServerFnError {
        refuse(r.status(), sentence(r.message()))
    }

    fn denied(d: Denied) -> ServerFnError {
        let status = match d {
            Denied::SignedOut => StatusCode::UNAUTHORIZED,
            Denied::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Denied::PasswordChange | Denied::Role(_) | Denied::Origin => StatusCode::FORBIDDEN,
        };
        refuse(status, capitalize(&d.to_string()))
    }

    pub use crate::domain::text::{capitalize, sentence};

    /// The request's parts, session and source address.
    pub fn request() -> Result<(AppState, Parts, Session, Option<String>), ServerFnError> {
        let state = expect_context::<AppState>();
        let parts = use_context::<Parts>().ok_or_else(|| fault("no request in context"))?;
        let session = parts
            .extensions
            .get::<Session>()
            .cloned()
            .ok_or_else(|| fault("no session layer on this route"))?;
        let source = crate::server::http::client_ip::source_of(
            &state,
            crate::server::http::client_ip::peer(&parts),
            &parts.headers,
        );
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
        if access == Access::Change && !sessions::same_origin(&parts.headers, &state.config) {
            return Err(denied(Denied::Origin));
        }
        let admin = sessions::current(&session, state.storage.as_ref(), &state.config)
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
        if !sessions::same_origin(&parts.headers, &state.config) {
            return Err(denied(Denied::Origin));
        }
        Ok((state, session, source))
    }
}
