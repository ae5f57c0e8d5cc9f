//! Packed storage of ternary weights: the `"i2"` and `"t1"` formats and their byte layout.
//!
//! A weight matrix is `(N, K)` (out_features, in_features) with entries t in {-1, 0, 1},
//! stored row by row as the *codes* c = t + 1 in {0, 1, 2}. Each row is cut into blocks of
//! `planes` x 64 weights; block b of a row occupies 64 bytes, and byte j of it holds the
//! weights `base + 64 p + j` for p = 0..planes, so that plane p of a block lines up with the
//! contiguous activation slice `[base + 64 p, base + 64 p + 64)`. The last, partial block is
//! narrower: `width = ceil(rest / planes)` bytes, plane p covering `[base + width p, ...)`.
//! Positions past K are padding and hold t = 0.
//!
//! - `"i2"`: 4 planes; plane p sits at bits `2p..2p+2` (LSB first). 2 bits per weight.
//! - `"t1"`: 5 planes in base 3: the byte is `v = sum_p c_p 3^(4 - p)` in 0..243 (plane 0 most
//!   significant). 1.6 bits per weight. Kernels split off plane 0 by comparing v with 81 and 162
//!   and decode the rest, `v mod 81`, with a table or with the same comparisons against 27, 9, 3.

use crate::error::{check_len, checked_product, KernelError};
use rayon::prelude::*;

/// Bytes per full block: one 512-bit load.
pub const BLOCK_BYTES: usize = 64;

/// A storage format of ternary weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// 2 bits per weight, four weights per byte.
    I2,
    /// Base 3, five weights per byte (1.6 bits per weight).
    T1,
}

impl Format {
    /// The name Python uses (`"i2"` or `"t1"`).
    pub fn name(self) -> &'static str {
        match self {
            Format::I2 => "i2",
            Format::T1 => "t1",
        }
    }

    /// Parses `"i2"` or `"t1"`.
    pub fn from_name(name: &str) -> Result<Format, KernelError> {
        match name {
            "i2" => Ok(Format::I2),
            "t1" => Ok(Format::T1),
            _ => Err(KernelError::value(
                "format",
                format!("expected 'i2' or 't1', got {name:?}"),
            )),
        }
    }

    /// Weights per byte: the number of planes of a block.
    pub fn planes(self) -> usize {
        match self {
            Format::I2 => 4,
            Format::T1 => 5,
        }
    }

    /// The codes `[c_0, .., c_{planes-1}]` held by one byte (unused entries are 0).
    #[inline(always)]
    pub fn decode(self, byte: u8) -> [u8; 5] {
        match self {
            Format::I2 => I2_DIGITS[byte as usize],
            Format::T1 => T1_DIGITS[byte as usize],
        }
    }

    /// The byte holding `codes[..planes]`, each in {0, 1, 2}.
    pub fn encode(self, codes: [u8; 5]) -> u8 {
        match self {
            Format::I2 => codes[..4]
                .iter()
                .enumerate()
                .fold(0u8, |byte, (p, &c)| byte | (c << (2 * p))),
            // v = sum_p c_p 3^(4-p) <= 242
            Format::T1 => codes.iter().fold(0u8, |v, &c| 3 * v + c),
        }
    }

    /// Whether `byte` is a valid encoding (every i2 field <= 2; a t1 byte < 243).
    #[inline]
    pub fn is_valid(self, byte: u8) -> bool {
        match self {
            // A 2-bit field equal to 3 has both of its bits set.
            Format::I2 => byte & (byte >> 1) & 0x55 == 0,
            Format::T1 => byte < T1_VALUES,
        }
    }
}

/// `I2_DIGITS[b][p] = (b >> 2p) & 3`.
static I2_DIGITS: [[u8; 5]; 256] = i2_digits();
/// `T1_DIGITS[v]`: the five base-3 digits of v, most significant first (zeros for v >= 243).
static T1_DIGITS: [[u8; 5]; 256] = t1_digits();
/// The number of t1 byte values: 3^5.
pub const T1_VALUES: u8 = 243;

const fn i2_digits() -> [[u8; 5]; 256] {
    let mut table = [[0u8; 5]; 256];
    let mut b = 0;
    while b < 256 {
        let mut p = 0;
        while p < 4 {
            table[b][p] = ((b >> (2 * p)) & 3) as u8;
            p += 1;
        }
        b += 1;
    }
    table
}

const fn t1_digits() -> [[u8; 5]; 256] {
    let mut table = [[0u8; 5]; 256];
    let mut v = 0;
    while v < T1_VALUES as usize {
        let mut rest = v;
        let mut p = 5;
        while p > 0 {
            p -= 1;
            table[v][p] = (rest % 3) as u8;
            rest /= 3;
        }
        v += 1;
    }
    table
}

/// Where the weights of one row live: full blocks, then one narrower tail block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The storage format.
    pub format: Format,
    /// Weights per row (in_features).
    pub k: usize,
    full_blocks: usize,
    tail_width: usize,
}

