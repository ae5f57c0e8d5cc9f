//! Small dense matrix products for the chunked SSD scan: `C (+)= A B` on row-major slices.
//!
//! The products of one SSD chunk are small (a few hundred rows and columns) and come with
//! strided operands (rows of x with stride `heads * headdim`, B and C rows with stride
//! `groups * dstate`), so a register-blocked kernel of our own fits better than a general
//! GEMM: A is packed once per row tile (MR rows, k-major, with an optional per-k scale folded
//! in), B is read in place when its columns are contiguous, and every MR x NR tile of the
//! result is accumulated in a fixed-size array that the compiler keeps in vector registers.
//! Column tiles are the outer loop, so a panel of B (K x NR) is reused from L1 by every row
//! tile (B is often a whole SSD state, larger than L1).
//! The tile shape is chosen per ISA (16 accumulator registers with AVX-512, 12 with AVX2).
//!
//! ```text
//! C[i][j] = sum_{k < K(i)} (A[i][k] s_k) B[k][j]                   (overwrite), or
//! C[i][j] = u_j C[i][j] + sum_{k < K(i)} (A[i][k] s_k) B[k][j]      (scale columns, add), or
//! C[i][j] += r[i][j / blk] * sum_{k < K(i)} (A[i][k] s_k) B[k][j]   (scale per block, add)
//! ```
//! with `K(i) = K` (full) or, for a causal product, the end of the row tile of i plus an
//! offset (A is zero beyond its diagonal, so the skipped terms are zeros).
//!
//! The summation order over k is fixed (k ascending, one accumulator per output), so a
//! result does not depend on how the callers split their work between threads.

use crate::simd::{self, Arch, Isa, Kernel, Real};

/// A read-only matrix view: element (i, k) is `data[offset + i * row_stride + k * col_stride]`.
#[derive(Clone, Copy, Debug)]
pub struct Strided<'a, T> {
    /// The backing slice.
    pub data: &'a [T],
    /// Index of element (0, 0).
    pub offset: usize,
    /// Distance between rows.
    pub row_stride: usize,
    /// Distance between columns.
    pub col_stride: usize,
}

impl<T: Copy> Strided<'_, T> {
    /// Element (i, k).
    #[inline(always)]
    pub fn at(&self, i: usize, k: usize) -> T {
        self.data[self.offset + i * self.row_stride + k * self.col_stride]
    }
}

/// Which terms of the sum over k a row needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Depth {
    /// All k < K.
    Full,
    /// Row tile `[i0, i1)` sums over k < `offset + i1` (A is lower triangular, shifted).
    Causal {
        /// Added to the row index to get the diagonal's column.
        offset: usize,
    },
}

/// Which output columns a row needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Columns {
    /// All columns.
    All,
    /// Only column tiles that reach the start of the row tile: the upper triangle (entries
    /// below the diagonal inside a computed tile are left as computed).
    UpperTriangle,
}

/// How a tile is written into C.
#[derive(Clone, Copy, Debug)]
pub enum Store<'a, T> {
    /// C = A B.
    Overwrite,
    /// C[i][j] = s_j C[i][j] + (A B)[i][j], with `s` of length N.
    ScaleColumnsAdd(&'a [T]),
    /// C[i][j] += r[i * ld + j / block] (A B)[i][j]: one scale per row and block of columns.
    AddGridScaled {
        /// The scales, row-major.
        scale: &'a [T],
        /// Distance between rows of `scale`.
        ld: usize,
        /// Columns per block.
        block: usize,
    },
}

/// One product `C (+)= A B` of sizes (M x K) (K x N). B's columns are contiguous: element
/// (k, j) is `b[k * ldb + j]`.
#[derive(Clone, Copy, Debug)]
pub struct Product<'a, T> {
    /// Rows of A and C.
    pub m: usize,
    /// Columns of B and C.
    pub n: usize,
    /// Columns of A, rows of B.
    pub k: usize,
    /// The left operand.
    pub a: Strided<'a, T>,
    /// Optional scale of column k of A (length K).
    pub a_col_scale: Option<&'a [T]>,
    /// The right operand's data, starting at element (0, 0).
    pub b: &'a [T],
    /// Distance between rows of B.
    pub ldb: usize,
    /// Terms summed per row.
    pub depth: Depth,
    /// Columns written per row.
    pub columns: Columns,
}

/// Computes `product` into `c` (element (i, j) at `c[i * ldc + j]`) on the SIMD path `isa`.
pub fn matmul<T: Real>(
    isa: Isa,
    product: Product<'_, T>,
    c: &mut [T],
    ldc: usize,
    store: Store<'_, T>,
) {
    if product.m == 0 || product.n == 0 {
        return;
    }
    simd::dispatch_on(
        isa,
        MatmulJob {
            isa,
            product,
            c,
            ldc,
            store,
        },
    );
}

