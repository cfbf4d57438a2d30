//! f32 GEMM on Intel AMX tiles (Sapphire Rapids and later: `amx-tile` + `amx-bf16`), for `gemm::gemm_into`.
//!
//! AMX multiplies bf16 matrices: `tdpbf16ps` adds a (16 x 32) · (32 x 16) bf16 product into a 16 x 16 f32 tile,
//! 8192 multiply-adds in one instruction, about 8x the AVX-512 f32 FMA rate per core. bf16 keeps 8 of f32's 24
//! significand bits, so one pass would put ~0.3% relative error on every product. We split each f32 into two bf16
//! terms, `x = hi + lo` with `hi = bf16(x)` and `lo = bf16(x − hi)`, which together carry 16 bits, and add three
//! products (the "bf16x3" scheme of oneDNN and cuBLAS):
//!
//!   a·b ≈ a_hi·b_hi + a_hi·b_lo + a_lo·b_hi      (the dropped a_lo·b_lo is below 2⁻¹⁶ of a·b)
//!
//! with f32 accumulation: a relative error of ~2⁻¹⁶ per product (`Precision::Bf16x3`; `Precision::Bf16` is the
//! single product). Each operand is packed once as its hi and lo tiles, and the micro-kernel runs the three
//! products per K block from eight tile loads.
//!
//! Blocking: C in blocks of 32 x 32 (four accumulator tiles, two A tiles and two B tiles: all eight tile
//! registers). The parallel tasks take panels of 32 along the longer side of C; the operand of the shorter side is
//! packed whole up front and shared, and each task packs its own panel of the other one chunk of K at a time
//! (`K_CHUNK_BLOCKS`), so that the panel stays in L1 while the shared blocks stream from L2.
//!
//! What it gains (docs/performance.md, session 17): on this VM's Sapphire Rapids cores the micro-kernel runs at
//! ~1 TFLOP/s bf16 per core, about 15 ns per `tdpbf16ps`, a third of the nominal rate. With three products that is
//! ~1.5x gemm's AVX-512 f32 kernels at best, and at the UNet's convolution shapes (64-256 output channels) packing
//! the other operand costs as much again, so bf16x3 only breaks even; the single product is ~2x at the GEMMs and
//! 15% on a 28 M-parameter composed run.
//!
//! The instructions are written as inline assembly: Rust's AMX intrinsics are not stable. Linux hands out the
//! 8 KiB tile state only on request (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), once per process (`available`).

use std::arch::asm;
use std::cell::RefCell;

use rayon::prelude::*;

use super::cpu::OutPtr;

/// How many bf16 products make one f32 product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Precision {
    /// One product, `a_hi·b_hi`: relative error ~2⁻⁹ per product.
    Bf16,
    /// Three products (module docs): relative error ~2⁻¹⁶ per product.
    Bf16x3,
}

impl Precision {
    /// bf16 parts packed per element: hi, or hi and lo.
    fn parts(self) -> usize {
        match self {
            Precision::Bf16 => 1,
            Precision::Bf16x3 => 2,
        }
    }
}

/// Rows of a tile (A and C) and k-pairs of a B tile.
const TILE: usize = 16;
/// bf16 elements in one 64-byte tile row: the K extent of one `tdpbf16ps`.
const KB: usize = 32;
/// Rows (and columns) of C per micro-kernel call: two tiles.
const BLOCK: usize = 2 * TILE;
/// bf16 elements in one packed 16 x 32 tile.
const TILE_ELEMS: usize = TILE * KB;
/// K blocks per chunk: a panel task packs its own operand one chunk at a time (16 x 32 K x 2 parts x 2 tiles =
/// 64 KiB for bf16x3; 8 and 4 measured no faster).
const K_CHUNK_BLOCKS: usize = 16;

/// Whether this CPU and kernel run AMX bf16 (and the process has been granted the tile state). `VADAPT_NO_AMX`
/// set in the environment says no, to time the AVX-512 path on the same machine.
pub(super) fn available() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        std::env::var_os("VADAPT_NO_AMX").is_none()
            && cpu_has_amx_bf16()
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512bf16")
            && request_tile_state()
    })
}

fn cpu_has_amx_bf16() -> bool {
    // CPUID leaf 7, sub-leaf 0, EDX: bit 22 AMX-BF16, bit 24 AMX-TILE.
    let leaf = std::arch::x86_64::__cpuid_count(7, 0);
    leaf.edx & (1 << 22) != 0 && leaf.edx & (1 << 24) != 0
}