impl Layout {
    /// The layout of rows of `k` weights in `format`.
    pub fn new(format: Format, k: usize) -> Layout {
        let block = format.planes() * BLOCK_BYTES;
        let rest = k % block;
        Layout {
            format,
            k,
            full_blocks: k / block,
            tail_width: rest.div_ceil(format.planes()),
        }
    }

    /// Weights per byte.
    #[inline]
    pub fn planes(&self) -> usize {
        self.format.planes()
    }

    /// Blocks per row, the tail included.
    #[inline]
    pub fn blocks(&self) -> usize {
        self.full_blocks + usize::from(self.tail_width > 0)
    }

    /// Blocks of the full width [`BLOCK_BYTES`].
    #[inline]
    pub fn full_blocks(&self) -> usize {
        self.full_blocks
    }

    /// Bytes of the tail block (0 when K fills the full blocks exactly).
    #[inline]
    pub fn tail_width(&self) -> usize {
        self.tail_width
    }

    /// Bytes of block `b`: one plane's width.
    #[inline]
    pub fn block_width(&self, b: usize) -> usize {
        if b < self.full_blocks {
            BLOCK_BYTES
        } else {
            self.tail_width
        }
    }

    /// Bytes of one packed row.
    #[inline]
    pub fn row_bytes(&self) -> usize {
        self.full_blocks * BLOCK_BYTES + self.tail_width
    }

    /// Bytes of one row of activations in kernel order: every plane of every block padded to
    /// [`BLOCK_BYTES`] (see [`fill_panel`]).
    #[inline]
    pub fn panel_len(&self) -> usize {
        self.blocks() * self.planes() * BLOCK_BYTES
    }

    /// The first weight of block `b`.
    #[inline]
    fn block_start(&self, b: usize) -> usize {
        b * self.planes() * BLOCK_BYTES
    }

    /// Calls `f(byte_index, plane, k)` for every weight position `k < K` of a row.
    fn for_each_position(&self, mut f: impl FnMut(usize, usize, usize)) {
        for b in 0..self.blocks() {
            let (width, start) = (self.block_width(b), self.block_start(b));
            for p in 0..self.planes() {
                for j in 0..width {
                    let k = start + width * p + j;
                    if k < self.k {
                        f(b * BLOCK_BYTES + j, p, k);
                    }
                }
            }
        }
    }
}

/// A packed `(N, K)` ternary matrix borrowed from its storage.
#[derive(Clone, Copy, Debug)]
pub struct PackedMatrix<'a> {
    /// Geometry of each row.
    pub layout: Layout,
    /// Rows (out_features).
    pub n: usize,
    /// `n * layout.row_bytes()` bytes, row after row.
    pub data: &'a [u8],
}

impl<'a> PackedMatrix<'a> {
    /// Checks that `data` has the size of an `(n, k)` matrix in `format`.
    pub fn new(
        data: &'a [u8],
        n: usize,
        k: usize,
        format: Format,
    ) -> Result<PackedMatrix<'a>, KernelError> {
        let layout = Layout::new(format, k);
        check_len("packed", data, &[n, layout.row_bytes()])?;
        Ok(PackedMatrix { layout, n, data })
    }

    /// The packed bytes of row `i`.
    #[inline]
    pub fn row(&self, i: usize) -> &'a [u8] {
        let len = self.layout.row_bytes();
        &self.data[i * len..(i + 1) * len]
    }
}

/// Packs the ternary values `trits` (`(n, k)`, each in {-1, 0, 1}) into `format`.
pub fn pack(trits: &[i8], n: usize, k: usize, format: Format) -> Result<Vec<u8>, KernelError> {
    check_len("codes", trits, &[n, k])?;
    let layout = Layout::new(format, k);
    if let Some(bad) = trits.par_iter().position_first(|t| !(-1..=1).contains(t)) {
        return Err(KernelError::value(
            "codes",
            format!(
                "expected values in {{-1, 0, 1}}, got {} at index ({}, {})",
                trits[bad],
                bad / k,
                bad % k
            ),
        ));
    }
    let mut packed = vec![0u8; checked_product("codes", &[n, layout.row_bytes()])?];
    if layout.row_bytes() > 0 {
        packed
            .par_chunks_mut(layout.row_bytes())
            .zip(trits.par_chunks(k))
            .for_each(|(out, row)| pack_row(row, &layout, out));
    }
    Ok(packed)
}

/// Packs one row of ternary values (already checked to be in {-1, 0, 1}).
pub fn pack_row(trits: &[i8], layout: &Layout, out: &mut [u8]) {
    // Padding positions keep t = 0, i.e. code 1.
    let mut codes = vec![[1u8, 1, 1, 1, 1]; out.len()];
    layout.for_each_position(|byte, plane, k| codes[byte][plane] = (trits[k] + 1) as u8);
    for (o, c) in out.iter_mut().zip(&codes) {
        *o = layout.format.encode(*c);
    }
}

