//! Hostile clients at the socket and HTTP/2 frame level: sockets that never
//! speak, h2c connections that idle, rapid-reset floods (CVE-2023-44487),
//! clients ignoring SETTINGS_MAX_CONCURRENT_STREAMS, and thousands of slow
//! request bodies aimed at one app. Each test bounds every wait with a
//! timeout and asserts no timing beyond "within the configured timeout plus
//! a margin".

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout;

use crate::h2raw::{self, Frame, H2Conn, code, setting};
use crate::harness::{Host, client, guest, metric, wasm};

/// Slack on top of a configured timeout before a test calls it missed:
/// generous, the suite runs tests in parallel on two cores.
const MARGIN: Duration = Duration::from_secs(3);

/// `GET url` with an outer time bound: the status, or why there is none.
async fn get_status(http: &reqwest::Client, url: &str, limit: Duration) -> Result<u16, String> {
    match timeout(limit, http.get(url).send()).await {
        Ok(Ok(response)) => {
            let status = response.status().as_u16();
            // Read the body so the connection is reusable; bounded too.
            let _ = timeout(limit, response.bytes()).await;
            Ok(status)
        }
        Ok(Err(err)) => Err(format!("request failed: {err}")),
        Err(_) => Err(format!("no response within {limit:?}")),
    }
}

