//! The load itself. HTTP: keep-alive HTTP/1.1 connections, one request in
//! flight on each, each connection fed by its own lane of requests. gRPC:
//! one HTTP/2 connection per lane, one call in flight on each. Every request
//! is timed; the phase is timed from after the connections are open.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::{
    plan::Delivery,
    signing::SigningSecret,
    stats::{Lane, Report},
    target::WebhookTarget,
};

/// A webhook request ready to send.
pub type HttpRequest = Request<Full<Bytes>>;

/// Requests completed so far in a phase, for progress samples.
pub type Progress = Arc<AtomicU64>;

/// `delivery` as Svix would post it to `target`, signed with `timestamp`.
pub fn signed_request(
    target: &WebhookTarget,
    secret: &SigningSecret,
    timestamp: i64,
    delivery: &Delivery,
) -> HttpRequest {
    Request::post(&target.path)
        .header(http::header::HOST, &target.authority)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("svix-id", &delivery.msg_id)
        .header("svix-timestamp", timestamp.to_string())
        .header(
            "svix-signature",
            secret.sign(&delivery.msg_id, timestamp, &delivery.body),
        )
        .body(Full::new(Bytes::copy_from_slice(&delivery.body)))
        .expect("a valid request")
}

/// The current Unix time, seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Splits `requests` round-robin into `lanes` lanes.
pub fn into_lanes<T>(requests: Vec<T>, lanes: usize) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = (0..lanes.max(1)).map(|_| Vec::new()).collect();
    let count = out.len();
    for (i, request) in requests.into_iter().enumerate() {
        out[i % count].push(request);
    }
    out
}

async fn connect(address: std::net::SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(address)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to {address}: {e}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// Posts every lane's requests over its own keep-alive connection; a
/// connection that breaks is reopened for the lane's next request. Success
/// is a 200.
pub async fn post_lanes<I>(
    target: &WebhookTarget,
    lanes: Vec<I>,
    progress: Progress,
) -> anyhow::Result<Report>
where
    I: Iterator<Item = HttpRequest> + Send + 'static,
{
    let mut senders = Vec::with_capacity(lanes.len());
    for _ in 0..lanes.len() {
        senders.push(connect(target.address).await?);
    }
    let start = Instant::now();
    let tasks: Vec<_> = senders
        .into_iter()
        .zip(lanes)
        .map(|(sender, lane)| {
            let address = target.address;
            let progress = progress.clone();
            tokio::spawn(async move {
                let mut sender = Some(sender);
                let mut measured = Lane::default();
                for request in lane {
                    let sent = Instant::now();
                    let outcome = async {
                        let connection = match &mut sender {
                            Some(connection) => connection,
                            None => sender.insert(connect(address).await?),
                        };
                        connection.ready().await?;
                        let response = connection.send_request(request).await?;
                        let status = response.status();
                        let body = response.into_body().collect().await?.to_bytes();
                        anyhow::Ok((status, body))
                    }
                    .await;
                    let latency = sent.elapsed();
                    match outcome {
                        Ok((status, body)) => measured.record(
                            latency,
                            status.as_str(),
                            status == StatusCode::OK,
                            || format!("{status} {}", String::from_utf8_lossy(&body)),
                        ),
                        Err(error) => {
                            sender = None;
                            measured.record(latency, "connection error", false, || {
                                format!("connection error: {error:#}")
                            });
                        }
                    }
                    progress.fetch_add(1, Ordering::Relaxed);
                }
                measured
            })
        })
        .collect();
    let mut lanes = Vec::with_capacity(tasks.len());
    for task in tasks {
        lanes.push(task.await?);
    }
    Ok(Report::merge(start.elapsed(), lanes, "200"))
}

/// Makes calls on `lanes` concurrent lanes until `more` says stop; each
/// call gets its lane and a pseudo-random number and answers its outcome:
/// `Ok(())` or the gRPC status. Success is "OK".
pub async fn call_lanes<F, Fut>(
    lanes: usize,
    more: impl Fn(u64) -> bool + Clone + Send + 'static,
    call: F,
    progress: Progress,
) -> anyhow::Result<Report>
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), tonic::Status>> + Send,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..lanes)
        .map(|lane| {
            let call = call.clone();
            let more = more.clone();
            let progress = progress.clone();
            tokio::spawn(async move {
                let mut random = crate::plan::XorShift::new(lane as u64 + 1);
                let mut measured = Lane::default();
                while more(progress.fetch_add(1, Ordering::Relaxed)) {
                    let sent = Instant::now();
                    let outcome = call(lane, random.next_u64()).await;
                    let latency = sent.elapsed();
                    match outcome {
                        Ok(()) => measured.record(latency, "OK", true, String::new),
                        Err(status) => {
                            measured.record(latency, &format!("{:?}", status.code()), false, || {
                                format!("{:?}: {}", status.code(), status.message())
                            })
                        }
                    }
                }
                measured
            })
        })
        .collect();
    let mut measured = Vec::with_capacity(tasks.len());
    for task in tasks {
        measured.push(task.await?);
    }
    Ok(Report::merge(start.elapsed(), measured, "OK"))
}
