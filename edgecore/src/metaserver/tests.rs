//! MetaServer over real HTTP on loopback, with a real store and the change feed.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::*;

struct Lab {
    _dir: tempfile::TempDir,
    store: Store,
    changes: Changes,
    addr: SocketAddr,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

fn pod(name: &str, ns: &str, rv: u64, app: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": ns, "resourceVersion": rv.to_string(),
                        "labels": {"app": app}, "creationTimestamp": "2026-12-05T00:00:00Z"},
           "spec": {"nodeName": "edge-1"}})
}

async fn lab() -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("edgecore.db")).unwrap();
    store
        .put_object(
            "default/pod/web",
            &pod("web", "default", 10, "web"),
            Some("10"),
        )
        .await
        .unwrap();
    store
        .put_object(
            "kube-system/pod/dns",
            &pod("dns", "kube-system", 12, "dns"),
            Some("12"),
        )
        .await
        .unwrap();
    store
        .put_object(
            "default/configmap/cfg",
            &json!({"metadata": {"name": "cfg", "namespace": "default", "resourceVersion": "11"}}),
            Some("11"),
        )
        .await
        .unwrap();
    let changes = Changes::new();
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let server = MetaServer::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
        .with_bookmark_interval(Duration::from_millis(200));
    let addr = server.local_addr();
    server
        .spawn(store.clone(), changes.clone(), cancel.clone(), &tracker)
        .await
        .unwrap();
    Lab {
        _dir: dir,
        store,
        changes,
        addr,
        cancel,
        tracker,
    }
}

/// One request over a new connection to `addr`.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &'static [u8],
) -> Response<Incoming> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "metaserver");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(http_body_util::Full::new(Bytes::from_static(body)))
        .unwrap();
    sender.send_request(req).await.unwrap()
}

impl Lab {
    async fn request(&self, method: &str, path: &str, accept: &str) -> Response<Incoming> {
        http(self.addr, method, path, &[("accept", accept)], b"").await
    }

    /// Status code and JSON body of a whole answer.
    async fn get(&self, path: &str) -> (u16, Value) {
        self.get_as(path, "application/json").await
    }

    async fn get_as(&self, path: &str, accept: &str) -> (u16, Value) {
        let resp = self.request("GET", path, accept).await;
        let code = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (code, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.tracker.close();
        tokio::time::timeout(Duration::from_secs(10), self.tracker.wait())
            .await
            .expect("metaserver tasks did not stop");
        self.store.shutdown().await;
    }
}

/// Reads watch events (one JSON object per line) from a streaming answer.
struct Events {
    body: Incoming,
    buf: Vec<u8>,
}

impl Events {
    fn new(resp: Response<Incoming>) -> Self {
        Self {
            body: resp.into_body(),
            buf: Vec::new(),
        }
    }

    /// The next event; `None` when the server ended the watch.
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(serde_json::from_slice(&line).unwrap());
            }
            let frame = tokio::time::timeout(Duration::from_secs(10), self.body.frame())
                .await
                .expect("no watch event within 10 s")?
                .unwrap();
            if let Ok(data) = frame.into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }

    /// The next event that is not a bookmark.
    async fn next_change(&mut self) -> Option<Value> {
        loop {
            let e = self.next().await?;
            if e["type"] != "BOOKMARK" {
                return Some(e);
            }
        }
    }
}

fn names(list: &Value) -> Vec<String> {
    let mut n: Vec<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    n.sort();
    n
}

