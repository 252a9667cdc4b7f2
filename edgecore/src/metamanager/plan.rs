//! What to do with one cloud message: the store operations, then the reply (spec §3.6, §4, §5.3).
//!
//! Pure: no I/O, so the rules are tested without a store or a hub.

use edgehub::{Message, Resource, op};
use serde_json::Value;

use super::token_key::token_key;
use crate::error::RemoteStatus;
use crate::store::{MetaKey, Op, ResourceVersion};
use edgehub::sorted_json;

/// The group metamanager handles; the others belong to modules we do not run.
pub(crate) const RESOURCE_GROUP: &str = "resource";

/// The plan for one cloud message.
#[derive(Debug)]
pub(crate) enum Plan {
    /// Not for metamanager (another group); logged and dropped, as KubeEdge's router does.
    Skip,
    /// Cannot be processed: answer with an `error` message (not an ack, so the cloud retries).
    Reject(&'static str),
    /// Commit `ops`, then reply.
    Write { ops: Vec<Op>, then: After },
}

/// What follows a successful commit.
#[derive(Debug, PartialEq)]
pub(crate) enum After {
    /// Send the `"OK"` ack.
    Ack,
    /// An answer to one of our requests (`parent`): wake its waiter, ack when `ack` is set.
    Answer {
        parent: String,
        ack: bool,
        answer: Result<Value, RemoteFailure>,
    },
}

/// The cloud's error answer: its text and, when it says so, what kind of failure it is.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RemoteFailure {
    pub(crate) status: RemoteStatus,
    pub(crate) reason: String,
}

impl RemoteFailure {
    fn of(v: &Value) -> Self {
        Self {
            status: status_of(v),
            reason: text_of(v),
        }
    }
}

/// The kind of a Kubernetes error: `ErrStatus.reason` (or code 404) when the cloud sent a
/// `StatusError`; for a bare error string, the API server's wording (`… already exists`,
/// `… not found`), which is all KubeEdge forwards in that case.
fn status_of(v: &Value) -> RemoteStatus {
    let status = v.get("ErrStatus").unwrap_or(v);
    let reason = status.get("reason").and_then(Value::as_str);
    let code = status.get("code").and_then(Value::as_u64);
    match (reason, code, v) {
        (Some("NotFound"), _, _) | (_, Some(404), _) => RemoteStatus::NotFound,
        (Some("AlreadyExists"), _, _) => RemoteStatus::AlreadyExists,
        (None, None, Value::String(text)) if text.trim_end().ends_with("already exists") => {
            RemoteStatus::AlreadyExists
        }
        (None, None, Value::String(text)) if text.trim_end().ends_with("not found") => {
            RemoteStatus::NotFound
        }
        _ => RemoteStatus::Other,
    }
}

/// Classifies a message received from the cloud.
pub(crate) fn plan(msg: &Message) -> Plan {
    if msg.route.group != RESOURCE_GROUP {
        return Plan::Skip;
    }
    if !msg.header.parent_msg_id.is_empty() {
        return plan_answer(msg);
    }
    let Ok(key) = MetaKey::object(&msg.route.resource) else {
        return Plan::Reject("resource is not <namespace>/<type>/<name>");
    };
    let op = match msg.route.operation.as_str() {
        op::INSERT | op::UPDATE | op::RESPONSE => match &msg.content {
            Value::Object(_) => Op::PutObject {
                rv: resource_version(msg),
                json: sorted_json(&msg.content),
                key,
            },
            _ => return Plan::Reject("content is not an object"),
        },
        op::PATCH => match &msg.content {
            Value::String(patch) => Op::PutRaw {
                key,
                value: patch.clone(),
            },
            Value::Object(_) => Op::PutRaw {
                key,
                value: sorted_json(&msg.content),
            },
            _ => return Plan::Reject("patch content is neither a string nor an object"),
        },
        op::DELETE => {
            // Every kind, not only pods as in KubeEdge: a name can be reused with a new uid, and
            // the old incarnation's delete (synccontroller resends it after a reconnect) may
            // arrive after the new one is stored and acked. Deleting by key alone would lose
            // the new object for good, since the cloud never resends an acked version.
            let uid = msg
                .content
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .filter(|u| !u.is_empty())
                .map(str::to_owned);
            Op::Delete { key, uid }
        }
        _ => return Plan::Reject("operation not supported by metamanager"),
    };
    Plan::Write {
        ops: vec![op],
        then: After::Ack,
    }
}

/// The type of service-account token rows.
pub(crate) const TOKEN_KIND: &str = "serviceaccounttoken";

/// Types whose row holds the patch the edge sent, never the cloud's answer to it: KubeEdge's
/// metamanager stores a `podpatch`/`nodepatch` when edged submits it, and the answer (the whole
/// patched Pod or Node) goes to the waiting caller only.
const PATCH_KINDS: [&str; 2] = ["podpatch", "nodepatch"];

