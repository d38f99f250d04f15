//! How a failed operation is answered: one classification that the REST API and the UI's
//! server functions share, so an error gets the same status in both.
//!
//! A service error either is a [`Refusal`] (the caller asked for something that cannot be
//! done, or the database is away for now), which the caller is told, or an internal fault
//! (`None`), which is logged with its cause and answered with a bare 500.

use crate::domain::lifecycle::PlanError;
use crate::domain::{Algorithm, TextError};
use crate::server::accounts::admins::AuthError;
use crate::server::accounts::tokens::TokenError;
use crate::server::crypto::CryptoError;
use crate::server::keys::jwt::SignError;
use crate::server::keys::{KeyError, ScheduleError};
use crate::server::storage::{StorageError, UNAVAILABLE_MESSAGE};
use axum::http::StatusCode;

/// What the caller is told, with the API's error code for a bad request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 400: the request names something invalid.
    Invalid(&'static str, String),
    /// 401: the credentials are wrong (or no longer work).
    Unauthorized(String),
    /// 404
    NotFound(String),
    /// 409: the request conflicts with what is stored.
    Conflict(String),
    /// 429: too many attempts; try again later.
    Throttled(String),
    /// 503: something the request needs is unavailable for now; the message says what.
    Unavailable(String),
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Invalid(..) => StatusCode::BAD_REQUEST,
            Refusal::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Refusal::NotFound(_) => StatusCode::NOT_FOUND,
            Refusal::Conflict(_) => StatusCode::CONFLICT,
            Refusal::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
            Refusal::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Refusal::Invalid(_, m)
            | Refusal::Unauthorized(m)
            | Refusal::NotFound(m)
            | Refusal::Conflict(m)
            | Refusal::Throttled(m)
            | Refusal::Unavailable(m) => m,
        }
    }
}

/// An error that may be the caller's to hear about.
pub trait Classify: std::error::Error + Send + Sync + 'static {
    /// The refusal to answer with, or `None` for an internal fault.
    fn refusal(&self) -> Option<Refusal>;

    /// [`Classify::refusal`] for whoever answers (`via`: "API", "UI"): a database outage
    /// is logged here as a warning with its cause, which the caller is not shown; other
    /// refusals are the caller's business and are not logged.
    fn answer(&self, via: &'static str) -> Option<Refusal> {
        let refusal = self.refusal();
        if matches!(&refusal, Some(Refusal::Unavailable(m)) if m == UNAVAILABLE_MESSAGE) {
            tracing::warn!(error = %self, via, "database unavailable");
        }
        refusal
    }
}

impl Classify for StorageError {
    fn refusal(&self) -> Option<Refusal> {
        self.is_unavailable()
            .then(|| Refusal::Unavailable(UNAVAILABLE_MESSAGE.into()))
    }
}

impl Classify for KeyError {
    fn refusal(&self) -> Option<Refusal> {
        match self {
            KeyError::Plan(p @ PlanError::UnknownKid(_)) => Some(Refusal::NotFound(p.to_string())),
            KeyError::Plan(p @ PlanError::NotRevocable { .. }) => {
                Some(Refusal::Conflict(p.to_string()))
            }
            // The request names an algorithm this server does not sign with.
            KeyError::Plan(p @ PlanError::NotEnabled(_)) => {
                Some(Refusal::Invalid("invalid_alg", p.to_string()))
            }
            KeyError::Busy | KeyError::TokenMissing(_) | KeyError::Crypto(CryptoError::Hsm(_)) => {
                Some(Refusal::Unavailable(self.to_string()))
            }
            KeyError::Storage(e) => e.refusal(),
            _ => None,
        }
    }
}

impl Classify for ScheduleError {
    fn refusal(&self) -> Option<Refusal> {
        match self {
            ScheduleError::Cron(_) => Some(Refusal::Invalid("invalid_cron", self.to_string())),
            ScheduleError::Retention(_) | ScheduleError::TooShort { .. } => {
                Some(Refusal::Invalid("invalid_retention", self.to_string()))
            }
            ScheduleError::Storage(e) => e.refusal(),
            ScheduleError::Stored(_) => None,
        }
    }
}

impl Classify for AuthError {
    fn refusal(&self) -> Option<Refusal> {
        let m = self.to_string();
        match self {
            AuthError::Refused | AuthError::Expired(_) => Some(Refusal::Unauthorized(m)),
            AuthError::Throttled(_) => Some(Refusal::Throttled(m)),
            AuthError::Email(_) | AuthError::Password(_) | AuthError::WrongPassword => {
                Some(Refusal::Invalid("invalid_body", m))
            }
            AuthError::NoSuchAdmin(_) => Some(Refusal::NotFound(m)),
            AuthError::Exists(_) | AuthError::DisableSelf | AuthError::LastAdmin => {
                Some(Refusal::Conflict(m))
            }
            AuthError::Storage(e) => e.refusal(),
            AuthError::Hash(_) => None,
        }
    }
}

impl Classify for TokenError {
    fn refusal(&self) -> Option<Refusal> {
        match self {
            TokenError::UnknownScope(_) | TokenError::NoScope | TokenError::BadName => {
                Some(Refusal::Invalid("invalid_token", self.to_string()))
            }
            TokenError::Exists(_) => Some(Refusal::Conflict(self.to_string())),
            TokenError::Storage(e) => e.refusal(),
            TokenError::Random => None,
        }
    }
}

impl Classify for SignError {
    fn refusal(&self) -> Option<Refusal> {
        let m = self.to_string();
        match self {
            SignError::ReservedClaim(_) => Some(Refusal::Invalid("invalid_claims", m)),
            SignError::NotEnabled(_) => Some(Refusal::Invalid("invalid_alg", m)),
            SignError::TtlZero | SignError::TtlTooLong { .. } => {
                Some(Refusal::Invalid("invalid_ttl", m))
            }
            SignError::Unavailable(_)
            | SignError::NoActiveKey(_)
            | SignError::Crypto(CryptoError::Hsm(_)) => Some(Refusal::Unavailable(m)),
            SignError::Crypto(_) => None,
        }
    }
}

impl Classify for TextError {
    fn refusal(&self) -> Option<Refusal> {
        let code = match self {
            TextError::Empty(_) => "missing_reason",
            _ => "invalid_body",
        };
        Some(Refusal::Invalid(code, self.to_string()))
    }
}

/// Reads an optional algorithm name: none means the default; a name given must be one.
pub fn parse_alg(name: Option<&str>) -> Result<Option<Algorithm>, Refusal> {
    name.map(|a| Algorithm::parse(a).map_err(|e| Refusal::Invalid("invalid_alg", e.to_string())))
        .transpose()
}