/// Ask Linux for the AMX tile data state (XFEATURE_XTILEDATA = 18) for every thread of this process.
fn request_tile_state() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain syscall with integer arguments; on kernels without AMX support it fails with EINVAL.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

/// The tile palette: eight tiles of 16 rows x 64 bytes (tmm0-3: C, f32; tmm4-5: A, bf16; tmm6-7: B, bf16 pairs).
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

const CONFIG: TileConfig = {
    let mut c = [0u8; 64];
    c[0] = 1; // palette 1
    let mut t = 0;
    while t < 8 {
        c[16 + 2 * t] = 64; // bytes per row (u16, little-endian)
        c[48 + t] = TILE as u8; // rows
        t += 1;
    }
    TileConfig(c)
};

/// The (hi, lo) bf16 parts of `x`: `hi = bf16(x)`, `lo = bf16(x − hi)`, rounded to nearest even.
fn parts(x: f32) -> (u16, u16) {
    let hi = half::bf16::from_f32(x);
    (
        hi.to_bits(),
        half::bf16::from_f32(x - hi.to_f32()).to_bits(),
    )
}

/// A strided f32 matrix: element (r, c) at `ptr[r * rs + c * cs]`.
#[derive(Clone, Copy)]
struct Mat {
    ptr: *const f32,
    rs: usize,
    cs: usize,
}
// SAFETY: read-only views shared by the parallel tasks.
unsafe impl Send for Mat {}
unsafe impl Sync for Mat {}

thread_local! {
    /// The operand packed once per K chunk and read by every panel task.
    static PACKED_SHARED: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
    /// One panel task's own block of the other operand.
    static PACKED_PANEL: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
}

/// Run `f` on `len` elements of this thread's `buffer`. The buffer is taken out for the call, not borrowed: a
/// thread waiting inside a parallel section may run another GEMM's task (rayon's work stealing), which then finds
/// the slot empty and allocates its own.
fn with_buffer<R>(
    buffer: &'static std::thread::LocalKey<RefCell<Vec<u16>>>,
    len: usize,
    f: impl FnOnce(&mut [u16]) -> R,
) -> R {
    let mut v = buffer.with(|b| std::mem::take(&mut *b.borrow_mut()));
    if v.len() < len {
        v.resize(len, 0);
    }
    let r = f(&mut v[..len]);
    buffer.with(|b| *b.borrow_mut() = v);
    r
}

/// A 16 x 32 tile of bf16 (or 16 k-pairs x 16 columns x 2) inside a packed buffer.
type Tile = [[u16; KB]; TILE];

/// The hi and lo tiles `t` (0, 1) of K block `kb` in a packed block of `parts` parts: per K block, the hi tile
/// pair, then the lo pair. With one part, lo goes to `spare`.
fn tiles<'a>(
    out: &'a mut [u16],
    kb: usize,
    t: usize,
    parts: usize,
    spare: &'a mut Tile,
) -> (&'a mut Tile, &'a mut Tile) {
    fn as_tile(s: &mut [u16]) -> &mut Tile {
        s[..TILE_ELEMS]
            .as_chunks_mut::<KB>()
            .0
            .try_into()
            .expect("a tile is 16 rows of 32")
    }
    let at = |p: usize| (kb * parts + p) * 2 * TILE_ELEMS + t * TILE_ELEMS;
    if parts == 1 {
        return (as_tile(&mut out[at(0)..]), spare);
    }
    let (head, tail) = out.split_at_mut(at(1));
    (as_tile(&mut head[at(0)..]), as_tile(tail))
}

/// Which operand a block is packed as.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Operand {
    /// Two 16 x 32 tiles per K block, row-major.
    A,
    /// Two tiles of 16 k-pairs x 16 columns x 2 (the "VNNI" layout `tdpbf16ps` reads: row q holds B[2q][j],
    /// B[2q+1][j] side by side for each column j).
    B,
}

