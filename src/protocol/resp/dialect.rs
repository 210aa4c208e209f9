//! RESP as a session speaks it, with Redis's rules: a failed `AUTH` leaves
//! an earlier successful one in force, `HELLO` answers with the server's
//! description and may switch the connection to RESP3, `QUIT` is answered
//! `+OK` and closes, and a framing error is answered and closes (a RESP
//! stream cannot be resynchronised).

use super::{encode_answer, encode_hello, encode_reply, Answer, RespDecoder, RespRequest};
use super::{ClientCall, Shape, Version};
use crate::clients::{Client, Registered};
use crate::protocol::dialect::{Answered, Decoded, Dialect, Gate};
use crate::protocol::{Command, Limits, Op, Outcome, Reply};
use bytes::BytesMut;
use std::collections::VecDeque;

/// What Redis says to a command before `AUTH` on a connection that needs it.
pub const NOAUTH: &str = "NOAUTH Authentication required.";
/// What Redis says to `EXEC` after a command was refused inside `MULTI`.
const EXECABORT: &str = "EXECABORT Transaction discarded because of previous errors.";
/// `WATCH`: rcache's transactions queue commands, they do not check keys.
const WATCH_UNSUPPORTED: &str =
    "ERR WATCH is not supported: MULTI/EXEC runs its commands in order, without checking keys";
/// What Redis says to a wrong token.
pub const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";
/// What Redis says to a bulk longer than it lets a connection without a
/// token send.
const UNAUTHENTICATED_BULK: &str = "ERR Protocol error: unauthenticated bulk length";
/// What Redis says to a `HELLO` without a token on a connection that needs one.
const NOAUTH_HELLO: &str = "NOAUTH HELLO must be called with the client already authenticated, \
                            otherwise the HELLO <proto> AUTH <user> <pass> option can be used to \
                            authenticate the client and select the RESP protocol version at the \
                            same time";

#[derive(Debug)]
pub struct RespDialect {
    decoder: RespDecoder,
    /// This connection in the daemon's table of clients, and the table
    /// (`CLIENT LIST`, `CLIENT KILL`).
    client: Registered,
    /// The daemon's role, as `HELLO` reports it.
    role: &'static str,
    /// The reply encoding in force: each reply is encoded in the version in
    /// force when its request arrived (a `HELLO 3` may come mid-batch).
    version: Version,
    /// The credential being answered is a `HELLO` asking for this version
    /// (`Some(None)`: keep the current one); `None` for `AUTH`.
    hello: Option<Option<u8>>,
    /// The `SETNAME` of that `HELLO`, given once its token checks out.
    hello_name: Option<String>,
    /// The transaction being queued, after `MULTI`.
    multi: Option<Transaction>,
    /// An `EXEC`'s commands, handed out before anything else is decoded.
    pending: VecDeque<Queued>,
}

/// The most commands one `MULTI` queues.
pub const MAX_QUEUED: usize = 10_000;

/// The commands queued since `MULTI`.
#[derive(Debug, Default)]
struct Transaction {
    queued: Vec<Queued>,
    /// Bytes of the queued requests: at most one maximal request's.
    bytes: usize,
    /// A command was refused while queuing: `EXEC` discards them all.
    aborted: bool,
}

/// A queued command, the answer it got without running (`PING`), or a
/// connection command run when its turn comes at `EXEC`.
#[derive(Debug)]
enum Queued {
    Run(Command, (Shape, Version)),
    Answer(Answered<(Answer, Version)>),
    Client(ClientCall),
    Time,
}

impl RespDialect {
    /// A connection of its own table of clients (a test's, a fuzzer's).
    pub fn new(limits: Limits, role: &'static str) -> RespDialect {
        let registry = std::sync::Arc::new(crate::clients::Registry::default());
        RespDialect::registered(limits, role, registry.open(None, None))
    }

    /// The connection `client` of the daemon's table.
    pub fn registered(limits: Limits, role: &'static str, client: Registered) -> RespDialect {
        RespDialect {
            decoder: RespDecoder::new(limits),
            client,
            role,
            version: Version::Resp2,
            hello: None,
            hello_name: None,
            multi: None,
            pending: VecDeque::new(),
        }
    }

    fn answered(&self, answer: Answer, op: Op) -> Answered<(Answer, Version)> {
        let outcome = match answer {
            Answer::Error(_) => Outcome::Error,
            _ => Outcome::Ok,
        };
        Answered::new((answer, self.version), op, outcome)
    }

    fn error(&self, line: &'static str, op: Op) -> Answered<(Answer, Version)> {
        self.answered(Answer::Error(line.into()), op)
    }

