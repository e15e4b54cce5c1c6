//! A peer that lies: with a valid replica certificate of the province it
//! sends a record whose fields were changed under its id, a record whose
//! totals are not its manifest's, a record naming a chunk the province
//! lacks, a chunk whose bytes are not its id's, and asks for a tenant
//! outside its grant. Each is refused naming why, nothing is stored, and
//! the province audits it.

use refuge_core::{ChunkId, ChunkRef};
use refuge_proto::pb::{self, replication_client::ReplicationClient};
use refuge_tests::{Cluster, run};
use tonic::Code;

use super::{replica_cert, wait_until};

#[test]
fn a_lying_peer_is_refused_at_every_step_and_nothing_it_sends_is_stored() {
    let mut city = Cluster::configured("");
    let mut prov = Cluster::configured("");
    let to_prov = replica_cert(&prov, "city");
    super::append(&city, &super::push_to(&prov, "prov", &to_prov, &prov));
    prov.start_node();
    city.start_node();
    let src = city.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.bin"), refuge_tests::noise(1 << 20, 40)).unwrap();
    let agent = city.default_agent(&[("data", &src, "tree")]);
    run(
        "refuge-agent",
        city.path(),
        &["-c", agent.to_str().unwrap(), "backup"],
    )
    .ok();
    let ops = prov.client(&["--role", "operator", "--name", "ops", "--tenant", "finance"]);
    wait_until("the honest copy", 30, || prov.snapshots(&ops).len() == 1);

    // The forger: a replica certificate of the province for finance only.
    run(
        "refuge",
        prov.path(),
        &[
            "certs", "issue", "--dir", "certs", "--role", "replica", "--host", "forger",
            "--tenant", "finance",
        ],
    )
    .ok();
    let base = prov.path().join("certs/replica-forger");
    let cfg = refuge_client::ConnectionConfig {
        address: format!("127.0.0.1:{}", prov.port()),
        fallback: Vec::new(),
        server_name: "localhost".into(),
        ca: prov.path().join("certs/ca.pem"),
        cert: base.with_extension("pem"),
        key: base.with_extension("key"),
        connect_timeout_secs: 5,
        keepalive_secs: 10,
        keepalive_timeout_secs: 10,
        call_timeout_secs: 10,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ch = refuge_client::channel(&cfg).await.unwrap();
        let mut c = ReplicationClient::new(ch);
        let honest = c
            .list_snapshots(pb::ReplicaListRequest {
                tenant: "finance".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .snapshots
            .remove(0);
        let record = refuge_proto::snapshot(honest.clone()).unwrap();
        let import = |s: pb::Snapshot| {
            let mut c = c.clone();
            async move {
                c.import_snapshot(pb::ImportSnapshotRequest { snapshot: Some(s) })
                    .await
                    .unwrap_err()
            }
        };

        // Fields changed under the same id.
        let mut changed = honest.clone();
        changed.host = "elsewhere".into();
        let e = import(changed).await;
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("does not match its id"), "{e:?}");

        // A new snapshot (the id covers names, seq, time and manifest, not
        // the totals) whose totals are not its manifest's.
        let mut lying = record.clone();
        lying.time_micros += 1;
        lying.files += 1;
        lying.id = lying.compute_id();
        let e = import(refuge_proto::snapshot_to(&lying)).await;
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("totals"), "{e:?}");

        // A manifest naming a chunk the province does not have.
        let mut hollow = record.clone();
        hollow.manifest[0] = ChunkRef {
            id: ChunkId::of(b"a chunk nobody uploaded"),
            len: hollow.manifest[0].len,
        };
        hollow.id = hollow.compute_id();
        let e = import(refuge_proto::snapshot_to(&hollow)).await;
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("not imported"), "{e:?}");

        // A chunk whose bytes are not its id's.
        let claimed = ChunkId::of(b"what the id says");
        let msg = pb::ReplicaChunks {
            tenant: "finance".into(),
            chunks: vec![pb::ChunkUpload {
                id: claimed.0.to_vec(),
                raw_len: 16,
                data: b"other bytes here".to_vec(),
                ..Default::default()
            }],
        };
        let e = c
            .put_chunks(futures::stream::iter(vec![msg]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("rejected"), "{e:?}");
        let missing = c
            .find_missing(pb::ReplicaFindMissingRequest {
                tenant: "finance".into(),
                ids: vec![claimed.0.to_vec()],
            })
            .await
            .unwrap()
            .into_inner()
            .missing;
        assert_eq!(missing, vec![0], "the forged chunk was stored");

        // A tenant outside the certificate's grant.
        let e = c
            .list_snapshots(pb::ReplicaListRequest {
                tenant: "hr".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    });

    // Still only the honest copy, and every refusal is in the audit log.
    let listed = prov.snapshots(&ops);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["host"], "db1");
    let auditor = prov.client(&["--role", "auditor", "--name", "aud"]);
    let events = prov.audit(&auditor);
    let refused = events
        .iter()
        .filter(|e| {
            e["event"] == "snapshot_import_refused"
                && e["subject"].as_str().unwrap().starts_with("replica:forger")
        })
        .count();
    assert_eq!(refused, 3, "{events:?}");
    assert!(
        events.iter().any(|e| e["event"] == "permission_denied"
            && e["subject"].as_str().unwrap().starts_with("replica:forger")),
        "{events:?}"
    );
    for c in [&mut city, &mut prov] {
        c.stop_node();
    }
}
