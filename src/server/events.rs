//! Reading the audit log: one filter for every reader ([`query`], [`page`]), and the live
//! tail's shared poller.
//!
//! The poller is one reader of new audit events per instance, however
//! many `/events/stream` viewers are open, and the caps on how many may be.
//!
//! While at least one stream is open, one task reads the events after the last one it
//! saw, at most once a second, and broadcasts each batch. Every stream applies its own
//! filters to the batches and keeps its own position (its `Last-Event-ID`); it reads the
//! database itself only to catch up: once when it opens from an earlier id, and when it
//! fell behind the broadcast. Closing the tail (at shutdown) ends every stream.

use crate::domain::audit::EventFilter;
use crate::server::audit::StoredEvent;
use crate::server::storage::{EventQuery, Storage, StorageError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// The storage query of `filter`: the newest `limit` events, unless a cursor is set.
pub fn query(filter: &EventFilter, limit: i64) -> EventQuery {
    EventQuery {
        level: filter.level.map(|l| l.as_str().to_string()),
        kind: filter.kind.as_ref().map(|k| k.as_str().to_string()),
        actor: filter.actor.as_ref().map(|a| a.as_str().to_string()),
        since: filter.since,
        until: filter.until,
        before_id: None,
        after_id: None,
        limit,
    }
}

/// One page of the log, newest first: at most `limit` events older than the `before`
/// cursor (the id of the previous page's last event), and the cursor of the next page.
pub async fn page(
    storage: &dyn Storage,
    filter: &EventFilter,
    before: Option<i64>,
    limit: i64,
) -> Result<(Vec<StoredEvent>, Option<i64>), StorageError> {
    let mut q = query(filter, limit + 1);
    q.before_id = before;
    let mut rows = storage.list_events(&q).await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    let next = if more {
        rows.last().map(|e| e.id)
    } else {
        None
    };
    Ok((rows, next))
}

/// How often the poller reads new events (at most).
pub const POLL_EVERY: Duration = Duration::from_secs(1);
/// Rows per read of the poller (and of a stream catching up); a longer backlog takes
/// several rounds.
pub const BATCH: i64 = 500;
/// Streams one session may hold open at once (a few tabs).
pub const PER_SESSION: usize = 3;
/// Streams one instance serves at once, over all sessions.
pub const PER_INSTANCE: usize = 64;

/// Why a stream was not opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Full {
    #[error(
        "too many live tails are open for this session (at most {PER_SESSION}); close one \
         (another tab showing the events page) and try again"
    )]
    Session,
    #[error(
        "too many live tails are open on this server (at most {PER_INSTANCE}); try again later"
    )]
    Instance,
}

/// A batch of new events, oldest first.
pub type Batch = Arc<Vec<StoredEvent>>;

#[derive(Default)]
struct Open {
    per_session: HashMap<String, usize>,
    total: usize,
    /// Whether the poller task runs (it stops when the last stream closes).
    polling: bool,
}

pub struct Tail {
    storage: Arc<dyn Storage>,
    open: Mutex<Open>,
    batches: broadcast::Sender<Batch>,
    closed: watch::Sender<bool>,
    /// The id after which the running poller broadcasts (`None` until it has read where
    /// the log ends). A stream catches up only once this is known, so that what it reads
    /// itself and what it is sent leave no gap between them.
    start: watch::Sender<Option<i64>>,
    /// Reads of new events the poller made, for the metrics and the tests.
    polls: AtomicU64,
}

impl std::fmt::Debug for Tail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tail")
            .field("streams", &self.streams())
            .field("polls", &self.polls())
            .finish_non_exhaustive()
    }
}

/// A stream's place among the open ones; dropping it (the stream ended) frees it.
pub struct Slot {
    tail: Arc<Tail>,
    session: String,
    pub batches: broadcast::Receiver<Batch>,
    pub closed: watch::Receiver<bool>,
    start: watch::Receiver<Option<i64>>,
}

