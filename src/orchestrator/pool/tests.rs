use super::*;
use crate::protocol::SetWhen;
use bytes::Bytes;

fn backend() -> Arc<Backend> {
    backend_with_room(1 << 20)
}

fn backend_with_room(max_hint_bytes: usize) -> Arc<Backend> {
    let settings = LinkSettings {
        limits: Limits::default(),
        dial: Default::default(),
        connect_timeout: Duration::from_millis(100),
        keepalive: Duration::from_secs(10),
        max_hint_bytes,
        response_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(1),
    };
    Backend::start("127.0.0.1:9".into(), settings)
}

fn set(key: &str) -> Request {
    Request::Set {
        version: 1,
        ttl_ms: 0,
        key: bytes::Bytes::copy_from_slice(key.as_bytes()),
        value: bytes::Bytes::from_static(b"value"),
        when: crate::protocol::SetWhen::Always,
    }
}

/// Links with these timeouts that never ping, keep no hints, and are
/// not closed for want of answers during a test.
fn settings(request_timeout: Duration, connect_timeout: Duration) -> LinkSettings {
    LinkSettings {
        limits: Limits::default(),
        dial: Default::default(),
        connect_timeout,
        keepalive: Duration::from_secs(60),
        max_hint_bytes: 0,
        response_timeout: Duration::from_secs(60),
        request_timeout,
    }
}

/// A worker that answers the hello, then answers requests only when
/// told: each `()` sent on the returned channel answers the oldest
/// request with a pong.
async fn worker_answering_on_demand() -> (String, mpsc::UnboundedSender<()>) {
    use crate::protocol::link::{decode_request, encode_response, read_frame, HELLO};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (go_tx, mut go_rx) = mpsc::unbounded_channel::<()>();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        let mut hello = [0u8; 5];
        socket.read_exact(&mut hello).await.expect("hello");
        socket.write_all(HELLO).await.expect("hello");
        let mut buf = bytes::BytesMut::new();
        let mut requests = 0usize;
        loop {
            tokio::select! {
                read = socket.read_buf(&mut buf) => {
                    if read.unwrap_or(0) == 0 {
                        return;
                    }
                    while let Ok(Some(frame)) = read_frame(&mut buf, 1 << 20) {
                        decode_request(frame, &Limits::default()).expect("request");
                        requests += 1;
                    }
                }
                Some(()) = go_rx.recv(), if requests > 0 => {
                    requests -= 1;
                    let mut out = bytes::BytesMut::new();
                    encode_response(&Response::Pong, &mut out);
                    socket.write_all(&out).await.expect("answer");
                }
            }
        }
    });
    (addr, go_tx)
}

#[tokio::test]
async fn a_request_times_out_on_its_own_deadline_and_its_connection_is_dropped() {
    let (addr, answer) = worker_answering_on_demand().await;
    let timeout = Duration::from_millis(300);
    let b = Backend::start(addr, settings(timeout, Duration::from_secs(5)));
    let started = std::time::Instant::now();
    let first = tokio::spawn({
        let b = b.clone();
        async move { (b.call(Arc::new(Request::Ping)).await, started.elapsed()) }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let second = tokio::spawn({
        let b = b.clone();
        async move { (b.call(Arc::new(Request::Ping)).await, started.elapsed()) }
    });
    let (result, took) = first.await.expect("task");
    assert!(
        matches!(result, Err(ClientError::Timeout(t)) if t == timeout),
        "{result:?}"
    );
    assert!(
        took >= timeout && took < Duration::from_secs(5),
        "first took {took:?}"
    );
    // Nothing came back for a whole request timeout: the connection is
    // dropped, not waited on for `response_timeout` (5 s here). The
    // second request, written to it, is retried once on a new
    // connection, which this worker never answers. It was written, so
    // it may have been applied: the caller is not told "never sent".
    let (result, took) = second.await.expect("task");
    assert!(matches!(&result, Err(e) if !e.never_sent()), "{result:?}");
    assert!(
        took < timeout + Duration::from_millis(150) + Duration::from_secs(1),
        "the second request waited for the stalled connection: {took:?}"
    );
    // Answers now come on the dropped connection: nobody takes them.
    let _ = answer.send(());
    let _ = answer.send(());
    assert_eq!(
        b.metrics.latency.get_sample_count(),
        0,
        "no answer came in time"
    );
}

#[tokio::test]
async fn a_connection_that_stops_answering_is_replaced_after_one_request_timeout() {
    use crate::protocol::link::HELLO;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A worker that says hello on each connection and never answers
    // (a connection whose bytes were lost, as across a partition).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (accepted_tx, mut accepted) = mpsc::unbounded_channel::<()>();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut hello = [0u8; 5];
            if socket.read_exact(&mut hello).await.is_ok() {
                let _ = socket.write_all(HELLO).await;
            }
            let _ = accepted_tx.send(());
            held.push(socket);
        }
    });
    let timeout = Duration::from_millis(300);
    // `response_timeout` is 10 s here: a link that waited that long of
    // silence would not reconnect within the 3 s the test waits.
    let b = Backend::start(addr, settings(timeout, Duration::from_secs(10)));
    let result = b.call(Arc::new(Request::Ping)).await;
    assert!(matches!(result, Err(ClientError::Timeout(_))), "{result:?}");
    accepted.recv().await.expect("first connection");
    let next = tokio::spawn({
        let b = b.clone();
        async move { b.call(Arc::new(Request::Ping)).await }
    });
    let second = tokio::time::timeout(Duration::from_secs(3), accepted.recv()).await;
    assert!(
        matches!(second, Ok(Some(()))),
        "the next request waited on the silent connection"
    );
    next.abort();
}

