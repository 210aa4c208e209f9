//! A protocol as the session loop sees it.
//!
//! A [`Dialect`] turns the bytes of one connection into what the loop does
//! with them ([`Decoded`]) and writes replies back in its own wording: the
//! text protocol ([`super::text::TextDialect`]), RESP
//! ([`super::resp::RespDialect`]) and the link protocol between daemons
//! ([`super::link::LinkDialect`]) each implement it once, and `net` runs any
//! of them with the same read / decode / execute / encode / write loop,
//! which owns the connection's authentication ([`Gate`]) and checks tokens.
//! A dialect never executes a request and never sees a secret.

use super::{Op, Outcome};
use bytes::{Bytes, BytesMut};

/// The most a connection holds before its token opens it: enough for
/// `AUTH` or `HELLO 3 AUTH default <token> SETNAME <name>` with the longest
/// token ([`super::link::MAX_TOKEN_BYTES`]), and for the link hello and its
/// token frame. A stranger that sends more without a complete request is
/// answered [`Dialect::too_large_unauthenticated`] and hung up on; what it
/// declares it will send is never reserved.
pub const UNAUTHENTICATED_BYTES: usize = 4096;

/// Who speaks a protocol, and so which token opens its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// Clients: `auth_token`.
    Client,
    /// Daemons on links: `cluster_token` (or `auth_token` without one).
    Daemon,
}

/// Whether a connection may run commands yet.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gate {
    /// The daemon has a token for this protocol's [`Holder`].
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
pub enum Decoded<R, T, A> {
    /// No complete request in the buffer yet.
    Incomplete,
    /// Execute the request; its reply is encoded with the tag.
    Run(R, T),
    /// A request sent before the connection is open: the loop labels it
    /// and answers [`Dialect::refused`].
    Refused(R),
    /// The protocol's opening exchange (the link hello), which is not a
    /// request and is not counted: write the answer, or close the
    /// connection when there is none (an unknown hello).
    Greeting(Option<A>),
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

/// One protocol: decoding requests, encoding replies.
pub trait Dialect: Send {
    /// What a decoded request is (a client [`super::Command`], a link
    /// [`super::link::Request`]).
    type Request: Send;
    /// What executing a request gives back.
    type Reply: Send;
    /// What encoding a command's reply needs to know about its request.
    type Tag: Copy + Send;
    /// A reply given without executing anything.
    type Answer: Send;

    /// Whose token opens a connection of this protocol.
    const HOLDER: Holder = Holder::Client;

    /// Takes the next complete request out of `buf`.
    fn decode(
        &mut self,
        buf: &mut BytesMut,
        gate: &Gate,
    ) -> Decoded<Self::Request, Self::Tag, Self::Answer>;

    /// The answer to the [`Decoded::Credential`] just decoded: `accepted`
    /// says whether its token opens the connection (`None`: it carried
    /// none). Updates `gate`.
    fn credential(&mut self, accepted: Option<bool>, gate: &mut Gate) -> Answered<Self::Answer>;

    /// The answer to a daemon's protocol (a link) that presented the
    /// clients' token where the daemons' is required: refused like a
    /// wrong token unless the dialect says more.
    fn client_credential(&mut self, gate: &mut Gate) -> Answered<Self::Answer> {
        self.credential(Some(false), gate)
    }

    /// The answer to a [`Decoded::Refused`] request whose label is `op`.
    fn refused(&self, op: Op) -> Answered<Self::Answer>;

    /// The answer to a connection that needs a token and sent
    /// [`UNAUTHENTICATED_BYTES`] without a complete request; it closes
    /// the connection.
    fn too_large_unauthenticated(&self) -> Answered<Self::Answer>;

    fn encode_reply(&self, reply: &Self::Reply, tag: Self::Tag, out: &mut BytesMut);

    fn encode_answer(&self, answer: &Self::Answer, out: &mut BytesMut);
}
