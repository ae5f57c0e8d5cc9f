//! The portable kernel: each block of a weight row is decoded through a table into planes of
//! codes, then every activation row takes a plain multiply-add over each plane (a loop the
//! compiler vectorises for the target's baseline). It is the twin the SIMD paths are tested
//! against.

use super::{block_offset, Dots, Tile, TileKernel, BLOCK_BYTES, TILE_COLS};
use crate::ternary::pack::Format;

/// Plain Rust, any CPU.
pub struct Portable;

impl TileKernel for Portable {
    #[inline(always)]
    unsafe fn dots<const R: usize>(tile: &Tile<'_, R>) -> Dots<R> {
        let layout = tile.layout;
        let planes = layout.planes();
        let mut dots = [[0i32; TILE_COLS]; R];
        let mut codes = [[0u8; BLOCK_BYTES]; 5];
        for b in 0..layout.blocks() {
            let width = layout.block_width(b);
            for (c, weights) in tile.weights.iter().enumerate() {
                decode_block(
                    &weights[block_offset(b)..][..width],
                    layout.format,
                    &mut codes,
                );
                for (r, panel) in tile.panels.iter().enumerate() {
                    let acts = &panel[b * planes * BLOCK_BYTES..][..planes * BLOCK_BYTES];
                    for (plane, acts) in codes.iter().zip(acts.chunks_exact(BLOCK_BYTES)) {
                        dots[r][c] = dots[r][c].wrapping_add(plane_dot(plane, acts));
                    }
                }
            }
        }
        dots
    }
}

/// Decodes the bytes of one block into `codes[p][j]`; bytes past a tail block's width decode
/// as 0 (they meet zero activations). Fixed-length loops, so that they vectorise.
#[inline(always)]
fn decode_block(bytes: &[u8], format: Format, codes: &mut [[u8; BLOCK_BYTES]; 5]) {
    let mut block = [0u8; BLOCK_BYTES];
    block[..bytes.len()].copy_from_slice(bytes);
    match format {
        Format::I2 => {
            // plane p = (byte >> 2p) & 3
            for (p, plane) in codes[..4].iter_mut().enumerate() {
                for (code, &byte) in plane.iter_mut().zip(&block) {
                    *code = (byte >> (2 * p)) & 3;
                }
            }
        }
        Format::T1 => {
            // byte = sum_p c_p 3^(4-p)
            for (p, unit) in [81u8, 27, 9, 3, 1].into_iter().enumerate() {
                for (code, &byte) in codes[p].iter_mut().zip(&block) {
                    *code = byte / unit % 3;
                }
            }
        }
    }
}

/// `sum_j code[j] act[j]` over one plane (at most 64 * 2 * 128, no overflow).
#[inline(always)]
fn plane_dot(codes: &[u8; BLOCK_BYTES], acts: &[i8]) -> i32 {
    codes
        .iter()
        .zip(acts)
        .map(|(&c, &a)| i32::from(c) * i32::from(a))
        .sum()
}
