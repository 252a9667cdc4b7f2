//! The downstream messages edgecontroller and synccontroller build, and CloudHub's answers to
//! upstream requests (spec §3, §4).

use edgehub::{Message, Route, op};
use serde_json::{Value, json};

use crate::cluster::{ChangeOp, Object};
use crate::queue::Outgoing;

/// Source of every cloud message that carries an object.
pub(crate) const EDGECONTROLLER: &str = "edgecontroller";
/// Group of every cloud message that carries an object.
pub(crate) const RESOURCE: &str = "resource";

/// The message edgecontroller sends for a change-log entry; `None` for a non-delete change of
/// an object that is deleted by now (its delete change follows).
pub(crate) fn for_change(op_kind: ChangeOp, obj: &Object) -> Option<Outgoing> {
    let operation = match op_kind {
        ChangeOp::Deleted => op::DELETE,
        _ if obj.deleted => return None,
        // Secrets go out as `update` even when added (downstream.go `syncSecret`).
        ChangeOp::Added if obj.kind == "secret" => op::UPDATE,
        ChangeOp::Added => op::INSERT,
        ChangeOp::Modified => op::UPDATE,
    };
    Some(object_message(operation, obj))
}

/// A message carrying the full object with its resourceversion header.
pub(crate) fn object_message(operation: &str, obj: &Object) -> Outgoing {
    let msg = Message::new(
        Route::new(EDGECONTROLLER, RESOURCE, operation, &obj.resource()),
        obj.body.clone(),
    )
    .with_resource_version(obj.rv.to_string());
    Outgoing {
        key: obj.uid.clone(),
        uid: Some(obj.uid.clone()),
        msg,
        rv: obj.rv,
        is_delete: operation == op::DELETE,
    }
}

/// synccontroller's delete for an object that vanished: metadata only, no resourceversion.
pub(crate) fn orphan_delete(resource: &str, namespace: &str, name: &str, uid: &str) -> Outgoing {
    let msg = Message::new(
        Route::new(EDGECONTROLLER, RESOURCE, op::DELETE, resource),
        json!({"metadata": {"name": name, "namespace": namespace, "uid": uid}}),
    );
    Outgoing {
        key: uid.to_owned(),
        uid: Some(uid.to_owned()),
        msg,
        rv: 0,
        is_delete: true,
    }
}

/// edgecontroller's answer to a configmap/secret query: ack-required, parent = the query.
pub(crate) fn query_response(req: &Message, obj: &Object) -> Outgoing {
    let mut msg = Message::new(
        Route::new(EDGECONTROLLER, RESOURCE, op::RESPONSE, &req.route.resource),
        obj.body.clone(),
    )
    .with_resource_version(obj.rv.to_string());
    msg.header.parent_msg_id = req.header.msg_id.clone();
    Outgoing {
        key: format!("response:{}", msg.header.msg_id),
        uid: Some(obj.uid.clone()),
        msg,
        rv: obj.rv,
        is_delete: false,
    }
}

/// A no-ack answer from edgecontroller with the given content.
pub(crate) fn answer(req: &Message, content: Value) -> Message {
    let mut msg = Message::new(
        Route::new(EDGECONTROLLER, RESOURCE, op::RESPONSE, &req.route.resource),
        content,
    );
    msg.header.parent_msg_id = req.header.msg_id.clone();
    msg
}

/// `ObjectResp{Object, Err: nil}`.
pub(crate) fn object_resp(object: Value) -> Value {
    json!({"Object": object, "Err": null})
}

/// A `StatusError` for a missing object, as Go marshals it.
pub(crate) fn not_found(kind: &str, name: &str) -> Value {
    let plural = format!("{kind}s");
    json!({"ErrStatus": {
        "metadata": {},
        "status": "Failure",
        "message": format!("{plural} \"{name}\" not found"),
        "reason": "NotFound",
        "details": {"name": name, "kind": plural},
        "code": 404
    }})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(kind: &str, deleted: bool) -> Object {
        Object {
            uid: "u1".into(),
            namespace: "default".into(),
            kind: kind.into(),
            name: "x".into(),
            rv: 42,
            body: json!({"kind": "ConfigMap", "metadata": {"name": "x"}}),
            deleted,
        }
    }

    #[test]
    fn changes_map_to_operations_like_edgecontroller() {
        let m = for_change(ChangeOp::Added, &obj("configmap", false)).unwrap();
        assert_eq!(m.msg.route.operation, "insert");
        assert_eq!(m.msg.route.resource, "default/configmap/x");
        assert_eq!(m.msg.route.source, "edgecontroller");
        assert_eq!(m.msg.route.group, "resource");
        assert_eq!(m.msg.header.resourceversion, "42");
        assert_eq!(
            for_change(ChangeOp::Added, &obj("secret", false))
                .unwrap()
                .msg
                .route
                .operation,
            "update"
        );
        assert!(for_change(ChangeOp::Modified, &obj("pod", true)).is_none());
        let d = for_change(ChangeOp::Deleted, &obj("pod", true)).unwrap();
        assert!(d.is_delete);
    }

    #[test]
    fn orphan_delete_has_metadata_only() {
        let d = orphan_delete("default/pod/p", "default", "p", "u");
        assert_eq!(
            d.msg.content,
            json!({"metadata": {"name": "p", "namespace": "default", "uid": "u"}})
        );
        assert!(d.msg.header.resourceversion.is_empty());
    }
}
