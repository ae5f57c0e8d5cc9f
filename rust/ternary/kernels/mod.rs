//! The int8 x ternary dot-product kernels, one module per instruction set.
//!
//! Every kernel computes, for a tile of [`TILE_COLS`] packed weight rows and R activation rows
//! (in kernel order, see [`crate::ternary::pack::fill_panel`]),
//!
//! ```text
//! dot[r][c] = sum_j code[c][j] * act[r][j]        code = t + 1 in {0, 1, 2}, act int8
//! ```
//!
//! in wrapping 32-bit arithmetic; the caller subtracts `sum_j act[r][j]` to obtain
//! `sum_j t[c][j] act[r][j]`. The true result fits in i32 (|t q| <= 128 per term and
//! K < 2^24), so wrapping intermediates give it exactly, and every path returns the same bits.
//!
//! The paths: AVX-512 VNNI (`vpdpbusd`, u8 x s8 straight into i32), AVX2 (`vpmaddubsw` into
//! i16, widened to i32 after each block, long before i16 can overflow), NEON `sdot` on aarch64
//! with the dot-product extension, and the portable code. [`KernelPath::current`] picks one from
//! [`simd::isa`], so `SEQKERN_SIMD=scalar` (or `set_simd_path`) forces the portable code here too.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "aarch64")]
mod neon;
mod portable;

use super::pack::{Layout, BLOCK_BYTES};
use crate::simd::{self, Isa};

/// Weight rows (output features) of one tile.
pub const TILE_COLS: usize = 4;
/// Activation rows (tokens) of one tile, at most: each block of weights is unpacked once and
/// used for this many rows.
pub const TILE_ROWS: usize = 4;

/// The code path that runs the dot products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelPath {
    /// Plain Rust, any CPU.
    Portable,
    /// AVX2 `vpmaddubsw`.
    Avx2,
    /// AVX-512 BW + VNNI `vpdpbusd` (and VBMI `vpermb` to decode "t1").
    Avx512Vnni,
    /// aarch64 NEON `sdot`.
    NeonDot,
}

impl KernelPath {
    /// The name `ternary_kernel_path()` reports.
    pub fn name(self) -> &'static str {
        match self {
            KernelPath::Portable => "scalar",
            KernelPath::Avx2 => "avx2",
            KernelPath::Avx512Vnni => "avx512_vnni",
            KernelPath::NeonDot => "neon_dotprod",
        }
    }

    /// The path for the SIMD level chosen by [`simd::isa`]. AVX-512 without VNNI and VBMI
    /// (e.g. Skylake-X, Cascade Lake) runs the AVX2 kernel. `Isa` has no aarch64 level: there the dot-product kernel runs unless the portable
    /// path was requested.
    pub fn current() -> KernelPath {
        match simd::isa() {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 if avx512::supported() => KernelPath::Avx512Vnni,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 | Isa::Avx2 => KernelPath::Avx2,
            #[cfg(target_arch = "aarch64")]
            Isa::Scalar if !simd::portable_requested() && neon::supported() => KernelPath::NeonDot,
            _ => KernelPath::Portable,
        }
    }
}

/// Whether this CPU runs [`KernelPath::Avx512Vnni`] (AVX-512 F, BW, VNNI and VBMI).
#[cfg(target_arch = "x86_64")]
pub fn avx512_vnni_supported() -> bool {
    avx512::supported()
}

/// One tile's operands. `weights` are packed rows of `layout.row_bytes()` bytes, `panels`
/// activation rows of `layout.panel_len()` bytes.
pub struct Tile<'a, const R: usize> {
    /// Geometry of the rows.
    pub layout: &'a Layout,
    /// Packed weight rows (a short chunk repeats its last row).
    pub weights: [&'a [u8]; TILE_COLS],
    /// Activation rows in kernel order.
    pub panels: [&'a [i8]; R],
}

impl<const R: usize> Tile<'_, R> {
    /// Panics unless every row has the length the layout says (the kernels rely on it).
    fn check(&self) {
        let (bytes, panel) = (self.layout.row_bytes(), self.layout.panel_len());
        assert!(self.weights.iter().all(|w| w.len() == bytes));
        assert!(self.panels.iter().all(|p| p.len() == panel));
    }
}

