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
//! Sessions are pooled, up to one per core; a caller beyond that waits for one. The login state of PKCS#11 belongs to the
//! application, not to one session: the first session logs in, later ones inherit it. An
//! operation that fails because the session or the login was lost drops the pooled
//! sessions, logs in again on a fresh one and retries once.

use super::{CryptoError, PublicJwk, unhex};
use crate::domain::{Algorithm, RsaBits};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::{AuthPin, Ulong};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

/// The prefix of every object label Signet writes.
pub const LABEL_PREFIX: &str = "signet:";

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

/// An open, logged-in token.
pub struct Token {
    ctx: Pkcs11,
    slot: Slot,
    label: String,
    pin: Pin,
    /// Open sessions not in use, and how many are open in all (at most `max_sessions`:
    /// a caller beyond that waits for one to be given back rather than opening more).
    sessions: Mutex<Sessions>,
    freed: Condvar,
    max_sessions: usize,
    /// One permit per session, for async callers to wait on before they take a blocking
    /// thread for a signature.
    permits: tokio::sync::Semaphore,
    /// Operations the module refused, for `/metrics`.
    errors: AtomicU64,
    /// The installation whose objects these are (in every label Signet writes).
    installation: String,
    /// The handle of each private object found, by `CKA_ID`: a handle stays valid for the
    /// application while the object exists, so a signature costs one `C_Sign`, not a
    /// search first.
    handles: Mutex<HashMap<Vec<u8>, ObjectHandle>>,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("label", &self.label)
            .field("slot", &self.slot.id())
            .finish_non_exhaustive()
    }
}

