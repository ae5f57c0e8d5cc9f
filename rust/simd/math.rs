//! Branch-free, vectorisable elementary functions for `f32` and `f64`.
//!
//! None of them calls libm, so a loop that uses them auto-vectorises. Accuracy: a few ulp over
//! the ranges the kernels use. `exp` saturates instead of overflowing: its argument is clamped to
//! `[-87.3, 88]` for `f32` and `[-708, 709]` for `f64` (results stay normal and finite), and NaN
//! propagates.

use super::{Arch, ScalarArch};
use std::fmt::Debug;
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

/// A float the kernels are generic over (`f32` or `f64`).
pub trait Real:
    Copy
    + Send
    + Sync
    + Default
    + Debug
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + 'static
{
    /// 0.
    const ZERO: Self;
    /// 1.
    const ONE: Self;
    /// Negative infinity.
    const NEG_INFINITY: Self;
    /// Converts from `f64` (rounding for `f32`).
    fn from_f64(x: f64) -> Self;
    /// Converts to `f64` exactly.
    fn to_f64(self) -> f64;
    /// e^x, vectorisable (see the module docs for the saturation); `A` decides whether the
    /// polynomial uses fused multiply-adds.
    fn exp_on<A: Arch>(self) -> Self;
    /// 2^x, vectorisable: cheaper than [`Real::exp_on`] because the argument reduction
    /// x = n + f is exact. `exp(a * b)` is `exp2(a * (b * LOG2E))` with `b * LOG2E` computed
    /// once, at the cost of one rounding of the scaled product.
    #[inline(always)]
    fn exp2_on<A: Arch>(self) -> Self {
        let (f, scale) = self
            .max_nan(Self::EXP2_MIN)
            .min_nan(Self::EXP2_MAX)
            .exp2_split();
        horner::<_, A>(f, Self::EXP2_POLY) * scale
    }
    /// [`Real::exp2_on`] for x <= 0 (or NaN), bit for bit, one instruction shorter: it needs
    /// no upper clamp.
    #[inline(always)]
    fn exp2_nonpositive_on<A: Arch>(self) -> Self {
        let (f, scale) = self.max_nan(Self::EXP2_MIN).exp2_split();
        horner::<_, A>(f, Self::EXP2_POLY) * scale
    }
    /// The smallest and largest arguments of [`Real::exp2_split`]: 2^x stays normal.
    const EXP2_MIN: Self;
    /// See [`Real::EXP2_MIN`].
    const EXP2_MAX: Self;
    /// The argument reduction of [`Real::exp2_on`]: x in `[EXP2_MIN, EXP2_MAX]` = n + f with n
    /// an integer and |f| <= 1/2; returns (f, 2^n).
    fn exp2_split(self) -> (Self, Self);
    /// The coefficients of 2^f on |f| <= 1/2, lowest degree first.
    const EXP2_POLY: &'static [Self];
    /// |x|.
    fn magnitude(self) -> Self;
    /// Natural logarithm of a positive, finite, normal number, vectorisable.
    fn ln_positive_on<A: Arch>(self) -> Self;
    /// [`Real::exp_on`] without FMA, for code outside a [`super::Kernel`].
    #[inline(always)]
    fn exp(self) -> Self {
        self.exp_on::<ScalarArch>()
    }
    /// [`Real::exp2_on`] without FMA.
    #[inline(always)]
    fn exp2(self) -> Self {
        self.exp2_on::<ScalarArch>()
    }
    /// [`Real::ln_positive_on`] without FMA.
    #[inline(always)]
    fn ln_positive(self) -> Self {
        self.ln_positive_on::<ScalarArch>()
    }
    /// log2(e), for turning `exp` into `exp2`.
    const LOG2E: Self;
    /// The larger of two values; NaN in `self` propagates.
    #[inline(always)]
    fn max_nan(self, other: Self) -> Self {
        if self < other {
            other
        } else {
            self
        }
    }
    /// The smaller of two values; NaN in `self` propagates.
    #[inline(always)]
    fn min_nan(self, other: Self) -> Self {
        if self > other {
            other
        } else {
            self
        }
    }
    /// log(1 + e^x), computed as x above 20 (torch's threshold) and with the log1p form below.
    #[inline(always)]
    fn softplus_on<A: Arch>(self) -> Self {
        let e = self.exp_on::<A>();
        let u = Self::ONE + e;
        // log1p(e) = log(u) * e / (u - 1) keeps full precision when e is tiny; u == 1 means
        // e is below half an ulp of 1, where log1p(e) = e.
        let log1p = if u == Self::ONE {
            e
        } else {
            u.ln_positive() * (e / (u - Self::ONE))
        };
        if self > Self::from_f64(20.0) {
            self
        } else {
            log1p
        }
    }
    /// x * sigmoid(x) = x / (1 + e^-x).
    #[inline(always)]
    fn silu_on<A: Arch>(self) -> Self {
        self / (Self::ONE + (-self).exp_on::<A>())
    }
    /// [`Real::softplus_on`] without FMA.
    #[inline(always)]
    fn softplus(self) -> Self {
        self.softplus_on::<ScalarArch>()
    }
    /// [`Real::silu_on`] without FMA.
    #[inline(always)]
    fn silu(self) -> Self {
        self.silu_on::<ScalarArch>()
    }
    /// a * b + c, fused when the ISA has FMA (`A::FMA`), a multiply and an add otherwise.
    fn fma<A: Arch>(a: Self, b: Self, c: Self) -> Self;
}

