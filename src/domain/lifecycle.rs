//! The key lifecycle: states, and the planner that decides what each operation changes.
//!
//! The planner is pure. Given the current keys of the installation, the time and the
//! policy, it returns a [`Plan`]: which keys move to which state, and which fresh keys
//! must be generated. The server carries a plan out in one transaction, and the property
//! tests at the bottom of this file check docs/design.md's invariants after random sequences
//! of operations.

use super::algorithm::Algorithm;
use super::retention::Retention;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Where a key is in its life. See the table in docs/design.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    Next,
    Active,
    Rotated,
    Revoked,
    Expired,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Next => "next",
            KeyState::Active => "active",
            KeyState::Rotated => "rotated",
            KeyState::Revoked => "revoked",
            KeyState::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            KeyState::Next,
            KeyState::Active,
            KeyState::Rotated,
            KeyState::Revoked,
            KeyState::Expired,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }

    /// Whether keys in this state still hold their private half.
    pub fn keeps_private_key(self) -> bool {
        matches!(self, KeyState::Next | KeyState::Active | KeyState::Rotated)
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key id: the RFC 7638 JWK thumbprint, base64url (no padding) of a SHA-256 digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Kid(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a key id (43 base64url characters)")]
pub struct KidError(String);

impl Kid {
    pub fn parse(s: &str) -> Result<Self, KidError> {
        let ok = s.len() == 43
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(Self(s.to_string()))
        } else {
            // Bound what is echoed back: the input may be anything a client sent.
            Err(KidError(s.chars().take(64).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Kid {
    type Error = KidError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Kid::parse(&s)
    }
}

impl From<Kid> for String {
    fn from(k: Kid) -> Self {
        k.0
    }
}

impl fmt::Display for Kid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the planner needs to know of a key (its metadata, never its material).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    pub kid: Kid,
    pub alg: Algorithm,
    pub state: KeyState,
    pub created_at: DateTime<Utc>,
    pub activated_at: Option<DateTime<Utc>>,
    pub rotated_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// For a rotated key: when its publication ends. Set at rotation, pushed later when a
    /// token signed before the rotation expires later.
    pub expires_at: Option<DateTime<Utc>>,
    /// The latest `exp` of any token Signet signed with this key.
    pub last_token_exp: Option<DateTime<Utc>>,
}

impl KeyInfo {
    /// The order keys are listed in everywhere (the JWKS, the JWKS page): by algorithm,
    /// then the active key, the next key, and the others by when they left service
    /// (rotated or revoked), newest first.
    pub fn listing_order(&self) -> impl Ord + use<> {
        let rank = match self.state {
            KeyState::Active => 0,
            KeyState::Next => 1,
            _ => 2,
        };
        (
            self.alg,
            rank,
            std::cmp::Reverse(self.rotated_at.or(self.revoked_at)),
            std::cmp::Reverse(self.created_at),
        )
    }

    /// Whether the JWKS publishes this key at `now`: `next`, `active`, and `rotated` until
    /// its publication ends (invariant 2).
    pub fn is_published(&self, now: DateTime<Utc>) -> bool {
        match self.state {
            KeyState::Next | KeyState::Active => true,
            KeyState::Rotated => self.expires_at.is_none_or(|e| e > now),
            KeyState::Revoked | KeyState::Expired => false,
        }
    }
}

/// Rules the planner applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// How long a rotated key stays published.
    pub retention: Retention,
    /// At most this many rotated keys per algorithm are published; older ones expire early,
    /// but only once [`Policy::min_publication`] has passed (invariant 4 wins).
    pub max_rotated: usize,
    /// The shortest time a key stays published after its rotation, whatever the cap: the
    /// maximum token lifetime plus a margin for instances that had not reloaded yet and
    /// for verifiers' clock leeway. Every token the key signed has expired by then.
    pub min_publication: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            retention: Retention::default(),
            max_rotated: 8,
            min_publication: Duration::hours(1) + Duration::seconds(PROPAGATION_MARGIN_SECS),
        }
    }
}

/// Added to the maximum token lifetime for [`Policy::min_publication`]: covers an instance
/// that signed with a key for a moment after another one rotated it, the `exp` record's
/// granularity, and verifiers' clock leeway.
pub const PROPAGATION_MARGIN_SECS: i64 = 300;

impl Policy {
    /// The policy for a maximum token lifetime of `max_token_ttl`.
    pub fn new(retention: Retention, max_token_ttl: Retention) -> Self {
        Self {
            retention,
            min_publication: Duration::seconds(
                i64::try_from(max_token_ttl.as_secs()).unwrap_or(i64::MAX / 2),
            ) + Duration::seconds(PROPAGATION_MARGIN_SECS),
            ..Self::default()
        }
    }

    /// The earliest moment a rotated key may leave the JWKS: no token it signed can still
    /// be valid before then (invariant 4). `None` for a key that has not been rotated.
    pub fn earliest_unpublish(&self, key: &KeyInfo) -> Option<DateTime<Utc>> {
        let floor = key.rotated_at? + self.min_publication;
        Some(match key.last_token_exp {
            Some(exp) if exp > floor => exp,
            _ => floor,
        })
    }
}

/// One key moving from one state to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub kid: Kid,
    pub alg: Algorithm,
    pub from: KeyState,
    pub to: KeyState,
    /// For `to == Rotated`: the end of publication.
    pub expires_at: Option<DateTime<Utc>>,
    /// True when a key expires before its retention ended (the rotated-keys cap).
    pub early: bool,
}

