//! The health port (`--health-port`, `WEBAPP_HEALTH_PORT`): a second listener that answers
//! only `GET /health`, like an app whose health endpoint sits on a management port. The LB
//! then checks the pool there (`check_port=`), while the served port answers `/health` 404,
//! so a check sent to the wrong port fails instead of passing by accident.

use std::convert::Infallible;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::{text, Body};

/// Serves `listener` forever (the caller drops it when the app stops). Health checks are
/// short requests, so no graceful stop is needed here.
pub async fn serve(listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                eprintln!("webapp: health port accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let service = service_fn(|req| async move { Ok::<_, Infallible>(answer(&req)) });
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(req: &Request<Incoming>) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/health") => text(StatusCode::OK, "ok\n"),
        _ => text(StatusCode::NOT_FOUND, "this port serves only GET /health\n"),
    }
}
