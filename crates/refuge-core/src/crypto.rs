//! Client-side encryption primitives: a tenant's key, keyed chunk ids and
//! sealed chunk bodies.
//!
//! A tenant key is 32 random bytes held by the tenant's agents and
//! operators, never by the node. Sub-keys are derived from it with
//! BLAKE3's key derivation, one per purpose:
//!
//! * chunk ids are `BLAKE3-keyed(id key, plaintext)`, so the node and other
//!   tenants learn nothing from an id (not even whether two tenants hold
//!   the same data), while deduplication within the tenant still works;
//! * a chunk body (already compressed) is sealed with XChaCha20-Poly1305
//!   under the encryption key. The nonce is derived from the chunk id
//!   (`BLAKE3-keyed(nonce key, id)`, 24 bytes), so the same plaintext
//!   always gives the same sealed bytes: equal ids mean equal content,
//!   which the id already says, and nothing more. The id and the
//!   uncompressed length are authenticated as associated data, so a sealed
//!   body cannot be moved to another id.
//!
//! A key of the national-standard suite (`suite sm`, [`Suite::Sm`]) does
//! the same with SM algorithms (`sm.rs`): sub-keys are HMAC-SM3 of the
//! master key over each purpose's context, chunk ids are HMAC-SM3 with the
//! id key, bodies and manifest entries are sealed with SM4-GCM under a
//! 96-bit nonce derived the same way (HMAC-SM3 of the id). A nonce repeats
//! only for the same chunk (the same content, so the same sealed bytes)
//! or on a 96-bit collision of HMAC outputs: with n chunks under one key
//! the chance is about n²/2⁹⁷, 2⁻³³ at four billion chunks.
//!
//! The algorithm ids are in [`crate::format`]: `CIPHER_XCHACHA20_POLY1305`
//! and `HASH_BLAKE3_KEYED`, `CIPHER_SM4_GCM` and `HASH_SM3_KEYED`.
//!
//! The agent uses these with `[encryption] key_file`; the node never holds
//! a key (docs/security.md, "Client-side encryption").

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

pub use crate::format::SEAL_OVERHEAD;
use crate::format::{
    HASH_BLAKE3_KEYED, HASH_SM3_KEYED, KEY_CONTEXT_ENCRYPT, KEY_CONTEXT_ENTRY,
    KEY_CONTEXT_FINGERPRINT, KEY_CONTEXT_ID, KEY_CONTEXT_NONCE, SUITE_SM, SUITE_STANDARD,
    TENANT_KEY_MAGIC,
};
use crate::{ChunkId, Cipher, TenantId, sm};
use zeroize::ZeroizeOnDrop;

/// The algorithms a tenant key uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Suite {
    /// BLAKE3 (keyed ids, key derivation) and XChaCha20-Poly1305.
    #[default]
    Standard,
    /// The national-standard suite: HMAC-SM3 (keyed ids, key derivation)
    /// and SM4-GCM.
    Sm,
}

impl Suite {
    /// The name in key files and on the command line (`standard`, `sm`).
    pub fn as_str(self) -> &'static str {
        match self {
            Suite::Standard => SUITE_STANDARD,
            Suite::Sm => SUITE_SM,
        }
    }

    /// From its name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            SUITE_STANDARD => Some(Suite::Standard),
            SUITE_SM => Some(Suite::Sm),
            _ => None,
        }
    }

    /// What the suite's algorithms are, in words.
    pub fn describe(self) -> &'static str {
        match self {
            Suite::Standard => "BLAKE3 keyed ids, XChaCha20-Poly1305",
            Suite::Sm => "HMAC-SM3 keyed ids (GB/T 32905), SM4-GCM (GB/T 32907)",
        }
    }

    /// The cipher id its sealed chunks carry.
    pub fn cipher(self) -> Cipher {
        match self {
            Suite::Standard => Cipher::XChaCha20Poly1305,
            Suite::Sm => Cipher::Sm4Gcm,
        }
    }

    /// The hash id of its keyed chunk ids (an encrypted manifest's header).
    pub fn hash_id(self) -> u8 {
        match self {
            Suite::Standard => HASH_BLAKE3_KEYED,
            Suite::Sm => HASH_SM3_KEYED,
        }
    }
}

/// Why a key or a sealed chunk could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// The key file does not parse.
    #[error("not a refuge tenant key file: {0}")]
    BadKeyFile(String),
    /// The system's random source failed.
    #[error("cannot get random bytes for a new key: {0}")]
    Random(String),
    /// A sealed chunk failed authentication: wrong key, or damaged bytes.
    #[error("chunk {0} cannot be decrypted: wrong tenant key, or the stored bytes were altered")]
    Open(ChunkId),
}