#[tokio::test]
async fn discovery_get_and_list_as_kubectl_and_client_go_read_them() {
    let lab = lab().await;
    let (code, api) = lab.get("/api").await;
    assert_eq!((code, api["versions"].clone()), (200, json!(["v1"])));
    let (_, v1) = lab.get("/api/v1").await;
    assert!(
        v1["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "pods" && r["verbs"] == json!(["get", "list", "watch"]))
    );
    let (_, groups) = lab.get("/apis").await;
    assert_eq!(groups["kind"], "APIGroupList");
    assert_eq!(lab.get("/version").await.1["major"], "1");

    // Every namespace, one namespace, selectors; the list carries the newest version.
    let (code, all) = lab.get("/api/v1/pods").await;
    assert_eq!(code, 200);
    assert_eq!(
        (all["kind"].clone(), all["apiVersion"].clone()),
        (json!("PodList"), json!("v1"))
    );
    assert_eq!(names(&all), ["dns", "web"]);
    assert_eq!(all["metadata"]["resourceVersion"], "12");
    assert_eq!(all["items"][0]["kind"], "Pod", "items are typed");
    assert_eq!(
        names(&lab.get("/api/v1/namespaces/default/pods").await.1),
        ["web"]
    );
    assert_eq!(
        names(&lab.get("/api/v1/pods?labelSelector=app%3Ddns").await.1),
        ["dns"]
    );
    assert_eq!(
        names(
            &lab.get("/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-1,metadata.name!%3Dweb")
                .await
                .1
        ),
        ["dns"]
    );
    let (code, web) = lab.get("/api/v1/namespaces/default/pods/web").await;
    assert_eq!((code, web["metadata"]["name"].clone()), (200, json!("web")));

    // kubectl's table.
    let (_, table) = lab
        .get_as(
            "/api/v1/namespaces/default/configmaps",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        )
        .await;
    assert_eq!(table["kind"], "Table");
    assert_eq!(table["rows"][0]["cells"][0], "cfg");
    assert_eq!(
        table["rows"][0]["object"]["metadata"]["namespace"],
        "default"
    );

    // Errors are Kubernetes Status objects that say what was wrong.
    let (code, missing) = lab.get("/api/v1/namespaces/default/pods/nope").await;
    assert_eq!((code, missing["reason"].clone()), (404, json!("NotFound")));
    assert_eq!(missing["message"], "pods \"nope\" not found");
    let (code, bad) = lab.get("/api/v1/pods?fieldSelector=spec.image%3Dx").await;
    assert_eq!((code, bad["kind"].clone()), (400, json!("Status")));
    assert!(bad["message"].as_str().unwrap().contains("spec.image"));
    let (code, unknown) = lab.get("/apis/apps/v1/deployments").await;
    assert_eq!(code, 404);
    assert!(
        unknown["message"]
            .as_str()
            .unwrap()
            .contains("deployments.apps")
    );
    // resourceVersion and resourceVersionMatch: only the current state (12) can be served.
    for (query, want) in [
        ("resourceVersion=0", 200),
        ("resourceVersion=12&resourceVersionMatch=Exact", 200),
        ("resourceVersion=11&resourceVersionMatch=Exact", 410),
        ("resourceVersion=13&resourceVersionMatch=Exact", 504),
        ("resourceVersion=5", 200),
        ("resourceVersion=5&resourceVersionMatch=NotOlderThan", 200),
        ("resourceVersion=99&resourceVersionMatch=NotOlderThan", 504),
        ("resourceVersionMatch=Exact", 400),
        ("resourceVersion=5&resourceVersionMatch=Newest", 400),
        ("resourceVersion=abc", 400),
    ] {
        let (code, _) = lab.get(&format!("/api/v1/pods?{query}")).await;
        assert_eq!(code, want, "{query}");
    }
    let resp = lab
        .request("DELETE", "/api/v1/namespaces/default/pods/web", "*/*")
        .await;
    assert_eq!(resp.status().as_u16(), 405);
    lab.stop().await;
}

#[tokio::test]
async fn watches_follow_commits_resume_and_refuse_what_is_gone() {
    let lab = lab().await;
    // resourceVersion=0: the current objects as ADDED, then the changes.
    let mut everything = Events::new(
        lab.request(
            "GET",
            "/api/v1/namespaces/default/pods?watch=1&resourceVersion=0",
            "*/*",
        )
        .await,
    );
    let first = everything.next_change().await.unwrap();
    assert_eq!(
        (
            first["type"].clone(),
            first["object"]["metadata"]["name"].clone()
        ),
        (json!("ADDED"), json!("web"))
    );
    // No resourceVersion: from now on, with bookmarks.
    let mut live = Events::new(
        lab.request(
            "GET",
            "/api/v1/pods?watch=True&allowWatchBookmarks=true",
            "*/*",
        )
        .await,
    );
    let bookmark = live.next().await.unwrap();
    assert_eq!(bookmark["type"], "BOOKMARK");
    assert_eq!(bookmark["object"]["metadata"]["resourceVersion"], "12");

    lab.changes.publish(
        ChangeKind::Modified,
        "pod",
        pod("web", "default", 13, "web"),
        None,
    );
    lab.changes.publish(
        ChangeKind::Added,
        "configmap",
        json!({"metadata": {"name": "x", "namespace": "default", "resourceVersion": "14"}}),
        None,
    );
    lab.changes.publish(
        ChangeKind::Deleted,
        "pod",
        pod("dns", "kube-system", 15, "dns"),
        None,
    );
    let e = live.next_change().await.unwrap();
    assert_eq!(
        (
            e["type"].clone(),
            e["object"]["metadata"]["resourceVersion"].clone()
        ),
        (json!("MODIFIED"), json!("13"))
    );
    let e = live.next_change().await.unwrap();
    assert_eq!(
        (e["type"].clone(), e["object"]["metadata"]["name"].clone()),
        (json!("DELETED"), json!("dns")),
        "the configmap is not a pod"
    );
    // The namespaced watch sees its namespace only.
    let e = everything.next_change().await.unwrap();
    assert_eq!(e["type"], "MODIFIED");

    // Resuming from 13 replays what followed; from before the server's start is too old.
    let mut resumed = Events::new(
        lab.request("GET", "/api/v1/pods?watch=1&resourceVersion=13", "*/*")
            .await,
    );
    let e = resumed.next_change().await.unwrap();
    assert_eq!(
        (e["type"].clone(), e["object"]["metadata"]["name"].clone()),
        (json!("DELETED"), json!("dns"))
    );
    let mut old = Events::new(
        lab.request("GET", "/api/v1/pods?watch=1&resourceVersion=3", "*/*")
            .await,
    );
    let e = old.next().await.unwrap();
    assert_eq!(
        (e["type"].clone(), e["object"]["code"].clone()),
        (json!("ERROR"), json!(410))
    );
    assert!(old.next().await.is_none(), "the watch ends after the error");

    // timeoutSeconds ends a watch.
    let mut short = Events::new(
        lab.request("GET", "/api/v1/pods?watch=1&timeoutSeconds=1", "*/*")
            .await,
    );
    assert!(short.next().await.is_none());
    lab.stop().await;
}

#[tokio::test]
async fn a_watcher_that_does_not_read_is_closed_not_buffered() {
    let lab = lab().await;
    let mut stuck = Events::new(lab.request("GET", "/api/v1/pods?watch=1", "*/*").await);
    // Far more than the socket buffers, the client buffer and the feed hold together.
    let big = "x".repeat(16 * 1024);
    for rv in 100..1600u64 {
        let mut p = pod("web", "default", rv, "web");
        p["metadata"]["annotations"] = json!({"pad": big});
        lab.changes.publish(ChangeKind::Modified, "pod", p, None);
        if rv % 200 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let mut last = Value::Null;
    let mut count = 0;
    while let Some(e) = stuck.next().await {
        count += 1;
        last = e;
    }
    assert!(
        count < 1500,
        "every change was buffered for the slow client ({count})"
    );
    assert_eq!(
        (last["type"].clone(), last["object"]["code"].clone()),
        (json!("ERROR"), json!(410))
    );
    lab.stop().await;
}

// ------------------------------------------------- writes and what the store lacks, via the cloud

/// A cloud link whose sent messages the test reads, and whose state it sets.
#[derive(Clone)]
struct TestLink {
    sent: tokio::sync::mpsc::Sender<edgehub::Message>,
    link: tokio::sync::watch::Receiver<edgehub::LinkState>,
}

impl crate::CloudLink for TestLink {
    async fn send(&self, msg: edgehub::Message) -> Result<(), edgehub::Message> {
        self.sent.send(msg).await.map_err(|e| e.0)
    }

    fn link(&self) -> tokio::sync::watch::Receiver<edgehub::LinkState> {
        self.link.clone()
    }
}

/// MetaServer with metamanager behind it; the test plays CloudCore.
struct CloudLab {
    lab: Lab,
    to_cloud: tokio::sync::mpsc::Receiver<edgehub::Message>,
    from_cloud: tokio::sync::mpsc::Sender<edgehub::Message>,
    link: tokio::sync::watch::Sender<edgehub::LinkState>,
}

fn connected() -> edgehub::LinkState {
    edgehub::LinkState::Connected {
        session: 1,
        endpoint: "cloud:10000".into(),
    }
}

async fn cloud_lab(state: edgehub::LinkState) -> CloudLab {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("edgecore.db")).unwrap();
    let changes = Changes::new();
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let (sent, to_cloud) = tokio::sync::mpsc::channel(16);
    let (link, link_rx) = tokio::sync::watch::channel(state);
    let server_link = link_rx.clone();
    let (from_cloud, inbound) = tokio::sync::mpsc::channel(16);
    let meta = crate::spawn_metamanager(
        crate::MetaSettings::default().with_changes(changes.clone()),
        store.clone(),
        TestLink {
            sent,
            link: link_rx,
        },
        &crate::Metrics::new(),
        inbound,
        cancel.child_token(),
        &tracker,
    );
    let server = MetaServer::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
        .with_cloud(meta, "edge-1", server_link);
    let addr = server.local_addr();
    server
        .spawn(store.clone(), changes.clone(), cancel.clone(), &tracker)
        .await
        .unwrap();
    CloudLab {
        lab: Lab {
            _dir: dir,
            store,
            changes,
            addr,
            cancel,
            tracker,
        },
        to_cloud,
        from_cloud,
        link,
    }
}

impl CloudLab {
    /// Sends a request with a body; returns once the answer's head is in.
    fn send(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &'static [u8],
    ) -> tokio::task::JoinHandle<(u16, Value)> {
        let addr = self.lab.addr;
        let (method, path, content_type) =
            (method.to_owned(), path.to_owned(), content_type.to_owned());
        tokio::spawn(async move {
            let resp = http(
                addr,
                &method,
                &path,
                &[("content-type", &content_type)],
                body,
            )
            .await;
            let code = resp.status().as_u16();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (code, serde_json::from_slice(&body).unwrap_or(Value::Null))
        })
    }

    /// The next application the edge sent, decoded.
    async fn application(&mut self) -> (edgehub::Message, application::Application) {
        let msg = tokio::time::timeout(Duration::from_secs(5), self.to_cloud.recv())
            .await
            .expect("an application within 5 s")
            .expect("link open");
        assert_eq!(
            (
                msg.route.source.as_str(),
                msg.route.group.as_str(),
                msg.route.operation.as_str(),
                msg.route.resource.as_str()
            ),
            ("metaserver", "dynamiccontroller", "null", "null")
        );
        let app = serde_json::from_value(msg.content.clone()).expect("an application");
        (msg, app)
    }

    /// Answers `req` as dynamicController does.
    async fn answer(&self, req: &edgehub::Message, app: application::Application) {
        let mut msg = edgehub::Message::new(
            edgehub::Route::new(
                "dynamiccontroller",
                "resource",
                "applicationResponse",
                "node/edge-1/ignore/Application/ignore",
            ),
            serde_json::to_value(&app).unwrap(),
        );
        msg.header.parent_msg_id = req.header.msg_id.clone();
        self.from_cloud.send(msg).await.unwrap();
    }
}

#[tokio::test]
async fn a_write_goes_to_the_cloud_and_answers_with_its_result_without_touching_the_store() {
    let mut lab = cloud_lab(connected()).await;
    let created = lab.send(
        "POST",
        "/api/v1/namespaces/default/configmaps?fieldManager=kubectl-create",
        "application/json",
        br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"new"},"data":{"k":"v"}}"#,
    );
    let (req, mut app) = lab.application().await;
    assert_eq!(app.verb, "create");
    assert_eq!(app.nodename, "edge-1");
    assert_eq!(app.key, "/core/v1/configmaps/default/null");
    let option: Value = serde_json::from_slice(app.option.as_deref().unwrap()).unwrap();
    assert_eq!(option["fieldManager"], "kubectl-create");
    let body: Value = serde_json::from_slice(app.req_body.as_deref().unwrap()).unwrap();
    assert_eq!(body["data"]["k"], "v");
    // Nothing is stored before the cloud answers, nor because it answered.
    assert_eq!(
        lab.lab.store.get("default/configmap/new").await.unwrap(),
        None
    );
    app.status = "Approved".into();
    app.resp_body = Some(
        br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"new","namespace":"default","resourceVersion":"77"},"data":{"k":"v"}}"#.to_vec(),
    );
    lab.answer(&req, app).await;
    let (code, answer) = created.await.unwrap();
    assert_eq!(code, 201, "{answer}");
    assert_eq!(answer["metadata"]["resourceVersion"], "77");
    assert_eq!(
        lab.lab.store.get("default/configmap/new").await.unwrap(),
        None
    );

    // The API server's refusal comes back as its Status, with its code.
    let again = lab.send(
        "POST",
        "/api/v1/namespaces/default/configmaps",
        "application/json",
        br#"{"metadata":{"name":"new"}}"#,
    );
    let (req, mut app) = lab.application().await;
    app.status = "Rejected".into();
    app.error = json!({"ErrStatus": {"metadata": {}, "status": "Failure", "message": "configmaps \"new\" already exists", "reason": "AlreadyExists", "details": {"name": "new", "kind": "configmaps"}, "code": 409}});
    lab.answer(&req, app).await;
    let (code, status) = again.await.unwrap();
    assert_eq!(code, 409);
    assert_eq!(
        (status["kind"].as_str(), status["reason"].as_str()),
        (Some("Status"), Some("AlreadyExists"))
    );

    // A patch carries its type and data; a delete its options.
    let patched = lab.send(
        "PATCH",
        "/api/v1/namespaces/default/configmaps/new",
        "application/merge-patch+json",
        br#"{"data":{"k":"w"}}"#,
    );
    let (req, mut app) = lab.application().await;
    assert_eq!(
        (app.verb.as_str(), app.key.as_str()),
        ("patch", "/core/v1/configmaps/default/new")
    );
    let info: Value = serde_json::from_slice(app.option.as_deref().unwrap()).unwrap();
    assert_eq!(info["PatchType"], "application/merge-patch+json");
    app.status = "Approved".into();
    app.resp_body = Some(br#"{"kind":"ConfigMap","data":{"k":"w"}}"#.to_vec());
    lab.answer(&req, app).await;
    assert_eq!(patched.await.unwrap().0, 200);

    let deleted = lab.send(
        "DELETE",
        "/api/v1/namespaces/default/configmaps/new",
        "application/json",
        br#"{"propagationPolicy":"Background"}"#,
    );
    let (req, mut app) = lab.application().await;
    assert_eq!(app.verb, "delete");
    app.status = "Approved".into();
    lab.answer(&req, app).await;
    let (code, status) = deleted.await.unwrap();
    assert_eq!((code, status["status"].as_str()), (200, Some("Success")));
    lab.lab.stop().await;
}

