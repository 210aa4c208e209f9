use super::*;
use bytes::Bytes;

fn worker() -> Worker {
    partnered(None)
}

fn partnered(partner: Option<&str>) -> Worker {
    let worker = Worker::new(WorkerConfig {
        listen: "127.0.0.1:0".into(),
        partner: partner.map(str::to_string),
        metrics_listen: "127.0.0.1:0".into(),
        server: Default::default(),
        store: Default::default(),
        anti_entropy_interval: Duration::from_secs(2),
        anti_entropy_lease: crate::defaults::ANTI_ENTROPY_LEASE,
        refill_wait: Duration::from_secs(10),
        connection_loops: 1,
    });
    worker.set_state(WorkerState::Ready);
    worker
}

fn set(version: u64, value: &'static [u8]) -> Request {
    Request::Set {
        version,
        ttl_ms: 0,
        key: Bytes::from_static(b"k"),
        value: Bytes::from_static(value),
        when: SetWhen::Always,
    }
}

#[test]
fn a_version_far_ahead_of_the_clock_is_refused() {
    let w = worker();
    for request in [
        set(u64::MAX, b"immortal"),
        Request::Del {
            version: u64::MAX,
            key: Bytes::from_static(b"k"),
        },
    ] {
        let answer = w.execute(request);
        assert!(
            matches!(&answer, Response::Error(e) if e.message.contains("ahead of this worker's clock")),
            "{answer:?}"
        );
    }
    // Nothing was stored, and the worker's clock did not jump: its own
    // next write is an ordinary one.
    assert!(w.store.get(b"k").is_none());
    assert!(crate::version::plausible(w.clock.next()));
}

#[test]
fn a_write_that_loses_says_which_version_won() {
    let w = worker();
    let now = w.clock.next();
    assert!(matches!(
        w.execute(set(now + 1000, b"newer")),
        Response::Set { applied: true }
    ));
    assert_eq!(
        w.execute(set(now, b"older")),
        Response::Newer {
            version: now + 1000
        }
    );
    assert_eq!(
        w.execute(Request::Del {
            version: now,
            key: Bytes::from_static(b"k")
        }),
        Response::Newer {
            version: now + 1000
        }
    );
    // The same write again is not a loss.
    assert!(matches!(
        w.execute(set(now + 1000, b"newer")),
        Response::Set { applied: false }
    ));
}

#[tokio::test]
async fn a_round_whose_answer_was_cut_short_does_not_count() {
    let w = worker();
    // More than a refill chunk that the initiator lacks: the SYNC
    // answer is cut, and the round repaired only part of it.
    // (Values that do not compress: the chunk counts stored bytes.)
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..300u32 {
        let value: Vec<u8> = (0..8 << 10)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let request = Request::Set {
            version: w.clock.next(),
            ttl_ms: 0,
            key: Bytes::from(format!("key-{i}")),
            value: Bytes::from(value),
            when: SetWhen::Always,
        };
        assert!(matches!(
            w.execute(request),
            Response::Set { applied: true }
        ));
    }
    w.execute(Request::Missed);
    let mut responder = antientropy::Responder::default();
    async fn round(w: &Worker, responder: &mut antientropy::Responder) -> bool {
        assert!(matches!(
            responder.handle(w, Request::Digest { floor: 0 }).await,
            Response::Digest { .. }
        ));
        let buckets = (0..crate::hash::DIGEST_BUCKETS as u16).collect();
        let sync = Request::Sync {
            buckets,
            after: Bytes::new(),
            upto: Bytes::new(),
            summaries: Vec::new(),
        };
        let synced = responder.handle(w, sync).await;
        let Response::Synced { complete, .. } = synced else {
            panic!("{synced:?}");
        };
        let apply = Request::Apply {
            last: true,
            entries: Vec::new(),
            evict: Vec::new(),
        };
        responder.handle(w, apply).await;
        complete
    }
    assert!(!round(&w, &mut responder).await, "the answer is cut");
    assert!(!round(&w, &mut responder).await, "the answer is cut");
    assert_eq!(w.anti_entropy.rounds(), 0, "no cut round counts");
    assert!(
        says_partner_behind(&w),
        "the partner still lacks most of what it missed"
    );
}

fn says_partner_behind(w: &Worker) -> bool {
    matches!(
        w.execute(Request::Status),
        Response::Status {
            partner_behind: true,
            ..
        }
    )
}

#[test]
fn a_missed_write_is_reported_until_a_round_that_began_after_it_completes() {
    let w = worker();
    assert!(!says_partner_behind(&w));
    assert_eq!(w.execute(Request::Missed), Response::Noted);
    assert!(says_partner_behind(&w));
    // The round that may have been running at the notice does not
    // count: it may have compared before the write was stored.
    w.round_completed();
    assert!(says_partner_behind(&w));
    w.round_completed();
    assert!(!says_partner_behind(&w));
    // A later notice starts over; an earlier one never shortens it.
    w.execute(Request::Missed);
    w.round_completed();
    w.execute(Request::Missed);
    w.round_completed();
    assert!(
        says_partner_behind(&w),
        "the second notice counts from its own time"
    );
    w.round_completed();
    assert!(!says_partner_behind(&w));
}

