//! RWKV WKV kernels: RWKV-4 ([`wkv4`]), RWKV-5 and RWKV-6 ([`wkv6`]) and RWKV-7 ([`wkv7`]).
//!
//! Layout `(B, T, H, N)` with `C = H * N`; every decay argument is a log-decay `w <= 0` and the
//! per-step decay factor is `exp(w)`; matrix states are `(B, H, K, V)` with `K = V = N`, so
//! `S[i][j]` pairs key index i with value index j (the flash-linear-attention orientation).
//!
//! In that orientation every value column j of a head's state evolves on its own: the decay,
//! r, k, a and b act on the key index i, and v_j, y_j, sa_j only touch column j. The matrix
//! kernels therefore vectorise across j, with no horizontal reduction in the hot loop: the
//! loop over i broadcasts the i-indexed scalars and updates a state row with whole-register
//! operations. The parallel tasks are tiles of value columns of a group of consecutive heads
//! (see `column_tiles`); each task keeps its state tiles in cache for the whole sequence.

pub mod rwkv7_output;
pub mod wkv4;
pub mod wkv6;
pub mod wkv7;

use crate::error::{check_len, KernelError};
use crate::simd::Real;
use std::marker::PhantomData;
use std::mem::MaybeUninit;

/// SIMD lanes of one column block (one 512-bit register of f32).
pub const LANES: usize = 16;

/// One block of [`LANES`] values.
pub(crate) type Lanes<T> = [T; LANES];

/// One row of a state tile (`TB` lane blocks), aligned to a cache line so that its vector
/// loads and stores never straddle two lines (a 1.3x difference for wkv6).
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
pub(crate) struct StateRow<T, const TB: usize>(pub(crate) [Lanes<T>; TB]);

/// An output array that parallel tasks fill, each writing its own set of index ranges.
///
/// The RWKV outputs are `(B, T, H, N)`, so one task's rows (one head, every t) are interleaved
/// with the other tasks' rows; safe Rust cannot split a slice that way, hence this type.
pub(crate) struct DisjointOutput<'a, T> {
    ptr: *mut T,
    len: usize,
    _borrow: PhantomData<&'a mut [T]>,
}

// SAFETY: the type only hands out writes through `write`, whose contract forbids two threads
// from touching the same element; the borrow it wraps is exclusive for 'a.
unsafe impl<T: Send> Sync for DisjointOutput<'_, T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for DisjointOutput<'_, T> {}

impl<'a, T: Copy> DisjointOutput<'a, T> {
    /// Wraps `out` for the duration of the borrow.
    pub(crate) fn new(out: &'a mut [T]) -> Self {
        DisjointOutput {
            ptr: out.as_mut_ptr(),
            len: out.len(),
            _borrow: PhantomData,
        }
    }

    /// Copies `values` to `start..start + values.len()`; panics when that range is out of
    /// bounds.
    ///
    /// # Safety
    /// No other thread may read or write that range during the lifetime of `self`: the tasks
    /// sharing this output must write disjoint ranges.
    #[inline(always)]
    pub(crate) unsafe fn write(&self, start: usize, values: &[T]) {
        assert!(
            start <= self.len && values.len() <= self.len - start,
            "output range {start}..{} out of {}",
            start + values.len(),
            self.len
        );
        // SAFETY: the range is in bounds of the wrapped slice (checked above) and no other
        // thread accesses it (the caller's contract); `values` is a distinct borrow.
        unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), self.ptr.add(start), values.len()) }
    }

    /// Wraps an output that may not be initialised yet; it may only be written.
    pub(crate) fn uninit(out: &'a mut [MaybeUninit<T>]) -> Self {
        DisjointOutput {
            ptr: out.as_mut_ptr().cast(),
            len: out.len(),
            _borrow: PhantomData,
        }
    }

    /// The range `start..start + len`, to be written; panics when it is out of bounds.
    ///
    /// # Safety
    /// As [`DisjointOutput::write`]: no other thread may read or write that range while the
    /// returned slice lives, and the caller must not ask for overlapping slices.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice_uninit(&self, start: usize, len: usize) -> &mut [MaybeUninit<T>] {
        assert!(
            start <= self.len && len <= self.len - start,
            "output range {start}..{} out of {}",
            start + len,
            self.len
        );
        // SAFETY: in bounds (checked above) and exclusive to the caller (its contract);
        // `MaybeUninit<T>` has the layout of `T` and asks nothing of the contents.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start).cast(), len) }
    }
}

