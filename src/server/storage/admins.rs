//! Admin accounts: creating, finding, and changing them (password, disabled, sign-in),
//! each change with its audit event.

use super::StorageError;
use super::audit::{append_event_tx, lock_head};
use super::error::{corrupt, unique_is_conflict};
use super::sql::{Col as _, Dialect, QueryExt as _, SqlBackend, begin};
use crate::domain::{Email, Role};
use crate::server::audit::NewEvent;
use async_trait::async_trait;
use chrono::{DateTime, Utc};

#[async_trait]
pub trait AdminStore: Send + Sync {
    async fn count_admins(&self) -> Result<i64, StorageError>;

    /// Every admin, by email.
    async fn list_admins(&self) -> Result<Vec<AdminRow>, StorageError>;

    async fn find_admin(&self, id: &str) -> Result<Option<AdminRow>, StorageError>;

    async fn find_admin_by_email(&self, email: &Email) -> Result<Option<AdminRow>, StorageError>;

    /// Stores a new admin with its event. `Conflict` if the email is taken. With
    /// `only_if_none`, does nothing and returns `false` when any admin exists (the first
    /// start, which several instances may race through).
    async fn create_admin(
        &self,
        admin: &AdminRow,
        only_if_none: bool,
        event: &NewEvent,
    ) -> Result<bool, StorageError>;

    /// Applies a change to an admin, with its event. `false` if there is no such admin.
    async fn change_admin(
        &self,
        id: &str,
        change: &AdminChange,
        at: DateTime<Utc>,
        event: &NewEvent,
    ) -> Result<bool, StorageError>;
}

/// An admin account as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminRow {
    pub id: String,
    pub email: Email,
    pub role: Role,
    /// An argon2id PHC string.
    pub password_hash: String,
    /// Set for a generated one-time password: the admin must choose a new one first.
    pub must_change_password: bool,
    pub created_at: DateTime<Utc>,
    pub disabled_at: Option<DateTime<Utc>>,
    pub last_login_at: Option<DateTime<Utc>>,
    /// Sessions that began before this are over (password reset, disabling).
    pub sessions_valid_after: DateTime<Utc>,
    /// When a generated one-time password stops working (none for a chosen password).
    pub password_expires_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for AdminRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminRow")
            .field("id", &self.id)
            .field("email", &self.email)
            .field("role", &self.role)
            .field("password_hash", &"REDACTED")
            .field("must_change_password", &self.must_change_password)
            .field("disabled_at", &self.disabled_at)
            .field("password_expires_at", &self.password_expires_at)
            .finish_non_exhaustive()
    }
}

/// A change to an admin account, with the event that records it.
#[derive(Debug, Clone)]
pub enum AdminChange {
    /// A new password hash; `must_change` for a generated one-time password. With
    /// `end_sessions`, every session begun before the change is over. `expires_at`: when
    /// a one-time password stops working.
    Password {
        hash: String,
        must_change: bool,
        end_sessions: bool,
        expires_at: Option<DateTime<Utc>>,
    },
    Disabled(bool),
    SignedIn,
}

const ADMIN_COLUMNS: &str = "id, email, role, password_hash, must_change_password, \
     created_at, disabled_at, last_login_at, sessions_valid_after, password_expires_at";

/// Decodes an `admins` row selected with [`ADMIN_COLUMNS`].
fn admin_from_row<DB: Dialect>(row: &DB::Row) -> Result<AdminRow, StorageError> {
    let email: String = row.col("email")?;
    let role: String = row.col("role")?;
    Ok(AdminRow {
        id: row.col("id")?,
        email: Email::parse(&email).map_err(|_| corrupt("email", &email))?,
        role: Role::parse(&role).ok_or_else(|| corrupt("role", &role))?,
        password_hash: row.col("password_hash")?,
        must_change_password: row.col("must_change_password")?,
        created_at: row.col("created_at")?,
        disabled_at: row.col("disabled_at")?,
        last_login_at: row.col("last_login_at")?,
        sessions_valid_after: row.col("sessions_valid_after")?,
        password_expires_at: row.col("password_expires_at")?,
    })
}

/// The admin whose `column` is `value`, if any.
async fn find_admin_where<B: SqlBackend>(
    backend: &B,
    column: &str,
    value: &str,
) -> Result<Option<AdminRow>, StorageError> {
    let sql = format!("SELECT {ADMIN_COLUMNS} FROM admins WHERE {column} = $1");
    sqlx::query(&sql)
        .arg(value)
        .opt(backend.pool())
        .await?
        .as_ref()
        .map(admin_from_row::<B::DB>)
        .transpose()
}

