//! Stand-in HTTP servers for tests (a controller's registration endpoint, a
//! hostd): a thread per connection, one request each, answered by the test's
//! handler. Requests are parsed here once, so stand-ins hold only their logic.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

/// Largest body a stand-in reads.
const MAX_BODY: usize = 16 << 20;

/// A request as a stand-in sees it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// Without the query.
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON; `null` when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The path's segments, without empty ones.
    pub fn segments(&self) -> Vec<&str> {
        self.path.split('/').filter(|s| !s.is_empty()).collect()
    }
}

/// A stand-in's answer.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    /// A JSON answer; `null` sends no body.
    pub fn json(status: u16, body: &serde_json::Value) -> Response {
        Response {
            status,
            body: if body.is_null() {
                Vec::new()
            } else {
                body.to_string().into_bytes()
            },
        }
    }

    pub fn empty(status: u16) -> Response {
        Response {
            status,
            body: Vec::new(),
        }
    }
}

/// Reads one request; None when the connection ends before a whole one.
pub fn read_request(stream: impl Read) -> Option<Request> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let target = parts.next()?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 {
            return None;
        }
        if h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let length = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0)
        .min(MAX_BODY);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        path: path.to_owned(),
        query: query.to_owned(),
        headers,
        body,
    })
}

/// Writes a whole answer and ends the exchange (`Connection: close`).
pub fn write_response(mut stream: impl Write, r: &Response) {
    let content_type = if r.body.is_empty() {
        ""
    } else {
        "Content-Type: application/json\r\n"
    };
    let head = format!(
        "HTTP/1.1 {} X\r\n{content_type}Content-Length: {}\r\nConnection: close\r\n\r\n",
        r.status,
        r.body.len()
    );
    let _ = stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(&r.body));
}

/// A stand-in server on a free port of 127.0.0.1, answering every request
/// with `handler` on a thread of its own, until the test process ends.
pub struct StubServer {
    pub port: u16,
}

impl StubServer {
    pub fn start(handler: impl Fn(Request) -> Response + Send + Sync + 'static) -> StubServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener.local_addr().expect("its address").port();
        let handler = Arc::new(handler);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let handler = handler.clone();
                std::thread::spawn(move || serve(stream, &*handler));
            }
        });
        StubServer { port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn serve(stream: TcpStream, handler: &(impl Fn(Request) -> Response + ?Sized)) {
    let Ok(reader) = stream.try_clone() else {
        return;
    };
    if let Some(request) = read_request(reader) {
        write_response(&stream, &handler(request));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stub_answers_what_its_handler_says() {
        let stub = StubServer::start(|r| {
            Response::json(
                201,
                &serde_json::json!({
                    "method": r.method, "path": r.path, "query": r.query,
                    "token": r.header("x-auth-token"), "got": r.json(),
                }),
            )
        });
        let reply = crate::http::send(
            stub.port,
            "POST",
            "/a/b?x=1",
            &[("X-Auth-Token", "t")],
            br#"{"k": 2}"#,
        )
        .unwrap();
        assert_eq!(reply.status, 201);
        let got = reply.json();
        assert_eq!(got["method"], "POST");
        assert_eq!(got["path"], "/a/b");
        assert_eq!(got["query"], "x=1");
        assert_eq!(got["token"], "t");
        assert_eq!(got["got"]["k"], 2);
    }
}
