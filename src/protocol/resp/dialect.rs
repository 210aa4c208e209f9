//! RESP as a session speaks it, with Redis's rules: a failed `AUTH` leaves
//! an earlier successful one in force, `HELLO` answers with the server's
//! description and may switch the connection to RESP3, `QUIT` is answered
//! `+OK` and closes, and a framing error is answered and closes (a RESP
//! stream cannot be resynchronised).

use super::{encode_answer, encode_hello, encode_reply, Answer, RespDecoder, RespRequest};
use super::{Shape, Version};
use crate::protocol::dialect::{Answered, Decoded, Dialect, Gate};
use crate::protocol::{Command, Limits, Op, Outcome, Reply};
use bytes::BytesMut;

/// What Redis says to a command before `AUTH` on a connection that needs it.
pub const NOAUTH: &str = "NOAUTH Authentication required.";
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
    /// The daemon's role, as `HELLO` reports it.
    role: &'static str,
    /// The reply encoding in force: each reply is encoded in the version in
    /// force when its request arrived (a `HELLO 3` may come mid-batch).
    version: Version,
    /// The credential being answered is a `HELLO` asking for this version
    /// (`Some(None)`: keep the current one); `None` for `AUTH`.
    hello: Option<Option<u8>>,
}

impl RespDialect {
    pub fn new(limits: Limits, role: &'static str) -> RespDialect {
        RespDialect {
            decoder: RespDecoder::new(limits),
            role,
            version: Version::Resp2,
            hello: None,
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
        let request = match self.decoder.decode(buf) {
            Ok(None) => return Decoded::Incomplete,
            Ok(Some(request)) => request,
            Err(e) => {
                let line = format!("ERR {e}").into();
                return Decoded::Answer(self.answered(Answer::Error(line), Op::Invalid).closing());
            }
        };
        match request {
            RespRequest::Quit => Decoded::Answer(self.answered(Answer::Ok, Op::Other).closing()),
            RespRequest::Auth { token } => {
                self.hello = None;
                Decoded::Credential(Some(token))
            }
            RespRequest::Hello { version, token } => {
                self.hello = Some(version);
                Decoded::Credential(token)
            }
            _ if !gate.open() => Decoded::Answer(self.error(NOAUTH, Op::Invalid)),
            RespRequest::Run(command, shape) => Decoded::Run(command, (shape, self.version)),
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
        let mut hello = BytesMut::new();
        encode_hello(self.role, self.version, &mut hello);
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