/// A field increment the partner decided is not stored over one this
/// worker decided after the version the partner read (answered
/// `NotStored`: the two conflict and the client hears the outcome is
/// unknown); over what the partner read, or another node's newer write,
/// it is.
#[test]
fn a_decided_field_write_does_not_land_over_a_field_this_worker_decided_since() {
    use crate::protocol::fields::FieldUpdate;
    let w = worker();
    let key = Bytes::from_static(b"h");
    let field = Bytes::from_static(b"n");
    let incr = |w: &Worker| match w.execute(Request::HUpdate {
        version: 0,
        key: key.clone(),
        field: field.clone(),
        update: FieldUpdate::IncrBy(1),
    }) {
        Response::Updated {
            changed: true,
            version,
            base,
            value: Some(v),
            ..
        } => (version, base, v),
        other => panic!("{other:?}"),
    };
    let (first, base, value) = incr(&w);
    assert_eq!((base, &value[..]), (0, &b"1"[..]));
    let (second, base, value) = incr(&w);
    assert_eq!((base, &value[..]), (first, &b"2"[..]));
    // The partner decided from nothing (it had not seen `first`).
    let from_partner = |base: u64, version: u64| Request::HSet {
        version,
        key: key.clone(),
        fields: vec![(field.clone(), Some(Bytes::from_static(b"1")))],
        base: Some(base),
    };
    let later = second + (1 << 20);
    assert_eq!(w.execute(from_partner(0, later)), Response::NotStored);
    // Decided from the value this worker holds: no conflict.
    assert!(matches!(
        w.execute(from_partner(second, later)),
        Response::FieldsWritten { .. }
    ));
}

#[test]
fn the_layout_with_the_higher_epoch_names_the_partner() {
    let w = partnered(Some("old:2"));
    let layout = |epoch: u64, partner: &str| Layout {
        epoch,
        pairs: vec![
            ["other:1".into(), "other:2".into()],
            ["me:1".into(), partner.into()],
        ],
        source: None,
    };
    let adopt = |l: Option<Layout>| match w.execute(Request::Layout {
        layout: l,
        you: "me:1".into(),
    }) {
        Response::Layout { layout, .. } => layout,
        other => panic!("LAYOUT answered {other:?}"),
    };
    // Nothing offered, nothing held.
    assert_eq!(adopt(None), None);
    assert_eq!(adopt(Some(layout(2, "new:2"))), Some(layout(2, "new:2")));
    assert_eq!(w.partner().as_deref().map(String::as_str), Some("new:2"));
    // An older epoch changes nothing; asking gives the one held.
    assert_eq!(adopt(Some(layout(1, "stale:2"))), Some(layout(2, "new:2")));
    assert_eq!(adopt(None), Some(layout(2, "new:2")));
    assert_eq!(w.partner().as_deref().map(String::as_str), Some("new:2"));
    // Two layouts of one epoch (two orchestrators changed it at once):
    // the greater is kept, whichever came first.
    assert_eq!(adopt(Some(layout(2, "alt:2"))), Some(layout(2, "new:2")));
    assert_eq!(adopt(Some(layout(2, "z:2"))), Some(layout(2, "z:2")));
    assert_eq!(adopt(Some(layout(2, "new:2"))), Some(layout(2, "z:2")));
    assert_eq!(w.partner().as_deref().map(String::as_str), Some("z:2"));
    // A reload with the file's old partner keeps the layout's, and so
    // does one with no partner in the file.
    w.reload(w.config());
    assert_eq!(w.partner().as_deref().map(String::as_str), Some("z:2"));
    let mut unpartnered = w.config().clone();
    unpartnered.partner = None;
    w.reload(&unpartnered);
    assert_eq!(w.partner().as_deref().map(String::as_str), Some("z:2"));
    // A worker without a partner takes none from a layout.
    let solo = worker();
    solo.execute(Request::Layout {
        layout: Some(layout(3, "x:2")),
        you: "me:1".into(),
    });
    assert_eq!(solo.partner(), None);
}

/// What a worker said of its part in one layout's move is not said of
/// another layout of the same epoch (two changes made at one moment):
/// an orchestrator must not seal a move on a `done` of another move.
#[test]
fn a_handoff_is_said_only_of_the_layout_it_was_made_for() {
    use crate::protocol::link::{Handoff, Layout, Source};
    let pair = |a: &str, b: &str| [a.to_string(), b.to_string()];
    let before = vec![pair("a:1", "a:2"), pair("b:1", "b:2")];
    let moving_to = |pairs: Vec<[String; 2]>| Layout {
        epoch: 3,
        pairs,
        source: Some(Source {
            pairs: before.clone(),
            sealed: false,
        }),
    };
    let added = moving_to(vec![
        pair("a:1", "a:2"),
        pair("b:1", "b:2"),
        pair("c:1", "c:2"),
    ]);
    let removed = moving_to(vec![pair("a:1", "a:2"), crate::protocol::link::hole()]);
    let (first, second) = if removed.supersedes(&added) {
        (added, removed)
    } else {
        (removed, added)
    };
    let w = worker();
    w.adopt_layout(Some(first), "a:1".into());
    let (_, _, generation) = w.held_layout().expect("a layout");
    let done = Handoff {
        epoch: 3,
        done: true,
        ..Handoff::default()
    };
    w.set_handoff(generation, Some(done));
    assert_eq!(w.handoff(), Some(done));
    w.adopt_layout(Some(second.clone()), "a:1".into());
    assert_eq!(w.held_layout().map(|(l, _, _)| l), Some(second));
    assert_eq!(w.handoff(), None, "a done of the layout before");
    // Nor does a report made for the layout before, arriving late.
    w.set_handoff(generation, Some(done));
    assert_eq!(w.handoff(), None);
    let (_, _, now) = w.held_layout().expect("a layout");
    w.set_handoff(now, Some(done));
    assert_eq!(w.handoff(), Some(done));
}
