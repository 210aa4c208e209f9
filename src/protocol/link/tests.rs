use super::*;
use crate::hash::DIGEST_BUCKETS;
use crate::protocol::{ErrorCode, Expiry, TtlChange};
use bytes::BytesMut;

fn limits() -> Limits {
    Limits {
        max_key_bytes: 64,
        max_value_bytes: 1024,
    }
}

fn layout() -> Layout {
    Layout {
        epoch: 7,
        pairs: vec![
            ["10.0.0.1:7001".into(), "10.0.0.2:7001".into()],
            ["h3:7001".into(), "[::1]:7004".into()],
        ],
        source: None,
    }
}

/// A layout moving keys off a removed middle pair.
fn moving_layout(sealed: bool) -> Layout {
    let before = vec![
        ["a:1".to_string(), "a:2".to_string()],
        ["b:1".into(), "b:2".into()],
        ["c:1".into(), "c:2".into()],
    ];
    let mut after = before.clone();
    after[1] = super::hole();
    Layout {
        epoch: 9,
        pairs: after,
        source: Some(super::Source {
            pairs: before,
            sealed,
        }),
    }
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

#[test]
fn requests_round_trip() {
    let requests = [
        Request::Get { key: b("k") },
        Request::Set {
            version: 7,
            ttl_ms: 1500,
            key: b("k"),
            value: b("v\r\n\0"),
            when: SetWhen::Always,
        },
        Request::Set {
            version: 8,
            ttl_ms: 0,
            key: b("k"),
            value: Bytes::new(),
            when: SetWhen::Absent,
        },
        Request::Set {
            version: 9,
            ttl_ms: 5,
            key: b("k"),
            value: b("x"),
            when: SetWhen::Present,
        },
        Request::Meta { key: b("m") },
        Request::Expire {
            version: 10,
            ttl_ms: 2500,
            key: b("e"),
        },
        Request::Del {
            version: u64::MAX,
            key: b("k"),
        },
        Request::Ping,
        Request::Auth { token: b("s3cret") },
        Request::Status,
        Request::Missed,
        Request::Refill,
        Request::Digest { floor: 99 },
        Request::Scan {
            from: 17,
            count: 100,
            pattern: b("user:*"),
        },
        Request::Flush { version: 1234 },
        Request::Update {
            version: 5,
            key: b("n"),
            update: Update::IncrBy(-3),
        },
        Request::Update {
            version: 5,
            key: b("f"),
            update: Update::incr_by_float(2.5).expect("finite"),
        },
        Request::Update {
            version: 6,
            key: b("a"),
            update: Update::Append(b("tail")),
        },
        Request::Update {
            version: 6,
            key: b("r"),
            update: Update::SetRange {
                offset: 7,
                value: b("xy"),
            },
        },
        Request::Update {
            version: 7,
            key: b("s"),
            update: Update::Replace {
                value: b("v"),
                ttl: TtlChange::Set(Expiry::In(std::time::Duration::from_millis(1500))),
                when: SetWhen::Absent,
            },
        },
        Request::Update {
            version: 7,
            key: b("s"),
            update: Update::Retime(TtlChange::Keep),
        },
        Request::Update {
            version: 8,
            key: b("t"),
            update: Update::Take,
        },
        Request::Replicate {
            version: 9,
            ttl_ms: 100,
            base: 8,
            key: b("n"),
            value: Some(b("42")),
        },
        Request::Replicate {
            version: 9,
            ttl_ms: 0,
            base: 8,
            key: b("t"),
            value: None,
        },
        Request::Sync {
            buckets: vec![0, 17, (DIGEST_BUCKETS - 1) as u16],
            after: Bytes::new(),
            upto: b("m"),
            summaries: vec![
                Summary {
                    key: b("a"),
                    version: 9,
                    tombstone: false,
                    content: 0,
                },
                Summary {
                    key: b("b"),
                    version: 10,
                    tombstone: true,
                    content: 0,
                },
            ],
        },
        Request::Apply {
            last: true,
            entries: vec![Entry {
                key: b("k"),
                version: 3,
                ttl_ms: 5,
                tombstone: false,
                compressed: false,
                hash: false,
                raw_len: 1,
                data: b("v"),
            }],
            evict: vec![Summary {
                key: b("gone"),
                version: 4,
                tombstone: false,
                content: 0,
            }],
        },
        Request::Layout {
            layout: None,
            you: "10.0.0.1:7001".into(),
        },
        Request::Layout {
            layout: Some(layout()),
            you: "10.0.0.1:7001".into(),
        },
    ];
    let mut buf = BytesMut::new();
    for r in &requests {
        encode_request(r, &mut buf);
    }
    for r in &requests {
        let frame = read_frame(&mut buf, 4096)
            .expect("valid")
            .expect("complete");
        assert_eq!(&decode_request(frame, &limits()).expect("decodes"), r);
    }
    assert_eq!(read_frame(&mut buf, 4096), Ok(None));
}

#[test]
fn responses_round_trip() {
    let entry = Entry {
        key: b("k"),
        version: 3,
        ttl_ms: 0,
        tombstone: false,
        compressed: true,
        hash: false,
        raw_len: 300,
        data: b("xyz"),
    };
    let cases = [
        (
            Response::Value {
                version: 1,
                ttl_ms: 2,
                value: b("v"),
            },
            RequestKind::Get,
        ),
        (Response::Set { applied: true }, RequestKind::Set),
        (Response::NotStored, RequestKind::Set),
        (Response::Newer { version: 42 }, RequestKind::Set),
        (Response::Newer { version: 43 }, RequestKind::Del),
        (
            Response::Meta {
                version: 3,
                ttl_ms: 0,
            },
            RequestKind::Meta,
        ),
        (Response::Del { existed: true }, RequestKind::Expire),
        (Response::Del { existed: false }, RequestKind::Del),
        (Response::Pong, RequestKind::Ping),
        (Response::Authenticated, RequestKind::Auth),
        (
            Response::Status {
                state: WorkerState::Refilling,
                entries: 9,
                incarnation: 77,
                synced: 4,
                complete: true,
                partner_behind: true,
                serving_ms: 86_400_000,
            },
            RequestKind::Status,
        ),
        (Response::Noted, RequestKind::Missed),
        (
            Response::Digest {
                buckets: (0..DIGEST_BUCKETS as u64)
                    .map(|i| BucketDigest {
                        hash: i * 31,
                        entries: i as u32,
                    })
                    .collect(),
                floor: 77,
            },
            RequestKind::Digest,
        ),
        (
            Response::Keys {
                next: DIGEST_BUCKETS as u32,
                keys: vec![b("k1"), b("k2")],
            },
            RequestKind::Scan,
        ),
        (
            Response::Flushed {
                floor: 5,
                removed: 6,
            },
            RequestKind::Flush,
        ),
        (
            Response::Updated {
                changed: true,
                version: 10,
                base: 9,
                ttl_ms: 300,
                value: Some(b("43")),
                old: Some(b("42")),
            },
            RequestKind::Update,
        ),
        (
            Response::Updated {
                changed: false,
                version: 0,
                base: 0,
                ttl_ms: 0,
                value: None,
                old: None,
            },
            RequestKind::Update,
        ),
        (Response::NotStored, RequestKind::Replicate),
        (Response::Set { applied: true }, RequestKind::Replicate),
        (
            Response::Synced {
                complete: false,
                entries: vec![entry.clone()],
                wanted: vec![b("w1"), b("w2")],
            },
            RequestKind::Sync,
        ),
        (
            Response::Applied {
                count: 12,
                refused: vec![Summary {
                    key: b("full"),
                    version: 7,
                    tombstone: false,
                    content: 0,
                }],
            },
            RequestKind::Apply,
        ),
        (Response::NotFound, RequestKind::Get),
        (
            Response::Error(ErrorReply::new(ErrorCode::Loading, "refilling")),
            RequestKind::Get,
        ),
        (
            Response::Chunk(vec![
                entry.clone(),
                Entry {
                    tombstone: true,
                    ..entry
                },
            ]),
            RequestKind::Refill,
        ),
        (
            Response::End {
                entries: 2,
                floor: 3,
            },
            RequestKind::Refill,
        ),
    ];
    let mut buf = BytesMut::new();
    for (r, _) in &cases {
        encode_response(r, &mut buf);
    }
    for (r, kind) in &cases {
        let frame = read_frame(&mut buf, 1 << 20)
            .expect("valid")
            .expect("complete");
        assert_eq!(
            &decode_response(frame, *kind, &limits()).expect("decodes"),
            r
        );
    }
}

#[test]
fn oversized_and_truncated_frames_are_errors() {
    let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
    assert!(matches!(
        read_frame(&mut buf, 4096),
        Err(LinkError::FrameTooLarge { .. })
    ));
    let mut buf = BytesMut::from(&[0, 0, 0, 5, 1][..]);
    assert_eq!(read_frame(&mut buf, 4096), Ok(None));
    for frame in [
        &b""[..],
        b"\x01",
        b"\x01\x00",
        b"\x01\x00\x05ab",
        b"\x02\x00",
        b"\x09",
        b"\x04x",
    ] {
        assert!(
            decode_request(Bytes::copy_from_slice(frame), &limits()).is_err(),
            "{frame:?}"
        );
    }
    // A chunk claiming a million entries in a few bytes is refused before allocating.
    let frame = Bytes::from_static(b"\x0a\x00\x0f\x42\x40abc");
    assert!(decode_response(frame, RequestKind::Refill, &limits()).is_err());
}

#[test]
fn random_frames_never_panic() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let kinds = RequestKind::ALL;
    for _ in 0..50_000 {
        let len = (next() % 48) as usize;
        let mut frame: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if let Some(first) = frame.first_mut() {
            *first %= 13;
        }
        let frame = Bytes::from(frame);
        let _ = decode_request(frame.clone(), &limits());
        let _ = decode_response(
            frame,
            kinds[(next() % kinds.len() as u64) as usize],
            &limits(),
        );
    }
}