/// Evaluates c[0] + x (c[1] + x (c[2] + ...)) by Horner's rule.
#[inline(always)]
fn horner<T: Real, A: Arch>(x: T, coefficients: &[T]) -> T {
    let mut acc = coefficients[coefficients.len() - 1];
    for &c in coefficients[..coefficients.len() - 1].iter().rev() {
        acc = T::fma::<A>(acc, x, c);
    }
    acc
}

// e^r = sum_k r^k / k! on |r| <= ln2 / 2 after the reduction x = n ln2 + r: degree 7 leaves a
// relative error of (ln2/2)^8 / 8! ~ 5e-9 for f32, degree 13 leaves ~4e-18 for f64.
const EXP_F32: [f32; 8] = [
    1.0,
    1.0,
    1.0 / 2.0,
    1.0 / 6.0,
    1.0 / 24.0,
    1.0 / 120.0,
    1.0 / 720.0,
    1.0 / 5040.0,
];
// 2^f on |f| <= 1/2: for f32 a degree-6 near-minimax fit, whose relative error evaluated in f32
// stays ~1e-7 (as the degree-7 Taylor series did); for f64 the Taylor series
// sum_k (ln2)^k / k! f^k to degree 13, which leaves ~4e-18.
const EXP2_F32: [f32; 7] = [
    1.0,
    std::f32::consts::LN_2,
    0.240_226_48,
    0.055_503_324,
    0.009_618_437,
    0.001_339_887_5,
    0.000_153_533_6,
];
const EXP2_F64: [f64; 14] = [
    1.0,
    std::f64::consts::LN_2,
    0.240_226_506_959_100_7,
    0.055_504_108_664_821_58,
    0.009_618_129_107_628_477,
    0.001_333_355_814_642_844_3,
    0.000_154_035_303_933_816_1,
    1.525_273_380_405_984e-5,
    1.321_548_679_014_431e-6,
    1.017_808_600_923_969_9e-7,
    7.054_911_620_801_123e-9,
    4.445_538_271_870_811e-10,
    2.567_843_599_348_820_4e-11,
    1.369_111_986_821_518_3e-12,
];

const EXP_F64: [f64; 14] = [
    1.0,
    1.0,
    1.0 / 2.0,
    1.0 / 6.0,
    1.0 / 24.0,
    1.0 / 120.0,
    1.0 / 720.0,
    1.0 / 5040.0,
    1.0 / 40320.0,
    1.0 / 362880.0,
    1.0 / 3628800.0,
    1.0 / 39916800.0,
    1.0 / 479001600.0,
    1.0 / 6227020800.0,
];

