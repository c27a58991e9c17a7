//! JWT verification (jsonwebtoken on aws-lc-rs): the keys from `--jwt-key` (an RS256 or
//! ES256 public key in PEM, or a JWKS file), the standard claims (`exp` required, `nbf`,
//! `iss`, `aud` when configured, all with a bounded clock skew) and cachenator's access
//! claims. Imports nothing of the server; the API edges call it through `api::auth`.
//!
//! ```json
//! { "exp": 1767225600, "iss": "...", "aud": "...",
//!   "action": "READ" | ["READ", "WRITE", "DELETE"],
//!   "bucket": "photos",        // "" or absent: every bucket
//!   "prefix": "users/42/" }    // "" or absent: every key
//! ```

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Longest token accepted (the header's value), so a huge one costs nothing to refuse.
pub const MAX_TOKEN_LEN: usize = 16 << 10;

/// What a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Read,
    Write,
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "READ",
            Action::Write => "WRITE",
            Action::Delete => "DELETE",
        }
    }

    fn parse(s: &str) -> Option<Action> {
        match s.to_ascii_uppercase().as_str() {
            "READ" => Some(Action::Read),
            "WRITE" => Some(Action::Write),
            "DELETE" => Some(Action::Delete),
            _ => None,
        }
    }
}

/// The access a valid token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub actions: Vec<Action>,
    /// Empty: every bucket.
    pub bucket: String,
    /// Empty: every key.
    pub prefix: String,
    pub subject: Option<String>,
    /// `exp`, seconds since the epoch.
    pub expires_at: u64,
}

impl Claims {
    /// Whether these claims allow `action` on `key` of `bucket`; the refusal says which
    /// claim is missing, never the token.
    pub fn allows(&self, action: Action, bucket: &str, key: &str) -> Result<(), JwtError> {
        if !self.actions.contains(&action) {
            return Err(JwtError::Forbidden(format!(
                "the token does not grant {} (it grants {})",
                action.as_str(),
                if self.actions.is_empty() {
                    "no action".to_string()
                } else {
                    self.actions
                        .iter()
                        .map(|a| a.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )));
        }
        if !self.bucket.is_empty() && self.bucket != bucket {
            return Err(JwtError::Forbidden(format!(
                "the token is for bucket {:?}, not {:?}",
                self.bucket, bucket
            )));
        }
        if !key.starts_with(&self.prefix) {
            return Err(JwtError::Forbidden(format!(
                "the token is for keys under {:?}",
                self.prefix
            )));
        }
        Ok(())
    }
}

/// Why a token was refused. `Forbidden` is a valid token that does not grant the
/// request (403); every other kind means no valid token (401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("no bearer token (send Authorization: Bearer <JWT>)")]
    Missing,
    #[error("the token is malformed: {0}")]
    Malformed(String),
    #[error("the token's signature does not verify with the configured key")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token's issuer is not the configured one")]
    Issuer,
    #[error("the token's audience does not include the configured one")]
    Audience,
    #[error("{0}")]
    Forbidden(String),
}

impl JwtError {
    /// A short, stable name (metrics label).
    pub fn reason(&self) -> &'static str {
        match self {
            JwtError::Missing => "missing",
            JwtError::Malformed(_) => "malformed",
            JwtError::BadSignature => "signature",
            JwtError::Expired => "expired",
            JwtError::NotYetValid => "not_yet_valid",
            JwtError::Issuer => "issuer",
            JwtError::Audience => "audience",
            JwtError::Forbidden(_) => "forbidden",
        }
    }

    /// Every reason, for metrics.
    pub const REASONS: [&'static str; 8] = [
        "missing",
        "malformed",
        "signature",
        "expired",
        "not_yet_valid",
        "issuer",
        "audience",
        "forbidden",
    ];
}

/// What the verifier is configured with.
#[derive(Debug, Clone, Default)]
pub struct JwtSettings {
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required in `aud`, when set.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway_secs: u64,
}

struct KeyEntry {
    kid: Option<String>,
    key: DecodingKey,
    validation: Validation,
}

/// Verifies bearer tokens against the configured keys; counts what it accepts and
/// refuses (node-wide).
pub struct Verifier {
    /// Tells this verifier's entries apart in the per-thread cache.
    id: u64,
    leeway_secs: u64,
    keys: Vec<KeyEntry>,
    accepted: AtomicU64,
    refused: [AtomicU64; JwtError::REASONS.len()],
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.keys.len())
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct RawClaims {
    #[serde(default)]
    action: Option<OneOrMany>,
    #[serde(default)]
    bucket: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    /// Required and checked by the validation (which reports it missing); kept for the
    /// cache of verified tokens.
    #[serde(default)]
    exp: u64,
}

