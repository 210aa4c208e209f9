//! A client protocol as the session loop sees it.
//!
//! A [`Dialect`] turns the bytes of one connection into what the loop does
//! with them ([`Decoded`]) and writes replies back in its own wording: the
//! text protocol ([`super::text::TextDialect`]) and RESP
//! ([`super::resp::RespDialect`]) each implement it once, and `net` runs any
//! of them with the same read / decode / execute / encode / write loop,
//! which owns the connection's authentication ([`Gate`]) and checks tokens.
//! A dialect never executes a command and never sees a secret.

use super::{Command, Op, Outcome, Reply};
use bytes::{Bytes, BytesMut};

/// Whether a connection may run commands yet.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gate {
    /// The daemon has a token (`auth_token`).
    pub required: bool,
    /// This connection presented it.
    pub authenticated: bool,
}

impl Gate {
    pub fn open(&self) -> bool {
        !self.required || self.authenticated
    }
}

/// What the next complete request of a connection asks for.
#[derive(Debug)]
pub enum Decoded<T, A> {
    /// No complete request in the buffer yet.
    Incomplete,
    /// Execute the command; its reply is encoded with the tag.
    Run(Command, T),
    /// A command sent before the connection is open: the loop labels it
    /// and answers [`Dialect::refused`].
    Refused(Command),
    /// Answered without executing anything.
    Answer(Answered<A>),
    /// A token to check (`AUTH`, `HELLO … AUTH`), or none (`HELLO`): the
    /// loop checks it and answers [`Dialect::credential`].
    Credential(Option<Bytes>),
}

/// A request answered without executing anything, with its metrics labels.
#[derive(Debug)]
pub struct Answered<A> {
    /// What to write back; `None` writes nothing.
    pub answer: Option<A>,
    pub op: Op,
    pub outcome: Outcome,
    /// The connection closes once the answers before it are written.
    pub close: bool,
}

impl<A> Answered<A> {
    pub fn new(answer: A, op: Op, outcome: Outcome) -> Answered<A> {
        Answered {
            answer: Some(answer),
            op,
            outcome,
            close: false,
        }
    }

    pub fn closing(mut self) -> Answered<A> {
        self.close = true;
        self
    }
}

/// One client protocol: decoding requests, encoding replies.
pub trait Dialect: Send {
    /// What encoding a command's reply needs to know about its request.
    type Tag: Copy + Send;
    /// A reply given without executing anything.
    type Answer: Send;

    /// Takes the next complete request out of `buf`.
    fn decode(&mut self, buf: &mut BytesMut, gate: &Gate) -> Decoded<Self::Tag, Self::Answer>;

    /// The answer to the [`Decoded::Credential`] just decoded: `accepted`
    /// says whether its token opens the connection (`None`: it carried
    /// none). Updates `gate`.
    fn credential(&mut self, accepted: Option<bool>, gate: &mut Gate) -> Answered<Self::Answer>;

    /// The answer to a [`Decoded::Refused`] command whose label is `op`.
    fn refused(&self, op: Op) -> Answered<Self::Answer>;

    fn encode_reply(&self, reply: &Reply, tag: Self::Tag, out: &mut BytesMut);

    fn encode_answer(&self, answer: &Self::Answer, out: &mut BytesMut);
}
