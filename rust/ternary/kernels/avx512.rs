//! AVX-512 VNNI kernel: `vpdpbusd` multiplies 64 unsigned codes by 64 signed activations and
//! adds each group of four products straight into a 32-bit lane, so a 64-byte block of
//! weights costs one load, its unpacking, and one `vpdpbusd` per plane and activation row.
//!
//! `vpdpbusd` has a long latency, so the GEMV tile (one activation row) keeps several
//! accumulators per weight row (16 or 12 independent chains). Its "i2" planes are then only
//! masked, never shifted: `byte & (3 << 2p)` is 4^p times plane p's code, so that plane's
//! accumulator holds 4^p times its sum and is shifted back (exactly) before it could overflow.
//! The GEMM tile walks a block plane by plane, so that few registers are live (the compiler
//! otherwise keeps every activation vector and spills accumulators).
//! "t1" planes 0 and 1 come from comparisons, planes 2-4 from `vpermb` table lookups.

use super::{block_offset, drive, ChunkJob, Dots, Tile, TileKernel, TILE_COLS};
use crate::ternary::pack::{Format, BLOCK_BYTES};
use std::arch::x86_64::*;

/// Whether this CPU runs this kernel: AVX-512 F and BW, VNNI, and VBMI (for `vpermb`).
pub fn supported() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("avx512vbmi")
}

/// Runs a chunk with the AVX-512 VNNI tiles.
///
/// # Safety
/// The CPU must pass [`supported`].
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
pub unsafe fn run_chunk(job: ChunkJob<'_, '_>) {
    drive::<Avx512Vnni>(job)
}

struct Avx512Vnni;

impl TileKernel for Avx512Vnni {
    #[inline(always)]
    unsafe fn dots<const R: usize>(tile: &Tile<'_, R>) -> Dots<R> {
        match (tile.layout.format, R) {
            (Format::I2, 1) => gemv_dots::<I2, R>(tile),
            (Format::T1, 1) => gemv_dots::<T1, R>(tile),
            (Format::I2, _) => gemm_dots::<I2, R>(tile),
            (Format::T1, _) => gemm_dots::<T1, R>(tile),
        }
    }
}

/// Unpacking of 64-byte blocks into planes, one code per byte.
trait Planes {
    /// Planes per block.
    const PLANES: usize;
    /// `SHIFTS[p]`: [`Planes::scaled`] holds 2^SHIFTS[p] times plane p's codes.
    const SHIFTS: [u32; 5];
    /// GEMV accumulators per weight row; plane p adds into `p % ACCUMULATORS`, so planes that
    /// share one must share a shift.
    const ACCUMULATORS: usize;
    /// Weight rows the GEMM tile unpacks side by side (fewer when decoding needs more
    /// registers); it divides [`TILE_COLS`].
    const COLS_PER_PASS: usize;
    /// The planes scaled by 2^SHIFTS[p], when that is cheaper to compute.
    unsafe fn scaled(bytes: __m512i) -> [__m512i; 5];
    /// What the GEMM tile decodes up front for the weight rows of one pass (formats that
    /// unpack a plane cheaply on demand decode nothing here).
    type Decoded;
    /// Decodes the blocks `bytes` of the weight rows of one pass.
    unsafe fn decode_all(bytes: &[__m512i; TILE_COLS]) -> Self::Decoded;
    /// Plane p of each weight row of the pass.
    unsafe fn plane(
        bytes: &[__m512i; TILE_COLS],
        decoded: &Self::Decoded,
        p: usize,
    ) -> [__m512i; TILE_COLS];
}

/// Four 2-bit fields: plane p = (byte >> 2p) & 3.
struct I2;

impl Planes for I2 {
    const PLANES: usize = 4;
    const SHIFTS: [u32; 5] = [0, 2, 4, 6, 0];
    const ACCUMULATORS: usize = 4;
    const COLS_PER_PASS: usize = 4;

    #[inline(always)]
    unsafe fn scaled(bytes: __m512i) -> [__m512i; 5] {
        i2_scaled(bytes)
    }

    type Decoded = ();

    #[inline(always)]
    unsafe fn decode_all(_: &[__m512i; TILE_COLS]) {}

    #[inline(always)]
    unsafe fn plane(bytes: &[__m512i; TILE_COLS], _: &(), p: usize) -> [__m512i; TILE_COLS] {
        bytes.map(|b| i2_plane(b, p))
    }
}

/// Plane p of an "i2" block: (byte >> 2p) & 3.
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
unsafe fn i2_plane(bytes: __m512i, p: usize) -> __m512i {
    let shifted = match p {
        0 => bytes,
        1 => _mm512_srli_epi16::<2>(bytes),
        2 => _mm512_srli_epi16::<4>(bytes),
        _ => _mm512_srli_epi16::<6>(bytes),
    };
    _mm512_and_si512(shifted, _mm512_set1_epi8(3))
}