impl Verifier {
    /// Loads the key file: a PEM public key (RSA: RS256; EC P-256: ES256) or a JWKS
    /// (`{"keys": [...]}`; each key's `alg`, or RS256/ES256 by its type).
    #[expect(clippy::disallowed_methods, reason = "start-up, on the main thread")]
    pub fn load(path: &Path, settings: &JwtSettings) -> Result<Verifier, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        Self::from_bytes(&bytes, settings).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn from_bytes(bytes: &[u8], settings: &JwtSettings) -> Result<Verifier, String> {
        let mut keys = Vec::new();
        let text = String::from_utf8_lossy(bytes);
        if text.trim_start().starts_with('{') {
            let set: JwkSet =
                serde_json::from_slice(bytes).map_err(|e| format!("not a JWKS: {e}"))?;
            for jwk in &set.keys {
                let alg = match jwk
                    .common
                    .key_algorithm
                    .and_then(|a| Algorithm::try_from(a).ok())
                {
                    Some(a) => a,
                    None => match &jwk.algorithm {
                        jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                        jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => {
                            Algorithm::ES256
                        }
                        _ => return Err("JWKS key of an unsupported type".into()),
                    },
                };
                if !matches!(alg, Algorithm::RS256 | Algorithm::ES256) {
                    return Err(format!(
                        "JWKS key with algorithm {alg:?}: only RS256 and ES256"
                    ));
                }
                let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("JWKS key: {e}"))?;
                keys.push(KeyEntry {
                    kid: jwk.common.key_id.clone(),
                    key,
                    validation: validation(alg, settings),
                });
            }
        } else if let Ok(key) = DecodingKey::from_rsa_pem(bytes) {
            keys.push(KeyEntry {
                kid: None,
                key,
                validation: validation(Algorithm::RS256, settings),
            });
        } else {
            let key = DecodingKey::from_ec_pem(bytes).map_err(|e| {
                format!("neither an RSA nor an EC public key in PEM, nor a JWKS: {e}")
            })?;
            keys.push(KeyEntry {
                kid: None,
                key,
                validation: validation(Algorithm::ES256, settings),
            });
        }
        if keys.is_empty() {
            return Err("no key found".into());
        }
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Ok(Verifier {
            id: NEXT_ID.fetch_add(1, Relaxed),
            leeway_secs: settings.leeway_secs,
            keys,
            accepted: AtomicU64::new(0),
            refused: Default::default(),
        })
    }

    /// Counts one request's outcome (once per request: after [`Verifier::verify`] and
    /// [`Claims::allows`]).
    pub fn record<T>(&self, r: &Result<T, JwtError>) {
        match r {
            Ok(_) => self.accepted.fetch_add(1, Relaxed),
            Err(e) => {
                let i = JwtError::REASONS
                    .iter()
                    .position(|r| *r == e.reason())
                    .expect("every reason is listed");
                self.refused[i].fetch_add(1, Relaxed)
            }
        };
    }

    /// (accepted, refused by reason) so far.
    pub fn counts(&self) -> (u64, Vec<(&'static str, u64)>) {
        (
            self.accepted.load(Relaxed),
            JwtError::REASONS
                .iter()
                .zip(&self.refused)
                .map(|(r, c)| (*r, c.load(Relaxed)))
                .collect(),
        )
    }

    /// Checks the value of an `Authorization` header (or None when there was none) and
    /// returns the access the token grants.
    pub fn verify(&self, authorization: Option<&[u8]>) -> Result<Claims, JwtError> {
        self.verify_at(jsonwebtoken::get_current_timestamp(), authorization)
    }

    /// [`Verifier::verify`] at `now` (seconds): a token this thread verified before is
    /// answered from the cache until its `exp` (plus the leeway) passes; signature
    /// checks (tens of µs for ES256 or RS256) are paid once per token and thread.
    fn verify_at(&self, now: u64, authorization: Option<&[u8]>) -> Result<Claims, JwtError> {
        let value = authorization.ok_or(JwtError::Missing)?;
        let cached = VERIFIED.with(|c| {
            let mut c = c.borrow_mut();
            let key = (self.id, value);
            let hit = c.get(&key as &dyn CacheKey)?.clone();
            if now > hit.expires_at.saturating_add(self.leeway_secs) {
                c.remove(&key as &dyn CacheKey);
                return Some(Err(JwtError::Expired));
            }
            Some(Ok(hit))
        });
        if let Some(r) = cached {
            return r;
        }
        let claims = self.verify_uncached(value)?;
        VERIFIED.with(|c| {
            let mut c = c.borrow_mut();
            if c.len() >= CACHE_ENTRIES {
                c.clear();
            }
            c.insert((self.id, value.into()), claims.clone());
        });
        Ok(claims)
    }

    fn verify_uncached(&self, value: &[u8]) -> Result<Claims, JwtError> {
        if value.len() > MAX_TOKEN_LEN {
            return Err(JwtError::Malformed(format!(
                "the Authorization header is over {MAX_TOKEN_LEN} bytes"
            )));
        }
        let value = std::str::from_utf8(value)
            .map_err(|_| JwtError::Malformed("the Authorization header is not UTF-8".into()))?;
        let token = match value.split_once(' ') {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim(),
            _ => {
                return Err(JwtError::Malformed(
                    "the Authorization header is not `Bearer <token>`".into(),
                ))
            }
        };
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| JwtError::Malformed(format!("header: {}", describe(&e))))?;
        let candidates: Vec<&KeyEntry> = match &header.kid {
            Some(kid) if self.keys.iter().any(|k| k.kid.as_deref() == Some(kid)) => self
                .keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .collect(),
            _ => self.keys.iter().collect(),
        };
        let mut last = JwtError::BadSignature;
        for k in candidates {
            if !k.validation.algorithms.contains(&header.alg) {
                last = JwtError::Malformed(format!(
                    "algorithm {:?} is not the configured key's ({:?})",
                    header.alg, k.validation.algorithms
                ));
                continue;
            }
            match jsonwebtoken::decode::<RawClaims>(token, &k.key, &k.validation) {
                Ok(data) => return claims(data.claims),
                Err(e) => {
                    last = map_error(&e);
                    if last != JwtError::BadSignature {
                        // The signature verified (claims are checked after it): this
                        // is the token's key and its answer.
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }
}

/// Tokens verified per thread at most (then the cache starts over).
const CACHE_ENTRIES: usize = 1024;

thread_local! {
    /// Verified tokens by (verifier, Authorization value): shard threads serve the same
    /// clients' tokens again and again.
    static VERIFIED: std::cell::RefCell<std::collections::HashMap<(u64, Box<[u8]>), Claims>> =
        Default::default();
}

/// Looks the cache up by borrowed bytes (the map owns boxed copies).
trait CacheKey {
    fn parts(&self) -> (u64, &[u8]);
}

impl CacheKey for (u64, Box<[u8]>) {
    fn parts(&self) -> (u64, &[u8]) {
        (self.0, &self.1)
    }
}

impl CacheKey for (u64, &[u8]) {
    fn parts(&self) -> (u64, &[u8]) {
        (self.0, self.1)
    }
}

impl<'a> std::borrow::Borrow<dyn CacheKey + 'a> for (u64, Box<[u8]>) {
    fn borrow(&self) -> &(dyn CacheKey + 'a) {
        self
    }
}

impl PartialEq for dyn CacheKey + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn CacheKey + '_ {}

impl std::hash::Hash for dyn CacheKey + '_ {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.parts().hash(state)
    }
}

fn validation(alg: Algorithm, s: &JwtSettings) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = s.leeway_secs;
    v.validate_exp = true;
    v.validate_nbf = true;
    v.set_required_spec_claims(&["exp"]);
    match &s.issuer {
        Some(iss) => v.set_issuer(&[iss]),
        None => v.iss = None,
    }
    match &s.audience {
        Some(aud) => v.set_audience(&[aud]),
        None => {
            v.validate_aud = false;
            v.aud = None;
        }
    }
    v
}