    /// A request inside `MULTI` (`AUTH`, `HELLO` and `QUIT` are answered
    /// before it gets here): queued and answered `+QUEUED`, or what ends
    /// the transaction.
    fn queue(&mut self, request: RespRequest) -> Answered<(Answer, Version)> {
        let len = self.decoder.frame_len();
        let max_bytes = self.decoder.max_request();
        let queued = match request {
            RespRequest::Exec => {
                let tx = self.multi.take().unwrap_or_default();
                if tx.aborted {
                    return self.error(EXECABORT, Op::Other);
                }
                let header = format!("*{}\r\n", tx.queued.len());
                self.pending.extend(tx.queued);
                return self.answered(Answer::Raw(header.into()), Op::Other);
            }
            RespRequest::Discard => {
                self.multi = None;
                return self.answered(Answer::Ok, Op::Other);
            }
            RespRequest::Multi => {
                return self.error("ERR MULTI calls can not be nested", Op::Other)
            }
            RespRequest::Watch => {
                return self.error("ERR WATCH inside MULTI is not allowed", Op::Other)
            }
            // As in Redis, an unknown command or a wrong number of
            // arguments discards the transaction; other errors are its
            // replies at EXEC.
            RespRequest::Answer(Answer::Error(line))
                if line.starts_with("ERR unknown command")
                    || line.starts_with("ERR unknown subcommand")
                    || line.starts_with("ERR wrong number of arguments") =>
            {
                if let Some(tx) = &mut self.multi {
                    tx.aborted = true;
                }
                return self.answered(Answer::Error(line), Op::Invalid);
            }
            RespRequest::Run(command, shape) => Queued::Run(command, (shape, self.version)),
            RespRequest::Answer(answer) => Queued::Answer(self.answered(answer, Op::Other)),
            // Run at EXEC, in their turn.
            RespRequest::Time => Queued::Time,
            RespRequest::Client(call) => Queued::Client(call),
            // Answered before a transaction sees them (`decode`).
            RespRequest::Quit | RespRequest::Auth { .. } | RespRequest::Hello { .. } => {
                return self.error("ERR Command not allowed inside a transaction", Op::Other)
            }
        };
        // An answer given at parse time (`COMMAND`'s table) is held whole:
        // its encoded bytes count, not the request's.
        let held = match &queued {
            Queued::Answer(answered) => answered.answer.as_ref().map_or(0, |answer| {
                let mut scratch = BytesMut::new();
                encode_answer(&answer.0, answer.1, &mut scratch);
                scratch.len()
            }),
            _ => 0,
        };
        let Some(tx) = &mut self.multi else {
            return self.error("ERR EXEC without MULTI", Op::Other);
        };
        tx.bytes += len + held;
        if tx.queued.len() >= MAX_QUEUED || tx.bytes > max_bytes {
            tx.aborted = true;
            return self.answered(
                Answer::Error(
                    format!(
                        "ERR transaction too large: at most {MAX_QUEUED} commands and \
                         {max_bytes} bytes"
                    )
                    .into(),
                ),
                Op::Invalid,
            );
        }
        tx.queued.push(queued);
        self.answered(Answer::Status("QUEUED"), Op::Other)
    }

    /// Runs a `CLIENT` subcommand on the daemon's table of clients; a
    /// connection that killed itself is answered, then closed.
    fn client(&self, call: ClientCall) -> Answered<(Answer, Version)> {
        let me = &self.client.client;
        let line = |client: &Client| client.describe(super::table::name);
        let answer = match call {
            ClientCall::Id => Answer::Integer(i64::try_from(me.id).unwrap_or(i64::MAX)),
            ClientCall::Info => Answer::Bulk(format!("{}\n", line(me)).into()),
            ClientCall::List { ids } => {
                let mut text = String::new();
                for client in self.client.registry().list(ids.as_deref()) {
                    text.push_str(&line(&client));
                    text.push('\n');
                }
                Answer::Bulk(text.into())
            }
            ClientCall::Kill { filter, legacy } => {
                let killed = self.client.registry().kill(&filter, me.id);
                match (legacy, killed) {
                    (true, 0) => Answer::Error("ERR No such client".into()),
                    (true, _) => Answer::Ok,
                    (false, n) => Answer::Integer(n as i64),
                }
            }
            ClientCall::SetName(name) => {
                me.rename(|names| names.name = name);
                Answer::Ok
            }
            ClientCall::GetName => match me.names().name {
                name if name.is_empty() => Answer::Nil,
                name => Answer::Bulk(name.into()),
            },
            ClientCall::SetInfo { lib_version, value } => {
                me.rename(|names| {
                    if lib_version {
                        names.lib_ver = value;
                    } else {
                        names.lib_name = value;
                    }
                });
                Answer::Ok
            }
            ClientCall::NoEvict(on) => {
                me.set_no_evict(on);
                Answer::Ok
            }
        };
        let answered = self.answered(answer, Op::Other);
        if me.is_killed() {
            answered.closing()
        } else {
            answered
        }
    }
}

/// `TIME`'s answer: the wall clock's seconds and microseconds.
fn time() -> Answer {
    let us = crate::sys::wall_us();
    let (secs, micros) = (us / 1_000_000, us % 1_000_000);
    Answer::Array(vec![secs.to_string().into(), micros.to_string().into()])
}

