//! The named fail points of the store (issue 6, item 1): the node crashes
//! (or fails with an I/O error) exactly at each dangerous step of a commit,
//! a deletion and garbage collection. After a restart the catalog holds
//! the whole snapshot or none of it, nothing listed is damaged, and the
//! interrupted work completes when it is run again.
//!
//! They need the test build (`--features refuged/failpoints`, what
//! `scripts/test.sh` builds); a build without fail points refuses to start
//! with `REFUGE_FAILPOINTS` set, so these tests cannot pass by accident.

use std::fs;
use std::path::{Path, PathBuf};

use refuge_tests::{Cluster, assert_same_tree, copy_tree, noise, run};

/// A node with fast garbage collection, its default agent (one try per
/// backup) backing up `src` as source `data`, and an admin client.
fn setup(extra: &str) -> (Cluster, PathBuf, PathBuf, PathBuf) {
    let c = Cluster::configured(&format!("[gc]\ngrace_secs = 0\n{extra}"));
    let src = c.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    generation(&src, 0);
    let agent = c.default_agent(&[("data", &src, "tree")]);
    let text = fs::read_to_string(&agent)
        .unwrap()
        .replace("[chunking]", "[limits]\nretries = 0\n\n[chunking]");
    fs::write(&agent, text).unwrap();
    let admin = c.client(&["--role", "admin", "--name", "root1"]);
    (c, src, agent, admin)
}

/// Rewrites the tree with content unique to generation `g`.
fn generation(src: &Path, g: u64) {
    for i in 0..3u64 {
        fs::write(
            src.join(format!("f{i}.bin")),
            noise(600_000 + 1000 * i as usize, 100 * g + i),
        )
        .unwrap();
    }
    fs::write(src.join("sub/note.txt"), format!("generation {g}\n")).unwrap();
}

fn backup(c: &Cluster, agent: &Path) -> refuge_tests::Run {
    run(
        "refuge-agent",
        c.path(),
        &["-c", agent.to_str().unwrap(), "backup"],
    )
}

fn fail_env(spec: &str) -> [(&str, &str); 1] {
    [("REFUGE_FAILPOINTS", spec)]
}

/// Runs `work` against a node started with fail point `spec` set to crash,
/// checks that the node died there, and restarts it without fail points.
fn crash_at(c: &mut Cluster, point: &str, work: impl FnOnce(&Cluster) -> refuge_tests::Run) {
    c.start_node_env(&fail_env(&format!("{point}=return(crash)")));
    let r = work(c);
    assert_ne!(r.code, 0, "the work finished although the node crashed");
    let st = c.wait_node_exit();
    assert!(!st.success(), "{st}");
    let log = c.node_log();
    assert!(
        log.contains(&format!("fail point {point}: crashing")),
        "the node did not crash at {point}:\n{log}"
    );
    c.start_node();
}

#[test]
fn a_crash_at_any_step_of_a_commit_leaves_no_snapshot_or_the_whole_one() {
    for (point, durable) in [
        ("store.put.after_write", false),
        ("store.commit.before_wal_sync", false),
        ("store.commit.after_wal_sync", false),
        ("store.commit.after_record", true),
    ] {
        let (mut c, src, agent, admin) = setup("");
        crash_at(&mut c, point, |c| backup(c, &agent));
        let listed = c.snapshots(&agent);
        let restored = c.path().join("restored");
        if durable {
            // The record was durable before the crash: the snapshot is
            // whole although its acknowledgement was lost.
            assert_eq!(listed.len(), 1, "{point}: {listed:?}");
            c.restore_latest(&agent, &restored).ok();
            assert_same_tree(&src, &restored);
            fs::remove_dir_all(&restored).unwrap();
        } else {
            assert!(listed.is_empty(), "{point}: {listed:?}");
        }
        c.assert_verify_clean(&admin);
        // The next backup completes and restores byte for byte.
        generation(&src, 1);
        backup(&c, &agent).ok();
        assert_eq!(c.snapshots(&agent).len(), listed.len() + 1, "{point}");
        c.restore_latest(&agent, &restored).ok();
        assert_same_tree(&src, &restored);
        c.assert_verify_clean(&admin);
    }
}

#[test]
fn an_injected_io_error_in_a_commit_fails_that_backup_clearly_and_the_next_succeeds() {
    let (mut c, src, agent, admin) = setup("");
    // The first WAL sync of a commit fails; later ones work.
    c.start_node_env(&fail_env("store.commit.after_wal_sync=1*return(error)"));
    backup(&c, &agent).fails(1, "injected I/O error");
    assert!(c.snapshots(&agent).is_empty());
    backup(&c, &agent).ok();
    let restored = c.path().join("restored");
    c.restore_latest(&agent, &restored).ok();
    assert_same_tree(&src, &restored);
    c.assert_verify_clean(&admin);
}