fn claims(raw: RawClaims) -> Result<Claims, JwtError> {
    let names = match raw.action {
        None => Vec::new(),
        Some(OneOrMany::One(a)) => vec![a],
        Some(OneOrMany::Many(v)) => v,
    };
    let mut actions = Vec::new();
    for n in names {
        let a = Action::parse(&n).ok_or_else(|| {
            JwtError::Malformed(format!(
                "unknown action {:?} (READ, WRITE or DELETE)",
                n.chars().take(32).collect::<String>()
            ))
        })?;
        if !actions.contains(&a) {
            actions.push(a);
        }
    }
    Ok(Claims {
        actions,
        bucket: raw.bucket.unwrap_or_default(),
        prefix: raw.prefix.unwrap_or_default(),
        subject: raw.sub,
        expires_at: raw.exp,
    })
}

fn map_error(e: &jsonwebtoken::errors::Error) -> JwtError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidSignature => JwtError::BadSignature,
        K::ExpiredSignature => JwtError::Expired,
        K::ImmatureSignature => JwtError::NotYetValid,
        K::InvalidIssuer => JwtError::Issuer,
        K::InvalidAudience => JwtError::Audience,
        _ => JwtError::Malformed(describe(e)),
    }
}

/// An error's text, without anything of the token.
fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::MissingRequiredClaim(c) => format!("the {c} claim is required"),
        K::InvalidToken => "not a JWT (three base64url parts)".into(),
        K::Base64(_) => "bad base64url".into(),
        K::Json(_) => "bad JSON in the header or claims".into(),
        K::Utf8(_) => "not UTF-8".into(),
        K::InvalidAlgorithm | K::InvalidAlgorithmName | K::MissingAlgorithm => {
            "unsupported or missing algorithm".into()
        }
        _ => "invalid token".into(),
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    use super::*;

    /// A signing key made at test time, and the public key file a node would be given.
    pub(crate) struct TestKey {
        pub alg: Algorithm,
        pub private_pem: String,
        pub public_pem: String,
    }

    impl TestKey {
        pub fn es256() -> TestKey {
            let k = rcgen::KeyPair::generate().unwrap();
            TestKey {
                alg: Algorithm::ES256,
                private_pem: k.serialize_pem(),
                public_pem: k.public_key_pem(),
            }
        }

        pub fn rs256() -> TestKey {
            let k = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
            TestKey {
                alg: Algorithm::RS256,
                private_pem: k.serialize_pem(),
                public_pem: k.public_key_pem(),
            }
        }

        pub fn sign(&self, claims: &serde_json::Value, kid: Option<&str>) -> String {
            let key = match self.alg {
                Algorithm::ES256 => EncodingKey::from_ec_pem(self.private_pem.as_bytes()),
                _ => EncodingKey::from_rsa_pem(self.private_pem.as_bytes()),
            }
            .unwrap();
            let mut h = Header::new(self.alg);
            h.kid = kid.map(str::to_string);
            encode(&h, claims, &key).unwrap()
        }
    }

    fn now() -> i64 {
        jsonwebtoken::get_current_timestamp() as i64
    }

    fn settings() -> JwtSettings {
        JwtSettings {
            issuer: Some("https://issuer.test".into()),
            audience: Some("nearcache".into()),
            leeway_secs: 30,
        }
    }

    fn good() -> serde_json::Value {
        json!({
            "iss": "https://issuer.test", "aud": "nearcache", "exp": now() + 300,
            "action": "READ", "bucket": "photos", "prefix": "users/42/", "sub": "ann",
        })
    }

    fn bearer(t: &str) -> Vec<u8> {
        format!("Bearer {t}").into_bytes()
    }

    #[test]
    fn valid_tokens_grant_their_claims_only() {
        let k = TestKey::es256();
        let v = Verifier::from_bytes(k.public_pem.as_bytes(), &settings()).unwrap();
        let c = v.verify(Some(&bearer(&k.sign(&good(), None)))).unwrap();
        assert_eq!(c.actions, vec![Action::Read]);
        assert_eq!(c.subject.as_deref(), Some("ann"));
        assert_eq!(c.allows(Action::Read, "photos", "users/42/a.jpg"), Ok(()));
        for (action, bucket, key, why) in [
            (
                Action::Write,
                "photos",
                "users/42/a",
                "does not grant WRITE",
            ),
            (
                Action::Delete,
                "photos",
                "users/42/a",
                "does not grant DELETE",
            ),
            (Action::Read, "other", "users/42/a", "bucket \"photos\""),
            (
                Action::Read,
                "photos",
                "users/43/a",
                "keys under \"users/42/\"",
            ),
        ] {
            let e = c.allows(action, bucket, key).unwrap_err();
            assert!(matches!(e, JwtError::Forbidden(_)));
            assert!(e.to_string().contains(why), "{e}");
        }
        // A list of actions; empty bucket and prefix mean all; lower case works too.
        let mut all = good();
        all["action"] = json!(["read", "WRITE", "DELETE"]);
        all["bucket"] = json!("");
        all.as_object_mut().unwrap().remove("prefix");
        let c = v.verify(Some(&bearer(&k.sign(&all, None)))).unwrap();
        for a in [Action::Read, Action::Write, Action::Delete] {
            assert_eq!(c.allows(a, "any", "thing"), Ok(()));
        }
        // No action claim: a valid token that grants nothing.
        let mut none = good();
        none.as_object_mut().unwrap().remove("action");
        let c = v.verify(Some(&bearer(&k.sign(&none, None)))).unwrap();
        assert!(c.allows(Action::Read, "photos", "users/42/x").is_err());
    }

    #[test]
    fn expiry_skew_issuer_audience_and_signature_are_checked() {
        let k = TestKey::es256();
        let v = Verifier::from_bytes(k.public_pem.as_bytes(), &settings()).unwrap();
        let check = |claims: serde_json::Value| v.verify(Some(&bearer(&k.sign(&claims, None))));
        let with = |key: &str, value: serde_json::Value| {
            let mut c = good();
            c[key] = value;
            c
        };
        assert_eq!(
            check(with("exp", json!(now() - 120))),
            Err(JwtError::Expired)
        );
        // Within the 30 s leeway: a clock slightly behind the issuer's still accepts.
        assert!(check(with("exp", json!(now() - 10))).is_ok());
        assert_eq!(
            check(with("nbf", json!(now() + 120))),
            Err(JwtError::NotYetValid)
        );
        assert!(check(with("nbf", json!(now() + 10))).is_ok());
        assert_eq!(
            check(with("iss", json!("https://evil.test"))),
            Err(JwtError::Issuer)
        );
        assert_eq!(check(with("aud", json!("other"))), Err(JwtError::Audience));
        assert!(check(with("aud", json!(["other", "nearcache"]))).is_ok());
        let mut no_exp = good();
        no_exp.as_object_mut().unwrap().remove("exp");
        assert!(matches!(check(no_exp), Err(JwtError::Malformed(m)) if m.contains("exp")));
        assert!(matches!(
            check(with("action", json!("ADMIN"))),
            Err(JwtError::Malformed(m)) if m.contains("unknown action")
        ));
        // Signed by another key; not a JWT; no header; another scheme.
        let other = TestKey::es256();
        assert_eq!(
            v.verify(Some(&bearer(&other.sign(&good(), None)))),
            Err(JwtError::BadSignature)
        );
        assert!(matches!(
            v.verify(Some(b"Bearer abc")),
            Err(JwtError::Malformed(_))
        ));
        assert_eq!(v.verify(None), Err(JwtError::Missing));
        let token = k.sign(&good(), None);
        assert!(matches!(
            v.verify(Some(format!("Basic {token}").as_bytes())),
            Err(JwtError::Malformed(_))
        ));
        // A token re-signed with HS256 using the public key as the secret (algorithm
        // confusion) or with alg "none" is refused.
        let hs = encode(
            &Header::new(Algorithm::HS256),
            &good(),
            &EncodingKey::from_secret(k.public_pem.as_bytes()).unwrap(),
        )
        .unwrap();
        assert!(v.verify(Some(&bearer(&hs))).is_err());
        let parts: Vec<&str> = token.split('.').collect();
        let none_header = base64_url(br#"{"alg":"none","typ":"JWT"}"#);
        let unsigned = format!("{none_header}.{}.", parts[1]);
        assert!(v.verify(Some(&bearer(&unsigned))).is_err());
        // No refusal repeats the token.
        for e in [
            check(with("exp", json!(now() - 120))).unwrap_err(),
            v.verify(Some(&bearer(&hs))).unwrap_err(),
        ] {
            assert!(!e.to_string().contains(&token[..20]) && !e.to_string().contains(&hs[..20]));
        }
    }

    fn base64_url(b: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }

    #[test]
    fn rsa_keys_and_jwks_files() {
        let rsa = TestKey::rs256();
        let v = Verifier::from_bytes(rsa.public_pem.as_bytes(), &settings()).unwrap();
        assert!(v.verify(Some(&bearer(&rsa.sign(&good(), None)))).is_ok());
        // An ES256 token against the RSA key: refused.
        let ec = TestKey::es256();
        assert!(v.verify(Some(&bearer(&ec.sign(&good(), None)))).is_err());

        // A JWKS with both keys, picked by kid.
        let jwk_of = |k: &TestKey, kid: &str| {
            let dk = match k.alg {
                Algorithm::ES256 => EncodingKey::from_ec_pem(k.private_pem.as_bytes()),
                _ => EncodingKey::from_rsa_pem(k.private_pem.as_bytes()),
            }
            .unwrap();
            let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&dk, k.alg).unwrap();
            jwk.common.key_id = Some(kid.into());
            jwk
        };
        let set = jsonwebtoken::jwk::JwkSet {
            keys: vec![jwk_of(&rsa, "r1"), jwk_of(&ec, "e1")],
        };
        let text = serde_json::to_vec(&set).unwrap();
        let v = Verifier::from_bytes(&text, &settings()).unwrap();
        assert!(v
            .verify(Some(&bearer(&rsa.sign(&good(), Some("r1")))))
            .is_ok());
        assert!(v
            .verify(Some(&bearer(&ec.sign(&good(), Some("e1")))))
            .is_ok());
        // No kid: each key is tried.
        assert!(v.verify(Some(&bearer(&ec.sign(&good(), None)))).is_ok());
        assert!(Verifier::from_bytes(b"not a key", &settings()).is_err());
    }

    #[test]
    fn verified_tokens_are_cached_per_verifier_until_they_expire() {
        let k = TestKey::es256();
        let v = Verifier::from_bytes(k.public_pem.as_bytes(), &settings()).unwrap();
        let mut claims = good();
        claims["exp"] = json!(now() + 100);
        let t = bearer(&k.sign(&claims, None));
        let first = v.verify(Some(&t)).unwrap();
        let n = now() as u64;
        // Answered from the cache (same claims), until exp + the 30 s leeway.
        assert_eq!(v.verify_at(n + 120, Some(&t)), Ok(first));
        assert_eq!(v.verify_at(n + 200, Some(&t)), Err(JwtError::Expired));
        // Another verifier (another key) on the same thread does not see this one's
        // entries.
        let other = TestKey::es256();
        let w = Verifier::from_bytes(other.public_pem.as_bytes(), &settings()).unwrap();
        assert!(v.verify(Some(&t)).is_ok());
        assert_eq!(w.verify(Some(&t)), Err(JwtError::BadSignature));
    }

    #[test]
    fn without_issuer_or_audience_settings_they_are_not_checked() {
        let k = TestKey::es256();
        let v = Verifier::from_bytes(k.public_pem.as_bytes(), &JwtSettings::default()).unwrap();
        assert!(v
            .verify(Some(&bearer(&k.sign(
                &json!({"exp": now() + 60, "aud": "x", "iss": "y"}),
                None
            ))))
            .is_ok());
        // With no leeway, expired is expired.
        assert_eq!(
            v.verify(Some(&bearer(&k.sign(&json!({"exp": now() - 2}), None)))),
            Err(JwtError::Expired)
        );
    }
}