struct MatmulJob<'a, 'c, T> {
    isa: Isa,
    product: Product<'a, T>,
    c: &'c mut [T],
    ldc: usize,
    store: Store<'a, T>,
}

impl<T: Real> Kernel for MatmulJob<'_, '_, T> {
    type Output = ();

    #[inline(always)]
    fn run<A: Arch>(self) {
        let f32_sized = std::mem::size_of::<T>() == 4;
        // Accumulators: MR * NR / lanes registers, leaving room for B rows and broadcasts.
        match (A::FMA, self.isa, f32_sized) {
            (false, _, true) => self.tiles::<A, 4, 8>(),
            (false, _, false) => self.tiles::<A, 4, 4>(),
            (true, Isa::Avx512, true) => self.tiles::<A, 8, 32>(),
            (true, Isa::Avx512, false) => self.tiles::<A, 8, 16>(),
            (true, _, true) => self.tiles::<A, 6, 16>(),
            (true, _, false) => self.tiles::<A, 6, 8>(),
        }
    }
}

impl<T: Real> MatmulJob<'_, '_, T> {
    /// Packs every row tile of A that needs it once, then walks the column tiles of C and,
    /// inside each, the row tiles: the column panel of B stays in L1 across the row tiles.
    #[inline(always)]
    fn tiles<A: Arch, const MR: usize, const NR: usize>(self) {
        let p = self.product;
        let row_tiles = p.m.div_ceil(MR);
        // k < shared: every row of the tile; shared <= k < depth: the diagonal block, where
        // row i only takes k <= offset + i0 + i (A is zero beyond, and skipping the zeros
        // keeps a NaN or inf of a later row of B out of earlier rows).
        let terms = |i0: usize, rows: usize| match p.depth {
            Depth::Full => (p.k, p.k),
            Depth::Causal { offset } => (p.k.min(offset + i0), p.k.min(offset + i0 + rows)),
        };
        // Column k of row tile t is `a_cols[k * a_step..][..MR]`: read in place when the rows
        // are contiguous and unscaled, packed (and zero-padded) otherwise.
        let direct = |rows: usize| p.a.row_stride == 1 && rows == MR && p.a_col_scale.is_none();
        let mut a_pack = Vec::new();
        if (0..row_tiles).any(|t| !direct(MR.min(p.m - t * MR))) {
            a_pack.resize(row_tiles * p.k * MR, T::ZERO);
            for (t, pack) in a_pack.chunks_exact_mut(p.k * MR).enumerate() {
                let (i0, rows) = (t * MR, MR.min(p.m - t * MR));
                if !direct(rows) {
                    pack_a::<T, MR>(&p, i0, rows, terms(i0, rows).1, pack);
                }
            }
        }
        let a_tile = |t: usize| -> (&[T], usize) {
            let (i0, rows) = (t * MR, MR.min(p.m - t * MR));
            if direct(rows) {
                (&p.a.data[p.a.offset + i0..], p.a.col_stride)
            } else {
                (&a_pack[t * p.k * MR..(t + 1) * p.k * MR], MR)
            }
        };
        let mut b_edge = Vec::new();
        for j0 in (0..p.n).step_by(NR) {
            let cols = NR.min(p.n - j0);
            if cols < NR {
                b_edge.resize(p.k * NR, T::ZERO);
                pack_b_edge(&p, j0, cols, p.k, NR, &mut b_edge);
            }
            for t in 0..row_tiles {
                let (i0, rows) = (t * MR, MR.min(p.m - t * MR));
                if p.columns == Columns::UpperTriangle && j0 < i0 / NR * NR {
                    continue;
                }
                let (shared, depth) = terms(i0, rows);
                let a = a_tile(t);
                let acc = if cols == NR {
                    tile::<T, A, MR, NR>(a, &p.b[j0..], p.ldb, (shared, depth))
                } else {
                    tile::<T, A, MR, NR>(a, &b_edge, NR, (shared, depth))
                };
                let target = TileTarget { i0, j0, rows, cols };
                store_tile(&acc, &mut *self.c, self.ldc, target, self.store);
            }
        }
    }
}

