//! KubeEdge's `meta_v2` table: MetaServer's copy of every object metamanager stores, keyed by
//! `/<group>/<version>/<resource>/<namespace>/<name>` (`docs/metaserver.md`, "Storage").
//!
//! KubeEdge v1.22 (beego) named two columns `groupversionresource` and `resourceversion`; v1.23
//! (gorm) names them `group_version_resource` and `resource_version`, and gorm's migration adds
//! the new ones to an old table, so a database may have either pair or both. Rows are written to
//! every pair present, and read from the newest. A database without the table gets v1.23's.

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde_json::Value;

/// The v1.23 table, for a database that has none.
const CREATE: &str = "CREATE TABLE IF NOT EXISTS meta_v2 (
    key varchar(256) PRIMARY KEY,
    group_version_resource varchar(256) NOT NULL DEFAULT '',
    namespace varchar(256) NOT NULL DEFAULT '',
    name varchar(256) NOT NULL DEFAULT '',
    resource_version integer NOT NULL DEFAULT 0,
    value text
)";

/// The statements for the columns this database's `meta_v2` has.
#[derive(Debug, Clone)]
pub(super) struct MetaV2 {
    upsert: String,
    /// The column the GVR is read from.
    gvr_column: &'static str,
}

/// Types whose `meta` rows are not Kubernetes objects (patches, tokens, statuses) and have no
/// `meta_v2` row.
const NOT_OBJECTS: [&str; 5] = [
    "podpatch",
    "nodepatch",
    "serviceaccounttoken",
    "podstatus",
    "nodestatus",
];

/// `meta` type → group, version, resource, kind, namespaced: the kinds edgecontroller sends.
const KNOWN: [(&str, &str, &str, &str, &str, bool); 10] = [
    ("pod", "", "v1", "pods", "Pod", true),
    ("configmap", "", "v1", "configmaps", "ConfigMap", true),
    ("secret", "", "v1", "secrets", "Secret", true),
    ("service", "", "v1", "services", "Service", true),
    ("endpoints", "", "v1", "endpoints", "Endpoints", true),
    ("node", "", "v1", "nodes", "Node", false),
    (
        "persistentvolume",
        "",
        "v1",
        "persistentvolumes",
        "PersistentVolume",
        false,
    ),
    (
        "persistentvolumeclaim",
        "",
        "v1",
        "persistentvolumeclaims",
        "PersistentVolumeClaim",
        true,
    ),
    (
        "lease",
        "coordination.k8s.io",
        "v1",
        "leases",
        "Lease",
        true,
    ),
    (
        "endpointslice",
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        "EndpointSlice",
        true,
    ),
];

/// One `meta_v2` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Row {
    pub(super) key: String,
    pub(super) gvr: String,
    pub(super) namespace: String,
    pub(super) name: String,
    pub(super) resource_version: u64,
    pub(super) value: String,
}

/// The key of a request or object: `core` for the empty group, `null` for no namespace or name.
pub(crate) fn key(
    group: &str,
    version: &str,
    resource: &str,
    namespace: &str,
    name: &str,
) -> String {
    let or_null = |s: &str| {
        if s.is_empty() {
            "null".to_owned()
        } else {
            s.to_owned()
        }
    };
    let group = if group.is_empty() { "core" } else { group };
    format!(
        "/{group}/{version}/{resource}/{}/{}",
        or_null(namespace),
        or_null(name)
    )
}

/// Go's `GroupVersionResource.String()`: `group/version, Resource=resource`.
pub(crate) fn gvr(group: &str, version: &str, resource: &str) -> String {
    format!("{group}/{version}, Resource={resource}")
}

/// The plural of a kind as KubeEdge guesses it for kinds it has no table for
/// (`UnsafeKindToResource`, used for its own `meta_v2` keys; "Gateway" becomes "gatewaies").
fn plural(kind: &str) -> String {
    match kind {
        "Endpoints" => return "endpoints".to_owned(),
        "Leases" => return "leases".to_owned(),
        _ => {}
    }
    let lower = kind.to_lowercase();
    if lower.ends_with('s') {
        format!("{lower}es")
    } else if let Some(stem) = lower.strip_suffix('y') {
        format!("{stem}ies")
    } else {
        format!("{lower}s")
    }
}