/// Pack lines `l0..l0 + 32` (zero past `lines`) and K `k0..k1` of `m`, a (lines, k) view (A itself, or Bᵀ), as
/// `operand`: per K block of 32, the hi parts as two tiles, then the lo parts.
fn pack_block(
    m: Mat,
    lines: usize,
    l0: usize,
    (k0, k1): (usize, usize),
    parts: usize,
    operand: Operand,
    out: &mut [u16],
) {
    let mut spare = [[0u16; KB]; TILE];
    for kb in 0..(k1 - k0).div_ceil(KB) {
        let kk0 = k0 + kb * KB;
        let nk = KB.min(k1 - kk0);
        for t in 0..2 {
            let i0 = l0 + t * TILE;
            let ni = TILE.min(lines.saturating_sub(i0));
            let (hi, lo) = tiles(out, kb, t, parts, &mut spare);
            // SAFETY: lines i0..i0 + ni and K kk0..kk0 + nk lie inside the (lines, k) view.
            let src = unsafe { m.ptr.add(i0.min(lines) * m.rs + kk0 * m.cs) };
            unsafe { tile(src, (m.rs, m.cs), (ni, nk), operand, hi, lo) };
        }
    }
}

/// The (hi, lo) bf16 parts of 16 lines x 32 K (the first `lines` lines and `nk` K valid, zeros past them), element
/// (line l, K c) at `src[l * line_stride + c * k_stride]`, laid out as `operand`: `hi[l][c]` for A, `hi[c / 2][2l +
/// c % 2]` for B (lines are B's columns). Where one direction is contiguous the AVX-512 loops read it (B's layout is
/// A's transposed with K's pairs kept together); other strides take the scalar loop.
///
/// # Safety
/// The valid elements must be readable.
unsafe fn tile(
    src: *const f32,
    (line_stride, k_stride): (usize, usize),
    (lines, nk): (usize, usize),
    operand: Operand,
    hi: &mut [[u16; KB]; TILE],
    lo: &mut [[u16; KB]; TILE],
) {
    // SAFETY (all four): forwarded; `available()` implies AVX-512F/BW/BF16.
    match operand {
        Operand::A if k_stride == 1 => {
            return unsafe { simd::runs(src, line_stride, (lines, nk), false, hi, lo) }
        }
        Operand::A if line_stride == 1 => {
            return unsafe { simd::pairs(src, k_stride, (nk, lines), true, hi, lo) }
        }
        Operand::B if line_stride == 1 => {
            return unsafe { simd::pairs(src, k_stride, (nk, lines), false, hi, lo) }
        }
        Operand::B if k_stride == 1 => {
            return unsafe { simd::runs(src, line_stride, (lines, nk), true, hi, lo) }
        }
        _ => {}
    }
    for l in 0..TILE {
        for c in 0..KB {
            let x = if l < lines && c < nk {
                unsafe { *src.add(l * line_stride + c * k_stride) }
            } else {
                0.0
            };
            let (row, col) = match operand {
                Operand::A => (l, c),
                Operand::B => (c / 2, 2 * l + c % 2),
            };
            (hi[row][col], lo[row][col]) = parts(x);
        }
    }
}

/// The AVX-512 packing loops: f32 to bf16 parts 16 lanes at a time (`vcvtneps2bf16` rounds to nearest even like
/// `parts`), the pairs interleaved in 32-bit lanes, and a 16 x 16 transpose of 32-bit lanes where the
/// source's contiguous direction is the other one.
#[allow(unused_unsafe)]
mod simd {
    use std::arch::x86_64::*;
    use std::mem::transmute;

    use super::{KB, TILE};

