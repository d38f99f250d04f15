//! Storage: small traits by concern, each implemented once for SQLite and PostgreSQL.
//!
//! The rest of the server talks to `dyn Storage` only: the sum of [`KeyStore`],
//! [`AuditStore`], [`AdminStore`], [`SessionStore`], [`TokenStore`], [`ScheduleStore`] and
//! [`Lifecycle`]. Methods of those traits can be called on `dyn Storage` directly;
//! generic code or a concrete backend needs them in scope (`use storage::prelude::*`).
//!
//! Each concern's file holds its trait, its row types and its SQL, written once for both
//! engines (see `sql.rs` for how). Whatever differs between the two engines (SQL dialect,
//! how a file or a server goes away, how migrations are looked up, how other instances
//! hear of a change) stays in `sqlite.rs` and `postgres.rs`.

mod admins;
mod audit;
mod error;
mod keys;
mod lifecycle;
mod postgres;
mod schedule;
mod sessions;
mod sql;
mod sqlite;
mod tokens;

use crate::server::config::{Backend, DatabaseUrl};
use std::sync::Arc;

pub use admins::{AdminChange, AdminRow, AdminStore};
pub use audit::{AuditStore, EventQuery, KeyedChain, PrunedEvents};
pub use error::{StorageError, UNAVAILABLE_MESSAGE};
pub use keys::{KeyChange, KeyStore, NewKey, Resealed, StoredKey};
pub use lifecycle::{InstanceInfo, Lifecycle, PendingMigration};
pub use postgres::PostgresStorage;
pub use schedule::{ScheduleRow, ScheduleStore, SlotClaim};
pub use sessions::SessionStore;
pub use sql::AuditKeyState;
pub use sqlite::SqliteStorage;
pub use tokens::{ApiTokenRow, Revocations, TokenStore};

/// The storage traits, for code that calls them on something other than `dyn Storage`.
pub mod prelude {
    pub use super::{
        AdminStore, AuditStore, KeyStore, Lifecycle, ScheduleStore, SessionStore, Storage,
        TokenStore,
    };
}

/// Everything the server stores, as one trait object (`Arc<dyn Storage>`).
pub trait Storage:
    KeyStore
    + AuditStore
    + AdminStore
    + SessionStore
    + TokenStore
    + ScheduleStore
    + Lifecycle
    + Send
    + Sync
    + 'static
{
}

// Every backend implements each concern (in the concern's file), so each is a `Storage`.
impl<B: sql::SqlBackend> Storage for B {}

/// Opens the database a URL names. For SQLite this creates the file (and its directory)
/// when missing; for PostgreSQL the database must exist.
pub async fn connect(url: &DatabaseUrl) -> Result<Arc<dyn Storage>, StorageError> {
    Ok(match url.backend() {
        Backend::Sqlite => Arc::new(SqliteStorage::connect(url).await?),
        Backend::Postgres => Arc::new(PostgresStorage::connect(url).await?),
    })
}