/// Copies rows `i0..i0 + rows` of A (times the column scale) to `[k][MR]`, zero-padding the
/// missing rows.
#[inline(always)]
fn pack_a<T: Real, const MR: usize>(
    p: &Product<'_, T>,
    i0: usize,
    rows: usize,
    depth: usize,
    a_pack: &mut [T],
) {
    let a = &p.a;
    if a.row_stride == 1 && rows == MR {
        // Column k of the tile is MR contiguous elements: a vectorisable copy.
        for (k, column) in a_pack.chunks_exact_mut(MR).take(depth).enumerate() {
            let scale = p.a_col_scale.map_or(T::ONE, |s| s[k]);
            let start = a.offset + i0 + k * a.col_stride;
            let source: &[T; MR] = a.data[start..start + MR].try_into().expect("MR rows");
            let column: &mut [T; MR] = column.try_into().expect("MR rows");
            for (v, &s) in column.iter_mut().zip(source) {
                *v = s * scale;
            }
        }
        return;
    }
    for (k, column) in a_pack.chunks_exact_mut(MR).take(depth).enumerate() {
        let scale = p.a_col_scale.map_or(T::ONE, |s| s[k]);
        for (i, v) in column.iter_mut().enumerate() {
            *v = if i < rows {
                a.at(i0 + i, k) * scale
            } else {
                T::ZERO
            };
        }
    }
}

/// Copies columns `j0..j0 + cols` of B to `[k][nr]`, zero-padding the missing columns.
#[inline(always)]
fn pack_b_edge<T: Real>(
    p: &Product<'_, T>,
    j0: usize,
    cols: usize,
    depth: usize,
    nr: usize,
    b_edge: &mut [T],
) {
    for (k, row) in b_edge.chunks_exact_mut(nr).take(depth).enumerate() {
        row.fill(T::ZERO);
        row[..cols].copy_from_slice(&p.b[k * p.ldb + j0..k * p.ldb + j0 + cols]);
    }
}

/// `acc[j] += a * b[j]` over one row of a register tile.
#[inline(always)]
fn fma_row<T: Real, A: Arch, const NR: usize>(acc: &mut [T; NR], a: T, b: &[T; NR]) {
    for (c, &bv) in acc.iter_mut().zip(b) {
        *c = T::fma::<A>(a, bv, *c);
    }
}

/// The most rows a register tile has.
const MAX_ROWS: usize = 8;

/// The register tile: `acc[i][j] = sum_{k < depth, k < shared + i + 1} a_cols[k * a_step + i]
/// * b[k * ldb + j]`.
///
/// The rows are written out one by one (constant-folded `get_mut(i)`, i < [`MAX_ROWS`])
/// rather than looped over: a loop over the rows invites the vectoriser to run across them
/// with gathers and scatters of the accumulators (which it does for AVX-512), instead of
/// across the contiguous columns.
#[inline(always)]
fn tile<T: Real, A: Arch, const MR: usize, const NR: usize>(
    (a_cols, a_step): (&[T], usize),
    b: &[T],
    ldb: usize,
    (shared, depth): (usize, usize),
) -> [[T; NR]; MR] {
    const { assert!(MR <= MAX_ROWS) };
    let mut acc = [[T::ZERO; NR]; MR];
    let column = |k: usize| -> (&[T; MR], &[T; NR]) {
        let a_col = a_cols[k * a_step..k * a_step + MR].try_into();
        let b_row = b[k * ldb..k * ldb + NR].try_into();
        (
            a_col.expect("a slice of MR elements"),
            b_row.expect("a slice of NR elements"),
        )
    };
    // `first`: the first row that takes k (rows before the diagonal block take every k).
    macro_rules! rows {
        ($a_col:expr, $b_row:expr, $first:expr; $($i:literal),*) => {$(
            if let (Some(row), Some(&a)) = (acc.get_mut($i), $a_col.get($i)) {
                if $i >= $first {
                    fma_row::<T, A, NR>(row, a, $b_row);
                }
            }
        )*};
    }
    for k in 0..shared.min(depth) {
        let (a_col, b_row) = column(k);
        rows!(a_col, b_row, 0; 0, 1, 2, 3, 4, 5, 6, 7);
    }
    for k in shared.min(depth)..depth {
        let (a_col, b_row) = column(k);
        rows!(a_col, b_row, k - shared; 0, 1, 2, 3, 4, 5, 6, 7);
    }
    acc
}

/// Where a tile lands in C.
#[derive(Clone, Copy)]
struct TileTarget {
    i0: usize,
    j0: usize,
    rows: usize,
    cols: usize,
}