impl Dialect for RespDialect {
    type Request = Command;
    type Reply = Reply;
    type Tag = (Shape, Version);
    type Answer = (Answer, Version);

    fn decode(
        &mut self,
        buf: &mut BytesMut,
        gate: &Gate,
    ) -> Decoded<Command, Self::Tag, Self::Answer> {
        match self.pending.pop_front() {
            Some(Queued::Run(command, tag)) => return Decoded::Run(command, tag),
            Some(Queued::Answer(answered)) => return Decoded::Answer(answered),
            Some(Queued::Client(call)) => return Decoded::Answer(self.client(call)),
            Some(Queued::Time) => return Decoded::Answer(self.answered(time(), Op::Other)),
            None => {}
        }
        let request = match self.decoder.decode(buf) {
            Ok(None) => return Decoded::Incomplete,
            Ok(Some(request)) => request,
            Err(e) => {
                let line = format!("ERR {e}").into();
                return Decoded::Answer(self.answered(Answer::Error(line), Op::Invalid).closing());
            }
        };
        if let Some(command) = self.decoder.command() {
            self.client.client.ran(command);
        }
        match request {
            RespRequest::Quit => Decoded::Answer(self.answered(Answer::Ok, Op::Other).closing()),
            RespRequest::Auth { token } => {
                self.hello = None;
                Decoded::Credential(Some(token))
            }
            RespRequest::Hello {
                version,
                token,
                name,
            } => {
                self.hello = Some(version);
                self.hello_name = name;
                Decoded::Credential(token)
            }
            _ if !gate.open() => Decoded::Answer(self.error(NOAUTH, Op::Invalid)),
            request if self.multi.is_some() => Decoded::Answer(self.queue(request)),
            RespRequest::Multi => {
                self.multi = Some(Transaction::default());
                Decoded::Answer(self.answered(Answer::Ok, Op::Other))
            }
            RespRequest::Exec => Decoded::Answer(self.error("ERR EXEC without MULTI", Op::Other)),
            RespRequest::Discard => {
                Decoded::Answer(self.error("ERR DISCARD without MULTI", Op::Other))
            }
            RespRequest::Watch => Decoded::Answer(self.error(WATCH_UNSUPPORTED, Op::Other)),
            RespRequest::Run(command, shape) => Decoded::Run(command, (shape, self.version)),
            RespRequest::Client(call) => Decoded::Answer(self.client(call)),
            RespRequest::Time => {
                let us = crate::sys::wall_us();
                let (secs, micros) = (us / 1_000_000, us % 1_000_000);
                let answer =
                    Answer::Array(vec![secs.to_string().into(), micros.to_string().into()]);
                Decoded::Answer(self.answered(answer, Op::Other))
            }
            RespRequest::Answer(answer) => {
                let op = match answer {
                    Answer::Pong => Op::Ping,
                    Answer::Error(_) => Op::Invalid,
                    _ => Op::Other,
                };
                Decoded::Answer(self.answered(answer, op))
            }
        }
    }

    fn credential(&mut self, accepted: Option<bool>, gate: &mut Gate) -> Answered<Self::Answer> {
        // As in Redis, a failed AUTH leaves an earlier successful one in
        // force.
        gate.authenticated |= accepted == Some(true);
        let Some(asked) = self.hello.take() else {
            return match accepted {
                Some(true) => self.answered(Answer::Ok, Op::Auth),
                _ => self.error(WRONGPASS, Op::Auth),
            };
        };
        match accepted {
            Some(false) => return self.error(WRONGPASS, Op::Other),
            None if !gate.open() => return self.error(NOAUTH_HELLO, Op::Other),
            _ => {}
        }
        self.version = match asked {
            Some(3) => Version::Resp3,
            Some(_) => Version::Resp2,
            None => self.version,
        };
        let me = &self.client.client;
        me.set_resp(match self.version {
            Version::Resp2 => 2,
            Version::Resp3 => 3,
        });
        if let Some(name) = self.hello_name.take() {
            me.rename(|names| names.name = name);
        }
        let mut hello = BytesMut::new();
        encode_hello(self.role, self.version, me.id, &mut hello);
        self.answered(Answer::Raw(hello.freeze()), Op::Other)
    }

    fn too_large_unauthenticated(&self) -> Answered<Self::Answer> {
        // Redis's words for a stranger's long bulk.
        self.error(UNAUTHENTICATED_BULK, Op::Invalid).closing()
    }

    fn refused(&self, _: Op) -> Answered<Self::Answer> {
        // Redis counts a refused command as no command at all.
        self.error(NOAUTH, Op::Invalid)
    }

    fn encode_reply(&self, reply: &Reply, (shape, version): Self::Tag, out: &mut BytesMut) {
        encode_reply(reply, shape, version, out)
    }

    fn encode_answer(&self, (answer, version): &Self::Answer, out: &mut BytesMut) {
        encode_answer(answer, *version, out)
    }
}