/// A tenant's encryption key and the sub-keys derived from it. Dropping
/// it wipes the key bytes (`zeroize`; the previous keys of its ring with
/// it).
#[derive(ZeroizeOnDrop)]
pub struct TenantKey {
    #[zeroize(skip)]
    tenant: TenantId,
    #[zeroize(skip)]
    created: String,
    #[zeroize(skip)]
    suite: Suite,
    master: [u8; 32],
    id_key: [u8; 32],
    enc_key: [u8; 32],
    nonce_key: [u8; 32],
    entry_key: [u8; 32],
    /// Keys this one replaced (newest first): they still open what they
    /// sealed, and are never used to seal. Each wipes itself.
    #[zeroize(skip)]
    previous: Vec<TenantKey>,
}

impl std::fmt::Debug for TenantKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantKey")
            .field("tenant", &self.tenant)
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

/// The id of a data chunk: keyed with the tenant key when there is one
/// (an encrypted tenant), plain BLAKE3 otherwise.
pub fn chunk_id_with(key: Option<&TenantKey>, data: &[u8]) -> ChunkId {
    match key {
        Some(k) => k.chunk_id(data),
        None => ChunkId::of(data),
    }
}

/// Below this, a chunk is hashed on one thread: splitting costs more
/// than it saves.
const PARALLEL_HASH_MIN: usize = 256 << 10;

/// The same id as [`chunk_id_with`], with a large chunk's BLAKE3 tree
/// hashed on every core (rayon's pool): the agent's ids (the walker hashes
/// while upload workers compress, and in a block delta hashing the
/// unchanged chunks is the only work left). The node keeps the
/// single-threaded [`chunk_id_with`]: its tasks already fill the cores.
pub fn chunk_id_parallel(key: Option<&TenantKey>, data: &[u8]) -> ChunkId {
    // SM3 has no tree mode to spread over cores.
    if data.len() < PARALLEL_HASH_MIN || key.is_some_and(|k| k.suite == Suite::Sm) {
        return chunk_id_with(key, data);
    }
    let mut h = match key {
        Some(k) => blake3::Hasher::new_keyed(&k.id_key),
        None => blake3::Hasher::new(),
    };
    h.update_rayon(data);
    ChunkId(*h.finalize().as_bytes())
}