/// The `meta_v2` row of an object stored in `meta` under type `meta_kind`; `None` for what is
/// not a Kubernetes object (a patch, a token, a value that is not a JSON object, a kind we
/// cannot place).
pub(super) fn row_of(meta_kind: &str, json: &str) -> Option<Row> {
    if NOT_OBJECTS.contains(&meta_kind) {
        return None;
    }
    let mut object: Value = serde_json::from_str(json).ok()?;
    let map = object.as_object_mut()?;
    let meta = map.get("metadata")?;
    let name = meta.get("name").and_then(Value::as_str)?.to_owned();
    let namespace = meta
        .get("namespace")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let resource_version = meta
        .get("resourceVersion")
        .and_then(Value::as_str)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (group, version, resource, kind, namespaced) =
        if let Some(&(_, g, v, r, k, ns)) = KNOWN.iter().find(|k| k.0 == meta_kind) {
            (g.to_owned(), v.to_owned(), r.to_owned(), k.to_owned(), ns)
        } else {
            // Another kind (dynamicController's): its own apiVersion and kind say where it goes.
            let api_version = map.get("apiVersion").and_then(Value::as_str)?;
            let kind = map.get("kind").and_then(Value::as_str)?;
            if kind.to_lowercase() != meta_kind {
                return None;
            }
            let (g, v) = api_version.rsplit_once('/').unwrap_or(("", api_version));
            (
                g.to_owned(),
                v.to_owned(),
                plural(kind),
                kind.to_owned(),
                !namespace.is_empty(),
            )
        };
    let api_version = if group.is_empty() {
        version.clone()
    } else {
        format!("{group}/{version}")
    };
    map.entry("apiVersion")
        .or_insert(Value::String(api_version));
    map.entry("kind").or_insert(Value::String(kind));
    let namespace = if namespaced { namespace } else { String::new() };
    Some(Row {
        key: key(&group, &version, &resource, &namespace, &name),
        gvr: gvr(&group, &version, &resource),
        namespace,
        name,
        resource_version,
        value: object.to_string(),
    })
}

impl MetaV2 {
    /// Creates the table if it is missing and learns which columns it has.
    pub(super) fn prepare(conn: &Connection) -> rusqlite::Result<Self> {
        conn.execute_batch(CREATE)?;
        let mut stmt = conn.prepare("SELECT name FROM pragma_table_info('meta_v2')")?;
        let columns: Vec<String> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let has = |c: &str| columns.iter().any(|have| have == c);
        let mut names = vec!["key", "namespace", "name", "value"];
        let mut values = vec!["?1", "?3", "?4", "?6"];
        for (gvr, rv) in [
            ("group_version_resource", "resource_version"),
            ("groupversionresource", "resourceversion"),
        ] {
            if has(gvr) {
                names.push(gvr);
                values.push("?2");
            }
            if has(rv) {
                names.push(rv);
                values.push("?5");
            }
        }
        let gvr_column = if has("group_version_resource") {
            "group_version_resource"
        } else {
            "groupversionresource"
        };
        Ok(Self {
            upsert: format!(
                "INSERT OR REPLACE INTO meta_v2 ({}) VALUES ({})",
                names.join(", "),
                values.join(", ")
            ),
            gvr_column,
        })
    }

    pub(super) fn upsert(&self, tx: &Transaction<'_>, row: &Row) -> rusqlite::Result<()> {
        tx.prepare_cached(&self.upsert)?
            .execute(params![
                row.key,
                row.gvr,
                row.namespace,
                row.name,
                i64::try_from(row.resource_version).unwrap_or(i64::MAX),
                row.value
            ])
            .map(|_| ())
    }

    pub(super) fn delete(tx: &Transaction<'_>, key: &str) -> rusqlite::Result<()> {
        tx.prepare_cached("DELETE FROM meta_v2 WHERE key = ?1")?
            .execute([key])
            .map(|_| ())
    }

    /// The values of one GVR (Go's string form), one namespace or all, ordered by key.
    pub(super) fn list(
        &self,
        tx: &Transaction<'_>,
        gvr: &str,
        namespace: Option<&str>,
    ) -> rusqlite::Result<Vec<String>> {
        let sql = format!(
            "SELECT value FROM meta_v2 WHERE {} = ?1 AND (?2 IS NULL OR namespace = ?2)
               AND value IS NOT NULL ORDER BY key",
            self.gvr_column
        );
        let mut stmt = tx.prepare_cached(&sql)?;
        let rows = stmt.query_map(params![gvr, namespace], |r| r.get::<_, String>(0))?;
        rows.collect()
    }