/// The link dialect: the hello first, then frames; before the token only
/// AUTH is taken, anything else is one error and a hang-up.
#[test]
fn the_link_dialect_greets_then_gates_frames_on_the_token() {
    use crate::protocol::dialect::{Decoded, Dialect, Gate};
    use crate::protocol::Op;
    let mut dialect = LinkDialect::new(limits());
    let mut gate = Gate {
        required: true,
        authenticated: false,
    };
    let mut buf = BytesMut::from(&HELLO[..3]);
    assert!(matches!(
        dialect.decode(&mut buf, &gate),
        Decoded::Incomplete
    ));
    buf.extend_from_slice(&HELLO[3..]);
    encode_request(&Request::Ping, &mut buf);
    encode_request(&Request::Auth { token: b("secret") }, &mut buf);
    encode_request(&Request::Status, &mut buf);
    assert!(matches!(
        dialect.decode(&mut buf, &gate),
        Decoded::Greeting(Some(LinkAnswer::Hello(LINK_VERSION)))
    ));
    // A request before the token is refused, and the refusal closes.
    let Decoded::Refused(Request::Ping) = dialect.decode(&mut buf, &gate) else {
        panic!("PING before AUTH was not refused");
    };
    let refused = dialect.refused(Op::Ping);
    assert!(refused.close);
    assert!(matches!(
        refused.answer,
        Some(LinkAnswer::Response(Response::Error(ref e))) if e.code == ErrorCode::Auth
    ));
    let Decoded::Credential(Some(token)) = dialect.decode(&mut buf, &gate) else {
        panic!("AUTH was not a credential");
    };
    assert_eq!(token, b("secret"));
    // A wrong token hangs up; a right one opens the gate.
    assert!(dialect.credential(Some(false), &mut gate.clone()).close);
    let accepted = dialect.credential(Some(true), &mut gate);
    assert!(!accepted.close && gate.open());
    assert!(matches!(
        dialect.decode(&mut buf, &gate),
        Decoded::Run(Request::Status, ())
    ));
    assert!(matches!(
        dialect.decode(&mut buf, &gate),
        Decoded::Incomplete
    ));

    // Another hello (another version, or not a link at all) closes at once.
    let mut other = LinkDialect::new(limits());
    let mut buf = BytesMut::from(&b"\xF0rcl\x05"[..]);
    assert!(matches!(
        other.decode(&mut buf, &gate),
        Decoded::Greeting(None)
    ));
    // A frame over the limit closes without an answer.
    let mut other = LinkDialect::new(limits());
    let mut buf = BytesMut::from(&HELLO[..]);
    buf.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        other.decode(&mut buf, &gate),
        Decoded::Greeting(Some(_))
    ));
    let Decoded::Answer(answered) = other.decode(&mut buf, &gate) else {
        panic!("an oversized frame was not answered");
    };
    assert!(answered.close && answered.answer.is_none());
}

