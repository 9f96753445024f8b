//! A deliberately plain HTTP/1.1 client: one request per connection
//! (`Connection: close`), the whole answer read to the end, a deadline on
//! every step. Tests see exactly the bytes a server sent.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

/// How long a request may take unless the caller says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a server listens.
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// `host:port`.
    Tcp(String),
    Unix(PathBuf),
}

impl From<&str> for Endpoint {
    fn from(addr: &str) -> Endpoint {
        Endpoint::Tcp(addr.to_owned())
    }
}

impl From<&String> for Endpoint {
    fn from(addr: &String) -> Endpoint {
        Endpoint::Tcp(addr.clone())
    }
}

impl From<u16> for Endpoint {
    fn from(port: u16) -> Endpoint {
        Endpoint::Tcp(format!("127.0.0.1:{port}"))
    }
}

impl From<&std::path::Path> for Endpoint {
    fn from(path: &std::path::Path) -> Endpoint {
        Endpoint::Unix(path.to_owned())
    }
}

/// A server's answer.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The body as text (lossy: binary bodies are compared through `bytes`).
    pub body: String,
    pub bytes: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON; `null` when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.bytes).unwrap_or(serde_json::Value::Null)
    }
}

/// A request; `Content-Type: application/json` is sent unless `headers` name
/// another.
pub fn send(
    to: impl Into<Endpoint>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Reply, String> {
    send_within(to, DEFAULT_TIMEOUT, method, path, headers, body)
}

/// As [`send`], with `timeout` for connecting, sending and for the answer.
pub fn send_within(
    to: impl Into<Endpoint>,
    timeout: Duration,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Reply, String> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        head.push_str("Content-Type: application/json\r\n");
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let raw = match to.into() {
        Endpoint::Tcp(addr) => {
            let s = TcpStream::connect(&addr).map_err(|e| format!("connect {addr}: {e}"))?;
            let _ = s.set_read_timeout(Some(timeout));
            let _ = s.set_write_timeout(Some(timeout));
            exchange(s, head.as_bytes(), body)
        }
        Endpoint::Unix(path) => {
            let s = UnixStream::connect(&path)
                .map_err(|e| format!("connect {}: {e}", path.display()))?;
            let _ = s.set_read_timeout(Some(timeout));
            let _ = s.set_write_timeout(Some(timeout));
            exchange(s, head.as_bytes(), body)
        }
    }
    .map_err(|e| format!("{method} {path}: {e} (deadline {timeout:?})"))?;
    parse(raw)
}

fn exchange(mut s: impl Read + Write, head: &[u8], body: &[u8]) -> Result<Vec<u8>, String> {
    s.write_all(head)
        .and_then(|()| s.write_all(body))
        .map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("no whole answer: {e}"))?;
    Ok(raw)
}

/// Splits a whole HTTP/1.1 answer (no chunked bodies: every server under
/// test sends a length or closes).
fn parse(raw: Vec<u8>) -> Result<Reply, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no end of headers in {:?}", String::from_utf8_lossy(&raw)))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.get(9..12))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line in {head:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let bytes = raw[split + 4..].to_vec();
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_split_into_status_headers_and_body() {
        let r = parse(b"HTTP/1.1 201 Created\r\nX-Subject-Token: abc\r\nContent-Length: 9\r\n\r\n{\"a\": 1}\n".to_vec()).unwrap();
        assert_eq!(r.status, 201);
        assert_eq!(r.header("x-subject-token"), Some("abc"));
        assert_eq!(r.json()["a"], 1);
        assert!(parse(b"HTTP/1.1 200 OK\r\n".to_vec()).is_err());
        assert!(parse(b"garbage\r\n\r\n".to_vec()).is_err());
    }

    #[test]
    fn a_request_goes_out_whole_and_the_answer_comes_back() {
        use std::io::BufRead;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut r = std::io::BufReader::new(s.try_clone().unwrap());
            let mut head = Vec::new();
            loop {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                if line == "\r\n" {
                    break;
                }
                head.push(line.trim_end().to_owned());
            }
            let mut body = [0u8; 4];
            r.read_exact(&mut body).unwrap();
            let mut s = s;
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .unwrap();
            (head, body)
        });
        let r = send(
            port,
            "PUT",
            "/x",
            &[("Content-Type", "application/octet-stream")],
            b"\x00\x01\x02\x03",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "ok"));
        let (head, body) = server.join().unwrap();
        assert_eq!(head[0], "PUT /x HTTP/1.1");
        assert!(head.contains(&"Content-Type: application/octet-stream".to_owned()));
        assert!(!head.iter().any(|h| h.contains("application/json")));
        assert!(head.contains(&"Content-Length: 4".to_owned()));
        assert_eq!(body, [0, 1, 2, 3]);
    }
}
