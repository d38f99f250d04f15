//! Types that cross the wire between server functions and the browser.

use serde::{Deserialize, Serialize};

/// What the overview shows about this installation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceView {
    pub version: String,
    pub backend: String,
    pub installation_id: String,
    pub installed_at: String,
    pub schema_version: i64,
    pub issuer: String,
    pub algorithms: String,
}

/// The rotation schedule and the policy around it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleView {
    pub expression: String,
    pub retention: String,
    pub next: Vec<String>,
}

/// Next fire times of a proposed expression, or why it is not acceptable.
pub type SchedulePreview = Result<Vec<String>, String>;

/// One key as the JWKS page shows it. Timestamps are RFC 3339, `None` where not reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyView {
    pub kid: String,
    pub alg: String,
    pub state: String,
    pub created_at: String,
    pub activated_at: Option<String>,
    pub rotated_at: Option<String>,
    pub revoked_at: Option<String>,
    /// When publication ends (rotated keys) or ended (expired keys).
    pub expires_at: Option<String>,
}