/// An answer (`parent_msg_id` set): our outbox entry is done, the object is stored (except for
/// a patch, whose row keeps the patch), the waiter is woken, and an answer carrying a
/// resourceversion (ack-required, §4.1) is acked.
fn plan_answer(msg: &Message) -> Plan {
    let parent = msg.header.parent_msg_id.clone();
    let mut ops = vec![Op::OutboxRemove {
        msg_id: parent.clone(),
    }];
    let answer = answer_of(msg);
    if msg.route.operation == op::RESPONSE
        && let Ok(object @ Value::Object(_)) = &answer
        && let Ok(key) = MetaKey::object(&msg.route.resource)
        && !PATCH_KINDS.contains(&key.kind())
    {
        let key = match Resource::parse(key.as_str()) {
            // KubeEdge keys a token by its request, not its resource (see `token_key`).
            Some(Resource {
                namespace,
                kind: TOKEN_KIND,
                name: Some(name),
            }) => MetaKey::opaque(token_key(name, namespace, object), TOKEN_KIND),
            _ => key,
        };
        ops.push(Op::PutObject {
            key,
            json: sorted_json(object),
            rv: resource_version(msg),
        });
    }
    Plan::Write {
        ops,
        then: After::Answer {
            parent,
            ack: msg.route.operation == op::RESPONSE && !msg.header.resourceversion.is_empty(),
            answer,
        },
    }
}

/// The object of an answer: `ObjectResp{Object, Err}` yields Object; an `error` operation, a
/// non-null `Err` or a `StatusError` yields its failure.
fn answer_of(msg: &Message) -> Result<Value, RemoteFailure> {
    let c = &msg.content;
    if msg.route.operation == op::ERROR {
        return Err(RemoteFailure::of(c));
    }
    if let Value::Object(map) = c {
        if map.contains_key("Object") || map.contains_key("Err") {
            return match map.get("Err") {
                Some(e) if !e.is_null() => Err(RemoteFailure::of(e)),
                _ => Ok(map.get("Object").cloned().unwrap_or(Value::Null)),
            };
        }
        if map.contains_key("ErrStatus") {
            return Err(RemoteFailure::of(c));
        }
    }
    Ok(c.clone())
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Object(m) => m
            .get("message")
            .or_else(|| m.get("ErrStatus").and_then(|s| s.get("message")))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string()),
        other => other.to_string(),
    }
}

