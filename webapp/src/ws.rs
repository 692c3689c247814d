//! `GET /ws`: a WebSocket echo (RFC 6455 via `tungstenite`; hyper does the HTTP upgrade).
//! Text and binary messages come back unchanged; pings are answered by tungstenite; a
//! close is answered and ends the session. Open sessions are counted (an [`Open`]) so a
//! graceful stop can wait for them like for open HTTP requests.

use crate::open::Open;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{combinators::BoxBody, BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION,
    UPGRADE,
};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Why a request to `/ws` is not a WebSocket handshake this server accepts.
fn handshake_problem(req: &Request<Incoming>) -> Option<&'static str> {
    let has_token = |name, token: &str| {
        req.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .map(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    if !has_token(UPGRADE, "websocket") {
        return Some("missing \"Upgrade: websocket\"");
    }
    if !has_token(CONNECTION, "upgrade") {
        return Some("missing \"Connection: Upgrade\"");
    }
    if req
        .headers()
        .get(SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Some("Sec-WebSocket-Version must be 13");
    }
    if req.headers().get(SEC_WEBSOCKET_KEY).is_none() {
        return Some("missing Sec-WebSocket-Key");
    }
    None
}

/// Answers the handshake (101, or 400 naming what is missing) and, on 101, runs the echo
/// session on the upgraded connection in its own task.
pub fn upgrade(
    mut req: Request<Incoming>,
    sessions: &Open,
) -> Response<BoxBody<Bytes, Infallible>> {
    if let Some(problem) = handshake_problem(&req) {
        return crate::text(
            StatusCode::BAD_REQUEST,
            format!("not a WebSocket handshake: {problem}\n"),
        );
    }
    let accept = req
        .headers()
        .get(SEC_WEBSOCKET_KEY)
        .map(|k| derive_accept_key(k.as_bytes()))
        .unwrap_or_default();
    let guard = sessions.enter();
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let _guard = guard;
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                if let Err(e) = echo(ws).await {
                    eprintln!("webapp: websocket session ended: {e}");
                }
            }
            Err(e) => eprintln!("webapp: websocket upgrade failed: {e}"),
        }
    });
    let mut resp = Response::new(Empty::new().boxed());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}

/// Echoes data messages until the close handshake is done. tungstenite answers pings and
/// queues the reply to a close; reading on after the close writes that reply, and the stream
/// then ends (`None`). Stopping at the close frame instead would drop the connection with the
/// reply unsent: the client sees a reset without closing handshake.
async fn echo<S>(mut ws: WebSocketStream<S>) -> Result<(), tokio_tungstenite::tungstenite::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => ws.send(m).await?,
            Ok(Message::Close(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
            Err(tokio_tungstenite::tungstenite::Error::ConnectionClosed) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
