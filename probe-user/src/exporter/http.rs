//! The HTTP endpoint: `/metrics`, `/healthz`, `/readyz` and a landing page, over TLS and with
//! basic auth when the web config asks for them.

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    body::Incoming, header, server::conn::http1, service::service_fn, Method, Request, Response,
    StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::oneshot,
};
use tracing::{debug, warn};

use super::{classic, metrics};
use crate::service::App;

/// Idle connections kept open at once: keep-alive clients between requests, and clients that
/// have not sent a whole request yet. A new connection past this closes the one idle the
/// longest, so clients that connect and stall (or a flood of them) cannot keep a scraper out:
/// every connection is accepted at once, and one that sends its request is served.
const MAX_IDLE_CONNECTIONS: usize = 512;
/// A client that sends no complete request header in this time is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Collects (or shares a collection started after `asked`) and encodes in the format the client
/// asked for.
fn encode(app: &App, openmetrics: bool, asked: Instant) -> Result<String, std::fmt::Error> {
    let om = metrics::encode_openmetrics(app.snapshot_since(asked))?;
    Ok(if openmetrics {
        om
    } else {
        classic::from_openmetrics(&om)
    })
}

/// The open connections: which are idle (not inside a request) and since when, and how to
/// close each.
#[derive(Default)]
struct Connections {
    next_id: u64,
    open: HashMap<u64, Conn>,
}

struct Conn {
    /// None while a request is being handled.
    idle_since: Option<Instant>,
    close: oneshot::Sender<()>,
}

impl Connections {
    /// Registers a new connection (idle until its request arrives); past the cap, closes the
    /// connection idle the longest. Returns the new connection's id.
    fn admit(&mut self, close: oneshot::Sender<()>) -> u64 {
        let idle = self
            .open
            .values()
            .filter(|c| c.idle_since.is_some())
            .count();
        if idle >= MAX_IDLE_CONNECTIONS {
            let oldest = self
                .open
                .iter()
                .filter_map(|(id, c)| Some((c.idle_since?, *id)))
                .min()
                .map(|(_, id)| id);
            // Out of the table at once: its task may run only after many more accepts.
            if let Some(c) = oldest.and_then(|id| self.open.remove(&id)) {
                let _ = c.close.send(());
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        self.open.insert(
            id,
            Conn {
                idle_since: Some(Instant::now()),
                close,
            },
        );
        id
    }

    fn set_busy(&mut self, id: u64, busy: bool) {
        if let Some(c) = self.open.get_mut(&id) {
            c.idle_since = (!busy).then(Instant::now);
        }
    }
}

/// Serves until the listener fails for good. Errors on single connections (clients that hang
/// up mid-response, garbage requests) are logged and do not affect others.
pub async fn serve(listener: TcpListener, app: Arc<App>) {
    let conns = Arc::new(Mutex::new(Connections::default()));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // EMFILE and friends: wait instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (close_tx, close_rx) = oneshot::channel();
        let id = with(&conns, |c| c.admit(close_tx));
        let app = app.clone();
        let conns = conns.clone();
        let tls = app.web().tls.clone();
        tokio::spawn(async move {
            let done = {
                let conns = conns.clone();
                async move {
                    match tls {
                        None => connection(stream, id, app, conns).await,
                        // The handshake counts as waiting for the request header: it has the
                        // same time limit, and the connection is idle (closable) meanwhile.
                        Some(config) => {
                            let accept = tokio_rustls::TlsAcceptor::from(config).accept(stream);
                            match tokio::time::timeout(HEADER_TIMEOUT, accept).await {
                                Ok(Ok(tls)) => connection(tls, id, app, conns).await,
                                Ok(Err(e)) => Err(format!("TLS handshake failed: {e}")),
                                Err(_) => Err("no TLS handshake in time".to_string()),
                            }
                        }
                    }
                }
            };
            tokio::select! {
                r = done => if let Err(e) = r {
                    debug!(%peer, error = %e, "connection ended with an error");
                },
                _ = close_rx => debug!(%peer, "idle connection closed to make room for a new one"),
            }
            with(&conns, |c| c.open.remove(&id));
        });
    }
}

/// Serves HTTP/1.1 requests on one connection (plain or TLS) until it closes.
async fn connection<S>(
    io: S,
    id: u64,
    app: Arc<App>,
    conns: Arc<Mutex<Connections>>,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let (app, conns) = (app.clone(), conns.clone());
        async move {
            with(&conns, |c| c.set_busy(id, true));
            let resp = handle(req, app).await;
            with(&conns, |c| c.set_busy(id, false));
            resp
        }
    });
    http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(io), service)
        .await
        .map_err(|e| e.to_string())
}

/// Runs `f` on the connection table. A panic while it was held cannot leave it inconsistent
/// (every change is one field or one entry), so a poisoned lock is taken over.
fn with<T>(conns: &Mutex<Connections>, f: impl FnOnce(&mut Connections) -> T) -> T {
    f(&mut conns
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner))
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    resp
}

const LANDING: &str = "<html><head><title>probe</title></head><body><h1>probe</h1>\
<p>Per-instance CPU, block IO and TCP traffic from eBPF.</p><ul>\
<li><a href=\"/metrics\">/metrics</a></li><li><a href=\"/healthz\">/healthz</a></li>\
<li><a href=\"/readyz\">/readyz</a></li>\
<li><a href=\"/api/v1/top\">/api/v1/top</a> (what <code>probe top --from</code> reads)</li></ul></body></html>\n";