#[tokio::test]
async fn a_resource_the_edge_does_not_hold_is_listed_by_the_cloud() {
    let mut lab = cloud_lab(connected()).await;
    let listed = lab.send(
        "GET",
        "/apis/apps/v1/namespaces/default/deployments?labelSelector=app%3Dweb&limit=5",
        "",
        b"",
    );
    let (req, mut app) = lab.application().await;
    assert_eq!(
        (app.verb.as_str(), app.key.as_str()),
        ("list", "/apps/v1/deployments/default/null")
    );
    let option: Value = serde_json::from_slice(app.option.as_deref().unwrap()).unwrap();
    assert_eq!(
        (option["labelSelector"].as_str(), option["limit"].as_i64()),
        (Some("app=web"), Some(5))
    );
    app.status = "Approved".into();
    app.resp_body = Some(br#"{"apiVersion":"apps/v1","kind":"DeploymentList","metadata":{"resourceVersion":"90"},"items":[]}"#.to_vec());
    lab.answer(&req, app).await;
    let (code, list) = listed.await.unwrap();
    assert_eq!((code, list["kind"].as_str()), (200, Some("DeploymentList")));
    lab.lab.stop().await;
}

#[tokio::test]
async fn offline_a_write_fails_at_once_with_503_and_reads_keep_working() {
    let lab = cloud_lab(edgehub::LinkState::Disconnected {
        reason: edgehub::DisconnectReason::Closed,
    })
    .await;
    lab.lab
        .store
        .put_object(
            "default/pod/web",
            &pod("web", "default", 10, "web"),
            Some("10"),
        )
        .await
        .unwrap();
    let (code, status) = lab
        .send(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            br#"{"metadata":{"name":"x"}}"#,
        )
        .await
        .unwrap();
    assert_eq!(code, 503, "{status}");
    assert_eq!(status["reason"], "ServiceUnavailable");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("not connected to CloudCore"),
        "{status}"
    );
    let (code, _) = lab.lab.get("/api/v1/namespaces/default/pods/web").await;
    assert_eq!(code, 200);
    drop(lab.link);
    lab.lab.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_cloud_without_dynamic_controller_gets_a_504_that_says_so() {
    let mut lab = cloud_lab(connected()).await;
    let pending = lab.send("DELETE", "/api/v1/namespaces/default/configmaps/a", "", b"");
    let _ = lab.application().await;
    // No answer: time runs on to the 10 s limit.
    let (code, status) = pending.await.unwrap();
    assert_eq!(code, 504, "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("dynamicController"),
        "{status}"
    );
    lab.lab.stop().await;
}

#[tokio::test]
async fn a_get_the_store_cannot_answer_is_asked_of_the_cloud_and_offline_is_a_404() {
    let mut lab = cloud_lab(connected()).await;
    let got = lab.send(
        "GET",
        "/api/v1/namespaces/default/configmaps/elsewhere",
        "",
        b"",
    );
    let (req, mut app) = lab.application().await;
    assert_eq!(
        (app.verb.as_str(), app.key.as_str()),
        ("get", "/core/v1/configmaps/default/elsewhere")
    );
    app.status = "Approved".into();
    app.resp_body = Some(br#"{"kind":"ConfigMap","metadata":{"name":"elsewhere"}}"#.to_vec());
    lab.answer(&req, app).await;
    let (code, cm) = got.await.unwrap();
    assert_eq!(
        (code, cm["metadata"]["name"].as_str()),
        (200, Some("elsewhere"))
    );
    // Not stored: nothing would keep it current.
    assert_eq!(
        lab.lab
            .store
            .get("default/configmap/elsewhere")
            .await
            .unwrap(),
        None
    );

    lab.link.send_replace(edgehub::LinkState::Disconnected {
        reason: edgehub::DisconnectReason::Closed,
    });
    // Offline the store answers (at once once metamanager has seen the link go down; should
    // the request beat that, the application waits out its 10 s and the store answers then).
    let (code, status) = lab
        .send(
            "GET",
            "/api/v1/namespaces/default/configmaps/elsewhere",
            "",
            b"",
        )
        .await
        .unwrap();
    assert_eq!(code, 404);
    assert_eq!(status["reason"], "NotFound");
    lab.lab.stop().await;
}

#[tokio::test]
async fn offline_a_resource_the_edge_does_not_hold_is_answered_from_meta_v2() {
    let lab = cloud_lab(edgehub::LinkState::Disconnected {
        reason: edgehub::DisconnectReason::Closed,
    })
    .await;
    for (name, app) in [("web", "web"), ("db", "db")] {
        lab.lab
            .store
            .put_object(
                &format!("shop/deployment/{name}"),
                &json!({"apiVersion": "apps/v1", "kind": "Deployment",
                        "metadata": {"name": name, "namespace": "shop", "resourceVersion": "31",
                                     "labels": {"app": app}}}),
                Some("31"),
            )
            .await
            .unwrap();
    }
    let (code, list) = lab
        .send(
            "GET",
            "/apis/apps/v1/namespaces/shop/deployments?labelSelector=app%3Dweb",
            "",
            b"",
        )
        .await
        .unwrap();
    assert_eq!(code, 200, "{list}");
    assert_eq!(list["kind"], "DeploymentList");
    assert_eq!(list["metadata"]["resourceVersion"], "31");
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, ["web"]);
    let (code, one) = lab
        .send(
            "GET",
            "/apis/apps/v1/namespaces/shop/deployments/db",
            "",
            b"",
        )
        .await
        .unwrap();
    assert_eq!((code, one["metadata"]["name"].as_str()), (200, Some("db")));
    // Nothing of the resource at all: the cloud's absence is the answer.
    let (code, status) = lab
        .send("GET", "/apis/batch/v1/namespaces/shop/jobs", "", b"")
        .await
        .unwrap();
    assert_eq!(code, 503, "{status}");
    drop(lab.link);
    lab.lab.stop().await;
}

impl CloudLab {
    /// The next message to the cloud that is not an ack.
    async fn next_request(&mut self) -> edgehub::Message {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(5), self.to_cloud.recv())
                .await
                .expect("a message within 5 s")
                .expect("link open");
            if msg.route.operation != "response" {
                return msg;
            }
        }
    }
}

