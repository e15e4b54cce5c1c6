//! A source's `pre` and `post` hooks and a source read from a filesystem
//! snapshot made for its backup: a btrfs subvolume on a real btrfs
//! filesystem (a loop device the test makes and removes), and the clear
//! errors for what cannot be snapshotted (no btrfs tool, not a subvolume,
//! not an LVM logical volume: this machine has no device-mapper).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use refuge_tests::{Cluster, assert_same_tree, run, run_env};

/// A fresh btrfs filesystem on a loop device, mounted; unmounted and
/// removed at drop.
struct Btrfs {
    img: PathBuf,
    mnt: PathBuf,
}

fn sh(cmd: &str) -> String {
    let o = Command::new("sh").args(["-c", cmd]).output().unwrap();
    assert!(
        o.status.success(),
        "{cmd}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

impl Btrfs {
    fn new(dir: &Path) -> Btrfs {
        let img = dir.join("btrfs.img");
        let mnt = dir.join("btrfs");
        fs::create_dir_all(&mnt).unwrap();
        sh(&format!(
            "truncate -s 300M {0} && mkfs.btrfs -q {0} >/dev/null && mount -o loop {0} {1}",
            img.display(),
            mnt.display()
        ));
        Btrfs { img, mnt }
    }

    fn subvolumes(&self) -> String {
        sh(&format!("btrfs subvolume list {}", self.mnt.display()))
    }
}

impl Drop for Btrfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
        let _ = fs::remove_file(&self.img);
    }
}

/// The agent config with one source `data` and `extra` lines in its
/// `[[source]]` table.
fn config(c: &Cluster, name: &str, path: &Path, extra: &str) -> PathBuf {
    let base = c.default_agent(&[]);
    let text = fs::read_to_string(&base).unwrap();
    let p = c.path().join(name);
    fs::write(
        &p,
        format!(
            "{text}\n[[source]]\nname = \"data\"\npath = \"{}\"\n{extra}\n",
            path.display()
        ),
    )
    .unwrap();
    p
}

fn backup(c: &Cluster, cfg: &Path) -> refuge_tests::Run {
    run(
        "refuge-agent",
        c.path(),
        &["-c", cfg.to_str().unwrap(), "backup", "--json"],
    )
}

#[test]
fn a_source_read_from_a_btrfs_snapshot_runs_its_hooks_and_leaves_nothing_behind() {
    let c = Cluster::start();
    let fs_ = Btrfs::new(c.path());
    let data = fs_.mnt.join("data");
    sh(&format!(
        "btrfs subvolume create {} >/dev/null",
        data.display()
    ));
    fs::create_dir_all(data.join("sub")).unwrap();
    fs::write(data.join("a.txt"), b"alpha").unwrap();
    fs::write(data.join("sub/b.bin"), refuge_tests::noise(3 << 20, 7)).unwrap();
    let log = c.path().join("hooks.log");
    let hooks = format!(
        "pre = \"echo pre $REFUGE_SOURCE $REFUGE_SOURCE_PATH >> {0}\"\npost = \"echo post $REFUGE_BACKUP_RESULT >> {0}\"\n",
        log.display()
    );
    // A snapshot a killed backup left behind is ours: replaced.
    sh(&format!(
        "btrfs subvolume snapshot -r {} {} >/dev/null",
        data.display(),
        fs_.mnt.join(".refuge-snapshot-data").display()
    ));
    let cfg = config(
        &c,
        "btrfs.toml",
        &data,
        &format!("snapshot = \"btrfs\"\n{hooks}"),
    );
    let r = backup(&c, &cfg).ok().json();
    let read_from = r[0]["read_from"].as_str().unwrap();
    assert!(read_from.ends_with(".refuge-snapshot-data"), "{r:#}");
    assert_eq!(r[0]["files"], 2, "{r:#}");
    assert_eq!(
        fs::read_to_string(&log).unwrap(),
        format!("pre data {}\npost ok\n", data.display())
    );
    // The snapshot is gone, the subvolume stays, the restore matches.
    let subs = fs_.subvolumes();
    assert!(!subs.contains(".refuge-snapshot"), "{subs}");
    assert!(subs.contains("path data"), "{subs}");
    let target = c.path().join("restored");
    c.restore_latest(&cfg, &target).ok();
    assert_same_tree(&data, &target);

    // A pre hook that fails: no backup, no snapshot left, and post runs
    // with the failure.
    fs::remove_file(&log).unwrap();
    let failing = config(
        &c,
        "pre-fails.toml",
        &data,
        &format!(
            "snapshot = \"btrfs\"\npre = \"echo frozen-not >&2; exit 3\"\npost = \"echo post $REFUGE_BACKUP_RESULT >> {}\"\n",
            log.display()
        ),
    );
    backup(&c, &failing).fails(1, "pre hook `echo frozen-not >&2; exit 3` exited 3");
    assert_eq!(fs::read_to_string(&log).unwrap(), "post failed\n");
    assert_eq!(c.snapshots(&cfg).len(), 1);
    assert!(!fs_.subvolumes().contains(".refuge-snapshot"));

    // A hook that hangs is killed at its timeout.
    let slow = config(
        &c,
        "slow.toml",
        &data,
        "pre = \"sleep 30\"\nhook_timeout_secs = 1\n",
    );
    backup(&c, &slow).fails(1, "was killed");

    // A post hook that fails after a committed snapshot: a warning (exit 3).
    let post_fails = config(&c, "post-fails.toml", &data, "post = \"exit 9\"\n");
    let r = backup(&c, &post_fails);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.json()[0]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("post hook `exit 9` exited 9")
    );
    assert_eq!(c.snapshots(&cfg).len(), 2);

    // Not a subvolume: btrfs says so, nothing is backed up.
    let plain = config(
        &c,
        "not-subvolume.toml",
        &data.join("sub"),
        "snapshot = \"btrfs\"\n",
    );
    backup(&c, &plain).fails(1, "Not a Btrfs subvolume");
    // No btrfs tool on this PATH.
    let bare = config(&c, "bare.toml", &data, "snapshot = \"btrfs\"\n");
    let o = run_env(
        "refuge-agent",
        c.path(),
        &["-c", bare.to_str().unwrap(), "backup"],
        &[("PATH", "/nonexistent")],
    );
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(
        o.stderr.contains(
            "needs `btrfs`, which is not installed (Debian: apt-get install btrfs-progs)"
        ),
        "{}",
        o.stderr
    );
    // LVM: a directory that is not a mount point, and a mount point whose
    // device is not a logical volume (here a loop device, and no
    // device-mapper at all).
    let lvm = config(
        &c,
        "lvm-dir.toml",
        &data,
        "snapshot = \"lvm\"\nsnapshot_size = \"64M\"\n",
    );
    backup(&c, &lvm).fails(1, "is not a mount point");
    let lvm = config(
        &c,
        "lvm-loop.toml",
        &fs_.mnt,
        "snapshot = \"lvm\"\nsnapshot_size = \"64M\"\n",
    );
    backup(&c, &lvm).fails(1, "is not an LVM logical volume");
    assert_eq!(c.snapshots(&cfg).len(), 2);
    assert!(!fs_.subvolumes().contains(".refuge-snapshot"));
}
