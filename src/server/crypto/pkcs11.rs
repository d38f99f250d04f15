//! Signing keys on a PKCS#11 token (`key_backend = "pkcs11"`): generated there as
//! sensitive, non-extractable private objects, used there to sign, destroyed there.
//!
//! Signet never sees a private key of this backend. The database keeps the object's
//! `CKA_ID` and the public JWK; the public half exists on the token only for the moment it
//! takes to read it after generation. Every object Signet makes is labelled
//! `signet:<installation id>:<unix seconds of creation>`, so housekeeping can tell this
//! installation's objects, and their age, from anything else on the token (another
//! Signet installation sharing it included).
//!
//! Sessions are pooled, up to one per core; a caller beyond that waits for one. The login
//! state of PKCS#11 belongs to the application, not to one session: the first session logs
//! in, later ones inherit it.
//!
//! A failed operation may be repaired once and retried once (see [`Repair`]): a lost login
//! logs in again, sessions the module forgot are replaced, and a lost token (removed,
//! reset, its module finalised, or showing no objects at all when one is expected) gets
//! the module finalised and initialised again and the token found again by its label and
//! serial number, at most once per [`RECONNECT_PAUSE`]. Until that works, operations fail
//! with the reason, which `/sign` answers as a 503 and readiness reports. A refused PIN is
//! never tried again.

use super::{CryptoError, PublicJwk, unhex};
use crate::domain::{Algorithm, RsaBits};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Function, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::{AuthPin, Ulong};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

/// The prefix of every object label Signet writes.
pub const LABEL_PREFIX: &str = "signet:";

/// The shortest time between two re-initialisations of the module. An object can also be
/// missing for a good reason (another instance destroyed a revoked key before this one
/// reloaded), so a missing object must not re-initialise the module on every request.
pub const RECONNECT_PAUSE: Duration = Duration::from_secs(2);

/// DER of the named curve P-256 (OID 1.2.840.10045.3.1.7), for `CKA_EC_PARAMS`.
const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER of id-Ed25519 (OID 1.3.101.112), for `CKA_EC_PARAMS`.
const ED25519_PARAMS: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];

/// Which token to use: the one with this label, or the one in this slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenChoice {
    Label(String),
    Slot(u64),
}

impl TokenChoice {
    /// The setting that made this choice.
    fn setting(&self) -> &'static str {
        match self {
            TokenChoice::Label(_) => "pkcs11_token",
            TokenChoice::Slot(_) => "pkcs11_slot",
        }
    }
}

impl fmt::Display for TokenChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenChoice::Label(l) => write!(f, "token '{l}'"),
            TokenChoice::Slot(s) => write!(f, "the token in slot {s}"),
        }
    }
}

/// The user PIN. Never printed.
#[derive(Clone)]
pub struct Pin(zeroize::Zeroizing<String>);

impl Pin {
    pub fn new(pin: String) -> Self {
        Self(zeroize::Zeroizing::new(pin))
    }

    fn auth(&self) -> AuthPin {
        AuthPin::new(self.0.as_str().into())
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(REDACTED)")
    }
}

/// The `pkcs11_*` settings.
#[derive(Debug, Clone)]
pub struct TokenConfig {
    pub module: PathBuf,
    pub token: TokenChoice,
    pub pin: Pin,
}

/// Why the token cannot be opened, naming the setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("pkcs11_module: cannot load {}: {reason}", path.display())]
    Module { path: PathBuf, reason: String },
    #[error("{}: no {choice} (tokens present: {present})", choice.setting())]
    NoToken {
        choice: TokenChoice,
        present: String,
    },
    #[error("pkcs11_pin: the token refused the PIN ({0})")]
    Pin(String),
    #[error("algorithms: token '{token}' cannot do {alg}: it lacks {missing}")]
    Unsupported {
        token: String,
        alg: Algorithm,
        missing: String,
    },
    #[error("pkcs11: {0}")]
    Other(String),
}

/// An object on the token that Signet made: its `CKA_ID` (hex) and label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenObject {
    pub id: String,
    pub label: String,
}

impl TokenObject {
    /// When the object was made, if this installation made it (its label is
    /// `signet:<installation>:<unix seconds>`); `None` for anyone else's object.
    pub fn made_by(&self, installation: &str) -> Option<i64> {
        self.label
            .strip_prefix(LABEL_PREFIX)?
            .strip_prefix(installation)?
            .strip_prefix(':')?
            .parse()
            .ok()
    }
}

/// A key pair freshly generated on the token.
#[derive(Debug)]
pub struct TokenKey {
    /// Hex of the private object's `CKA_ID`.
    pub id: String,
    pub jwk: PublicJwk,
}

/// The session pool's state.
#[derive(Default)]
struct Sessions {
    idle: Vec<Session>,
    open: usize,
}

/// A session taken from the pool, given back when dropped.
struct Lease<'a> {
    token: &'a Token,
    session: Option<Session>,
}

impl Lease<'_> {
    fn session(&self) -> &Session {
        self.session
            .as_ref()
            .expect("a lease holds its session until dropped")
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            self.token.give_back(session);
        }
    }
}