// log(m) = 2 atanh(s) = 2 (s + s^3/3 + s^5/5 + ...), s = (m - 1) / (m + 1), |s| <= 0.1716 for
// m in [sqrt(1/2), sqrt(2)).
const ATANH_F32: [f32; 6] = [1.0, 1.0 / 3.0, 1.0 / 5.0, 1.0 / 7.0, 1.0 / 9.0, 1.0 / 11.0];
const ATANH_F64: [f64; 12] = [
    1.0,
    1.0 / 3.0,
    1.0 / 5.0,
    1.0 / 7.0,
    1.0 / 9.0,
    1.0 / 11.0,
    1.0 / 13.0,
    1.0 / 15.0,
    1.0 / 17.0,
    1.0 / 19.0,
    1.0 / 21.0,
    1.0 / 23.0,
];

impl Real for f32 {
    const ZERO: f32 = 0.0;
    const ONE: f32 = 1.0;
    const NEG_INFINITY: f32 = f32::NEG_INFINITY;
    const LOG2E: f32 = std::f32::consts::LOG2_E;

    #[inline(always)]
    fn from_f64(x: f64) -> f32 {
        x as f32
    }

    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }

    #[inline(always)]
    fn exp_on<A: Arch>(self) -> f32 {
        // x = n ln2 + r with n = round(x log2 e), read from the low mantissa bits after adding
        // 1.5 * 2^23; r is computed in two steps (Cody-Waite) so that n * LN2_HI is exact.
        const MAGIC: f32 = 12_582_912.0;
        const LN2_HI: f32 = 0.693_359_4;
        const LN2_LO: f32 = -2.121_944_4e-4;
        let x = self.max_nan(-87.3).min_nan(88.0);
        let shifted = x * std::f32::consts::LOG2_E + MAGIC;
        let n = shifted - MAGIC;
        let r = (x - n * LN2_HI) - n * LN2_LO;
        let n_bits = shifted.to_bits().wrapping_sub(MAGIC.to_bits());
        let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
        horner::<_, A>(r, &EXP_F32) * scale
    }

    const EXP2_POLY: &'static [f32] = &EXP2_F32;
    const EXP2_MIN: f32 = -126.0;
    const EXP2_MAX: f32 = 127.0;

    #[inline(always)]
    fn magnitude(self) -> f32 {
        self.abs()
    }

    #[inline(always)]
    fn exp2_split(self) -> (f32, f32) {
        // n = round(x), read from the low mantissa bits after adding 1.5 * 2^23.
        const MAGIC: f32 = 12_582_912.0;
        let x = self;
        let shifted = x + MAGIC;
        let f = x - (shifted - MAGIC);
        let n_bits = shifted.to_bits().wrapping_sub(MAGIC.to_bits());
        (f, f32::from_bits(n_bits.wrapping_add(127) << 23))
    }

    #[inline(always)]
    fn ln_positive_on<A: Arch>(self) -> f32 {
        let bits = self.to_bits();
        // Split x = 2^e m with m in [sqrt(1/2), sqrt(2)) by moving the mantissa's top part.
        let shifted = bits.wrapping_sub(0x3f35_04f3); // bits of sqrt(1/2)
        let e = (shifted as i32 >> 23) as f32;
        let m = f32::from_bits((shifted & 0x007f_ffff).wrapping_add(0x3f35_04f3));
        let s = (m - 1.0) / (m + 1.0);
        let log_m = 2.0 * s * horner::<_, A>(s * s, &ATANH_F32);
        e * std::f32::consts::LN_2 + log_m
    }

    #[inline(always)]
    fn fma<A: Arch>(a: f32, b: f32, c: f32) -> f32 {
        if A::FMA {
            a.mul_add(b, c)
        } else {
            a * b + c
        }
    }
}