/// Everything one operation changes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub transitions: Vec<Transition>,
    /// Fresh keys to generate, in this order, each entering the given state.
    pub generate: Vec<(Algorithm, KeyState)>,
    /// Algorithms left with more published rotated keys than the cap, and how many,
    /// because tokens signed under the oldest may still be valid (worth a warning).
    pub over_cap: Vec<(Algorithm, usize)>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.transitions.is_empty() && self.generate.is_empty()
    }

    pub fn merge(&mut self, other: Plan) {
        self.transitions.extend(other.transitions);
        self.generate.extend(other.generate);
        self.over_cap.extend(other.over_cap);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("algorithm {0} is not enabled")]
    NotEnabled(Algorithm),
    #[error("no key with id {0}")]
    UnknownKid(Kid),
    #[error("key {kid} is already {state}")]
    NotRevocable { kid: Kid, state: KeyState },
    #[error("algorithm {alg} has {active} active and {next} next keys; expected one of each")]
    Inconsistent {
        alg: Algorithm,
        active: usize,
        next: usize,
    },
}

fn single(keys: &[KeyInfo], alg: Algorithm, state: KeyState) -> Vec<&KeyInfo> {
    keys.iter()
        .filter(|k| k.alg == alg && k.state == state)
        .collect()
}

/// The active and next key of an algorithm, or why there are not exactly one of each.
fn active_and_next(keys: &[KeyInfo], alg: Algorithm) -> Result<(&KeyInfo, &KeyInfo), PlanError> {
    let active = single(keys, alg, KeyState::Active);
    let next = single(keys, alg, KeyState::Next);
    match (active.as_slice(), next.as_slice()) {
        ([a], [n]) => Ok((a, n)),
        _ => Err(PlanError::Inconsistent {
            alg,
            active: active.len(),
            next: next.len(),
        }),
    }
}