#[inline(always)]
fn store_tile<T: Real, const MR: usize, const NR: usize>(
    acc: &[[T; NR]; MR],
    c: &mut [T],
    ldc: usize,
    at: TileTarget,
    store: Store<'_, T>,
) {
    for (i, acc_row) in acc.iter().enumerate().take(at.rows) {
        let start = (at.i0 + i) * ldc + at.j0;
        let row = &mut c[start..start + at.cols];
        match store {
            Store::Overwrite => row.copy_from_slice(&acc_row[..at.cols]),
            Store::ScaleColumnsAdd(scale) => {
                let scale = &scale[at.j0..at.j0 + at.cols];
                for ((cv, &v), &s) in row.iter_mut().zip(acc_row).zip(scale) {
                    *cv = s * *cv + v;
                }
            }
            Store::AddGridScaled { scale, ld, block } => {
                let scales = &scale[(at.i0 + i) * ld..];
                let (first, last) = (at.j0 / block, (at.j0 + at.cols - 1) / block);
                if first == last {
                    let r = scales[first];
                    for (cv, &v) in row.iter_mut().zip(acc_row) {
                        *cv += r * v;
                    }
                } else {
                    for (j, (cv, &v)) in row.iter_mut().zip(acc_row).enumerate() {
                        *cv += scales[(at.j0 + j) / block] * v;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain triple loop in f64.
    fn naive(p: &Product<'_, f64>) -> Vec<f64> {
        let mut c = vec![0.0; p.m * p.n];
        for i in 0..p.m {
            for j in 0..p.n {
                let mut s = 0.0;
                for k in 0..p.k {
                    s += p.a.at(i, k) * p.a_col_scale.map_or(1.0, |v| v[k]) * p.b[k * p.ldb + j];
                }
                c[i * p.n + j] = s;
            }
        }
        c
    }

    fn values(len: usize, seed: u64) -> Vec<f64> {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 11) as f64 / (1u64 << 53) as f64) - 0.5
            })
            .collect()
    }

    #[test]
    fn matches_naive_for_odd_sizes_and_strides_on_every_path() {
        for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
            for (m, n, k) in [(1, 1, 1), (7, 5, 3), (9, 33, 17), (16, 64, 40), (13, 40, 1)] {
                let a_data = values(2 * m * k + 3, 1);
                let b_data = values(k * (n + 2), 2);
                let scale = values(k, 3);
                // A transposed in memory (column-major) with an offset.
                let a = Strided {
                    data: &a_data,
                    offset: 3,
                    row_stride: 1,
                    col_stride: 2 * m,
                };
                let p = Product {
                    m,
                    n,
                    k,
                    a,
                    a_col_scale: Some(&scale),
                    b: &b_data,
                    ldb: n + 2,
                    depth: Depth::Full,
                    columns: Columns::All,
                };
                let want = naive(&p);
                let mut got = vec![0.0; m * n];
                matmul(isa, p, &mut got, n, Store::Overwrite);
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() < 1e-12, "{isa:?} {m}x{n}x{k}: {g} vs {w}");
                }
                let cols = values(n, 7);
                let mut by_column = got.clone();
                matmul(isa, p, &mut by_column, n, Store::ScaleColumnsAdd(&cols));
                let grid = values(m * 3, 8);
                let mut by_grid = got.clone();
                let store = Store::AddGridScaled {
                    scale: &grid,
                    ld: 3,
                    block: n.div_ceil(3).max(1),
                };
                matmul(isa, p, &mut by_grid, n, store);
                for i in 0..m {
                    for j in 0..n {
                        let w = want[i * n + j];
                        assert!((by_column[i * n + j] - (cols[j] + 1.0) * w).abs() < 1e-12);
                        let r = grid[i * 3 + j / n.div_ceil(3).max(1)];
                        assert!((by_grid[i * n + j] - (1.0 + r) * w).abs() < 1e-12);
                    }
                }
            }
        }
    }

    #[test]
    fn causal_depth_skips_only_zero_terms() {
        let (m, n) = (21, 19);
        let mut a_data = values(m * m, 5);
        for i in 0..m {
            for k in i + 1..m {
                a_data[i * m + k] = 0.0;
            }
        }
        let b_data = values(m * n, 6);
        let a = Strided {
            data: &a_data,
            offset: 0,
            row_stride: m,
            col_stride: 1,
        };
        let full = Product {
            m,
            n,
            k: m,
            a,
            a_col_scale: None,
            b: &b_data,
            ldb: n,
            depth: Depth::Full,
            columns: Columns::All,
        };
        let causal = Product {
            depth: Depth::Causal { offset: 0 },
            ..full
        };
        let want = naive(&full);
        for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
            let mut got = vec![0.0; m * n];
            matmul(isa, causal, &mut got, n, Store::Overwrite);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-12);
            }
        }
    }
}
