//! Serving HTTP/1.1 and HTTP/2 (gRPC included) on a listener with the limits every Gantry listener needs, so that a
//! caller who opens connections and sends nothing (or a byte at a time) cannot make the process unreachable:
//!
//! - **a connection cap**, shared by all the listeners of a process ([`Connections`]): a connection past it is
//!   closed at once, before a byte is read, so the process never runs out of file descriptors for its own files;
//! - **a header-read timeout** for HTTP/1.1: the request line and headers must arrive within it (hyper's
//!   `header_read_timeout`, which hyper applies only with a timer: `axum::serve` sets none);
//! - **an idle timeout** for every connection, HTTP/2 included: a connection on which nothing was read or written
//!   for that long is closed, and HTTP/2 keep-alive pings find dead peers;
//! - **accept errors backed off** (EMFILE, ENFILE, ENOBUFS): the loop sleeps 10 ms doubling to 1 s instead of
//!   spinning, and says so once per episode;
//! - **graceful shutdown**: on cancellation the listener closes, connections in flight finish their requests, for
//!   at most [`Limits::drain_timeout`].

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use gantry_support::CancellationToken;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};

/// The limits of the listeners of one process.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections open at once over every listener sharing this value.
    pub connections: Connections,
    /// Time an HTTP/1.1 client has to send a request's line and headers, from the connection's start or the end of
    /// the previous response.
    pub header_read_timeout: Duration,
    /// A connection on which nothing was read or written for this long is closed.
    pub idle_timeout: Duration,
    /// Most concurrent HTTP/2 streams (gRPC calls) per connection.
    pub max_concurrent_streams: u32,
    /// How long requests in flight get to finish after the shutdown.
    pub drain_timeout: Duration,
}

/// Reserved descriptors that the connection cap never takes: files of the store, logs, outgoing connections.
pub const RESERVED_DESCRIPTORS: u64 = 256;

impl Limits {
    /// Limits with `max_connections` shared connections (further capped to the descriptors the process may open,
    /// less [`RESERVED_DESCRIPTORS`]), a 10 s header-read timeout and a 5 min idle timeout.
    pub fn new(max_connections: usize) -> Limits {
        let descriptors = gantry_support::process::open_files_limit();
        let room = descriptors.saturating_sub(RESERVED_DESCRIPTORS).max(16) as usize;
        Limits {
            connections: Connections::new(max_connections.min(room)),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            max_concurrent_streams: 256,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// The connection cap of a process, shared by its listeners (cheap to clone).
#[derive(Debug, Clone)]
pub struct Connections {
    permits: Arc<Semaphore>,
    max: usize,
}

impl Connections {
    /// A cap of `max` connections.
    pub fn new(max: usize) -> Connections {
        Connections {
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.max - self.permits.available_permits()
    }
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then drains. `what` names the listener in logs.
///
/// # Errors
/// None today: accept errors are retried with backoff; the signature leaves room for fatal listener errors.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: Limits,
    shutdown: CancellationToken,
    what: &'static str,
) -> anyhow::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20))
        .max_concurrent_streams(limits.max_concurrent_streams);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut backoff = AcceptBackoff::default();
    let mut refused_full = false;
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff.reset(what);
                accepted
            }
            Err(error) => {
                backoff.wait(what, &error, &shutdown).await;
                continue;
            }
        };
        let Ok(permit) = limits.connections.permits.clone().try_acquire_owned() else {
            if !refused_full {
                tracing::warn!(
                    listener = what,
                    max = limits.connections.max(),
                    "connection cap reached: closing new connections until some end"
                );
                refused_full = true;
            }
            drop(stream);
            continue;
        };
        refused_full = false;
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(IdleTimeout::new(stream, limits.idle_timeout));
        // Handlers that need the client's address (the dashboard's login limiter) read axum's `ConnectInfo`.
        let service = TowerToHyperService::new(tower::util::MapRequest::new(
            app.clone(),
            move |mut request: axum::http::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                request
            },
        ));
        let connection = builder
            .serve_connection_with_upgrades(io, service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(listener = what, %peer, error = %error, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = what,
            timeout_s = limits.drain_timeout.as_secs(),
            "requests still in flight at the drain deadline were cut"
        );
    }
    Ok(())
}