/// Two snapshots, the first made garbage by a retention policy of one:
/// returns the generation-1 copy the survivor must restore to.
fn two_generations(c: &mut Cluster, src: &Path, agent: &Path, admin: &Path) -> PathBuf {
    c.start_node();
    backup(c, agent).ok();
    generation(src, 1);
    backup(c, agent).ok();
    let want = c.path().join("gen1");
    copy_tree(src, &want);
    // Garbage collection first drops the listing every new chunk gets at
    // upload, so that only what the prune lists is collected afterwards.
    assert_eq!(gc_deleted(c, admin), 0);
    c.keep_last(admin, "finance", 1);
    c.stop_node();
    want
}

fn gc_deleted(c: &Cluster, admin: &Path) -> u64 {
    c.refuge(admin, &["admin", "gc", "--json"]).ok().json()["deleted"]
        .as_u64()
        .unwrap()
}

#[test]
fn a_crash_during_prune_or_garbage_collection_loses_nothing_and_the_space_is_still_freed() {
    for point in [
        "store.delete.after_write",
        "store.gc.before_batch",
        "store.gc.after_batch",
    ] {
        let (mut c, src, agent, admin) = setup("");
        let want = two_generations(&mut c, &src, &agent, &admin);
        if point.starts_with("store.delete") {
            crash_at(&mut c, point, |c| c.refuge(&admin, &["admin", "prune"]));
        } else {
            c.start_node();
            c.refuge(&admin, &["admin", "prune"]).ok();
            c.stop_node();
            crash_at(&mut c, point, |c| c.refuge(&admin, &["admin", "gc"]));
        }
        // The deletion was synced before the crash: one snapshot is left,
        // and it restores byte for byte.
        let listed = c.snapshots(&agent);
        assert_eq!(listed.len(), 1, "{point}: {listed:?}");
        let restored = c.path().join("restored");
        c.restore_latest(&agent, &restored).ok();
        assert_same_tree(&want, &restored);
        fs::remove_dir_all(&restored).unwrap();
        c.assert_verify_clean(&admin);
        // Running the interrupted work again frees the first generation's
        // chunks (three files of about 600 kB, so at least three chunks),
        // unless the crashed batch was written and survived.
        c.refuge(&admin, &["admin", "prune"]).ok();
        let deleted = gc_deleted(&c, &admin);
        if point == "store.gc.after_batch" {
            // The batch was written (without a sync) before the crash.
            assert!(deleted == 0 || deleted >= 3, "{point}: {deleted}");
        } else {
            assert!(
                deleted >= 3,
                "{point}: garbage collection deleted {deleted}"
            );
        }
        assert_eq!(gc_deleted(&c, &admin), 0, "{point}: a second pass");
        c.restore_latest(&agent, &restored).ok();
        assert_same_tree(&want, &restored);
        c.assert_verify_clean(&admin);
        // And backups go on.
        generation(&src, 2);
        backup(&c, &agent).ok();
    }
}

#[test]
fn an_injected_io_error_in_garbage_collection_is_reported_and_the_next_run_finishes() {
    let (mut c, src, agent, admin) = setup("");
    let want = two_generations(&mut c, &src, &agent, &admin);
    c.start_node_env(&fail_env("store.gc.before_batch=1*return(error)"));
    c.refuge(&admin, &["admin", "prune"]).ok();
    c.refuge(&admin, &["admin", "gc"])
        .fails(1, "injected I/O error");
    assert!(gc_deleted(&c, &admin) >= 3);
    let restored = c.path().join("restored");
    c.restore_latest(&agent, &restored).ok();
    assert_same_tree(&want, &restored);
    c.assert_verify_clean(&admin);
}

#[test]
fn fail_points_that_do_not_exist_or_do_not_parse_stop_the_node_at_start() {
    let c = Cluster::configured("");
    for (spec, needle) in [
        (
            "store.nowhere=return(crash)",
            "no fail point \"store.nowhere\"",
        ),
        ("store.gc.after_batch", "not name=actions"),
    ] {
        let r = refuge_tests::run_env(
            "refuged",
            c.path(),
            &["--config", "node.toml"],
            &fail_env(spec),
        );
        assert_eq!(r.code, 2, "{spec}: {}", r.stderr);
        assert!(r.stderr.contains(needle), "{spec}: {}", r.stderr);
    }
}
