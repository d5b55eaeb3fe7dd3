//! The two stages of a capture: a helper thread produces each batch's activations on the host
//! (forward passes, device → host copies), the calling thread consumes them (hashing,
//! appending, Gram updates), in batch order.

use std::ops::Range;
use std::sync::mpsc::sync_channel;

use tokio_util::sync::CancellationToken;

/// Why [`two_stages`] stopped before the end.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Stopped<E> {
    /// A produced item was an error, or consuming one failed.
    Failed(E),
    /// `cancel` was cancelled.
    Cancelled,
}

/// Produces items `0..count` on a helper thread, `group` at a time (`produce` gets the range of
/// indices and returns their results in order), and consumes them in index order on this
/// thread.
///
/// With `run_ahead`, the helper produces the next group while this thread consumes: one
/// finished item waits for this thread at most. Without, the helper waits until every item of
/// its group is consumed before producing the next, so the two stages never run at once. At
/// most `group` + 1 items are alive at a time (`group` without `run_ahead`).
///
/// The first error, produced or from `consume`, stops both stages; so does `cancel`.
pub(super) fn two_stages<T: Send, E: Send>(
    count: usize,
    group: usize,
    run_ahead: bool,
    cancel: &CancellationToken,
    produce: impl Fn(Range<usize>) -> Vec<Result<T, E>> + Sync,
    mut consume: impl FnMut(usize, T) -> Result<(), E>,
) -> Result<(), Stopped<E>> {
    let group = group.max(1);
    std::thread::scope(|scope| {
        // A rendezvous: the helper hands an item over only when this thread takes it.
        let (items, arriving) = sync_channel::<Result<T, E>>(0);
        // Without `run_ahead`: one token per consumed item, a whole group's worth of room, so
        // sending one never blocks.
        let (consumed, tokens) = sync_channel::<()>(group);
        let produce = &produce;
        scope.spawn(move || {
            for start in (0..count).step_by(group) {
                if cancel.is_cancelled() {
                    return;
                }
                let range = start..(start + group).min(count);
                let expected = range.len();
                let results = produce(range);
                debug_assert_eq!(results.len(), expected, "one result per index");
                for result in results {
                    if items.send(result).is_err() {
                        return;
                    }
                }
                if !run_ahead && (0..expected).any(|_| tokens.recv().is_err()) {
                    return;
                }
            }
        });
        for index in 0..count {
            if cancel.is_cancelled() {
                return Err(Stopped::Cancelled);
            }
            // The helper only stops early when cancelled (or when it panicked, which the
            // scope then carries on to the caller).
            let item = arriving.recv().map_err(|_| Stopped::Cancelled)?;
            consume(index, item.map_err(Stopped::Failed)?).map_err(Stopped::Failed)?;
            if !run_ahead {
                let _ = consumed.send(());
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use super::*;

    /// Runs `two_stages` with items that are their own index; returns what was consumed.
    fn consumed_in(count: usize, group: usize, run_ahead: bool) -> Vec<usize> {
        let mut seen = Vec::new();
        two_stages::<usize, ()>(
            count,
            group,
            run_ahead,
            &CancellationToken::new(),
            |range| range.map(Ok).collect(),
            |index, item| {
                assert_eq!(index, item);
                seen.push(item);
                Ok(())
            },
        )
        .unwrap();
        seen
    }

    #[test]
    fn every_item_is_consumed_once_in_order() {
        for run_ahead in [false, true] {
            for group in 1..=3 {
                for count in 0..8 {
                    assert_eq!(
                        consumed_in(count, group, run_ahead),
                        (0..count).collect::<Vec<_>>(),
                        "count {count}, group {group}, run_ahead {run_ahead}"
                    );
                }
            }
        }
    }

    /// Waits up to 5 s for `produced` to reach `n`; whether it did.
    fn reaches(produced: &AtomicUsize, n: usize, patience: Duration) -> bool {
        let until = Instant::now() + patience;
        while Instant::now() < until {
            if produced.load(Ordering::SeqCst) >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        produced.load(Ordering::SeqCst) >= n
    }

    #[test]
    fn running_ahead_produces_the_next_item_while_one_is_consumed() {
        for run_ahead in [false, true] {
            let produced = AtomicUsize::new(0);
            let mut overlapped = Vec::new();
            two_stages::<usize, ()>(
                4,
                1,
                run_ahead,
                &CancellationToken::new(),
                |range| {
                    produced.fetch_add(range.len(), Ordering::SeqCst);
                    range.map(Ok).collect()
                },
                |index, _| {
                    // While item `index` is being consumed, has item `index + 1` been made?
                    let patience = Duration::from_millis(if run_ahead { 5000 } else { 100 });
                    overlapped.push(index + 1 < 4 && reaches(&produced, index + 2, patience));
                    Ok(())
                },
            )
            .unwrap();
            let expected = if run_ahead {
                vec![true, true, true, false]
            } else {
                vec![false; 4]
            };
            assert_eq!(overlapped, expected, "run_ahead {run_ahead}");
        }
    }

    #[test]
    fn at_most_one_item_waits_while_one_is_consumed() {
        for (group, bound) in [(1, 2), (2, 3), (3, 4)] {
            for run_ahead in [false, true] {
                let alive = AtomicUsize::new(0);
                let peak = AtomicUsize::new(0);
                two_stages::<(), ()>(
                    12,
                    group,
                    run_ahead,
                    &CancellationToken::new(),
                    |range| {
                        let now = alive.fetch_add(range.len(), Ordering::SeqCst) + range.len();
                        peak.fetch_max(now, Ordering::SeqCst);
                        range.map(|_| Ok(())).collect()
                    },
                    |_, ()| {
                        std::thread::sleep(Duration::from_millis(2));
                        alive.fetch_sub(1, Ordering::SeqCst);
                        Ok(())
                    },
                )
                .unwrap();
                let peak = peak.load(Ordering::SeqCst);
                assert!(
                    peak <= bound,
                    "group {group}, run_ahead {run_ahead}: {peak} items alive"
                );
            }
        }
    }

    #[test]
    fn a_produced_error_stops_at_its_index() {
        for run_ahead in [false, true] {
            let mut seen = Vec::new();
            let result = two_stages(
                6,
                2,
                run_ahead,
                &CancellationToken::new(),
                |range| {
                    range
                        .map(|i| if i == 3 { Err("bad batch") } else { Ok(i) })
                        .collect()
                },
                |_, item| {
                    seen.push(item);
                    Ok(())
                },
            );
            assert_eq!(result, Err(Stopped::Failed("bad batch")));
            assert_eq!(seen, vec![0, 1, 2]);
        }
    }

    #[test]
    fn a_failed_consume_stops_the_producer() {
        for run_ahead in [false, true] {
            let produced = AtomicUsize::new(0);
            let result = two_stages(
                1000,
                1,
                run_ahead,
                &CancellationToken::new(),
                |range| {
                    produced.fetch_add(range.len(), Ordering::SeqCst);
                    range.map(Ok).collect()
                },
                |index, _| if index == 2 { Err("full disk") } else { Ok(()) },
            );
            assert_eq!(result, Err(Stopped::Failed("full disk")));
            // Items 0..=2 consumed, at most one more made and one being made.
            assert!(produced.load(Ordering::SeqCst) <= 5);
        }
    }

    #[test]
    fn cancelling_stops_both_stages() {
        for run_ahead in [false, true] {
            let cancel = CancellationToken::new();
            let mut seen = Vec::new();
            let result = two_stages::<usize, ()>(
                1000,
                2,
                run_ahead,
                &cancel,
                |range| range.map(Ok).collect(),
                |index, _| {
                    seen.push(index);
                    if index == 4 {
                        cancel.cancel();
                    }
                    Ok(())
                },
            );
            assert_eq!(result, Err(Stopped::Cancelled));
            assert_eq!(seen, vec![0, 1, 2, 3, 4]);
        }
    }
}
