//! Block deltas: an image or a file changed in place is compared with the
//! parent snapshot's chunk list chunk by chunk; only the changed chunks are
//! cut, sent and stored, the chunk list is the one a full read makes, and
//! holes are found with SEEK_DATA and not read.

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use refuge_tests::{Cluster, assert_same_tree, noise, run};

/// `refuge-agent backup --json [extra]` of `cfg`: the one source's report.
fn backup(c: &Cluster, cfg: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["-c", cfg.to_str().unwrap(), "backup", "--json"];
    args.extend_from_slice(extra);
    let v = run("refuge-agent", c.path(), &args).ok().json();
    v.as_array().unwrap()[0].clone()
}

fn n(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("no {k} in the report: {v:#}"))
}

/// A 24 MiB sparse image: data at 0-16 MiB and 20-21 MiB, holes elsewhere.
fn write_image(path: &Path) {
    let f = fs::File::create(path).unwrap();
    f.write_all_at(&noise(16 << 20, 41), 0).unwrap();
    f.write_all_at(&noise(1 << 20, 43), 20 << 20).unwrap();
    f.set_len(24 << 20).unwrap();
}

#[test]
fn an_image_changed_in_place_is_read_against_its_parent_and_sends_only_the_changed_chunks() {
    let c = Cluster::start();
    let img = c.path().join("disk.img");
    write_image(&img);
    let cfg = c.default_agent(&[("vm", &img, "image")]);
    let first = backup(&c, &cfg, &[]);
    assert!(first["parent"].is_null(), "{first:#}");
    assert_eq!(n(&first, "bytes_unchanged_blocks"), 0);

    // Three 4 KiB blocks rewritten in place, far apart.
    let f = fs::OpenOptions::new().write(true).open(&img).unwrap();
    for (i, at) in [1u64 << 20, 9 << 20, 12 << 20].into_iter().enumerate() {
        f.write_all_at(&noise(4096, 100 + 2 * i as u64), at)
            .unwrap();
    }
    drop(f);
    let second = backup(&c, &cfg, &[]);
    assert_eq!(second["parent"], first["snapshot"], "{second:#}");
    let size = 24u64 << 20;
    let unchanged = n(&second, "bytes_unchanged_blocks");
    // Each change costs the chunk around it and, at worst, the chunks up
    // to the next common cut (chunks are at most 1 MiB here).
    assert!(
        unchanged >= size - 6 * (1 << 20),
        "only {unchanged} of {size} bytes found unchanged: {second:#}"
    );
    assert!(
        n(&second, "bytes_sent") < 4 << 20,
        "the delta sent too much: {second:#}"
    );
    // The holes were holes in the parent too: found with SEEK_DATA, not
    // read (zero runs are cut at the maximum size from where they start,
    // so only the holes after a run of unchanged chunks are in step).
    assert!(
        n(&second, "hole_bytes_unread") >= 5 << 20,
        "holes were read: {second:#}"
    );
    assert!(n(&second, "bytes_read") < size, "{second:#}");
    assert_eq!(
        n(&second, "bytes_read") + n(&second, "hole_bytes_unread"),
        size,
        "{second:#}"
    );

    // The chunk list is the one a full read makes: a --rehash backup of
    // the same bytes has nothing new to send.
    let rehash = backup(&c, &cfg, &["--rehash"]);
    assert!(rehash["parent"].is_null(), "{rehash:#}");
    assert_eq!(n(&rehash, "bytes_read"), size);
    assert_eq!(n(&rehash, "chunks_new"), 0, "{rehash:#}");
    assert_eq!(n(&rehash, "chunks"), n(&second, "chunks"), "{rehash:#}");

    // Restored byte for byte, and sparse.
    let out = c.path().join("restored.img");
    c.restore_latest(&cfg, &out).ok();
    assert_eq!(fs::read(&out).unwrap(), fs::read(&img).unwrap());
    let blocks = fs::metadata(&out).unwrap().blocks() * 512;
    assert!(
        blocks < 20 << 20,
        "restored image is not sparse: {blocks} bytes allocated"
    );
}

