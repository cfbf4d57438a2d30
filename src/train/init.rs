//! Seeded weight initialisation: a `VarBuilder` backend that creates every variable from its name and the run's
//! seed, following the layer's init hint (Kaiming for convolutions and linears, ones for norm gains, zeros for the
//! last temporal conv, as diffusers/torch do).
//!
//! candle's `VarMap` draws initial values from an unseeded thread RNG, so two runs of the same recipe would start
//! from different weights; recipes must be reproducible (`make models`). Each variable gets its own ChaCha stream
//! seeded by (seed, name), so the values do not depend on the order in which layers are built.

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::init::{Init, NormalOrUniform};
use candle_nn::{VarBuilder, VarMap};

use crate::rng::{derive_seed, NoiseRng};

/// The backend: new variables land in `varmap` (which the optimizer then owns).
struct SeededVars {
    varmap: VarMap,
    seed: u64,
}

/// A `VarBuilder` whose fresh variables are seeded; the returned `VarMap` holds them.
pub fn seeded_var_builder(seed: u64, device: &Device) -> (VarBuilder<'static>, VarMap) {
    let varmap = VarMap::new();
    let backend = SeededVars {
        varmap: varmap.clone(),
        seed,
    };
    (
        VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone()),
        varmap,
    )
}

/// The initial value of variable `name` of `shape` under `init`.
pub fn initial_value(
    seed: u64,
    name: &str,
    shape: &Shape,
    init: Init,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let mut rng = NoiseRng::new(derive_seed(seed, 0, name, 0));
    let to_candle = |e: crate::Error| candle_core::Error::Msg(e.to_string());
    let uniform = |rng: &mut NoiseRng, lo: f64, up: f64| -> candle_core::Result<Tensor> {
        let data: Vec<f32> = (0..shape.elem_count())
            .map(|_| (lo + (up - lo) * rng.uniform() as f64) as f32)
            .collect();
        Tensor::from_vec(data, shape.clone(), device)
    };
    match init {
        Init::Const(c) => Tensor::full(c as f32, shape.clone(), device),
        Init::Randn { mean, stdev } => {
            (rng.randn(shape.clone(), device).map_err(to_candle)? * stdev)? + mean
        }
        Init::Uniform { lo, up } => uniform(&mut rng, lo, up),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let std = non_linearity.gain() / (fan.for_shape(shape) as f64).sqrt();
            match dist {
                NormalOrUniform::Normal => {
                    rng.randn(shape.clone(), device).map_err(to_candle)? * std
                }
                NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    uniform(&mut rng, -bound, bound)
                }
            }
        }
    }
}

impl candle_nn::var_builder::SimpleBackend for SeededVars {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut data = self
            .varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("VarMap lock poisoned".into()))?;
        if let Some(var) = data.get(name) {
            if var.shape() != &s {
                candle_core::bail!("shape mismatch for {name}: {:?} vs {s:?}", var.shape());
            }
            return Ok(var.as_tensor().clone());
        }
        let value = initial_value(self.seed, name, &s, h, dev)?.to_dtype(dtype)?;
        let var = Var::from_tensor(&value)?;
        let t = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(t)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let data = self
            .varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("VarMap lock poisoned".into()))?;
        match data.get(name) {
            Some(v) => Ok(v.as_tensor().clone()),
            None => candle_core::bail!("no variable {name}"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap
            .data()
            .lock()
            .map(|d| d.contains_key(name))
            .unwrap_or(false)
    }
}
