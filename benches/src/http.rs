//! A keep-alive HTTP/1.1 client for timing an API the way its clients call
//! it (one connection reused, as openstacksdk's session does): hyper on a
//! single-threaded tokio runtime, driven synchronously.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;

pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
    /// From sending the request to the last byte of the body.
    pub elapsed: Duration,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }
}

pub struct Client {
    rt: tokio::runtime::Runtime,
    addr: String,
    sender: Option<SendRequest<Full<Bytes>>>,
    /// An authentication header sent with every request: `X-Auth-Token` for
    /// the OpenStack APIs, `Authorization` for the internal one.
    pub auth: Option<(&'static str, String)>,
}

impl Client {
    pub fn new(addr: &str) -> Result<Client> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Client {
            rt,
            addr: addr.to_owned(),
            sender: None,
            auth: None,
        })
    }

    async fn connect(addr: &str) -> Result<SendRequest<Full<Bytes>>> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(sender)
    }

    /// One request; for idempotent methods, a connection that turns out to be
    /// closed is reopened once.
    pub fn call(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Reply> {
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        self.send(method, path, "application/json", Bytes::from(bytes))
    }

    /// As [`Client::call`], with a body of any type.
    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        content_type: &str,
        bytes: Bytes,
    ) -> Result<Reply> {
        let method: hyper::Method = method.parse()?;
        let attempts = if matches!(method, hyper::Method::POST | hyper::Method::PATCH) {
            1
        } else {
            2
        };
        for attempt in 0..attempts {
            let mut req = hyper::Request::builder()
                .method(method.clone())
                .uri(path)
                .header("host", &self.addr)
                .header("content-type", content_type)
                .header("accept", "application/json");
            if let Some((name, value)) = &self.auth {
                req = req.header(*name, value);
            }
            let req = req.body(Full::new(bytes.clone()))?;
            let addr = self.addr.clone();
            let sender = self.sender.take();
            let result = self.rt.block_on(async move {
                let mut sender = match sender {
                    Some(s) if !s.is_closed() => s,
                    _ => Self::connect(&addr).await?,
                };
                sender.ready().await?;
                let t0 = Instant::now();
                let resp = sender.send_request(req).await?;
                let status = resp.status().as_u16();
                let headers = resp.headers().clone();
                let body = resp.into_body().collect().await?.to_bytes();
                let reply = Reply {
                    status,
                    headers,
                    body,
                    elapsed: t0.elapsed(),
                };
                anyhow::Ok((sender, reply))
            });
            match result {
                Ok((sender, reply)) => {
                    self.sender = Some(sender);
                    return Ok(reply);
                }
                Err(e) if attempt + 1 < attempts => eprintln!("  (reconnecting after: {e})"),
                Err(e) => return Err(e.context(format!("{method} {path}"))),
            }
        }
        Err(anyhow!("{method} {path}: no answer"))
    }
}