#[async_trait]
impl<B: SqlBackend> AdminStore for B {
    async fn count_admins(&self) -> Result<i64, StorageError> {
        let row = sqlx::query("SELECT COUNT(*) FROM admins")
            .one(self.pool())
            .await?;
        Ok(row.at(0)?)
    }

    async fn list_admins(&self) -> Result<Vec<AdminRow>, StorageError> {
        let sql = format!("SELECT {ADMIN_COLUMNS} FROM admins ORDER BY email");
        let rows = sqlx::query(&sql).all(self.pool()).await?;
        rows.iter().map(admin_from_row::<B::DB>).collect()
    }

    async fn find_admin(&self, id: &str) -> Result<Option<AdminRow>, StorageError> {
        find_admin_where(self, "id", id).await
    }

    async fn find_admin_by_email(&self, email: &Email) -> Result<Option<AdminRow>, StorageError> {
        find_admin_where(self, "email", email.as_str()).await
    }

    async fn create_admin(
        &self,
        a: &AdminRow,
        only_if_none: bool,
        event: &NewEvent,
    ) -> Result<bool, StorageError> {
        let mut tx = begin(self).await?;
        let guard = if only_if_none {
            " WHERE NOT EXISTS (SELECT 1 FROM admins)"
        } else {
            ""
        };
        let sql = format!(
            "INSERT INTO admins (id, email, role, password_hash, must_change_password, \
               created_at, sessions_valid_after, password_expires_at) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8{guard}"
        );
        let inserted = sqlx::query(&sql)
            .arg(&a.id)
            .arg(a.email.as_str())
            .arg(a.role.as_str())
            .arg(&a.password_hash)
            .arg(a.must_change_password)
            .arg(a.created_at)
            .arg(a.sessions_valid_after)
            .arg(a.password_expires_at)
            .exec(&mut tx)
            .await
            // The email is unique.
            .map_err(unique_is_conflict)?
            == 1;
        if inserted {
            append_event_tx(self, &mut tx, event, a.created_at).await?;
            tx.commit().await?;
        }
        Ok(inserted)
    }

    async fn change_admin(
        &self,
        id: &str,
        change: &AdminChange,
        at: DateTime<Utc>,
        event: &NewEvent,
    ) -> Result<bool, StorageError> {
        let mut tx = begin(self).await?;
        let changed = match change {
            AdminChange::Password {
                hash,
                must_change,
                end_sessions,
                expires_at,
            } => {
                sqlx::query(
                    "UPDATE admins SET password_hash = $1, must_change_password = $2, \
                       sessions_valid_after = CASE WHEN $3 THEN $4 ELSE sessions_valid_after END, \
                       password_expires_at = $6 \
                     WHERE id = $5",
                )
                .arg(hash)
                .arg(*must_change)
                .arg(*end_sessions)
                .arg(at)
                .arg(id)
                .arg(*expires_at)
                .exec(&mut tx)
                .await?
            }
            AdminChange::Disabled(disabled) => {
                // Admin changes take the audit head's lock first, so they run one at a
                // time and the guard below sees every committed change: two admins
                // disabling each other at once cannot leave nobody.
                lock_head(&mut tx).await?;
                sqlx::query(
                    "UPDATE admins SET disabled_at = CASE WHEN $1 THEN $2 ELSE NULL END, \
                       sessions_valid_after = CASE WHEN $1 THEN $2 ELSE sessions_valid_after END \
                     WHERE id = $3 AND (NOT $1 OR role <> 'admin' OR EXISTS ( \
                       SELECT 1 FROM admins other WHERE other.role = 'admin' \
                         AND other.disabled_at IS NULL AND other.id <> $3))",
                )
                .arg(*disabled)
                .arg(at)
                .arg(id)
                .exec(&mut tx)
                .await?
            }
            AdminChange::SignedIn => {
                sqlx::query("UPDATE admins SET last_login_at = $1 WHERE id = $2")
                    .arg(at)
                    .arg(id)
                    .exec(&mut tx)
                    .await?
            }
        };
        if changed != 1 {
            return Ok(false);
        }
        append_event_tx(self, &mut tx, event, at).await?;
        tx.commit().await?;
        Ok(true)
    }
}