/// The ids of several chunks (the same as [`chunk_id_with`] on each), the
/// chunks spread over every core (rayon's pool): in a block delta the
/// parent's small chunks (a database's 64 KiB) are checked many at a time
/// instead of one by one on the walker.
pub fn chunk_ids_parallel(key: Option<&TenantKey>, chunks: &[&[u8]]) -> Vec<ChunkId> {
    fn go(key: Option<&TenantKey>, chunks: &[&[u8]], out: &mut [ChunkId]) {
        let bytes: usize = chunks.iter().map(|c| c.len()).sum();
        if chunks.len() == 1 {
            out[0] = chunk_id_parallel(key, chunks[0]);
        } else if bytes < PARALLEL_HASH_MIN {
            for (c, o) in chunks.iter().zip(out.iter_mut()) {
                *o = chunk_id_with(key, c);
            }
        } else {
            let mid = chunks.len() / 2;
            let (a, b) = chunks.split_at(mid);
            let (oa, ob) = out.split_at_mut(mid);
            rayon_core::join(|| go(key, a, oa), || go(key, b, ob));
        }
    }
    let mut out = vec![ChunkId([0; 32]); chunks.len()];
    if !chunks.is_empty() {
        go(key, chunks, &mut out);
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A 32-byte key from 64 hex digits.
fn master_of(hexkey: &str) -> Result<[u8; 32], String> {
    if hexkey.len() != 64 || !hexkey.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("a key is not 64 hex digits".into());
    }
    let mut m = [0u8; 32];
    for (i, b) in m.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hexkey[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(m)
}

/// A sub-key: the suite's key derivation of `master` for `context`.
fn derive(suite: Suite, context: &str, master: &[u8; 32]) -> [u8; 32] {
    match suite {
        Suite::Standard => blake3::derive_key(context, master),
        Suite::Sm => sm::hmac_sm3(master, &[context.as_bytes()]),
    }
}

impl TenantKey {
    fn from_master(tenant: TenantId, created: String, suite: Suite, master: [u8; 32]) -> Self {
        TenantKey {
            id_key: derive(suite, KEY_CONTEXT_ID, &master),
            enc_key: derive(suite, KEY_CONTEXT_ENCRYPT, &master),
            nonce_key: derive(suite, KEY_CONTEXT_NONCE, &master),
            entry_key: derive(suite, KEY_CONTEXT_ENTRY, &master),
            tenant,
            created,
            suite,
            master,
            previous: Vec::new(),
        }
    }

    /// The algorithms of this key (not of the previous ones in its ring).
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// This key and the ones it replaced, newest first.
    fn ring(&self) -> impl Iterator<Item = &TenantKey> {
        std::iter::once(self).chain(self.previous.iter())
    }

    /// A new random key that replaces this one: new data is sealed and
    /// named with it; this key and its predecessors stay in the ring to
    /// read what they sealed. The first backup after a rotation uploads
    /// everything again (ids change with the key).
    pub fn rotate(&self, created: String) -> Result<Self, CryptoError> {
        self.rotate_to(created, self.suite)
    }

    /// Like [`Self::rotate`], the new key of `suite` (moving a tenant to
    /// the national-standard suite or back; the old keys still read).
    pub fn rotate_to(&self, created: String, suite: Suite) -> Result<Self, CryptoError> {
        let mut k = Self::generate_with(self.tenant.clone(), created, suite)?;
        k.previous = self
            .ring()
            .map(|o| Self::from_master(o.tenant.clone(), o.created.clone(), o.suite, o.master))
            .collect();
        Ok(k)
    }

    /// Fingerprints of the keys this one replaced, newest first.
    pub fn previous_fingerprints(&self) -> Vec<String> {
        self.previous.iter().map(|k| k.fingerprint()).collect()
    }

    /// A new random key for `tenant`, created at `created` (RFC 3339).
    pub fn generate(tenant: TenantId, created: String) -> Result<Self, CryptoError> {
        Self::generate_with(tenant, created, Suite::Standard)
    }

    /// A new random key of `suite` for `tenant`.
    pub fn generate_with(
        tenant: TenantId,
        created: String,
        suite: Suite,
    ) -> Result<Self, CryptoError> {
        let mut master = [0u8; 32];
        getrandom::getrandom(&mut master).map_err(|e| CryptoError::Random(e.to_string()))?;
        Ok(Self::from_master(tenant, created, suite, master))
    }

    /// The tenant this key belongs to.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// When the key was created (RFC 3339, as written in the file).
    pub fn created(&self) -> &str {
        &self.created
    }

    /// 16 hex digits that name the key without revealing it (the same
    /// key always has the same fingerprint).
    pub fn fingerprint(&self) -> String {
        hex(&derive(self.suite, KEY_CONTEXT_FINGERPRINT, &self.master)[..8])
    }

    /// The key file's text. Whoever has it can read the tenant's backups.
    pub fn to_text(&self) -> String {
        format!(
            "# refuge tenant key. Whoever holds this file can read the backups of tenant {t};\n\
             # without it (or a copy), nobody can, not even the operators of the node.\n\
             # Keep a copy offline, away from the hosts and the node.\n\
             {TENANT_KEY_MAGIC}\n\
             tenant {t}\n\
             created {c}\n{s}\
             key {k}\n\
             fingerprint {f}\n{p}",
            t = self.tenant,
            c = self.created,
            s = match self.suite {
                Suite::Standard => String::new(),
                Suite::Sm => format!("suite {SUITE_SM}\n"),
            },
            k = hex(&self.master),
            f = self.fingerprint(),
            p = self
                .previous
                .iter()
                .map(|o| {
                    let tag = match o.suite {
                        Suite::Standard => "previous",
                        Suite::Sm => "previous-sm",
                    };
                    format!("{tag} {} {}\n", hex(&o.master), o.created)
                })
                .collect::<String>()
        )
    }

    /// Parses a key file, checking its fingerprint line.
    pub fn parse(text: &str) -> Result<Self, CryptoError> {
        let bad = |m: &str| CryptoError::BadKeyFile(m.to_string());
        let mut lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        if lines.next() != Some(TENANT_KEY_MAGIC) {
            return Err(bad(&format!("the first line is not {TENANT_KEY_MAGIC:?}")));
        }
        let (mut tenant, mut created, mut key, mut fp) = (None, None, None, None);
        let mut suite = None;
        let mut previous: Vec<([u8; 32], String, Suite)> = Vec::new();
        for l in lines {
            let (k, v) = l
                .split_once(' ')
                .ok_or_else(|| bad(&format!("line {l:?} is not `name value`")))?;
            if k == "previous" || k == "previous-sm" {
                let (hexkey, when) = v.trim().split_once(' ').unwrap_or((v.trim(), ""));
                let s = if k == "previous" {
                    Suite::Standard
                } else {
                    Suite::Sm
                };
                previous.push((master_of(hexkey).map_err(|m| bad(&m))?, when.to_string(), s));
                continue;
            }
            let slot = match k {
                "tenant" => &mut tenant,
                "created" => &mut created,
                "suite" => &mut suite,
                "key" => &mut key,
                "fingerprint" => &mut fp,
                other => return Err(bad(&format!("unknown line {other:?}"))),
            };
            if slot.replace(v.trim().to_string()).is_some() {
                return Err(bad(&format!("{k} appears twice")));
            }
        }
        let tenant = TenantId::new(tenant.ok_or_else(|| bad("no tenant line"))?)
            .map_err(|e| bad(&e.to_string()))?;
        let key = key.ok_or_else(|| bad("no key line"))?;
        let master = master_of(&key).map_err(|m| bad(&m))?;
        let suite = match suite {
            None => Suite::Standard,
            Some(s) => Suite::parse(&s).ok_or_else(|| {
                bad(&format!(
                    "unknown suite {s:?} (this build knows {SUITE_STANDARD} and {SUITE_SM})"
                ))
            })?,
        };
        let mut k = Self::from_master(tenant.clone(), created.unwrap_or_default(), suite, master);
        k.previous = previous
            .into_iter()
            .map(|(m, when, s)| Self::from_master(tenant.clone(), when, s, m))
            .collect();
        if let Some(fp) = fp
            && fp != k.fingerprint()
        {
            return Err(bad(
                "the fingerprint does not match the key: the file was damaged or edited",
            ));
        }
        Ok(k)
    }

    /// The id of a chunk of this tenant: BLAKE3 keyed with the id key
    /// (HMAC-SM3 for the `sm` suite).
    pub fn chunk_id(&self, plaintext: &[u8]) -> ChunkId {
        match self.suite {
            Suite::Standard => ChunkId(*blake3::keyed_hash(&self.id_key, plaintext).as_bytes()),
            Suite::Sm => ChunkId(sm::hmac_sm3(&self.id_key, &[plaintext])),
        }
    }

    /// 32 bytes of the suite's keyed hash of `parts` under the nonce key;
    /// a nonce is its first 24 (XChaCha20) or 12 (SM4-GCM) bytes.
    fn nonce_bytes(&self, parts: &[&[u8]]) -> [u8; 32] {
        match self.suite {
            Suite::Standard => {
                let mut h = blake3::Hasher::new_keyed(&self.nonce_key);
                for p in parts {
                    h.update(p);
                }
                *h.finalize().as_bytes()
            }
            Suite::Sm => sm::hmac_sm3(&self.nonce_key, parts),
        }
    }

    fn nonce(&self, id: &ChunkId) -> XNonce {
        *XNonce::from_slice(&self.nonce_bytes(&[&id.0])[..24])
    }

    fn sm_nonce(&self, parts: &[&[u8]]) -> [u8; sm::NONCE_LEN] {
        let mut n = [0u8; sm::NONCE_LEN];
        n.copy_from_slice(&self.nonce_bytes(parts)[..sm::NONCE_LEN]);
        n
    }

    /// The cipher id this key's sealed chunks carry.
    pub fn cipher(&self) -> Cipher {
        self.suite.cipher()
    }

    fn aad(id: &ChunkId, raw_len: u32) -> [u8; 36] {
        let mut a = [0u8; 36];
        a[..32].copy_from_slice(&id.0);
        a[32..].copy_from_slice(&raw_len.to_le_bytes());
        a
    }

    /// Seals a chunk body (compressed bytes) for chunk `id` of `raw_len`
    /// uncompressed bytes; the result is [`SEAL_OVERHEAD`] bytes longer.
    pub fn seal(&self, id: &ChunkId, raw_len: u32, body: &[u8]) -> Vec<u8> {
        let aad = Self::aad(id, raw_len);
        if self.suite == Suite::Sm {
            return sm::seal(&self.enc_key, &self.sm_nonce(&[&id.0]), &aad, body);
        }
        let cipher = XChaCha20Poly1305::new((&self.enc_key).into());
        cipher
            .encrypt(
                &self.nonce(id),
                Payload {
                    msg: body,
                    aad: &aad,
                },
            )
            // Encryption fails only for messages beyond 256 GiB.
            .unwrap_or_default()
    }

    /// Opens a sealed body with this key or, failing that, a previous one:
    /// the compressed bytes, or an error if no key of the ring opens it
    /// (wrong key, or the bytes, id or length were altered).
    pub fn open(&self, id: &ChunkId, raw_len: u32, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.ring()
            .find_map(|k| k.open_one(id, raw_len, sealed).ok())
            .ok_or(CryptoError::Open(*id))
    }

    fn open_one(&self, id: &ChunkId, raw_len: u32, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let aad = Self::aad(id, raw_len);
        if self.suite == Suite::Sm {
            return sm::open(&self.enc_key, &self.sm_nonce(&[&id.0]), &aad, sealed)
                .ok_or(CryptoError::Open(*id));
        }
        let cipher = XChaCha20Poly1305::new((&self.enc_key).into());
        cipher
            .decrypt(
                &self.nonce(id),
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| CryptoError::Open(*id))
    }
}

impl TenantKey {
    /// Seals an encoded manifest entry: a 24-byte nonce (12 for the `sm`
    /// suite; derived from the entry, so an unchanged entry seals to the
    /// same bytes and unchanged manifests still deduplicate) followed by
    /// the ciphertext and tag. `clear` (the entry's kind and size, which
    /// stay readable) is authenticated with it.
    pub fn seal_entry(&self, clear: &[u8], entry: &[u8]) -> Vec<u8> {
        if self.suite == Suite::Sm {
            let nonce = self.sm_nonce(&[b"entry", clear, entry]);
            let mut out = nonce.to_vec();
            out.extend_from_slice(&sm::seal(&self.entry_key, &nonce, clear, entry));
            return out;
        }
        let nonce = *XNonce::from_slice(&self.nonce_bytes(&[b"entry", clear, entry])[..24]);
        let cipher = XChaCha20Poly1305::new((&self.entry_key).into());
        let ct = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: entry,
                    aad: clear,
                },
            )
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        out
    }

    /// Opens what [`Self::seal_entry`] made (with this key or a previous
    /// one), or `None` (wrong key, or the record was altered).
    pub fn open_entry(&self, clear: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        self.ring().find_map(|k| k.open_entry_one(clear, sealed))
    }

    fn open_entry_one(&self, clear: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if self.suite == Suite::Sm {
            if sealed.len() < sm::NONCE_LEN + SEAL_OVERHEAD {
                return None;
            }
            let (nonce, ct) = sealed.split_at(sm::NONCE_LEN);
            return sm::open(&self.entry_key, nonce.try_into().ok()?, clear, ct);
        }
        if sealed.len() < 24 + SEAL_OVERHEAD {
            return None;
        }
        let cipher = XChaCha20Poly1305::new((&self.entry_key).into());
        cipher
            .decrypt(
                XNonce::from_slice(&sealed[..24]),
                Payload {
                    msg: &sealed[24..],
                    aad: clear,
                },
            )
            .ok()
    }

    /// A plain chunk of this tenant made ready to store: keyed id,
    /// compressed with `compressor`, sealed.
    pub fn encode_chunk(
        &self,
        compressor: &mut crate::ChunkCompressor,
        plaintext: &[u8],
    ) -> (ChunkId, crate::StoredChunk) {
        let id = self.chunk_id(plaintext);
        let mut c = compressor.compress(plaintext);
        c.data = self.seal(&id, c.raw_len, &c.data);
        c.cipher = self.cipher();
        (id, c)
    }

    /// Opens, decompresses (bounded) and checks a sealed chunk against its
    /// keyed id: the content, or why it cannot be trusted.
    pub fn decode_chunk(
        &self,
        id: &ChunkId,
        chunk: &crate::StoredChunk,
        max_len: u32,
    ) -> Result<Vec<u8>, crate::FrameError> {
        if chunk.cipher == Cipher::None {
            // A plain chunk in an encrypted tenant: checkable by anyone.
            return crate::decode_chunk(id, chunk, max_len);
        }
        crate::frame::verify_stored(id, chunk, max_len)?;
        // The key of the ring that sealed it (with its cipher) also named it.
        let (k, opened) = self
            .ring()
            .filter(|k| k.cipher() == chunk.cipher)
            .find_map(|k| {
                k.open_one(id, chunk.raw_len, &chunk.data)
                    .ok()
                    .map(|o| (k, o))
            })
            .ok_or(crate::FrameError::Unopenable)?;
        let plain = crate::StoredChunk {
            compression: chunk.compression,
            cipher: crate::Cipher::None,
            raw_len: chunk.raw_len,
            data: opened,
        };
        let content = crate::frame::decompress(&plain, max_len)?;
        let actual = k.chunk_id(&content);
        if &actual != id {
            return Err(crate::FrameError::HashMismatch { actual });
        }
        Ok(content)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> TenantKey {
        TenantKey::generate(
            TenantId::new("finance").unwrap(),
            "2026-11-22T10:00:00Z".into(),
        )
        .unwrap()
    }

    #[test]
    fn parallel_ids_are_the_same_ids() {
        let key = key();
        for len in [0usize, 1000, PARALLEL_HASH_MIN, (3 << 20) + 17] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            assert_eq!(chunk_id_parallel(None, &data), chunk_id_with(None, &data));
            assert_eq!(
                chunk_id_parallel(Some(&key), &data),
                chunk_id_with(Some(&key), &data)
            );
        }
    }

    #[test]
    fn ids_of_many_chunks_are_each_chunks_id() {
        let key = key();
        let data: Vec<u8> = (0..(5 << 20)).map(|i| (i * 7 % 253) as u8).collect();
        // Sizes around the split threshold, and a large chunk among small.
        let mut cuts = vec![0usize, 1, 4096, 65536, PARALLEL_HASH_MIN, 3 << 20];
        cuts.extend((1..40).map(|i| i * 1000));
        let mut chunks = Vec::new();
        let mut at = 0;
        for n in cuts {
            chunks.push(&data[at..at + n]);
            at += n;
        }
        for k in [None, Some(&key)] {
            let ids = chunk_ids_parallel(k, &chunks);
            let want: Vec<ChunkId> = chunks.iter().map(|c| chunk_id_with(k, c)).collect();
            assert_eq!(ids, want);
        }
        assert!(chunk_ids_parallel(None, &[]).is_empty());
    }

    #[test]
    fn keys_round_trip_through_their_file_and_differ() {
        let k = key();
        let text = k.to_text();
        assert!(text.contains("Keep a copy offline"));
        let back = TenantKey::parse(&text).unwrap();
        assert_eq!(back.fingerprint(), k.fingerprint());
        assert_eq!(back.tenant().as_str(), "finance");
        assert_eq!(back.created(), "2026-11-22T10:00:00Z");
        assert_ne!(key().fingerprint(), k.fingerprint());
        // The Debug form shows the fingerprint, never the key.
        let dbg = format!("{k:?}");
        assert!(dbg.contains(&k.fingerprint()) && !dbg.contains(&hex(&k.master)));
    }

    #[test]
    fn damaged_key_files_are_refused_with_the_reason() {
        let text = key().to_text();
        let kline = text.lines().find(|l| l.starts_with("key ")).unwrap();
        let mut chars: Vec<char> = kline.chars().collect();
        chars[4] = if chars[4] == '0' { '1' } else { '0' };
        let flipped: String = chars.into_iter().collect();
        let e = TenantKey::parse(&text.replace(kline, &flipped)).unwrap_err();
        assert!(e.to_string().contains("fingerprint"), "{e}");
        assert!(TenantKey::parse("hello").is_err());
        let e = TenantKey::parse(&text.replace("tenant finance", "tenant ../x")).unwrap_err();
        assert!(matches!(e, CryptoError::BadKeyFile(_)));
        let e = TenantKey::parse(&format!("{text}key 00\n")).unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
    }

    #[test]
    fn sealed_chunks_round_trip_and_refuse_the_wrong_key_and_damage() {
        let (a, b) = (key(), key());
        let data = b"marker: the payroll of March ".repeat(200);
        let mut comp = crate::ChunkCompressor::new(1);
        let (id, c) = a.encode_chunk(&mut comp, &data);
        assert_eq!(c.cipher, crate::Cipher::XChaCha20Poly1305);
        assert!(!c.data.windows(6).any(|w| w == b"marker"));
        assert_eq!(a.decode_chunk(&id, &c, 1 << 20).unwrap(), data);
        // What anyone without the key can do: check sizes, nothing more.
        crate::frame::verify_stored(&id, &c, 1 << 20).unwrap();
        assert_eq!(
            crate::decode_chunk(&id, &c, 1 << 20),
            Err(crate::FrameError::Sealed)
        );
        assert_eq!(
            b.decode_chunk(&id, &c, 1 << 20),
            Err(crate::FrameError::Unopenable)
        );
        let mut bad = c.clone();
        bad.data[0] ^= 1;
        assert_eq!(
            a.decode_chunk(&id, &bad, 1 << 20),
            Err(crate::FrameError::Unopenable)
        );
        // The stored record keeps the cipher and keyed-hash ids.
        let rec = c.encode_record();
        assert_eq!((rec[2], rec[3]), (2, 1));
        assert_eq!(crate::StoredChunk::decode_record(&rec).unwrap(), c);
        // Sizes are checked before anything else.
        let mut huge = c.clone();
        huge.raw_len = 4;
        assert!(crate::frame::verify_stored(&id, &huge, 1 << 20).is_err());
    }

    #[test]
    fn a_rotated_key_seals_with_the_new_key_and_opens_old_data() {
        let old = key();
        let mut comp = crate::ChunkCompressor::new(1);
        let data = b"written before the rotation".to_vec();
        let (old_id, old_chunk) = old.encode_chunk(&mut comp, &data);
        let entry = old.seal_entry(b"clear", b"entry");
        let new = old.rotate("later".into()).unwrap();
        assert_ne!(new.fingerprint(), old.fingerprint());
        assert_eq!(new.previous_fingerprints(), [old.fingerprint()]);
        // New data: new ids, new seals.
        assert_ne!(new.chunk_id(&data), old_id);
        // Old data still opens, through the file too.
        let back = TenantKey::parse(&new.to_text()).unwrap();
        assert_eq!(back.previous_fingerprints(), [old.fingerprint()]);
        assert_eq!(
            back.decode_chunk(&old_id, &old_chunk, 1 << 20).unwrap(),
            data
        );
        assert_eq!(back.open_entry(b"clear", &entry).unwrap(), b"entry");
        // The old key cannot read what the new one sealed.
        let (nid, nc) = back.encode_chunk(&mut comp, &data);
        assert!(old.decode_chunk(&nid, &nc, 1 << 20).is_err());
        // Two rotations keep both predecessors.
        let third = back.rotate("later still".into()).unwrap();
        assert_eq!(third.previous_fingerprints().len(), 2);
        assert_eq!(
            third.decode_chunk(&old_id, &old_chunk, 1 << 20).unwrap(),
            data
        );
    }

    #[test]
    fn ids_are_keyed_and_sealing_binds_id_length_and_key() {
        let (a, b) = (key(), key());
        let data = b"the same plaintext in two tenants";
        assert_ne!(a.chunk_id(data), b.chunk_id(data));
        assert_ne!(a.chunk_id(data), ChunkId::of(data));
        assert_eq!(a.chunk_id(data), a.chunk_id(data));

        let id = a.chunk_id(data);
        let sealed = a.seal(&id, 33, data);
        assert_eq!(sealed.len(), data.len() + SEAL_OVERHEAD);
        assert!(!sealed.windows(9).any(|w| w == b"plaintext"));
        // Deterministic: the same chunk seals to the same bytes.
        assert_eq!(a.seal(&id, 33, data), sealed);
        assert_eq!(a.open(&id, 33, &sealed).unwrap(), data);
        // Wrong key, wrong id, wrong length, a flipped bit: refused.
        assert_eq!(b.open(&id, 33, &sealed), Err(CryptoError::Open(id)));
        let other = a.chunk_id(b"other");
        assert!(a.open(&other, 33, &sealed).is_err());
        assert!(a.open(&id, 34, &sealed).is_err());
        let mut bad = sealed.clone();
        bad[3] ^= 1;
        assert!(a.open(&id, 33, &bad).is_err());
    }

    fn sm_key() -> TenantKey {
        TenantKey::generate_with(
            TenantId::new("finance").unwrap(),
            "2026-12-07T10:00:00Z".into(),
            Suite::Sm,
        )
        .unwrap()
    }

    #[test]
    fn an_sm_key_names_its_suite_in_its_file_and_round_trips() {
        let k = sm_key();
        assert_eq!(k.suite(), Suite::Sm);
        let text = k.to_text();
        assert!(text.contains("\nsuite sm\n"), "{text}");
        let back = TenantKey::parse(&text).unwrap();
        assert_eq!(back.suite(), Suite::Sm);
        assert_eq!(back.fingerprint(), k.fingerprint());
        assert_eq!(back.chunk_id(b"x"), k.chunk_id(b"x"));
        // The same master key in the other suite is another key.
        let std = TenantKey::parse(&text.replace("suite sm\n", "")).unwrap_err();
        assert!(std.to_string().contains("fingerprint"), "{std}");
        let e = TenantKey::parse(&text.replace("suite sm", "suite gost")).unwrap_err();
        assert!(e.to_string().contains("unknown suite"), "{e}");
        // A standard key's file has no suite line (files made before read).
        assert!(!key().to_text().contains("suite"));
    }

    #[test]
    fn sm_chunks_and_entries_round_trip_and_refuse_the_wrong_key_and_damage() {
        let k = sm_key();
        let other = sm_key();
        let data = b"national standard".repeat(100);
        let mut comp = crate::ChunkCompressor::new(3);
        let (id, c) = k.encode_chunk(&mut comp, &data);
        assert_eq!(c.cipher, Cipher::Sm4Gcm);
        assert_eq!(id, ChunkId(sm::hmac_sm3(&k.id_key, &[&data])));
        assert_ne!(id, ChunkId::of(&data));
        // The node checks what it can without the key.
        crate::frame::verify_stored(&id, &c, 1 << 20).unwrap();
        assert_eq!(k.decode_chunk(&id, &c, 1 << 20).unwrap(), data);
        assert!(other.decode_chunk(&id, &c, 1 << 20).is_err());
        for i in [0, c.data.len() / 2, c.data.len() - 1] {
            let mut bad = c.clone();
            bad.data[i] ^= 0x40;
            assert!(k.decode_chunk(&id, &bad, 1 << 20).is_err());
        }
        // Deterministic: the same content seals to the same bytes.
        assert_eq!(k.encode_chunk(&mut comp, &data).1.data, c.data);
        // Entries.
        let sealed = k.seal_entry(b"clear", b"entry bytes");
        assert_eq!(sealed.len(), 12 + 11 + SEAL_OVERHEAD);
        assert_eq!(k.open_entry(b"clear", &sealed).unwrap(), b"entry bytes");
        assert!(k.open_entry(b"other", &sealed).is_none());
        assert!(other.open_entry(b"clear", &sealed).is_none());
        // A standard key does not open the SM suite's chunk, and the
        // reverse.
        assert!(key().decode_chunk(&id, &c, 1 << 20).is_err());
        let (sid, sc) = key().encode_chunk(&mut comp, &data);
        assert!(k.decode_chunk(&sid, &sc, 1 << 20).is_err());
    }

    #[test]
    fn a_tenant_moves_to_the_sm_suite_and_still_reads_its_old_chunks() {
        let old = key();
        let mut comp = crate::ChunkCompressor::new(3);
        let (oid, oc) = old.encode_chunk(&mut comp, b"before");
        let new = old
            .rotate_to("2026-12-07T11:00:00Z".into(), Suite::Sm)
            .unwrap();
        assert_eq!(new.suite(), Suite::Sm);
        let back = TenantKey::parse(&new.to_text()).unwrap();
        assert_eq!(back.decode_chunk(&oid, &oc, 1 << 20).unwrap(), b"before");
        let (nid, nc) = back.encode_chunk(&mut comp, b"after");
        assert_eq!(nc.cipher, Cipher::Sm4Gcm);
        assert_eq!(back.decode_chunk(&nid, &nc, 1 << 20).unwrap(), b"after");
        // And back again: the SM key stays in the ring as previous-sm.
        let again = back
            .rotate_to("2026-12-07T12:00:00Z".into(), Suite::Standard)
            .unwrap();
        let text = again.to_text();
        assert!(text.contains("previous-sm "), "{text}");
        let again = TenantKey::parse(&text).unwrap();
        assert_eq!(again.decode_chunk(&nid, &nc, 1 << 20).unwrap(), b"after");
        assert_eq!(again.decode_chunk(&oid, &oc, 1 << 20).unwrap(), b"before");
    }

    #[test]
    fn parallel_ids_of_an_sm_key_are_its_ids() {
        let k = sm_key();
        let big = vec![7u8; PARALLEL_HASH_MIN * 2];
        assert_eq!(chunk_id_parallel(Some(&k), &big), k.chunk_id(&big));
        let parts: Vec<&[u8]> = vec![&big[..100], &big[..], b"x"];
        let ids = chunk_ids_parallel(Some(&k), &parts);
        for (p, id) in parts.iter().zip(ids) {
            assert_eq!(id, k.chunk_id(p));
        }
    }
}