/// The header's resourceversion, else the object's `metadata.resourceVersion`.
fn resource_version(msg: &Message) -> Option<ResourceVersion> {
    if !msg.header.resourceversion.is_empty() {
        return ResourceVersion::parse(&msg.header.resourceversion);
    }
    msg.content
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(ResourceVersion::parse)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgehub::Route;
    use serde_json::json;

    fn vector(name: &str) -> Message {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/vectors")
            .join(name);
        Message::from_wire(&std::fs::read(path).unwrap()).unwrap()
    }

    fn single_op(p: Plan) -> (Op, After) {
        match p {
            Plan::Write { mut ops, then } if ops.len() == 1 => (ops.remove(0), then),
            other => panic!("expected one op, got {other:?}"),
        }
    }

    #[test]
    fn pod_insert_is_stored_sorted_with_its_rv_then_acked() {
        let (op, then) = single_op(plan(&vector("pod-insert.json")));
        assert_eq!(then, After::Ack);
        match op {
            Op::PutObject { key, json, rv } => {
                assert_eq!(key.as_str(), "default/pod/nginx-demo");
                assert_eq!(rv, ResourceVersion::parse("845213"));
                assert!(json.starts_with(r#"{"apiVersion":"v1","kind":"Pod","metadata":{"#));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn orphan_pod_delete_carries_the_uid() {
        let (op, _) = single_op(plan(&vector("pod-delete-orphan.json")));
        match op {
            Op::Delete { key, uid } => {
                assert_eq!(key.as_str(), "default/pod/nginx-demo");
                assert_eq!(uid.as_deref(), Some("8f0b7c2e-3d4a-4b9e-9a61-2f5c1e7d9a10"));
            }
            other => panic!("{other:?}"),
        }
        let (op, _) = single_op(plan(&vector("secret-delete.json")));
        assert!(
            matches!(&op, Op::Delete { uid: Some(u), .. } if u == "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"),
            "{op:?}"
        );
    }

    #[test]
    fn query_response_is_stored_and_acked_and_object_resp_unwrapped() {
        let Plan::Write { ops, then } = plan(&vector("configmap-query-response.json")) else {
            panic!()
        };
        assert_eq!(ops.len(), 2);
        assert!(
            matches!(&ops[0], Op::OutboxRemove { msg_id } if msg_id == "7f3a9c1e-2b4d-4e6f-8a0b-1c2d3e4f5a6b")
        );
        assert!(
            matches!(&ops[1], Op::PutObject { key, .. } if key.as_str() == "default/configmap/app-config")
        );
        assert!(matches!(
            then,
            After::Answer {
                ack: true,
                answer: Ok(_),
                ..
            }
        ));
    }

    /// A token answer is stored under KubeEdge's key for it, not under its resource.
    #[test]
    fn token_answers_are_stored_under_kubeedges_key() {
        let tr = json!({"kind": "TokenRequest",
            "spec": {"audiences": ["https://kubernetes.default.svc.cluster.local"],
                     "expirationSeconds": 3607,
                     "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "web", "uid": "u1"}},
            "status": {"token": "t", "expirationTimestamp": "2026-12-04T18:15:59Z"}});
        let mut m = Message::new(
            Route::new(
                "edgecontroller",
                "resource",
                "response",
                "ns1/serviceaccounttoken/builder",
            ),
            tr.clone(),
        );
        m.header.parent_msg_id = "q1".into();
        let Plan::Write { ops, then } = plan(&m) else {
            panic!()
        };
        match &ops[1] {
            Op::PutObject { key, .. } => {
                assert_eq!(key.kind(), "serviceaccounttoken");
                assert_eq!(key.as_str(), token_key("builder", "ns1", &tr));
                assert!(key.as_str().starts_with(r#""builder"/"ns1"/[]string{"#));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            then,
            After::Answer {
                ack: false,
                answer: Ok(_),
                ..
            }
        ));
    }

    /// The answer to a patch is the whole patched object; KubeEdge keeps the patch it sent in
    /// that row (written at submit), so the answer only wakes the caller and closes the outbox.
    #[test]
    fn patch_answers_wake_the_caller_and_leave_the_patch_row_alone() {
        let nodepatch = vector("nodepatch-response.json");
        let mut podpatch = nodepatch.clone();
        podpatch.route.resource = "default/podpatch/web".into();
        for m in [nodepatch, podpatch] {
            let Plan::Write { ops, then } = plan(&m) else {
                panic!()
            };
            assert!(
                matches!(ops.as_slice(), [Op::OutboxRemove { msg_id }] if *msg_id == m.header.parent_msg_id),
                "{ops:?}"
            );
            match then {
                After::Answer {
                    answer: Ok(obj), ..
                } => assert_eq!(obj["metadata"]["name"], "edge-node-1"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn error_answers_wake_with_the_cloud_text_and_store_nothing() {
        let mut m = Message::new(
            Route::new("edgecontroller", "resource", "response", "default/secret/s"),
            json!({"Object": null, "Err": {"ErrStatus": {"message": "secrets \"s\" not found"}}}),
        );
        m.header.parent_msg_id = "q1".into();
        let Plan::Write { ops, then } = plan(&m) else {
            panic!()
        };
        assert_eq!(ops.len(), 1);
        assert_eq!(
            then,
            After::Answer {
                parent: "q1".into(),
                ack: false,
                answer: Err(RemoteFailure {
                    // No reason or code in this StatusError: not classified.
                    status: RemoteStatus::Other,
                    reason: "secrets \"s\" not found".into()
                })
            }
        );
    }

    #[test]
    fn failures_are_classified_by_status_then_by_the_api_server_wording() {
        let st = |v: Value| status_of(&v);
        assert_eq!(
            st(json!({"ErrStatus": {"reason": "AlreadyExists", "code": 409, "message": "x"}})),
            RemoteStatus::AlreadyExists
        );
        assert_eq!(
            st(json!({"ErrStatus": {"code": 404}})),
            RemoteStatus::NotFound
        );
        assert_eq!(
            st(json!("nodes \"edge-1\" already exists")),
            RemoteStatus::AlreadyExists
        );
        assert_eq!(st(json!("boom")), RemoteStatus::Other);
        assert_eq!(
            st(json!({"ErrStatus": {"reason": "Forbidden", "message": "already exists"}})),
            RemoteStatus::Other
        );
    }

    #[test]
    fn junk_is_rejected_and_other_groups_skipped() {
        let m = |group: &str, op: &str, res: &str, c: Value| {
            Message::new(Route::new("edgecontroller", group, op, res), c)
        };
        for bad in [
            m("resource", "insert", "default/pod/x", json!("a string")),
            m("resource", "insert", "node", json!({})),
            m("resource", "frobnicate", "default/pod/x", json!({})),
            m("resource", "patch", "default/podpatch/x", json!(3)),
        ] {
            assert!(matches!(plan(&bad), Plan::Reject(_)), "{bad:?}");
        }
        assert!(matches!(
            plan(&vector("membership-update.json")),
            Plan::Skip
        ));
    }
}