#[tokio::test]
async fn a_watch_of_what_the_edge_does_not_hold_registers_a_listener_and_is_served_locally() {
    let mut lab = cloud_lab(connected()).await;
    let addr = lab.lab.addr;
    let watching = tokio::spawn(async move {
        let resp = http(
            addr,
            "GET",
            "/apis/apps/v1/namespaces/shop/deployments?watch=true&resourceVersion=50",
            &[],
            b"",
        )
        .await;
        (resp.status().as_u16(), Events::new(resp))
    });
    // The kind is learnt from a one-item list.
    let (req, mut app) = lab.application().await;
    assert_eq!(
        (app.verb.as_str(), app.key.as_str()),
        ("list", "/apps/v1/deployments/shop/null")
    );
    app.status = "Approved".into();
    app.resp_body = Some(br#"{"apiVersion":"apps/v1","kind":"DeploymentList","metadata":{"resourceVersion":"50"},"items":[]}"#.to_vec());
    lab.answer(&req, app).await;
    // Then the listener is registered.
    let (req, mut app) = lab.application().await;
    assert_eq!(
        (app.verb.as_str(), app.key.as_str()),
        ("watch", "/apps/v1/deployments/shop/null")
    );
    let watch_id = app.id.clone();
    app.status = "Approved".into();
    lab.answer(&req, app).await;
    let (code, mut events) = watching.await.unwrap();
    assert_eq!(code, 200);

    // The listener sends the current objects, then changes, as dynamicController does.
    for (op, rv) in [("insert", "40"), ("update", "60")] {
        let msg = edgehub::Message::new(
            edgehub::Route::new("dynamiccontroller", "resource", op, "shop/deployment/web"),
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                   "metadata": {"name": "web", "namespace": "shop", "resourceVersion": rv}}),
        )
        .with_resource_version(rv);
        lab.from_cloud.send(msg).await.unwrap();
    }
    // Only what is newer than the watch's version reaches it.
    let ev = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("an event")
        .expect("the watch is open");
    assert_eq!(ev["type"], "MODIFIED");
    assert_eq!(ev["object"]["metadata"]["resourceVersion"], "60");
    assert_eq!(ev["object"]["kind"], "Deployment");
    // Stored like any cloud object, with MetaServer's meta_v2 copy.
    assert!(
        lab.lab
            .store
            .get("shop/deployment/web")
            .await
            .unwrap()
            .is_some()
    );

    // A new session: the live watch is registered again.
    lab.link.send_replace(edgehub::LinkState::Connected {
        session: 2,
        endpoint: "cloud:10000".into(),
    });
    let sync = lab.next_request().await;
    assert_eq!(sync.route.resource, "watchapp/sync");
    assert!(sync.content.get(&watch_id).is_some(), "{}", sync.content);
    let mut answer = edgehub::Message::new(
        edgehub::Route::new(
            "dynamiccontroller",
            "resource",
            "applicationResponse",
            "watchapp/sync",
        ),
        json!({}),
    );
    answer.header.parent_msg_id = sync.header.msg_id.clone();
    lab.from_cloud.send(answer).await.unwrap();

    // The last watcher goes: the cloud is told to drop the listener.
    drop(events);
    let sync = lab.next_request().await;
    assert_eq!(sync.route.resource, "watchapp/sync");
    assert_eq!(sync.content, json!({}));
    lab.lab.stop().await;
}