    pub(super) fn get(tx: &Transaction<'_>, key: &str) -> rusqlite::Result<Option<String>> {
        tx.prepare_cached("SELECT value FROM meta_v2 WHERE key = ?1")?
            .query_row([key], |r| r.get::<_, Option<String>>(0))
            .optional()
            .map(Option::flatten)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_keyed_and_typed_as_kubeedge_writes_them() {
        let row = row_of(
            "pod",
            r#"{"metadata":{"name":"web","namespace":"default","resourceVersion":"42"},"spec":{}}"#,
        )
        .expect("a row");
        assert_eq!(row.key, "/core/v1/pods/default/web");
        assert_eq!(row.gvr, "/v1, Resource=pods");
        assert_eq!(
            (
                row.namespace.as_str(),
                row.name.as_str(),
                row.resource_version
            ),
            ("default", "web", 42)
        );
        let value: Value = serde_json::from_str(&row.value).expect("json");
        assert_eq!(
            (value["kind"].as_str(), value["apiVersion"].as_str()),
            (Some("Pod"), Some("v1"))
        );

        let node = row_of(
            "node",
            r#"{"metadata":{"name":"n1","resourceVersion":"5"}}"#,
        )
        .expect("a row");
        assert_eq!(node.key, "/core/v1/nodes/null/n1");
        let lease = row_of(
            "lease",
            r#"{"metadata":{"name":"n1","namespace":"kube-node-lease"}}"#,
        )
        .expect("a row");
        assert_eq!(lease.gvr, "coordination.k8s.io/v1, Resource=leases");

        let deployment = row_of(
            "deployment",
            r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"d","namespace":"ns"}}"#,
        )
        .expect("a row");
        assert_eq!(deployment.key, "/apps/v1/deployments/ns/d");
        assert_eq!(plural("NetworkPolicy"), "networkpolicies");
        assert_eq!(plural("Ingress"), "ingresses");
        assert_eq!(plural("Gateway"), "gatewaies");
        assert_eq!(plural("Deployment"), "deployments");

        assert_eq!(row_of("podpatch", r#"{"metadata":{"name":"x"}}"#), None);
        assert_eq!(row_of("pod", "not json"), None);
        assert_eq!(row_of("widget", r#"{"metadata":{"name":"x"}}"#), None);
    }

    #[test]
    fn both_column_namings_are_written_and_read() {
        for ddl in [
            // v1.22 (beego)
            r#"CREATE TABLE "meta_v2" ("key" varchar(256) NOT NULL PRIMARY KEY, "groupversionresource" varchar(256) NOT NULL DEFAULT '' , "namespace" varchar(256) NOT NULL DEFAULT '' , "name" varchar(256) NOT NULL DEFAULT '' , "resourceversion" bigint unsigned NOT NULL DEFAULT 0 , "value" text);"#,
            // v1.23 (gorm)
            "CREATE TABLE `meta_v2` (`key` text,`group_version_resource` text,`namespace` text,`name` text,`resource_version` integer,`value` text,PRIMARY KEY (`key`));",
            // v1.22 migrated by v1.23: both
            r#"CREATE TABLE "meta_v2" ("key" varchar(256) NOT NULL PRIMARY KEY, "groupversionresource" varchar(256) NOT NULL DEFAULT '' , "namespace" varchar(256) NOT NULL DEFAULT '' , "name" varchar(256) NOT NULL DEFAULT '' , "resourceversion" bigint unsigned NOT NULL DEFAULT 0 , "value" text, `group_version_resource` text, `resource_version` integer);"#,
            // none: ours is created
            "",
        ] {
            let mut conn = Connection::open_in_memory().expect("sqlite");
            conn.execute_batch(ddl).expect("ddl");
            let v2 = MetaV2::prepare(&conn).expect("prepare");
            let row = row_of(
                "configmap",
                r#"{"metadata":{"name":"a","namespace":"default","resourceVersion":"9"}}"#,
            )
            .expect("a row");
            let tx = conn.transaction().expect("tx");
            v2.upsert(&tx, &row).expect("upsert");
            let listed = v2
                .list(&tx, "/v1, Resource=configmaps", Some("default"))
                .expect("list");
            assert_eq!(listed.len(), 1, "{ddl}");
            assert!(
                v2.list(&tx, "/v1, Resource=configmaps", Some("other"))
                    .expect("list")
                    .is_empty()
            );
            assert_eq!(
                v2.list(&tx, "/v1, Resource=configmaps", None)
                    .expect("list")
                    .len(),
                1
            );
            assert!(MetaV2::get(&tx, &row.key).expect("get").is_some());
            for rv_column in ["resource_version", "resourceversion"] {
                let n: Option<i64> = tx
                    .query_row(&format!("SELECT {rv_column} FROM meta_v2"), [], |r| {
                        r.get(0)
                    })
                    .ok();
                if let Some(n) = n {
                    assert_eq!(n, 9, "{ddl}: {rv_column}");
                }
            }
            MetaV2::delete(&tx, &row.key).expect("delete");
            assert!(MetaV2::get(&tx, &row.key).expect("get").is_none());
        }
    }
}
