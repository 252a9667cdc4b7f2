//! MetaServer under load (issue #14 item 7): the real `edgecore` with MetaServer on, synced
//! from the simulator with N mixed objects (configmap, secret, pod in turn), W watchers of
//! configmaps; prints list latency (p50/p99 of lists of every pod and of one namespace's
//! configmaps), the fan-out latency of one cloud change to all watchers, and edgecore's
//! memory. Prints numbers, asserts only that every watcher saw the change.
//!
//! `EDGECORE_BIN=target/release/edgecore cargo run --release -p edgecore-tests --bin bench_metaserver [-- OBJECTS WATCHERS LISTS]`
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use cloudsim::edge::{EdgeCore, EdgeOptions, diff, read_meta};
use cloudsim::feed::{self, FeedKind, NAMESPACE};
use cloudsim::flood::Mem;
use cloudsim::{CloudSim, Cluster, Event, Pki, PkiOptions, SimConfig};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::net::TcpStream;

const NODE: &str = "bench-node";

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let objects = args.next().transpose()?.unwrap_or(5_000);
    let watchers = args.next().transpose()?.unwrap_or(20);
    let lists = args.next().transpose()?.unwrap_or(200);

    let dir = tempfile::tempdir()?;
    let pki = Pki::generate(&PkiOptions::new(NODE))?;
    let any: SocketAddr = "127.0.0.1:0".parse()?;
    let sim = CloudSim::start(SimConfig::new(
        "cloud-a",
        any,
        dir.path().join("cluster.db"),
        pki.clone(),
    ))
    .await?;
    let port = std::net::TcpListener::bind(any)?.local_addr()?.port();
    let server: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut opts = EdgeOptions::new(
        NODE,
        &sim.addr().to_string(),
        pki.write(&dir.path().join("pki"))?,
        &dir.path().join("edge"),
    )
    .with_product_link_defaults();
    opts.message_qps = 0;
    opts.meta_server = Some(server.to_string());
    let db = opts.db_path();
    let mut events = sim.events();
    let mut edge = EdgeCore::spawn(opts).await?;
    events
        .wait_for(Duration::from_secs(60), "edgecore connects", |e| {
            matches!(e, Event::Connected { .. })
        })
        .await?;
    let pid = edge.pid().context("edgecore's pid")?;
    println!(
        "\nmetaserver: {objects} mixed objects, {watchers} watchers, {lists} lists of each kind"
    );
    let idle = Mem::read(pid)?;
    println!("  idle, MetaServer on, no objects: {idle}");

    let cluster: Arc<Cluster> = Arc::clone(sim.cluster());
    let t0 = Instant::now();
    {
        let cluster = Arc::clone(&cluster);
        tokio::task::spawn_blocking(move || -> Result<()> {
            for i in 0..objects {
                feed::write(&cluster, FeedKind::Mixed.kind_of(i), i, 0)?;
            }
            Ok(())
        })
        .await??;
    }
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        edge.check_running()?;
        let (c, d) = (Arc::clone(&cluster), db.clone());
        let done = tokio::task::spawn_blocking(move || -> Result<bool> {
            let objects = c.objects()?;
            Ok(read_meta(&d).is_ok_and(|meta| diff(&objects, &meta).is_empty()))
        })
        .await??;
        if done {
            break;
        }
        if t0.elapsed() > Duration::from_secs(900) {
            bail!("the edge store did not equal the cluster within 900 s");
        }
    }
    println!(
        "  synced in {:.1} s: {}",
        t0.elapsed().as_secs_f64(),
        Mem::read(pid)?
    );

    // Lists, one at a time.
    for path in [
        "/api/v1/pods".to_owned(),
        format!("/api/v1/namespaces/{NAMESPACE}/configmaps"),
    ] {
        let mut took = Vec::with_capacity(lists);
        let mut items = 0;
        for _ in 0..lists {
            let t = Instant::now();
            let body = get(server, &path)
                .await?
                .into_body()
                .collect()
                .await?
                .to_bytes();
            took.push(t.elapsed());
            let v: serde_json::Value = serde_json::from_slice(&body)?;
            items = v["items"].as_array().map_or(0, Vec::len);
        }
        took.sort();
        let p = |q: f64| took[((took.len() as f64 - 1.0) * q).round() as usize];
        println!(
            "  list {path} ({items} items): p50 {:.1} ms, p99 {:.1} ms",
            p(0.5).as_secs_f64() * 1e3,
            p(0.99).as_secs_f64() * 1e3
        );
    }

    // Watchers, then one change in the cloud.
    let mut bodies = Vec::with_capacity(watchers);
    for _ in 0..watchers {
        let path = format!("/api/v1/namespaces/{NAMESPACE}/configmaps?watch=1");
        bodies.push(get(server, &path).await?.into_body());
    }
    let with_watchers = Mem::read(pid)?;
    let (kind, i) = (FeedKind::ConfigMap.kind_of(0), 0);
    let name = feed::name_of(kind, i);
    let written = Instant::now();
    feed::write(&cluster, kind, i, 1)?;
    let mut arrivals = Vec::with_capacity(watchers);
    let mut tasks = tokio::task::JoinSet::new();
    for body in bodies {
        let name = name.clone();
        tasks.spawn(async move { first_event_naming(body, &name).await });
    }
    while let Some(r) = tasks.join_next().await {
        arrivals.push(r??.duration_since(written));
    }
    arrivals.sort();
    println!(
        "  one cloud change to {watchers} watchers (cloud write to each watcher's event): first {:.1} ms, median {:.1} ms, last {:.1} ms",
        arrivals[0].as_secs_f64() * 1e3,
        arrivals[arrivals.len() / 2].as_secs_f64() * 1e3,
        arrivals[arrivals.len() - 1].as_secs_f64() * 1e3
    );
    println!("  with {watchers} watchers open: {with_watchers}");
    println!("  at the end: {}", Mem::read(pid)?);
    println!(
        "  goal: under 24 MB VmRSS with all of that (KubeEdge's MetaServer: about 700 MB reported, kubeedge#3527)"
    );
    let _ = edge.terminate(Duration::from_secs(10)).await;
    sim.stop().await;
    Ok(())
}

/// GET over a fresh HTTP/1.1 connection.
async fn get(server: SocketAddr, path: &str) -> Result<Response<Incoming>> {
    let stream = TcpStream::connect(server).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", "metaserver")
        .body(Empty::<Bytes>::new())?;
    Ok(sender.send_request(req).await?)
}

/// When a watch event naming `name` arrived.
async fn first_event_naming(mut body: Incoming, name: &str) -> Result<Instant> {
    let needle = format!("\"name\":\"{name}\"");
    let mut seen = Vec::new();
    let within = Duration::from_secs(60);
    loop {
        let frame = tokio::time::timeout(within, body.frame())
            .await
            .context("no event within 60 s")?
            .context("the watch ended")??;
        if let Ok(data) = frame.into_data() {
            seen.extend_from_slice(&data);
            if String::from_utf8_lossy(&seen).contains(&needle) {
                return Ok(Instant::now());
            }
        }
    }
}
