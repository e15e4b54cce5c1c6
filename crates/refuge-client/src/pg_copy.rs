//! The files a `postgres` copy adds after its walk: the server's
//! `backup_label` (and `tablespace_map`), and the WAL from the backup's
//! start to its end under `pg_wal/`; read, uploaded, and merged into the
//! walk's manifest in walk order (the walk left them out: the label
//! exists only once the backup has stopped, and only the backup's range
//! of WAL belongs in the copy).

use std::cmp::Ordering;
use std::fs::File;
use std::io::{BufReader, BufWriter, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use refuge_core::crypto::TenantKey;
use refuge_core::{ChunkerParams, Entry, EntryKind, ManifestRecord, SourceKind, walk_order};

use crate::file_chunks::{RefList, Sink, chunk_file};
use crate::manifest_io::{base_entry, manifest_reader, manifest_writer};
use crate::postgres::Stopped;

/// Reads and uploads the added files, and writes the walk's manifest
/// (`walked`, read from its start) with them into a new one, which it
/// returns positioned at its start.
pub(crate) fn complete(
    walked: File,
    data_dir: &Path,
    stopped: &Stopped,
    params: ChunkerParams,
    key: &Option<Arc<TenantKey>>,
    sink: &mut Sink<'_>,
) -> anyhow::Result<File> {
    let added = added_files(data_dir, stopped, params, sink)?;
    sink.rep.files += added.len() as u64;
    let mut reader = manifest_reader(BufReader::new(walked), key)
        .map_err(|e| anyhow!("reading back the walk's manifest: {e}"))?;
    let out = BufWriter::with_capacity(64 << 10, tempfile::tempfile()?);
    let mut w = manifest_writer(out, SourceKind::Postgres, key)?;
    let mut added = added.into_iter().peekable();
    while let Some(rec) = reader.next_record()? {
        match rec {
            ManifestRecord::Entry(e) => {
                while let Some((a, refs)) =
                    added.next_if(|(a, _)| walk_order(&a.path, &e.path) == Ordering::Less)
                {
                    w.add_entry(&a)?;
                    refs.write_to(&mut w)?;
                }
                w.add_entry(&e)?;
            }
            ManifestRecord::Chunks(refs) => w.add_chunks(&refs)?,
            ManifestRecord::Sealed { .. } => {
                bail!("the walk's manifest has an entry this agent cannot open")
            }
        }
    }
    for (a, refs) in added {
        w.add_entry(&a)?;
        refs.write_to(&mut w)?;
    }
    let (buf, _) = w.finish()?;
    let mut f = buf
        .into_inner()
        .map_err(|e| anyhow!("writing the manifest: {}", e.error()))?;
    f.seek(SeekFrom::Start(0))?;
    Ok(f)
}

/// The added files' entries and chunk lists, in walk order.
fn added_files(
    data_dir: &Path,
    stopped: &Stopped,
    params: ChunkerParams,
    sink: &mut Sink<'_>,
) -> anyhow::Result<Vec<(Entry, RefList)>> {
    // Written files take PG_VERSION's owner and mode (the server's, 0600).
    let template = std::fs::metadata(data_dir.join("PG_VERSION"))
        .with_context(|| format!("{}/PG_VERSION", data_dir.display()))?;
    let scratch = tempfile::tempdir()?;
    let mut added = Vec::new();
    let mut texts = vec![("backup_label", stopped.label.as_str())];
    if !stopped.tablespace_map.is_empty() {
        texts.push(("tablespace_map", stopped.tablespace_map.as_str()));
    }
    for (name, text) in texts {
        let p = scratch.path().join(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        let (refs, size) = chunk_file(&p, params, sink)?;
        let mut e = base_entry(name.as_bytes().to_vec(), EntryKind::File, &template);
        e.size = size;
        e.inode = 0;
        added.push((e, refs));
    }
    for seg in &stopped.wal {
        let p = data_dir.join("pg_wal").join(seg);
        let md = std::fs::metadata(&p).with_context(|| format!("WAL file {}", p.display()))?;
        let (refs, size) =
            chunk_file(&p, params, sink).with_context(|| format!("reading {}", p.display()))?;
        let mut e = base_entry(format!("pg_wal/{seg}").into_bytes(), EntryKind::File, &md);
        e.size = size;
        added.push((e, refs));
    }
    added.sort_by(|a, b| walk_order(&a.0.path, &b.0.path));
    Ok(added)
}