const PLAIN: &str = "text/plain; charset=utf-8";

/// The response to a collection run on the blocking pool: its body, or why there is none.
fn collected<E: std::fmt::Display>(
    content_type: &'static str,
    result: Result<Result<String, E>, tokio::task::JoinError>,
) -> Response<Full<Bytes>> {
    match result {
        Ok(Ok(body)) => text(StatusCode::OK, content_type, body),
        Ok(Err(e)) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            PLAIN,
            format!("encoding failed: {e}\n"),
        ),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            PLAIN,
            format!("collection failed: {e}\n"),
        ),
    }
}

/// History queries running at once (`/api/v1/history`).
static HISTORY_QUERIES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

async fn handle(
    req: Request<Incoming>,
    app: Arc<App>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let asked = Instant::now();
    let web = app.web();
    if web.needs_auth() {
        let header = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes().to_vec());
        let ok = match web.known(header.as_deref()) {
            Some(ok) => ok,
            None => {
                // bcrypt takes tens of milliseconds: not on the runtime's only thread, and one
                // check at a time, so that clients guessing passwords cannot take the blocking
                // threads the collections run on. Credentials found good are cached (above).
                let _one = app.bcrypt.acquire().await;
                tokio::task::spawn_blocking(move || web.authorized(header.as_deref()))
                    .await
                    .unwrap_or(false)
            }
        };
        if !ok {
            let mut resp = text(StatusCode::UNAUTHORIZED, PLAIN, "Unauthorized\n");
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"probe\""),
            );
            return Ok(resp);
        }
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "only GET and HEAD\n",
        ));
    }
    Ok(match req.uri().path() {
        "/metrics" => {
            let accept = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            let om = classic::wants_openmetrics(accept);
            let ct = if om {
                classic::OPENMETRICS_CONTENT_TYPE
            } else {
                classic::CONTENT_TYPE
            };
            collected(
                ct,
                tokio::task::spawn_blocking(move || encode(&app, om, asked)).await,
            )
        }
        crate::api::API_PATH => collected(
            "application/json",
            tokio::task::spawn_blocking(move || serde_json::to_string(&app.top_sample(asked)))
                .await,
        ),
        crate::api::HISTORY_PATH => {
            let query = req.uri().query().unwrap_or_default().to_string();
            // A fold reads and decodes up to a day of frames: two at a time, the others are
            // told to come back (a scrape port is often reachable by many).
            let Ok(permit) = HISTORY_QUERIES.try_acquire() else {
                return Ok(text(
                    StatusCode::TOO_MANY_REQUESTS,
                    PLAIN,
                    "two history queries are running; try again\n",
                ));
            };
            // The daemon's lock is taken on the blocking pool (it may wait for a collection)
            // and released before the history is read.
            let answer = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                let dir = app.daemon().history_dir();
                match dir {
                    Some(d) => crate::top::past::answer(&d, &query),
                    None => Err((
                        404,
                        "this daemon records no history (--history.disable)\n".into(),
                    )),
                }
            })
            .await;
            match answer {
                Ok(Ok(view)) => collected("application/json", Ok(serde_json::to_string(&view))),
                Ok(Err((code, msg))) => text(
                    StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST),
                    PLAIN,
                    msg,
                ),
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    PLAIN,
                    format!("reading the history failed: {e}\n"),
                ),
            }
        }
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n"),
        "/readyz" if app.ready() => text(StatusCode::OK, PLAIN, "ready\n"),
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            PLAIN,
            "first collection not done yet\n",
        ),
        "/" => text(StatusCode::OK, "text/html; charset=utf-8", LANDING),
        _ => text(StatusCode::NOT_FOUND, PLAIN, "not found; try /metrics\n"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admit(c: &mut Connections) -> (u64, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (c.admit(tx), rx)
    }

    #[test]
    fn past_the_cap_the_connection_idle_longest_is_closed_never_a_busy_one() {
        let mut c = Connections::default();
        // The oldest connection is inside a request: it must survive.
        let (busy, mut busy_rx) = admit(&mut c);
        c.set_busy(busy, true);
        let mut idle: Vec<_> = (0..MAX_IDLE_CONNECTIONS).map(|_| admit(&mut c)).collect();
        // The cap is reached only now: nothing was closed on the way.
        assert!(idle.iter_mut().all(|(_, rx)| rx.try_recv().is_err()));
        let (_, mut newest) = admit(&mut c);
        assert!(busy_rx.try_recv().is_err(), "a busy connection was closed");
        assert!(
            idle[0].1.try_recv().is_ok(),
            "the idle-longest was not closed"
        );
        assert!(idle[1..].iter_mut().all(|(_, rx)| rx.try_recv().is_err()));
        assert!(newest.try_recv().is_err());
        assert!(!c.open.contains_key(&idle[0].0));
        assert_eq!(c.open.len(), MAX_IDLE_CONNECTIONS + 1);
        // A connection back from a request is idle since now: the next to go is idle[1].
        std::thread::sleep(Duration::from_millis(2));
        c.set_busy(idle[1].0, true);
        c.set_busy(idle[1].0, false);
        let _ = admit(&mut c);
        assert!(idle[1].1.try_recv().is_err());
        assert!(idle[2].1.try_recv().is_ok());
    }
}
