//! Reading from the node: chunks fetched in bounded batches and verified
//! (bounded decompression, recomputed BLAKE3), and a manifest stream read
//! chunk by chunk. Holes are never fetched: the caller handles them.

use std::io::Read;

use anyhow::{anyhow, bail};
use std::sync::Arc;

use refuge_core::crypto::TenantKey;
use refuge_core::{ChunkId, ChunkRef, decode_chunk};
use refuge_proto::pb;
use tokio::runtime::Handle;

use crate::connect::{Node, rpc_error};

/// Chunks fetched per request (bounded by count and bytes).
const FETCH_CHUNKS: usize = 256;
const FETCH_BYTES: u64 = 64 << 20;

/// Fetches and verifies chunks.
pub(crate) struct Fetcher {
    rt: Handle,
    node: Node,
    tenant: String,
    /// Opens sealed chunks (an encrypted tenant).
    key: Option<Arc<TenantKey>>,
}

impl Fetcher {
    /// Fetches `tenant`'s chunks; `key` opens sealed ones.
    pub(crate) fn new(rt: Handle, node: Node, tenant: String, key: Option<Arc<TenantKey>>) -> Self {
        Fetcher {
            rt,
            node,
            tenant,
            key,
        }
    }

    /// The id a data chunk of this tenant has (keyed with the tenant key).
    pub(crate) fn id_of(&self, data: &[u8]) -> ChunkId {
        refuge_core::crypto::chunk_id_with(self.key.as_deref(), data)
    }

    /// Verified content of a fetched chunk: plain chunks by their BLAKE3,
    /// sealed ones opened and checked with the tenant key.
    fn decode(&self, id: &ChunkId, c: &refuge_core::StoredChunk) -> anyhow::Result<Vec<u8>> {
        let max = refuge_core::format::MAX_CHUNK_LEN;
        match (&c.cipher, &self.key) {
            (refuge_core::Cipher::None, _) => {
                decode_chunk(id, c, max).map_err(|e| anyhow!("chunk {id} is corrupt: {e}"))
            }
            (_, Some(k)) => k
                .decode_chunk(id, c, max)
                .map_err(|e| anyhow!("chunk {id}: {e}")),
            (_, None) => bail!(
                "chunk {id} is encrypted and this client has no tenant key ([encryption] key_file)"
            ),
        }
    }

    /// Fetches `refs` in order and hands each verified chunk (or hole) to
    /// `sink`. Requests are bounded by count and bytes.
    pub(crate) fn fetch(
        &mut self,
        refs: &[ChunkRef],
        mut sink: impl FnMut(Piece<'_>) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut start = 0;
        while start < refs.len() {
            if refs[start].is_hole() {
                sink(Piece::Hole(refs[start].len))?;
                start += 1;
                continue;
            }
            let mut end = start;
            let mut bytes = 0u64;
            while end < refs.len()
                && !refs[end].is_hole()
                && end - start < FETCH_CHUNKS
                && (end == start || bytes + u64::from(refs[end].len) <= FETCH_BYTES)
            {
                bytes += u64::from(refs[end].len);
                end += 1;
            }
            let group = &refs[start..end];
            let ids = group.iter().map(|r| r.id.0.to_vec()).collect();
            let mut restore = self.node.restore.clone();
            let node = &self.node;
            let mut stream = self.rt.block_on(node.within("fetching chunks", |req| {
                restore.get_chunks(req.map(|()| pb::GetChunksRequest {
                    ids,
                    tenant: self.tenant.clone(),
                }))
            }))?;
            // Each chunk of the stream within the call deadline too: a node
            // that stops sending while the link stays alive is named.
            let next = |stream: &mut tonic::Streaming<pb::ChunkData>, what: &str| {
                // The timer is made inside the runtime (this thread is
                // not one of its workers).
                self.rt
                    .block_on(async {
                        tokio::time::timeout(node.call_timeout, stream.message()).await
                    })
                    .map_err(|_| node.no_answer(what))
            };
            for r in group {
                let msg =
                    next(&mut stream, &format!("fetching chunk {}", r.id))?.map_err(|s| match s
                        .code()
                    {
                        tonic::Code::NotFound => anyhow!("chunk {} is missing on the node", r.id),
                        tonic::Code::DataLoss => {
                            anyhow!(
                                "chunk {}: the node's stored copy is corrupt ({})",
                                r.id,
                                s.message()
                            )
                        }
                        _ => rpc_error(&format!("fetching chunk {}", r.id), &s),
                    })?;
                let msg =
                    msg.ok_or_else(|| anyhow!("node ended the stream before chunk {}", r.id))?;
                let (id, c) =
                    refuge_proto::chunk_data(msg).map_err(|e| anyhow!("chunk {}: {e}", r.id))?;
                if id != r.id {
                    bail!("node sent chunk {id} where {} was expected", r.id);
                }
                if c.raw_len != r.len {
                    bail!(
                        "chunk {} is corrupt: {} bytes where the manifest says {}",
                        r.id,
                        c.raw_len,
                        r.len
                    );
                }
                let data = self.decode(&r.id, &c)?;
                sink(Piece::Data(&data))?;
            }
            // Read the stream to its end: a response dropped early resets
            // its HTTP/2 stream, and many resets make h2 close the whole
            // connection as abusive.
            let extra = next(&mut stream, "fetching chunks")?
                .map_err(|s| rpc_error("fetching chunks", &s))?;
            if extra.is_some() {
                bail!("node sent more chunks than were asked for");
            }
            start = end;
        }
        Ok(())
    }
}

/// One piece of content handed out by [`Fetcher::fetch`].
pub(crate) enum Piece<'a> {
    /// Verified chunk content.
    Data(&'a [u8]),
    /// A run of zero bytes that was never stored.
    Hole(u32),
}

/// The manifest stream, read chunk by chunk from the node.
pub(crate) struct RemoteStream {
    fetcher: Fetcher,
    refs: std::vec::IntoIter<ChunkRef>,
    buf: Vec<u8>,
    pos: usize,
}

impl RemoteStream {
    pub(crate) fn new(fetcher: Fetcher, refs: Vec<ChunkRef>) -> Self {
        RemoteStream {
            fetcher,
            refs: refs.into_iter(),
            buf: Vec::new(),
            pos: 0,
        }
    }
}

impl Read for RemoteStream {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            let Some(r) = self.refs.next() else {
                return Ok(0);
            };
            let mut got = Vec::new();
            self.fetcher
                .fetch(&[r], |p| {
                    got = match p {
                        Piece::Data(d) => d.to_vec(),
                        Piece::Hole(n) => vec![0; n as usize],
                    };
                    Ok(())
                })
                .map_err(|e| std::io::Error::other(format!("manifest {e:#}")))?;
            self.buf = got;
            self.pos = 0;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
