//! Running futures concurrently on the current task, outputs in order
//! (what a pipelined batch and a multi-key command need, without a task per
//! future).

use std::future::Future;
use tokio::time::Instant;

/// Runs `futures` concurrently on this task; their outputs in order.
pub async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    join_all_then(futures, |_, _, _| {}).await
}

/// [`join_all`], calling `done(i, &output, now)` as each one finishes
/// (`now`: one clock reading for all that finish in the same wake-up).
pub async fn join_all_then<F: Future>(
    futures: Vec<F>,
    mut done: impl FnMut(usize, &F::Output, Instant),
) -> Vec<F::Output> {
    let mut running: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = running.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        let mut now = None;
        for (i, future) in running.iter_mut().enumerate() {
            if outputs[i].is_some() {
                continue;
            }
            match future.as_mut().poll(cx) {
                std::task::Poll::Ready(output) => {
                    done(i, &output, *now.get_or_insert_with(Instant::now));
                    outputs[i] = Some(output);
                }
                std::task::Poll::Pending => pending = true,
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}
