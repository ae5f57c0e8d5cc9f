//! AVX2 kernel: `vpmaddubsw` multiplies 32 unsigned codes by 32 signed activations and adds
//! adjacent pairs into 16-bit lanes. A pair is at most 2 * 2 * 128 = 512 in magnitude; the
//! kernel adds the 2 x planes (<= 10) pairs of one block per lane (<= 5120, far from the i16
//! limit of 32767) and then widens to 32 bits with `vpmaddwd` by ones.

use super::{block_offset, drive, ChunkJob, Dots, Tile, TileKernel, TILE_COLS};
use crate::ternary::pack::{Format, BLOCK_BYTES};
use std::arch::x86_64::*;

/// Half a block: one 256-bit register.
const HALF: usize = BLOCK_BYTES / 2;

/// Runs a chunk with the AVX2 tiles.
///
/// # Safety
/// The CPU must have AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn run_chunk(job: ChunkJob<'_, '_>) {
    drive::<Avx2>(job)
}

struct Avx2;

impl TileKernel for Avx2 {
    #[inline(always)]
    unsafe fn dots<const R: usize>(tile: &Tile<'_, R>) -> Dots<R> {
        match tile.layout.format {
            Format::I2 => dots::<I2, R>(tile),
            Format::T1 => dots::<T1, R>(tile),
        }
    }
}

/// Unpacking of 32 bytes into planes of codes, one code per byte.
trait Planes {
    /// Planes per block.
    const PLANES: usize;
    /// The planes (entries past `PLANES` are unused).
    unsafe fn unpack(bytes: __m256i) -> [__m256i; 5];
}

/// Four 2-bit fields: plane p = (byte >> 2p) & 3.
struct I2;

impl Planes for I2 {
    const PLANES: usize = 4;

    #[inline(always)]
    unsafe fn unpack(bytes: __m256i) -> [__m256i; 5] {
        i2_planes(bytes)
    }
}

#[target_feature(enable = "avx2")]
#[inline]
unsafe fn i2_planes(bytes: __m256i) -> [__m256i; 5] {
    let three = _mm256_set1_epi8(3);
    // 16-bit shifts move bits across bytes; the mask keeps each byte's own field.
    [
        _mm256_and_si256(bytes, three),
        _mm256_and_si256(_mm256_srli_epi16::<2>(bytes), three),
        _mm256_and_si256(_mm256_srli_epi16::<4>(bytes), three),
        _mm256_and_si256(_mm256_srli_epi16::<6>(bytes), three),
        _mm256_setzero_si256(),
    ]
}

/// A base-3 byte v = sum_p c_p 3^(4-p).
struct T1;

impl Planes for T1 {
    const PLANES: usize = 5;

    #[inline(always)]
    unsafe fn unpack(bytes: __m256i) -> [__m256i; 5] {
        t1_planes(bytes)
    }
}

/// `lut[d] = d * unit` for d in {0, 1, 2}, as a `vpshufb` table.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn times_table(unit: u8) -> __m256i {
    let lane = [0, unit, 2 * unit, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let half = _mm_loadu_si128(lane.as_ptr() as *const __m128i);
    _mm256_broadcastsi128_si256(half)
}

#[target_feature(enable = "avx2")]
#[inline]
unsafe fn t1_planes(v: __m256i) -> [__m256i; 5] {
    let one = _mm256_set1_epi8(1);
    // c_0 = [v >= 81] + [v >= 162], unsigned: min(v -sat 80, 1) is [v > 80].
    let first = _mm256_add_epi8(
        _mm256_min_epu8(_mm256_subs_epu8(v, _mm256_set1_epi8(80)), one),
        _mm256_min_epu8(_mm256_subs_epu8(v, _mm256_set1_epi8(161u8 as i8)), one),
    );
    let mut rest = _mm256_sub_epi8(v, _mm256_shuffle_epi8(times_table(81), first));
    let mut planes = [first, first, first, first, first];
    // rest < 81 fits a signed byte: c_p = [rest >= unit] + [rest >= 2 unit], rest -= c_p unit.
    for (plane, unit) in planes[1..4].iter_mut().zip([27u8, 9, 3]) {
        let at_least_one = _mm256_cmpgt_epi8(rest, _mm256_set1_epi8(unit as i8 - 1));
        let at_least_two = _mm256_cmpgt_epi8(rest, _mm256_set1_epi8(2 * unit as i8 - 1));
        // Comparisons give -1 for true.
        *plane = _mm256_sub_epi8(
            _mm256_sub_epi8(_mm256_setzero_si256(), at_least_one),
            at_least_two,
        );
        rest = _mm256_sub_epi8(rest, _mm256_shuffle_epi8(times_table(unit), *plane));
    }
    planes[4] = rest;
    planes
}

/// The 64 bytes of block `b` of a weight row; a tail block is zero-padded.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn load_block(weights: &[u8], b: usize, width: usize) -> [__m256i; 2] {
    let mut padded = [0u8; BLOCK_BYTES];
    let src = if width == BLOCK_BYTES {
        weights.as_ptr().add(block_offset(b))
    } else {
        padded[..width].copy_from_slice(&weights[block_offset(b)..][..width]);
        padded.as_ptr()
    };
    [
        _mm256_loadu_si256(src as *const __m256i),
        _mm256_loadu_si256(src.add(HALF) as *const __m256i),
    ]
}

/// The dots of a tile (see the module docs of `kernels`).
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn dots<F: Planes, const R: usize>(tile: &Tile<'_, R>) -> Dots<R> {
    let layout = tile.layout;
    let ones = _mm256_set1_epi16(1);
    let act_block = F::PLANES * BLOCK_BYTES;
    let mut dots = [[0i32; TILE_COLS]; R];
    // One weight row at a time: 16 registers hold its planes and R accumulators.
    for (c, weights) in tile.weights.iter().enumerate() {
        let mut acc = [_mm256_setzero_si256(); R];
        for b in 0..layout.blocks() {
            let [lo, hi] = load_block(weights, b, layout.block_width(b));
            let (planes_lo, planes_hi) = (F::unpack(lo), F::unpack(hi));
            for (acc, panel) in acc.iter_mut().zip(&tile.panels) {
                let acts = panel.as_ptr().add(b * act_block);
                let mut pairs = _mm256_setzero_si256();
                for p in 0..F::PLANES {
                    let a = acts.add(p * BLOCK_BYTES);
                    let a_lo = _mm256_loadu_si256(a as *const __m256i);
                    let a_hi = _mm256_loadu_si256(a.add(HALF) as *const __m256i);
                    pairs = _mm256_add_epi16(pairs, _mm256_maddubs_epi16(planes_lo[p], a_lo));
                    pairs = _mm256_add_epi16(pairs, _mm256_maddubs_epi16(planes_hi[p], a_hi));
                }
                *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(pairs, ones));
            }
        }
        for (dots, acc) in dots.iter_mut().zip(&acc) {
            dots[c] = horizontal_sum(*acc);
        }
    }
    dots
}

/// The wrapping sum of the eight 32-bit lanes.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn horizontal_sum(v: __m256i) -> i32 {
    let quad = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let pair = _mm_add_epi32(quad, _mm_unpackhi_epi64(quad, quad));
    let one = _mm_add_epi32(pair, _mm_shuffle_epi32::<0b01>(pair));
    _mm_cvtsi128_si32(one)
}
