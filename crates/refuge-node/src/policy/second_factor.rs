//! Second factors for administrators and operators (`[second_factor]`):
//! TOTP enrolments (RFC 6238, totp-rs), sign-in with back-off and
//! lockout, and the sessions a sign-in opens, which gRPC calls carry as
//! `x-refuge-session` metadata and the console as a cookie.
//!
//! An enrolment is a setting (`second_factor/ROLE/NAME`, JSON) whose
//! secret is sealed with XChaCha20-Poly1305 under the key in
//! `second_factor.key_file`: verifying a code needs the secret itself, so
//! it cannot be kept as a hash; sealed under a key outside the store, a
//! copy of the store does not reveal it. A code is accepted once (the
//! step it matched is kept). Sessions are held in memory only, by the
//! BLAKE3 of their token: a restart ends them.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use refuge_store::Store;
use refuge_tls::{ClientIdentity, Role};
use serde::{Deserialize, Serialize};
use tonic::Status;
use totp_rs::{Algorithm, Builder, Totp};
use zeroize::Zeroizing;

use super::audit::{AuditLog, Outcome, tenant_text};
use crate::config::SecondFactorConfig;
use crate::floor::clock::now_micros;
use crate::floor::store::store_status;

/// The metadata a signed-in call carries.
pub(crate) const SESSION_HEADER: &str = "x-refuge-session";
/// The metadata of a refusal for want of a second factor: `enrol` or
/// `sign_in` (what the client should do).
pub(crate) const STATE_HEADER: &str = "x-refuge-second-factor";
/// RPCs a caller needs no session for.
const OPEN_RPCS: [&str; 2] = ["WhoAmI", "SignIn"];
const PREFIX: &str = "second_factor/";
const SECRET_LEN: usize = 20;
const AAD: &[u8] = b"refuge second factor v1 ";
/// Longest wait between two attempts.
const MAX_BACKOFF_SECS: u64 = 60;

/// One identity's enrolment, as stored.
#[derive(Serialize, Deserialize, Clone)]
struct Enrolment {
    v: u8,
    enrolled_micros: i64,
    enrolled_by: String,
    /// Nonce and ciphertext of the secret, hex.
    sealed: String,
    /// The step of the last accepted code: it and older ones are refused.
    last_step: u64,
    failures: u32,
    not_before_micros: i64,
    locked_until_micros: i64,
    last_sign_in_micros: i64,
}

/// What a listing shows of an enrolment.
pub(crate) struct EntryView {
    pub(crate) role: String,
    pub(crate) name: String,
    pub(crate) enrolled_micros: i64,
    pub(crate) enrolled_by: String,
    pub(crate) failures: u32,
    pub(crate) locked_until_micros: i64,
    pub(crate) last_sign_in_micros: i64,
}

/// A session a sign-in opened.
pub(crate) struct Opened {
    pub(crate) token: String,
    pub(crate) idle_secs: u64,
    pub(crate) expires_micros: i64,
}

struct Session {
    identity: String,
    serial: String,
    created: Instant,
    last: Instant,
}

struct State {
    enrolled: HashMap<String, Enrolment>,
    sessions: HashMap<[u8; 32], Session>,
}

/// The second-factor policy of a node that requires one.
pub(crate) struct SecondFactor {
    cfg: SecondFactorConfig,
    roles: Vec<Role>,
    key: Zeroizing<[u8; 32]>,
    issuer: String,
    store: Arc<dyn Store>,
    audit: AuditLog,
    state: Mutex<State>,
    /// One change of an enrolment at a time (a sign-in's check and
    /// write, an enrolment): the store write happens under it, not under
    /// `state`, which every call's check takes.
    changes: Mutex<()>,
}

/// `ROLE/NAME`: how enrolments are keyed.
fn identity(role: Role, name: &str) -> String {
    format!("{role}/{name}")
}

