//! The link protocol as the session loop sees it: the hello, then frames,
//! the first of which must carry the cluster's token when the daemon has
//! one. A peer that sends anything else first is a stranger: it gets one
//! error and is hung up on, since nothing it sends after can be trusted.

use super::{
    agree, decode_request, encode_response, hello, hello_version, max_frame_bytes, read_frame,
    Request, Response, HELLO, LINK_VERSION,
};
use crate::protocol::dialect::{Answered, Decoded, Dialect, Gate, Holder};
use crate::protocol::{ErrorCode, ErrorReply, Limits, Op, Outcome};
use bytes::{Buf, BytesMut};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

/// What a link server writes without executing anything.
#[derive(Debug)]
pub enum LinkAnswer {
    /// Its own hello, answering the peer's: the version both speak.
    Hello(u8),
    Response(Response),
}

/// What executing a link request gives back.
#[derive(Debug)]
pub enum LinkReply {
    Response(Response),
    /// A refill, which the executor writes itself as a stream of
    /// [`Response::Chunk`]s and a [`Response::End`].
    Streamed,
}

/// The server side of a link.
#[derive(Debug)]
pub struct LinkDialect {
    limits: Limits,
    max_frame: usize,
    /// The peer's hello was read.
    greeted: bool,
    /// The version agreed with the peer ([`LINK_VERSION`] until its hello
    /// was read), shared with whoever writes streams on the link.
    version: Arc<AtomicU8>,
}

impl LinkDialect {
    pub fn new(limits: Limits) -> LinkDialect {
        LinkDialect {
            limits,
            max_frame: max_frame_bytes(&limits),
            greeted: false,
            version: Arc::new(AtomicU8::new(LINK_VERSION)),
        }
    }

    /// The version agreed with the peer, as it will be once the hello was
    /// read: what a refill stream may carry.
    pub fn agreed(&self) -> Arc<AtomicU8> {
        self.version.clone()
    }

    fn version(&self) -> u8 {
        self.version.load(Ordering::Relaxed)
    }

    fn hang_up(&self) -> Answered<LinkAnswer> {
        tracing::warn!("closing a link that did not present the cluster's token");
        refusal("authentication required")
    }
}

/// The error a link is hung up on with: nothing it sends after can be
/// trusted.
fn refusal(why: &'static str) -> Answered<LinkAnswer> {
    let error = ErrorReply::new(ErrorCode::Auth, why);
    Answered::new(
        LinkAnswer::Response(Response::Error(error)),
        Op::Auth,
        Outcome::Error,
    )
    .closing()
}

impl Request {
    /// The metrics label of a link request.
    pub fn op(&self) -> Op {
        match self {
            Request::Get { .. } => Op::Get,
            Request::Set { .. } => Op::Set,
            Request::Del { .. } => Op::Del,
            Request::Meta { .. } => Op::Meta,
            Request::Expire { .. } => Op::Expire,
            Request::Update { update, .. } => update.op(),
            Request::Replicate { .. } => Op::Update,
            Request::Ping => Op::Ping,
            Request::Auth { .. } => Op::Auth,
            Request::Status | Request::Missed => Op::Status,
            Request::Refill => Op::Refill,
            Request::Digest { .. } | Request::Sync { .. } | Request::Apply { .. } => {
                Op::AntiEntropy
            }
            Request::Scan { .. } => Op::Scan,
            Request::Flush { .. } => Op::Flush,
            Request::HGet { .. } => Op::HRead,
            Request::HSet { .. } | Request::HUpdate { .. } => Op::HWrite,
            Request::Layout { .. } | Request::Take { .. } => Op::Cluster,
        }
    }
}

impl Dialect for LinkDialect {
    type Request = Request;
    type Reply = LinkReply;
    type Tag = ();
    type Answer = LinkAnswer;

    const HOLDER: Holder = Holder::Daemon;

    fn decode(&mut self, buf: &mut BytesMut, gate: &Gate) -> Decoded<Request, (), LinkAnswer> {
        if !self.greeted {
            if buf.len() < HELLO.len() {
                return Decoded::Incomplete;
            }
            let Some(agreed) = hello_version(buf).and_then(agree) else {
                // A version too old, or garbage: framing cannot be trusted.
                tracing::info!(
                    offered = buf[HELLO.len() - 1],
                    "closing a link with an unknown hello"
                );
                return Decoded::Greeting(None);
            };
            if agreed < LINK_VERSION {
                tracing::info!(
                    peer = agreed,
                    own = LINK_VERSION,
                    "a peer speaks an older link protocol: it is sent only what that version carries"
                );
            }
            buf.advance(HELLO.len());
            self.greeted = true;
            self.version.store(agreed, Ordering::Relaxed);
            return Decoded::Greeting(Some(LinkAnswer::Hello(agreed)));
        }
        let frame = match read_frame(buf, self.max_frame) {
            Ok(Some(frame)) => frame,
            Ok(None) => return Decoded::Incomplete,
            Err(e) => {
                tracing::warn!(error = %e, "closing a link that sent a bad frame");
                return Decoded::Answer(Answered {
                    answer: None,
                    op: Op::Invalid,
                    outcome: Outcome::Error,
                    close: true,
                });
            }
        };
        match decode_request(frame, &self.limits) {
            Ok(Request::Auth { token }) => Decoded::Credential(Some(token)),
            Ok(request) if !gate.open() => Decoded::Refused(request),
            Ok(request) => Decoded::Run(request, ()),
            Err(_) if !gate.open() => Decoded::Answer(self.hang_up()),
            Err(e) => {
                let error = ErrorReply::new(ErrorCode::Parse, e.to_string());
                Decoded::Answer(Answered::new(
                    LinkAnswer::Response(Response::Error(error)),
                    Op::Invalid,
                    Outcome::Error,
                ))
            }
        }
    }

    fn credential(&mut self, accepted: Option<bool>, gate: &mut Gate) -> Answered<LinkAnswer> {
        if accepted != Some(true) {
            gate.authenticated = false;
            return self.hang_up();
        }
        gate.authenticated = true;
        Answered::new(
            LinkAnswer::Response(Response::Authenticated),
            Op::Auth,
            Outcome::Ok,
        )
    }

    fn client_credential(&mut self, gate: &mut Gate) -> Answered<LinkAnswer> {
        gate.authenticated = false;
        tracing::warn!(
            "closing a link that presented the clients' auth_token: links need the cluster_token"
        );
        refusal("this is the clients' auth_token: links need the cluster_token")
    }

    fn refused(&self, _: Op) -> Answered<LinkAnswer> {
        self.hang_up()
    }

    fn too_large_unauthenticated(&self) -> Answered<LinkAnswer> {
        self.hang_up()
    }

    fn encode_reply(&self, reply: &LinkReply, _: (), out: &mut BytesMut) {
        if let LinkReply::Response(response) = reply {
            encode_response(&response.for_version(self.version()), out);
        }
    }

    fn encode_answer(&self, answer: &LinkAnswer, out: &mut BytesMut) {
        match answer {
            LinkAnswer::Hello(version) => out.extend_from_slice(&hello(*version)),
            LinkAnswer::Response(response) => encode_response(response, out),
        }
    }
}