/// Backoff of the accept loop after an error (EMFILE and friends): 10 ms doubling to 1 s.
#[derive(Default)]
struct AcceptBackoff {
    delay: Option<Duration>,
}

impl AcceptBackoff {
    async fn wait(&mut self, what: &str, error: &io::Error, shutdown: &CancellationToken) {
        let delay = match self.delay {
            None => {
                tracing::warn!(listener = what, error = %error, "accepting connections failed; backing off");
                Duration::from_millis(10)
            }
            Some(previous) => (previous * 2).min(Duration::from_secs(1)),
        };
        self.delay = Some(delay);
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(delay) => {}
        }
    }

    fn reset(&mut self, what: &str) {
        if self.delay.take().is_some() {
            tracing::info!(listener = what, "accepting connections again");
        }
    }
}

/// A TCP stream that fails with `TimedOut` once nothing was read or written on it for `idle`.
struct IdleTimeout {
    stream: TcpStream,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl IdleTimeout {
    fn new(stream: TcpStream, idle: Duration) -> IdleTimeout {
        IdleTimeout {
            stream,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }

    fn touch(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.idle);
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "connection idle past the idle timeout",
    )
}

impl AsyncRead for IdleTimeout {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.touch();
                }
                Poll::Ready(result)
            }
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl IdleTimeout {
    /// Counts a write's progress as activity, and turns a write pending past the deadline into `TimedOut`.
    fn written(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match poll {
            Poll::Ready(Ok(written)) => {
                if written > 0 {
                    self.touch();
                }
                Poll::Ready(Ok(written))
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            other => other,
        }
    }
}

impl AsyncWrite for IdleTimeout {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write(cx, data);
        this.written(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.written(cx, poll)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn server(limits: Limits) -> (std::net::SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/healthz", get(|| async { "ok" }));
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(listener, app, limits, shutdown.clone(), "test"));
        (addr, shutdown)
    }

    fn limits(max: usize) -> Limits {
        Limits {
            connections: Connections::new(max),
            header_read_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_secs(2),
            max_concurrent_streams: 8,
            drain_timeout: Duration::from_secs(1),
        }
    }

    /// Reads until the server closes the connection; true when it did within `within`.
    async fn closed_by_server(stream: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 1024];
        tokio::time::timeout(within, async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok()
    }

    #[tokio::test]
    async fn a_slow_client_is_dropped_after_the_header_timeout() {
        let (addr, _shutdown) = server(limits(8)).await;
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        assert!(closed_by_server(&mut slow, Duration::from_secs(10)).await);
        let answer = reqwest::get(format!("http://{addr}/healthz"))
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }

    #[tokio::test]
    async fn connections_past_the_cap_are_closed_and_room_comes_back() {
        let limits = limits(4);
        let connections = limits.connections.clone();
        let (addr, _shutdown) = server(limits).await;
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(TcpStream::connect(addr).await.unwrap());
        }
        // Wait until the server has taken the four (accepting is asynchronous).
        let deadline = Instant::now() + Duration::from_secs(10);
        while connections.open() < 4 {
            assert!(
                Instant::now() < deadline,
                "the server never took 4 connections"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut extra = TcpStream::connect(addr).await.unwrap();
        assert!(
            closed_by_server(&mut extra, Duration::from_secs(5)).await,
            "a connection past the cap is closed at once"
        );
        drop(held);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(answer) = reqwest::get(format!("http://{addr}/healthz")).await
                && answer.status() == 200
            {
                break;
            }
            assert!(Instant::now() < deadline, "room never came back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
