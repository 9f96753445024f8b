//! Serial consoles (Nova's `os-getSerialConsole`): a websocket URL with a
//! one-time token, and the session behind it, which joins the client to the
//! server's console on its host: hostd's console stream out, what the client
//! types in. Every session has its own stream, so several readers each see
//! the whole console; each message typed reaches the guest in one piece.
//!
//! Console bytes are the one kind of guest data that passes through the
//! controller: a few bytes a second, and it spares users a route to every
//! host (Nova's serial proxy sits in the same place).

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_tungstenite::tungstenite::Message;
use hyper_tungstenite::HyperWebsocket;

use super::{server_host, visible, ComputeError};
use crate::app::App;
use crate::context::RequestContext;

/// The most hostd takes in one write of console input.
const MAX_INPUT: usize = 4096;

/// The URL of a new serial console of server `id` (`ws://` or `wss://`,
/// as the controller's public URL is `http://` or `https://`).
pub async fn serial_console_url(
    app: &App,
    ctx: &RequestContext,
    id: &str,
    console_type: &str,
) -> Result<String, ComputeError> {
    if console_type != "serial" {
        return Err(ComputeError::BadRequest(format!(
            "Invalid parameter value for 'console_type': {console_type:?}; currently supported: 'serial'."
        )));
    }
    let server = visible(app, ctx, id).await?;
    if server.vm_state != "active" || server.task_state.is_some() {
        return Err(ComputeError::Conflict(format!(
            "Instance {id} is not ready (vm_state {}); a serial console needs it running.",
            server.vm_state
        )));
    }
    let token = app.console_tokens.issue(id).await?;
    let public = &app.config.public_url;
    let ws = match public.split_once("://") {
        Some(("https", rest)) => format!("wss://{rest}"),
        Some((_, rest)) => format!("ws://{rest}"),
        None => format!("ws://{public}"),
    };
    Ok(format!(
        "{}/serial-console/?token={token}",
        ws.trim_end_matches('/')
    ))
}

/// Takes a console token: the server whose console it opens.
pub async fn open(app: &App, token: &str) -> Result<String, ComputeError> {
    app.console_tokens.take(token).await?.ok_or_else(|| {
        ComputeError::NotFound("The console token is invalid, used or expired.".into())
    })
}

/// The next frame of the console stream; never before it is open.
async fn next_frame(
    output: &mut Option<Incoming>,
) -> Option<Result<hyper::body::Frame<hyper::body::Bytes>, hyper::Error>> {
    match output {
        Some(body) => body.frame().await,
        None => std::future::pending().await,
    }
}

/// Runs one websocket session on server `id`'s serial console, until
/// either side ends it.
pub async fn session(app: Arc<App>, id: String, websocket: HyperWebsocket) {
    let ws = match websocket.await {
        Ok(ws) => ws,
        Err(e) => {
            tracing::debug!(server = %id, "serial console handshake: {e}");
            return;
        }
    };
    let (mut to_client, mut from_client) = ws.split();
    let hostd = match app.servers.get(&id).await {
        Ok(Some(server)) => server_host(&app, &server).await,
        _ => None,
    };
    let Some(hostd) = hostd else {
        let _ = to_client
            .send(Message::text("the server is gone\r\n"))
            .await;
        let _ = to_client.close().await;
        return;
    };
    tracing::info!(server = %id, "serial console session begins");
    // Opened while typing is already taken: a hostd slow to answer does not
    // hold the client's input back.
    let opening = hostd.console_stream(&id);
    tokio::pin!(opening);
    let mut output: Option<Incoming> = None;
    loop {
        tokio::select! {
            opened = &mut opening, if output.is_none() => match opened {
                Ok(body) => output = Some(body),
                Err(e) => {
                    let _ = to_client
                        .send(Message::text(format!("the console is unavailable: {e}\r\n")))
                        .await;
                    break;
                }
            },
            frame = next_frame(&mut output) => {
                let data = match frame {
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => data,
                        Err(_) => continue,
                    },
                    // The VMM's console ended (the instance is gone).
                    _ => break,
                };
                if to_client.send(Message::binary(data)).await.is_err() {
                    break;
                }
            }
            message = from_client.next() => {
                let typed = match message {
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Text(t))) => t.as_bytes().to_vec().into(),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => continue, // pings are answered by tungstenite
                };
                for chunk in typed.chunks(MAX_INPUT) {
                    if let Err(e) = hostd.console_input(&id, chunk).await {
                        tracing::debug!(server = %id, "console input: {e}");
                        let _ = to_client
                            .send(Message::text(format!("\r\n[input not delivered: {e}]\r\n")))
                            .await;
                    }
                }
            }
        }
    }
    let _ = to_client.close().await;
    tracing::info!(server = %id, "serial console session ends");
}