    /// 16 floats from `p` with stride 1, the first `n` of them (zeros after).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(p: *const f32, n: usize) -> __m512 {
        unsafe {
            if n >= 16 {
                _mm512_loadu_ps(p)
            } else if n == 0 {
                _mm512_setzero_ps()
            } else {
                _mm512_maskz_loadu_ps(((1u32 << n) - 1) as u16, p)
            }
        }
    }

    /// The (hi, lo) bf16 parts of 32 floats that follow each other in K (`first` then `next`), in that order: one
    /// packed row of A, or one column's 16 k-pairs of B.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn run_parts(first: __m512, next: __m512) -> (__m512i, __m512i) {
        unsafe {
            let hi: __m512i = transmute(_mm512_cvtne2ps_pbh(next, first));
            let widen =
                |h: __m256i| _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)));
            let lo_first = _mm512_sub_ps(first, widen(_mm512_castsi512_si256(hi)));
            let lo_next = _mm512_sub_ps(next, widen(_mm512_extracti64x4_epi64::<1>(hi)));
            (
                hi,
                transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(lo_next, lo_first)),
            )
        }
    }

    /// The (hi, lo) bf16 parts of two rows of 16 floats, interleaved: lane i of the result holds `even[i]`'s part
    /// in its low 16 bits and `odd[i]`'s in its high 16 bits (a k-pair row of B, or a pair of K across 16 rows of
    /// A before the transpose).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn pair_parts(even: __m512, odd: __m512) -> (__m512i, __m512i) {
        unsafe {
            // [even 0..16, odd 0..16] as u16 -> [even 0, odd 0, even 1, odd 1, ...].
            let idx = _mm512_set_epi16(
                31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5,
                20, 4, 19, 3, 18, 2, 17, 1, 16, 0,
            );
            let hi = _mm512_permutexvar_epi16(
                idx,
                transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(odd, even)),
            );
            let hi_even = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(hi));
            let hi_odd = _mm512_castsi512_ps(_mm512_and_si512(
                hi,
                _mm512_set1_epi32(0xffff_0000u32 as i32),
            ));
            let lo = transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(
                _mm512_sub_ps(odd, hi_odd),
                _mm512_sub_ps(even, hi_even),
            ));
            (hi, _mm512_permutexvar_epi16(idx, lo))
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn store(out: &mut [[u16; KB]; TILE], rows: &[__m512i; TILE]) {
        for (o, r) in out.iter_mut().zip(rows) {
            unsafe { _mm512_storeu_si512(o.as_mut_ptr().cast(), *r) };
        }
    }

    /// Transpose a 16 x 16 matrix of 32-bit lanes in place: 4 x 4 blocks inside each 128-bit lane by unpacks,
    /// then the 128-bit lanes across rows.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn transpose16(m: &mut [__m512i; TILE]) {
        unsafe {
            let mut t = [_mm512_setzero_si512(); TILE];
            for g in 0..4 {
                let (r0, r1, r2, r3) = (m[4 * g], m[4 * g + 1], m[4 * g + 2], m[4 * g + 3]);
                let (a, b) = (_mm512_unpacklo_epi32(r0, r1), _mm512_unpackhi_epi32(r0, r1));
                let (c, d) = (_mm512_unpacklo_epi32(r2, r3), _mm512_unpackhi_epi32(r2, r3));
                // t[4c + g]: lane L holds column 4L + c of rows 4g..4g + 4.
                t[g] = _mm512_unpacklo_epi64(a, c);
                t[4 + g] = _mm512_unpackhi_epi64(a, c);
                t[8 + g] = _mm512_unpacklo_epi64(b, d);
                t[12 + g] = _mm512_unpackhi_epi64(b, d);
            }
            for c in 0..4 {
                let (s0, s1, s2, s3) = (t[4 * c], t[4 * c + 1], t[4 * c + 2], t[4 * c + 3]);
                let x0 = _mm512_shuffle_i32x4::<0x44>(s0, s1);
                let x1 = _mm512_shuffle_i32x4::<0xEE>(s0, s1);
                let x2 = _mm512_shuffle_i32x4::<0x44>(s2, s3);
                let x3 = _mm512_shuffle_i32x4::<0xEE>(s2, s3);
                m[c] = _mm512_shuffle_i32x4::<0x88>(x0, x2);
                m[4 + c] = _mm512_shuffle_i32x4::<0xDD>(x0, x2);
                m[8 + c] = _mm512_shuffle_i32x4::<0x88>(x1, x3);
                m[12 + c] = _mm512_shuffle_i32x4::<0xDD>(x1, x3);
            }
        }
    }

    /// 16 lines (at `stride` floats apart, the first `lines` of them read) of 32 floats that follow each other in K
    /// (the first `len` read) as (hi, lo) rows of 32 bf16, transposed as 32-bit pairs where `transposed`. Rows of A
    /// whose K runs are contiguous, or, transposed, columns of B whose K runs are.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn runs(
        src: *const f32,
        stride: usize,
        (lines, len): (usize, usize),
        transposed: bool,
        hi: &mut [[u16; KB]; TILE],
        lo: &mut [[u16; KB]; TILE],
    ) {
        unsafe {
            let mut h = [_mm512_setzero_si512(); TILE];
            let mut l = [_mm512_setzero_si512(); TILE];
            for r in 0..lines {
                let line = src.add(r * stride);
                (h[r], l[r]) = run_parts(
                    load16(line, len),
                    load16(line.add(16), len.saturating_sub(16)),
                );
            }
            store_parts(h, l, transposed, hi, lo);
        }
    }

    /// 32 K (`stride` floats apart, the first `len` read) of 16 contiguous lanes (the first `lanes` read) as
    /// (hi, lo) rows of 16 interleaved k-pairs, transposed where `transposed`. Rows of B whose columns are
    /// contiguous, or, transposed, A whose rows are contiguous along each K.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn pairs(
        src: *const f32,
        stride: usize,
        (len, lanes): (usize, usize),
        transposed: bool,
        hi: &mut [[u16; KB]; TILE],
        lo: &mut [[u16; KB]; TILE],
    ) {
        unsafe {
            let mut h = [_mm512_setzero_si512(); TILE];
            let mut l = [_mm512_setzero_si512(); TILE];
            for q in 0..len.div_ceil(2) {
                let even = load16(src.add(2 * q * stride), lanes);
                let odd = if 2 * q + 1 < len {
                    load16(src.add((2 * q + 1) * stride), lanes)
                } else {
                    _mm512_setzero_ps()
                };
                (h[q], l[q]) = pair_parts(even, odd);
            }
            store_parts(h, l, transposed, hi, lo);
        }
    }

    /// The packed (hi, lo) registers of `runs` / `pairs` into their tiles, transposed first where `transposed`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn store_parts(
        mut h: [__m512i; TILE],
        mut l: [__m512i; TILE],
        transposed: bool,
        hi: &mut [[u16; KB]; TILE],
        lo: &mut [[u16; KB]; TILE],
    ) {
        unsafe {
            if transposed {
                transpose16(&mut h);
                transpose16(&mut l);
            }
            store(hi, &h);
            store(lo, &l);
        }
    }
}