/// Whether an error means the session or the login is gone (worth one fresh try).
fn lost(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::UserNotLoggedIn
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent
                | RvError::CryptokiNotInitialized,
            _
        )
    )
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
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(module_error(format!("C_Initialize failed: {e}"))),
        }
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
            let wanted = match &config.token {
                TokenChoice::Label(l) => *l == label,
                TokenChoice::Slot(id) => *id == slot.id(),
            };
            if wanted && found.is_none() {
                found = Some((slot, label.clone()));
            }
            present.push(format!("'{label}' in slot {}", slot.id()));
        }
        let Some((slot, label)) = found else {
            return Err(OpenError::NoToken {
                choice: config.token.clone(),
                present: if present.is_empty() {
                    "none".into()
                } else {
                    present.join(", ")
                },
            });
        };
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
            slot,
            label,
            pin: config.pin.clone(),
            sessions: Mutex::new(Sessions::default()),
            freed: Condvar::new(),
            max_sessions: std::thread::available_parallelism().map_or(2, usize::from),
            permits: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, usize::from),
            ),
            errors: AtomicU64::new(0),
            installation: installation.to_string(),
            handles: Mutex::new(HashMap::new()),
        };
        let session = token.login().map_err(|e| match e {
            CkError::Pkcs11(
                RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange,
                _,
            ) => OpenError::Pin(e.to_string()),
            CkError::Pkcs11(RvError::PinLocked, _) => {
                OpenError::Pin(format!("{e}: the user PIN is locked"))
            }
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

    /// The slot the token is in.
    pub fn slot_id(&self) -> u64 {
        self.slot.id()
    }

    /// How many operations the module refused since the start.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// A new read-write session, logged in (the application's login, if there is one
    /// already, covers it).
    fn login(&self) -> Result<Session, CkError> {
        let session = self.ctx.open_rw_session(self.slot)?;
        match session.login(UserType::User, Some(&self.pin.auth())) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
            Err(e) => Err(e),
        }
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A session: an idle one, a new one while fewer than `max_sessions` are open, or
    /// else the next one given back (waiting without using the CPU).
    fn take(&self) -> Result<Session, CkError> {
        let mut pool = self.pool();
        loop {
            if let Some(session) = pool.idle.pop() {
                return Ok(session);
            }
            if pool.open < self.max_sessions {
                pool.open += 1;
                drop(pool);
                return self.login().inspect_err(|_| self.closed(1));
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

    /// Closes `session` and every idle one: after a lost session or login, none of them
    /// can be trusted.
    fn forget_sessions(&self, session: Session) {
        drop(session);
        let idle = std::mem::take(&mut self.pool().idle);
        let n = idle.len() + 1;
        drop(idle);
        self.closed(n);
    }

    /// Runs `op` on a pooled session. When the session or the login was lost, starts over
    /// once on a fresh, logged-in session.
    fn with_session<T>(&self, op: impl Fn(&Session) -> Result<T, CkError>) -> Result<T, CkError> {
        let result = self.try_with_session(op);
        if result.is_err() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn try_with_session<T>(
        &self,
        op: impl Fn(&Session) -> Result<T, CkError>,
    ) -> Result<T, CkError> {
        let session = self.take()?;
        match op(&session) {
            Ok(v) => {
                self.give_back(session);
                Ok(v)
            }
            Err(e) if lost(&e) => {
                self.forget_sessions(session);
                let fresh = self.take()?;
                let result = op(&fresh);
                self.give_back(fresh);
                result
            }
            Err(e) => {
                self.give_back(session);
                Err(e)
            }
        }
    }

    /// Generates a key pair for `alg` on the token. The private object is a token object,
    /// private, sensitive and not extractable; the public object is a session object,
    /// destroyed as soon as its values are read.
    pub fn generate(&self, alg: Algorithm, bits: RsaBits) -> Result<TokenKey, CryptoError> {
        let id = random_id(alg)?;
        let template = Template::new(alg, bits, &id, self.label_for_now(), true);
        // Not retried as a whole: a second attempt after a generation that worked would
        // make a second object with the same CKA_ID. A session lost before generation is
        // replaced once, as the session pool does for other operations.
        let session = self.take().map_err(|e| self.failed(e))?;
        let generate = |s: &Session| {
            s.generate_key_pair(&template.mechanism, &template.public, &template.private)
        };
        match generate(&session) {
            Ok((public, private)) => self.finish_generation(session, alg, &id, public, private),
            Err(e) if lost(&e) => {
                self.forget_sessions(session);
                let fresh = self.take().map_err(|e| self.failed(e))?;
                match generate(&fresh) {
                    Ok((public, private)) => {
                        self.finish_generation(fresh, alg, &id, public, private)
                    }
                    Err(e) => {
                        self.give_back(fresh);
                        Err(self.failed(e))
                    }
                }
            }
            Err(e) => {
                self.give_back(session);
                Err(self.failed(e))
            }
        }
    }

    /// Reads the public values of a fresh pair and destroys the public object; on any
    /// failure destroys the private object too, so nothing unreferenced is left.
    fn finish_generation(
        &self,
        session: Session,
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
        match jwk {
            Ok(jwk) => {
                self.give_back(session);
                Ok(TokenKey {
                    id: super::hex(id),
                    jwk,
                })
            }
            Err(e) => {
                let _ = session.destroy_object(private);
                self.give_back(session);
                Err(e)
            }
        }
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
        let available = self
            .ctx
            .get_mechanism_list(self.slot)
            .map_err(|e| format!("cannot list the mechanisms: {e}"))?;
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

    /// The private object with this `CKA_ID` (hex), if the token has it.
    fn find(&self, session: &Session, id: &[u8]) -> Result<Option<ObjectHandle>, CkError> {
        let found = session.find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Id(id.to_vec()),
        ])?;
        Ok(found.first().copied())
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
        self.with_session(|s| {
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
            s.sign(&mechanism, key, data).map(Some)
        })
        .map_err(hsm)?
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
        self.with_session(|s| self.find(s, &id).map(|h| h.is_some()))
            .map_err(hsm)
    }

    /// Destroys the private object `id` (hex). Destroying one that is already gone is not
    /// an error.
    pub fn destroy(&self, id: &str) -> Result<(), CryptoError> {
        let id = unhex(id).ok_or(CryptoError::Sign)?;
        if let Ok(mut handles) = self.handles.lock() {
            handles.remove(&id);
        }
        self.with_session(|s| {
            let all = s.find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Id(id.clone()),
            ])?;
            for handle in all {
                s.destroy_object(handle)?;
            }
            Ok(())
        })
        .map_err(hsm)
    }

    /// Every private object on the token with Signet's label prefix.
    pub fn objects(&self) -> Result<Vec<TokenObject>, CryptoError> {
        self.with_session(|s| {
            let handles = s.find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])?;
            let mut out = Vec::new();
            for h in handles {
                let attrs = s.get_attributes(h, &[AttributeType::Id, AttributeType::Label])?;
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
        .map_err(hsm)
    }
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
