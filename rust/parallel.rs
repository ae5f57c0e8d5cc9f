//! The one rayon pool every kernel runs on.
//!
//! It is sized from `SEQKERN_NUM_THREADS` (default: all cores) when first used and can be
//! replaced with [`set_num_threads`]. Kernels split work so that their results do not depend on
//! the number of threads.

use std::sync::{Arc, LazyLock, RwLock};

static POOL: LazyLock<RwLock<Arc<rayon::ThreadPool>>> =
    LazyLock::new(|| RwLock::new(Arc::new(build_pool(threads_from_env()))));

fn threads_from_env() -> usize {
    std::env::var("SEQKERN_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn build_pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("seqkern-{i}"))
        .build()
        .expect("building a rayon pool with a positive thread count")
}

/// The pool kernels run on (a shared handle: a concurrent [`set_num_threads`] does not disturb a
/// call already running).
pub fn pool() -> Arc<rayon::ThreadPool> {
    POOL.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Runs `f` inside the pool, so that rayon calls in `f` use its threads.
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    pool().install(f)
}

/// Replaces the pool with one of `threads` threads (`0` means all cores).
pub fn set_num_threads(threads: usize) {
    let threads = if threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        threads
    };
    *POOL.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(build_pool(threads));
}

/// The number of threads of the current pool.
pub fn num_threads() -> usize {
    pool().current_num_threads()
}

/// Below this many inner-loop element updates a call runs on the calling thread: waking the
/// pool and waiting for it costs more than the work (a decode step is ~25k updates).
pub const PARALLEL_MIN_WORK: usize = 1 << 17;

/// Calls `f(&mut scratch, item)` for every item, with one `scratch` from `init` per sequential
/// run. Runs on the calling thread when `work` (the call's element updates) is below
/// [`PARALLEL_MIN_WORK`], else on the pool. Items must be independent, so the result does not
/// depend on which thread runs what.
pub fn for_each_init<I, S, Init, F>(items: Vec<I>, work: usize, init: Init, f: F)
where
    I: Send,
    Init: Fn() -> S + Sync + Send,
    F: Fn(&mut S, I) + Sync + Send,
{
    for_each_init_above(PARALLEL_MIN_WORK, items, work, init, f)
}

/// [`for_each_init`] with the caller's own threshold: on the pool only when `work >= min_work`
/// (in the caller's units), there are two items or more and the pool has more than one thread
/// (handing a call to a one-thread pool only adds the hand-off).
pub fn for_each_init_above<I, S, Init, F>(
    min_work: usize,
    items: Vec<I>,
    work: usize,
    init: Init,
    f: F,
) where
    I: Send,
    Init: Fn() -> S + Sync + Send,
    F: Fn(&mut S, I) + Sync + Send,
{
    use rayon::prelude::*;
    if work < min_work || items.len() < 2 || num_threads() < 2 {
        let mut scratch = init();
        items.into_iter().for_each(|item| f(&mut scratch, item));
    } else {
        install(|| items.into_par_iter().for_each_init(&init, &f));
    }
}
