//! Store access from the node's async handlers: the blocking pool, the
//! one mapping of [`StoreError`] to a gRPC [`Status`], and a manifest read
//! back chunk by chunk from the store ([`StoredStream`]).

use std::io::Read;

use refuge_core::{ChunkRef, TenantId, decode_chunk};
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

/// Reads a manifest stream from stored chunks, verifying each.
pub(crate) struct StoredStream<'a> {
    store: &'a dyn Store,
    tenant: &'a TenantId,
    refs: std::slice::Iter<'a, ChunkRef>,
    buf: Vec<u8>,
    pos: usize,
}

impl<'a> StoredStream<'a> {
    /// The manifest made of `refs`, read from `tenant`'s chunks.
    pub(crate) fn new(store: &'a dyn Store, tenant: &'a TenantId, refs: &'a [ChunkRef]) -> Self {
        StoredStream {
            store,
            tenant,
            refs: refs.iter(),
            buf: Vec::new(),
            pos: 0,
        }
    }
}

impl Read for StoredStream<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            let Some(r) = self.refs.next() else {
                return Ok(0);
            };
            let c = self
                .store
                .get_chunk(self.tenant, &r.id)
                .map_err(std::io::Error::other)?
                .ok_or_else(|| {
                    std::io::Error::other(format!("manifest chunk {} is missing", r.id))
                })?;
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