impl Real for f64 {
    const ZERO: f64 = 0.0;
    const ONE: f64 = 1.0;
    const NEG_INFINITY: f64 = f64::NEG_INFINITY;
    const LOG2E: f64 = std::f64::consts::LOG2_E;

    #[inline(always)]
    fn from_f64(x: f64) -> f64 {
        x
    }

    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }

    #[inline(always)]
    fn exp_on<A: Arch>(self) -> f64 {
        const MAGIC: f64 = 6_755_399_441_055_744.0; // 1.5 * 2^52
        const LN2_HI: f64 = 6.931_471_803_691_238e-1;
        const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
        let x = self.max_nan(-708.0).min_nan(709.0);
        let shifted = x * std::f64::consts::LOG2_E + MAGIC;
        let n = shifted - MAGIC;
        let r = (x - n * LN2_HI) - n * LN2_LO;
        let n_bits = shifted.to_bits().wrapping_sub(MAGIC.to_bits());
        let scale = f64::from_bits(n_bits.wrapping_add(1023) << 52);
        horner::<_, A>(r, &EXP_F64) * scale
    }

    const EXP2_POLY: &'static [f64] = &EXP2_F64;
    const EXP2_MIN: f64 = -1022.0;
    const EXP2_MAX: f64 = 1023.0;

    #[inline(always)]
    fn magnitude(self) -> f64 {
        self.abs()
    }

    #[inline(always)]
    fn exp2_split(self) -> (f64, f64) {
        const MAGIC: f64 = 6_755_399_441_055_744.0; // 1.5 * 2^52
        let x = self;
        let shifted = x + MAGIC;
        let f = x - (shifted - MAGIC);
        let n_bits = shifted.to_bits().wrapping_sub(MAGIC.to_bits());
        (f, f64::from_bits(n_bits.wrapping_add(1023) << 52))
    }

    #[inline(always)]
    fn ln_positive_on<A: Arch>(self) -> f64 {
        const SQRT_HALF_BITS: u64 = 0x3fe6_a09e_667f_3bcd;
        let shifted = self.to_bits().wrapping_sub(SQRT_HALF_BITS);
        let e = (shifted as i64 >> 52) as f64;
        let m = f64::from_bits((shifted & 0x000f_ffff_ffff_ffff).wrapping_add(SQRT_HALF_BITS));
        let s = (m - 1.0) / (m + 1.0);
        let log_m = 2.0 * s * horner::<_, A>(s * s, &ATANH_F64);
        e * std::f64::consts::LN_2 + log_m
    }

    #[inline(always)]
    fn fma<A: Arch>(a: f64, b: f64, c: f64) -> f64 {
        if A::FMA {
            a.mul_add(b, c)
        } else {
            a * b + c
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(a: f64, b: f64) -> f64 {
        ((a - b) / b).abs()
    }

    #[test]
    fn exp_matches_libm() {
        for i in -2000..=2000 {
            let x = i as f64 * 0.043;
            assert!(rel(x.exp(), Real::exp(x)) < 1e-15, "f64 exp({x})");
            let xf = x as f32;
            assert!(
                rel((xf as f64).exp(), Real::exp(xf) as f64) < 3e-7,
                "f32 exp({xf})"
            );
        }
    }

    #[test]
    fn fused_variants_match_libm() {
        use crate::simd::FmaArch;
        for i in -500..=500 {
            let x = i as f64 * 0.173;
            assert!(rel(x.exp(), x.exp_on::<FmaArch>()) < 1e-15, "f64 exp({x})");
            assert!(
                rel(x.exp2(), x.exp2_on::<FmaArch>()) < 1e-15,
                "f64 exp2({x})"
            );
            let xf = x as f32;
            assert!(rel((xf as f64).exp(), xf.exp_on::<FmaArch>() as f64) < 3e-7);
            let y = 1.5 + x.abs() * 7.0;
            assert!(
                rel(y.ln(), y.ln_positive_on::<FmaArch>()) < 1e-15,
                "f64 ln({y})"
            );
        }
    }

    #[test]
    fn exp2_matches_libm() {
        for i in -3000..=3000 {
            let x = i as f64 * 0.041;
            assert!(rel(x.exp2(), Real::exp2(x)) < 1e-15, "f64 exp2({x})");
            let xf = x as f32;
            assert!(
                rel((xf as f64).exp2(), Real::exp2(xf) as f64) < 2e-7,
                "f32 exp2({xf})"
            );
        }
        assert!(Real::exp2(f32::NAN).is_nan() && Real::exp2(f64::NAN).is_nan());
        assert!(Real::exp2(-1e6_f32) < 1e-37 && Real::exp2(1e6_f32).is_finite());
        assert_eq!(Real::exp2(0.0_f32), 1.0);
    }

    #[test]
    fn exp2_nonpositive_equals_exp2_on_bit_for_bit() {
        use crate::simd::FmaArch;
        for i in 0..=3000 {
            let x = -(i as f64) * 0.37;
            let (a, b) = (x.exp2_nonpositive_on::<FmaArch>(), x.exp2_on::<FmaArch>());
            assert_eq!(a.to_bits(), b.to_bits(), "f64 at {x}");
            let xf = x as f32;
            let (a, b) = (xf.exp2_nonpositive_on::<FmaArch>(), xf.exp2_on::<FmaArch>());
            assert_eq!(a.to_bits(), b.to_bits(), "f32 at {xf}");
        }
        assert!(f32::NAN.exp2_nonpositive_on::<ScalarArch>().is_nan());
        assert_eq!(
            f32::NEG_INFINITY.exp2_nonpositive_on::<ScalarArch>(),
            2f32.powi(-126)
        );
    }

    #[test]
    fn exp_saturates_and_keeps_nan() {
        assert!(Real::exp(-1.0e4_f32) >= 0.0 && Real::exp(-1.0e4_f32) < 1e-37);
        assert!(Real::exp(1.0e4_f32).is_finite());
        assert!(Real::exp(f32::NAN).is_nan());
        assert!(Real::exp(f64::NAN).is_nan());
        assert_eq!(Real::exp(0.0_f32), 1.0);
        assert_eq!(Real::exp(0.0_f64), 1.0);
    }

    #[test]
    fn ln_matches_libm() {
        for i in 1..5000 {
            let x = 1.0 + i as f64 * 0.37 + (i * i) as f64;
            assert!(rel(x.ln(), x.ln_positive()) < 1e-15, "f64 ln({x})");
            let xf = x as f32;
            assert!(
                rel((xf as f64).ln(), xf.ln_positive() as f64) < 2e-7,
                "f32 ln({xf})"
            );
        }
        assert!((1.0_f64.ln_positive()).abs() < 1e-300);
    }

    #[test]
    fn softplus_edges() {
        let exact = |x: f64| if x > 20.0 { x } else { x.exp().ln_1p() };
        for x in [
            -100.0, -30.0, -5.0, -1e-3, 0.0, 1e-3, 3.0, 19.99, 20.0, 20.0001, 1e4,
        ] {
            let got = Real::softplus(x);
            assert!(
                (got - exact(x)).abs() <= 1e-14 * exact(x).abs().max(1e-30),
                "f64 at {x}"
            );
            let got32 = Real::softplus(x as f32) as f64;
            assert!(got32.is_finite());
            assert!(
                (got32 - exact(x)).abs() <= 2e-6 * exact(x).abs().max(1e-30),
                "f32 at {x}"
            );
        }
        assert!(Real::softplus(f32::NAN).is_nan());
    }

    #[test]
    fn silu_matches_definition() {
        for i in -300..=300 {
            let x = i as f64 * 0.1;
            let want = x / (1.0 + (-x).exp());
            assert!((Real::silu(x) - want).abs() <= 1e-15 * want.abs().max(1e-300));
        }
    }
}
