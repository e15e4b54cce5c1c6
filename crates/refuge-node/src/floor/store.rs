//! Store access from the node's async handlers: the blocking pool, the
//! one mapping of [`StoreError`] to a gRPC [`Status`], and a manifest read
//! back from the store a batch of chunks at a time ([`StoredStream`]).

use std::io::Read;

use refuge_core::{ChunkRef, StoredChunk, TenantId, decode_chunk};
use refuge_store::{Store, StoreError};
use tonic::Status;

/// What a client is told of a store error: full storage and corruption
/// by name, anything else as UNAVAILABLE (worth a retry).
pub(crate) fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::NoSpace(m) => Status::resource_exhausted(format!(
            "node storage is full: {m}; nothing more was stored, restores still work, and the \
             node takes uploads again by itself once space is freed"
        )),
        StoreError::Corrupt(m) => Status::data_loss(format!("stored data is corrupt: {m}")),
        StoreError::Backend(m) => Status::unavailable(format!("node storage error: {m}")),
        StoreError::MissingChunk(m) => Status::failed_precondition(m),
    }
}

/// Runs `f` (which calls the store) on the blocking pool; a panic in it
/// becomes INTERNAL.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("worker failed: {e}")))?
}

/// Raw bytes of manifest chunks [`StoredStream`] asks the store for at
/// once (at least one chunk): one call, so that a packs store reads them
/// with a few ranged GETs rather than one round trip per chunk.
const STREAM_BATCH_BYTES: u64 = 8 << 20;

/// Reads a manifest stream from stored chunks, verifying each.
pub(crate) struct StoredStream<'a> {
    store: &'a dyn Store,
    tenant: &'a TenantId,
    refs: &'a [ChunkRef],
    /// Fetched and not yet decoded, in order.
    ahead: std::collections::VecDeque<(&'a ChunkRef, StoredChunk)>,
    buf: Vec<u8>,
    pos: usize,
}

impl<'a> StoredStream<'a> {
    /// The manifest made of `refs`, read from `tenant`'s chunks.
    pub(crate) fn new(store: &'a dyn Store, tenant: &'a TenantId, refs: &'a [ChunkRef]) -> Self {
        StoredStream {
            store,
            tenant,
            refs,
            ahead: Default::default(),
            buf: Vec::new(),
            pos: 0,
        }
    }

    /// Fetches the next refs, up to [`STREAM_BATCH_BYTES`], in one call.
    fn fetch(&mut self) -> std::io::Result<()> {
        let mut n = 0;
        let mut bytes = 0u64;
        while n < self.refs.len()
            && (n == 0 || bytes + u64::from(self.refs[n].len) <= STREAM_BATCH_BYTES)
        {
            bytes += u64::from(self.refs[n].len);
            n += 1;
        }
        let (now, rest) = self.refs.split_at(n);
        self.refs = rest;
        let ids: Vec<_> = now.iter().map(|r| r.id).collect();
        for (r, got) in now.iter().zip(self.store.get_chunks(self.tenant, &ids)) {
            let c = got.map_err(std::io::Error::other)?.ok_or_else(|| {
                std::io::Error::other(format!("manifest chunk {} is missing", r.id))
            })?;
            self.ahead.push_back((r, c));
        }
        Ok(())
    }
}

impl Read for StoredStream<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.ahead.is_empty() {
                if self.refs.is_empty() {
                    return Ok(0);
                }
                self.fetch()?;
            }
            let Some((r, c)) = self.ahead.pop_front() else {
                return Ok(0);
            };
            if c.raw_len != r.len {
                return Err(std::io::Error::other(format!(
                    "manifest chunk {} has the wrong length",
                    r.id
                )));
            }
            self.buf = decode_chunk(&r.id, &c, refuge_core::format::MAX_CHUNK_LEN)
                .map_err(|e| std::io::Error::other(format!("manifest chunk {}: {e}", r.id)))?;
            self.pos = 0;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use refuge_core::{ChunkId, compress_chunk};
    use refuge_store::MemStore;

    fn tenant() -> TenantId {
        TenantId::new("t").unwrap()
    }

    #[test]
    fn a_stored_stream_reads_chunks_in_order_and_names_a_missing_one() {
        let store = MemStore::new();
        let t = tenant();
        let parts: [&[u8]; 2] = [b"hello ", b"world"];
        let mut refs = Vec::new();
        for p in parts {
            let id = ChunkId::of(p);
            let c = compress_chunk(p, 1);
            store.put_chunks(&t, &[(id, c)], 1).unwrap();
            refs.push(ChunkRef {
                id,
                len: p.len() as u32,
            });
        }
        let mut out = String::new();
        StoredStream::new(&store, &t, &refs)
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "hello world");

        let gone = ChunkRef {
            id: ChunkId::of(b"never stored"),
            len: 12,
        };
        refs.push(gone);
        let e = StoredStream::new(&store, &t, &refs)
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert!(e.to_string().contains("is missing"), "{e}");
        // A wrong length is refused before decoding.
        refs.pop();
        refs[0].len += 1;
        let e = StoredStream::new(&store, &t, &refs)
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert!(e.to_string().contains("wrong length"), "{e}");
    }

    #[test]
    fn a_stored_stream_spans_several_fetches_in_order() {
        let store = MemStore::new();
        let t = tenant();
        // 5 chunks of 3 MiB: fetches of 2, 2 and 1 chunks.
        let mut refs = Vec::new();
        let mut want = Vec::new();
        for i in 0..5u8 {
            let p = vec![i; 3 << 20];
            let id = ChunkId::of(&p);
            store
                .put_chunks(&t, &[(id, compress_chunk(&p, 1))], 1)
                .unwrap();
            refs.push(ChunkRef {
                id,
                len: p.len() as u32,
            });
            want.extend_from_slice(&p);
        }
        let mut out = Vec::new();
        StoredStream::new(&store, &t, &refs)
            .read_to_end(&mut out)
            .unwrap();
        assert!(out == want, "bytes differ");
    }

    #[test]
    fn store_errors_map_to_statuses_a_client_can_act_on() {
        use tonic::Code;
        let code = |e| store_status(e).code();
        assert_eq!(
            code(StoreError::NoSpace("x".into())),
            Code::ResourceExhausted
        );
        assert_eq!(code(StoreError::Corrupt("x".into())), Code::DataLoss);
        assert_eq!(code(StoreError::Backend("x".into())), Code::Unavailable);
        assert_eq!(
            code(StoreError::MissingChunk("x".into())),
            Code::FailedPrecondition
        );
    }
}
