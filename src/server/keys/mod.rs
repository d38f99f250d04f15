//! The key service and what it works with: the one business path for every lifecycle
//! operation (rotate, revoke, expire, re-encrypt, sign), the in-memory snapshot every
//! request reads, the keys generated ahead of need, the rotation schedule, JWT signing
//! and verification, and the counters behind `/metrics`.

pub mod counters;
pub mod error;
pub mod jwt;
pub mod listing;
pub mod pool;
pub mod schedule;
pub mod service;
pub mod snapshot;

pub use counters::Counters;
pub use error::KeyError;
pub use pool::KeyPool;
pub use schedule::{SLOT_ROTATION, Schedule, ScheduleError};
pub use service::{KeyService, MAX_LAG};
pub use snapshot::{ActiveSigner, KeySnapshot};