/// Fuzz target (bolero; `cargo test -p nearcache --lib jwt::fuzz`): arbitrary
/// Authorization values, and tokens with one byte changed, never panic and never verify.
#[cfg(test)]
mod fuzz {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::OnceLock;

    use bolero::check;

    use super::tests::TestKey;
    use super::*;

    #[test]
    fn arbitrary_and_altered_tokens_are_refused() {
        static KEY: OnceLock<(TestKey, String)> = OnceLock::new();
        let (key, token) = KEY.get_or_init(|| {
            let k = TestKey::es256();
            let exp = jsonwebtoken::get_current_timestamp() + 3600;
            let t = k.sign(&serde_json::json!({"exp": exp, "action": "READ"}), None);
            (k, t)
        });
        let v = Verifier::from_bytes(key.public_pem.as_bytes(), &JwtSettings::default()).unwrap();
        assert!(v.verify(Some(format!("Bearer {token}").as_bytes())).is_ok());
        let n = AtomicUsize::new(0);
        check!()
            .with_iterations(2000)
            .with_type::<(Vec<u8>, u16, u8)>()
            .for_each(|(raw, pos, xor)| {
                n.fetch_add(1, Ordering::Relaxed);
                let _ = v.verify(Some(raw));
                let mut t = format!("Bearer {token}").into_bytes();
                let i = 7 + *pos as usize % (t.len() - 7);
                t[i] ^= (*xor).max(1);
                // base64url has a few spare bits at the end of each part; a flip there
                // can decode to the same bytes, which is the same token.
                if let Ok(c) = v.verify(Some(&t)) {
                    assert_eq!(
                        c.actions,
                        vec![Action::Read],
                        "altered token at {i} accepted"
                    );
                }
            });
        eprintln!(
            "fuzz target jwt_tokens: {} cases",
            n.load(Ordering::Relaxed)
        );
    }
}
