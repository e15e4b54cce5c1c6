//! A full disk (issue 6, item 4): the node's store on a small tmpfs of its
//! own, filled in the middle of a backup. Ingest refuses with a clear
//! RESOURCE_EXHAUSTED before the file system is full, health says ingest
//! NOT_SERVING, restores keep working, verification finds nothing
//! damaged, and ingest comes back by itself when space is freed. And a
//! restore target that fills: on an ext4 of its own (a loop device, a
//! journal, real `O_DIRECT`), the restore fails naming the file and leaves
//! the target as it was.
//!
//! Needs root (mount -t tmpfs, mount -o loop), which the test machines and
//! CI have; the test fails, saying so, without it.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use refuge_tests::{Cluster, noise, run};

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: PathBuf, size: &str) -> Self {
        fs::create_dir_all(&at).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "cannot mount a tmpfs at {} (this test needs root)",
            at.display()
        );
        Tmpfs(at)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// An ext4 of `mib` MiB in an image file, mounted through a loop device
/// for the test, unmounted when dropped.
struct Ext4(PathBuf);

impl Ext4 {
    fn mount(at: PathBuf, mib: u64) -> Self {
        let image = at.with_extension("img");
        fs::File::create(&image)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        let st = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&image)
            .status()
            .unwrap();
        assert!(st.success(), "mkfs.ext4 {} failed", image.display());
        fs::create_dir_all(&at).unwrap();
        let st = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&at)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "cannot mount {} on a loop device (this test needs root)",
            image.display()
        );
        Ext4(at)
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        // Not lazy: the loop device is released only once unmounted.
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Bytes of `path` in the page cache (`fincore`).
fn resident_bytes(path: &std::path::Path) -> u64 {
    let o = Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .arg(path)
        .output()
        .unwrap();
    assert!(o.status.success(), "fincore: {:?}", o);
    String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
}

#[test]
fn a_restore_onto_a_full_disk_fails_naming_the_file_and_leaves_the_target_as_it_was() {
    let c = Cluster::start();
    let src = c.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.txt"), b"small").unwrap();
    // Large (written by several workers, past the page cache), of a size
    // that is no multiple of a block, with a hole in the middle.
    let (head, tail) = (noise(20 << 20, 91), noise((10 << 20) + 777, 92));
    let big = [&head[..], &vec![0u8; 8 << 20], &tail].concat();
    {
        use std::os::unix::fs::FileExt;
        let f = fs::File::create(src.join("big.bin")).unwrap();
        f.write_all_at(&head, 0).unwrap();
        f.write_all_at(&tail, 28 << 20).unwrap();
    }
    // Another large file right after it: groups (16 MiB) span the end of
    // one and the start of the other, so a worker switches files mid-group.
    fs::write(src.join("big2.bin"), noise((5 << 20) + 5, 93)).unwrap();
    let agent = c.backed_up_agent(&[("data", &src, "tree")]);

    // 24 MiB of file system cannot take 35 MiB of data.
    let small = Ext4::mount(c.path().join("small"), 24);
    let out = small.0.join("out");
    fs::create_dir_all(&out).unwrap();
    fs::write(out.join("big.bin"), b"the file that was there").unwrap();
    let free_before = free_mib(&small.0);
    let r = c
        .restore_latest(&agent, &out)
        .fails(1, "No space left on device");
    // Either large file may be the one being written when space runs out.
    assert!(
        r.stderr.contains("restoring big.bin") || r.stderr.contains("restoring big2.bin"),
        "{}",
        r.stderr
    );
    assert_eq!(
        refuge_tests::restore_temporaries(&out),
        Vec::<String>::new()
    );
    assert_eq!(
        fs::read(out.join("big.bin")).unwrap(),
        b"the file that was there"
    );
    assert!(
        free_mib(&small.0) + 1 >= free_before,
        "the failed restore left space taken"
    );
    drop(small);

    // Where it fits: the same bytes, the hole sparse, and the large file's
    // blocks not in the page cache (they were written with O_DIRECT).
    let roomy = Ext4::mount(c.path().join("roomy"), 96);
    let out = roomy.0.join("out");
    c.restore_latest(&agent, &out).ok();
    let restored = out.join("big.bin");
    for f in ["big.bin", "big2.bin"] {
        let cached = resident_bytes(&out.join(f));
        assert!(
            cached < 1 << 20,
            "{cached} bytes of the restored {f} are in the page cache"
        );
    }
    use std::os::unix::fs::MetadataExt;
    let allocated = fs::metadata(&restored).unwrap().blocks() * 512;
    assert!(
        allocated < (big.len() as u64) - (6 << 20),
        "the hole was written: {allocated} bytes allocated"
    );
    assert_eq!(fs::read(&restored).unwrap(), big);
    refuge_tests::assert_same_tree(&src, &out);
    drop(roomy);
}

