//! What every kernel needs from candle and the machine: the f32 data of contiguous CPU storages, output buffers,
//! the shared output pointer of the parallel loops, and the checks that pick a path (`cpu_f32_inference`, the
//! tensors' side; `has_avx2_fma`, the CPU's).

use candle_core::{CpuStorage, CustomOp3, Layout, Tensor};

/// An output buffer of `n` floats that the caller overwrites completely before anything reads it. Not zeroed:
/// zeroing these kernels' outputs (a single-threaded memset per op, overwritten right after) was 7% of a UNet
/// forward. candle's own CPU kernels allocate their outputs the same way.
#[allow(clippy::uninit_vec)]
pub(crate) fn output_buffer(n: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: f32 has no invalid bit patterns, and every caller writes all n elements before reading any.
    unsafe { v.set_len(n) };
    v
}

/// Whether `t` is on the fused kernels' side of an op: f32 on the CPU. Everything else (F16/BF16, a CUDA device)
/// takes candle's ops, which have CUDA kernels for F32, F16 and BF16; the tests walk that side on the CPU through
/// `on_candle_path`.
pub(crate) fn fused_f32_cpu(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == candle_core::DType::F32 && !candle_path_forced()
}

/// Whether these tensors take the fused CPU inference kernels: all f32 on the CPU, none recording a graph (training
/// takes candle's differentiable ops instead).
pub(crate) fn cpu_f32_inference<'a>(ts: impl IntoIterator<Item = &'a Tensor>) -> bool {
    ts.into_iter().all(|t| fused_f32_cpu(t) && !t.track_op())
}

#[cfg(test)]
thread_local! {
    static FORCE_CANDLE_PATH: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[cfg(not(test))]
fn candle_path_forced() -> bool {
    false
}

#[cfg(test)]
fn candle_path_forced() -> bool {
    FORCE_CANDLE_PATH.with(|f| f.get())
}

/// Run `f` with every op on this thread taking the path a CUDA device takes (candle's ops), though its tensors are
/// f32 on the CPU: how the tests check that path without a GPU. The choice is made on the calling thread before an
/// op fans out, so a thread-local flag covers it.
#[cfg(test)]
pub(crate) fn on_candle_path<R>(f: impl FnOnce() -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            FORCE_CANDLE_PATH.with(|f| f.set(false));
        }
    }
    FORCE_CANDLE_PATH.with(|f| f.set(true));
    let _reset = Reset;
    f()
}

/// The f32 data of a contiguous CPU storage under its layout.
pub(crate) fn contiguous_f32<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        _ => candle_core::bail!("{what}: f32 only"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{what}: input must be contiguous"),
    }
}

/// The (input, weight, bias) f32 data of a normalisation op's three contiguous CPU operands, `what` naming the op.
pub(crate) fn norm_operands<'a>(
    (s1, l1): (&'a CpuStorage, &Layout),
    (s2, l2): (&'a CpuStorage, &Layout),
    (s3, l3): (&'a CpuStorage, &Layout),
    what: &str,
) -> candle_core::Result<(&'a [f32], &'a [f32], &'a [f32])> {
    Ok((
        contiguous_f32(s1, l1, &format!("{what} x"))?,
        contiguous_f32(s2, l2, &format!("{what} weight"))?,
        contiguous_f32(s3, l3, &format!("{what} bias"))?,
    ))
}

/// Apply an inference-only three-input op to contiguous copies (views when already contiguous) of its inputs.
pub(crate) fn apply3(
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    op: &impl CustomOp3,
) -> candle_core::Result<Tensor> {
    a.contiguous()?
        .apply_op3_no_bwd(&b.contiguous()?, &c.contiguous()?, op)
}

/// `apply3` recording the op in the graph where an operand is tracked (training: the op's `bwd` runs in the
/// backward pass); with no tracked operand nothing is recorded, as in `apply3`.
pub(crate) fn apply3_differentiable(
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    op: impl CustomOp3 + Send + Sync + 'static,
) -> candle_core::Result<Tensor> {
    a.contiguous()?
        .apply_op3(&b.contiguous()?, &c.contiguous()?, op)
}

/// `f` on the first `len` floats of this thread's scratch `buffer`, grown as needed and kept between calls (so
/// thousands of small problems do not allocate one each); the contents are whatever the last user left.
pub(super) fn with_thread_buffer<R>(
    buffer: &'static std::thread::LocalKey<std::cell::RefCell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    buffer.with(|b| {
        let mut b = b.borrow_mut();
        if b.len() < len {
            b.resize(len, 0.0);
        }
        f(&mut b[..len])
    })
}

/// The gradients a three-operand op's `bwd` returns.
pub(crate) type Grads3 = (Option<Tensor>, Option<Tensor>, Option<Tensor>);

/// Split a backward op's packed 1-D output into its operands' gradients, in order: each `Some(shape)` takes the
/// next `shape.elem_count()` values as a tensor of that shape (a view, no copy); `None` (an operand without a
/// gradient) takes nothing.
pub(crate) fn unpack_grads(
    packed: &Tensor,
    shapes: [Option<&candle_core::Shape>; 3],
) -> candle_core::Result<Grads3> {
    let mut at = 0;
    let mut next = |shape: Option<&candle_core::Shape>| -> candle_core::Result<Option<Tensor>> {
        let Some(shape) = shape else {
            return Ok(None);
        };
        let n = shape.elem_count();
        let t = packed.narrow(0, at, n)?.reshape(shape)?;
        at += n;
        Ok(Some(t))
    };
    let [a, b, c] = shapes;
    Ok((next(a)?, next(b)?, next(c)?))
}

/// The contiguous f32 CPU data of each present tensor in `ts`, for `f` (the storages stay read-locked while it
/// runs): how the fused ops read operands that a candle custom op cannot pass (optional ones, more than three).
pub(crate) fn with_f32<const N: usize, R>(
    ts: [Option<&Tensor>; N],
    what: &str,
    f: impl FnOnce([Option<&[f32]>; N]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let held = ts.map(|t| t.map(|t| t.storage_and_layout()));
    let mut data = [None; N];
    for (d, g) in data.iter_mut().zip(&held) {
        if let Some((storage, layout)) = g {
            *d = Some(match &**storage {
                candle_core::Storage::Cpu(cpu) => contiguous_f32(cpu, layout, what)?,
                _ => candle_core::bail!("{what}: CPU tensors only"),
            });
        }
    }
    f(data)
}

/// The output pointer shared by the parallel tasks, each of which writes its own elements (the attention's rows of
/// one head, the token layout's positions, the AMX GEMM's panels of C).
#[derive(Clone, Copy)]
pub(super) struct OutPtr(pub(super) *mut f32);
// SAFETY: tasks write disjoint elements and nothing reads them meanwhile.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so that closures capture the whole `Sync` wrapper, not its raw field).
    pub(super) fn get(self) -> *mut f32 {
        self.0
    }
}

/// Whether this CPU runs the AVX-512 build of the attention (`avx512`). `VADAPT_NO_AVX512` set in the environment
/// says no, for timing the AVX2 kernels on the same machine (`vadapt bench`).
pub fn has_avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX512: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVX512.get_or_init(|| {
            std::is_x86_feature_detected!("avx512f")
                && std::env::var_os("VADAPT_NO_AVX512").is_none()
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU runs the AVX2 + FMA builds of the kernels.
pub fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
