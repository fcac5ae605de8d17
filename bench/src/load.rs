//! The load itself. HTTP: keep-alive HTTP/1.1 connections, one request in
//! flight on each, each connection fed by its own lane of requests. gRPC:
//! one HTTP/2 connection per lane, one call in flight on each. Every request
//! is timed; the phase is timed from after the connections are open.
//! Webhooks go closed loop (as fast as the answers come) or open loop (at a
//! fixed rate, see [`Pace`]).

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
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

/// How a phase's webhooks are paced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pace {
    /// Each connection sends its next request as soon as the last is answered.
    ClosedLoop,
    /// `per_second` requests in all, each due at a fixed time whatever the
    /// answers: lane `l` of `n` sends the phase's requests `l`, `l + n`, …,
    /// request `i` due `i / per_second` s after the start. A request is timed
    /// from when it was due, so a slow answer counts against the requests it
    /// holds up instead of hiding them (no coordinated omission).
    OpenLoop {
        /// Requests per second, over all lanes.
        per_second: f64,
    },
}

impl Pace {
    /// When request `k` of `lane` (of `lanes`) is due; `None`: right away.
    fn due(self, start: Instant, lane: usize, lanes: usize, k: u64) -> Option<Instant> {
        match self {
            Pace::ClosedLoop => None,
            Pace::OpenLoop { per_second } => {
                let index = k * lanes as u64 + lane as u64;
                Some(start + Duration::from_secs_f64(index as f64 / per_second))
            }
        }
    }
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

/// Posts every lane's requests over its own keep-alive connection, paced by
/// `pace`; a connection that breaks is reopened for the lane's next request.
/// A lane takes its next request only when it is due, so one made as it is
/// taken (a stamped one) carries its send time. Success is a 200.
pub async fn post_lanes<I>(
    target: &WebhookTarget,
    lanes: Vec<I>,
    pace: Pace,
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
    let count = lanes.len();
    let tasks: Vec<_> = senders
        .into_iter()
        .zip(lanes)
        .enumerate()
        .map(|(index, (sender, mut lane))| {
            let address = target.address;
            let progress = progress.clone();
            tokio::spawn(async move {
                let mut sender = Some(sender);
                let mut measured = Lane::default();
                for k in 0.. {
                    let due = pace.due(start, index, count, k);
                    if let Some(due) = due {
                        tokio::time::sleep_until(due.into()).await;
                    }
                    let Some(request) = lane.next() else { break };
                    let sent = due.unwrap_or_else(Instant::now);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_loop_spreads_the_requests_evenly_over_the_lanes() {
        let start = Instant::now();
        let pace = Pace::OpenLoop { per_second: 100.0 };
        let at = |lane, k| pace.due(start, lane, 4, k).unwrap() - start;
        // Requests 0, 1, 2, 3 go on lanes 0 to 3, request 4 on lane 0 again.
        assert_eq!(at(0, 0), Duration::ZERO);
        assert_eq!(at(3, 0), Duration::from_millis(30));
        assert_eq!(at(0, 1), Duration::from_millis(40));
        assert_eq!(at(2, 25), Duration::from_millis(1020));
        assert_eq!(Pace::ClosedLoop.due(start, 2, 4, 25), None);
    }
}