/// How many steps ahead the kernels prefetch their inputs. A task walks one head's (or one
/// channel block's) rows, which are H * N (or C) elements apart, a stride the hardware
/// prefetchers follow poorly: prefetching 2-4 steps ahead made wkv7 about 1.4x faster.
pub(crate) const PREFETCH_AHEAD: usize = 4;

pub(crate) use crate::simd::prefetch;

/// Sizes of a matrix-state WKV call (RWKV-5/6/7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadDims {
    /// Batch size B.
    pub batch: usize,
    /// Sequence length T.
    pub len: usize,
    /// Heads H.
    pub heads: usize,
    /// Head size N (= K = V).
    pub head_size: usize,
}

impl HeadDims {
    /// The shape of a per-token input, `(B, T, H, N)`.
    pub fn tokens(&self) -> [usize; 4] {
        [self.batch, self.len, self.heads, self.head_size]
    }

    /// The shape of a per-head parameter, `(H, N)`.
    pub fn per_head(&self) -> [usize; 2] {
        [self.heads, self.head_size]
    }

    /// The shape of the state, `(B, H, N, N)`.
    pub fn state(&self) -> [usize; 4] {
        [self.batch, self.heads, self.head_size, self.head_size]
    }

    /// Offset of token `t` of head `h` in batch row `b` in a `(B, T, H, N)` array.
    #[inline(always)]
    fn token_offset(&self, b: usize, t: usize, h: usize) -> usize {
        ((b * self.len + t) * self.heads + h) * self.head_size
    }

    /// Checks `y` and `state_out` against the dimensions.
    fn check_outputs<T>(&self, y: &[T], state_out: &[T]) -> Result<(), KernelError> {
        check_len("y", y, &self.tokens())?;
        check_len("state_out", state_out, &self.state())
    }
}

/// One task of the matrix kernels: value columns `start..start + width` (`blocks` blocks of
/// [`LANES`] columns, the last ones padding past `width`) of heads `head..head + heads` of
/// batch row `batch`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ColumnTile {
    pub(crate) batch: usize,
    pub(crate) head: usize,
    pub(crate) heads: usize,
    pub(crate) start: usize,
    pub(crate) width: usize,
    pub(crate) blocks: usize,
}

/// State element updates (B T H N^2) below which wkv6 / wkv7 run on the calling thread: a
/// decode step (T = 1) of a 0.1B model, 12 x 64 x 64, is ~15 us on one core, less than
/// handing it to the pool and waiting.
pub(crate) const PARALLEL_MIN_STATE_STEPS: usize = 1 << 18;

/// The state tiles one task keeps, at most (for the heads of its group together).
const TASK_STATE_BYTES: usize = 64 * 1024;

/// Splits the work into tasks: every head's N value columns into tiles of at most
/// [`max_tile_blocks`] lane blocks, and consecutive heads into groups that step through time
/// together, so that each step reads one contiguous run of every input for the whole group
/// instead of one run per head, H * N apart (wkv7 at the 1.5B shape: about 12% faster). A
/// group's state tiles stay within [`TASK_STATE_BYTES`], and groups shrink until there are at
/// least four tasks per thread. The split changes no result: every head runs the same
/// operations in the same order whatever its group.
pub(crate) fn column_tiles<T>(dims: &HeadDims, threads: usize) -> Vec<ColumnTile> {
    let n = dims.head_size;
    let columns_per_tile = max_tile_blocks::<T>() * LANES;
    let tiles_per_head = n.div_ceil(columns_per_tile);
    let tile_state_bytes = n * columns_per_tile.min(n.next_multiple_of(LANES)) * size_of::<T>();
    let by_budget = TASK_STATE_BYTES / tile_state_bytes.max(1);
    let by_threads = dims.batch * dims.heads * tiles_per_head / (4 * threads.max(1));
    let group = by_budget.min(by_threads).max(1);
    let mut tiles = Vec::new();
    for batch in 0..dims.batch {
        for head in (0..dims.heads).step_by(group) {
            for start in (0..n).step_by(columns_per_tile) {
                let width = columns_per_tile.min(n - start);
                tiles.push(ColumnTile {
                    batch,
                    head,
                    heads: group.min(dims.heads - head),
                    start,
                    width,
                    blocks: width.div_ceil(LANES),
                });
            }
        }
    }
    tiles
}

