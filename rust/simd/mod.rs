//! Run-time ISA dispatch and vectorisable math.
//!
//! A kernel is written once as plain, branch-free Rust inside [`Kernel::run`], generic over an
//! [`Arch`]. [`dispatch`] calls it from a function compiled with the target features of the
//! best instruction set the CPU has (AVX-512, AVX2 + FMA, or the portable baseline), so the same
//! source is auto-vectorised for each. `SEQKERN_SIMD=scalar` (or [`force_isa`]) forces the
//! portable path, which is also what other architectures run; `SEQKERN_SIMD=avx2` forces AVX2
//! on an AVX-512 CPU. [`with_isa`] chooses the ISA for the calls made on one thread only (tests
//! compare the paths with it side by side without touching the process-wide choice).

pub mod math;

pub use math::Real;

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

/// An instruction-set level a kernel can be compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Portable code: the target's baseline features only (SSE2 on x86-64, NEON on aarch64).
    Scalar,
    /// x86-64 with AVX2 and FMA.
    Avx2,
    /// x86-64 with AVX-512 F/BW/DQ/VL (plus AVX2 and FMA).
    Avx512,
}

impl Isa {
    /// The name `build_info()` reports and `SEQKERN_SIMD` accepts.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Parses a name as given to `SEQKERN_SIMD`.
    pub fn from_name(name: &str) -> Option<Isa> {
        match name.trim().to_ascii_lowercase().as_str() {
            "scalar" | "portable" | "none" => Some(Isa::Scalar),
            "avx2" => Some(Isa::Avx2),
            "avx512" => Some(Isa::Avx512),
            _ => None,
        }
    }

    fn code(self) -> u8 {
        match self {
            Isa::Scalar => 1,
            Isa::Avx2 => 2,
            Isa::Avx512 => 3,
        }
    }

    fn from_code(code: u8) -> Option<Isa> {
        match code {
            1 => Some(Isa::Scalar),
            2 => Some(Isa::Avx2),
            3 => Some(Isa::Avx512),
            _ => None,
        }
    }
}

/// The best ISA this CPU supports. A level is chosen only when the CPU has every feature its
/// entry point is compiled with (`run_avx512`, `run_avx2` below): the compiler may use any of
/// them anywhere in the kernel, so a missing one would be an illegal instruction.
pub fn detected_isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("bmi2");
        if avx2
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512vl")
        {
            return Isa::Avx512;
        }
        if avx2 {
            return Isa::Avx2;
        }
    }
    Isa::Scalar
}

/// The SIMD-related features this CPU reports, by their Rust names (`avx2`, `avx512vnni`,
/// `dotprod`, ...), for bug reports: what the dispatch in [`detected_isa`] and the ternary
/// kernels saw. Empty on architectures not listed here.
pub fn cpu_features() -> Vec<&'static str> {
    /// `(name, detected)` for each literal feature name.
    macro_rules! detect {
        ($check:ident: $($name:tt),* $(,)?) => {
            [$(($name, std::arch::$check!($name))),*]
        };
    }
    #[cfg(target_arch = "x86_64")]
    let found = detect!(is_x86_feature_detected:
        "sse2", "sse3", "ssse3", "sse4.1", "sse4.2", "popcnt", "avx", "f16c", "fma", "bmi1",
        "bmi2", "avx2", "avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl",
        "avx512vnni", "avx512vbmi", "avx512bf16", "avx512fp16",
    );
    #[cfg(target_arch = "aarch64")]
    let found = detect!(is_aarch64_feature_detected: "neon", "fp16", "dotprod", "i8mm", "sve");
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let found: [(&str, bool); 0] = [];
    found
        .into_iter()
        .filter_map(|(name, detected)| detected.then_some(name))
        .collect()
}

static CHOSEN: AtomicU8 = AtomicU8::new(0);
static PORTABLE_REQUESTED: AtomicBool = AtomicBool::new(false);
/// What `SEQKERN_SIMD` or [`force_isa`] asked for (an [`Isa`] code), 0 for the default.
static REQUESTED: AtomicU8 = AtomicU8::new(0);