/// `dot[r][c]` of a tile (see the module docs), per code path.
pub type Dots<const R: usize> = [[i32; TILE_COLS]; R];

/// A chunk of consecutive weight rows against all activation rows: what one parallel task
/// computes.
pub struct ChunkJob<'a, 'o> {
    /// Geometry of the rows.
    pub layout: &'a Layout,
    /// The chunk's packed weight rows.
    pub weights: &'a [u8],
    /// Activation rows in kernel order, `m * layout.panel_len()`.
    pub panels: &'a [i8],
    /// `sum_j act[r][j]` of each activation row.
    pub row_sums: &'a [i32],
    /// For each activation row, its outputs for this chunk's weight rows.
    pub out: Vec<&'o mut [i32]>,
}

/// Runs `job` on `path`.
pub fn run_chunk(path: KernelPath, job: ChunkJob<'_, '_>) {
    match path {
        // SAFETY: `KernelPath::current` returns these paths only when the CPU has the features.
        #[cfg(target_arch = "x86_64")]
        KernelPath::Avx512Vnni if avx512::supported() => unsafe { avx512::run_chunk(job) },
        #[cfg(target_arch = "x86_64")]
        KernelPath::Avx2 if is_x86_feature_detected!("avx2") => unsafe { avx2::run_chunk(job) },
        #[cfg(target_arch = "aarch64")]
        KernelPath::NeonDot if neon::supported() => unsafe { neon::run_chunk(job) },
        _ => drive::<portable::Portable>(job),
    }
}

/// A code path's tile function.
trait TileKernel {
    /// The dots of `tile`.
    ///
    /// # Safety
    /// The CPU must have the path's features, and the rows the lengths of `tile.layout`.
    unsafe fn dots<const R: usize>(tile: &Tile<'_, R>) -> Dots<R>;
}

/// Computes a chunk tile by tile: [`TILE_ROWS`] activation rows at a time (the last group
/// smaller) against [`TILE_COLS`] weight rows at a time. The activation rows of a group stay
/// in L1 while the chunk's weights stream past them.
#[inline(always)]
fn drive<K: TileKernel>(mut job: ChunkJob<'_, '_>) {
    let m = job.row_sums.len();
    let mut r0 = 0;
    while r0 < m {
        let rows = (m - r0).min(TILE_ROWS);
        match rows {
            1 => drive_rows::<K, 1>(&mut job, r0),
            2 => drive_rows::<K, 2>(&mut job, r0),
            3 => drive_rows::<K, 3>(&mut job, r0),
            _ => drive_rows::<K, TILE_ROWS>(&mut job, r0),
        }
        r0 += rows;
    }
}

/// Activation rows `r0..r0 + R` against every weight row of the chunk.
#[inline(always)]
fn drive_rows<K: TileKernel, const R: usize>(job: &mut ChunkJob<'_, '_>, r0: usize) {
    let layout = job.layout;
    let (row_bytes, panel_len) = (layout.row_bytes(), layout.panel_len());
    let n = job.weights.len() / row_bytes;
    let panels: [&[i8]; R] =
        std::array::from_fn(|r| &job.panels[(r0 + r) * panel_len..][..panel_len]);
    for c0 in (0..n).step_by(TILE_COLS) {
        // A short last group repeats its last row; the extra results are dropped.
        let weights = std::array::from_fn(|c| {
            let row = (c0 + c).min(n - 1);
            &job.weights[row * row_bytes..][..row_bytes]
        });
        let tile = Tile {
            layout,
            weights,
            panels,
        };
        tile.check();
        // SAFETY: `run_chunk` chose `K` for this CPU; `check` verified the lengths.
        let dots = unsafe { K::dots(&tile) };
        let cols = (n - c0).min(TILE_COLS);
        for (r, dots_r) in dots.iter().enumerate() {
            let sum = job.row_sums[r0 + r];
            for (o, &d) in job.out[r0 + r][c0..c0 + cols].iter_mut().zip(dots_r) {
                // sum_j t q = sum_j (t + 1) q - sum_j q
                *o = d.wrapping_sub(sum);
            }
        }
    }
}

/// Byte offset of block `b` within a packed row.
#[inline(always)]
fn block_offset(b: usize) -> usize {
    b * BLOCK_BYTES
}