/// Where one 16 x 16 C tile is loaded from and stored to: straight in the output when the tile lies inside it, or
/// a scratch tile (holding the valid part of the output, zeros elsewhere) at the edges.
#[derive(Clone, Copy)]
struct CTile {
    ptr: *mut f32,
    /// Bytes between rows.
    stride: usize,
}

/// The micro-kernel: C tiles (tmm0-3, in the order (A tile, B tile) = (0, 0), (0, 1), (1, 0), (1, 1)) loaded from
/// `c` (or zeroed, where `!load`), plus the product of the packed A block `a` and B block `b` over `blocks` K
/// blocks, stored back to `c`. With two parts each K block is three products, `A_hi B_hi + A_hi B_lo + A_lo B_hi`:
/// eight tile loads for twelve `tdpbf16ps`.
///
/// # Safety
/// The tile configuration `CONFIG` must be loaded on this thread; `a` and `b` must hold `blocks` K blocks of
/// `parts` parts, and each C tile 16 rows of 64 bytes at its stride.
#[inline]
unsafe fn kernel_32x32(
    a: *const u16,
    b: *const u16,
    blocks: usize,
    parts: usize,
    c: &[CTile; 4],
    load: bool,
) {
    debug_assert!(blocks > 0);
    // SAFETY: the caller's contract. Tile registers are not allocated by the compiler, so they keep their values
    // between the asm blocks.
    unsafe {
        if load {
            asm!(
                "tileloadd tmm0, [{c0} + {s0}*1]",
                "tileloadd tmm1, [{c1} + {s1}*1]",
                "tileloadd tmm2, [{c2} + {s2}*1]",
                "tileloadd tmm3, [{c3} + {s3}*1]",
                c0 = in(reg) c[0].ptr, s0 = in(reg) c[0].stride,
                c1 = in(reg) c[1].ptr, s1 = in(reg) c[1].stride,
                c2 = in(reg) c[2].ptr, s2 = in(reg) c[2].stride,
                c3 = in(reg) c[3].ptr, s3 = in(reg) c[3].stride,
                options(nostack, readonly),
            );
        } else {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            );
        }
        if parts == 1 {
            asm!(
                "2:",
                "tileloadd tmm4, [{a} + {s}*1]",
                "tileloadd tmm6, [{b} + {s}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tileloadd tmm7, [{b} + {s}*1 + 1024]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tileloadd tmm5, [{a} + {s}*1 + 1024]",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "add {a}, 2048",
                "add {b}, 2048",
                "dec {n}",
                "jnz 2b",
                a = inout(reg) a => _,
                b = inout(reg) b => _,
                n = inout(reg) blocks => _,
                s = in(reg) 64usize,
                options(nostack, readonly),
            );
        } else {
            // Per K block: [A_hi 0, A_hi 1, A_lo 0, A_lo 1] and [B_hi 0, B_hi 1, B_lo 0, B_lo 1], 1 KiB each.
            asm!(
                "2:",
                "tileloadd tmm4, [{a} + {s}*1]",
                "tileloadd tmm6, [{b} + {s}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tileloadd tmm7, [{b} + {s}*1 + 1024]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tileloadd tmm5, [{a} + {s}*1 + 1024]",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "tileloadd tmm6, [{b} + {s}*1 + 2048]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tileloadd tmm7, [{b} + {s}*1 + 3072]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "tileloadd tmm4, [{a} + {s}*1 + 2048]",
                "tileloadd tmm6, [{b} + {s}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tileloadd tmm7, [{b} + {s}*1 + 1024]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tileloadd tmm5, [{a} + {s}*1 + 3072]",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "add {a}, 4096",
                "add {b}, 4096",
                "dec {n}",
                "jnz 2b",
                a = inout(reg) a => _,
                b = inout(reg) b => _,
                n = inout(reg) blocks => _,
                s = in(reg) 64usize,
                options(nostack, readonly),
            );
        }
        asm!(
            "tilestored [{c0} + {s0}*1], tmm0",
            "tilestored [{c1} + {s1}*1], tmm1",
            "tilestored [{c2} + {s2}*1], tmm2",
            "tilestored [{c3} + {s3}*1], tmm3",
            c0 = in(reg) c[0].ptr, s0 = in(reg) c[0].stride,
            c1 = in(reg) c[1].ptr, s1 = in(reg) c[1].stride,
            c2 = in(reg) c[2].ptr, s2 = in(reg) c[2].stride,
            c3 = in(reg) c[3].ptr, s3 = in(reg) c[3].stride,
            options(nostack),
        );
    }
}