thread_local! {
    /// The ISA [`with_isa`] set for calls made on this thread.
    static LOCAL: Cell<Option<Isa>> = const { Cell::new(None) };
}

/// The ISA kernels use now: the one [`with_isa`] set on this thread, else the detected one,
/// unless `SEQKERN_SIMD` or [`force_isa`] chose a lower one. Kernels read it once, on the
/// calling thread, and pass it to their workers.
pub fn isa() -> Isa {
    if let Some(local) = LOCAL.get() {
        return clamp_to_cpu(local);
    }
    if let Some(isa) = Isa::from_code(CHOSEN.load(Ordering::Relaxed)) {
        return isa;
    }
    let requested = std::env::var("SEQKERN_SIMD")
        .ok()
        .and_then(|v| Isa::from_name(&v));
    store_choice(requested)
}

/// Makes kernels use `isa` (clamped to what the CPU supports); `None` restores the default.
/// Returns the ISA now in use.
pub fn force_isa(isa: Option<Isa>) -> Isa {
    store_choice(isa)
}

fn store_choice(requested: Option<Isa>) -> Isa {
    let chosen = clamp_to_cpu(requested.unwrap_or_else(detected_isa));
    PORTABLE_REQUESTED.store(requested == Some(Isa::Scalar), Ordering::Relaxed);
    REQUESTED.store(requested.map_or(0, Isa::code), Ordering::Relaxed);
    CHOSEN.store(chosen.code(), Ordering::Relaxed);
    chosen
}

/// What `SEQKERN_SIMD` or [`force_isa`] asked for (before clamping to the CPU); `None` when
/// the default (the best the CPU has) is in use. Restoring it with [`force_isa`] restores the
/// choice exactly.
pub fn requested_isa() -> Option<Isa> {
    isa();
    Isa::from_code(REQUESTED.load(Ordering::Relaxed))
}

/// Runs `f` with the kernels it calls on this thread using `isa` (clamped to the CPU), whatever
/// the process-wide choice; other threads are not affected. Restores the previous override
/// afterwards, also when `f` panics.
pub fn with_isa<R>(isa: Isa, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Isa>);
    impl Drop for Restore {
        fn drop(&mut self) {
            LOCAL.set(self.0);
        }
    }
    let _restore = Restore(LOCAL.replace(Some(isa)));
    f()
}

/// Whether the portable path was asked for (`SEQKERN_SIMD=scalar`,
/// `force_isa(Some(Isa::Scalar))` or `with_isa(Isa::Scalar, ..)`) rather than being the best
/// this CPU offers. Kernels with paths outside [`Isa`] (NEON dot products on aarch64) check it
/// to honour the same switch.
pub fn portable_requested() -> bool {
    match LOCAL.get() {
        Some(local) => local == Isa::Scalar,
        None => isa() == Isa::Scalar && PORTABLE_REQUESTED.load(Ordering::Relaxed),
    }
}

fn clamp_to_cpu(wanted: Isa) -> Isa {
    let best = detected_isa();
    if wanted.code() <= best.code() {
        wanted
    } else {
        best
    }
}

/// Asks the CPU to start loading the cache lines of `data` into L1. A hint: it never faults
/// and has no effect on results (and none at all off x86-64).
#[inline(always)]
pub fn prefetch<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    for line in data.chunks(64 / std::mem::size_of::<T>().max(1)) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: prefetch instructions are hints that never fault, and SSE is part of the
        // x86-64 baseline.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

/// A compile-time description of the ISA a kernel body is being compiled for.
pub trait Arch: Copy + Send + Sync + 'static {
    /// Whether fused multiply-add is a single instruction here (otherwise `mul_add` would be a
    /// libm call, so [`Real::fma`] falls back to a multiply and an add).
    const FMA: bool;
    /// Whether AVX-512 F/BW/DQ/VL are enabled, so that a kernel may use their intrinsics
    /// directly (x86-64 only).
    const AVX512: bool = false;
}