/// Where the token was found, or why it cannot be reached.
struct Link {
    /// The token's slot; `None` while the token cannot be reached.
    slot: Option<Slot>,
    /// Why it cannot be reached (while `slot` is `None`).
    lost: String,
    /// Bumped by every repair: a caller that failed before it just tries again instead of
    /// repairing a second time.
    generation: u64,
    /// When the module was last re-initialised.
    last_reconnect: Option<Instant>,
    /// The generation a reconnection for a missing object left: another one for the same
    /// reason waits for some other repair in between.
    empty_at: Option<u64>,
}

/// What stopped an operation on the token.
enum Failure {
    /// The module refused it.
    Module(CkError),
    /// The token could not be reached at the last reconnection.
    Unreachable(String),
}

/// What may fix a failed operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repair {
    /// The login is gone (it belongs to the application): close the pooled sessions,
    /// which are still open, and log in on a fresh one.
    Login,
    /// The module closed the sessions: forget them (closing their numbers could close
    /// sessions the module hands out next) and open a fresh one.
    Sessions,
    /// The token or the module's state of it is gone: finalise the module, initialise it
    /// again and find the token again. At most once per [`RECONNECT_PAUSE`].
    Module,
    /// An object Signet expects is not found, and the token shows no private object at
    /// all, which is what a module that lost its state of the token answers: as `Module`,
    /// but not twice in a row (a token can also just be empty).
    Missing,
}

impl Failure {
    fn repair(&self) -> Option<Repair> {
        match self {
            Failure::Unreachable(_) => Some(Repair::Module),
            Failure::Module(CkError::Pkcs11(RvError::UserNotLoggedIn, _)) => Some(Repair::Login),
            Failure::Module(CkError::Pkcs11(
                RvError::SessionHandleInvalid | RvError::SessionClosed,
                _,
            )) => Some(Repair::Sessions),
            Failure::Module(e) if token_lost(e) => Some(Repair::Module),
            Failure::Module(_) => None,
        }
    }
}

/// An open, logged-in token.
///
/// Sessions are opened so that dropping one does not close it: Signet closes a session
/// only while it knows the number is still the module's (see [`Repair`]).
pub struct Token {
    ctx: Pkcs11,
    /// Every operation holds this for reading while it uses a session; a repair holds it
    /// for writing, so no session is in use while sessions are closed or forgotten, or the
    /// module is finalised. (No operation may take it again while it holds it.)
    link: RwLock<Link>,
    label: String,
    /// The token's serial number: a reconnection must find this very token again, not
    /// another one with the same label.
    serial: String,
    pin: Pin,
    /// Open sessions not in use, and how many are open in all (at most `max_sessions`:
    /// a caller beyond that waits for one to be given back rather than opening more).
    sessions: Mutex<Sessions>,
    freed: Condvar,
    max_sessions: usize,
    /// One permit per session, for async callers to wait on before they take a blocking
    /// thread for a signature.
    permits: tokio::sync::Semaphore,
    /// The token's answer when it refused the PIN (once set, Signet no longer logs in),
    /// and a flag every operation reads without taking that lock.
    refused: Mutex<Option<String>>,
    pin_locked_out: std::sync::atomic::AtomicBool,
    /// Operations the module refused, for `/metrics`.
    errors: AtomicU64,
    /// Reconnections that found the token again, for `/metrics`.
    reconnects: AtomicU64,
    /// The installation whose objects these are (in every label Signet writes).
    installation: String,
    /// The handle of each private object found, by `CKA_ID`: a handle stays valid for the
    /// application while the object exists, so a signature costs one `C_Sign`, not a
    /// search first.
    handles: Mutex<HashMap<Vec<u8>, ObjectHandle>>,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the slot: reading it takes the link, which a caller may be holding.
        f.debug_struct("Token")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

/// Whether an error means the token or the module's state of it is gone: only
/// re-initialising the module can bring it back.
fn token_lost(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::DeviceRemoved
                | RvError::DeviceError
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::SlotIdInvalid
                | RvError::CryptokiNotInitialized,
            _
        )
    )
}

fn pin_refused(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::PinIncorrect
                | RvError::PinInvalid
                | RvError::PinLenRange
                | RvError::PinLocked
                | RvError::PinExpired,
            _
        )
    )
}