/// Load the tile configuration on this thread for the duration of `f`, then release the tile state (so that a
/// context switch does not save 8 KiB for a thread that no longer uses it).
fn with_tiles<R>(f: impl FnOnce() -> R) -> R {
    struct Release;
    impl Drop for Release {
        fn drop(&mut self) {
            // SAFETY: releases this thread's tile state; harmless when none is in use.
            unsafe { asm!("tilerelease", options(nostack, nomem)) };
        }
    }
    // SAFETY: `available()` was checked by the caller; CONFIG is a valid palette-1 configuration.
    unsafe {
        asm!("ldtilecfg [{0}]", in(reg) &CONFIG as *const TileConfig, options(nostack, readonly))
    };
    let _release = Release;
    f()
}

/// One 32 x 32 block of C at (i0, j0) of the (m, n) output: `dst` (+)= A block · B block, through scratch tiles
/// where the block crosses the output's edge.
///
/// # Safety
/// Tiles configured; `dst` addresses an (m, n) matrix with rows `dst_rs` apart and unit column stride, whose block
/// at (i0, j0) is written by this task only; the packed blocks hold `blocks` K blocks of `parts` parts.
#[allow(clippy::too_many_arguments)]
unsafe fn block(
    a: *const u16,
    b: *const u16,
    (blocks, parts): (usize, usize),
    (dst, dst_rs): (OutPtr, usize),
    (m, n): (usize, usize),
    (i0, j0): (usize, usize),
    accumulate: bool,
    scratch: &mut [[f32; TILE * TILE]; 4],
) {
    let mut c = [CTile {
        ptr: std::ptr::null_mut(),
        stride: 0,
    }; 4];
    let mut edges = [None; 4];
    for (t, (ct, scr)) in c.iter_mut().zip(scratch.iter_mut()).enumerate() {
        let (i, j) = (i0 + (t / 2) * TILE, j0 + (t % 2) * TILE);
        let (rows, cols) = (TILE.min(m.saturating_sub(i)), TILE.min(n.saturating_sub(j)));
        if rows == TILE && cols == TILE {
            // SAFETY: the tile lies inside dst.
            *ct = CTile {
                ptr: unsafe { dst.get().add(i * dst_rs + j) },
                stride: 4 * dst_rs,
            };
            continue;
        }
        if accumulate {
            scr.fill(0.0);
            for r in 0..rows {
                // SAFETY: row i + r, columns j..j + cols of dst.
                let d = unsafe {
                    std::slice::from_raw_parts(dst.get().add((i + r) * dst_rs + j), cols)
                };
                scr[r * TILE..][..cols].copy_from_slice(d);
            }
        }
        *ct = CTile {
            ptr: scr.as_mut_ptr(),
            stride: 4 * TILE,
        };
        edges[t] = Some((i, j, rows, cols));
    }
    // SAFETY: forwarded; every C tile is 16 rows of 64 bytes at its stride.
    unsafe { kernel_32x32(a, b, blocks, parts, &c, accumulate) };
    for (scr, edge) in scratch.iter().zip(edges) {
        let Some((i, j, rows, cols)) = edge else {
            continue;
        };
        for r in 0..rows {
            // SAFETY: as above.
            let d = unsafe {
                std::slice::from_raw_parts_mut(dst.get().add((i + r) * dst_rs + j), cols)
            };
            d.copy_from_slice(&scr[r * TILE..][..cols]);
        }
    }
}