/// A normal HTTP/1.1 client hitting `url` every 20 ms until `stop`: every
/// status it got (or why it got none).
fn normal_client(
    url: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Result<u16, String>>> {
    tokio::spawn(async move {
        let http = client();
        let mut statuses = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            statuses.push(get_status(&http, &url, Duration::from_secs(10)).await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // At least one request after the attack, whatever its length.
        statuses.push(get_status(&http, &url, Duration::from_secs(10)).await);
        statuses
    })
}

/// How a socket misbehaves in `idle_sockets_cannot_lock_out_clients`.
#[derive(Debug, Clone, Copy)]
enum Idle {
    /// Connects and sends nothing.
    Silent,
    /// Sends `PRI * HTTP/2.0\r\n` (16 of the 24 preface bytes), then nothing.
    HalfPreface,
    /// Sends the whole preface and an empty SETTINGS, then never a request.
    H2NoRequest,
}

impl Idle {
    fn greeting(self) -> Vec<u8> {
        match self {
            Idle::Silent => Vec::new(),
            Idle::HalfPreface => b"PRI * HTTP/2.0\r\n".to_vec(),
            Idle::H2NoRequest => {
                let mut bytes = h2raw::PREFACE.to_vec();
                h2raw::settings(&mut bytes, &[]);
                bytes
            }
        }
    }
}

/// Read (and discard) until the server closes the socket: when, or `None`
/// if it is still open at `deadline`.
async fn closed_by_server(
    mut socket: TcpStream,
    started: Instant,
    deadline: Instant,
) -> Option<Duration> {
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout_at(deadline.into(), read_all)
        .await
        .ok()
}

/// One lockout attempt: 60 misbehaving sockets against a 50-connection
/// cap, then a normal request. The status it got, and how many of the
/// sockets the server closed in time.
async fn lockout(kind: Idle) -> (Result<u16, String>, usize) {
    const IDLE_SOCKETS: usize = 60;
    const HEADER_TIMEOUT: Duration = Duration::from_millis(2000);
    let host = Host::start(
        &guest("guest"),
        &[
            "--max-connections",
            "50",
            "--header-read-timeout-ms",
            "2000",
        ],
    );
    let started = Instant::now();
    // The last sockets wait in the listen backlog until the first ones are
    // closed, then get their own header timeout; each close may take the
    // host's one-second grace: two of each, plus margin.
    let deadline = started + 2 * (HEADER_TIMEOUT + Duration::from_secs(1)) + MARGIN;
    let mut watchers = Vec::new();
    for _ in 0..IDLE_SOCKETS {
        // The kernel completes the handshake even past the cap (backlog).
        let mut socket = timeout(Duration::from_secs(5), TcpStream::connect(host.addr))
            .await
            .expect("connect in time")
            .expect("connect");
        let greeting = kind.greeting();
        if !greeting.is_empty() {
            socket.write_all(&greeting).await.expect("greeting");
        }
        // The watcher owns the socket: it stays open until the server
        // closes it (or the deadline passes).
        watchers.push(tokio::spawn(closed_by_server(socket, started, deadline)));
    }
    let status = get_status(&client(), &host.url("/"), Duration::from_secs(6)).await;
    let mut closed = 0;
    let mut open = 0;
    for watcher in watchers {
        match watcher.await.expect("watcher") {
            Some(_) => closed += 1,
            None => open += 1,
        }
    }
    eprintln!(
        "{kind:?}: normal GET / -> {status:?}; idle sockets closed by the server within {:?}: {closed}, still open: {open}",
        deadline - started
    );
    (status, closed)
}

/// Sockets that connect and say nothing (or half a preface, or a preface
/// and no request) are closed at the header read timeout, so they cannot
/// hold every slot of `--max-connections` and lock normal clients out.
#[tokio::test]
async fn idle_sockets_cannot_lock_out_clients() {
    let mut failures = Vec::new();
    for kind in [Idle::Silent, Idle::HalfPreface, Idle::H2NoRequest] {
        let (status, closed) = lockout(kind).await;
        if status != Ok(200) {
            failures.push(format!(
                "{kind:?}: a normal GET / behind 60 idle sockets got {status:?}, not 200"
            ));
        }
        if closed != 60 {
            failures.push(format!(
                "{kind:?}: only {closed} of 60 idle sockets were closed by the server within two header timeouts plus {MARGIN:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// An h2c connection that finished its request and then idles is closed
/// (GOAWAY and/or EOF) within `--idle-timeout-ms` plus a margin, even
/// though it answers every PING; one with a request still in flight
/// (a body trickling for twice the idle timeout) is not cut off.
#[tokio::test]
async fn h2_idle_connection_is_closed() {
    const IDLE: Duration = Duration::from_millis(1500);
    let host = Host::start(&guest("guest"), &["--idle-timeout-ms", "1500"]);

    let mut conn = timeout(Duration::from_secs(10), H2Conn::connect(host.addr))
        .await
        .expect("handshake in time")
        .expect("handshake");
    let response = timeout(Duration::from_secs(10), conn.request(1, "GET", "/", b""))
        .await
        .expect("a response in time");
    assert_eq!(response.map(|(status, _)| status), Some(200));
    let idle_since = Instant::now();
    let (frames, closed) = conn.reader.until_closed(IDLE + MARGIN).await;
    let goaway = frames.iter().find(|f| matches!(f, Frame::GoAway { .. }));
    eprintln!(
        "idle h2c connection after {:?}: closed={closed}, goaway={goaway:?}, frames={frames:?}",
        idle_since.elapsed()
    );
    assert!(
        closed || goaway.is_some(),
        "an idle h2c connection was neither sent GOAWAY nor closed within {:?}; it sent {frames:?}",
        IDLE + MARGIN
    );

    // A request in flight is not idleness: a body trickling one byte every
    // 500 ms for 3 s (twice the idle timeout) is echoed whole.
    let mut conn = timeout(Duration::from_secs(10), H2Conn::connect(host.addr))
        .await
        .expect("handshake in time")
        .expect("handshake");
    let mut buf = Vec::new();
    h2raw::headers(&mut buf, 1, "POST", "/echo", false);
    conn.writer.send(&buf).await.expect("headers");
    for i in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut buf = Vec::new();
        h2raw::data(&mut buf, 1, b"x", i == 5);
        conn.writer
            .send(&buf)
            .await
            .expect("the connection stays open while a body trickles in");
    }
    let echoed = timeout(Duration::from_secs(10), async {
        let (mut status, mut len) = (None, 0);
        loop {
            match conn.reader.next().await {
                Some(Frame::Headers {
                    stream: 1,
                    status: s,
                    ..
                }) => status = status.or(s),
                Some(Frame::Data {
                    stream: 1,
                    len: n,
                    end_stream,
                }) => {
                    len += n;
                    if end_stream {
                        return Ok((status, len));
                    }
                }
                Some(other @ (Frame::RstStream { .. } | Frame::GoAway { .. })) => {
                    return Err(format!("{other:?}"));
                }
                Some(_) => {}
                None => return Err("connection closed".into()),
            }
        }
    })
    .await
    .expect("the echo ends in time");
    assert_eq!(echoed, Ok((Some(200), 6)));
}

/// One rapid-reset flood on a new connection: `streams` HEADERS (GET /,
/// END_STREAM) + RST_STREAM(CANCEL) pairs written in 64 KiB writes while
/// the server's frames are read. The pairs written, the server's frames,
/// and whether it closed the connection within 20 s.
async fn rapid_reset(host: &Host, streams: u32) -> (usize, Vec<Frame>, bool, u32) {
    let mut conn = timeout(Duration::from_secs(10), H2Conn::connect(host.addr))
        .await
        .expect("handshake in time")
        .expect("handshake");
    let max_streams = conn
        .server_setting(setting::MAX_CONCURRENT_STREAMS)
        .unwrap_or(100);
    let mut flood = Vec::new();
    for i in 0..streams {
        let id = 2 * i + 1;
        h2raw::headers(&mut flood, id, "GET", "/", true);
        h2raw::rst_stream(&mut flood, id, code::CANCEL);
    }
    let pair_len = flood.len() / streams as usize;
    let writer = conn.writer.clone();
    let writing = tokio::spawn(async move {
        let mut sent = 0;
        for chunk in flood.chunks(64 * 1024) {
            if writer.send(chunk).await.is_err() {
                break;
            }
            sent += chunk.len();
        }
        sent
    });
    let (frames, closed) = conn.reader.until_closed(Duration::from_secs(20)).await;
    let sent = timeout(Duration::from_secs(10), writing)
        .await
        .expect("the writer ends once the server closes")
        .expect("writer task");
    (sent / pair_len, frames, closed, max_streams)
}

/// CVE-2023-44487: thousands of HEADERS + RST_STREAM(CANCEL) pairs in big
/// writes on a connection (ten times, a new connection each time). The
/// server sends GOAWAY (ENHANCE_YOUR_CALM expected) and closes each
/// connection; the guest work a flood starts is bounded by the
/// pending-reset limit plus the stream cap, far below the streams sent; a
/// normal client keeps getting 200 throughout.
#[tokio::test]
async fn h2_rapid_reset_flood_closes_the_connection_and_bounds_guest_work() {
    const STREAMS: u32 = 5000;
    const ROUNDS: usize = 10;
    const PENDING_RESETS: f64 = 20.0;
    let host = Host::start(&guest("guest"), &["--h2-max-pending-resets", "20"]);
    let http = client();
    assert_eq!(
        get_status(&http, &host.url("/"), Duration::from_secs(10)).await,
        Ok(200)
    );
    let before = host.metrics().await;

    let stop = Arc::new(AtomicBool::new(false));
    let normal = normal_client(host.url("/"), stop.clone());
    let mut max_streams = 0;
    let mut failures = Vec::new();
    let mut sent_total = 0;
    for round in 0..ROUNDS {
        let started = Instant::now();
        let (sent, frames, closed, max) = rapid_reset(&host, STREAMS).await;
        max_streams = max;
        sent_total += sent;
        let goaways: Vec<_> = frames
            .iter()
            .filter(|f| matches!(f, Frame::GoAway { .. }))
            .collect();
        let responses = frames
            .iter()
            .filter(|f| matches!(f, Frame::Headers { .. }))
            .count();
        eprintln!(
            "rapid reset round {round}: {sent} of {STREAMS} HEADERS+RST pairs written to the socket; closed={closed} after {:?}; \
             GOAWAY {goaways:?}; {responses} response HEADERS",
            started.elapsed()
        );
        if !closed {
            failures.push(format!(
                "round {round}: the flooding connection was not closed within 20 s"
            ));
        }
        if goaways.is_empty() {
            failures.push(format!("round {round}: no GOAWAY before the close"));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let statuses = timeout(Duration::from_secs(30), normal)
        .await
        .expect("the normal client ends")
        .expect("normal client task");

    // Detached guests finish on their own; give them a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = host.metrics().await;
    let delta = |name: &str| metric(&after, name, &[]) - metric(&before, name, &[]) + 0.0;
    let instantiations = delta("host_instantiation_duration_seconds_count");
    let normal_requests = statuses.len() as f64;
    let guest_work = instantiations - normal_requests;
    let bound = ROUNDS as f64 * 2.0 * (PENDING_RESETS + f64::from(max_streams));
    eprintln!(
        "rapid reset: {sent_total} reset streams over {ROUNDS} connections; guest instantiations +{instantiations} \
         ({normal_requests} of them the normal client's, so {guest_work} from the floods; bound {bound}); \
         host_requests_total +{}; normal client statuses: {:?}",
        delta("host_requests_total"),
        tally(&statuses)
    );
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(
        statuses.iter().all(|s| *s == Ok(200)),
        "the normal client was not served throughout: {:?}",
        tally(&statuses)
    );
    assert!(
        guest_work <= bound,
        "the floods started {guest_work} guest instantiations for {sent_total} reset streams; \
         bound: {ROUNDS} x 2 x (pending resets {PENDING_RESETS} + max streams {max_streams}) = {bound}"
    );
}

/// The rapid reset that the pending-accept limit cannot see: streams are
/// reset only after the server accepted them (100 slow requests per batch,
/// reset 100 ms later, 10 batches). Each reset frees an HTTP/2 stream slot
/// at once, so unless the host also stops (or stops counting) the guests
/// of reset streams, one connection pins far more guests than its stream
/// cap. With room for 300 guests and a cap of 100 streams, a normal
/// request to the same app must still be served.
#[tokio::test]
async fn h2_reset_streams_cannot_pin_more_guests_than_the_stream_cap() {
    const BATCHES: u32 = 10;
    const BATCH: u32 = 100;
    let host = Host::start(
        &guest("slow-guest"),
        &[
            "--max-concurrent",
            "300",
            "--app-max-concurrent",
            "300",
            "--h2-max-streams",
            "100",
            "--h2-max-pending-resets",
            "20",
        ],
    );
    let http = client();
    let before = host.metrics().await;
    let conn = timeout(Duration::from_secs(10), H2Conn::connect(host.addr))
        .await
        .expect("handshake in time")
        .expect("handshake");
    let (mut reader, writer) = (conn.reader, conn.writer);
    let reading = tokio::spawn(async move { reader.until_closed(Duration::from_secs(30)).await });
    let mut id = 1u32;
    let mut batches = 0;
    for _ in 0..BATCHES {
        let first = id;
        let mut open = Vec::new();
        for _ in 0..BATCH {
            h2raw::headers(&mut open, id, "GET", "/?ms=20000", true);
            id += 2;
        }
        if writer.send(&open).await.is_err() {
            break;
        }
        // Long enough for the server to accept (and start) them all.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut reset = Vec::new();
        for stream in (first..id).step_by(2) {
            h2raw::rst_stream(&mut reset, stream, code::CANCEL);
        }
        if writer.send(&reset).await.is_err() {
            break;
        }
        batches += 1;
    }
    // While the reset streams' guests would still be sleeping (20 s).
    let status = get_status(&http, &host.url("/?ms=1"), Duration::from_secs(10)).await;
    let m = host.metrics().await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        metric(&m, name, labels) - metric(&before, name, labels) + 0.0
    };
    let _ = writer.shutdown().await;
    let (frames, closed) = timeout(Duration::from_secs(40), reading)
        .await
        .expect("reader ends")
        .expect("reader task");
    let goaway: Vec<_> = frames
        .iter()
        .filter(|f| matches!(f, Frame::GoAway { .. }))
        .collect();
    eprintln!(
        "reset after accept: {batches} batches of {BATCH} streams reset; normal GET -> {status:?}; \
         guest instantiations +{}; rejections host_busy +{} app_busy +{}; GOAWAY {goaway:?}; closed={closed}",
        delta("host_instantiation_duration_seconds_count", &[]),
        delta("host_rejections_total", &[("reason", "host_busy")]),
        delta("host_rejections_total", &[("reason", "app_busy")]),
    );
    assert_eq!(
        status,
        Ok(200),
        "one connection resetting accepted streams pinned every guest slot"
    );
}

/// A client opening 200 streams on a connection capped at 4 (ignoring
/// SETTINGS_MAX_CONCURRENT_STREAMS) gets the excess refused with
/// RST_STREAM (REFUSED_STREAM or PROTOCOL_ERROR), at most 4 streams served,
/// and once the refusals pass `--h2-max-local-error-resets` a GOAWAY and
/// the close of its connection; another client keeps getting 200.
#[tokio::test]
async fn h2_streams_past_the_cap_are_refused_and_the_connection_closed() {
    const STREAMS: u32 = 200;
    const CAP: usize = 4;
    let host = Host::start(
        &guest("guest"),
        &["--h2-max-streams", "4", "--h2-max-local-error-resets", "8"],
    );
    let mut conn = timeout(Duration::from_secs(10), H2Conn::connect(host.addr))
        .await
        .expect("handshake in time")
        .expect("handshake");
    assert_eq!(
        conn.server_setting(setting::MAX_CONCURRENT_STREAMS),
        Some(CAP as u32)
    );
    let stop = Arc::new(AtomicBool::new(false));
    let normal = normal_client(host.url("/"), stop.clone());

    // POSTs without END_STREAM: every stream stays open.
    let mut burst = Vec::new();
    for i in 0..STREAMS {
        h2raw::headers(&mut burst, 2 * i + 1, "POST", "/echo", false);
    }
    // The server may close mid-write; what it answered says the rest.
    let _ = conn.writer.send(&burst).await;
    let (frames, closed) = conn.reader.until_closed(Duration::from_secs(10)).await;
    stop.store(true, Ordering::Relaxed);
    let statuses = timeout(Duration::from_secs(30), normal)
        .await
        .expect("the normal client ends")
        .expect("normal client task");

    let mut resets = BTreeMap::new();
    for frame in &frames {
        if let Frame::RstStream { code, .. } = frame {
            *resets.entry(*code).or_insert(0) += 1;
        }
    }
    let refused = resets.get(&code::REFUSED_STREAM).unwrap_or(&0)
        + resets.get(&code::PROTOCOL_ERROR).unwrap_or(&0);
    let served: std::collections::BTreeSet<u32> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::Headers { stream, .. } => Some(*stream),
            _ => None,
        })
        .collect();
    let goaway = frames.iter().find(|f| matches!(f, Frame::GoAway { .. }));
    eprintln!(
        "stream cap: RST_STREAM by code {resets:?}; streams answered {served:?}; GOAWAY {goaway:?}; closed={closed}; \
         normal client {:?}",
        tally(&statuses)
    );
    assert!(
        refused > 0,
        "no stream past the cap was refused: {resets:?}"
    );
    assert!(
        served.len() <= CAP,
        "{} streams were served on a connection capped at {CAP}: {served:?}",
        served.len()
    );
    assert!(
        goaway.is_some() || closed,
        "the offending connection got neither GOAWAY nor a close within 10 s"
    );
    assert!(
        statuses.iter().all(|s| *s == Ok(200)),
        "the other client was not served throughout: {:?}",
        tally(&statuses)
    );
}

/// What happened to one slow stream of app `a`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Status(u16),
    Reset(u32),
    Closed,
}

/// Open `streams` POSTs to `path` on a new connection, each sending one
/// byte of body and then nothing; every stream's first outcome (response
/// status, reset, or the connection closing) is sent on `events`. The task
/// holds the connection open until `stop`.
async fn slow_streams(
    host: std::net::SocketAddr,
    path: &'static str,
    streams: u32,
    events: mpsc::UnboundedSender<Outcome>,
    stop: Arc<AtomicBool>,
) {
    let Ok(Ok(mut conn)) = timeout(Duration::from_secs(10), H2Conn::connect(host)).await else {
        for _ in 0..streams {
            let _ = events.send(Outcome::Closed);
        }
        return;
    };
    let mut buf = Vec::new();
    for i in 0..streams {
        let id = 2 * i + 1;
        h2raw::headers(&mut buf, id, "POST", path, false);
        h2raw::data(&mut buf, id, b"x", false);
    }
    let _ = conn.writer.send(&buf).await;
    let mut pending: std::collections::BTreeSet<u32> = (0..streams).map(|i| 2 * i + 1).collect();
    while !stop.load(Ordering::Relaxed) {
        let frame = match timeout(Duration::from_millis(200), conn.reader.next()).await {
            Err(_) => continue,
            Ok(frame) => frame,
        };
        let (stream, outcome) = match frame {
            Some(Frame::Headers {
                stream,
                status: Some(status),
                ..
            }) => (stream, Outcome::Status(status)),
            Some(Frame::RstStream { stream, code }) => (stream, Outcome::Reset(code)),
            Some(_) => continue,
            None => {
                for _ in &pending {
                    let _ = events.send(Outcome::Closed);
                }
                return;
            }
        };
        if pending.remove(&stream) {
            let _ = events.send(outcome);
        }
    }
}

/// The "slow clients hold every slot" reproduction: 10 h2c connections x
/// 100 streams of app `a`, each sending one byte of body and then nothing,
/// must not take the host-wide `--max-concurrent` slots from app `b`: with
/// the per-app cap (default three quarters of the host's) `b` answers 200 while
/// all 1000 are open, and every one of `a`'s streams got an answer (its
/// echo's 200 once it runs, or 503 past the app's cap) or a reset.
#[tokio::test]
async fn slow_h2_bodies_on_one_app_do_not_starve_another() {
    const CONNECTIONS: u32 = 10;
    const STREAMS: u32 = 100;
    // The budget a 1 GiB pod gets: one app's slow clients must not spend
    // the others' memory either.
    let host = Host::bare(&["--max-concurrent", "1000", "--memory-budget-mib", "768"]);
    // Routes are not stripped from the path the guest sees, so `a` owns
    // `/echo` (the default guest's echo) and `b` everything else.
    for (name, route) in [("a", "/echo"), ("b", "/")] {
        let (status, body) = host
            .deploy(
                name,
                wasm("guest"),
                serde_json::json!({ "route": route }),
                None,
            )
            .await;
        assert_eq!(status, 201, "deploy {name}: {body}");
    }
    let http = client();
    assert_eq!(
        get_status(&http, &host.url("/"), Duration::from_secs(10)).await,
        Ok(200)
    );

    let stop = Arc::new(AtomicBool::new(false));
    let (events, mut outcomes) = mpsc::unbounded_channel();
    let holders: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            tokio::spawn(slow_streams(
                host.addr,
                "/echo",
                STREAMS,
                events.clone(),
                stop.clone(),
            ))
        })
        .collect();
    drop(events);

    // Wait until every slow stream was answered (a's echo answers 200 as
    // soon as it runs; a per-app cap answers 503 at once) or reset.
    let total = (CONNECTIONS * STREAMS) as usize;
    let mut seen: BTreeMap<Outcome, usize> = BTreeMap::new();
    let settled = timeout(Duration::from_secs(20), async {
        while seen.values().sum::<usize>() < total {
            match outcomes.recv().await {
                Some(outcome) => *seen.entry(outcome).or_insert(0) += 1,
                None => break,
            }
        }
    })
    .await
    .is_ok();
    let in_flight = metric(&host.metrics().await, "host_requests_in_flight", &[]);

    let mut b = Vec::new();
    for _ in 0..20 {
        b.push(get_status(&http, &host.url("/"), Duration::from_secs(10)).await);
    }
    let m = host.metrics().await;
    eprintln!(
        "slow bodies: a's {total} streams settled={settled}: {seen:?}; requests in flight {in_flight}; \
         GET / (app b) x20 while they are open: {:?}; rejections host_busy={} app_busy={}",
        tally(&b),
        metric(&m, "host_rejections_total", &[("reason", "host_busy")]) + 0.0,
        metric(&m, "host_rejections_total", &[("reason", "app_busy")]) + 0.0,
    );
    stop.store(true, Ordering::Relaxed);
    for holder in holders {
        let _ = timeout(Duration::from_secs(5), holder).await;
    }
    assert!(
        b.iter().all(|s| *s == Ok(200)),
        "app b was starved by app a's slow bodies: {:?}",
        tally(&b)
    );
    assert!(
        settled,
        "not every slow stream of app a was answered or reset within 20 s: {seen:?}"
    );
}

/// A request body that keeps trickling (one byte every 500 ms, never a
/// pause as long as `--body-read-timeout-ms`) but stays below
/// `--body-min-rate` is cut off after the grace period: each stream gets
/// a 408, an end, or a reset within the grace plus a margin, instead of
/// holding its slot for as long as the client likes.
#[tokio::test]
async fn h2_request_bodies_below_the_minimum_rate_are_cut_off() {
    const STREAMS: u32 = 10;
    const GRACE: Duration = Duration::from_millis(2000);
    const TRICKLE_FOR: Duration = Duration::from_secs(10);
    let host = Host::start(
        &guest("guest"),
        &[
            "--body-read-timeout-ms",
            "2000",
            "--body-min-rate",
            "1024",
            "--body-min-rate-grace-ms",
            "2000",
        ],
    );
    let mut conn = timeout(Duration::from_secs(10), H2Conn::connect(host.addr))
        .await
        .expect("handshake in time")
        .expect("handshake");
    let mut buf = Vec::new();
    for i in 0..STREAMS {
        h2raw::headers(&mut buf, 2 * i + 1, "POST", "/echo", false);
    }
    conn.writer.send(&buf).await.expect("headers");
    let started = Instant::now();
    let mut open: BTreeMap<u32, ()> = (0..STREAMS).map(|i| (2 * i + 1, ())).collect();
    let mut ended: BTreeMap<u32, (Duration, String)> = BTreeMap::new();
    let mut next_byte = Instant::now();
    while !open.is_empty() && started.elapsed() < TRICKLE_FOR {
        if Instant::now() >= next_byte {
            let mut buf = Vec::new();
            for id in open.keys() {
                h2raw::data(&mut buf, *id, b"x", false);
            }
            let _ = conn.writer.send(&buf).await;
            next_byte += Duration::from_millis(500);
        }
        let frame = match tokio::time::timeout_at(next_byte.into(), conn.reader.next()).await {
            Err(_) => continue,
            Ok(frame) => frame,
        };
        let (stream, how) = match frame {
            Some(Frame::Headers {
                stream,
                status: Some(status),
                end_stream,
            }) if status != 200 || end_stream => (stream, format!("status {status}")),
            Some(Frame::Data {
                stream,
                end_stream: true,
                ..
            }) => (stream, "response ended".to_string()),
            Some(Frame::RstStream { stream, code }) => (stream, format!("reset {code:#x}")),
            Some(Frame::GoAway { code, .. }) => {
                for id in std::mem::take(&mut open).into_keys() {
                    ended.insert(id, (started.elapsed(), format!("goaway {code:#x}")));
                }
                break;
            }
            Some(_) => continue,
            None => {
                for id in std::mem::take(&mut open).into_keys() {
                    ended.insert(id, (started.elapsed(), "connection closed".into()));
                }
                break;
            }
        };
        if open.remove(&stream).is_some() {
            ended.insert(stream, (started.elapsed(), how));
        }
    }
    eprintln!(
        "min rate: after {:?}, {} streams still trickling; ended: {ended:?}",
        started.elapsed(),
        open.len()
    );
    assert!(
        open.is_empty(),
        "{} of {STREAMS} streams trickling at ~2 B/s were still open after {TRICKLE_FOR:?}",
        open.len()
    );
    for (id, (at, how)) in &ended {
        assert!(
            *at <= GRACE + MARGIN,
            "stream {id} ended ({how}) only after {at:?}, past the grace {GRACE:?} + {MARGIN:?}"
        );
    }
}

/// The raw client against the real host: a GET and a POST echo over h2c.
#[tokio::test]
async fn raw_h2_client_talks_to_the_host() {
    let host = Host::start(&guest("guest"), &[]);
    let mut conn = timeout(Duration::from_secs(10), H2Conn::connect(host.addr))
        .await
        .expect("handshake in time")
        .expect("handshake");
    let max = conn.server_setting(setting::MAX_CONCURRENT_STREAMS);
    assert_eq!(max, Some(100), "{:?}", conn.server_settings);
    let get = timeout(Duration::from_secs(10), conn.request(1, "GET", "/", b"")).await;
    assert_eq!(get.expect("in time"), Some((200, 14)));
    let post = timeout(
        Duration::from_secs(10),
        conn.request(3, "POST", "/echo", b"hello"),
    )
    .await;
    assert_eq!(post.expect("in time"), Some((200, 5)));
    let missing = timeout(
        Duration::from_secs(10),
        conn.request(5, "GET", "/nope", b""),
    )
    .await;
    assert_eq!(missing.expect("in time").map(|(s, _)| s), Some(404));
}

/// Statuses (or failures) and how often each came.
fn tally(statuses: &[Result<u16, String>]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for s in statuses {
        let key = match s {
            Ok(status) => status.to_string(),
            Err(err) => err.clone(),
        };
        *out.entry(key).or_insert(0) += 1;
    }
    out
}