/// `C_Initialize`, which may already have been called (by this process's other user of the
/// module, or an earlier open).
fn initialize(ctx: &Pkcs11) -> Result<(), CkError> {
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The slot of the token with this label and serial number, if it is present.
fn find_again(ctx: &Pkcs11, label: &str, serial: &str) -> Option<Slot> {
    ctx.get_slots_with_token().ok()?.into_iter().find(|&slot| {
        ctx.get_token_info(slot)
            .is_ok_and(|info| info.label().trim() == label && info.serial_number().trim() == serial)
    })
}

/// The slot of the token `choice` names, and its label.
fn find_slot(ctx: &Pkcs11, choice: &TokenChoice) -> Result<(Slot, String), OpenError> {
    let slots = ctx
        .get_slots_with_token()
        .map_err(|e| OpenError::Other(format!("cannot list the slots: {e}")))?;
    let mut present = Vec::new();
    let mut found = None;
    for slot in slots {
        let Ok(info) = ctx.get_token_info(slot) else {
            continue;
        };
        let label = info.label().trim().to_string();
        let wanted = match choice {
            TokenChoice::Label(l) => *l == label,
            TokenChoice::Slot(id) => *id == slot.id(),
        };
        if wanted && found.is_none() {
            found = Some((slot, label.clone()));
        }
        present.push(format!("'{label}' in slot {}", slot.id()));
    }
    found.ok_or_else(|| OpenError::NoToken {
        choice: choice.clone(),
        present: if present.is_empty() {
            "none".into()
        } else {
            present.join(", ")
        },
    })
}

fn hsm(e: CkError) -> CryptoError {
    CryptoError::Hsm(e.to_string())
}

/// The mechanisms an algorithm needs: to generate its keys, and to sign.
fn mechanisms(alg: Algorithm) -> [MechanismType; 2] {
    match alg {
        Algorithm::EdDSA => [
            MechanismType::ECC_EDWARDS_KEY_PAIR_GEN,
            MechanismType::EDDSA,
        ],
        Algorithm::ES256 => [MechanismType::ECC_KEY_PAIR_GEN, MechanismType::ECDSA],
        Algorithm::RS256 => [
            MechanismType::RSA_PKCS_KEY_PAIR_GEN,
            MechanismType::SHA256_RSA_PKCS,
        ],
        Algorithm::RS384 => [
            MechanismType::RSA_PKCS_KEY_PAIR_GEN,
            MechanismType::SHA384_RSA_PKCS,
        ],
        Algorithm::RS512 => [
            MechanismType::RSA_PKCS_KEY_PAIR_GEN,
            MechanismType::SHA512_RSA_PKCS,
        ],
        Algorithm::PS256 => [
            MechanismType::RSA_PKCS_KEY_PAIR_GEN,
            MechanismType::SHA256_RSA_PKCS_PSS,
        ],
    }
}

/// The mechanisms `alg` needs that are not among the token's `available` ones.
fn missing_mechanisms(available: &[MechanismType], alg: Algorithm) -> Vec<String> {
    mechanisms(alg)
        .iter()
        .filter(|m| !available.contains(m))
        .map(|m| m.to_string())
        .collect()
}

/// The mechanisms of `alg`, by name, for messages.
pub fn mechanism_names(alg: Algorithm) -> String {
    let [generate, sign] = mechanisms(alg);
    format!("{generate} and {sign}")
}

/// The signing mechanism of `alg` (ECDSA signs a SHA-256 digest the caller computes).
fn sign_mechanism(alg: Algorithm) -> Mechanism<'static> {
    match alg {
        Algorithm::EdDSA => Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
        Algorithm::ES256 => Mechanism::Ecdsa,
        Algorithm::RS256 => Mechanism::Sha256RsaPkcs,
        Algorithm::RS384 => Mechanism::Sha384RsaPkcs,
        Algorithm::RS512 => Mechanism::Sha512RsaPkcs,
        Algorithm::PS256 => Mechanism::Sha256RsaPkcsPss(PkcsPssParams {
            hash_alg: MechanismType::SHA256,
            mgf: PkcsMgfType::MGF1_SHA256,
            s_len: Ulong::new(32),
        }),
    }
}

/// Strips the DER OCTET STRING around an EC point, if there is one (PKCS#11 asks for
/// it; some modules return the bare point).
fn ec_point(raw: &[u8], len: usize) -> Option<&[u8]> {
    if raw.len() == len {
        return Some(raw);
    }
    match raw {
        [0x04, n, rest @ ..] if usize::from(*n) == len && rest.len() == len => Some(rest),
        _ => None,
    }
}

