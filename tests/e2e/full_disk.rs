//! A full disk (issue 6, item 4): the node's store on a small tmpfs of its
//! own, filled in the middle of a backup. Ingest refuses with a clear
//! RESOURCE_EXHAUSTED before the file system is full, health says ingest
//! NOT_SERVING, restores keep working, verification finds nothing
//! damaged, and ingest comes back by itself when space is freed.
//!
//! Needs root (mount -t tmpfs), which the test machines and CI have; the
//! test fails, saying so, without it.

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

fn health(c: &Cluster, cfg: &str, service: &str) -> String {
    let r = run(
        "refuge",
        c.path(),
        &["-c", cfg, "health", "--json", "--service", service],
    );
    r.json()[0]["status"].as_str().unwrap().to_string()
}

#[test]
fn a_disk_filled_mid_backup_refuses_ingest_clearly_keeps_restores_and_recovers() {
    let mut c = Cluster::configured("");
    let disk = Tmpfs::mount(c.path().join("disk"), "200m");
    // The store on the small file system; a reserve of 40 MiB, more than
    // what RocksDB writes between two batches (the WAL, then blob files
    // when a memtable of 8 MiB is flushed, and the batches in flight).
    let toml = fs::read_to_string(c.path().join("node.toml"))
        .unwrap()
        .replace("data_dir = \"store\"", "data_dir = \"disk/store\"")
        + "[health]\nmin_free_mib = 40\ncheck_interval_secs = 1\n[rocksdb]\nchunk_write_buffer_mib = 8\nblock_cache_mib = 8\n";
    fs::write(c.path().join("node.toml"), toml).unwrap();
    c.start_node();
    let src = c.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("first.txt"), b"backed up before the disk filled").unwrap();
    let agent = c.default_agent(&[("data", &src, "tree")]);
    let a = agent.to_str().unwrap();
    run("refuge-agent", c.path(), &["-c", a, "backup"]).ok();
    let probe = c.client(&["--role", "auditor", "--name", "probe"]);
    let p = probe.to_str().unwrap();
    assert_eq!(health(&c, p, "refuge.v1.Ingest"), "SERVING");

    // Something else takes most of the disk, then a backup bigger than
    // what is left (incompressible) runs into the reserve.
    fs::write(disk.0.join("filler"), vec![7u8; 90 << 20]).unwrap();
    for i in 0..6 {
        fs::write(src.join(format!("big{i}.bin")), noise(16 << 20, 500 + i)).unwrap();
    }
    let r = run("refuge-agent", c.path(), &["-c", a, "backup"]).fails(1, "nearly full");
    assert!(r.stderr.contains("min_free_mib"), "{}", r.stderr);
    let t = Instant::now();
    while health(&c, p, "refuge.v1.Ingest") != "NOT_SERVING" {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "ingest still SERVING"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(health(&c, p, "refuge.v1.Restore"), "SERVING");
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
    let v = run(
        "refuge",
        c.path(),
        &["-c", admin.to_str().unwrap(), "admin", "verify"],
    )
    .ok();
    assert!(v.stdout.contains("no damage found"), "{}", v.stdout);

    // Space is freed: ingest serves again by itself and the backup (which
    // resumes from its checkpoint) completes.
    fs::remove_file(disk.0.join("filler")).unwrap();
    let t = Instant::now();
    while health(&c, p, "refuge.v1.Ingest") != "SERVING" {
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
