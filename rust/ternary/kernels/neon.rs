//! aarch64 kernel: `sdot` multiplies 16 codes by 16 activations and adds each group of four
//! products into a 32-bit lane. A 64-byte block is handled as four 16-byte quarters. The
//! `vdotq_s32` intrinsic is not yet stable Rust, so `sdot` is written as inline assembly.

use super::{block_offset, drive, ChunkJob, Dots, Tile, TileKernel, TILE_COLS};
use crate::ternary::pack::{Format, BLOCK_BYTES};
use std::arch::aarch64::*;
use std::arch::asm;

/// One NEON register of bytes.
const QUARTER: usize = 16;

/// Whether this CPU has the dot-product extension.
pub fn supported() -> bool {
    std::arch::is_aarch64_feature_detected!("dotprod")
}

/// Runs a chunk with the `sdot` tiles.
///
/// # Safety
/// The CPU must pass [`supported`].
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn run_chunk(job: ChunkJob<'_, '_>) {
    drive::<NeonDot>(job)
}

struct NeonDot;

impl TileKernel for NeonDot {
    #[inline(always)]
    unsafe fn dots<const R: usize>(tile: &Tile<'_, R>) -> Dots<R> {
        dots::<R>(tile)
    }
}

/// `acc + (sum of the four products a_i b_i of each lane)`.
#[target_feature(enable = "neon,dotprod")]
#[inline]
unsafe fn sdot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    asm!(
        "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
        acc = inout(vreg) acc,
        a = in(vreg) a,
        b = in(vreg) b,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}

/// The planes of codes of 16 bytes (entries past the format's planes are unused).
#[target_feature(enable = "neon")]
#[inline]
unsafe fn planes(format: Format, bytes: uint8x16_t) -> [int8x16_t; 5] {
    let zero = vdupq_n_u8(0);
    match format {
        Format::I2 => {
            // plane p = (byte >> 2p) & 3
            let three = vdupq_n_u8(3);
            [
                vandq_u8(bytes, three),
                vandq_u8(vshrq_n_u8::<2>(bytes), three),
                vandq_u8(vshrq_n_u8::<4>(bytes), three),
                vshrq_n_u8::<6>(bytes),
                zero,
            ]
            .map(|v| vreinterpretq_s8_u8(v))
        }
        Format::T1 => {
            // v = sum_p c_p 3^(4-p): c_p = [r >= unit] + [r >= 2 unit], r -= c_p unit, for
            // unit = 81, 27, 9, 3; the last remainder is c_4. Comparisons give 0xff (-1).
            let mut rest = bytes;
            let mut out = [zero; 5];
            for (plane, unit) in out[..4].iter_mut().zip([81u8, 27, 9, 3]) {
                let at_least_one = vcgeq_u8(rest, vdupq_n_u8(unit));
                let at_least_two = vcgeq_u8(rest, vdupq_n_u8(2 * unit));
                *plane = vsubq_u8(vsubq_u8(zero, at_least_one), at_least_two);
                let taken = vaddq_u8(
                    vandq_u8(at_least_one, vdupq_n_u8(unit)),
                    vandq_u8(at_least_two, vdupq_n_u8(unit)),
                );
                rest = vsubq_u8(rest, taken);
            }
            out[4] = rest;
            out.map(|v| vreinterpretq_s8_u8(v))
        }
    }
}

/// The dots of a tile (see the module docs of `kernels`).
#[target_feature(enable = "neon,dotprod")]
#[inline]
unsafe fn dots<const R: usize>(tile: &Tile<'_, R>) -> Dots<R> {
    let layout = tile.layout;
    let planes_per_block = layout.planes();
    let mut acc = [[vdupq_n_s32(0); TILE_COLS]; R];
    for b in 0..layout.blocks() {
        let width = layout.block_width(b);
        for (c, weights) in tile.weights.iter().enumerate() {
            // A tail block is zero-padded to 64 bytes; its padding meets zero activations.
            let mut block = [0u8; BLOCK_BYTES];
            block[..width].copy_from_slice(&weights[block_offset(b)..][..width]);
            for quarter in 0..BLOCK_BYTES / QUARTER {
                let bytes = vld1q_u8(block.as_ptr().add(quarter * QUARTER));
                let codes = planes(layout.format, bytes);
                for (r, panel) in tile.panels.iter().enumerate() {
                    let acts = panel.as_ptr().add(b * planes_per_block * BLOCK_BYTES);
                    for (p, code) in codes.iter().take(planes_per_block).enumerate() {
                        let a = vld1q_s8(acts.add(p * BLOCK_BYTES + quarter * QUARTER));
                        acc[r][c] = sdot(acc[r][c], *code, a);
                    }
                }
            }
        }
    }
    let mut dots = [[0i32; TILE_COLS]; R];
    for (d, a) in dots.iter_mut().zip(&acc) {
        for (d, a) in d.iter_mut().zip(a) {
            *d = vaddvq_s32(*a);
        }
    }
    dots
}