impl Token {
    /// Loads the module, finds the token and logs in. Checks that the token can do every
    /// algorithm in `algorithms`.
    pub fn open(
        config: &TokenConfig,
        algorithms: &[Algorithm],
        installation: &str,
    ) -> Result<Self, OpenError> {
        let module_error = |reason: String| OpenError::Module {
            path: config.module.clone(),
            reason,
        };
        if !Path::new(&config.module).is_file() {
            return Err(module_error("no such file".into()));
        }
        let ctx = Pkcs11::new(&config.module).map_err(|e| module_error(e.to_string()))?;
        initialize(&ctx).map_err(|e| module_error(format!("C_Initialize failed: {e}")))?;
        let (slot, label) = find_slot(&ctx, &config.token)?;
        let serial = ctx
            .get_token_info(slot)
            .map(|info| info.serial_number().trim().to_string())
            .map_err(|e| OpenError::Other(format!("cannot read the token's details: {e}")))?;
        let available = ctx
            .get_mechanism_list(slot)
            .map_err(|e| OpenError::Other(format!("cannot list the mechanisms: {e}")))?;
        for &alg in algorithms {
            let missing = missing_mechanisms(&available, alg);
            if !missing.is_empty() {
                return Err(OpenError::Unsupported {
                    token: label,
                    alg,
                    missing: missing.join(" and "),
                });
            }
        }
        let token = Self {
            ctx,
            link: RwLock::new(Link {
                slot: Some(slot),
                lost: String::new(),
                generation: 0,
                last_reconnect: None,
                empty_at: None,
            }),
            label,
            serial,
            pin: config.pin.clone(),
            sessions: Mutex::new(Sessions::default()),
            freed: Condvar::new(),
            max_sessions: std::thread::available_parallelism().map_or(2, usize::from),
            permits: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, usize::from),
            ),
            refused: Mutex::new(None),
            pin_locked_out: std::sync::atomic::AtomicBool::new(false),
            errors: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            installation: installation.to_string(),
            handles: Mutex::new(HashMap::new()),
        };
        let session = token.login(slot).map_err(|e| match e {
            CkError::Pkcs11(RvError::PinLocked, _) => {
                OpenError::Pin(format!("{e}: the user PIN is locked"))
            }
            e if pin_refused(&e) => OpenError::Pin(e.to_string()),
            other => OpenError::Other(format!("cannot log in to '{}': {other}", token.label)),
        })?;
        token.pool().open += 1;
        token.give_back(session);
        Ok(token)
    }

    /// The token's label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The installation whose objects Signet makes and sweeps on this token.
    pub fn installation(&self) -> &str {
        &self.installation
    }

    /// One permit per session: wait for one before a blocking call on the token.
    pub fn permits(&self) -> &tokio::sync::Semaphore {
        &self.permits
    }

    /// The slot the token is in, while it can be reached.
    pub fn slot_id(&self) -> Option<u64> {
        self.link().slot.map(|s| s.id())
    }

    /// How many operations the module refused since the start.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// How many sessions are open now (never more than one per core).
    pub fn sessions_open(&self) -> usize {
        self.pool().open
    }

    /// How many times the module was re-initialised and found the token again.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    fn link(&self) -> std::sync::RwLockReadGuard<'_, Link> {
        self.link.read().unwrap_or_else(|p| p.into_inner())
    }

    /// A new read-write session, logged in (the application's login, if there is one
    /// already, covers it).
    ///
    /// One login at a time, and none once the token refused the PIN: a few wrong tries
    /// lock the user PIN of most HSMs, and concurrent callers must not spend them.
    fn login(&self, slot: Slot) -> Result<Session, CkError> {
        let session = self.ctx.open_rw_session_no_drop(slot)?;
        let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        if refused.is_some() {
            let _ = session.close();
            return Err(CkError::Pkcs11(RvError::PinIncorrect, Function::Login));
        }
        match session.login(UserType::User, Some(&self.pin.auth())) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
            Err(e) => {
                if pin_refused(&e) {
                    *refused = Some(format!("{e}"));
                    self.pin_locked_out.store(true, Ordering::Release);
                }
                let _ = session.close();
                Err(e)
            }
        }
    }

    /// Why Signet no longer logs in, once the token refused the PIN.
    fn pin_refusal(&self) -> Option<String> {
        if !self.pin_locked_out.load(Ordering::Acquire) {
            return None;
        }
        let refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        refused.as_ref().map(|e| {
            format!(
                "pkcs11_pin: the token refused the PIN ({e}); Signet does not try it again, \
                 as that could lock it: fix pkcs11_pin and restart"
            )
        })
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A session: an idle one, a new one while fewer than `max_sessions` are open, or
    /// else the next one given back (waiting without using the CPU).
    fn take(&self, slot: Slot) -> Result<Session, CkError> {
        let mut pool = self.pool();
        loop {
            if let Some(session) = pool.idle.pop() {
                return Ok(session);
            }
            if pool.open < self.max_sessions {
                pool.open += 1;
                drop(pool);
                return self.login(slot).inspect_err(|_| self.closed(1));
            }
            pool = self.freed.wait(pool).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn give_back(&self, session: Session) {
        self.pool().idle.push(session);
        self.freed.notify_one();
    }

    /// Accounts for `n` sessions that were closed (or never opened).
    fn closed(&self, n: usize) {
        let mut pool = self.pool();
        pool.open = pool.open.saturating_sub(n);
        drop(pool);
        self.freed.notify_all();
    }

    /// Runs `op` on a pooled session. A failure some [`Repair`] may fix gets one more try
    /// after it.
    fn with_session<T>(
        &self,
        op: impl Fn(&Session) -> Result<T, CkError>,
    ) -> Result<T, CryptoError> {
        self.run(&op, |_| false)
    }

    /// Like [`Self::with_session`] for an operation on an object that answers `None` when
    /// the object is not found. A missing object is only worth a reconnection when the
    /// token shows no private object at all (what a module that lost its state of the
    /// token answers): an object can be gone for a good reason too, e.g. another
    /// instance destroyed a revoked key before this one reloaded.
    fn with_object<T>(
        &self,
        op: impl Fn(&Session) -> Result<Option<T>, CkError>,
    ) -> Result<Option<T>, CryptoError> {
        self.run(&op, Option::is_none)
    }

    fn run<T>(
        &self,
        op: &impl Fn(&Session) -> Result<T, CkError>,
        missing: impl Fn(&T) -> bool,
    ) -> Result<T, CryptoError> {
        let (generation, result) = self.attempt(op);
        let repair = match &result {
            Ok(v) if missing(v) => self.repair_for_missing(),
            Ok(_) => None,
            Err(failure) => failure.repair().map(|r| (r, generation)),
        };
        let result = match repair {
            Some((repair, seen)) if self.repair(repair, seen) => self.attempt(op).1,
            // A repair that just failed says why better than the first error.
            Some(_) => self.unusable().map_or(result, Err),
            None => result,
        };
        result.map_err(|failure| {
            self.errors.fetch_add(1, Ordering::Relaxed);
            match failure {
                Failure::Module(e) => hsm(e),
                Failure::Unreachable(why) => {
                    CryptoError::Hsm(format!("token '{}' cannot be used: {why}", self.label))
                }
            }
        })
    }

    /// After an object was not found: a reconnection when the token shows no private
    /// object at all, and the last repair was not already such a reconnection (a token
    /// that is simply empty must not be re-initialised every pause).
    fn repair_for_missing(&self) -> Option<(Repair, u64)> {
        let any = |s: &Session| private_objects(s, &[Attribute::Class(ObjectClass::PRIVATE_KEY)]);
        match self.attempt(&any) {
            (generation, Ok(found)) if found.is_empty() => Some((Repair::Missing, generation)),
            (_, Ok(_)) => None,
            (generation, Err(failure)) => failure.repair().map(|r| (r, generation)),
        }
    }

    /// Why the token cannot be used now, if it cannot.
    fn unusable(&self) -> Option<Failure> {
        if let Some(why) = self.pin_refusal() {
            return Some(Failure::Unreachable(why));
        }
        let link = self.link();
        link.slot
            .is_none()
            .then(|| Failure::Unreachable(link.lost.clone()))
    }

    /// One try of `op` on the current link; returns the link's generation too.
    fn attempt<T>(
        &self,
        op: &impl Fn(&Session) -> Result<T, CkError>,
    ) -> (u64, Result<T, Failure>) {
        let link = self.link();
        if let Some(why) = self.pin_refusal() {
            return (link.generation, Err(Failure::Unreachable(why)));
        }
        let Some(slot) = link.slot else {
            return (
                link.generation,
                Err(Failure::Unreachable(link.lost.clone())),
            );
        };
        let result = self.take(slot).and_then(|session| {
            // Given back even if `op` panics, so the pool never loses count of it.
            let lease = Lease {
                token: self,
                session: Some(session),
            };
            op(lease.session())
        });
        (link.generation, result.map_err(Failure::Module))
    }

    /// Carries out `repair`, unless another caller repaired since `seen` (then its outcome
    /// is this one's too). Whether the token can be used again.
    fn repair(&self, repair: Repair, seen: u64) -> bool {
        let reconnects = matches!(repair, Repair::Module | Repair::Missing);
        // The answer without repairing, when there is one: another caller repaired since
        // `seen`, the reconnection pause is running, or the PIN was refused.
        let settled = |link: &Link| {
            if link.generation != seen {
                return Some(link.slot.is_some() && self.pin_refusal().is_none());
            }
            let paused = reconnects
                && link
                    .last_reconnect
                    .is_some_and(|at| at.elapsed() < RECONNECT_PAUSE);
            (paused || self.pin_refusal().is_some()).then_some(false)
        };
        // Most callers that come here find it settled: they need not stall the signers by
        // taking the link for writing.
        if let Some(answer) = settled(&self.link()) {
            return answer;
        }
        let mut link = self.link.write().unwrap_or_else(|p| p.into_inner());
        if let Some(answer) = settled(&link) {
            return answer;
        }
        if repair == Repair::Missing && link.empty_at == Some(link.generation) {
            return false;
        }
        link.generation += 1;
        // Holding the link for writing: no session is in use. Object handles found
        // before may mean nothing now, or name other objects.
        if let Ok(mut handles) = self.handles.lock() {
            handles.clear();
        }
        let idle = std::mem::take(&mut self.pool().idle);
        match repair {
            Repair::Login => {
                for session in idle {
                    let _ = session.close();
                }
                self.pool().open = 0;
                tracing::info!(token = %self.label, "the PKCS#11 login was lost; logging in again");
                let Some(slot) = link.slot else {
                    return false;
                };
                // Once, here: not by every caller that finds the pool empty next.
                match self.login(slot) {
                    Ok(session) => {
                        self.pool().open = 1;
                        self.give_back(session);
                        true
                    }
                    Err(e) => {
                        tracing::warn!(token = %self.label, error = %e, "cannot log in to the PKCS#11 token again");
                        false
                    }
                }
            }
            Repair::Sessions => {
                // Dropped without closing (they were opened not to close on drop): the
                // module no longer knows those numbers. The ones it still knows stay.
                let alive: Vec<Session> = idle
                    .into_iter()
                    .filter(|s| s.get_session_info().is_ok())
                    .collect();
                tracing::info!(token = %self.label, kept = alive.len(), "the PKCS#11 module closed Signet's sessions; opening fresh ones");
                let mut pool = self.pool();
                pool.open = alive.len();
                pool.idle = alive;
                link.slot.is_some()
            }
            Repair::Module | Repair::Missing => {
                // C_Finalize ends them all; no number is closed after it.
                drop(idle);
                self.pool().open = 0;
                link.last_reconnect = Some(Instant::now());
                let back = self.reconnect(&mut link);
                if repair == Repair::Missing {
                    link.empty_at = Some(link.generation);
                }
                back
            }
        }
    }

    /// Finalises the module (which ends every session), initialises it again, finds the
    /// token by its label and serial number, and logs in.
    fn reconnect(&self, link: &mut Link) -> bool {
        let _ = self.ctx.clone().finalize();
        let connected = initialize(&self.ctx)
            .map_err(|e| format!("C_Initialize failed: {e}"))
            .and_then(|()| {
                find_again(&self.ctx, &self.label, &self.serial).ok_or_else(|| {
                    format!(
                        "token '{}' (the one Signet opened) is not present",
                        self.label
                    )
                })
            })
            .and_then(|slot| {
                let session = self.login(slot).map_err(|e| match self.pin_refusal() {
                    Some(why) => why,
                    None => format!("cannot log in: {e}"),
                })?;
                Ok((slot, session))
            });
        match connected {
            Ok((slot, session)) => {
                self.pool().open += 1;
                self.give_back(session);
                link.slot = Some(slot);
                link.lost.clear();
                self.reconnects.fetch_add(1, Ordering::Relaxed);
                tracing::info!(token = %self.label, slot = slot.id(), "PKCS#11 module initialised again; the token is back");
                true
            }
            Err(why) => {
                if self.pin_refusal().is_some() {
                    tracing::error!(token = %self.label, error = %why, "the PKCS#11 token refused the PIN; not trying it again");
                } else {
                    tracing::warn!(token = %self.label, serial = %self.serial, error = %why, "the PKCS#11 token cannot be reached; Signet tries again at the next operation, at most every {}s", RECONNECT_PAUSE.as_secs());
                }
                link.slot = None;
                link.lost = why;
                false
            }
        }
    }

    /// Generates a key pair for `alg` on the token. The private object is a token object,
    /// private, sensitive and not extractable; the public object is a session object,
    /// destroyed as soon as its values are read.
    pub fn generate(&self, alg: Algorithm, bits: RsaBits) -> Result<TokenKey, CryptoError> {
        // A generation that failed on a lost session or token is tried once more after the
        // repair, with a CKA_ID of its own: if the module made the pair after all (a device
        // lost in the middle of the call), that pair is an orphan the sweep finds, never a
        // second object under the id the row names. Reading the public half is not tried
        // again: a failure there destroys the pair, and the error stands.
        self.with_session(|s| {
            let id = match random_id(alg) {
                Ok(id) => id,
                Err(e) => return Ok(Err(e)),
            };
            let template = Template::new(alg, bits, &id, self.label_for_now(), true);
            let (public, private) =
                s.generate_key_pair(&template.mechanism, &template.public, &template.private)?;
            Ok(self.finish_generation(s, alg, &id, public, private))
        })?
    }

    /// Reads the public values of a fresh pair and destroys the public object; on any
    /// failure destroys the private object too, so nothing unreferenced is left.
    fn finish_generation(
        &self,
        session: &Session,
        alg: Algorithm,
        id: &[u8],
        public: ObjectHandle,
        private: ObjectHandle,
    ) -> Result<TokenKey, CryptoError> {
        let values = session.get_attributes(public, &Template::reads(alg));
        let _ = session.destroy_object(public);
        let jwk = values
            .map_err(|e| self.failed(e))
            .and_then(|values| public_jwk(alg, values));
        if jwk.is_err() {
            let _ = session.destroy_object(private);
        }
        Ok(TokenKey {
            id: super::hex(id),
            jwk: jwk?,
        })
    }

    /// Counts a refused operation and turns it into the error callers see.
    fn failed(&self, e: CkError) -> CryptoError {
        self.errors.fetch_add(1, Ordering::Relaxed);
        hsm(e)
    }

    /// The label of an object made now.
    fn label_for_now(&self) -> String {
        format!(
            "{LABEL_PREFIX}{}:{}",
            self.installation,
            chrono::Utc::now().timestamp()
        )
    }

    /// `signet hsm check` for one algorithm: generates a throwaway key pair as session
    /// objects (gone with the session, never stored on the token), signs a message with
    /// it on the token, verifies the signature in software against the public key the
    /// token gave out, and destroys both objects.
    pub fn self_test(&self, alg: Algorithm, bits: RsaBits) -> Result<(), String> {
        let available = {
            let link = self.link();
            let slot = link
                .slot
                .ok_or_else(|| format!("token '{}' cannot be reached", self.label))?;
            self.ctx
                .get_mechanism_list(slot)
                .map_err(|e| format!("cannot list the mechanisms: {e}"))?
        };
        let missing = missing_mechanisms(&available, alg);
        if !missing.is_empty() {
            return Err(format!("the token lacks {}", missing.join(" and ")));
        }
        let id = random_id(alg).map_err(|e| e.to_string())?;
        let template = Template::new(alg, bits, &id, self.label_for_now(), false);
        let message = b"signet hsm check";
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, message);
        let data: &[u8] = if alg == Algorithm::ES256 {
            digest.as_ref()
        } else {
            message
        };
        let (values, signature) = self
            .with_session(|s| {
                let (public, private) =
                    s.generate_key_pair(&template.mechanism, &template.public, &template.private)?;
                let out = s.get_attributes(public, &template.read).and_then(|values| {
                    s.sign(&sign_mechanism(alg), private, data)
                        .map(|sig| (values, sig))
                });
                let _ = s.destroy_object(public);
                let _ = s.destroy_object(private);
                out
            })
            .map_err(|e| format!("the token refused: {e}"))?;
        let jwk = public_jwk(alg, values).map_err(|e| e.to_string())?;
        if super::signing::verify(alg, &jwk, message, &signature) {
            Ok(())
        } else {
            Err("the token's signature does not verify against its public key".into())
        }
    }

    /// The private objects with this `CKA_ID`.
    fn find_all(&self, session: &Session, id: &[u8]) -> Result<Vec<ObjectHandle>, CkError> {
        private_objects(
            session,
            &[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Id(id.to_vec()),
            ],
        )
    }

    /// The private object with this `CKA_ID`, if the token has it.
    fn find(&self, session: &Session, id: &[u8]) -> Result<Option<ObjectHandle>, CkError> {
        Ok(self.find_all(session, id)?.first().copied())
    }

    /// Signs `message` with the private object `id` (hex). For ES256 the token signs the
    /// SHA-256 digest and returns `r || s`, the form JWS uses.
    pub fn sign(&self, alg: Algorithm, id: &str, message: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let id = unhex(id).ok_or(CryptoError::Sign)?;
        let digest;
        let data = if alg == Algorithm::ES256 {
            digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, message);
            digest.as_ref()
        } else {
            message
        };
        let mechanism = sign_mechanism(alg);
        self.with_object(|s| {
            let cached = self.handles.lock().ok().and_then(|h| h.get(&id).copied());
            if let Some(key) = cached {
                match s.sign(&mechanism, key, data) {
                    Err(CkError::Pkcs11(
                        RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid,
                        _,
                    )) => {}
                    other => return other.map(Some),
                }
            }
            let Some(key) = self.find(s, &id)? else {
                return Ok(None);
            };
            if let Ok(mut handles) = self.handles.lock() {
                handles.insert(id.clone(), key);
            }
            let signed = s.sign(&mechanism, key, data);
            if signed.is_err()
                && let Ok(mut handles) = self.handles.lock()
            {
                handles.remove(&id);
            }
            signed.map(Some)
        })?
        .ok_or_else(|| {
            let why = format!(
                "token '{}' holds no private object with CKA_ID {} (destroyed, or another \
                 token in its place)",
                self.label,
                super::hex(&id)
            );
            self.errors.fetch_add(1, Ordering::Relaxed);
            CryptoError::Hsm(why)
        })
    }

    /// Whether the token holds the private object `id` (hex).
    pub fn has(&self, id: &str) -> Result<bool, CryptoError> {
        let id = unhex(id).ok_or(CryptoError::Sign)?;
        self.with_object(|s| self.find(s, &id).map(|h| h.map(|_| ())))
            .map(|found| found.is_some())
    }

    /// Destroys the private object `id` (hex). Destroying one that is already gone is not
    /// an error.
    pub fn destroy(&self, id: &str) -> Result<(), CryptoError> {
        let id = unhex(id).ok_or(CryptoError::Sign)?;
        if let Ok(mut handles) = self.handles.lock() {
            handles.remove(&id);
        }
        self.with_session(|s| {
            for handle in self.find_all(s, &id)? {
                match s.destroy_object(handle) {
                    // Destroyed in between by another instance sharing the token.
                    Err(CkError::Pkcs11(RvError::ObjectHandleInvalid, _)) => {}
                    other => other?,
                }
            }
            Ok(())
        })
    }

    /// Every private object on the token with Signet's label prefix.
    pub fn objects(&self) -> Result<Vec<TokenObject>, CryptoError> {
        self.with_session(|s| {
            let handles = private_objects(s, &[Attribute::Class(ObjectClass::PRIVATE_KEY)])?;
            let mut out = Vec::new();
            for h in handles {
                let attrs = match s.get_attributes(h, &[AttributeType::Id, AttributeType::Label]) {
                    // Destroyed in between by another instance sharing the token.
                    Err(CkError::Pkcs11(RvError::ObjectHandleInvalid, _)) => continue,
                    other => other?,
                };
                let (mut id, mut label) = (None, None);
                for a in attrs {
                    match a {
                        Attribute::Id(v) => id = Some(super::hex(&v)),
                        Attribute::Label(v) => {
                            label = Some(String::from_utf8_lossy(&v).into_owned())
                        }
                        _ => {}
                    }
                }
                if let (Some(id), Some(label)) = (id, label)
                    && label.starts_with(LABEL_PREFIX)
                {
                    out.push(TokenObject { id, label });
                }
            }
            Ok(out)
        })
    }
}

