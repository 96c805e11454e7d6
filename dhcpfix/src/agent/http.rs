//! The agent's HTTP endpoint: `/metrics` (Prometheus text), `/healthz`
//! (liveness: the agent's loop turns) and `/readyz` (readiness: the program
//! is loaded and the first pass is done).
//!
//! Any local user can connect, so every resource is bounded: at most
//! [`MAX_CONNECTIONS`] at once, 8 KiB of request head, [`HEADER_TIMEOUT`]
//! to send it and [`CONNECTION_TIMEOUT`] in all, one request per
//! connection. When all are taken, a new connection takes the place of the
//! oldest one that has not sent its request yet (so connections that only
//! sit there cannot lock a scraper or a liveness probe out); only when
//! every one is being answered is the new one closed. An accept error
//! (EMFILE: out of descriptors) is logged with its errno and retried; the
//! listener never dies of it.

use std::{
    collections::VecDeque,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    header::{CONNECTION, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, task::AbortHandle};

/// Connections served at once (see the module for what happens to more).
pub const MAX_CONNECTIONS: usize = 64;
/// Time to send the request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for a whole connection.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest request head (hyper's smallest allowed buffer).
const MAX_HEAD: usize = 8192;
/// The agent's loop counts as alive if it turned within this long.
pub const ALIVE_WITHIN: Duration = Duration::from_secs(30);

/// What the probes report, shared with the agent's loop.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    /// Milliseconds after `started` of the loop's last turn.
    beat: AtomicU64,
    ready: AtomicBool,
}

impl Health {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            beat: AtomicU64::new(0),
            ready: AtomicBool::new(false),
        })
    }

    /// The loop turned.
    pub fn beat(&self) {
        self.beat
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    fn alive(&self) -> bool {
        let last = Duration::from_millis(self.beat.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last) < ALIVE_WITHIN
    }

    fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && self.alive()
    }
}

/// Renders `/metrics` (blocking: it reads maps).
pub type Render = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// Binds `addr`; the caller runs [`serve`] on the listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// A connection being served.
struct Connection {
    /// Set once its request head has arrived: it is being answered.
    answering: Arc<AtomicBool>,
    task: AbortHandle,
}

/// Makes room for one more connection: forgets those that ended, then, if
/// all [`MAX_CONNECTIONS`] are still open, closes the oldest that has not
/// sent its request. False if every one is being answered.
fn make_room(open: &mut VecDeque<Connection>) -> bool {
    open.retain(|c| !c.task.is_finished());
    if open.len() < MAX_CONNECTIONS {
        return true;
    }
    let Some(idle) = open.iter().position(|c| !c.answering.load(Ordering::Relaxed)) else {
        return false;
    };
    if let Some(oldest) = open.remove(idle) {
        // Dropping the task closes its socket.
        oldest.task.abort();
        log::debug!("metrics: {MAX_CONNECTIONS} connections open; closed the oldest that sent nothing yet");
    }
    true
}

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, health: Arc<Health>, render: Render) {
    let mut open: VecDeque<Connection> = VecDeque::with_capacity(MAX_CONNECTIONS);
    let mut last_complaint: Option<Instant> = None;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE/ENFILE and friends: say so (not on every retry),
                // give the process a moment to free descriptors, go on.
                if last_complaint.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    log::error!(
                        "metrics: accept(2): {e} (errno {}); retrying",
                        e.raw_os_error().unwrap_or(0)
                    );
                    last_complaint = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !make_room(&mut open) {
            // Every connection is being answered: close this one now rather
            // than queue it.
            drop(stream);
            continue;
        }
        let health = Arc::clone(&health);
        let render = Arc::clone(&render);
        let answering = Arc::new(AtomicBool::new(false));
        let answered = Arc::clone(&answering);
        let task = tokio::spawn(async move {
            let service = service_fn(move |req| {
                answered.store(true, Ordering::Relaxed);
                respond(req, Arc::clone(&health), Arc::clone(&render))
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .keep_alive(false);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                Ok(Err(e)) => log::debug!("metrics: connection: {e}"),
                Err(_) => {
                    log::debug!("metrics: a connection took longer than {CONNECTION_TIMEOUT:?}; closed")
                }
                Ok(Ok(())) => {}
            }
        });
        open.push_back(Connection {
            answering,
            task: task.abort_handle(),
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        "text/plain; charset=utf-8".parse().expect("valid header"),
    );
    headers.insert(CONNECTION, "close".parse().expect("valid header"));
    response
}

async fn respond(
    req: Request<Incoming>,
    health: Arc<Health>,
    render: Render,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n"));
    }
    Ok(match req.uri().path() {
        "/metrics" => match tokio::task::spawn_blocking(move || render()).await {
            Ok(Ok(body)) => {
                let mut r = text(StatusCode::OK, body);
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    prometheus::TEXT_FORMAT.parse().expect("valid header"),
                );
                r
            }
            Ok(Err(e)) => {
                log::error!("metrics: {e}");
                text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))
            }
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        },
        "/healthz" if health.alive() => text(StatusCode::OK, "ok\n"),
        "/healthz" => text(StatusCode::SERVICE_UNAVAILABLE, "the agent's loop is stuck\n"),
        "/readyz" if health.ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
        "/" => text(StatusCode::OK, "dhcpfix: /metrics, /healthz, /readyz\n"),
        _ => text(StatusCode::NOT_FOUND, "not found; try /metrics\n"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_follows_the_loop() {
        let h = Health::new();
        h.beat();
        assert!(h.alive() && !h.ready());
        h.set_ready();
        assert!(h.ready());
    }
}