/// Unpacks a `(n, k)` matrix to its ternary values.
pub fn unpack(matrix: &PackedMatrix<'_>) -> Vec<i8> {
    let k = matrix.layout.k;
    let mut trits = vec![0i8; matrix.n * k];
    if k > 0 {
        trits
            .par_chunks_mut(k)
            .enumerate()
            .for_each(|(i, out)| unpack_row(matrix.row(i), &matrix.layout, out));
    }
    trits
}

/// Unpacks one row to ternary values.
pub fn unpack_row(bytes: &[u8], layout: &Layout, out: &mut [i8]) {
    layout.for_each_position(|byte, plane, k| {
        out[k] = layout.format.decode(bytes[byte])[plane] as i8 - 1;
    });
}

/// Checks that every byte of `matrix` is a valid encoding of its format (for data read from a
/// file, which may be corrupt).
pub fn validate(matrix: &PackedMatrix<'_>) -> Result<(), KernelError> {
    let format = matrix.layout.format;
    match matrix
        .data
        .par_iter()
        .position_first(|&b| !format.is_valid(b))
    {
        None => Ok(()),
        Some(at) => Err(KernelError::value(
            "packed",
            format!(
                "byte {at} (value {}) is not a valid '{}' encoding",
                matrix.data[at],
                format.name()
            ),
        )),
    }
}

/// Copies one row of int8 activations `q` (length K) to kernel order `panel`
/// ([`Layout::panel_len`] bytes): plane p of block b at `(b planes + p) 64`, each plane
/// zero-padded to 64 bytes, so that every block of the weights meets 64-byte activation slices.
pub fn fill_panel(q: &[i8], layout: &Layout, panel: &mut [i8]) {
    let planes = layout.planes();
    for b in 0..layout.blocks() {
        let (width, start) = (layout.block_width(b), layout.block_start(b));
        for p in 0..planes {
            let dest = &mut panel[(b * planes + p) * BLOCK_BYTES..][..BLOCK_BYTES];
            let from = (start + width * p).min(layout.k);
            let to = (start + width * (p + 1)).min(layout.k);
            dest[..to - from].copy_from_slice(&q[from..to]);
            dest[to - from..].fill(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t1_digits_round_trip_all_243_values() {
        for v in 0..243u32 {
            let codes = [v / 81, v / 27 % 3, v / 9 % 3, v / 3 % 3, v % 3].map(|c| c as u8);
            let byte = Format::T1.encode(codes);
            assert_eq!(u32::from(byte), v);
            assert!(Format::T1.is_valid(byte));
            assert_eq!(Format::T1.decode(byte), codes, "v = {v}");
        }
        assert!(!Format::T1.is_valid(243));
    }

    #[test]
    fn i2_validity() {
        assert!(Format::I2.is_valid(0b10_01_00_10));
        assert!(!Format::I2.is_valid(0b00_11_00_00));
        assert_eq!(Format::I2.decode(0b10_01_00_10), [2, 0, 1, 2, 0]);
    }

    fn trits(n: usize, k: usize, seed: u64) -> Vec<i8> {
        let mut state = seed;
        (0..n * k)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 33) % 3) as i8 - 1
            })
            .collect()
    }

    #[test]
    fn pack_unpack_round_trip() {
        for format in [Format::I2, Format::T1] {
            for k in [1, 3, 17, 255, 256, 257, 319, 320, 321, 1000] {
                let t = trits(3, k, k as u64);
                let packed = pack(&t, 3, k, format).unwrap();
                let matrix = PackedMatrix::new(&packed, 3, k, format).unwrap();
                assert_eq!(unpack(&matrix), t, "{format:?} k = {k}");
                validate(&matrix).unwrap();
            }
        }
    }

    #[test]
    fn row_bytes_are_compact() {
        assert_eq!(Layout::new(Format::I2, 4096).row_bytes(), 1024);
        assert_eq!(Layout::new(Format::I2, 8640).row_bytes(), 2160);
        assert_eq!(Layout::new(Format::T1, 2560).row_bytes(), 512);
        assert_eq!(Layout::new(Format::T1, 4096).row_bytes(), 820);
        assert_eq!(Layout::new(Format::T1, 1).row_bytes(), 1);
    }

    #[test]
    fn panel_lines_up_with_planes() {
        let layout = Layout::new(Format::I2, 300);
        let q: Vec<i8> = (0..300).map(|i| (i % 100) as i8).collect();
        let mut panel = vec![7i8; layout.panel_len()];
        fill_panel(&q, &layout, &mut panel);
        // Full block: plane 1 starts at weight 64.
        assert_eq!(panel[64], q[64]);
        // Tail: 44 weights, width 11; plane 3 covers 256 + 33..256 + 44.
        let tail = 4 * 64;
        assert_eq!(panel[tail + 3 * 64], q[256 + 33]);
        assert_eq!(panel[tail + 3 * 64 + 10], q[299]);
        assert_eq!(panel[tail + 3 * 64 + 11], 0);
    }
}