fn entry(key: &str, hash: bool) -> Entry {
    Entry {
        key: b(key),
        version: 5,
        ttl_ms: 0,
        tombstone: false,
        compressed: false,
        hash,
        raw_len: 1,
        data: b("x"),
    }
}

fn summary(key: &str, content: u64) -> Summary {
    Summary {
        key: b(key),
        version: 5,
        tombstone: false,
        content,
    }
}

#[test]
fn the_server_answers_with_the_highest_version_both_speak() {
    use crate::protocol::dialect::{Decoded, Dialect, Gate};
    let gate = Gate {
        required: false,
        authenticated: false,
    };
    let greet = |offered: u8| {
        let mut dialect = LinkDialect::new(limits());
        let mut buf = BytesMut::from(&hello(offered)[..]);
        match dialect.decode(&mut buf, &gate) {
            Decoded::Greeting(Some(LinkAnswer::Hello(v))) => {
                assert_eq!(
                    dialect.agreed().load(std::sync::atomic::Ordering::Relaxed),
                    v
                );
                Some(v)
            }
            Decoded::Greeting(None) => None,
            _ => panic!("a hello was not a greeting"),
        }
    };
    assert_eq!(greet(LINK_VERSION), Some(LINK_VERSION));
    // The previous release's hello: spoken.
    assert_eq!(greet(OLDEST_LINK_VERSION), Some(OLDEST_LINK_VERSION));
    // A later release's: answered with this one's, which it then speaks.
    assert_eq!(greet(LINK_VERSION + 1), Some(LINK_VERSION));
    // Older than that: closed.
    assert_eq!(greet(OLDEST_LINK_VERSION - 1), None);
}