/// When a key rotated at `now` stops being published: after the retention, or later if a
/// token it signed may still be valid then (invariant 4 holds even if the policy changed).
pub fn publication_end(
    now: DateTime<Utc>,
    policy: Policy,
    last_token_exp: Option<DateTime<Utc>>,
) -> DateTime<Utc> {
    let by_retention = now + Duration::seconds(retention_secs(policy.retention));
    [
        Some(by_retention),
        Some(now + policy.min_publication),
        last_token_exp,
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap_or(by_retention)
}

fn retention_secs(r: Retention) -> i64 {
    i64::try_from(r.as_secs()).unwrap_or(i64::MAX / 2)
}

/// Generates the keys an enabled algorithm lacks (first start, or an algorithm enabled
/// later). Algorithms no longer enabled keep their keys untouched.
pub fn plan_bootstrap(keys: &[KeyInfo], enabled: &[Algorithm]) -> Plan {
    let mut plan = Plan::default();
    for &alg in enabled {
        if single(keys, alg, KeyState::Active).is_empty() {
            plan.generate.push((alg, KeyState::Active));
        }
        if single(keys, alg, KeyState::Next).is_empty() {
            plan.generate.push((alg, KeyState::Next));
        }
    }
    plan
}

/// Rotation of one algorithm: `next` → `active`, `active` → `rotated`, a fresh `next`.
pub fn plan_rotate(
    keys: &[KeyInfo],
    alg: Algorithm,
    now: DateTime<Utc>,
    policy: Policy,
) -> Result<Plan, PlanError> {
    let (active, next) = active_and_next(keys, alg)?;
    let mut plan = Plan {
        transitions: vec![
            Transition {
                kid: next.kid.clone(),
                alg,
                from: KeyState::Next,
                to: KeyState::Active,
                expires_at: None,
                early: false,
            },
            Transition {
                kid: active.kid.clone(),
                alg,
                from: KeyState::Active,
                to: KeyState::Rotated,
                expires_at: Some(publication_end(now, policy, active.last_token_exp)),
                early: false,
            },
        ],
        generate: vec![(alg, KeyState::Next)],
        over_cap: Vec::new(),
    };
    plan.merge(cap_rotated(keys, alg, 1, now, policy));
    Ok(plan)
}

/// Suspected compromise of one algorithm: `active` and `next` → `revoked`, fresh `active`
/// and `next`.
pub fn plan_rotate_and_revoke(keys: &[KeyInfo], alg: Algorithm) -> Result<Plan, PlanError> {
    let (active, next) = active_and_next(keys, alg)?;
    let revoke = |k: &KeyInfo| Transition {
        kid: k.kid.clone(),
        alg,
        from: k.state,
        to: KeyState::Revoked,
        expires_at: None,
        early: false,
    };
    Ok(Plan {
        transitions: vec![revoke(active), revoke(next)],
        generate: vec![(alg, KeyState::Active), (alg, KeyState::Next)],
        over_cap: Vec::new(),
    })
}

/// Revocation of one key. Revoking the `active` key promotes `next` first (in the same
/// plan); revoking `next` generates a new one. Either way, the algorithm keeps one of each.
pub fn plan_revoke(
    keys: &[KeyInfo],
    kid: &Kid,
    now: DateTime<Utc>,
    policy: Policy,
) -> Result<Plan, PlanError> {
    let key = keys
        .iter()
        .find(|k| &k.kid == kid)
        .ok_or_else(|| PlanError::UnknownKid(kid.clone()))?;
    let alg = key.alg;
    let revoke = Transition {
        kid: kid.clone(),
        alg,
        from: key.state,
        to: KeyState::Revoked,
        expires_at: None,
        early: false,
    };
    match key.state {
        KeyState::Rotated => Ok(Plan {
            transitions: vec![revoke],
            ..Plan::default()
        }),
        KeyState::Next => {
            active_and_next(keys, alg)?;
            Ok(Plan {
                transitions: vec![revoke],
                generate: vec![(alg, KeyState::Next)],
                ..Plan::default()
            })
        }
        KeyState::Active => {
            let mut plan = plan_rotate(keys, alg, now, policy)?;
            // The rotation moved the active key to `rotated`; it goes straight to
            // `revoked` instead, and so does not count towards the rotated cap.
            plan.transitions.retain(|t| t.kid != *kid);
            plan.transitions
                .retain(|t| !(t.to == KeyState::Expired && t.early));
            plan.over_cap.clear();
            plan.transitions.push(revoke);
            Ok(plan)
        }
        KeyState::Revoked | KeyState::Expired => Err(PlanError::NotRevocable {
            kid: kid.clone(),
            state: key.state,
        }),
    }
}

/// Housekeeping: rotated keys whose publication ended expire, and so do the oldest beyond
/// the cap once no token they signed can still be valid.
pub fn plan_expiry(keys: &[KeyInfo], now: DateTime<Utc>, policy: Policy) -> Plan {
    let ended =
        |k: &KeyInfo| k.state == KeyState::Rotated && k.expires_at.is_some_and(|e| e <= now);
    let mut plan = Plan {
        transitions: keys
            .iter()
            .filter(|k| ended(k))
            .map(|k| expire(k, false))
            .collect(),
        ..Plan::default()
    };
    let mut algs: Vec<Algorithm> = keys.iter().map(|k| k.alg).collect();
    algs.sort();
    algs.dedup();
    let remaining: Vec<KeyInfo> = keys.iter().filter(|k| !ended(k)).cloned().collect();
    for alg in algs {
        plan.merge(cap_rotated(&remaining, alg, 0, now, policy));
    }
    plan
}

fn expire(k: &KeyInfo, early: bool) -> Transition {
    Transition {
        kid: k.kid.clone(),
        alg: k.alg,
        from: KeyState::Rotated,
        to: KeyState::Expired,
        expires_at: None,
        early,
    }
}

/// When `adding` more keys become `rotated`, the oldest ones beyond the cap expire early,
/// but never one that a valid token may still need: then the cap is exceeded and the plan
/// says so in `over_cap`.
fn cap_rotated(
    keys: &[KeyInfo],
    alg: Algorithm,
    adding: usize,
    now: DateTime<Utc>,
    policy: Policy,
) -> Plan {
    let mut rotated = single(keys, alg, KeyState::Rotated);
    let excess = (rotated.len() + adding).saturating_sub(policy.max_rotated);
    rotated.sort_by_key(|k| (k.rotated_at, k.created_at));
    let transitions: Vec<Transition> = rotated
        .into_iter()
        .filter(|k| policy.earliest_unpublish(k).is_none_or(|t| t <= now))
        .take(excess)
        .map(|k| expire(k, true))
        .collect();
    let left_over = excess - transitions.len();
    Plan {
        over_cap: if left_over > 0 {
            vec![(alg, policy.max_rotated + left_over)]
        } else {
            Vec::new()
        },
        transitions,
        generate: vec![],
    }
}

/// Applies a plan to a list of keys, as the database would. `new_kid` names each
/// generated key. Used by tests and by anything that keeps keys in memory.
pub fn apply(
    keys: &mut Vec<KeyInfo>,
    plan: &Plan,
    now: DateTime<Utc>,
    mut new_kid: impl FnMut(Algorithm) -> Kid,
) {
    for t in &plan.transitions {
        if let Some(k) = keys.iter_mut().find(|k| k.kid == t.kid) {
            k.state = t.to;
            match t.to {
                KeyState::Active => k.activated_at = Some(now),
                KeyState::Rotated => {
                    k.rotated_at = Some(now);
                    k.expires_at = t.expires_at;
                }
                KeyState::Revoked => k.revoked_at = Some(now),
                KeyState::Expired => k.expires_at = Some(k.expires_at.map_or(now, |e| e.min(now))),
                KeyState::Next => {}
            }
        }
    }
    for &(alg, state) in &plan.generate {
        keys.push(KeyInfo {
            kid: new_kid(alg),
            alg,
            state,
            created_at: now,
            activated_at: (state == KeyState::Active).then_some(now),
            rotated_at: None,
            revoked_at: None,
            expires_at: None,
            last_token_exp: None,
        });
    }
}

/// The keys a JWKS publishes: `next`, `active` and unexpired `rotated` (invariant 2).
pub fn published(keys: &[KeyInfo], now: DateTime<Utc>) -> Vec<&KeyInfo> {
    keys.iter().filter(|k| k.is_published(now)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
    }

    /// Deterministic kids for tests: 43 characters, distinct per counter.
    fn kid_maker() -> impl FnMut(Algorithm) -> Kid {
        let mut n = 0u32;
        move |_| {
            n += 1;
            Kid::parse(&format!("{n:0>43}")).unwrap()
        }
    }

    fn boot(algs: &[Algorithm]) -> (Vec<KeyInfo>, impl FnMut(Algorithm) -> Kid) {
        let mut keys = Vec::new();
        let mut mk = kid_maker();
        let plan = plan_bootstrap(&keys, algs);
        apply(&mut keys, &plan, t0(), &mut mk);
        (keys, mk)
    }

    fn check_invariants(keys: &[KeyInfo], enabled: &[Algorithm], now: DateTime<Utc>) {
        for &alg in enabled {
            let count = |s| keys.iter().filter(|k| k.alg == alg && k.state == s).count();
            assert_eq!(count(KeyState::Active), 1, "{alg}: one active");
            assert_eq!(count(KeyState::Next), 1, "{alg}: one next");
        }
        let published = published(keys, now);
        assert!(published.iter().all(|k| k.state != KeyState::Revoked));
        for k in keys {
            if k.state == KeyState::Rotated {
                // Invariant 4: a published rotated key outlives every token it signed.
                let end = k.expires_at.expect("rotated keys have an end");
                if let Some(exp) = k.last_token_exp {
                    assert!(end >= exp, "{} unpublished before its tokens expire", k.kid);
                }
            }
        }
    }

    #[test]
    fn kid_parse() {
        assert!(Kid::parse("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs").is_ok());
        assert!(Kid::parse("short").is_err());
        assert!(Kid::parse("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9X=").is_err());
    }

    #[test]
    fn bootstrap_creates_active_and_next_once() {
        let (keys, _) = boot(&[Algorithm::EdDSA, Algorithm::RS256]);
        assert_eq!(keys.len(), 4);
        assert!(plan_bootstrap(&keys, &[Algorithm::EdDSA, Algorithm::RS256]).is_empty());
        check_invariants(&keys, &[Algorithm::EdDSA, Algorithm::RS256], t0());
    }

    #[test]
    fn rotate_promotes_next_and_retains_old_active() {
        let (mut keys, mut mk) = boot(&[Algorithm::EdDSA]);
        let old_active = keys[0].kid.clone();
        let old_next = keys[1].kid.clone();
        let plan = plan_rotate(&keys, Algorithm::EdDSA, t0(), Policy::default()).unwrap();
        apply(&mut keys, &plan, t0(), &mut mk);
        let state = |kid: &Kid| keys.iter().find(|k| &k.kid == kid).unwrap().state;
        assert_eq!(state(&old_next), KeyState::Active);
        assert_eq!(state(&old_active), KeyState::Rotated);
        let rotated = keys.iter().find(|k| k.kid == old_active).unwrap();
        assert_eq!(rotated.expires_at, Some(t0() + Duration::days(30)));
        check_invariants(&keys, &[Algorithm::EdDSA], t0());
    }

    #[test]
    fn rotated_key_outlives_tokens_signed_under_it() {
        let (mut keys, _) = boot(&[Algorithm::EdDSA]);
        let late = t0() + Duration::days(45);
        keys[0].last_token_exp = Some(late);
        let plan = plan_rotate(&keys, Algorithm::EdDSA, t0(), Policy::default()).unwrap();
        assert_eq!(plan.transitions[1].expires_at, Some(late));
    }

    #[test]
    fn revoking_active_promotes_next_in_the_same_plan() {
        let (mut keys, mut mk) = boot(&[Algorithm::RS256]);
        let active = keys[0].kid.clone();
        let plan = plan_revoke(&keys, &active, t0(), Policy::default()).unwrap();
        apply(&mut keys, &plan, t0(), &mut mk);
        assert_eq!(keys[0].state, KeyState::Revoked);
        assert_eq!(keys[1].state, KeyState::Active);
        check_invariants(&keys, &[Algorithm::RS256], t0());
        assert!(published(&keys, t0()).iter().all(|k| k.kid != active));
    }

    #[test]
    fn revoking_twice_is_refused() {
        let (mut keys, mut mk) = boot(&[Algorithm::RS256]);
        let next = keys[1].kid.clone();
        let plan = plan_revoke(&keys, &next, t0(), Policy::default()).unwrap();
        apply(&mut keys, &plan, t0(), &mut mk);
        assert_eq!(
            plan_revoke(&keys, &next, t0(), Policy::default()),
            Err(PlanError::NotRevocable {
                kid: next,
                state: KeyState::Revoked
            })
        );
        let unknown = Kid::parse(&"x".repeat(43)).unwrap();
        assert_eq!(
            plan_revoke(&keys, &unknown, t0(), Policy::default()),
            Err(PlanError::UnknownKid(unknown))
        );
    }

    #[test]
    fn rotate_and_revoke_replaces_both() {
        let (mut keys, mut mk) = boot(&[Algorithm::ES256]);
        let plan = plan_rotate_and_revoke(&keys, Algorithm::ES256).unwrap();
        apply(&mut keys, &plan, t0(), &mut mk);
        assert_eq!(keys[0].state, KeyState::Revoked);
        assert_eq!(keys[1].state, KeyState::Revoked);
        check_invariants(&keys, &[Algorithm::ES256], t0());
    }

    #[test]
    fn the_rotated_cap_expires_the_oldest_early() {
        let (mut keys, mut mk) = boot(&[Algorithm::EdDSA]);
        let policy = Policy::default();
        let mut now = t0();
        for _ in 0..policy.max_rotated {
            let plan = plan_rotate(&keys, Algorithm::EdDSA, now, policy).unwrap();
            assert!(plan.transitions.iter().all(|t| !t.early));
            apply(&mut keys, &plan, now, &mut mk);
            now += Duration::hours(1);
        }
        let first = keys[0].kid.clone();
        let plan = plan_rotate(&keys, Algorithm::EdDSA, now, policy).unwrap();
        let early: Vec<_> = plan.transitions.iter().filter(|t| t.early).collect();
        assert_eq!(early.len(), 1);
        assert_eq!(early[0].kid, first);
    }

    #[test]
    fn expiry_ends_publication_at_the_planned_time() {
        let (mut keys, mut mk) = boot(&[Algorithm::EdDSA]);
        let plan = plan_rotate(&keys, Algorithm::EdDSA, t0(), Policy::default()).unwrap();
        apply(&mut keys, &plan, t0(), &mut mk);
        assert!(plan_expiry(&keys, t0() + Duration::days(29), Policy::default()).is_empty());
        let end = t0() + Duration::days(30);
        let plan = plan_expiry(&keys, end, Policy::default());
        assert_eq!(plan.transitions.len(), 1);
        apply(&mut keys, &plan, end, &mut mk);
        assert_eq!(published(&keys, end).len(), 2);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Rotate(usize),
        RotateAndRevoke(usize),
        Revoke(usize),
        Sign(usize, u32),
        Advance(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0usize..3).prop_map(Op::Rotate),
            (0usize..3).prop_map(Op::RotateAndRevoke),
            (0usize..64).prop_map(Op::Revoke),
            (0usize..64, 1u32..2_000).prop_map(|(i, h)| Op::Sign(i, h)),
            (1u32..2_000).prop_map(Op::Advance),
        ]
    }

    proptest! {
        #[test]
        fn invariants_hold_after_any_sequence(ops in proptest::collection::vec(op(), 1..60)) {
            let enabled = [Algorithm::EdDSA, Algorithm::RS256, Algorithm::ES256];
            let policy = Policy { max_rotated: 3, ..Policy::new(Retention::parse("7d").unwrap(), Retention::parse("1h").unwrap()) };
            let (mut keys, mut mk) = boot(&enabled);
            let mut now = t0();
            for op in ops {
                match op {
                    Op::Rotate(i) => {
                        let plan = plan_rotate(&keys, enabled[i], now, policy).unwrap();
                        apply(&mut keys, &plan, now, &mut mk);
                    }
                    Op::RotateAndRevoke(i) => {
                        let plan = plan_rotate_and_revoke(&keys, enabled[i]).unwrap();
                        apply(&mut keys, &plan, now, &mut mk);
                    }
                    Op::Revoke(i) => {
                        let kid = keys[i % keys.len()].kid.clone();
                        match plan_revoke(&keys, &kid, now, policy) {
                            Ok(plan) => apply(&mut keys, &plan, now, &mut mk),
                            Err(PlanError::NotRevocable { .. }) => {}
                            Err(e) => panic!("{e}"),
                        }
                    }
                    Op::Sign(i, hours) => {
                        // Only the active key signs; the token lives less than retention.
                        let alg = enabled[i % enabled.len()];
                        let exp = now + Duration::hours(i64::from(hours % 160));
                        if let Some(k) = keys.iter_mut().find(|k| k.alg == alg && k.state == KeyState::Active) {
                            k.last_token_exp = Some(k.last_token_exp.map_or(exp, |e| e.max(exp)));
                        }
                    }
                    Op::Advance(hours) => {
                        now += Duration::hours(i64::from(hours));
                        let plan = plan_expiry(&keys, now, policy);
                        apply(&mut keys, &plan, now, &mut mk);
                    }
                }
                check_invariants(&keys, &enabled, now);
                for alg in enabled {
                    // The cap holds, except for keys a valid token may still need.
                    let rotated: Vec<&KeyInfo> = keys.iter().filter(|k| k.alg == alg && k.state == KeyState::Rotated).collect();
                    let needed = rotated.iter().filter(|k| policy.earliest_unpublish(k).is_some_and(|t| t > now)).count();
                    prop_assert!(rotated.len() <= policy.max_rotated.max(needed) + 1);
                }
            }
        }
    }

    #[test]
    fn the_cap_never_unpublishes_a_key_with_live_tokens() {
        // Nine rotations within a minute: the oldest rotated key signed a token an hour
        // long a minute ago, so it stays published although the cap is 8.
        let (mut keys, mut mk) = boot(&[Algorithm::EdDSA]);
        let policy = Policy::new(
            Retention::parse("30d").unwrap(),
            Retention::parse("1h").unwrap(),
        );
        let first = keys[0].kid.clone();
        keys[0].last_token_exp = Some(t0() + Duration::hours(1));
        let mut now = t0();
        let mut warned = 0;
        for _ in 0..12 {
            now += Duration::seconds(5);
            let plan = plan_rotate(&keys, Algorithm::EdDSA, now, policy).unwrap();
            assert!(plan.transitions.iter().all(|t| t.to != KeyState::Expired));
            warned += plan.over_cap.len();
            apply(&mut keys, &plan, now, &mut mk);
        }
        assert_eq!(warned, 4, "rotations 9 to 12 leave the JWKS over the cap");
        assert!(published(&keys, now).iter().any(|k| k.kid == first));
        // Once the tokens of the oldest can no longer be valid, housekeeping brings the
        // JWKS back to the cap, oldest first.
        let later = t0() + Duration::hours(2);
        let plan = plan_expiry(&keys, later, policy);
        assert_eq!(plan.transitions.len(), 4);
        assert!(plan.transitions.iter().all(|t| t.early));
        assert!(plan.transitions.iter().any(|t| t.kid == first));
        apply(&mut keys, &plan, later, &mut mk);
        let rotated = keys.iter().filter(|k| k.state == KeyState::Rotated).count();
        assert_eq!(rotated, policy.max_rotated);
    }

    #[test]
    fn a_rotated_key_stays_published_for_the_token_lifetime_and_margin_whatever_retention() {
        let (mut keys, mut mk) = boot(&[Algorithm::EdDSA]);
        // A retention barely longer than the token lifetime, and no recorded token exp
        // (another instance signed but had not recorded it yet).
        let policy = Policy::new(
            Retention::parse("61m").unwrap(),
            Retention::parse("1h").unwrap(),
        );
        let plan = plan_rotate(&keys, Algorithm::EdDSA, t0(), policy).unwrap();
        apply(&mut keys, &plan, t0(), &mut mk);
        let end = keys[0].expires_at.unwrap();
        assert_eq!(
            end,
            t0() + Duration::hours(1) + Duration::seconds(PROPAGATION_MARGIN_SECS)
        );
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// Several rotations of one algorithm at once (clicks, a per-second cron).
        Burst(usize, usize),
        /// A token signed now by the active key, `ttl` seconds long; recorded in the
        /// database or not (another instance's record may come late).
        Sign(usize, u32, bool),
        /// A token signed by a lagging instance with the key rotated last, just after
        /// the rotation, never recorded.
        SignLagging(usize, u32),
        Advance(u32),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0usize..2, 1usize..12).prop_map(|(a, n)| Step::Burst(a, n)),
            (0usize..2, 1u32..=3_600, any::<bool>()).prop_map(|(a, t, r)| Step::Sign(a, t, r)),
            (0usize..2, 1u32..=3_600).prop_map(|(a, t)| Step::SignLagging(a, t)),
            (1u32..4_000).prop_map(Step::Advance),
        ]
    }

    proptest! {
        /// Invariant 4 under bursts: after every step, every token still valid has its
        /// key published.
        #[test]
        fn every_valid_token_keeps_its_key_published(steps in proptest::collection::vec(step(), 1..80)) {
            let enabled = [Algorithm::EdDSA, Algorithm::RS256];
            let policy = Policy::new(Retention::parse("2h").unwrap(), Retention::parse("1h").unwrap());
            let (mut keys, mut mk) = boot(&enabled);
            let mut now = t0();
            let mut tokens: Vec<(Kid, DateTime<Utc>)> = Vec::new();
            for step in steps {
                match step {
                    Step::Burst(a, n) => {
                        for _ in 0..n {
                            let plan = plan_rotate(&keys, enabled[a], now, policy).unwrap();
                            apply(&mut keys, &plan, now, &mut mk);
                        }
                    }
                    Step::Sign(a, ttl, recorded) => {
                        let exp = now + Duration::seconds(i64::from(ttl));
                        let key = keys.iter_mut().find(|k| k.alg == enabled[a] && k.state == KeyState::Active).unwrap();
                        if recorded {
                            key.last_token_exp = Some(key.last_token_exp.map_or(exp, |e| e.max(exp)));
                        }
                        tokens.push((key.kid.clone(), exp));
                    }
                    Step::SignLagging(a, ttl) => {
                        let newest = keys.iter()
                            .filter(|k| k.alg == enabled[a] && k.state == KeyState::Rotated && k.rotated_at == Some(now))
                            .max_by_key(|k| k.created_at);
                        if let Some(k) = newest {
                            tokens.push((k.kid.clone(), now + Duration::seconds(i64::from(ttl))));
                        }
                    }
                    Step::Advance(secs) => {
                        now += Duration::seconds(i64::from(secs));
                        let plan = plan_expiry(&keys, now, policy);
                        apply(&mut keys, &plan, now, &mut mk);
                    }
                }
                check_invariants(&keys, &enabled, now);
                let published = published(&keys, now);
                for (kid, exp) in &tokens {
                    if *exp > now {
                        prop_assert!(published.iter().any(|k| &k.kid == kid), "key {} of a token valid until {} unpublished at {}", kid, exp, now);
                    }
                }
            }
        }
    }
}