#[tokio::test]
async fn an_object_that_starts_or_stops_matching_a_watch_selector_is_added_or_deleted() {
    let lab = lab().await;
    let mut web = Events::new(
        lab.request(
            "GET",
            "/api/v1/namespaces/default/pods?watch=1&labelSelector=app%3Dweb",
            "*/*",
        )
        .await,
    );
    // The web pod is relabelled db: it leaves the watch.
    lab.changes.publish(
        ChangeKind::Modified,
        "pod",
        pod("web", "default", 20, "db"),
        Some(&pod("web", "default", 10, "web")),
    );
    // An unrelated change that never matched: nothing.
    lab.changes.publish(
        ChangeKind::Modified,
        "pod",
        pod("other", "default", 21, "db"),
        Some(&pod("other", "default", 9, "db")),
    );
    // Relabelled back: it joins again; then a change while matching.
    lab.changes.publish(
        ChangeKind::Modified,
        "pod",
        pod("web", "default", 22, "web"),
        Some(&pod("web", "default", 20, "db")),
    );
    lab.changes.publish(
        ChangeKind::Modified,
        "pod",
        pod("web", "default", 23, "web"),
        Some(&pod("web", "default", 22, "web")),
    );
    let mut got = Vec::new();
    for _ in 0..3 {
        let e = web.next_change().await.unwrap();
        got.push((
            e["type"].as_str().unwrap().to_owned(),
            e["object"]["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .to_owned(),
        ));
    }
    assert_eq!(
        got,
        [
            ("DELETED".to_owned(), "20".to_owned()),
            ("ADDED".to_owned(), "22".to_owned()),
            ("MODIFIED".to_owned(), "23".to_owned())
        ]
    );
    lab.stop().await;
}

#[tokio::test]
async fn a_write_is_never_sent_twice_but_a_read_is_sent_again_after_a_reconnect() {
    let mut lab = cloud_lab(connected()).await;
    let write = lab.send(
        "POST",
        "/api/v1/namespaces/default/configmaps",
        "application/json",
        br#"{"metadata":{"name":"once"}}"#,
    );
    let read = lab.send("GET", "/apis/apps/v1/deployments", "", b"");
    let mut sent = vec![
        lab.application().await.1.verb,
        lab.application().await.1.verb,
    ];
    sent.sort();
    assert_eq!(sent, ["create", "list"]);
    // The session drops before the cloud answers either.
    lab.link.send_replace(edgehub::LinkState::Disconnected {
        reason: edgehub::DisconnectReason::Closed,
    });
    let (code, status) = write.await.unwrap();
    assert_eq!(code, 503, "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("may have been carried out"),
        "{status}"
    );
    // A new session: only the read goes again, and its answer is the client's.
    lab.link.send_replace(edgehub::LinkState::Connected {
        session: 2,
        endpoint: "cloud:10000".into(),
    });
    let (req, mut app) = lab.application().await;
    assert_eq!(app.verb, "list");
    app.status = "Approved".into();
    app.resp_body = Some(br#"{"kind":"DeploymentList","metadata":{},"items":[]}"#.to_vec());
    lab.answer(&req, app).await;
    let (code, list) = read.await.unwrap();
    assert_eq!((code, list["kind"].as_str()), (200, Some("DeploymentList")));
    lab.lab.stop().await;
}
