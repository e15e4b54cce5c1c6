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
//! The algorithm ids are in [`crate::format`]: a national-standard cipher
//! would be a new id beside `CIPHER_XCHACHA20_POLY1305`.
//!
//! The agent uses these with `[encryption] key_file`; the node never holds
//! a key (docs/security.md, "Client-side encryption").

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

pub use crate::format::SEAL_OVERHEAD;
use crate::format::{
    KEY_CONTEXT_ENCRYPT, KEY_CONTEXT_ENTRY, KEY_CONTEXT_FINGERPRINT, KEY_CONTEXT_ID,
    KEY_CONTEXT_NONCE, TENANT_KEY_MAGIC,
};
use crate::{ChunkId, TenantId};

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

/// A tenant's encryption key and the sub-keys derived from it.
pub struct TenantKey {
    tenant: TenantId,
    created: String,
    master: [u8; 32],
    id_key: [u8; 32],
    enc_key: [u8; 32],
    nonce_key: [u8; 32],
    entry_key: [u8; 32],
    /// Keys this one replaced (newest first): they still open what they
    /// sealed, and are never used to seal.
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

impl Drop for TenantKey {
    fn drop(&mut self) {
        // Best effort: do not leave key bytes in freed memory.
        for k in [
            &mut self.master,
            &mut self.id_key,
            &mut self.enc_key,
            &mut self.nonce_key,
            &mut self.entry_key,
        ] {
            for b in k.iter_mut() {
                // black_box keeps the compiler from dropping the stores.
                *b = std::hint::black_box(0);
            }
        }
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
    if data.len() < PARALLEL_HASH_MIN {
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

impl TenantKey {
    fn from_master(tenant: TenantId, created: String, master: [u8; 32]) -> Self {
        TenantKey {
            id_key: blake3::derive_key(KEY_CONTEXT_ID, &master),
            enc_key: blake3::derive_key(KEY_CONTEXT_ENCRYPT, &master),
            nonce_key: blake3::derive_key(KEY_CONTEXT_NONCE, &master),
            entry_key: blake3::derive_key(KEY_CONTEXT_ENTRY, &master),
            tenant,
            created,
            master,
            previous: Vec::new(),
        }
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
        let mut k = Self::generate(self.tenant.clone(), created)?;
        k.previous = self
            .ring()
            .map(|o| Self::from_master(o.tenant.clone(), o.created.clone(), o.master))
            .collect();
        Ok(k)
    }

    /// Fingerprints of the keys this one replaced, newest first.
    pub fn previous_fingerprints(&self) -> Vec<String> {
        self.previous.iter().map(|k| k.fingerprint()).collect()
    }

    /// A new random key for `tenant`, created at `created` (RFC 3339).
    pub fn generate(tenant: TenantId, created: String) -> Result<Self, CryptoError> {
        let mut master = [0u8; 32];
        getrandom::getrandom(&mut master).map_err(|e| CryptoError::Random(e.to_string()))?;
        Ok(Self::from_master(tenant, created, master))
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
        hex(&blake3::derive_key(KEY_CONTEXT_FINGERPRINT, &self.master)[..8])
    }

    /// The key file's text. Whoever has it can read the tenant's backups.
    pub fn to_text(&self) -> String {
        format!(
            "# refuge tenant key. Whoever holds this file can read the backups of tenant {t};\n\
             # without it (or a copy), nobody can, not even the operators of the node.\n\
             # Keep a copy offline, away from the hosts and the node.\n\
             {TENANT_KEY_MAGIC}\n\
             tenant {t}\n\
             created {c}\n\
             key {k}\n\
             fingerprint {f}\n{p}",
            t = self.tenant,
            c = self.created,
            k = hex(&self.master),
            f = self.fingerprint(),
            p = self
                .previous
                .iter()
                .map(|o| format!("previous {} {}\n", hex(&o.master), o.created))
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
        let mut previous: Vec<([u8; 32], String)> = Vec::new();
        for l in lines {
            let (k, v) = l
                .split_once(' ')
                .ok_or_else(|| bad(&format!("line {l:?} is not `name value`")))?;
            if k == "previous" {
                let (hexkey, when) = v.trim().split_once(' ').unwrap_or((v.trim(), ""));
                previous.push((master_of(hexkey).map_err(|m| bad(&m))?, when.to_string()));
                continue;
            }
            let slot = match k {
                "tenant" => &mut tenant,
                "created" => &mut created,
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
        let mut k = Self::from_master(tenant.clone(), created.unwrap_or_default(), master);
        k.previous = previous
            .into_iter()
            .map(|(m, when)| Self::from_master(tenant.clone(), when, m))
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

    /// The id of a chunk of this tenant: BLAKE3 keyed with the id key.
    pub fn chunk_id(&self, plaintext: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(&self.id_key, plaintext).as_bytes())
    }

    fn nonce(&self, id: &ChunkId) -> XNonce {
        let h = blake3::keyed_hash(&self.nonce_key, &id.0);
        *XNonce::from_slice(&h.as_bytes()[..24])
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
        let cipher = XChaCha20Poly1305::new((&self.enc_key).into());
        let aad = Self::aad(id, raw_len);
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
        let cipher = XChaCha20Poly1305::new((&self.enc_key).into());
        let aad = Self::aad(id, raw_len);
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
    /// Seals an encoded manifest entry: a 24-byte nonce (derived from the
    /// entry, so an unchanged entry seals to the same bytes and unchanged
    /// manifests still deduplicate) followed by the ciphertext and tag.
    /// `clear` (the entry's kind and size, which stay readable) is
    /// authenticated with it.
    pub fn seal_entry(&self, clear: &[u8], entry: &[u8]) -> Vec<u8> {
        let mut h = blake3::Hasher::new_keyed(&self.nonce_key);
        h.update(b"entry");
        h.update(clear);
        h.update(entry);
        let nonce = *XNonce::from_slice(&h.finalize().as_bytes()[..24]);
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
        c.cipher = crate::Cipher::XChaCha20Poly1305;
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
        if chunk.cipher != crate::Cipher::XChaCha20Poly1305 {
            // A plain chunk in an encrypted tenant: checkable by anyone.
            return crate::decode_chunk(id, chunk, max_len);
        }
        crate::frame::verify_stored(id, chunk, max_len)?;
        // The key of the ring that sealed it also named it.
        let (k, opened) = self
            .ring()
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
}
