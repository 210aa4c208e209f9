use super::*;

fn limits() -> Limits {
    Limits {
        max_key_bytes: 16,
        max_value_bytes: 64,
    }
}

fn decode_all(input: &[u8]) -> Vec<Result<Command, ErrorCode>> {
    let mut decoder = TextDecoder::new(limits());
    let mut buf = BytesMut::from(input);
    let mut out = Vec::new();
    loop {
        match decoder.decode(&mut buf) {
            Ok(Some(c)) => out.push(Ok(c)),
            Ok(None) => break,
            Err(e) => out.push(Err(e.code)),
        }
    }
    out
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

#[test]
fn decodes_every_command() {
    let got = decode_all(
        b"get||k\nset||k||v\r\nset||k||a||b\ndel||k\nsetex||k||10||v\nping\nexit\nauth||t\nset||k||\n",
    );
    assert_eq!(
        got,
        vec![
            Ok(Command::Get { key: b("k") }),
            Ok(Command::Set {
                key: b("k"),
                value: b("v"),
                ttl: None,
                when: SetWhen::Always,
            }),
            Ok(Command::Set {
                key: b("k"),
                value: b("a||b"),
                ttl: None,
                when: SetWhen::Always,
            }),
            Ok(Command::Del { key: b("k") }),
            Ok(Command::Set {
                key: b("k"),
                value: b("v"),
                ttl: Some(Expiry::In(Duration::from_secs(10))),
                when: SetWhen::Always,
            }),
            Ok(Command::Ping),
            Ok(Command::Exit),
            Ok(Command::Auth { token: b("t") }),
            Ok(Command::Set {
                key: b("k"),
                value: b(""),
                ttl: None,
                when: SetWhen::Always,
            }),
        ]
    );
}

#[test]
fn malformed_requests_get_their_codes() {
    use ErrorCode::*;
    let cases: &[(&[u8], ErrorCode)] = &[
        (b"\n", Parse),
        (b"get\n", Parse),
        (b"get||\n", Parse),
        (b"get||a||b\n", Parse),
        (b"set||k\n", Parse),
        (b"set||||v\n", Parse),
        (b"setex||k||0||v\n", Parse),
        (b"setex||k||-1||v\n", Parse),
        (b"setex||k||abc||v\n", Parse),
        (b"setex||k||10\n", Parse),
        (b"setex||k||99999999999999999999999||v\n", Parse),
        (b"ping||x\n", Parse),
        (b"get||12345678901234567\n", Parse),
        (b"bogus||k\n", InvalidCommand),
        (b"GETX\n", InvalidCommand),
    ];
    for (input, code) in cases {
        assert_eq!(
            decode_all(input),
            vec![Err(*code)],
            "input {:?}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn commands_are_case_insensitive() {
    assert_eq!(
        decode_all(b"GET||K\n"),
        vec![Ok(Command::Get { key: b("K") })]
    );
}

#[test]
fn value_over_the_limit_is_refused() {
    let mut line = b"set||k||".to_vec();
    line.extend(std::iter::repeat_n(b'x', 65));
    line.push(b'\n');
    assert_eq!(decode_all(&line), vec![Err(ErrorCode::Parse)]);
}

#[test]
fn partial_line_waits_for_more() {
    let mut decoder = TextDecoder::new(limits());
    let mut buf = BytesMut::from(&b"set||k||va"[..]);
    assert_eq!(decoder.decode(&mut buf), Ok(None));
    buf.extend_from_slice(b"lue\nping\n");
    assert_eq!(
        decoder.decode(&mut buf),
        Ok(Some(Command::Set {
            key: b("k"),
            value: b("value"),
            ttl: None,
            when: SetWhen::Always,
        }))
    );
    assert_eq!(decoder.decode(&mut buf), Ok(Some(Command::Ping)));
    assert_eq!(decoder.decode(&mut buf), Ok(None));
}

#[test]
fn over_long_line_is_reported_once_and_discarded_without_buffering() {
    let mut decoder = TextDecoder::new(limits());
    let max = decoder.max_line();
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&vec![b'x'; max + 1]);
    assert_eq!(
        decoder.decode(&mut buf).map_err(|e| e.code),
        Err(ErrorCode::Parse)
    );
    assert!(
        buf.is_empty(),
        "the decoder keeps nothing of an over-long line"
    );
    // More of the same line: silently dropped, nothing kept.
    for _ in 0..10 {
        buf.extend_from_slice(&vec![b'y'; max]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        assert!(buf.is_empty());
    }
    // The line ends; the connection is usable again.
    buf.extend_from_slice(b"yyy\nping\n");
    assert_eq!(decoder.decode(&mut buf), Ok(Some(Command::Ping)));
}

#[test]
fn replies_encode_as_the_spec_says() {
    let mut out = BytesMut::new();
    encode_reply(&Reply::Value(b("a||b")), &mut out);
    encode_reply(&Reply::Done, &mut out);
    encode_reply(&Reply::Pong, &mut out);
    encode_reply(&Reply::not_found(), &mut out);
    encode_reply(&Reply::Value(b("two\nlines")), &mut out);
    encode_reply(&Reply::error(ErrorCode::Parse, "bad\nmessage"), &mut out);
    assert_eq!(
        &out[..],
        b"0||a||b\n0||\n0||pong\n2||key not found\n4||value holds a line break: read it over RESP\n1||bad message\n"
    );
}

#[test]
fn commands_round_trip_through_the_encoder() {
    let commands = [
        Command::Get { key: b("k") },
        Command::Set {
            key: b("k"),
            value: b("v||w"),
            ttl: None,
            when: SetWhen::Always,
        },
        Command::Set {
            key: b("k"),
            value: b("v"),
            ttl: Some(Expiry::In(Duration::from_secs(7))),
            when: SetWhen::Always,
        },
        Command::Del { key: b("k") },
        Command::Ping,
        Command::Exit,
        Command::Cluster,
        Command::ChangeCluster(ClusterChange::ReplaceWorker {
            old: b("10.0.0.2:7002"),
            new: b("10.0.0.3:7002"),
        }),
        Command::ChangeCluster(ClusterChange::AddPair {
            a: b("10.0.0.4:7002"),
            b: b("10.0.0.5:7002"),
        }),
        Command::ChangeCluster(ClusterChange::RemovePair {
            worker: b("10.0.0.2:7002"),
        }),
    ];
    let mut out = BytesMut::new();
    for c in &commands {
        encode_command(c, &mut out).expect("encodable");
    }
    let got: Vec<_> = decode_all(&out)
        .into_iter()
        .map(|r| r.expect("decodes"))
        .collect();
    assert_eq!(got, commands);
    assert!(encode_command(&Command::Get { key: b("a||b") }, &mut out).is_err());
}

#[test]
fn reply_lines_parse_back() {
    assert_eq!(parse_reply(b"0||v||w"), Ok(Reply::Value(b("v||w"))));
    assert_eq!(parse_reply(b"2||key not found"), Ok(Reply::not_found()));
    assert!(parse_reply(b"garbage").is_err());
    assert!(parse_reply(b"77||x").is_err());
}

/// Deterministic garbage never panics the decoder and never grows the buffer.
#[test]
fn random_bytes_never_panic() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut decoder = TextDecoder::new(limits());
    let mut buf = BytesMut::new();
    for _ in 0..20_000 {
        let n = (next() % 40) as usize;
        for _ in 0..n {
            let r = next();
            let byte = match r % 8 {
                0 => b'\n',
                1 => b'|',
                _ => (r >> 8) as u8,
            };
            buf.put_u8(byte);
        }
        while let Ok(Some(_)) | Err(_) = decoder.decode(&mut buf) {}
        assert!(buf.len() <= decoder.max_line());
    }
}