/// The portable path.
#[derive(Clone, Copy, Debug)]
pub struct ScalarArch;
impl Arch for ScalarArch {
    const FMA: bool = false;
}

/// AVX2 + FMA.
#[derive(Clone, Copy, Debug)]
pub struct FmaArch;
impl Arch for FmaArch {
    const FMA: bool = true;
}

/// AVX-512 (with FMA).
#[derive(Clone, Copy, Debug)]
pub struct Avx512Arch;
impl Arch for Avx512Arch {
    const FMA: bool = true;
    const AVX512: bool = true;
}

/// A kernel body that [`dispatch`] compiles once per ISA. Implementations mark `run`
/// `#[inline(always)]` so that it is inlined into the ISA-specific caller.
pub trait Kernel {
    /// What the kernel returns.
    type Output;
    /// Runs the kernel; `A` says what the surrounding target features provide.
    fn run<A: Arch>(self) -> Self::Output;
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi2")]
unsafe fn run_avx512<K: Kernel>(kernel: K) -> K::Output {
    kernel.run::<Avx512Arch>()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,bmi2")]
unsafe fn run_avx2<K: Kernel>(kernel: K) -> K::Output {
    kernel.run::<FmaArch>()
}

/// Runs `kernel` compiled for the ISA chosen by [`isa`].
#[inline]
pub fn dispatch<K: Kernel>(kernel: K) -> K::Output {
    dispatch_on(isa(), kernel)
}

/// Runs `kernel` compiled for `isa`, which must be supported by this CPU (it is clamped to
/// [`detected_isa`] otherwise).
#[inline]
pub fn dispatch_on<K: Kernel>(isa: Isa, kernel: K) -> K::Output {
    match clamp_to_cpu(isa) {
        // SAFETY: clamp_to_cpu only returns ISAs whose features were detected on this CPU.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { run_avx512(kernel) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { run_avx2(kernel) },
        _ => kernel.run::<ScalarArch>(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_isa_is_per_thread_and_restored() {
        let outside = isa();
        with_isa(Isa::Scalar, || {
            assert_eq!(isa(), Isa::Scalar);
            assert!(portable_requested());
            // Another thread keeps the process-wide choice.
            assert_eq!(std::thread::spawn(isa).join().unwrap(), outside);
            with_isa(Isa::Avx2, || assert_eq!(isa(), clamp_to_cpu(Isa::Avx2)));
            assert_eq!(isa(), Isa::Scalar);
        });
        assert_eq!(isa(), outside);
        let caught = std::panic::catch_unwind(|| with_isa(Isa::Scalar, || panic!("inside")));
        assert!(caught.is_err());
        assert_eq!(isa(), outside);
    }

    #[test]
    fn names_round_trip() {
        for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
            assert_eq!(Isa::from_name(isa.name()), Some(isa));
            assert_eq!(Isa::from_code(isa.code()), Some(isa));
        }
        assert_eq!(Isa::from_name(" AVX2 "), Some(Isa::Avx2));
        assert_eq!(Isa::from_name("sse"), None);
    }

    #[test]
    fn detected_isa_agrees_with_the_reported_features() {
        let features = cpu_features();
        let has = |name: &str| features.contains(&name);
        let avx2_level = has("avx2") && has("fma") && has("bmi2");
        let avx512_level = avx2_level
            && ["avx512f", "avx512bw", "avx512dq", "avx512vl"]
                .iter()
                .all(|f| has(f));
        let expected = if cfg!(target_arch = "x86_64") && avx512_level {
            Isa::Avx512
        } else if cfg!(target_arch = "x86_64") && avx2_level {
            Isa::Avx2
        } else {
            Isa::Scalar
        };
        assert_eq!(detected_isa(), expected, "features: {features:?}");
        if cfg!(target_arch = "x86_64") {
            assert!(has("sse2"), "sse2 is the x86-64 baseline: {features:?}");
        }
    }
}