#[tokio::test]
async fn a_request_whose_caller_gave_up_is_not_sent() {
    let (addr, answer) = worker_answering_on_demand().await;
    let b = Backend::start(
        addr,
        settings(Duration::from_secs(5), Duration::from_secs(5)),
    );
    // Its deadline passed while it waited for the link (here: before
    // it was even queued).
    let past = Instant::now() - Duration::from_millis(1);
    let gave_up = b.enqueue(Arc::new(Request::Ping), past).expect("queued");
    let live = tokio::spawn({
        let b = b.clone();
        async move { b.call(Arc::new(Request::Ping)).await }
    });
    let result = gave_up.await.expect("answered");
    assert!(matches!(result, Err(ClientError::Unsent(_))), "{result:?}");
    assert!(result.is_err_and(|e| e.never_sent()));
    // One answer from the worker: it is the live request's, so the
    // other was never written.
    answer.send(()).expect("worker");
    let result = live.await.expect("task");
    assert!(matches!(result, Ok(Response::Pong)), "{result:?}");
}

#[tokio::test]
async fn callers_of_a_worker_that_stops_reading_are_answered_in_time() {
    use crate::protocol::link::HELLO;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Answers the hello, then never reads again: once the socket
    // buffers are full, the link's writes block.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut hello = [0u8; 5];
            if socket.read_exact(&mut hello).await.is_ok() {
                let _ = socket.write_all(HELLO).await;
            }
            held.push(socket);
        }
    });
    let timeout = Duration::from_millis(300);
    let b = Backend::start(addr, settings(timeout, timeout));
    let big = Arc::new(Request::Set {
        version: 1,
        ttl_ms: 0,
        key: bytes::Bytes::from_static(b"k"),
        value: bytes::Bytes::from(vec![b'x'; 4 << 20]),
        when: crate::protocol::SetWhen::Always,
    });
    let mut calls = Vec::new();
    for i in 0..12 {
        let b = b.clone();
        let request = if i % 3 == 2 {
            Arc::new(Request::Ping)
        } else {
            big.clone()
        };
        calls.push(tokio::spawn(async move {
            let started = std::time::Instant::now();
            (b.call(request).await, started.elapsed())
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for call in calls {
        let (result, took) = call.await.expect("task");
        assert!(
            matches!(
                result,
                Err(ClientError::Timeout(_) | ClientError::Unsent(_) | ClientError::Closed)
            ),
            "{result:?}"
        );
        // Written or not, each caller hears within its own timeout
        // (plus the link's reconnect when it gave up on a blocked write).
        assert!(took < 5 * timeout, "a caller waited {took:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_read_waits_for_a_delivery_under_way() {
    let b = backend();
    // A probe's delivery is under way: it took the hints off the queue
    // and waits for the worker's answers, holding the delivery lock.
    let delivery = b.delivery.lock().await;
    let flush = tokio::spawn({
        let b = b.clone();
        async move { b.flush_hints(Duration::from_secs(10)).await }
    });
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        !flush.is_finished(),
        "a read went ahead while hints were still in flight"
    );
    drop(delivery);
    let flushed = flush.await.expect("task");
    assert!(flushed.is_ok(), "nothing left to send: {flushed:?}");
    // A delivery that outlasts the read's timeout fails the read (it
    // goes to the partner) instead of holding it.
    let delivery = b.delivery.lock().await;
    let flushed = b.flush_hints(Duration::from_secs(1)).await;
    assert!(
        matches!(flushed, Err(ClientError::Timeout(_))),
        "{flushed:?}"
    );
    drop(delivery);
}

#[tokio::test]
async fn a_worker_whose_partner_says_it_missed_a_write_stands_behind() {
    let pair = [backend(), backend()];
    let standing = |i| Backend::standing(&pair, i);
    assert_eq!((standing(0), standing(1)), (Health::Up, Health::Up));
    pair[1].probe_done(Some(true));
    assert_eq!((standing(0), standing(1)), (Health::Behind, Health::Up));
    // Nor does it decide a conditional write (its own health is up).
    assert!(!Backend::can_decide(&pair, 0));
    assert!(Backend::can_decide(&pair, 1));
    // Only while the partner that says so can serve reads: with it down
    // or loading the worker's own health stands. A claimer that is
    // behind itself still holds the write the worker lacks, and is read
    // first when both are behind.
    pair[1].set_health(Health::Down);
    assert_eq!(standing(0), Health::Up);
    pair[1].set_health(Health::Loading);
    assert_eq!(standing(0), Health::Up);
    pair[1].set_health(Health::Behind);
    assert_eq!(standing(0), Health::Behind);
    pair[0].set_health(Health::Behind);
    assert_eq!(Backend::read_order(&pair, 0), [1, 0], "the claimer first");
    assert_eq!(Backend::read_order(&pair, 1), [1, 0]);
    pair[0].set_health(Health::Up);
    pair[1].set_health(Health::Up);
    assert_eq!(Backend::read_order(&pair, 0), [1, 0]);
    // A failed probe keeps what it said last; a later answer clears it.
    pair[1].probe_done(None);
    assert_eq!(standing(0), Health::Behind);
    pair[1].probe_done(Some(false));
    assert_eq!(standing(0), Health::Up);
    // Its own health comes first.
    pair[1].probe_done(Some(true));
    pair[0].set_health(Health::Loading);
    assert_eq!(standing(0), Health::Loading);
}

#[tokio::test]
async fn the_first_probe_is_awaited_once() {
    let b = backend();
    let waiting = tokio::spawn({
        let b = b.clone();
        async move { b.first_probe().await }
    });
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished());
    // A failed probe says nothing of the worker: still waiting.
    b.probe_done(None);
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished(), "a failed probe is no answer");
    assert!(!b.answered());
    b.probe_done(Some(false));
    assert!(b.answered());
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("woken by the first probe")
        .expect("task");
    // Later waits return at once.
    tokio::time::timeout(Duration::from_secs(5), b.first_probe())
        .await
        .expect("already probed");
}

#[tokio::test]
async fn only_a_worker_that_never_answered_starts_out_down() {
    let silent = backend();
    assert!(silent.down_unless_answered());
    assert_eq!(silent.health(), Health::Down);
    // An answer recorded before the check stands (even before its
    // `probe_done`, which the probe calls after `probed`).
    let answered = backend();
    answered.probed(Health::Up, 1, 0, 0);
    assert!(!answered.down_unless_answered());
    assert_eq!(answered.health(), Health::Up);
}

#[tokio::test]
async fn a_restart_after_the_miss_ends_behind() {
    let b = backend();
    b.probed(Health::Up, 5, 0, 0);
    assert_eq!(b.health(), Health::Up);
    b.missed_write(&set("k"));
    assert_eq!(b.health(), Health::Behind);
    assert!(b.probed(Health::Up, 5, 0, 0), "hints to deliver");
    assert_eq!(b.health(), Health::Behind, "same process: still behind");
    b.probed(Health::Loading, 6, 0, 0);
    assert_eq!(b.health(), Health::Loading, "a new process refills");
    b.probed(Health::Up, 6, 0, 0);
    assert_eq!(b.health(), Health::Up);
}

#[tokio::test]
async fn anti_entropy_rounds_after_the_miss_end_behind() {
    // No room for hints: only anti-entropy can bring the worker back.
    let b = backend_with_room(0);
    b.report_failure(&ClientError::Closed);
    b.missed_write(&set("k"));
    assert_eq!(b.health(), Health::Down);
    assert!(!b.probed(Health::Up, 42, 0, 7), "no hints kept");
    assert_eq!(
        b.health(),
        Health::Behind,
        "a miss before any probe is not forgotten"
    );
    b.probed(Health::Up, 42, 0, 8);
    assert_eq!(
        b.health(),
        Health::Behind,
        "round 8 may have begun before the miss"
    );
    b.missed_write(&set("k2"));
    b.probed(Health::Up, 42, 0, 9);
    assert_eq!(b.health(), Health::Behind, "a new miss restarts the count");
    b.probed(Health::Up, 42, 0, 10);
    assert_eq!(b.health(), Health::Behind);
    b.probed(Health::Up, 42, 0, 11);
    assert_eq!(
        b.health(),
        Health::Up,
        "two rounds after the probe that followed the miss"
    );
}

#[tokio::test]
async fn hints_are_bounded_and_an_overflow_is_remembered() {
    let charge = Hint::new(&set("k0"), Instant::now())
        .expect("a hint")
        .charge();
    let b = backend_with_room(3 * charge);
    for i in 0..5 {
        b.missed_write(&set(&format!("k{i}")));
    }
    let c = b.catchup();
    assert_eq!(c.hints.len(), 3);
    assert!(c.overflowed);
    assert_eq!(c.hint_bytes, 3 * charge);
}

#[test]
fn a_hint_owns_its_bytes() {
    let buffer = Bytes::from(vec![b'x'; 64 * 1024]);
    let request = Request::Set {
        version: 7,
        ttl_ms: 0,
        key: buffer.slice(0..3),
        value: buffer.slice(3..13),
        when: SetWhen::Absent,
    };
    let hint = Hint::new(&request, Instant::now()).expect("a hint");
    assert_eq!(hint.data.len(), 13, "only the key and value are kept");
    assert!(hint.charge() < 256);
    drop(request);
    // The client's buffer is not kept alive by the hint.
    assert!(buffer.is_unique());
    match hint.request(Instant::now()) {
        Request::Set {
            version: 7,
            ttl_ms: 0,
            key,
            value,
            when: SetWhen::Always,
        } => assert_eq!((&key[..], &value[..]), (&b"xxx"[..], &[b'x'; 10][..])),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_hint_keeps_its_deadline_and_an_expired_one_deletes() {
    let now = Instant::now();
    let set = Request::Set {
        version: 9,
        ttl_ms: 2_000,
        key: Bytes::from_static(b"k"),
        value: Bytes::from_static(b"v"),
        when: SetWhen::Always,
    };
    let expire = Request::Expire {
        version: 9,
        ttl_ms: 2_000,
        key: Bytes::from_static(b"k"),
    };
    let (set, expire) = (
        Hint::new(&set, now).expect("hint"),
        Hint::new(&expire, now).expect("hint"),
    );
    tokio::time::advance(Duration::from_millis(1_500)).await;
    let later = Instant::now();
    assert!(
        matches!(set.request(later), Request::Set { ttl_ms: 500, .. }),
        "the TTL counts from the write, not from the delivery"
    );
    assert!(matches!(
        expire.request(later),
        Request::Expire { ttl_ms: 500, .. }
    ));
    tokio::time::advance(Duration::from_millis(600)).await;
    let late = Instant::now();
    assert!(
        matches!(set.request(late), Request::Del { version: 9, .. }),
        "an expired write is delivered as the delete it became"
    );
    let after = crate::version::after(9);
    assert!(matches!(
        expire.request(late),
        Request::Del { version, .. } if version == after
    ));
}

#[tokio::test]
async fn a_link_queue_is_bounded_by_bytes() {
    // A worker that never answers: requests stay queued or in flight.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let b = Backend::start(
        addr,
        settings(Duration::from_secs(30), Duration::from_secs(30)),
    );
    let big = Arc::new(Request::Set {
        version: 1,
        ttl_ms: 0,
        key: Bytes::from_static(b"k"),
        value: Bytes::from(vec![b'x'; 8 << 20]),
        when: SetWhen::Always,
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut queued = Vec::new();
    let refused = loop {
        match b.enqueue(big.clone(), deadline) {
            Ok(rx) => queued.push(rx),
            Err(e) => break e,
        }
        assert!(
            queued.len() <= LINK_QUEUE_BYTES / (8 << 20),
            "no byte bound"
        );
    };
    assert!(matches!(refused, ClientError::Overloaded(_)), "{refused:?}");
    assert_eq!(queued.len(), LINK_QUEUE_BYTES / (8 << 20) - 1);
    drop(listener);
}

#[tokio::test]
async fn a_worker_that_came_back_decides_nothing_while_its_partner_can() {
    let settle = Duration::from_secs(5);
    let pair = [backend(), backend()];
    for b in &pair {
        b.probed(Health::Up, 1, 0, 0);
    }
    // Started together (or not probed yet): each decides its own keys.
    assert_eq!(Backend::decider(&pair, 0, settle), Some(0));
    assert_eq!(Backend::decider(&pair, 1, settle), Some(1));
    pair[0].serving(60_000);
    pair[1].serving(60_500);
    assert_eq!(
        Backend::decider(&pair, 0, settle),
        Some(0),
        "within the tie"
    );
    // Worker 1 came back 2 s ago; worker 0 served throughout.
    pair[1].serving(2_000);
    assert_eq!(Backend::decider(&pair, 1, settle), Some(0));
    assert_eq!(Backend::decider(&pair, 0, settle), Some(0));
    // Settled: its keys are its own again.
    pair[1].serving(6_000);
    assert_eq!(Backend::decider(&pair, 1, settle), Some(1));
    // A partner that cannot decide leaves it to the one that can.
    pair[1].serving(1);
    pair[0].set_health(Health::Down);
    assert_eq!(Backend::decider(&pair, 0, settle), Some(1));
    pair[1].set_health(Health::Down);
    assert_eq!(Backend::decider(&pair, 0, settle), None);
}

#[tokio::test]
async fn a_link_at_an_older_version_is_replaced_once_the_probe_finds_a_newer_one() {
    use crate::protocol::link::{
        decode_request, encode_response, hello, hello_version, read_frame, LINK_VERSION,
        OLDEST_LINK_VERSION,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A worker of this build that closes the first hello it gets (as on a
    // restart), then speaks whatever version it is offered. Each
    // connection is recorded with the version offered and the requests
    // it answered.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let conns: Arc<Mutex<Vec<(u8, usize)>>> = Arc::default();
    tokio::spawn({
        let conns = conns.clone();
        async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let conns = conns.clone();
                tokio::spawn(async move {
                    let mut greeting = [0u8; 5];
                    if socket.read_exact(&mut greeting).await.is_err() {
                        return;
                    }
                    let offered = hello_version(&greeting).expect("a hello");
                    let index = {
                        let mut c = conns.lock().expect("lock");
                        c.push((offered, 0));
                        c.len() - 1
                    };
                    if index == 0 {
                        return;
                    }
                    socket.write_all(&hello(offered)).await.expect("hello");
                    let mut buf = bytes::BytesMut::new();
                    while socket.read_buf(&mut buf).await.unwrap_or(0) > 0 {
                        while let Ok(Some(frame)) = read_frame(&mut buf, 1 << 20) {
                            decode_request(frame, &Limits::default()).expect("request");
                            conns.lock().expect("lock")[index].1 += 1;
                            let mut out = bytes::BytesMut::new();
                            encode_response(&Response::Pong, &mut out);
                            socket.write_all(&out).await.expect("answer");
                        }
                    }
                });
            }
        }
    });
    let b = Backend::start(
        addr,
        settings(Duration::from_secs(2), Duration::from_secs(2)),
    );
    let ping = || b.call(Arc::new(Request::Ping));
    assert!(matches!(ping().await, Ok(Response::Pong)));
    assert_eq!(
        *conns.lock().expect("lock"),
        [(LINK_VERSION, 0), (OLDEST_LINK_VERSION, 1)],
        "the closed hello is retried at the older version"
    );
    // The probe's own connection finds the worker at this build's version.
    b.spoke(LINK_VERSION);
    assert!(matches!(ping().await, Ok(Response::Pong)));
    assert!(matches!(ping().await, Ok(Response::Pong)));
    assert_eq!(
        *conns.lock().expect("lock"),
        [
            (LINK_VERSION, 0),
            (OLDEST_LINK_VERSION, 1),
            (LINK_VERSION, 2)
        ],
        "the older connection is replaced"
    );
}