/// Reads the sealing key, or makes one (mode 0600) if the file is missing.
fn sealing_key(path: &Path) -> anyhow::Result<Zeroizing<[u8; 32]>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => Zeroizing::new(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = Zeroizing::new([0u8; 32]);
            getrandom::getrandom(&mut *key).context("no randomness for the sealing key")?;
            let text = Zeroizing::new(hex::encode(*key));
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| {
                    format!("cannot create second_factor.key_file {}", path.display())
                })?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            tracing::info!(path = %path.display(), "created the second-factor sealing key");
            return Ok(key);
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot read second_factor.key_file {}", path.display()));
        }
    };
    let mut key = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(text.trim(), &mut *key).map_err(|_| {
        anyhow::anyhow!(
            "second_factor.key_file {} does not hold 64 hex digits (32 bytes)",
            path.display()
        )
    })?;
    Ok(key)
}

impl SecondFactor {
    /// The policy of `cfg` (`None` when not enabled), with every stored
    /// enrolment loaded and checked to open under the key file's key.
    pub(crate) fn open(
        cfg: &SecondFactorConfig,
        site: &str,
        store: Arc<dyn Store>,
        audit: AuditLog,
    ) -> anyhow::Result<Option<Arc<Self>>> {
        if !cfg.enabled {
            return Ok(None);
        }
        let path = cfg
            .key_file
            .as_deref()
            .context("second_factor.enabled needs second_factor.key_file")?;
        let key = sealing_key(path)?;
        let mut roles = Vec::new();
        for r in &cfg.roles {
            roles.push(
                r.parse::<Role>()
                    .map_err(|e| anyhow::anyhow!("second_factor.roles: {e}"))?,
            );
        }
        let sf = SecondFactor {
            cfg: cfg.clone(),
            roles,
            key,
            issuer: format!("refuge {site}"),
            store: store.clone(),
            audit,
            state: Mutex::new(State {
                enrolled: HashMap::new(),
                sessions: HashMap::new(),
            }),
            changes: Mutex::new(()),
        };
        let mut enrolled = HashMap::new();
        for (k, v) in store
            .list_settings(PREFIX)
            .context("reading the second-factor enrolments")?
        {
            let id = k[PREFIX.len()..].to_string();
            let e: Enrolment = serde_json::from_slice(&v)
                .with_context(|| format!("second-factor enrolment {id} is damaged"))?;
            sf.unseal(&id, &e).map_err(|_| {
                anyhow::anyhow!(
                    "second_factor.key_file {} does not open the enrolment of {id}: it is not the key it was sealed with (restore the key file, or remove the enrolments and enrol again)",
                    path.display()
                )
            })?;
            enrolled.insert(id, e);
        }
        sf.lock().enrolled = enrolled;
        Ok(Some(Arc::new(sf)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The idle time-out of sessions.
    pub(crate) fn idle_secs(&self) -> u64 {
        self.cfg.idle_secs
    }

    /// Whether `who` needs a second factor at all.
    pub(crate) fn needed(&self, who: &ClientIdentity) -> bool {
        self.roles.contains(&who.role) && !self.cfg.exempt.contains(&who.name)
    }

    fn seal(&self, id: &str, secret: &[u8]) -> String {
        let mut nonce = [0u8; 24];
        // A node without randomness cannot enrol; the caller hears it.
        let _ = getrandom::getrandom(&mut nonce);
        let aad = [AAD, id.as_bytes()].concat();
        let ct = XChaCha20Poly1305::new((&*self.key).into())
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: secret,
                    aad: &aad,
                },
            )
            .unwrap_or_default();
        hex::encode([nonce.as_slice(), &ct].concat())
    }

    fn unseal(&self, id: &str, e: &Enrolment) -> Result<Zeroizing<Vec<u8>>, ()> {
        let raw = hex::decode(&e.sealed).map_err(|_| ())?;
        if raw.len() < 24 {
            return Err(());
        }
        let aad = [AAD, id.as_bytes()].concat();
        XChaCha20Poly1305::new((&*self.key).into())
            .decrypt(
                XNonce::from_slice(&raw[..24]),
                Payload {
                    msg: &raw[24..],
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| ())
    }

    fn totp(&self, role: Role, name: &str, secret: &[u8]) -> Result<Totp, Status> {
        Builder::new()
            .with_algorithm(Algorithm::SHA1)
            .with_digits(6)
            .with_skew(1)
            .with_step_duration(30)
            .with_secret(secret)
            .with_account_name(format!("{name} ({role})").replace(':', "_"))
            .with_issuer(Some(self.issuer.replace(':', "_")))
            .build()
            .map_err(|e| Status::internal(format!("TOTP: {e}")))
    }

    fn persist(&self, id: &str, e: Option<&Enrolment>) -> Result<(), Status> {
        let v = e.map(|e| serde_json::to_vec(e).unwrap_or_default());
        self.store
            .put_setting(&format!("{PREFIX}{id}"), v.as_deref())
            .map_err(store_status)
    }

    /// What `who` must do before calls other than `WhoAmI` and `SignIn`:
    /// "" (nothing needed), `enrol`, `sign_in` or `signed_in`.
    pub(crate) fn state_of(&self, who: &ClientIdentity, token: Option<&str>) -> &'static str {
        if !self.needed(who) {
            ""
        } else if !self
            .lock()
            .enrolled
            .contains_key(&identity(who.role, &who.name))
        {
            "enrol"
        } else if token.is_some_and(|t| self.session(who, t, false).is_ok()) {
            "signed_in"
        } else {
            "sign_in"
        }
    }

    /// Whether `token` is a live session of `who`'s certificate; a call
    /// (`touch`) restarts its idle time.
    pub(crate) fn session(
        &self,
        who: &ClientIdentity,
        token: &str,
        touch: bool,
    ) -> Result<(), String> {
        let key = *blake3::hash(token.as_bytes()).as_bytes();
        let mut st = self.lock();
        let Some(s) = st.sessions.get_mut(&key) else {
            return Err("no such session (it ended, or the node restarted): sign in again".into());
        };
        if s.identity != identity(who.role, &who.name) || s.serial != who.serial {
            return Err("this session belongs to another certificate".into());
        }
        let idle = Duration::from_secs(self.cfg.idle_secs);
        if s.last.elapsed() > idle {
            st.sessions.remove(&key);
            return Err(format!(
                "the session ended after {} s without a call (second_factor.idle_secs): sign in again",
                self.cfg.idle_secs
            ));
        }
        if s.created.elapsed() > Duration::from_secs(self.cfg.session_secs) {
            st.sessions.remove(&key);
            return Err(format!(
                "the session ended {} s after its sign-in (second_factor.session_secs): sign in again",
                self.cfg.session_secs
            ));
        }
        if touch {
            s.last = Instant::now();
        }
        Ok(())
    }

    /// Admits `who`'s call of `rpc` with the session `token` it carries:
    /// UNAUTHENTICATED (audited) if it needs a second factor and has no
    /// live session. An admin enrolling an identity while no admin is
    /// enrolled yet (the node's first enrolment) is let through.
    pub(crate) fn check(
        &self,
        who: &ClientIdentity,
        token: Option<&str>,
        rpc: &str,
    ) -> Result<(), Status> {
        if !self.needed(who) || OPEN_RPCS.contains(&rpc) {
            return Ok(());
        }
        let enrolled = self
            .lock()
            .enrolled
            .contains_key(&identity(who.role, &who.name));
        if !enrolled {
            if rpc == "EnrollSecondFactor" && who.role == Role::Admin && !self.any_admin() {
                return Ok(());
            }
            return Err(self.refuse(
                who,
                "enrol",
                format!(
                    "{rpc}: this node requires a second factor for the {} role and {} has none enrolled: an enrolled admin runs `refuge admin second-factor enroll --role {} --name {}`",
                    who.role, who.name, who.role, who.name
                ),
            ));
        }
        let why = match token {
            None => {
                "no session: sign in with a TOTP code first (REFUGE_TOTP, or the prompt)".into()
            }
            Some(t) => match self.session(who, t, true) {
                Ok(()) => return Ok(()),
                Err(why) => why,
            },
        };
        Err(self.refuse(
            who,
            "sign_in",
            format!("{rpc}: second factor needed: {why}"),
        ))
    }

    fn refuse(&self, who: &ClientIdentity, state: &'static str, why: String) -> Status {
        self.audit.record(
            &who.subject(),
            &tenant_text(who),
            "auth_failed",
            Outcome::Refused,
            &why,
        );
        let mut s = Status::unauthenticated(why);
        s.metadata_mut().insert(
            STATE_HEADER,
            tonic::metadata::MetadataValue::from_static(state),
        );
        s
    }

    fn any_admin(&self) -> bool {
        self.lock().enrolled.keys().any(|k| k.starts_with("admin/"))
    }

    /// Checks `code` for `who` and opens a session (store writes: call on
    /// a blocking thread). Wrong codes back off and lock the identity
    /// after `max_failures`; a code is accepted once.
    pub(crate) fn sign_in(&self, who: &ClientIdentity, code: &str) -> Result<Opened, Status> {
        let subject = who.subject();
        let tenants = tenant_text(who);
        let audit = |event: &str, outcome: Outcome, detail: &str| {
            self.audit
                .record(&subject, &tenants, event, outcome, detail)
        };
        if !self.needed(who) {
            return Err(Status::failed_precondition(format!(
                "the {} role{} needs no second factor on this node",
                who.role,
                if self.roles.contains(&who.role) {
                    " (this name is exempt)"
                } else {
                    ""
                }
            )));
        }
        let id = identity(who.role, &who.name);
        let _one = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_micros();
        let Some(mut e) = self.lock().enrolled.get(&id).cloned() else {
            let why = format!(
                "{} has no second factor enrolled: an enrolled admin runs `refuge admin second-factor enroll --role {} --name {}`",
                who.name, who.role, who.name
            );
            audit("second_factor_failed", Outcome::Refused, &why);
            return Err(Status::unauthenticated(why));
        };
        if e.locked_until_micros > now {
            let why = format!(
                "{id} is locked after {} failed codes until {} ({} s more), or until an admin runs `refuge admin second-factor unlock`",
                e.failures,
                refuge_core::format_time_micros(e.locked_until_micros),
                (e.locked_until_micros - now) / 1_000_000 + 1
            );
            audit("second_factor_failed", Outcome::Refused, &why);
            return Err(Status::unauthenticated(why));
        }
        if e.not_before_micros > now {
            let why = format!(
                "too soon after a wrong code: try again in {} s (the code was not checked)",
                (e.not_before_micros - now) / 1_000_000 + 1
            );
            audit("second_factor_failed", Outcome::Refused, &why);
            return Err(Status::unauthenticated(why));
        }
        let secret = self
            .unseal(&id, &e)
            .map_err(|_| Status::internal(format!("the enrolment of {id} does not open")))?;
        let totp = self.totp(who.role, &who.name, &secret)?;
        let step = totp.check(code.trim(), (now / 1_000_000).max(0) as u64);
        match step {
            Some(step) if step > e.last_step => {
                e.last_step = step;
                e.failures = 0;
                e.not_before_micros = 0;
                e.locked_until_micros = 0;
                e.last_sign_in_micros = now;
                self.persist(&id, Some(&e))?;
                let opened = {
                    let mut st = self.lock();
                    st.enrolled.insert(id.clone(), e);
                    self.new_session(&mut st, id, &who.serial, now)?
                };
                audit(
                    "second_factor_ok",
                    Outcome::Ok,
                    &format!("session opened (idle {} s)", self.cfg.idle_secs),
                );
                Ok(opened)
            }
            Some(_) => {
                let why =
                    "this code was already used (a code is accepted once): wait for the next one";
                audit("second_factor_failed", Outcome::Refused, why);
                Err(Status::unauthenticated(why))
            }
            None => {
                e.failures += 1;
                let wait = self
                    .cfg
                    .backoff_secs
                    .saturating_mul(1 << (e.failures - 1).min(16))
                    .min(MAX_BACKOFF_SECS);
                e.not_before_micros = now + wait as i64 * 1_000_000;
                let locked = e.failures >= self.cfg.max_failures;
                if locked {
                    e.locked_until_micros = now + self.cfg.lockout_secs as i64 * 1_000_000;
                }
                self.persist(&id, Some(&e))?;
                let failures = e.failures;
                {
                    let mut st = self.lock();
                    st.enrolled.insert(id.clone(), e);
                    // A locked identity's sessions end too.
                    st.sessions.retain(|_, s| !(locked && s.identity == id));
                }
                let why = format!("wrong code ({failures} in a row)");
                audit("second_factor_failed", Outcome::Refused, &why);
                if locked {
                    let why = format!(
                        "{id} locked for {} s after {failures} wrong codes",
                        self.cfg.lockout_secs
                    );
                    audit("second_factor_locked", Outcome::Refused, &why);
                    return Err(Status::unauthenticated(why));
                }
                Err(Status::unauthenticated(format!(
                    "{why}: the next code is checked after {wait} s; {} more wrong codes lock {id} for {} s",
                    self.cfg.max_failures - failures,
                    self.cfg.lockout_secs
                )))
            }
        }
    }

    /// A new session of identity `id` for the certificate `serial`
    /// (sessions past their time are dropped first).
    fn new_session(
        &self,
        st: &mut State,
        id: String,
        serial: &str,
        now: i64,
    ) -> Result<Opened, Status> {
        let mut raw = Zeroizing::new([0u8; 32]);
        getrandom::getrandom(&mut *raw)
            .map_err(|_| Status::internal("no randomness for a session token"))?;
        let token = hex::encode(*raw);
        let (idle, max) = (
            Duration::from_secs(self.cfg.idle_secs),
            Duration::from_secs(self.cfg.session_secs),
        );
        st.sessions
            .retain(|_, s| s.last.elapsed() <= idle && s.created.elapsed() <= max);
        let t = Instant::now();
        st.sessions.insert(
            *blake3::hash(token.as_bytes()).as_bytes(),
            Session {
                identity: id,
                serial: serial.to_string(),
                created: t,
                last: t,
            },
        );
        Ok(Opened {
            token,
            idle_secs: self.cfg.idle_secs,
            expires_micros: now + self.cfg.session_secs as i64 * 1_000_000,
        })
    }

    /// A console session for `who`, whose role needs no second factor
    /// (auditors): the certificate alone opens it, and it ends when idle
    /// like any other (audited `session_opened`).
    pub(crate) fn open_session(&self, who: &ClientIdentity) -> Result<Opened, Status> {
        if self.needed(who) {
            return Err(Status::unauthenticated(
                "this identity signs in with a TOTP code",
            ));
        }
        let opened = {
            let mut st = self.lock();
            self.new_session(
                &mut st,
                identity(who.role, &who.name),
                &who.serial,
                now_micros(),
            )?
        };
        self.audit.record(
            &who.subject(),
            &tenant_text(who),
            "session_opened",
            Outcome::Ok,
            &format!(
                "console session with the certificate only (idle {} s)",
                self.cfg.idle_secs
            ),
        );
        Ok(opened)
    }

    /// Enrols (or enrols again) `role`/`name` with a new secret: its
    /// base32 text and otpauth URI, shown once. Ends the identity's
    /// sessions.
    pub(crate) fn enroll(
        &self,
        role: Role,
        name: &str,
        by: &str,
    ) -> Result<(String, String, EntryView), Status> {
        if !self.roles.contains(&role) {
            return Err(Status::invalid_argument(format!(
                "the {role} role needs no second factor on this node (second_factor.roles)"
            )));
        }
        if name.is_empty() || name.contains('/') {
            return Err(Status::invalid_argument(
                "name: the certificate's CN, not empty and without '/'",
            ));
        }
        let id = identity(role, name);
        let _one = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
        getrandom::getrandom(&mut *secret)
            .map_err(|_| Status::internal("no randomness for a secret"))?;
        let totp = self.totp(role, name, &*secret)?;
        let e = Enrolment {
            v: 1,
            enrolled_micros: now_micros(),
            enrolled_by: by.to_string(),
            sealed: self.seal(&id, &*secret),
            last_step: 0,
            failures: 0,
            not_before_micros: 0,
            locked_until_micros: 0,
            last_sign_in_micros: 0,
        };
        self.persist(&id, Some(&e))?;
        let mut st = self.lock();
        st.sessions.retain(|_, s| s.identity != id);
        st.enrolled.insert(id.clone(), e.clone());
        drop(st);
        let uri = totp
            .to_url()
            .map_err(|e| Status::internal(format!("TOTP: {e}")))?;
        Ok((totp.secret().to_base32(), uri, view(&id, &e)))
    }

    /// Removes `role`/`name`'s enrolment and ends its sessions.
    pub(crate) fn remove(&self, role: Role, name: &str) -> Result<EntryView, Status> {
        let id = identity(role, name);
        let _one = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        let e = self.get(&id)?;
        self.persist(&id, None)?;
        let mut st = self.lock();
        st.enrolled.remove(&id);
        st.sessions.retain(|_, s| s.identity != id);
        Ok(view(&id, &e))
    }

    /// Clears `role`/`name`'s failures and lock.
    pub(crate) fn unlock(&self, role: Role, name: &str) -> Result<EntryView, Status> {
        let id = identity(role, name);
        let _one = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        let mut e = self.get(&id)?;
        e.failures = 0;
        e.not_before_micros = 0;
        e.locked_until_micros = 0;
        self.persist(&id, Some(&e))?;
        self.lock().enrolled.insert(id.clone(), e.clone());
        Ok(view(&id, &e))
    }

    fn get(&self, id: &str) -> Result<Enrolment, Status> {
        self.lock()
            .enrolled
            .get(id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("{id} has no second factor enrolled")))
    }

