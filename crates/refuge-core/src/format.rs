//! Magic values, format versions and algorithm ids.
//!
//! Never edit a value in this file: data written with it exists on disks
//! and wires. To change a format, add a new version constant, teach the
//! readers both, and record the change in `docs/format.md` ("Changes").

/// Magic bytes at the start of every manifest stream.
pub const MANIFEST_MAGIC: &[u8; 6] = b"RFGMAN";
/// Poly1305 tag bytes a sealed chunk body carries beyond its compressed
/// bytes (frames check it without the crypto module).
pub const SEAL_OVERHEAD: usize = 16;
/// Manifest stream format version.
pub const MANIFEST_VERSION: u8 = 1;

/// Stored chunk record format version (node's chunk store value).
pub const CHUNK_RECORD_VERSION: u8 = 1;

/// Snapshot catalog record format version 1 (read, no longer written).
pub const SNAPSHOT_RECORD_VERSION: u8 = 1;
/// Snapshot catalog record format version 2: version 1 with the backup's
/// duration (u64 µs) after the warnings. Written since 2026-12-07.
pub const SNAPSHOT_RECORD_VERSION_2: u8 = 2;

/// Manifest record tag: an entry.
pub const MANIFEST_TAG_ENTRY: u8 = 1;
/// Manifest record tag: a run of chunk references of the current file.
pub const MANIFEST_TAG_CHUNKS: u8 = 2;
/// Manifest record tag: an entry sealed with the tenant key (encrypted
/// manifests, header hash id [`HASH_BLAKE3_KEYED`]): kind and size in
/// clear, the rest sealed.
pub const MANIFEST_TAG_SEALED_ENTRY: u8 = 3;
/// Manifest record tag: the trailer with totals.
pub const MANIFEST_TAG_END: u8 = 255;

/// Entry kind id: regular file (or an image source's byte stream).
pub const ENTRY_FILE: u8 = 1;
/// Entry kind id: directory.
pub const ENTRY_DIR: u8 = 2;
/// Entry kind id: symbolic link.
pub const ENTRY_SYMLINK: u8 = 3;

/// Domain-separation prefix of the snapshot id hash.
pub const SNAPSHOT_ID_DOMAIN: &[u8] = b"refuge snapshot v1\0";

/// Key/value layout version of the RocksDB store (its `meta` column family).
pub const ROCKS_STORE_VERSION: u8 = 1;

/// Hash algorithm id: BLAKE3, 32-byte output, unkeyed.
pub const HASH_BLAKE3: u8 = 1;

/// Compression id: stored as is.
pub const COMPRESSION_NONE: u8 = 0;
/// Compression id: one zstd frame.
pub const COMPRESSION_ZSTD: u8 = 1;

/// Source kind id: a directory tree.
pub const SOURCE_TREE: u8 = 1;
/// Source kind id: one file or block device read as a byte stream.
pub const SOURCE_IMAGE: u8 = 2;
/// Source kind id: a PostgreSQL data directory taken with the server's
/// backup API, with its `backup_label` and WAL (a tree manifest).
pub const SOURCE_POSTGRES: u8 = 3;
/// Source kind id: WAL files a PostgreSQL server archived (`archive_command
/// = 'refuge-agent wal-push ...'`), one snapshot per file, of the source
/// `NAME.wal` beside the `postgres` source `NAME` (a tree manifest).
pub const SOURCE_POSTGRES_WAL: u8 = 4;
/// Source kind id: a MariaDB/MySQL data directory copied with
/// `mariadb-backup` and prepared (a tree manifest that starts as a
/// server).
pub const SOURCE_MARIADB: u8 = 5;

/// Largest chunk the protocol allows, before compression (16 MiB, the
/// largest maximum FastCDC accepts).
pub const MAX_CHUNK_LEN: u32 = 16 * 1024 * 1024;

/// Largest manifest record body.
pub const MAX_MANIFEST_RECORD: u32 = 1024 * 1024;

/// Most chunk references in one manifest chunk-run record.
pub const MAX_REFS_PER_RUN: u32 = 4096;

/// Longest path accepted in a manifest, in bytes.
pub const MAX_PATH_LEN: usize = 4096;

/// Audit record format version (the node's hash-chained audit log).
pub const AUDIT_RECORD_VERSION: u8 = 1;

/// Retention policy format version (node setting `retention/TENANT`).
pub const RETENTION_POLICY_VERSION: u8 = 1;

/// Cipher id of a chunk body that is not sealed (chunk record byte 3).
pub const CIPHER_NONE: u8 = 0;

/// Cipher id of sealed chunk bodies: XChaCha20-Poly1305, nonce derived from
/// the chunk id, the id and uncompressed length as associated data (the
/// crypto module seals and opens them). 0 means not sealed.
pub const CIPHER_XCHACHA20_POLY1305: u8 = 1;

/// Hash id of keyed chunk ids: BLAKE3 keyed with the tenant's id key.
pub const HASH_BLAKE3_KEYED: u8 = 2;

/// Cipher id of sealed chunk bodies of the national-standard suite
/// (`suite sm`): SM4-GCM (GB/T 32907 in GCM, 96-bit nonce derived from the
/// chunk id, 128-bit tag), the id and uncompressed length as associated
/// data.
pub const CIPHER_SM4_GCM: u8 = 2;

/// Hash id of keyed chunk ids of the national-standard suite: HMAC-SM3
/// (GB/T 32905) with the tenant's id key.
pub const HASH_SM3_KEYED: u8 = 3;

/// The key file line that names the national-standard suite (`suite sm`);
/// a file without a `suite` line is of the standard suite (BLAKE3,
/// XChaCha20-Poly1305).
pub const SUITE_SM: &str = "sm";
/// See [`SUITE_SM`].
pub const SUITE_STANDARD: &str = "standard";

/// First line of a tenant key file (version 1).
pub const TENANT_KEY_MAGIC: &str = "refuge-tenant-key v1";

/// BLAKE3 key-derivation contexts of a tenant key's sub-keys.
pub const KEY_CONTEXT_ID: &str = "refuge 2026-11-22 chunk id key v1";
/// See [`KEY_CONTEXT_ID`].
pub const KEY_CONTEXT_ENCRYPT: &str = "refuge 2026-11-22 chunk encryption key v1";
/// See [`KEY_CONTEXT_ID`].
pub const KEY_CONTEXT_NONCE: &str = "refuge 2026-11-22 chunk nonce key v1";
/// See [`KEY_CONTEXT_ID`].
pub const KEY_CONTEXT_ENTRY: &str = "refuge 2026-11-22 manifest entry key v1";
/// See [`KEY_CONTEXT_ID`].
pub const KEY_CONTEXT_FINGERPRINT: &str = "refuge 2026-11-22 key fingerprint v1";