#[test]
fn files_changed_in_place_grown_shrunk_or_replaced_are_read_against_the_parent() {
    let c = Cluster::start();
    let src = c.path().join("src");
    fs::create_dir_all(src.join("base")).unwrap();
    fs::write(src.join("base/heap"), noise(8 << 20, 51)).unwrap();
    fs::write(src.join("base/log"), noise(2 << 20, 53)).unwrap();
    fs::write(src.join("base/other"), noise(1 << 20, 55)).unwrap();
    fs::write(src.join("base/shrinks"), noise(3 << 20, 57)).unwrap();
    fs::write(src.join("note.txt"), b"unchanged").unwrap();
    let cfg = c.default_agent(&[("db", &src, "tree")]);
    backup(&c, &cfg, &[]);

    // Pages rewritten in place, a log appended to, a file replaced by
    // different bytes of the same size, a file cut short.
    let heap = fs::OpenOptions::new()
        .write(true)
        .open(src.join("base/heap"))
        .unwrap();
    for i in 0..5u64 {
        heap.write_all_at(&noise(8192, 200 + 2 * i), i * (1600 << 10) + 8192)
            .unwrap();
    }
    drop(heap);
    let mut log = fs::read(src.join("base/log")).unwrap();
    log.extend(noise(300 << 10, 59));
    fs::write(src.join("base/log"), &log).unwrap();
    fs::write(src.join("base/other"), noise(1 << 20, 61)).unwrap();
    let short = fs::read(src.join("base/shrinks")).unwrap();
    fs::write(src.join("base/shrinks"), &short[..(2 << 20) + 77]).unwrap();

    let second = backup(&c, &cfg, &[]);
    assert_eq!(n(&second, "files_unchanged"), 1, "{second:#}");
    let unchanged = n(&second, "bytes_unchanged_blocks");
    // heap: 8 MiB less at most 5 x 2 MiB around the pages; log: its 2 MiB
    // but the last chunk; shrinks: its first 2 MiB but the last chunk.
    assert!(
        unchanged >= 4 << 20,
        "only {unchanged} bytes found unchanged: {second:#}"
    );
    let changed_bytes = 5 * 8192 + (300 << 10) + (1 << 20);
    assert!(
        n(&second, "bytes_sent") < changed_bytes + (8 << 20),
        "{second:#}"
    );
    let rehash = backup(&c, &cfg, &["--rehash"]);
    assert_eq!(n(&rehash, "chunks_new"), 0, "{rehash:#}");

    let out = c.path().join("out");
    c.restore_latest(&cfg, &out).ok();
    assert_same_tree(&src, &out);
}

#[test]
fn an_encrypted_tenants_image_is_compared_by_its_keyed_ids() {
    let c = Cluster::start();
    let img = c.path().join("disk.img");
    write_image(&img);
    let cfg = c.sealed_agent(&[("vm", &img, "image")]);
    backup(&c, &cfg, &[]);
    let f = fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.write_all_at(&noise(4096, 300), 5 << 20).unwrap();
    drop(f);
    let second = backup(&c, &cfg, &[]);
    assert!(
        n(&second, "bytes_unchanged_blocks") >= (24 << 20) - (3 << 20),
        "{second:#}"
    );
    assert!(n(&second, "bytes_sent") < 3 << 20, "{second:#}");
    let out = c.path().join("restored.img");
    c.restore_latest(&cfg, &out).ok();
    assert_eq!(fs::read(&out).unwrap(), fs::read(&img).unwrap());
}

#[test]
fn a_quarantined_parent_chunk_is_not_reused_by_the_delta_and_the_backup_heals_it() {
    let mut c = Cluster::start();
    let admin = c.client(&["--role", "admin", "--name", "root1"]);
    let img = c.path().join("disk.img");
    write_image(&img);
    let cfg = c.default_agent(&[("vm", &img, "image")]);
    backup(&c, &cfg, &[]);
    c.stop_node();
    c.flip_blob_bytes(64);
    c.start_node();
    let adm = admin.to_str().unwrap();
    let r = run(
        "refuge",
        c.path(),
        &["-c", adm, "admin", "verify", "--json"],
    );
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let corrupt = r.json()["corrupt"].as_array().unwrap().len() as u64;
    assert!(corrupt > 0);

    // Nothing changed locally, but the damaged chunks are cut and sent
    // again instead of being reused from the parent.
    let healed = backup(&c, &cfg, &[]);
    assert!(
        n(&healed, "chunks_new") >= corrupt,
        "{corrupt} chunks were quarantined: {healed:#}"
    );
    let out = c.path().join("restored.img");
    c.restore_latest(&cfg, &out).ok();
    assert_eq!(fs::read(&out).unwrap(), fs::read(&img).unwrap());
    let again = run(
        "refuge",
        c.path(),
        &["-c", adm, "admin", "verify", "--json"],
    );
    assert_eq!(again.code, 0, "{}\n{}", again.stdout, again.stderr);
}

#[test]
fn a_missing_image_fails_the_backup_with_its_path_and_commits_nothing() {
    let c = Cluster::start();
    let img = c.path().join("disk.img");
    write_image(&img);
    let cfg = c.default_agent(&[("vm", &img, "image")]);
    backup(&c, &cfg, &[]);
    fs::remove_file(&img).unwrap();
    run(
        "refuge-agent",
        c.path(),
        &["-c", cfg.to_str().unwrap(), "backup"],
    )
    .fails(1, "disk.img");
    assert_eq!(c.snapshots(&cfg).len(), 1);
}