#[test]
fn an_older_link_is_sent_no_hashes() {
    use crate::protocol::dialect::{Decoded, Dialect, Gate};
    let old = OLDEST_LINK_VERSION;
    // Requests: hash ones cannot go; anti-entropy goes without hashes.
    let hget = Request::HGet { key: b("h") };
    assert!(hget.for_version(old).is_none());
    assert_eq!(hget.for_version(LINK_VERSION).as_deref(), Some(&hget));
    let sync = Request::Sync {
        buckets: vec![1],
        after: b(""),
        upto: b(""),
        summaries: vec![summary("s", 0), summary("h", 77)],
    };
    let Some(Request::Sync { summaries, .. }) = sync.for_version(old).as_deref().cloned() else {
        panic!("a sync could not go to an older link");
    };
    assert_eq!(summaries, vec![summary("s", 0)]);
    let apply = Request::Apply {
        last: true,
        entries: vec![entry("h", true), entry("s", false)],
        evict: vec![summary("h", 77)],
    };
    assert_eq!(
        apply.for_version(old).as_deref(),
        Some(&Request::Apply {
            last: true,
            entries: vec![entry("s", false)],
            evict: vec![],
        })
    );
    // What an older peer would decode is what it was sent.
    let mut out = BytesMut::new();
    encode_request(&apply.for_version(old).expect("carried"), &mut out);
    let frame = read_frame(&mut out, 1 << 20)
        .expect("frame")
        .expect("whole");
    let Request::Apply { entries, .. } = decode_request(frame, &limits()).expect("decodes") else {
        panic!("not an apply");
    };
    assert!(entries.iter().all(|e| !e.hash));

    // Responses: a server that agreed on the older version encodes them so.
    let mut dialect = LinkDialect::new(limits());
    let gate = Gate {
        required: false,
        authenticated: false,
    };
    let mut buf = BytesMut::from(&hello(old)[..]);
    assert!(matches!(
        dialect.decode(&mut buf, &gate),
        Decoded::Greeting(Some(LinkAnswer::Hello(8)))
    ));
    let synced = Response::Synced {
        complete: true,
        entries: vec![entry("h", true), entry("s", false)],
        wanted: vec![b("w")],
    };
    let mut out = BytesMut::new();
    dialect.encode_reply(&LinkReply::Response(synced.clone()), (), &mut out);
    let frame = read_frame(&mut out, 1 << 20)
        .expect("frame")
        .expect("whole");
    assert_eq!(
        decode_response(frame, RequestKind::Sync, &limits()),
        Ok(Response::Synced {
            complete: true,
            entries: vec![entry("s", false)],
            wanted: vec![b("w")],
        })
    );
    // The same reply on a link of this version keeps its hashes.
    assert_eq!(synced.for_version(LINK_VERSION).into_owned(), synced);
    let chunk = Response::Chunk(vec![entry("h", true)]);
    assert_eq!(chunk.for_version(old).into_owned(), Response::Chunk(vec![]));
    // An error code the older version has no name for goes as one it has.
    let mut out = BytesMut::new();
    let wrong = Response::Error(ErrorReply::wrong_type());
    dialect.encode_reply(&LinkReply::Response(wrong), (), &mut out);
    let frame = read_frame(&mut out, 1 << 20)
        .expect("frame")
        .expect("whole");
    let code = frame[1];
    assert!(
        (1..=9).contains(&code) && code != ErrorCode::WrongType.as_u8(),
        "code {code} to a version-8 peer"
    );
    assert!(matches!(
        decode_response(frame, RequestKind::Get, &limits()),
        Ok(Response::Error(e)) if e.message.contains("wrong kind")
    ));
}

