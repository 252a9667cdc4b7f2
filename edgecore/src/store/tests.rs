use super::*;
use rusqlite::Connection;
use serde_json::json;

fn temp() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edgecore.db");
    (dir, path)
}

fn pod(uid: &str, rv: &str) -> Value {
    json!({"kind":"Pod","apiVersion":"v1",
           "metadata":{"name":"nginx","namespace":"default","uid":uid,"resourceVersion":rv},
           "spec":{"nodeName":"edge-1"}})
}

fn rows(path: &Path) -> Vec<(String, String, Option<String>)> {
    let conn = Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare("SELECT key, type, value FROM meta ORDER BY key")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn entry(key: &str, msg_id: &str, at: i64) -> OutboxEntry {
    OutboxEntry {
        key: key.into(),
        msg_id: msg_id.into(),
        message: format!("{{\"id\":\"{msg_id}\"}}"),
        enqueued_at: at,
    }
}

#[tokio::test]
async fn meta_schema_equals_kubeedge_ddl() {
    let (_d, path) = temp();
    let store = Store::open(&path).unwrap();
    store.shutdown().await;
    let conn = Connection::open(&path).unwrap();
    let mut stmt = conn.prepare("PRAGMA table_info(meta)").unwrap();
    let cols: Vec<(String, String, bool, Option<String>, i64)> = stmt
        .query_map([], |r| {
            Ok((r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
        })
        .unwrap()
        .map(Result::unwrap)
        // SQLite reports the built-in type names upper-cased.
        .map(
            |(n, t, nn, d, pk): (String, String, bool, Option<String>, i64)| {
                (n, t.to_lowercase(), nn, d, pk)
            },
        )
        .collect();
    assert_eq!(
        cols,
        vec![
            ("key".into(), "varchar(256)".into(), false, None, 1),
            (
                "type".into(),
                "varchar(32)".into(),
                true,
                Some("''".into()),
                0
            ),
            ("value".into(), "text".into(), false, None, 0),
        ]
    );
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn missing_parent_directory_is_created_private() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/edgecore.db");
    let store = Store::open(&path).unwrap();
    store.shutdown().await;
    assert!(path.exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("a/b"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}

#[tokio::test]
async fn rows_hold_trimmed_key_second_segment_and_sorted_json() {
    let (_d, path) = temp();
    let store = Store::open(&path).unwrap();
    let out = store
        .put_object(" default/pod/nginx ", &pod("u1", "10"), Some("10"))
        .await
        .unwrap();
    assert_eq!(out, PutOutcome::Applied);
    let patch = r#"{"status":{"phase":"Running"},"metadata":{"uid":"u1"}}"#;
    let res = store
        .batch(vec![Op::PutRaw {
            key: MetaKey::object("default/podpatch/nginx").unwrap(),
            value: patch.into(),
        }])
        .await
        .unwrap();
    assert!(res[0].is_ok());
    store.shutdown().await;
    assert_eq!(
        rows(&path),
        vec![
            (
                "default/pod/nginx".into(),
                "pod".into(),
                Some(
                    r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"nginx","namespace":"default","resourceVersion":"10","uid":"u1"},"spec":{"nodeName":"edge-1"}}"#
                        .into()
                )
            ),
            ("default/podpatch/nginx".into(), "podpatch".into(), Some(patch.into())),
        ]
    );
}

#[tokio::test]
async fn resources_without_a_name_are_not_keys() {
    let (_d, path) = temp();
    let store = Store::open(&path).unwrap();
    for bad in ["default/pod", "node", "", "/pod/x"] {
        let err = store.put_object(bad, &json!({}), None).await.unwrap_err();
        assert!(matches!(err, StoreError::BadKey { .. }), "{bad}: {err}");
    }
    assert_eq!(
        MetaKey::object("ns/secret/a/b")
            .unwrap()
            .with_kind("podpatch")
            .as_str(),
        "ns/podpatch/a/b"
    );
}

#[tokio::test]
async fn older_resource_version_is_not_applied_but_equal_newer_and_non_numeric_are() {
    let (_d, path) = temp();
    let store = Store::open(&path).unwrap();
    let key = "default/pod/nginx";
    store
        .put_object(key, &pod("u1", "20"), Some("20"))
        .await
        .unwrap();
    let out = store
        .put_object(key, &pod("u1", "9"), Some("9"))
        .await
        .unwrap();
    assert_eq!(
        out,
        PutOutcome::Stale {
            stored: 20.into(),
            incoming: 9.into(),
        }
    );
    assert!(store.get(key).await.unwrap().unwrap().contains("\"20\""));

    // Equal RV (a duplicate delivery) and newer RV are applied.
    assert_eq!(
        store
            .put_object(key, &pod("u1", "20"), Some("20"))
            .await
            .unwrap(),
        PutOutcome::Applied
    );
    assert_eq!(
        store
            .put_object(key, &pod("u1", "21"), Some("21"))
            .await
            .unwrap(),
        PutOutcome::Applied
    );
    // A non-numeric RV is applied, and then anything numeric is applied over it.
    assert_eq!(
        store
            .put_object(key, &pod("u1", "x"), Some("x"))
            .await
            .unwrap(),
        PutOutcome::Applied
    );
    assert_eq!(
        store
            .put_object(key, &pod("u1", "1"), Some("1"))
            .await
            .unwrap(),
        PutOutcome::Applied
    );
    // Over a patch string (not JSON object) anything is applied.
    store
        .batch(vec![Op::PutRaw {
            key: MetaKey::object(key).unwrap(),
            value: "not json".into(),
        }])
        .await
        .unwrap();
    assert_eq!(
        store
            .put_object(key, &pod("u1", "2"), Some("2"))
            .await
            .unwrap(),
        PutOutcome::Applied
    );
}

#[tokio::test]
async fn pod_delete_with_uid_removes_only_that_pod_its_podpatch_and_tokens() {
    let (_d, path) = temp();
    let store = Store::open(&path).unwrap();
    store
        .put_object("default/pod/nginx", &pod("new-uid", "5"), None)
        .await
        .unwrap();
    store
        .batch(vec![Op::PutRaw {
            key: MetaKey::object("default/podpatch/nginx").unwrap(),
            value: "{}".into(),
        }])
        .await
        .unwrap();
    // A delete for an older incarnation (different uid) leaves the new pod alone.
    assert_eq!(
        store
            .delete("default/pod/nginx", Some("old-uid"))
            .await
            .unwrap(),
        0
    );
    // LIKE wildcards in a uid are literal.
    assert_eq!(
        store
            .delete("default/pod/nginx", Some("new%"))
            .await
            .unwrap(),
        0
    );
    assert!(store.get("default/pod/nginx").await.unwrap().is_some());
    // The pod's service-account token (KubeEdge's key) goes with it; another pod's stays.
    let token = |pod_uid: &str| {
        json!({"kind": "TokenRequest", "metadata": {"uid": "sa-uid"},
               "spec": {"boundObjectRef": {"kind": "Pod", "name": "nginx", "uid": pod_uid}}})
    };
    store
        .batch(vec![
            Op::PutObject {
                key: MetaKey::opaque("\"default\"/\"default\"/mine".into(), "serviceaccounttoken"),
                json: token("new-uid").to_string(),
                rv: None,
            },
            Op::PutObject {
                key: MetaKey::opaque(
                    "\"default\"/\"default\"/theirs".into(),
                    "serviceaccounttoken",
                ),
                json: token("other-uid").to_string(),
                rv: None,
            },
        ])
        .await
        .unwrap();
    assert_eq!(
        store
            .delete("default/pod/nginx", Some("new-uid"))
            .await
            .unwrap(),
        3
    );
    assert_eq!(store.get("default/pod/nginx").await.unwrap(), None);
    assert_eq!(store.get("default/podpatch/nginx").await.unwrap(), None);
    assert_eq!(
        store.list_type("serviceaccounttoken").await.unwrap().len(),
        1
    );
    // Without uid: by key.
    store
        .put_object("default/configmap/c", &json!({"a":1}), None)
        .await
        .unwrap();
    assert_eq!(store.delete("default/configmap/c", None).await.unwrap(), 1);
    assert_eq!(store.delete("default/configmap/c", None).await.unwrap(), 0);
}

#[tokio::test]
async fn list_type_ignores_namespace() {
    let (_d, path) = temp();
    let store = Store::open(&path).unwrap();
    store
        .put_object("a/pod/x", &json!({"n":"x"}), None)
        .await
        .unwrap();
    store
        .put_object("b/pod/y", &json!({"n":"y"}), None)
        .await
        .unwrap();
    store
        .put_object("a/configmap/z", &json!({"n":"z"}), None)
        .await
        .unwrap();
    assert_eq!(
        store.list_type("pod").await.unwrap(),
        vec![r#"{"n":"x"}"#.to_owned(), r#"{"n":"y"}"#.to_owned()]
    );
}

#[tokio::test]
async fn outbox_coalesces_per_key_keeps_order_and_survives_reopen() {
    let (_d, path) = temp();
    let store = Store::open(&path).unwrap();
    let res = store
        .batch(vec![
            Op::OutboxPut(entry("default/podpatch/a", "m1", 100)),
            Op::OutboxPut(entry("default/nodepatch/n", "m2", 200)),
            // A newer patch for pod a replaces m1 but keeps its place in the queue.
            Op::OutboxPut(entry("default/podpatch/a", "m3", 300)),
        ])
        .await
        .unwrap();
    assert!(res.iter().all(Result::is_ok));
    store.shutdown().await;

    let store = Store::open(&path).unwrap();
    let list = store.outbox().await.unwrap();
    let ids: Vec<_> = list
        .iter()
        .map(|e| (e.key.as_str(), e.msg_id.as_str()))
        .collect();
    assert_eq!(
        ids,
        vec![("default/podpatch/a", "m3"), ("default/nodepatch/n", "m2")]
    );
    assert_eq!(list[0].message, r#"{"id":"m3"}"#);

    // The answer to the replaced m1 removes nothing; the answer to m3 removes the entry.
    let res = store
        .batch(vec![
            Op::OutboxRemove {
                msg_id: "m1".into(),
            },
            Op::OutboxRemove {
                msg_id: "m3".into(),
            },
        ])
        .await
        .unwrap();
    assert_eq!(res[0].as_ref().unwrap(), &Outcome::Removed(false));
    assert_eq!(res[1].as_ref().unwrap(), &Outcome::Removed(true));
    assert_eq!(store.outbox().await.unwrap().len(), 1);
}

#[tokio::test]
async fn existing_kubeedge_database_opens_and_keeps_its_tables() {
    let (_d, path) = temp();
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            r#"
            CREATE TABLE "meta" ("key" varchar(256) NOT NULL PRIMARY KEY, "type" varchar(32) NOT NULL DEFAULT '' , "value" text);
            CREATE TABLE "meta_v2" ("key" varchar(256) NOT NULL PRIMARY KEY, "groupversionresource" varchar(256) NOT NULL DEFAULT '' , "namespace" varchar(256) NOT NULL DEFAULT '' , "name" varchar(256) NOT NULL DEFAULT '' , "resourceversion" bigint unsigned NOT NULL DEFAULT 0 , "value" text);
            CREATE TABLE "device" ("id" varchar(64) NOT NULL PRIMARY KEY, "name" varchar(64) NOT NULL DEFAULT '' , "description" varchar(256) NOT NULL DEFAULT '' , "state" varchar(64) NOT NULL DEFAULT '' , "last_online" varchar(64) NOT NULL DEFAULT '' );
            CREATE TABLE "sub_topics" ("topic" varchar(256) NOT NULL PRIMARY KEY);
            INSERT INTO meta VALUES ('default/configmap/app', 'configmap', '{"data":{"k":"v"},"metadata":{"resourceVersion":"7"}}');
            INSERT INTO meta_v2 (key, value) VALUES ('/core/v1/pods/default/x', '{}');
            INSERT INTO sub_topics VALUES ('t');
            "#,
        )
        .unwrap();
    }
    let store = Store::open(&path).unwrap();
    assert!(
        store
            .get("default/configmap/app")
            .await
            .unwrap()
            .unwrap()
            .contains("\"k\"")
    );
    // The RV guard reads KubeEdge's rows too.
    let out = store
        .put_object(
            "default/configmap/app",
            &json!({"metadata":{"resourceVersion":"6"}}),
            Some("6"),
        )
        .await
        .unwrap();
    assert_eq!(
        out,
        PutOutcome::Stale {
            stored: 7.into(),
            incoming: 6.into(),
        }
    );
    store
        .put_object("default/pod/p", &pod("u", "1"), Some("1"))
        .await
        .unwrap();
    store.shutdown().await;

    let conn = Connection::open(&path).unwrap();
    for (table, n) in [
        ("meta", 2),
        // KubeEdge's row and MetaServer's copy of the pod, in the v1.22 columns it has.
        ("meta_v2", 2),
        ("sub_topics", 1),
        ("device", 0),
    ] {
        let count: i64 = conn
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, n, "{table}");
    }
    let (gvr, rv, ns, name): (String, i64, String, String) = conn
        .query_row(
            "SELECT groupversionresource, resourceversion, namespace, name FROM meta_v2
             WHERE key = '/core/v1/pods/default/nginx'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!(
        (gvr.as_str(), rv, ns.as_str(), name.as_str()),
        ("/v1, Resource=pods", 1, "default", "nginx")
    );
    drop(conn);

    // A delete removes MetaServer's copy with the row.
    let store = Store::open(&path).unwrap();
    assert_eq!(store.delete("default/pod/p", Some("u")).await.unwrap(), 1);
    assert_eq!(
        store.get_v2("/core/v1/pods/default/nginx").await.unwrap(),
        None
    );
    assert!(
        store
            .get_v2("/core/v1/pods/default/x")
            .await
            .unwrap()
            .is_some(),
        "KubeEdge's own row stays"
    );
    store.shutdown().await;
}

#[tokio::test]
async fn calls_after_shutdown_fail_closed() {
    let (_d, path) = temp();
    let store = Store::open(&path).unwrap();
    let other = store.clone();
    store.shutdown().await;
    assert!(matches!(other.get("a/b/c").await, Err(StoreError::Closed)));
}

#[tokio::test]
async fn an_unwritable_location_is_a_named_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    // The parent "directory" is a regular file.
    let err = Store::open(&file.join("edgecore.db")).unwrap_err();
    assert!(
        matches!(err, StoreError::Open { .. } | StoreError::CreateDir { .. }),
        "{err}"
    );
}

/// A file that is not SQLite, or a database cut short, is refused with its path, what SQLite
/// found and what to do, and left exactly as it was (no silent overwrite).
#[tokio::test]
async fn a_damaged_database_is_named_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, vec![b'z'; 4096]).unwrap();
    let err = Store::open(&junk).unwrap_err();
    assert!(matches!(err, StoreError::Damaged { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("junk.db") && text.contains("move"), "{text}");
    assert_eq!(std::fs::read(&junk).unwrap(), vec![b'z'; 4096]);

    // A real database, then truncated in the middle of its pages.
    let (_d, path) = temp();
    let store = Store::open(&path).unwrap();
    for i in 0..200 {
        store
            .put_object(
                &format!("default/configmap/c{i}"),
                &json!({"data": {"v": "x".repeat(400)}}),
                None,
            )
            .await
            .unwrap();
    }
    store.shutdown().await;
    let full = std::fs::read(&path).unwrap();
    assert!(full.len() > 40_000, "{}", full.len());
    let cut = &full[..full.len() / 2];
    std::fs::write(&path, cut).unwrap();
    let _ = std::fs::remove_file(path.with_extension("db-wal"));
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Damaged { .. }), "{err}");
    assert!(
        err.to_string().contains("integrity check") || err.to_string().contains("malformed"),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), cut, "left untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_batches_all_commit_with_their_own_results() {
    let (_d, path) = temp();
    let store = Store::open(&path).unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..100u64 {
        let store = store.clone();
        tasks.spawn(async move {
            let key = format!("default/pod/p{i}");
            store
                .put_object(&key, &pod(&format!("uid-{i}"), "5"), Some("5"))
                .await
        });
    }
    while let Some(r) = tasks.join_next().await {
        assert_eq!(r.unwrap().unwrap(), PutOutcome::Applied);
    }
    store.shutdown().await;
    assert_eq!(rows(&path).len(), 100);
}

#[test]
fn connection_page_cache_is_small() {
    let dir = tempfile::tempdir().unwrap();
    let (conn, _) = super::writer::open(&dir.path().join("edgecore.db")).unwrap();
    let kib: i64 = conn
        .query_row("PRAGMA cache_size", [], |r| r.get(0))
        .unwrap();
    assert_eq!(kib, -256);
}