/// The most lane blocks a tile of `T` holds: four 512-bit registers per tile-wide vector for
/// f32 (64 columns), as many bytes for f64 (32 columns), so that the kernels' per-tile
/// vectors stay in registers.
fn max_tile_blocks<T>() -> usize {
    if std::mem::size_of::<T>() <= 4 {
        4
    } else {
        2
    }
}

/// Copies `src` into a zero-padded tile vector of `TB` blocks.
#[inline(always)]
pub(crate) fn load_tile<T: Real, const TB: usize>(src: &[T]) -> [Lanes<T>; TB] {
    let mut tile = [[T::ZERO; LANES]; TB];
    for (block, chunk) in tile.iter_mut().zip(src.chunks(LANES)) {
        if let Ok(full) = <&Lanes<T>>::try_from(chunk) {
            *block = *full;
        } else {
            block[..chunk.len()].copy_from_slice(chunk);
        }
    }
    tile
}

/// Writes the first `width` values of a tile vector to `out` at `start`.
///
/// # Safety
/// As [`DisjointOutput::write`]: no other task touches `start..start + width`.
#[inline(always)]
pub(crate) unsafe fn store_tile<T: Real, const TB: usize>(
    out: &DisjointOutput<'_, T>,
    start: usize,
    width: usize,
    tile: &[Lanes<T>; TB],
) {
    if width == TB * LANES {
        // SAFETY: forwarded from the caller. A `[[T; 16]; TB]` is TB * 16 contiguous Ts.
        unsafe { out.write(start, tile.as_flattened()) }
    } else {
        // SAFETY: as above.
        unsafe { out.write(start, &tile.as_flattened()[..width]) }
    }
}

/// Rows i of this tile's columns of the initial state of head `head` (zeros when there is
/// none).
#[inline(always)]
pub(crate) fn load_state_tile<T: Real, const TB: usize>(
    dims: &HeadDims,
    tile: &ColumnTile,
    head: usize,
    initial: Option<&[T]>,
) -> Vec<StateRow<T, TB>> {
    let n = dims.head_size;
    match initial {
        None => vec![StateRow([[T::ZERO; LANES]; TB]); n],
        Some(initial) => {
            let head = (tile.batch * dims.heads + head) * n * n;
            (0..n)
                .map(|i| {
                    let start = head + i * n + tile.start;
                    StateRow(load_tile::<T, TB>(&initial[start..start + tile.width]))
                })
                .collect()
        }
    }
}

/// Writes this tile's columns of the final state of head `head`.
///
/// # Safety
/// No other task writes these columns of this head (as [`DisjointOutput::write`]).
#[inline(always)]
pub(crate) unsafe fn store_state_tile<T: Real, const TB: usize>(
    dims: &HeadDims,
    tile: &ColumnTile,
    head: usize,
    state: &[StateRow<T, TB>],
    out: &DisjointOutput<'_, T>,
) {
    let n = dims.head_size;
    let head = (tile.batch * dims.heads + head) * n * n;
    for (i, row) in state.iter().enumerate() {
        // SAFETY: forwarded from the caller.
        unsafe { store_tile(out, head + i * n + tile.start, tile.width, &row.0) };
    }
}