    /// Every enrolment, by identity; and the roles that need one.
    pub(crate) fn list(&self) -> (Vec<EntryView>, Vec<String>) {
        let st = self.lock();
        let mut v: Vec<EntryView> = st.enrolled.iter().map(|(id, e)| view(id, e)).collect();
        v.sort_by(|a, b| (&a.role, &a.name).cmp(&(&b.role, &b.name)));
        (v, self.roles.iter().map(|r| r.to_string()).collect())
    }
}

fn view(id: &str, e: &Enrolment) -> EntryView {
    let (role, name) = id.split_once('/').unwrap_or(("", id));
    EntryView {
        role: role.into(),
        name: name.into(),
        enrolled_micros: e.enrolled_micros,
        enrolled_by: e.enrolled_by.clone(),
        failures: e.failures,
        locked_until_micros: e.locked_until_micros,
        last_sign_in_micros: e.last_sign_in_micros,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use refuge_store::MemStore;
    use refuge_tls::TenantScope;

    fn who(role: Role, name: &str, serial: &str) -> ClientIdentity {
        ClientIdentity {
            role,
            name: name.into(),
            tenants: TenantScope::All,
            serial: serial.into(),
        }
    }

    fn code(secret: &str, steps: i64) -> String {
        let t = Builder::new()
            .with_algorithm(Algorithm::SHA1)
            .with_digits(6)
            .with_skew(1)
            .with_step_duration(30)
            .with_secret(totp_rs::Secret::try_from_base32(secret).unwrap())
            .build()
            .unwrap();
        let now = now_micros() / 1_000_000 + steps * 30;
        t.generate(now as u64).to_string()
    }

    struct Setup {
        _rt: tokio::runtime::Runtime,
        dir: tempfile::TempDir,
        store: Arc<dyn Store>,
        audit: AuditLog,
    }

    fn setup() -> Setup {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let audit = {
            let _g = rt.enter();
            AuditLog::start(store.clone(), crate::floor::metrics::Metrics::new())
        };
        Setup {
            _rt: rt,
            dir: tempfile::tempdir().unwrap(),
            store,
            audit,
        }
    }

    fn open(
        s: &Setup,
        key: &str,
        edit: impl FnOnce(&mut SecondFactorConfig),
    ) -> anyhow::Result<Arc<SecondFactor>> {
        let mut cfg = SecondFactorConfig {
            enabled: true,
            key_file: Some(s.dir.path().join(key)),
            ..SecondFactorConfig::default()
        };
        edit(&mut cfg);
        SecondFactor::open(&cfg, "prov", s.store.clone(), s.audit.clone()).map(|o| o.unwrap())
    }

    #[test]
    fn the_first_enrolment_is_an_admins_and_then_the_door_shuts() {
        let s = setup();
        let sf = open(&s, "k", |_| {}).unwrap();
        let (a, b) = (who(Role::Admin, "a", "1"), who(Role::Admin, "b", "2"));
        sf.check(&a, None, "EnrollSecondFactor").unwrap();
        let e = sf.check(&a, None, "Prune").unwrap_err();
        assert!(e.message().contains("has none enrolled"), "{}", e.message());
        sf.enroll(Role::Admin, "a", "admin:a").unwrap();
        let e = sf.check(&b, None, "EnrollSecondFactor").unwrap_err();
        assert!(
            e.message().contains("b has none enrolled"),
            "{}",
            e.message()
        );
        // WhoAmI and SignIn need no session; agents, auditors and exempt
        // names need none at all.
        sf.check(&a, None, "WhoAmI").unwrap();
        sf.check(&who(Role::Agent, "h", "3"), None, "PutChunks")
            .unwrap();
        sf.check(&who(Role::Auditor, "x", "4"), None, "ReadAudit")
            .unwrap();
        let sf = open(&s, "k", |c| c.exempt = vec!["b".into()]).unwrap();
        sf.check(&b, None, "Prune").unwrap();
        assert!(sf.enroll(Role::Auditor, "x", "admin:a").is_err());
    }

    #[test]
    fn sessions_end_at_their_absolute_limit_and_belong_to_one_certificate() {
        let s = setup();
        let sf = open(&s, "k", |c| c.session_secs = 1).unwrap();
        let a = who(Role::Operator, "ops", "10");
        let (secret, uri, _) = sf.enroll(Role::Operator, "ops", "admin:root").unwrap();
        assert!(uri.contains("issuer=refuge%20prov"), "{uri}");
        let opened = sf.sign_in(&a, &code(&secret, 0)).unwrap();
        sf.check(&a, Some(&opened.token), "ListSnapshots").unwrap();
        assert_eq!(sf.state_of(&a, Some(&opened.token)), "signed_in");
        // The same name with another serial (a new certificate) is another
        // certificate.
        let other = who(Role::Operator, "ops", "11");
        let e = sf.session(&other, &opened.token, true).unwrap_err();
        assert!(e.contains("another certificate"), "{e}");
        std::thread::sleep(Duration::from_millis(1100));
        let e = sf.session(&a, &opened.token, true).unwrap_err();
        assert!(e.contains("after its sign-in"), "{e}");
        assert_eq!(sf.state_of(&a, Some(&opened.token)), "sign_in");
    }

    #[test]
    fn back_off_doubles_and_the_enrolments_open_only_with_their_key() {
        let s = setup();
        let sf = open(&s, "k", |c| c.backoff_secs = 1).unwrap();
        let a = who(Role::Admin, "root", "1");
        let (secret, _, _) = sf.enroll(Role::Admin, "root", "admin:root").unwrap();
        let wrong = if code(&secret, 0) == "000000" {
            "111111"
        } else {
            "000000"
        };
        let e = sf.sign_in(&a, wrong).err().unwrap();
        assert!(e.message().contains("checked after 1 s"), "{}", e.message());
        std::thread::sleep(Duration::from_millis(1100));
        let e = sf.sign_in(&a, wrong).err().unwrap();
        assert!(e.message().contains("checked after 2 s"), "{}", e.message());
        // Reopened with the same key file: the enrolment and its failures
        // are still there.
        let again = open(&s, "k", |_| {}).unwrap();
        assert_eq!(again.list().0[0].failures, 2);
        // Another key does not open it: the node does not start.
        std::fs::write(s.dir.path().join("other"), "22".repeat(32)).unwrap();
        let e = open(&s, "other", |_| {}).err().unwrap().to_string();
        assert!(
            e.contains("does not open the enrolment of admin/root"),
            "{e}"
        );
        // A damaged key file is named too.
        std::fs::write(s.dir.path().join("bad"), "not hex").unwrap();
        let e = open(&s, "bad", |_| {}).err().unwrap().to_string();
        assert!(e.contains("does not hold 64 hex digits"), "{e}");
    }
}