/// Searches for private objects. Without the user's login they are invisible, so an empty
/// answer on a session that lost the login is reported as the lost login it is (the pool
/// then logs in again), not as objects that are gone.
fn private_objects(
    session: &Session,
    template: &[Attribute],
) -> Result<Vec<ObjectHandle>, CkError> {
    let found = session.find_objects(template)?;
    if found.is_empty() {
        let state = session.get_session_info()?.session_state();
        if !matches!(state, SessionState::RoUser | SessionState::RwUser) {
            return Err(CkError::Pkcs11(
                RvError::UserNotLoggedIn,
                Function::FindObjects,
            ));
        }
    }
    Ok(found)
}

/// A random 16-byte `CKA_ID`.
fn random_id(alg: Algorithm) -> Result<Vec<u8>, CryptoError> {
    let mut id = vec![0u8; 16];
    aws_lc_rs::rand::SecureRandom::fill(&aws_lc_rs::rand::SystemRandom::new(), &mut id)
        .map_err(|_| CryptoError::Generate(alg))?;
    Ok(id)
}

/// What `C_GenerateKeyPair` gets for one algorithm, and which public values to read back.
struct Template {
    mechanism: Mechanism<'static>,
    public: Vec<Attribute>,
    private: Vec<Attribute>,
    read: Vec<AttributeType>,
}