/// `byte & (3 << 2p)` = 4^p (plane p): at most 192, still an unsigned byte.
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
unsafe fn i2_scaled(bytes: __m512i) -> [__m512i; 5] {
    let field = |p: i32| _mm512_and_si512(bytes, _mm512_set1_epi8((3 << (2 * p)) as u8 as i8));
    [
        field(0),
        field(1),
        field(2),
        field(3),
        _mm512_setzero_si512(),
    ]
}

/// A base-3 byte v = sum_p c_p 3^(4-p).
struct T1;

impl Planes for T1 {
    const PLANES: usize = 5;
    const SHIFTS: [u32; 5] = [0; 5];
    const ACCUMULATORS: usize = 3;
    const COLS_PER_PASS: usize = 2;

    #[inline(always)]
    unsafe fn scaled(bytes: __m512i) -> [__m512i; 5] {
        t1_codes(bytes)
    }

    type Decoded = [[__m512i; 5]; TILE_COLS];

    #[inline(always)]
    unsafe fn decode_all(bytes: &[__m512i; TILE_COLS]) -> Self::Decoded {
        let mut decoded = [[_mm512_setzero_si512(); 5]; TILE_COLS];
        for (d, b) in decoded.iter_mut().zip(bytes).take(Self::COLS_PER_PASS) {
            *d = t1_codes(*b);
        }
        decoded
    }

    #[inline(always)]
    unsafe fn plane(
        _: &[__m512i; TILE_COLS],
        decoded: &Self::Decoded,
        p: usize,
    ) -> [__m512i; TILE_COLS] {
        decoded.map(|d| d[p])
    }
}

/// `T1_LOW[p - 2][r]`: digit p (planes 2..=4) of `r = v mod 27`, for r < 64.
static T1_LOW: [[u8; 64]; 3] = t1_low_tables();

const fn t1_low_tables() -> [[u8; 64]; 3] {
    let mut tables = [[0u8; 64]; 3];
    let mut r = 0;
    while r < 27 {
        tables[0][r] = (r / 9) as u8;
        tables[1][r] = (r / 3 % 3) as u8;
        tables[2][r] = (r % 3) as u8;
        r += 1;
    }
    tables
}

/// The leading base-3 digit of `v < 3 unit` and the remainder `v - digit unit`.
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
unsafe fn split_digit(v: __m512i, unit: u8) -> (__m512i, __m512i) {
    let (one, unit_v) = (_mm512_set1_epi8(1), _mm512_set1_epi8(unit as i8));
    // digit = [v >= unit] + [v >= 2 unit]
    let at_least_one = _mm512_cmpge_epu8_mask(v, unit_v);
    let at_least_two = _mm512_cmpge_epu8_mask(v, _mm512_set1_epi8((2 * unit) as i8));
    let digit = _mm512_maskz_mov_epi8(at_least_one, one);
    let digit = _mm512_mask_add_epi8(digit, at_least_two, digit, one);
    let rest = _mm512_mask_sub_epi8(v, at_least_one, v, unit_v);
    let rest = _mm512_mask_sub_epi8(rest, at_least_two, rest, unit_v);
    (digit, rest)
}

/// Planes 0 and 1 by comparisons, planes 2..=4 by 64-entry `vpermb` lookups of `v mod 27`.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
#[inline]
unsafe fn t1_codes(v: __m512i) -> [__m512i; 5] {
    let (first, rest) = split_digit(v, 81);
    let (second, rest) = split_digit(rest, 27);
    let table = |p: usize| _mm512_loadu_si512(T1_LOW[p].as_ptr() as *const _);
    [
        first,
        second,
        _mm512_permutexvar_epi8(rest, table(0)),
        _mm512_permutexvar_epi8(rest, table(1)),
        _mm512_permutexvar_epi8(rest, table(2)),
    ]
}

/// The 64 bytes of block `b` of a weight row; bytes past a tail block's width read as 0 (they
/// meet zero activations).
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
unsafe fn load_block(weights: &[u8], b: usize, width: usize) -> __m512i {
    let src = weights.as_ptr().add(block_offset(b));
    if width == BLOCK_BYTES {
        _mm512_loadu_si512(src as *const _)
    } else {
        _mm512_maskz_loadu_epi8((1u64 << width) - 1, src as *const i8)
    }
}

/// Plane p of block b of an activation panel.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn load_acts(panel: &[i8], planes: usize, b: usize, p: usize) -> __m512i {
    _mm512_loadu_si512(panel.as_ptr().add((b * planes + p) * BLOCK_BYTES) as *const _)
}

