//! The CLI's HTTP client for the agent API (hyper, HTTP/1.1, one connection
//! per call).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

const TIMEOUT: Duration = Duration::from_secs(35);

pub struct Client {
    pub addr: String,
    /// Sent as `Authorization: Bearer ...` when set.
    pub token: Option<String>,
}

impl Client {
    pub fn new(addr: &str, token: Option<String>) -> Client {
        Client {
            addr: addr.to_string(),
            token,
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Response<Incoming>, String> {
        let stream = TcpStream::connect(&self.addr).await.map_err(|e| {
            format!(
                "no shoal agent answers at {} ({e}); is `shoal agent` running? point --api or SHOAL_API at it",
                self.addr
            )
        })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake with {} failed: {e}", self.addr))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let payload = match body {
            Some(v) => Bytes::from(serde_json::to_vec(v).map_err(|e| e.to_string())?),
            None => Bytes::new(),
        };
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.addr)
            .header("content-type", "application/json");
        if let Some(token) = &self.token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let req = req.body(Full::new(payload)).map_err(|e| e.to_string())?;
        sender
            .send_request(req)
            .await
            .map_err(|e| format!("request to {} failed: {e}", self.addr))
    }

    /// A JSON call; non-2xx answers become the API's error message.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, String> {
        let run = async {
            let resp = self.send(method, path, body).await?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            let value: Value = serde_json::from_slice(&bytes)
                .map_err(|e| format!("the agent answered {status} with invalid JSON: {e}"))?;
            if status.is_success() {
                Ok(value)
            } else {
                Err(error_message(status, &value))
            }
        };
        tokio::time::timeout(TIMEOUT, run).await.map_err(|_| {
            format!(
                "the agent at {} did not answer within {TIMEOUT:?}",
                self.addr
            )
        })?
    }

    /// Streams NDJSON lines to `on_line` until the agent closes the stream.
    pub async fn stream(
        &self,
        path: &str,
        on_line: impl FnMut(Value) -> bool,
    ) -> Result<(), String> {
        self.stream_request(Method::GET, path, None, on_line).await
    }

    /// [`Client::stream`] for any request, with a JSON body.
    pub async fn stream_request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        mut on_line: impl FnMut(Value) -> bool,
    ) -> Result<(), String> {
        let resp = self.send(method, path, body).await?;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
            let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            return Err(error_message(status, &value));
        }
        let mut pending = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("event stream broken: {e}"))?;
            if let Some(data) = frame.data_ref() {
                pending.extend_from_slice(data);
                while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=pos).collect();
                    if let Ok(v) = serde_json::from_slice::<Value>(&line) {
                        if !on_line(v) {
                            return Ok(());
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

fn error_message(status: StatusCode, value: &Value) -> String {
    match value.get("error").and_then(Value::as_str) {
        Some(msg) => msg.to_string(),
        None => format!("the agent answered {status}"),
    }
}