impl Template {
    /// `persist`: the private key is a token object (kept), or a session object. The key
    /// can sign and nothing else: no decryption, unwrapping or derivation.
    fn new(alg: Algorithm, bits: RsaBits, id: &[u8], label: String, persist: bool) -> Self {
        let private = vec![
            Attribute::Token(persist),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Decrypt(false),
            Attribute::Unwrap(false),
            Attribute::Derive(false),
            Attribute::Id(id.to_vec()),
            Attribute::Label(label.into_bytes()),
        ];
        let mut public = vec![
            Attribute::Token(false),
            Attribute::Verify(true),
            Attribute::Encrypt(false),
            Attribute::Wrap(false),
        ];
        let mechanism = match alg {
            Algorithm::EdDSA => {
                public.push(Attribute::EcParams(ED25519_PARAMS.to_vec()));
                Mechanism::EccEdwardsKeyPairGen
            }
            Algorithm::ES256 => {
                public.push(Attribute::EcParams(P256_PARAMS.to_vec()));
                Mechanism::EccKeyPairGen
            }
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::PS256 => {
                public.push(Attribute::ModulusBits(Ulong::new(u64::from(bits.bits()))));
                public.push(Attribute::PublicExponent(vec![0x01, 0x00, 0x01]));
                Mechanism::RsaPkcsKeyPairGen
            }
        };
        Self {
            mechanism,
            public,
            private,
            read: Self::reads(alg),
        }
    }

