//! `s3`: storaged's S3 API against fio doing the same durable writes and
//! the same reads on the same filesystem, natively: PUT and GET of 1 MiB
//! and 64 MiB objects (MB/s), and of 4 KiB objects with 1 and 16 clients
//! (ops/s, and the single client's p50/p99 latency). A PUT is answered
//! once its data and record are synced; fio's peer writes each file and
//! fsyncs it on close. The client signs with presigned URLs (rusty-s3) and
//! keeps one HTTP/1.1 connection per client.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

use crate::api::{host_token, Controller, HOST_ID};
use crate::report::{Report, Samples};

const PEER: &str = "fio";
const MIB: usize = 1 << 20;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One keep-alive HTTP/1.1 connection to storaged.
struct Conn {
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
}

impl Conn {
    async fn open(port: u16) -> Result<Conn> {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        let (send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Conn {
            send,
            host: format!("127.0.0.1:{port}"),
        })
    }

    /// Sends a signed request; the body of a 2xx answer.
    async fn call(&mut self, method: &str, url: &url::Url, body: Bytes) -> Result<Bytes> {
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        let req = hyper::Request::builder()
            .method(method)
            .uri(&path)
            .header("host", &self.host)
            .header("content-length", body.len())
            .body(Full::new(body))?;
        self.send.ready().await?;
        let reply = self.send.send_request(req).await?;
        let status = reply.status();
        let body = reply.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!(
                "{method} {path}: {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(body)
    }
}

/// A fio job's figure: (MB/s, IOPS) of its `rw` direction.
fn fio(dir: &Path, args: &[&str], rw: &str) -> Result<(f64, f64)> {
    let out = Command::new("fio")
        .args([
            "--output-format=json",
            "--ioengine=psync",
            "--group_reporting",
        ])
        .arg(format!("--directory={}", dir.display()))
        .args(args)
        .output()
        .context("running fio")?;
    if !out.status.success() {
        bail!("fio: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let job = &v["jobs"][0][rw];
    Ok((
        job["bw_bytes"].as_f64().unwrap_or(0.0) / 1e6,
        job["iops"].as_f64().unwrap_or(0.0),
    ))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub fn run(runs: u32) -> Result<()> {
    if Command::new("fio").arg("--version").output().is_err() {
        bail!("fio is not installed (apt-get install fio)");
    }
    let work = crate::workspace().join("target/bench-s3");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("fio"))?;
    let controller = Controller::start(None, "")?;
    let port = crate::api::free_port()?;
    let config = work.join("storaged.toml");
    std::fs::write(
        &config,
        format!(
            "host_id = \"{HOST_ID}\"\nlisten = \"127.0.0.1:0\"\nnbd_listen = \"127.0.0.1:0\"\n\
             data_dir = \"{}\"\ncontroller_url = \"http://{}\"\ntoken = \"{}\"\nheartbeat_secs = 1\n\
             s3_listen = \"127.0.0.1:{port}\"\n",
            work.join("data").display(),
            controller.addr(),
            host_token()
        ),
    )?;
    let _storaged = Killed(
        Command::new(crate::release_bin("storaged")?)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "error")
            .stderr(Stdio::null())
            .spawn()
            .context("starting storaged")?,
    );
    let addr = controller.addr();
    let token = virga_test_support::identity::token(
        addr.as_str(),
        "admin",
        crate::api::ADMIN_PASSWORD,
        "admin",
    );
    let me = virga_test_support::http::send(
        addr.as_str(),
        "GET",
        "/identity/v3/auth/tokens",
        &[("X-Auth-Token", &token), ("X-Subject-Token", &token)],
        b"",
    )
    .map_err(anyhow::Error::msg)?;
    let user = serde_json::from_str::<serde_json::Value>(&me.body)?["token"]["user"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let made = virga_test_support::http::send(
        addr.as_str(),
        "POST",
        &format!("/identity/v3/users/{user}/credentials/OS-EC2"),
        &[
            ("X-Auth-Token", &token),
            ("Content-Type", "application/json"),
        ],
        b"{}",
    )
    .map_err(anyhow::Error::msg)?;
    let cred: serde_json::Value = serde_json::from_str(&made.body)?;
    let creds = Credentials::new(
        cred["credential"]["access"].as_str().unwrap_or_default(),
        cred["credential"]["secret"].as_str().unwrap_or_default(),
    );
    let endpoint: url::Url = format!("http://127.0.0.1:{port}").parse()?;
    let bucket = Bucket::new(endpoint, UrlStyle::Path, "bench", "us-east-1")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()?;
    // storaged registers within a heartbeat; its first S3 call may wait.
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let attempt = async {
                let mut c = Conn::open(port).await?;
                c.call(
                    "PUT",
                    &bucket.create_bucket(&creds).sign(Duration::from_secs(600)),
                    Bytes::new(),
                )
                .await
            };
            match attempt.await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })?;

    let mut samples = Samples::default();
    let fio_dir = work.join("fio");
    for _ in 0..runs {
        // Large objects, one client: PUT then GET each.
        for (name, size, count) in [("1m", MIB, 64usize), ("64m", 64 * MIB, 4)] {
            let data = Bytes::from(vec![7u8; size]);
            let (put, get) = rt.block_on(async {
                let mut c = Conn::open(port).await?;
                let started = Instant::now();
                for i in 0..count {
                    let url = bucket
                        .put_object(Some(&creds), &format!("{name}-{i}"))
                        .sign(Duration::from_secs(600));
                    c.call("PUT", &url, data.clone()).await?;
                }
                let put = started.elapsed().as_secs_f64();
                let started = Instant::now();
                for i in 0..count {
                    let url = bucket
                        .get_object(Some(&creds), &format!("{name}-{i}"))
                        .sign(Duration::from_secs(600));
                    let body = c.call("GET", &url, Bytes::new()).await?;
                    if body.len() != size {
                        bail!("GET gave {} bytes, not {size}", body.len());
                    }
                }
                anyhow::Ok((put, started.elapsed().as_secs_f64()))
            })?;
            let total = (size * count) as f64 / 1e6;
            samples.add("virga-s3", &format!("put-{name}"), "MB/s", total / put);
            samples.add("virga-s3", &format!("get-{name}"), "MB/s", total / get);
            let files = format!("--nrfiles={count}");
            let filesize = format!("--filesize={size}");
            let common = [
                "--name=objects",
                "--bs=1M",
                &files,
                &filesize,
                "--file_service_type=sequential",
                "--openfiles=1",
            ];
            let (w, _) = fio(
                &fio_dir,
                &[&common[..], &["--rw=write", "--fsync_on_close=1"]].concat(),
                "write",
            )?;
            let (r, _) = fio(&fio_dir, &[&common[..], &["--rw=read"]].concat(), "read")?;
            samples.add(PEER, &format!("put-{name}"), "MB/s", w);
            samples.add(PEER, &format!("get-{name}"), "MB/s", r);
            let _ = std::fs::remove_dir_all(&fio_dir);
            std::fs::create_dir_all(&fio_dir)?;
        }
        // Small objects: 1 and 16 clients.
        for clients in [1usize, 16] {
            let per = if clients == 1 { 400 } else { 50 };
            let (put_ops, get_ops, put_lat, get_lat) = rt.block_on(async {
                let body = Bytes::from(vec![3u8; 4096]);
                let mut tasks = Vec::new();
                let started = Instant::now();
                for c in 0..clients {
                    let (bucket, creds, body) = (bucket.clone(), creds.clone(), body.clone());
                    tasks.push(tokio::spawn(async move {
                        let mut conn = Conn::open(port).await?;
                        let mut lat = Vec::with_capacity(per);
                        for i in 0..per {
                            let url = bucket
                                .put_object(Some(&creds), &format!("small-{c}-{i}"))
                                .sign(Duration::from_secs(600));
                            let t = Instant::now();
                            conn.call("PUT", &url, body.clone()).await?;
                            lat.push(t.elapsed().as_secs_f64() * 1e3);
                        }
                        anyhow::Ok(lat)
                    }));
                }
                let mut put_lat = Vec::new();
                for t in tasks {
                    put_lat.extend(t.await??);
                }
                let put_ops = (clients * per) as f64 / started.elapsed().as_secs_f64();
                let mut tasks = Vec::new();
                let started = Instant::now();
                for c in 0..clients {
                    let (bucket, creds) = (bucket.clone(), creds.clone());
                    tasks.push(tokio::spawn(async move {
                        let mut conn = Conn::open(port).await?;
                        let mut lat = Vec::with_capacity(per);
                        for i in 0..per {
                            let url = bucket
                                .get_object(Some(&creds), &format!("small-{c}-{i}"))
                                .sign(Duration::from_secs(600));
                            let t = Instant::now();
                            conn.call("GET", &url, Bytes::new()).await?;
                            lat.push(t.elapsed().as_secs_f64() * 1e3);
                        }
                        anyhow::Ok(lat)
                    }));
                }
                let mut get_lat = Vec::new();
                for t in tasks {
                    get_lat.extend(t.await??);
                }
                let get_ops = (clients * per) as f64 / started.elapsed().as_secs_f64();
                put_lat.sort_by(|a, b| a.total_cmp(b));
                get_lat.sort_by(|a, b| a.total_cmp(b));
                anyhow::Ok((put_ops, get_ops, put_lat, get_lat))
            })?;
            samples.add("virga-s3", &format!("put-4k-c{clients}"), "ops/s", put_ops);
            samples.add("virga-s3", &format!("get-4k-c{clients}"), "ops/s", get_ops);
            if clients == 1 {
                samples.add("virga-s3", "put-4k-p50", "ms", percentile(&put_lat, 0.5));
                samples.add("virga-s3", "put-4k-p99", "ms", percentile(&put_lat, 0.99));
                samples.add("virga-s3", "get-4k-p50", "ms", percentile(&get_lat, 0.5));
                samples.add("virga-s3", "get-4k-p99", "ms", percentile(&get_lat, 0.99));
            }
            let files = format!("--nrfiles={per}");
            let jobs = format!("--numjobs={clients}");
            let common = [
                "--name=small",
                "--bs=4k",
                "--filesize=4k",
                &files,
                &jobs,
                "--file_service_type=sequential",
                "--openfiles=1",
            ];
            let (_, w) = fio(
                &fio_dir,
                &[&common[..], &["--rw=write", "--fsync_on_close=1"]].concat(),
                "write",
            )?;
            let (_, r) = fio(&fio_dir, &[&common[..], &["--rw=read"]].concat(), "read")?;
            samples.add(PEER, &format!("put-4k-c{clients}"), "ops/s", w);
            samples.add(PEER, &format!("get-4k-c{clients}"), "ops/s", r);
            let _ = std::fs::remove_dir_all(&fio_dir);
            std::fs::create_dir_all(&fio_dir)?;
        }
    }
    drop(controller);
    let report = Report {
        bench: "s3".into(),
        host: format!("{} (native)", crate::host_cpu()),
        rows: samples.rows(&["virga-s3", PEER]),
    };
    let path = report.write(&crate::workspace().join("target/bench"))?;
    let _ = std::fs::remove_dir_all(&work);
    println!("{}", report.host);
    print!("{}", report.table(PEER));
    println!("written to {}", path.display());
    Ok(())
}
