//! What the CPU can compute at most: the f32 FMA peak that `vadapt bench` holds the UNet forward against
//! (issue 20: "at least 50% of the CPU's FMA peak").
//!
//!   peak = cores × FMA lanes per cycle × 2 FLOP × clock
//!
//! * cores: the benchmark's threads, all running at once;
//! * FMA lanes per cycle: f32 multiply-adds one core retires per cycle, `FMA ports × vector width / 32 bits`.
//!   Zen 4 has two 256-bit FMA pipes and runs a 512-bit FMA on both halves: 2 × 8 = 16. Skylake-SP and Sapphire
//!   Rapids server cores have two 512-bit ports: 2 × 16 = 32. It is measured here rather than tabled
//!   (`fma_flop_per_cycle`: independent FMAs on the widest vectors the CPU has, divided by the clock) and rounded to
//!   the power of two it lands near, so a busy host's lost cycles do not lower the peak;
//! * clock: measured, not read from `/proc/cpuinfo` (a VM reports the host's base clock, not what the core runs
//!   at under load): a chain of dependent integer adds retires one add per cycle on every x86-64 core since the
//!   Pentium 4, so adds per second is the clock. All cores run the chain at once, as they run the forward.
//!
//! x86-64 only (elsewhere `measure` returns None).

/// The measured clock and FMA rate, and the peak they give.
#[derive(Clone, Copy, Debug)]
pub struct FmaPeak {
    /// Threads measured at once (the benchmark's cores).
    pub cores: usize,
    /// The lowest per-core clock of the concurrent runs, GHz.
    pub clock_ghz: f64,
    /// Vector width of the FMA loop, f32 lanes (16: AVX-512, 8: AVX2).
    pub vector_lanes: usize,
    /// f32 FLOP per cycle per core, measured (independent FMAs / clock), before rounding.
    pub measured_flop_per_cycle: f64,
    /// f32 FMA lanes per cycle per core: the measured FLOP per cycle / 2, rounded to a power of two.
    pub fma_lanes_per_cycle: usize,
}

impl FmaPeak {
    /// `cores × fma_lanes_per_cycle × 2 × clock`, GFLOP/s.
    pub fn peak_gflop_per_s(&self) -> f64 {
        self.cores as f64 * self.fma_lanes_per_cycle as f64 * 2.0 * self.clock_ghz
    }
}

/// Measures clock and FMA throughput on `threads` threads at once (each for ~0.2 s, best of `reps`).
pub fn measure(threads: usize, reps: usize) -> Option<FmaPeak> {
    #[cfg(target_arch = "x86_64")]
    {
        let threads = threads.max(1);
        let on_all = |f: fn() -> f64| -> f64 {
            (0..reps.max(1))
                .map(|_| {
                    std::thread::scope(|s| {
                        let hs: Vec<_> = (0..threads).map(|_| s.spawn(f)).collect();
                        hs.into_iter()
                            .map(|h| h.join().unwrap_or(0.0))
                            .fold(f64::INFINITY, f64::min)
                    })
                })
                .fold(0.0, f64::max)
        };
        let clock_hz = on_all(x86::clock_hz);
        let (lanes, fma): (usize, fn() -> f64) = if super::cpu::has_avx512f() {
            (16, x86::fma512_flop_per_s)
        } else if super::cpu::has_avx2_fma() {
            (8, x86::fma256_flop_per_s)
        } else {
            return None;
        };
        let flop_per_s = on_all(fma);
        let measured = flop_per_s / clock_hz;
        let lanes_per_cycle = (measured / 2.0).log2().round().exp2().max(1.0) as usize;
        Some(FmaPeak {
            cores: threads,
            clock_ghz: clock_hz / 1e9,
            vector_lanes: lanes,
            measured_flop_per_cycle: measured,
            fma_lanes_per_cycle: lanes_per_cycle,
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (threads, reps);
        None
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::asm;
    use std::arch::x86_64::*;
    use std::time::Instant;

    /// Iterations of each timed loop: ~0.2 s at 3 GHz.
    const ITERS: u64 = 50_000_000;

    /// Dependent integer adds per second on this thread: 8 adds in a chain per iteration (one cycle each), the
    /// loop counter on its own chain beside them.
    pub(super) fn clock_hz() -> f64 {
        let t = Instant::now();
        let mut x = 0u64;
        let mut n = ITERS;
        // SAFETY: register arithmetic only.
        unsafe {
            asm!(
                "2:",
                "add {x}, 1", "add {x}, 1", "add {x}, 1", "add {x}, 1",
                "add {x}, 1", "add {x}, 1", "add {x}, 1", "add {x}, 1",
                "sub {n}, 1",
                "jnz 2b",
                x = inout(reg) x,
                n = inout(reg) n,
                options(nomem, nostack),
            );
        }
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box((x, n));
        (8 * ITERS) as f64 / secs
    }

    /// Independent accumulators of the FMA loops: more than ports × latency (2 × 4 on the cores above).
    const ACC: usize = 12;

    /// `$public`: f32 FLOP per second of independent `$lanes`-lane FMAs on this thread, through `$inner` compiled
    /// for `$feature` (one loop, written once for both vector widths).
    macro_rules! fma_rate {
        ($public:ident, $inner:ident, $feature:literal, $lanes:literal, $set1:ident, $fmadd:ident) => {
            pub(super) fn $public() -> f64 {
                // SAFETY: `measure` calls it only where the CPU has the feature.
                unsafe { $inner() }
            }

            #[target_feature(enable = $feature)]
            unsafe fn $inner() -> f64 {
                let (a, b) = ($set1(0.999_999), $set1(1e-7));
                let mut acc = [$set1(1.0); ACC];
                let iters = ITERS / 4;
                let t = Instant::now();
                for _ in 0..iters {
                    for c in acc.iter_mut() {
                        *c = $fmadd(*c, a, b);
                    }
                }
                let secs = t.elapsed().as_secs_f64();
                std::hint::black_box(acc);
                (iters as usize * ACC * $lanes * 2) as f64 / secs
            }
        };
    }
    fma_rate!(
        fma512_flop_per_s,
        fma512,
        "avx512f",
        16,
        _mm512_set1_ps,
        _mm512_fmadd_ps
    );
    fma_rate!(
        fma256_flop_per_s,
        fma256,
        "avx2,fma",
        8,
        _mm256_set1_ps,
        _mm256_fmadd_ps
    );
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    #[test]
    fn the_peak_is_cores_times_lanes_times_two_times_the_clock() {
        let Some(p) = super::measure(1, 1) else {
            panic!("no AVX2 + FMA on this x86-64 CPU: the FMA peak cannot be measured");
        };
        // A real core: clock between 0.5 and 7 GHz, 4 to 64 FMA lanes a cycle, the measured rate near the
        // power of two it was rounded to (a shared host can lose cycles, so down to half of it).
        assert!((0.5..7.0).contains(&p.clock_ghz), "{p:?}");
        assert!((4..=64).contains(&p.fma_lanes_per_cycle), "{p:?}");
        let rounded = 2.0 * p.fma_lanes_per_cycle as f64;
        assert!(
            p.measured_flop_per_cycle > 0.5 * rounded && p.measured_flop_per_cycle < 1.5 * rounded
        );
        let want = 2.0 * p.fma_lanes_per_cycle as f64 * p.clock_ghz;
        assert!((p.peak_gflop_per_s() - want).abs() < 1e-9 * want);
    }
}