/// Blocks per accumulation segment of the GEMV tile: an "i2" plane-3 lane grows by at most
/// 4 * (2 << 6) * 128 = 2^16 per block, so 4096 blocks stay far below 2^31 before the shift
/// back (without segments, K >= 2^23 could wrap).
const SEGMENT_BLOCKS: usize = 4096;

/// Tiles ahead whose blocks the GEMV tile prefetches. The rows of a chunk are consecutive,
/// so block b of row c + 2 [`TILE_COLS`] lies 2 [`TILE_COLS`] row lengths past block b of
/// row c. Streaming from DRAM, the hardware prefetchers alone leave the GEMV about 1.5x
/// slower (measured at the BitNet-2B shapes, 30 layers of weights back to back).
const PREFETCH_TILES: usize = 2;

/// One activation row against [`TILE_COLS`] weight rows, with [`Planes::ACCUMULATORS`]
/// accumulators per weight row.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
#[inline]
unsafe fn gemv_dots<F: Planes, const R: usize>(tile: &Tile<'_, R>) -> Dots<R> {
    let layout = tile.layout;
    let panel = tile.panels[0];
    let mut total = [_mm512_setzero_si512(); TILE_COLS];
    let blocks = layout.blocks();
    let prefetch = PREFETCH_TILES * TILE_COLS * layout.row_bytes();
    let mut start = 0;
    while start < blocks {
        let end = (start + SEGMENT_BLOCKS).min(blocks);
        let mut acc = [[_mm512_setzero_si512(); 4]; TILE_COLS];
        for b in start..end {
            let width = layout.block_width(b);
            for weights in &tile.weights {
                // A hint only: it never faults, even past the end of the weights.
                let ahead = weights.as_ptr().wrapping_add(block_offset(b) + prefetch);
                _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
            }
            for (c, weights) in tile.weights.iter().enumerate() {
                let planes = F::scaled(load_block(weights, b, width));
                for (p, plane) in planes.iter().take(F::PLANES).enumerate() {
                    let acts = load_acts(panel, F::PLANES, b, p);
                    let a = p % F::ACCUMULATORS;
                    acc[c][a] = _mm512_dpbusd_epi32(acc[c][a], *plane, acts);
                }
            }
        }
        for (total, acc) in total.iter_mut().zip(&acc) {
            for (a, acc) in acc.iter().enumerate().take(F::ACCUMULATORS) {
                // Exact: the lanes of acc are multiples of 2^SHIFTS[a].
                let unscaled = _mm512_srav_epi32(*acc, _mm512_set1_epi32(F::SHIFTS[a] as i32));
                *total = _mm512_add_epi32(*total, unscaled);
            }
        }
        start = end;
    }
    let mut dots = [[0i32; TILE_COLS]; R];
    for (d, t) in dots[0].iter_mut().zip(&total) {
        *d = _mm512_reduce_add_epi32(*t);
    }
    dots
}

/// R activation rows against [`TILE_COLS`] weight rows, [`Planes::COLS_PER_PASS`] weight rows
/// at a time: each block of weights is unpacked once and used for all R rows. Plane by plane,
/// so that only one activation vector per row is live at a time.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
#[inline]
unsafe fn gemm_dots<F: Planes, const R: usize>(tile: &Tile<'_, R>) -> Dots<R> {
    let layout = tile.layout;
    let mut dots = [[0i32; TILE_COLS]; R];
    for c0 in (0..TILE_COLS).step_by(F::COLS_PER_PASS) {
        let weights = &tile.weights[c0..c0 + F::COLS_PER_PASS];
        let mut acc = [[_mm512_setzero_si512(); TILE_COLS]; R];
        for b in 0..layout.blocks() {
            let width = layout.block_width(b);
            let mut bytes = [_mm512_setzero_si512(); TILE_COLS];
            for (bytes, weights) in bytes.iter_mut().zip(weights) {
                *bytes = load_block(weights, b, width);
            }
            let decoded = F::decode_all(&bytes);
            for p in 0..F::PLANES {
                let planes = F::plane(&bytes, &decoded, p);
                for (acc, panel) in acc.iter_mut().zip(&tile.panels) {
                    let acts = load_acts(panel, F::PLANES, b, p);
                    for (acc, plane) in acc.iter_mut().zip(&planes).take(F::COLS_PER_PASS) {
                        *acc = _mm512_dpbusd_epi32(*acc, *plane, acts);
                    }
                }
            }
        }
        for (dots, acc) in dots.iter_mut().zip(&acc) {
            for (c, acc) in acc.iter().take(F::COLS_PER_PASS).enumerate() {
                dots[c0 + c] = _mm512_reduce_add_epi32(*acc);
            }
        }
    }
    dots
}