impl Slot {
    /// Waits until the poller knows where it starts (see `Tail::start`); `false` if the
    /// tail closed first.
    pub async fn poller_started(&mut self) -> bool {
        tokio::select! {
            r = self.start.wait_for(Option::is_some) => r.is_ok(),
            _ = self.closed.wait_for(|c| *c) => false,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.tail.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_session.get_mut(&self.session) {
            *n -= 1;
            if *n == 0 {
                open.per_session.remove(&self.session);
            }
        }
    }
}

impl Tail {
    pub fn new(storage: Arc<dyn Storage>) -> Arc<Self> {
        let (batches, _) = broadcast::channel(256);
        let (closed, _) = watch::channel(false);
        let (start, _) = watch::channel(None);
        Arc::new(Self {
            storage,
            open: Mutex::new(Open::default()),
            batches,
            closed,
            start,
            polls: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Streams open now.
    pub fn streams(&self) -> usize {
        self.lock().total
    }

    /// How many times the poller has read new events since the start.
    pub fn polls(&self) -> u64 {
        self.polls.load(Ordering::Relaxed)
    }

    /// Opens a stream for `session` (any stable id of it), within the caps, and starts
    /// the poller if it is not running. Subscribed before returning, so nothing the
    /// poller reads from now on is missed.
    pub fn open(self: &Arc<Self>, session: &str) -> Result<Slot, Full> {
        if *self.closed.borrow() {
            return Err(Full::Instance);
        }
        let mut open = self.lock();
        if open.total >= PER_INSTANCE {
            return Err(Full::Instance);
        }
        let mine = open.per_session.entry(session.to_string()).or_default();
        if *mine >= PER_SESSION {
            return Err(Full::Session);
        }
        *mine += 1;
        open.total += 1;
        let slot = Slot {
            tail: self.clone(),
            session: session.to_string(),
            batches: self.batches.subscribe(),
            closed: self.closed.subscribe(),
            start: self.start.subscribe(),
        };
        if !open.polling {
            open.polling = true;
            self.start.send_replace(None);
            tokio::spawn(self.clone().poll());
        }
        Ok(slot)
    }

    /// Ends every stream and the poller, and refuses new streams: the server is
    /// shutting down.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// The poller: reads what is new once a second while any stream is open.
    async fn poll(self: Arc<Self>) {
        let mut closed = self.closed.subscribe();
        let mut after = self.newest().await;
        self.start.send_replace(after);
        let mut tick = tokio::time::interval(POLL_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = closed.wait_for(|c| *c) => break,
            }
            {
                let mut open = self.lock();
                if open.total == 0 {
                    open.polling = false;
                    return;
                }
            }
            let Some(after_id) = after else {
                // The database was not readable when the poller started; try again.
                after = self.newest().await;
                self.start.send_replace(after);
                continue;
            };
            self.polls.fetch_add(1, Ordering::Relaxed);
            let query = EventQuery {
                after_id: Some(after_id),
                limit: BATCH,
                ..Default::default()
            };
            match self.storage.list_events(&query).await {
                Ok(rows) if rows.is_empty() => {}
                Ok(rows) => {
                    after = rows.last().map(|e| e.id);
                    // No receiver is fine: the streams all closed meanwhile.
                    let _ = self.batches.send(Arc::new(rows));
                }
                Err(e) => tracing::warn!(error = %e, "the live tail cannot read new events"),
            }
        }
        self.lock().polling = false;
    }

    /// The newest event id (0 for an empty log); `None` when the database cannot answer.
    pub async fn newest(&self) -> Option<i64> {
        let query = EventQuery {
            limit: 1,
            ..Default::default()
        };
        match self.storage.list_events(&query).await {
            Ok(rows) => Some(rows.first().map_or(0, |e| e.id)),
            Err(e) => {
                tracing::warn!(error = %e, "the live tail cannot read the newest event");
                None
            }
        }
    }
}