/// Puts the node's store (not yet started) on a tmpfs of `size` with a
/// reserve of `reserve_mib`, free space checked every second, small
/// RocksDB buffers (memtables of 8 MiB), and flushes through `O_DIRECT`
/// or not.
fn store_on_tmpfs(c: &Cluster, size: &str, reserve_mib: u64, direct_io: bool) -> Tmpfs {
    let disk = Tmpfs::mount(c.path().join("disk"), size);
    let toml = fs::read_to_string(c.path().join("node.toml"))
        .unwrap()
        .replace("data_dir = \"store\"", "data_dir = \"disk/store\"")
        + &format!(
            "[health]\nmin_free_mib = {reserve_mib}\ncheck_interval_secs = 1\n[rocksdb]\nchunk_write_buffer_mib = 8\nblock_cache_mib = 8\ndirect_io = {direct_io}\n"
        );
    fs::write(c.path().join("node.toml"), toml).unwrap();
    disk
}

#[test]
fn a_disk_filled_mid_backup_refuses_ingest_clearly_keeps_restores_and_recovers() {
    filled_mid_backup(false);
}

/// The same with the store's flushes written through `O_DIRECT`.
#[test]
fn a_disk_filled_mid_backup_with_direct_io_refuses_clearly_and_recovers() {
    filled_mid_backup(true);
}