/// `dst = a · b`, or `dst += a · b` where `read_dst`, for an (m, k) `a`, a (k, n) `b` and an (m, n) `dst` with row
/// stride `dst_rs` and unit column stride; `a` and `b` strides as (column, row), as in `gemm::gemm_into`.
/// `parallel` spreads the panels over rayon's pool.
///
/// # Safety
/// `available()` must be true. Every addressed element must be in bounds, and dst must not alias a or b.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    read_dst: bool,
    a: *const f32,
    (a_cs, a_rs): (usize, usize),
    b: *const f32,
    (b_cs, b_rs): (usize, usize),
    parallel: bool,
    prec: Precision,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !read_dst {
            for i in 0..m {
                // SAFETY: row i of dst.
                unsafe { std::slice::from_raw_parts_mut(dst.add(i * dst_rs), n).fill(0.0) };
            }
        }
        return;
    }
    let a = Mat {
        ptr: a,
        rs: a_rs,
        cs: a_cs,
    };
    // B as the (n, k) view Bᵀ: its lines are B's columns.
    let bt = Mat {
        ptr: b,
        rs: b_cs,
        cs: b_rs,
    };
    let dst = OutPtr(dst);
    let parts = prec.parts();
    let (row_blocks, col_blocks) = (m.div_ceil(BLOCK), n.div_ceil(BLOCK));
    let k_blocks = k.div_ceil(KB);
    let k_block_len = parts * 2 * TILE_ELEMS;
    // Panels along the longer side of C. The operand of the shorter side is packed whole, up front, and read by
    // every panel task; each task packs its own panel of the other one K chunk at a time.
    let panels_are_columns = n >= m;
    let pack = |own_side: bool, i: usize, (kb0, kb1): (usize, usize), out: &mut [u16]| {
        let ks = (kb0 * KB, (kb1 * KB).min(k));
        if own_side == panels_are_columns {
            pack_block(bt, n, i * BLOCK, ks, parts, Operand::B, out)
        } else {
            pack_block(a, m, i * BLOCK, ks, parts, Operand::A, out)
        }
    };
    let (shared_blocks, panels) = if panels_are_columns {
        (row_blocks, col_blocks)
    } else {
        (col_blocks, row_blocks)
    };
    let shared_len = k_blocks * k_block_len;
    // Chunks of equal size (18 blocks as 9 + 9, not 16 + 2): each chunk loads and stores every C tile once.
    let chunk = k_blocks.div_ceil(k_blocks.div_ceil(K_CHUNK_BLOCKS));
    with_buffer(&PACKED_SHARED, shared_blocks * shared_len, |shared| {
        let pack_shared = |(i, out): (usize, &mut [u16])| pack(false, i, (0, k_blocks), out);
        if parallel {
            shared
                .par_chunks_mut(shared_len)
                .enumerate()
                .for_each(pack_shared);
        } else {
            shared
                .chunks_mut(shared_len)
                .enumerate()
                .for_each(pack_shared);
        }
        let shared = &*shared;
        let panel = |p: usize| {
            with_buffer(&PACKED_PANEL, chunk * k_block_len, |own| {
                let mut scratch = [[0f32; TILE * TILE]; 4];
                for kb0 in (0..k_blocks).step_by(chunk) {
                    let kb1 = (kb0 + chunk).min(k_blocks);
                    pack(true, p, (kb0, kb1), own);
                    with_tiles(|| {
                        for s in 0..shared_blocks {
                            let other = shared[s * shared_len + kb0 * k_block_len..].as_ptr();
                            let (pa, pb, rb, cb) = if panels_are_columns {
                                (other, own.as_ptr(), s, p)
                            } else {
                                (own.as_ptr(), other, p, s)
                            };
                            // SAFETY: tiles configured; both blocks hold kb1 − kb0 K blocks; this panel's blocks of
                            // dst belong to this task.
                            unsafe {
                                block(
                                    pa,
                                    pb,
                                    (kb1 - kb0, parts),
                                    (dst, dst_rs),
                                    (m, n),
                                    (rb * BLOCK, cb * BLOCK),
                                    read_dst || kb0 > 0,
                                    &mut scratch,
                                )
                            };
                        }
                    })
                }
            })
        };
        if parallel {
            (0..panels).into_par_iter().for_each(panel);
        } else {
            (0..panels).for_each(panel);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::rng::NoiseRng::new(seed);
        (0..n).map(|_| rng.uniform() * 2.0 - 1.0).collect()
    }

    /// f64 reference of a strided product, plus the sum of |a||b| per element (the scale of rounding errors).
    fn reference(
        (m, n, k): (usize, usize, usize),
        a: &[f32],
        (a_cs, a_rs): (usize, usize),
        b: &[f32],
        (b_cs, b_rs): (usize, usize),
    ) -> (Vec<f64>, Vec<f64>) {
        let mut c = vec![0f64; m * n];
        let mut scale = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                for q in 0..k {
                    let x = a[i * a_rs + q * a_cs] as f64 * b[q * b_rs + j * b_cs] as f64;
                    c[i * n + j] += x;
                    scale[i * n + j] += x.abs();
                }
            }
        }
        (c, scale)
    }

    #[test]
    fn amx_gemm_matches_an_f64_reference_at_f32_level() {
        if !available() {
            eprintln!("no AMX bf16 on this CPU (or VADAPT_NO_AMX set): every GEMM takes gemm's f32 kernels here");
            return;
        }
        // Shapes around the block edges, both panel directions (m > n), operands with rows contiguous, columns
        // contiguous (transposed) or neither (every other element: the scalar packing).
        for &(m, n, k) in &[
            (1, 1, 1),
            (16, 16, 32),
            (33, 47, 65),
            (64, 960, 576),
            (960, 64, 70),
            (5, 200, 1100),
        ] {
            for &(a_t, b_t) in &[(0, 0), (1, 0), (0, 1), (2, 2)] {
                let a = random(2 * m * k, 1 + m as u64);
                let b = random(2 * k * n, 2 + n as u64);
                let a_s = [(1, k), (m, 1), (2, 2 * k)][a_t];
                let b_s = [(1, n), (k, 1), (2, 2 * n)][b_t];
                let (want, scale) = reference((m, n, k), &a, a_s, &b, b_s);
                for prec in [Precision::Bf16x3, Precision::Bf16] {
                    for read_dst in [false, true] {
                        let mut c = vec![if read_dst { 0.5f32 } else { f32::NAN }; m * n];
                        unsafe {
                            gemm(
                                (m, n, k),
                                c.as_mut_ptr(),
                                n,
                                read_dst,
                                a.as_ptr(),
                                a_s,
                                b.as_ptr(),
                                b_s,
                                true,
                                prec,
                            )
                        };
                        let tol = match prec {
                            Precision::Bf16x3 => 2e-5,
                            Precision::Bf16 => 8e-3,
                        };
                        let worst = c
                            .iter()
                            .zip(&want)
                            .zip(&scale)
                            .map(|((&c, &w), &s)| {
                                let w = w + if read_dst { 0.5 } else { 0.0 };
                                (c as f64 - w).abs() / s.max(1e-30)
                            })
                            .fold(0f64, f64::max);
                        assert!(
                            worst <= tol,
                            "{prec:?} ({m}, {n}, {k}) a_t {a_t} b_t {b_t} read_dst {read_dst}: error {worst:e} of Σ|ab| (tolerance {tol:e})"
                        );
                    }
                }
            }
        }
    }
}
