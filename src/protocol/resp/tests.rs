use super::*;
use crate::protocol::{Command, ErrorCode, Expiry, Limits, Reply, SetWhen};
use bytes::{BufMut, BytesMut};
use std::time::Duration;

fn limits() -> Limits {
    Limits {
        max_key_bytes: 16,
        max_value_bytes: 64,
    }
}

fn request(args: &[&str]) -> BytesMut {
    let mut out = BytesMut::new();
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    encode_request(&args, &mut out);
    out
}

fn decode_all(bytes: &[u8]) -> Vec<Result<RespRequest, ProtocolError>> {
    let mut decoder = RespDecoder::new(limits());
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    loop {
        match decoder.decode(&mut buf) {
            Ok(Some(r)) => out.push(Ok(r)),
            Ok(None) => return out,
            Err(e) => {
                out.push(Err(e));
                return out;
            }
        }
    }
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

#[test]
fn commands_decode_byte_by_byte() {
    let mut wire = request(&["SET", "k", "v\r\n\0", "EX", "10", "NX"]);
    wire.extend_from_slice(&request(&["get", "k"]));
    let mut decoder = RespDecoder::new(limits());
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for byte in wire.iter() {
        buf.put_u8(*byte);
        while let Some(r) = decoder.decode(&mut buf).expect("valid") {
            got.push(r);
        }
    }
    assert_eq!(
        got,
        vec![
            RespRequest::Run(
                Command::Set {
                    key: b("k"),
                    value: b("v\r\n\0"),
                    ttl: Some(Expiry::In(Duration::from_secs(10))),
                    when: SetWhen::Absent,
                },
                Shape::Plain
            ),
            RespRequest::Run(Command::Get { key: b("k") }, Shape::Plain),
        ]
    );
    assert!(buf.is_empty());
}

#[test]
fn argument_errors_keep_the_connection() {
    let cases: &[(&[&str], &str)] = &[
        (&["GET"], "ERR wrong number of arguments for 'get' command"),
        (
            &["SET", "k", "v", "EX", "x"],
            "ERR value is not an integer or out of range",
        ),
        (
            &["SET", "k", "v", "EX", "0"],
            "ERR invalid expire time in 'set' command",
        ),
        (&["SET", "k", "v", "NX", "XX"], "ERR syntax error"),
        (&["SET", "k", "v", "EX"], "ERR syntax error"),
        (
            &["MSET", "a"],
            "ERR wrong number of arguments for 'mset' command",
        ),
        (&["SELECT", "1"], "ERR DB index is out of range"),
        (&["HELLO", "4"], "NOPROTO unsupported protocol version"),
        (
            &["GET", "a-key-longer-than-16"],
            "ERR key longer than 16 bytes",
        ),
        (&["FLUSHALL", "x"], "ERR syntax error"),
        (
            &["LPUSH", "x"],
            "ERR unknown command 'LPUSH', with args beginning with: 'x' ",
        ),
    ];
    for (args, line) in cases {
        let mut wire = request(args);
        wire.extend_from_slice(&request(&["PING"]));
        let got = decode_all(&wire);
        assert_eq!(
            got,
            vec![
                Ok(RespRequest::Answer(Answer::Error(Cow::Owned(
                    line.to_string()
                )))),
                Ok(RespRequest::Answer(Answer::Pong)),
            ],
            "{args:?}"
        );
    }
}

#[test]
fn framing_errors_close() {
    let cases: &[(&[u8], &str)] = &[
        (b"*1\r\n+PING\r\n", "expected '$', got '+'"),
        (b"*x\r\n", "invalid multibulk length"),
        (b"*1\r\n$-5\r\n", "invalid bulk length"),
        (b"*1\r\n$100000\r\n", "invalid bulk length"),
        (b"*1\r\n$1\r\nabc", "bulk string not followed by CRLF"),
        (b"*99999999\r\n", "invalid multibulk length"),
        (b"GET k\r\n", "expected '*', got 'G'"),
        (&[b'*'; 40], "invalid multibulk length"),
    ];
    for (wire, message) in cases {
        let got = decode_all(wire);
        assert_eq!(
            got.last(),
            Some(&Err(ProtocolError(Cow::Borrowed(message)))),
            "{wire:?}"
        );
    }
}

#[test]
fn a_request_never_exceeds_its_bound() {
    let limits = limits();
    let max = max_request_bytes(&limits);
    // Many small arguments adding up past the bound.
    let args: Vec<String> = std::iter::once("MGET".to_string())
        .chain((0..max / 8).map(|i| format!("k{i}")))
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let got = decode_all(&request(&args));
    assert!(matches!(got.last(), Some(Err(_))), "{:?}", got.last());
}

#[test]
fn empty_requests_are_skipped() {
    let mut wire = BytesMut::from(&b"*0\r\n*-1\r\n\r\n\n"[..]);
    wire.extend_from_slice(&request(&["PING"]));
    assert_eq!(
        decode_all(&wire),
        vec![Ok(RespRequest::Answer(Answer::Pong))]
    );
}

#[test]
fn replies_take_redis_shapes() {
    let cases: Vec<(Reply, Shape, &[u8])> = vec![
        (Reply::Value(b("a\r\nb")), Shape::Plain, b"$4\r\na\r\nb\r\n"),
        (Reply::not_found(), Shape::Plain, b"$-1\r\n"),
        (Reply::Done, Shape::Plain, b"+OK\r\n"),
        (Reply::NotStored, Shape::Plain, b"$-1\r\n"),
        (Reply::Done, Shape::Stored, b":1\r\n"),
        (Reply::NotStored, Shape::Stored, b":0\r\n"),
        (Reply::Integer(1499), Shape::Seconds, b":1\r\n"),
        (Reply::Integer(1500), Shape::Seconds, b":2\r\n"),
        (Reply::Integer(-2), Shape::Seconds, b":-2\r\n"),
        (
            Reply::Values(vec![Some(b("x")), None]),
            Shape::Plain,
            b"*2\r\n$1\r\nx\r\n$-1\r\n",
        ),
        (
            Reply::error(ErrorCode::Loading, "refilling"),
            Shape::Plain,
            b"-LOADING refilling\r\n",
        ),
        (
            Reply::error(ErrorCode::Unavailable, "no\nworker"),
            Shape::Plain,
            b"-ERR no worker\r\n",
        ),
    ];
    for (reply, shape, wire) in cases {
        let mut out = BytesMut::new();
        encode_reply(&reply, shape, Version::Resp2, &mut out);
        assert_eq!(&out[..], wire, "{reply:?}");
    }
    let mut out = BytesMut::new();
    encode_reply(
        &Reply::Values(vec![None, Some(b("v"))]),
        Shape::Plain,
        Version::Resp3,
        &mut out,
    );
    encode_reply(&Reply::NotStored, Shape::Plain, Version::Resp3, &mut out);
    encode_answer(
        &Answer::Map(vec![(b("save"), b(""))]),
        Version::Resp3,
        &mut out,
    );
    assert_eq!(
        &out[..],
        b"*2\r\n_\r\n$1\r\nv\r\n_\r\n%1\r\n$4\r\nsave\r\n$0\r\n\r\n"
    );
}

#[test]
fn client_decoder_reads_every_reply_type() {
    let mut buf = BytesMut::from(&b"+OK\r\n-ERR x\r\n:-3\r\n$-1\r\n*2\r\n$1\r\na\r\n*0\r\n"[..]);
    let mut got = Vec::new();
    while let Some(v) = decode_value(&mut buf, 1024).expect("valid") {
        got.push(v);
    }
    assert_eq!(
        got,
        vec![
            Value::Status(b("OK")),
            Value::Error(b("ERR x")),
            Value::Integer(-3),
            Value::Bulk(None),
            Value::Array(Some(vec![
                Value::Bulk(Some(b("a"))),
                Value::Array(Some(vec![]))
            ])),
        ]
    );
}

#[test]
fn exat_and_pxat_decode_to_a_moment_the_command_layer_resolves() {
    let set_at = |option: &str, at: &str| {
        let mut buf = request(&["SET", "k", "v", option, at]);
        match RespDecoder::new(limits()).decode(&mut buf) {
            Ok(Some(RespRequest::Run(Command::Set { ttl, .. }, _))) => ttl,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        set_at("PXAT", "1700000000123"),
        Some(Expiry::At(1_700_000_000_123))
    );
    assert_eq!(
        set_at("exat", "1700000000"),
        Some(Expiry::At(1_700_000_000_000))
    );
    let at = Expiry::At(10_000);
    assert_eq!(at.ttl(|| 4_000), Duration::from_millis(6_000));
    assert_eq!(
        at.ttl(|| 20_000),
        Duration::from_millis(1),
        "a past moment: the shortest TTL"
    );
    let far = Expiry::At(u64::MAX);
    assert_eq!(
        far.ttl(|| 0),
        Duration::from_millis(crate::protocol::MAX_TTL_MS)
    );
    assert_eq!(
        Expiry::In(Duration::from_secs(3)).ttl(|| unreachable!("a relative TTL reads no clock")),
        Duration::from_secs(3)
    );
}