#[test]
fn layouts_round_trip_and_bad_ones_are_refused() {
    let handoff = super::Handoff {
        epoch: 9,
        done: true,
        keys_moved: 3,
        bytes_moved: 1 << 40,
        keys_left: 2,
    };
    for response in [
        Response::Layout {
            layout: None,
            handoff: None,
        },
        Response::Layout {
            layout: Some(layout()),
            handoff: None,
        },
        Response::Layout {
            layout: Some(moving_layout(false)),
            handoff: Some(handoff),
        },
        Response::Layout {
            layout: Some(moving_layout(true)),
            handoff: None,
        },
    ] {
        let mut buf = BytesMut::new();
        encode_response(&response, &mut buf);
        let frame = read_frame(&mut buf, 4096).expect("valid").expect("whole");
        assert_eq!(
            decode_response(frame, RequestKind::Layout, &limits()),
            Ok(response)
        );
    }
    let l = layout();
    assert_eq!(l.find("h3:7001"), Some((1, 0)));
    assert_eq!(l.partner_of("10.0.0.2:7001"), Some("10.0.0.1:7001"));
    assert_eq!(l.partner_of("elsewhere:1"), None);
    // A removed pair: not where keys go, still where requests go, and its
    // workers keep their partner until it settled.
    let m = moving_layout(false);
    assert_eq!(m.find("b:1"), None);
    assert_eq!(m.find_serving("b:1"), Some((1, 0)));
    assert_eq!(m.partner_of("b:1"), Some("b:2"));
    assert_eq!(m.find(""), None, "a hole is nobody");
    assert_eq!(m.workers().len(), 6);
    assert_eq!(m.live_pairs(), 2);
    assert!(
        moving_layout(true).supersedes(&m),
        "the seal of one epoch wins"
    );
    // No pairs, a pair count beyond the frame, an empty or non-UTF-8
    // address, an unknown flag.
    for body in [
        &b"\x00\x01\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00"[..],
        b"\x00\x01\x00\x00\x00\x00\x00\x00\x00\x01\xff\xff\x00\x01a",
        b"\x00\x01\x00\x00\x00\x00\x00\x00\x00\x01\x00\x01\x00\x00\x00\x00\x00\x00",
        b"\x00\x01\x00\x00\x00\x00\x00\x00\x00\x01\x00\x01\x00\x01\xff\x00\x01a\x00\x00",
        b"\x00\x07",
        // Holes only; a half hole; an unknown source flag.
        b"\x00\x01\x00\x00\x00\x00\x00\x00\x00\x01\x00\x01\x00\x00\x00\x00\x00\x00\x00",
        b"\x00\x01\x00\x00\x00\x00\x00\x00\x00\x01\x00\x01\x00\x00\x00\x01a\x00\x00",
        b"\x00\x01\x00\x00\x00\x00\x00\x00\x00\x01\x00\x01\x00\x01a\x00\x01b\x03\x00",
    ] {
        assert!(
            decode_response(Bytes::copy_from_slice(body), RequestKind::Layout, &limits()).is_err(),
            "{body:?}"
        );
    }
}