fn filled_mid_backup(direct_io: bool) {
    let mut c = Cluster::configured("");
    // The store on the small file system; a reserve of 40 MiB, more than
    // what RocksDB writes between two batches (the WAL, then blob files
    // when a memtable of 8 MiB is flushed, and the batches in flight).
    let disk = store_on_tmpfs(&c, "200m", 40, direct_io);
    c.start_node();
    assert_io_mode(&c, direct_io);
    let src = c.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("first.txt"), b"backed up before the disk filled").unwrap();
    let agent = c.default_agent(&[("data", &src, "tree")]);
    let a = agent.to_str().unwrap();
    run("refuge-agent", c.path(), &["-c", a, "backup"]).ok();
    let probe = c.client(&["--role", "auditor", "--name", "probe"]);
    assert_eq!(c.health(&probe, "refuge.v1.Ingest"), "SERVING");

    // Something else takes most of the disk, then a backup bigger than
    // what is left (incompressible) runs into the reserve.
    fs::write(disk.0.join("filler"), vec![7u8; 90 << 20]).unwrap();
    for i in 0..6 {
        fs::write(src.join(format!("big{i}.bin")), noise(16 << 20, 500 + i)).unwrap();
    }
    let r = run("refuge-agent", c.path(), &["-c", a, "backup"]).fails(1, "nearly full");
    assert!(r.stderr.contains("min_free_mib"), "{}", r.stderr);
    let t = Instant::now();
    while c.health(&probe, "refuge.v1.Ingest") != "NOT_SERVING" {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "ingest still SERVING"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(c.health(&probe, "refuge.v1.Restore"), "SERVING");
    // Nothing half committed, the earlier snapshot restores, nothing is
    // damaged.
    let snaps = run("refuge", c.path(), &["-c", a, "snapshots", "--json"])
        .ok()
        .json();
    assert_eq!(snaps.as_array().unwrap().len(), 1);
    let out = c.path().join("out");
    c.restore_latest(&agent, &out).ok();
    assert_eq!(
        fs::read(out.join("first.txt")).unwrap(),
        b"backed up before the disk filled"
    );
    let admin = c.client(&["--role", "admin", "--name", "root1"]);
    c.assert_verify_clean(&admin);

    // Space is freed: ingest serves again by itself and the backup (which
    // resumes from its checkpoint) completes.
    fs::remove_file(disk.0.join("filler")).unwrap();
    let t = Instant::now();
    while c.health(&probe, "refuge.v1.Ingest") != "SERVING" {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "ingest did not come back"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    run("refuge-agent", c.path(), &["-c", a, "backup"]).ok();
    let out2 = c.path().join("out2");
    c.restore_latest(&agent, &out2).ok();
    refuge_tests::assert_same_tree(&src, &out2);
    c.stop_node();
    drop(disk);
}

/// The node's "store open" line names the I/O mode it opened with.
fn assert_io_mode(c: &Cluster, direct_io: bool) {
    let want = if direct_io {
        "rocksdb, direct I/O"
    } else {
        "rocksdb, buffered I/O"
    };
    let t = Instant::now();
    while !c.node_log().contains(want) {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the node log does not say {want:?}:\n{}",
            c.node_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn free_mib(dir: &std::path::Path) -> u64 {
    let o = Command::new("df")
        .args(["-m", "--output=avail"])
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap()
}

/// The `LD_PRELOAD` shim (`tests/syncshim`), built beside the binaries.
fn shim() -> PathBuf {
    let p = refuge_tests::bin("refuged")
        .parent()
        .unwrap()
        .join("librefuge_syncshim.so");
    assert!(
        p.exists(),
        "{} not found; build it with `cargo build --workspace --bins --lib`",
        p.display()
    );
    p
}

#[test]
fn a_disk_that_fills_inside_the_store_refuses_clearly_and_recovers_without_a_restart() {
    fills_inside_the_store(false);
}

/// The same with the failing flush written through `O_DIRECT`.
#[test]
fn a_disk_that_fills_inside_a_direct_io_flush_refuses_clearly_and_recovers() {
    fills_inside_the_store(true);
}

fn fills_inside_the_store(direct_io: bool) {
    let mut c = Cluster::configured("");
    // The store on a small file system with a reserve of 8 MiB. While the
    // flag exists, the shim fails every write to a table or blob file
    // with ENOSPC: the next memtable flush (8 MiB) fails inside RocksDB,
    // which then stops all writes until it is reopened. (On a real disk
    // that race is won by the batch check most of the time, so the test
    // would not be repeatable.)
    let disk = store_on_tmpfs(&c, "300m", 8, direct_io);
    let flag = c.path().join("enospc");
    let lib = shim();
    c.start_node_env(&[
        ("LD_PRELOAD", lib.to_str().unwrap()),
        ("REFUGE_ENOSPC_FLAG", flag.to_str().unwrap()),
    ]);
    assert_io_mode(&c, direct_io);
    let src = c.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("first.txt"), b"backed up before the disk filled").unwrap();
    let agent = c.default_agent(&[("data", &src, "tree")]);
    let a = agent.to_str().unwrap();
    run("refuge-agent", c.path(), &["-c", a, "backup"]).ok();
    let probe = c.client(&["--role", "auditor", "--name", "probe"]);

    // 20 MiB free: above the reserve (uploads pass the batch check),
    // below what the node wants before it reopens a stopped store
    // (reserve + 64 MiB + its write-ahead logs).
    let free = free_mib(&disk.0);
    fs::write(
        disk.0.join("filler"),
        vec![7u8; ((free - 20) << 20) as usize],
    )
    .unwrap();
    for i in 0..4 {
        fs::write(src.join(format!("big{i}.bin")), noise(16 << 20, 700 + i)).unwrap();
    }
    fs::write(&flag, b"").unwrap();
    let r = run("refuge-agent", c.path(), &["-c", a, "backup"]).fails(1, "once space is freed");
    assert!(r.stderr.contains("No space left on device"), "{}", r.stderr);
    // Ingest stops: health and the audit log say why, the next backup is
    // refused at once, restores keep working, nothing half made is listed.
    refuge_tests::wait_for(
        "ingest NOT_SERVING",
        || c.health(&probe, "refuge.v1.Ingest") == "NOT_SERVING",
        || format!("backup: {}\nnode log:\n{}", r.stderr, c.node_log()),
    );
    assert!(
        c.node_log().contains("store_writes_stopped"),
        "{}",
        c.node_log()
    );
    run("refuge-agent", c.path(), &["-c", a, "backup"]).fails(1, "once space is freed");
    assert_eq!(c.health(&probe, "refuge.v1.Restore"), "SERVING");
    assert_eq!(c.snapshots(&agent).len(), 1, "a half snapshot is listed");
    let out = c.path().join("out");
    c.restore_latest(&agent, &out).ok();
    assert_eq!(
        fs::read(out.join("first.txt")).unwrap(),
        b"backed up before the disk filled"
    );
    // Still stopped a few checks later: not enough room to reopen.
    std::thread::sleep(Duration::from_secs(2));
    assert!(!c.node_log().contains("store_reopened"), "{}", c.node_log());

    // Space is freed: the node reopens its store by itself (the WAL is
    // replayed), ingest serves, and the backup completes and restores
    // byte for byte; verification finds nothing damaged.
    fs::remove_file(&flag).unwrap();
    fs::remove_file(disk.0.join("filler")).unwrap();
    refuge_tests::wait_for(
        "ingest SERVING again",
        || c.health(&probe, "refuge.v1.Ingest") == "SERVING",
        || c.node_log(),
    );
    assert!(c.node_log().contains("store_reopened"), "{}", c.node_log());
    let r = run("refuge-agent", c.path(), &["-c", a, "backup"]).ok();
    assert!(
        !r.stderr.contains("cannot read the parent"),
        "a cut-short checkpoint was reported as a broken parent: {}",
        r.stderr
    );
    let out2 = c.path().join("out2");
    c.restore_latest(&agent, &out2).ok();
    refuge_tests::assert_same_tree(&src, &out2);
    let admin = c.client(&["--role", "admin", "--name", "root1"]);
    c.assert_verify_clean(&admin);
    c.stop_node();
    drop(disk);
}
