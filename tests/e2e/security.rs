//! Roles, tenant isolation, revocation and the tamper-evident audit log,
//! each against a real node over real mutual TLS with certificates issued
//! by `refuge certs issue --role`.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use refuge_client::{Node, connect, load_config};
use refuge_core::{ChunkId, compress_chunk};
use refuge_proto::pb;
use refuge_tests::{Cluster, assert_same_tree, noise, run};
use tonic::Code;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

async fn node(cfg: &Path) -> Node {
    connect(&load_config(cfg).unwrap().node).await.unwrap()
}

fn tree(root: &Path, seed: u64) {
    fs::create_dir_all(root.join("sub")).unwrap();
    fs::write(root.join("marker.txt"), format!("tenant data {seed}")).unwrap();
    fs::write(root.join("sub/blob.bin"), noise(3 << 20, seed)).unwrap();
}

/// Two tenants with one snapshot each, and a certificate per role.
struct World {
    c: Cluster,
    finance: PathBuf,
    hr: PathBuf,
    operator: PathBuf,
    operator_both: PathBuf,
    admin: PathBuf,
    auditor: PathBuf,
    replica: PathBuf,
    src_finance: PathBuf,
}

fn world() -> World {
    let c = Cluster::start();
    let src_finance = c.path().join("src-finance");
    let src_hr = c.path().join("src-hr");
    tree(&src_finance, 1);
    tree(&src_hr, 2);
    let finance = c.default_agent(&[("data", &src_finance, "tree")]);
    c.client(&["--tenant", "hr", "--host", "web1"]);
    let hr = c.agent_config(
        "hr.toml",
        "certs/hr-web1",
        "certs/ca.pem",
        &[("data", &src_hr, "tree")],
    );
    for cfg in [&finance, &hr] {
        run(
            "refuge-agent",
            c.path(),
            &["-c", cfg.to_str().unwrap(), "backup"],
        )
        .ok();
    }
    World {
        operator: c.client(&[
            "--role", "operator", "--tenant", "finance", "--name", "ops1",
        ]),
        operator_both: c.client(&[
            "--role", "operator", "--tenant", "finance", "--tenant", "hr", "--name", "ops2",
        ]),
        admin: c.client(&["--role", "admin", "--name", "root1"]),
        auditor: c.client(&["--role", "auditor", "--name", "aud1"]),
        // A peer node: admitted to the replication RPCs only.
        replica: c.client(&["--role", "replica", "--host", "peer", "--all-tenants"]),
        c,
        finance,
        hr,
        src_finance,
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Call {
    FindMissing,
    PutChunks,
    Commit,
    List,
    Resolve,
    GetChunks,
    ReadAudit,
    Prune,
    SetRetention,
    Gc,
    RecordDrill,
    ListDrills,
    Status,
    ReportFailure,
    StartDrill,
    DrillReport,
}

impl Call {
    const ALL: [Call; 16] = [
        Call::FindMissing,
        Call::PutChunks,
        Call::Commit,
        Call::List,
        Call::Resolve,
        Call::GetChunks,
        Call::ReadAudit,
        Call::Prune,
        Call::SetRetention,
        Call::Gc,
        Call::RecordDrill,
        Call::ListDrills,
        Call::Status,
        Call::ReportFailure,
        Call::StartDrill,
        Call::DrillReport,
    ];

    fn rpc(self) -> &'static str {
        match self {
            Call::FindMissing => "FindMissing",
            Call::PutChunks => "PutChunks",
            Call::Commit => "CommitSnapshot",
            Call::List => "ListSnapshots",
            Call::Resolve => "ResolveSnapshot",
            Call::GetChunks => "GetChunks",
            Call::ReadAudit => "ReadAudit",
            Call::Prune => "Prune",
            Call::SetRetention => "SetRetention",
            Call::Gc => "CollectGarbage",
            Call::RecordDrill => "RecordDrill",
            Call::ListDrills => "ListDrills",
            Call::Status => "Status",
            Call::ReportFailure => "ReportBackupFailure",
            Call::StartDrill => "StartDrill",
            Call::DrillReport => "GetDrillReport",
        }
    }

    /// Makes the call with a request that names tenant finance where a
    /// tenant is asked for.
    async fn make(self, n: &Node, probe: &[u8]) -> Result<(), tonic::Status> {
        let id = ChunkId::of(probe);
        match self {
            Call::FindMissing => {
                n.ingest
                    .clone()
                    .find_missing(pb::FindMissingRequest {
                        ids: vec![id.0.to_vec()],
                    })
                    .await?;
            }
            Call::PutChunks => {
                let up = refuge_proto::upload_to(&id, compress_chunk(probe, 1));
                n.ingest
                    .clone()
                    .put_chunks(futures::stream::iter(vec![up]))
                    .await?;
            }
            Call::Commit => {
                n.ingest
                    .clone()
                    .commit_snapshot(pb::CommitSnapshotRequest {
                        source: "data".into(),
                        kind: pb::SourceKind::Tree as i32,
                        manifest: vec![pb::ChunkRef {
                            id: id.0.to_vec(),
                            len: probe.len() as u32,
                        }],
                        ..Default::default()
                    })
                    .await?;
            }
            Call::List => {
                n.restore
                    .clone()
                    .list_snapshots(pb::ListSnapshotsRequest::default())
                    .await?;
            }
            Call::Resolve => {
                n.restore
                    .clone()
                    .resolve_snapshot(pb::ResolveSnapshotRequest {
                        selector: "latest".into(),
                        tenant: "finance".into(),
                        ..Default::default()
                    })
                    .await?;
            }
            Call::GetChunks => {
                let mut s = n
                    .restore
                    .clone()
                    .get_chunks(pb::GetChunksRequest {
                        ids: vec![id.0.to_vec()],
                        tenant: "finance".into(),
                    })
                    .await?
                    .into_inner();
                while s.message().await?.is_some() {}
            }
            Call::ReadAudit => {
                let mut s = n
                    .audit
                    .clone()
                    .read_audit(pb::ReadAuditRequest::default())
                    .await?
                    .into_inner();
                while s.message().await?.is_some() {}
            }
            // What a compromised agent would want: prune everything but
            // the newest snapshot. Allowed callers (admins) get a dry run.
            Call::Prune => {
                n.admin
                    .clone()
                    .prune(pb::PruneRequest {
                        tenant: "finance".into(),
                        dry_run: n.role == "admin",
                    })
                    .await?;
            }
            Call::SetRetention => {
                let attack = n.role != "admin";
                n.admin
                    .clone()
                    .set_retention(pb::SetRetentionRequest {
                        tenant: "finance".into(),
                        policy: attack.then_some(pb::RetentionPolicy {
                            keep_last: 1,
                            ..Default::default()
                        }),
                        reset: !attack,
                    })
                    .await?;
            }
            Call::Gc => {
                n.admin
                    .clone()
                    .collect_garbage(pb::CollectGarbageRequest {})
                    .await?;
            }
            // A forged drill record of a snapshot that does not exist.
            Call::RecordDrill => {
                n.supervision
                    .clone()
                    .record_drill(pb::RecordDrillRequest {
                        result: Some(pb::DrillResult {
                            tenant: "finance".into(),
                            snapshot_id: vec![7; 32],
                            passed: true,
                            ..Default::default()
                        }),
                    })
                    .await?;
            }
            Call::ListDrills => {
                n.supervision
                    .clone()
                    .list_drills(pb::ListDrillsRequest::default())
                    .await?;
            }
            Call::Status => {
                n.supervision
                    .clone()
                    .status(pb::StatusRequest::default())
                    .await?;
            }
            // This node has no [drill] identity: allowed callers are told so.
            Call::StartDrill => {
                n.supervision
                    .clone()
                    .start_drill(pb::StartDrillRequest::default())
                    .await?;
            }
            Call::DrillReport => {
                n.supervision
                    .clone()
                    .get_drill_report(pb::GetDrillReportRequest {
                        drill_id: "00".into(),
                    })
                    .await?;
            }
            Call::ReportFailure => {
                n.ingest
                    .clone()
                    .report_backup_failure(pb::ReportBackupFailureRequest {
                        source: "data".into(),
                        error: "forged".into(),
                    })
                    .await?;
            }
        }
        Ok(())
    }
}

#[test]
fn every_rpc_checks_the_role_and_denials_are_audited_and_change_nothing() {
    let w = world();
    use Call::*;
    let table: [(&str, &Path, &[Call]); 5] = [
        (
            "agent",
            w.finance.as_path(),
            &[
                FindMissing,
                PutChunks,
                Commit,
                List,
                Resolve,
                GetChunks,
                RecordDrill,
                ListDrills,
                ReportFailure,
            ],
        ),
        (
            "operator",
            w.operator.as_path(),
            &[List, Resolve, GetChunks, RecordDrill, ListDrills, Status],
        ),
        (
            "admin",
            w.admin.as_path(),
            &[
                List,
                Prune,
                SetRetention,
                Gc,
                ListDrills,
                Status,
                StartDrill,
                DrillReport,
            ],
        ),
        (
            "auditor",
            w.auditor.as_path(),
            &[ReadAudit, ListDrills, Status, StartDrill, DrillReport],
        ),
        ("replica", w.replica.as_path(), &[]),
    ];
    let probe = b"bytes a denied caller tries to store".to_vec();
    let mut denials = Vec::new();
    rt().block_on(async {
        for (role, cfg, allowed) in table {
            let n = node(cfg).await;
            assert_eq!(n.role, role);
            for call in Call::ALL {
                let r = call.make(&n, &probe).await;
                if allowed.contains(&call) {
                    if let Err(s) = &r {
                        assert!(
                            !matches!(s.code(), Code::PermissionDenied | Code::Unauthenticated),
                            "{role} should be allowed {}: {s:?}",
                            call.rpc()
                        );
                    }
                } else {
                    let s = r.expect_err(&format!("{role} must not call {}", call.rpc()));
                    assert_eq!(
                        s.code(),
                        Code::PermissionDenied,
                        "{role} {}: {s:?}",
                        call.rpc()
                    );
                    assert!(
                        s.message().contains(call.rpc()) && s.message().contains(role),
                        "{}",
                        s.message()
                    );
                    denials.push((role, call.rpc()));
                }
            }
        }
        // Nothing changed: two snapshots (the admin sees metadata of every
        // tenant), and what the denied callers tried to store is absent.
        let admin = node(&w.admin).await;
        let snaps = admin
            .restore
            .clone()
            .list_snapshots(pb::ListSnapshotsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .snapshots;
        let mut tenants: Vec<_> = snaps.iter().map(|s| s.tenant.as_str()).collect();
        tenants.sort();
        assert_eq!(tenants, ["finance", "hr"]);
        let policy = admin
            .admin
            .clone()
            .get_retention(pb::GetRetentionRequest {
                tenant: "finance".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(policy.is_default && policy.keep_last == 0, "{policy:?}");
    });
    // The agent's own allowed PutChunks stored the probe; nobody else's
    // denied one did: the other tenant still lacks it.
    rt().block_on(async {
        let hr = node(&w.hr).await;
        let missing = hr
            .ingest
            .clone()
            .find_missing(pb::FindMissingRequest {
                ids: vec![ChunkId::of(&probe).0.to_vec()],
            })
            .await
            .unwrap()
            .into_inner()
            .missing;
        assert_eq!(missing, vec![0]);
    });
    assert_eq!(denials.len(), 7 + 10 + 8 + 11 + 16);
    let log = w.c.audit(&w.auditor);
    for (role, rpc) in &denials {
        assert!(
            log.iter().any(|r| r["event"] == "permission_denied"
                && r["outcome"] == "denied"
                && r["subject"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("{role}:"))
                && r["detail"].as_str().unwrap().contains(rpc)),
            "no audit record of {role} calling {rpc}"
        );
    }
    let n = log
        .iter()
        .filter(|r| r["event"] == "permission_denied")
        .count();
    assert_eq!(n, denials.len(), "one audit record per denial");
    assert!(log.iter().any(|r| r["event"] == "snapshot_committed"));
    run(
        "refuge",
        w.c.path(),
        &["-c", w.auditor.to_str().unwrap(), "audit", "verify"],
    )
    .ok();
    // The CLI names the role too.
    let who = run(
        "refuge",
        w.c.path(),
        &["-c", w.operator.to_str().unwrap(), "whoami", "--json"],
    )
    .ok()
    .json();
    assert_eq!(who["role"], "operator");
    assert_eq!(who["tenants"], serde_json::json!(["finance"]));
    run(
        "refuge",
        w.c.path(),
        &["-c", w.finance.to_str().unwrap(), "audit"],
    )
    .fails(1, "permission denied");
}

/// `s`'s message with `id` replaced by a placeholder.
fn shape(s: &tonic::Status, id: &str) -> (Code, String) {
    (s.code(), s.message().replace(id, "ID"))
}

#[test]
fn another_tenants_snapshots_and_chunks_look_exactly_like_missing_ones() {
    let w = world();
    let c = &w.c;
    rt().block_on(async {
        let fin = node(&w.finance).await;
        let hr = node(&w.hr).await;
        let snap = fin
            .restore
            .clone()
            .resolve_snapshot(pb::ResolveSnapshotRequest {
                selector: "latest".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let snap = refuge_proto::snapshot(snap).unwrap();
        let fin_id = snap.id.to_hex();
        let fin_chunk = snap.manifest[0].id;
        let bogus_id = "ab".repeat(32);
        let bogus_chunk = ChunkId::of(b"no tenant has this");

        // Listing: finance's snapshots are simply absent.
        for tenant in ["finance", ""] {
            let got = hr
                .restore
                .clone()
                .list_snapshots(pb::ListSnapshotsRequest {
                    tenant: tenant.into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .snapshots;
            assert!(
                got.iter().all(|s| s.tenant == "hr"),
                "tenant {tenant:?}: {got:?}"
            );
            assert_eq!(got.len(), usize::from(tenant.is_empty()));
        }
        // Resolving finance's snapshot id answers like an unknown id.
        for tenant in ["finance", ""] {
            let resolve = |sel: String| {
                let mut r = hr.restore.clone();
                async move {
                    r.resolve_snapshot(pb::ResolveSnapshotRequest {
                        selector: sel,
                        tenant: tenant.into(),
                        ..Default::default()
                    })
                    .await
                    .unwrap_err()
                }
            };
            let real = resolve(fin_id.clone()).await;
            let fake = resolve(bogus_id.clone()).await;
            assert_eq!(real.code(), Code::NotFound);
            assert_eq!(shape(&real, &fin_id), shape(&fake, &bogus_id));
        }
        // Fetching finance's chunk answers like an unknown chunk.
        for tenant in ["finance", ""] {
            let get = |id: ChunkId| {
                let mut r = hr.restore.clone();
                async move {
                    let mut s = r
                        .get_chunks(pb::GetChunksRequest {
                            ids: vec![id.0.to_vec()],
                            tenant: tenant.into(),
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    s.message().await.unwrap_err()
                }
            };
            let real = get(fin_chunk).await;
            let fake = get(bogus_chunk).await;
            assert_eq!(real.code(), Code::NotFound);
            assert_eq!(
                shape(&real, &fin_chunk.to_hex()),
                shape(&fake, &bogus_chunk.to_hex())
            );
        }
        // Existence probes: finance's chunk is "missing" for hr (no
        // cross-tenant deduplication), present for finance.
        for (n, want) in [(&hr, vec![0u32]), (&fin, vec![])] {
            let missing = n
                .ingest
                .clone()
                .find_missing(pb::FindMissingRequest {
                    ids: vec![fin_chunk.0.to_vec()],
                })
                .await
                .unwrap()
                .into_inner()
                .missing;
            assert_eq!(missing, want);
        }
        // An operator of finance only sees nothing of hr.
        let ops = node(&w.operator).await;
        let got = ops
            .restore
            .clone()
            .list_snapshots(pb::ListSnapshotsRequest {
                tenant: "hr".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .snapshots;
        assert!(got.is_empty());
    });

    // The CLI: hr cannot restore finance's snapshot; finance's operator
    // can; an operator of two tenants must say which.
    let fin_id = run(
        "refuge",
        c.path(),
        &["-c", w.finance.to_str().unwrap(), "snapshots", "--json"],
    )
    .ok()
    .json()[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let target = |name: &str| c.path().join(name);
    run(
        "refuge",
        c.path(),
        &[
            "-c",
            w.hr.to_str().unwrap(),
            "restore",
            &fin_id,
            "--tenant",
            "finance",
            "--target",
            target("stolen").to_str().unwrap(),
        ],
    )
    .fails(1, "no snapshot with id");
    assert!(!target("stolen").exists());
    run(
        "refuge",
        c.path(),
        &[
            "-c",
            w.operator.to_str().unwrap(),
            "restore",
            "latest",
            "--target",
            target("ops1").to_str().unwrap(),
        ],
    )
    .ok();
    assert_same_tree(&w.src_finance, &target("ops1"));
    run(
        "refuge",
        c.path(),
        &[
            "-c",
            w.operator_both.to_str().unwrap(),
            "restore",
            "latest",
            "--target",
            target("ops2").to_str().unwrap(),
        ],
    )
    .fails(1, "--tenant");
    run(
        "refuge",
        c.path(),
        &[
            "-c",
            w.operator_both.to_str().unwrap(),
            "restore",
            "latest",
            "--tenant",
            "finance",
            "--target",
            target("ops2").to_str().unwrap(),
        ],
    )
    .ok();
    assert_same_tree(&w.src_finance, &target("ops2"));
    let all = run(
        "refuge",
        c.path(),
        &[
            "-c",
            w.operator_both.to_str().unwrap(),
            "snapshots",
            "--json",
        ],
    )
    .ok()
    .json();
    assert_eq!(all.as_array().unwrap().len(), 2);
    // Restores are audited as restores, with who did them.
    let log = c.audit(&w.auditor);
    assert!(
        log.iter().any(|r| r["event"] == "snapshot_restore_started"
            && r["subject"].as_str().unwrap().starts_with("operator:ops1")
            && r["tenant"] == "finance"),
        "{log:#?}"
    );
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn revoked_expired_and_foreign_certificates_are_refused_and_audited() {
    let c = Cluster::start();
    let finance = c.default_agent(&[]);
    let hr = c.client(&["--tenant", "hr", "--host", "web1"]);
    let auditor = c.client(&["--role", "auditor", "--name", "aud1"]);
    let whoami = |cfg: &Path| run("refuge", c.path(), &["-c", cfg.to_str().unwrap(), "whoami"]);
    whoami(&finance).ok();
    let serial = run(
        "refuge",
        c.path(),
        &["certs", "show", "certs/finance-db1.pem", "--json"],
    )
    .ok()
    .json()["serial"]
        .as_str()
        .unwrap()
        .to_string();

    // Revoked by editing node.toml: no restart, no signal.
    let toml = c.path().join("node.toml");
    let original = fs::read_to_string(&toml).unwrap();
    let with =
        |list: &str| original.replace("[tls]\n", &format!("[tls]\nrevoked_serials = [{list}]\n"));
    fs::write(&toml, with(&format!("\"{serial}\""))).unwrap();
    wait_for("the revocation to take effect", || {
        whoami(&finance).code == 1
    });
    whoami(&finance).fails(1, "revoked");
    whoami(&hr).ok();

    // A broken edit keeps the previous list.
    fs::write(&toml, with("\"not hex\"")).unwrap();
    wait_for("the failed reload to be audited", || {
        c.audit(&auditor)
            .iter()
            .any(|r| r["event"] == "config_reloaded" && r["outcome"] == "failed")
    });
    whoami(&finance).fails(1, "revoked");

    // Lifted on SIGHUP: the file keeps its size and modification time, so
    // only the signal can make the node read it.
    fs::write(&toml, with(&format!("\"{serial}\""))).unwrap();
    wait_for("the revocation to be re-read", || {
        c.audit(&auditor)
            .iter()
            .filter(|r| r["event"] == "config_reloaded" && r["outcome"] == "ok")
            .count()
            == 2
    });
    // Written aside and renamed into place, so that the watcher never sees
    // the new file with a new time.
    let stamp = fs::metadata(&toml).unwrap().modified().unwrap();
    let other = format!("\"{}ff\"", "0".repeat(serial.len() - 2));
    let aside = c.path().join("node.toml.new");
    fs::write(&aside, with(&other)).unwrap();
    filetime::set_file_mtime(&aside, filetime::FileTime::from_system_time(stamp)).unwrap();
    fs::rename(&aside, &toml).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    whoami(&finance).fails(1, "revoked");
    c.signal_node("HUP");
    wait_for("SIGHUP to lift the revocation", || {
        whoami(&finance).code == 0
    });

    // A certificate of another CA is refused in the handshake.
    run("refuge", c.path(), &["certs", "init", "other"]).ok();
    run(
        "refuge",
        c.path(),
        &[
            "certs", "issue", "--dir", "other", "--tenant", "finance", "--host", "db1",
        ],
    )
    .ok();
    let foreign = c.agent_config("foreign.toml", "other/finance-db1", "certs/ca.pem", &[]);
    whoami(&foreign).fails(1, "certificate");

    let log = c.audit(&auditor);
    let has = |event: &str, needle: &str| {
        log.iter().any(|r| {
            r["event"] == event
                && r["detail"].as_str().unwrap().contains(needle)
                && r["outcome"] != "ok"
        })
    };
    assert!(has("auth_failed", "has been revoked"), "{log:#?}");
    assert!(has("auth_failed", "connection refused"), "{log:#?}");
    assert!(
        log.iter()
            .any(|r| r["event"] == "config_reloaded"
                && r["detail"].as_str().unwrap().contains("SIGHUP")),
        "{log:#?}"
    );
    let revoked = log
        .iter()
        .find(|r| r["detail"].as_str().unwrap().contains("has been revoked"))
        .unwrap();
    assert_eq!(revoked["tenant"], "finance");
    assert!(
        revoked["subject"]
            .as_str()
            .unwrap()
            .contains(&format!("agent:db1 (serial {serial})"))
    );
}

#[test]
fn an_edited_removed_or_truncated_audit_record_is_detected() {
    use refuge_store::Store;
    use refuge_store_rocksdb::{RocksOptions, RocksStore};
    let mut c = Cluster::start();
    let auditor = c.client(&["--role", "auditor", "--name", "aud1"]);
    let src = c.path().join("src");
    tree(&src, 3);
    c.round_trip(&src);
    let verify = |c: &Cluster, extra: &[&str]| {
        let mut args = vec!["-c", auditor.to_str().unwrap(), "audit", "verify"];
        args.extend_from_slice(extra);
        run("refuge", c.path(), &args)
    };
    let out = verify(&c, &[]).ok().stdout;
    let head = out
        .split_whitespace()
        .skip_while(|w| *w != "head")
        .nth(1)
        .unwrap()
        .to_string();
    verify(&c, &["--expect-head", &head]).ok();
    let head_seq: u64 = head.split(':').next().unwrap().parse().unwrap();

    // Each tampering is made with the node stopped, straight in RocksDB,
    // as an intruder on the node's disk could.
    let tamper = |c: &mut Cluster, f: &dyn Fn(&RocksStore, &[refuge_core::audit::AuditRecord])| {
        c.stop_node();
        let store = RocksStore::open(&c.path().join("store"), &RocksOptions::default()).unwrap();
        let recs = store.read_audit(1, 10_000).unwrap();
        f(&store, &recs);
        drop(store);
        c.start_node();
    };
    let original = std::cell::RefCell::new(Vec::new());
    tamper(&mut c, &|s, recs| {
        *original.borrow_mut() = recs.to_vec();
        let mut r = recs[1].clone();
        r.event.detail.push_str(" (nothing to see here)");
        s.overwrite_audit_record(&r).unwrap();
    });
    verify(&c, &[]).fails(1, "broken at record 2: content does not match its hash");
    let json = verify(&c, &["--json"]);
    assert_eq!(json.code, 1);
    assert_eq!(json.json()["broken_at"], 2);

    tamper(&mut c, &|s, _| {
        let recs = original.borrow();
        s.overwrite_audit_record(&recs[1]).unwrap();
        s.delete_audit_record(3).unwrap();
    });
    verify(&c, &[]).fails(1, "broken at record 4: expected record 3");

    // Removing the newest records leaves a valid chain; the head noted
    // earlier catches it.
    tamper(&mut c, &|s, recs| {
        s.overwrite_audit_record(&original.borrow()[2]).unwrap();
        for r in recs.iter().filter(|r| r.seq >= head_seq) {
            s.delete_audit_record(r.seq).unwrap();
        }
    });
    verify(&c, &[]).ok();
    verify(&c, &["--expect-head", &head]).fails(1, "was rewritten");
}

#[test]
fn re_uploading_an_existing_chunk_id_with_other_bytes_is_rejected_and_changes_nothing() {
    let c = Cluster::start();
    let agent = c.default_agent(&[]);
    rt().block_on(async {
        let n = node(&agent).await;
        let original = b"what the chunk id was computed from".to_vec();
        let id = ChunkId::of(&original);
        n.ingest
            .clone()
            .put_chunks(futures::stream::iter(vec![refuge_proto::upload_to(
                &id,
                compress_chunk(&original, 1),
            )]))
            .await
            .unwrap();
        // The same id again, with other bytes (compressed or not).
        for forged in [
            compress_chunk(b"ransomware's version of the same chunk", 1),
            refuge_core::StoredChunk {
                compression: refuge_core::Compression::None,
                cipher: refuge_core::Cipher::None,
                raw_len: original.len() as u32,
                data: vec![0x42; original.len()],
            },
        ] {
            let err = n
                .ingest
                .clone()
                .put_chunks(futures::stream::iter(vec![refuge_proto::upload_to(
                    &id, forged,
                )]))
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
            assert!(err.message().contains(&id.to_hex()), "{}", err.message());
        }
        // The stored chunk is still the original.
        let mut s = n
            .restore
            .clone()
            .get_chunks(pb::GetChunksRequest {
                ids: vec![id.0.to_vec()],
                tenant: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let got = s.message().await.unwrap().unwrap();
        let (got_id, stored) = refuge_proto::chunk_data(got).unwrap();
        assert_eq!(got_id, id);
        assert_eq!(
            refuge_core::decode_chunk(&id, &stored, 1 << 20).unwrap(),
            original
        );
    });
    assert!(c.node_log().contains("chunk_rejected"));
}
