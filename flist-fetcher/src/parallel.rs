//! Bounded parallelism on scoped threads, and progress bars.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Default number of concurrent block fetches (I/O bound).
pub const DEFAULT_FETCH_JOBS: usize = 16;

/// Default number of CPU-bound workers: the number of available cores.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}

/// Default number of pack workers: each encodes and uploads blocks, so a few
/// more than the cores keeps remote stores busy.
pub fn default_pack_jobs() -> usize {
    default_jobs().max(8)
}

/// Runs `f` on every item with at most `jobs` threads. Stops handing out work
/// after the first error, and returns that error.
pub fn for_each<T, E, F>(items: &[T], jobs: usize, f: F) -> Result<(), E>
where
    T: Sync,
    E: Send,
    F: Fn(usize, &T) -> Result<(), E> + Sync,
{
    let jobs = jobs.clamp(1, items.len().max(1));
    if jobs == 1 {
        return items.iter().enumerate().try_for_each(|(i, t)| f(i, t));
    }
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let first: Mutex<Option<E>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    if let Err(e) = f(i, item) {
                        stop.store(true, Ordering::Relaxed);
                        if let Ok(mut slot) = first.lock() {
                            slot.get_or_insert(e);
                        }
                        break;
                    }
                }
            });
        }
    });
    match first.into_inner() {
        Ok(Some(e)) => Err(e),
        Ok(None) => Ok(()),
        // a worker panicked while holding the lock; scope() already re-raised that panic
        Err(poisoned) => poisoned.into_inner().map_or(Ok(()), Err),
    }
}

/// A byte-count progress bar on stderr, drawn only when stderr is a terminal
/// and `enabled` is set.
pub fn bytes_bar(enabled: bool, total: u64, message: &'static str) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:>10} [{bar:32}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message);
    bar
}

/// An item-count progress bar on stderr, drawn only when stderr is a terminal
/// and `enabled` is set.
pub fn count_bar(enabled: bool, total: u64, message: &'static str) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{msg:>10} [{bar:32}] {pos}/{len} blocks {per_sec} eta {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message);
    bar
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn runs_everything() {
        let items: Vec<usize> = (0..100).collect();
        let sum = AtomicUsize::new(0);
        for_each(&items, 4, |_, v| {
            sum.fetch_add(*v, Ordering::Relaxed);
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(sum.into_inner(), 4950);
    }

    #[test]
    fn stops_on_error() {
        let items: Vec<usize> = (0..1000).collect();
        let done = AtomicUsize::new(0);
        let r = for_each(&items, 3, |_, v| {
            done.fetch_add(1, Ordering::Relaxed);
            if *v == 5 {
                Err(format!("item {v}"))
            } else {
                Ok(())
            }
        });
        assert_eq!(r.unwrap_err(), "item 5");
        assert!(done.into_inner() < 1000);
        assert!(for_each::<u8, (), _>(&[], 4, |_, _| Ok(())).is_ok());
    }
}