    /// The public values the JWK of `alg` is made of.
    fn reads(alg: Algorithm) -> Vec<AttributeType> {
        match alg {
            Algorithm::EdDSA | Algorithm::ES256 => vec![AttributeType::EcPoint],
            _ => vec![AttributeType::Modulus, AttributeType::PublicExponent],
        }
    }
}

/// The public JWK (with its kid) from the values read off a public key object.
fn public_jwk(alg: Algorithm, values: Vec<Attribute>) -> Result<PublicJwk, CryptoError> {
    let kty = match alg {
        Algorithm::EdDSA => "OKP",
        Algorithm::ES256 => "EC",
        _ => "RSA",
    };
    let mut jwk = PublicJwk::new(alg, kty);
    for value in values {
        match value {
            Attribute::EcPoint(raw) if alg == Algorithm::EdDSA => {
                let x = ec_point(&raw, 32).ok_or(CryptoError::Generate(alg))?;
                jwk.crv = Some("Ed25519".into());
                jwk.x = Some(B64.encode(x));
            }
            Attribute::EcPoint(raw) => {
                let point = ec_point(&raw, 65).ok_or(CryptoError::Generate(alg))?;
                if point[0] != 0x04 {
                    return Err(CryptoError::Generate(alg));
                }
                jwk.crv = Some("P-256".into());
                jwk.x = Some(B64.encode(&point[1..33]));
                jwk.y = Some(B64.encode(&point[33..65]));
            }
            Attribute::Modulus(n) => {
                let start = n.iter().position(|b| *b != 0).unwrap_or(n.len());
                jwk.n = Some(B64.encode(&n[start..]));
            }
            Attribute::PublicExponent(e) => {
                let start = e.iter().position(|b| *b != 0).unwrap_or(e.len());
                jwk.e = Some(B64.encode(&e[start..]));
            }
            _ => {}
        }
    }
    let complete = match kty {
        "OKP" => jwk.x.is_some(),
        "EC" => jwk.x.is_some() && jwk.y.is_some(),
        _ => jwk.n.is_some() && jwk.e.is_some(),
    };
    if !complete {
        return Err(CryptoError::Generate(alg));
    }
    jwk.kid = jwk.thumbprint().to_string();
    Ok(jwk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec_points_are_read_with_or_without_their_octet_string() {
        let bare = [7u8; 32];
        let mut wrapped = vec![0x04, 32];
        wrapped.extend_from_slice(&bare);
        assert_eq!(ec_point(&bare, 32), Some(&bare[..]));
        assert_eq!(ec_point(&wrapped, 32), Some(&bare[..]));
        assert_eq!(ec_point(&wrapped[..20], 32), None);
    }

    #[test]
    fn labels_carry_the_creation_time() {
        let o = TokenObject {
            id: "00".into(),
            label: format!("{LABEL_PREFIX}inst-a:1700000000"),
        };
        assert_eq!(o.made_by("inst-a"), Some(1_700_000_000));
        assert_eq!(o.made_by("inst-b"), None, "another installation's object");
        assert_eq!(o.made_by("inst"), None, "a prefix of the id is not the id");
        for label in [
            "someone else",
            "signet:inst-a:",
            "signet:inst-a:soon",
            "signet:1700000000",
        ] {
            let foreign = TokenObject {
                id: "00".into(),
                label: label.into(),
            };
            assert_eq!(foreign.made_by("inst-a"), None, "{label}");
        }
    }

    #[test]
    fn a_pin_never_prints() {
        let pin = Pin::new("123456".into());
        assert!(!format!("{pin:?}").contains("123456"));
    }
}
