//! The resources MetaServer serves: the kinds metamanager stores, with their API names.

use serde_json::{Value, json};

/// One served resource.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Resource {
    /// API group; empty for the core group.
    pub(crate) group: &'static str,
    pub(crate) version: &'static str,
    pub(crate) plural: &'static str,
    pub(crate) kind: &'static str,
    /// Its type in the `meta` table.
    pub(crate) stored: &'static str,
    pub(crate) namespaced: bool,
    pub(crate) short_names: &'static [&'static str],
}

/// What the cloud pushes to an edge and metamanager keeps (edgecontroller's kinds, and the
/// ones dynamicController sends).
pub(crate) const RESOURCES: &[Resource] = &[
    core("pods", "Pod", "pod", true, &["po"]),
    core("configmaps", "ConfigMap", "configmap", true, &["cm"]),
    core("secrets", "Secret", "secret", true, &[]),
    core("services", "Service", "service", true, &["svc"]),
    core("endpoints", "Endpoints", "endpoints", true, &["ep"]),
    core("nodes", "Node", "node", false, &["no"]),
    Resource {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        kind: "Lease",
        stored: "lease",
        namespaced: true,
        short_names: &[],
    },
    Resource {
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
        kind: "EndpointSlice",
        stored: "endpointslice",
        namespaced: true,
        short_names: &[],
    },
];

const fn core(
    plural: &'static str,
    kind: &'static str,
    stored: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
) -> Resource {
    Resource {
        group: "",
        version: "v1",
        plural,
        kind,
        stored,
        namespaced,
        short_names,
    }
}

/// The resource served at `group`/`version`/`plural`.
pub(crate) fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The groups other than core, in table order, without repeats.
fn groups() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for r in RESOURCES {
        if !r.group.is_empty() && !out.contains(&r.group) {
            out.push(r.group);
        }
    }
    out
}

impl Resource {
    pub(crate) fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Gives a stored object its `kind` and `apiVersion` (informer objects come without).
    pub(crate) fn typed(&self, mut object: Value) -> Value {
        if let Some(map) = object.as_object_mut() {
            map.insert("kind".to_owned(), Value::from(self.kind));
            map.insert("apiVersion".to_owned(), Value::from(self.api_version()));
        }
        object
    }
}

/// `/api`: the core group's versions.
pub(crate) fn api_versions() -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
}

fn group_entry(group: &str) -> Value {
    let version = RESOURCES
        .iter()
        .find(|r| r.group == group)
        .map_or("v1", |r| r.version);
    let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})
}

/// `/apis`: the other groups.
pub(crate) fn api_groups() -> Value {
    let groups: Vec<Value> = groups().into_iter().map(group_entry).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>`, if served.
pub(crate) fn api_group(group: &str) -> Option<Value> {
    groups().contains(&group).then(|| {
        let mut entry = group_entry(group);
        if let Some(map) = entry.as_object_mut() {
            map.insert("kind".to_owned(), Value::from("APIGroup"));
            map.insert("apiVersion".to_owned(), Value::from("v1"));
        }
        entry
    })
}

/// `/api/v1` or `/apis/<group>/<version>`: the resources served there; with `writable` (a way
/// to the cloud) their write verbs too.
pub(crate) fn resource_list(group: &str, version: &str, writable: bool) -> Option<Value> {
    let verbs = if writable {
        json!([
            "create", "delete", "get", "list", "patch", "update", "watch"
        ])
    } else {
        json!(["get", "list", "watch"])
    };
    let here: Vec<Value> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .map(|r| {
            json!({
                "name": r.plural,
                "singularName": r.kind.to_lowercase(),
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": verbs,
                "shortNames": r.short_names,
            })
        })
        .collect();
    if here.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": here,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_names_every_served_resource_once() {
        assert_eq!(find("", "v1", "pods").map(|r| r.kind), Some("Pod"));
        assert_eq!(find("apps", "v1", "pods"), None);
        let core = resource_list("", "v1", false).unwrap();
        assert_eq!(core["groupVersion"], "v1");
        assert_eq!(
            core["resources"][0]["verbs"],
            json!(["get", "list", "watch"])
        );
        let writable = resource_list("", "v1", true).unwrap();
        assert_eq!(writable["resources"][0]["verbs"][0], "create");
        assert_eq!(core["resources"].as_array().unwrap().len(), 6);
        let groups = api_groups();
        assert_eq!(
            groups["groups"][0]["preferredVersion"]["groupVersion"],
            "coordination.k8s.io/v1"
        );
        assert_eq!(groups["groups"].as_array().unwrap().len(), 2);
        assert!(api_group("apps").is_none());
        assert_eq!(api_group("discovery.k8s.io").unwrap()["kind"], "APIGroup");
        let lease = find("coordination.k8s.io", "v1", "leases").unwrap();
        let typed = lease.typed(json!({"metadata": {"name": "n1"}}));
        assert_eq!(typed["apiVersion"], "coordination.k8s.io/v1");
        assert_eq!(typed["kind"], "Lease");
    }
}
