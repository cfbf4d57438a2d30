//! `vadapt debug edges --inputs IN.safetensors --output OUT.safetensors`
//!
//! Fixed interface (tests and outside checks call it): reads every `<name>.rgb` tensor (U8, H x W x 3) and writes
//! `<name>.gray`, `<name>.gx`, `<name>.gy`, `<name>.mag` (F32, H x W), as in fixtures/sobel.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use vadapt::vision::edges::sobel;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// safetensors file with `<name>.rgb` tensors (U8, H x W x 3).
    #[arg(long)]
    pub inputs: PathBuf,
    /// safetensors file to write.
    #[arg(long)]
    pub output: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.inputs)
        .with_context(|| format!("reading {}", args.inputs.display()))?;
    let st = SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{}: not a safetensors file", args.inputs.display()))?;
    let mut outputs: BTreeMap<String, (Vec<usize>, Vec<u8>)> = BTreeMap::new();
    let mut names: Vec<_> = st
        .names()
        .into_iter()
        .filter(|n| n.ends_with(".rgb"))
        .collect();
    names.sort();
    if names.is_empty() {
        bail!("{}: no `<name>.rgb` tensors", args.inputs.display());
    }
    for name in names {
        let view = st.tensor(name)?;
        let shape = view.shape();
        if view.dtype() != Dtype::U8
            || shape.len() != 3
            || shape[2] != 3
            || shape[0] == 0
            || shape[1] == 0
        {
            bail!(
                "{}: tensor {name:?} must be U8 with shape (H, W, 3), H, W >= 1; got {:?} {:?}",
                args.inputs.display(),
                view.dtype(),
                shape
            );
        }
        let (h, w) = (shape[0], shape[1]);
        let e = sobel(view.data(), h, w);
        let stem = name.trim_end_matches(".rgb");
        for (suffix, plane) in [
            ("gray", &e.gray),
            ("gx", &e.sobel_dx),
            ("gy", &e.sobel_dy),
            ("mag", &e.magnitude),
        ] {
            let data: Vec<u8> = plane.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            outputs.insert(format!("{stem}.{suffix}"), (vec![h, w], data));
        }
    }
    let views: Vec<(String, TensorView)> = outputs
        .iter()
        .map(|(k, (shape, data))| {
            Ok((k.clone(), TensorView::new(Dtype::F32, shape.clone(), data)?))
        })
        .collect::<anyhow::Result<_>>()?;
    let tmp = args.output.with_extension("safetensors.tmp");
    safetensors::serialize_to_file(views, None, &tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &args.output)
        .with_context(|| format!("renaming to {}", args.output.display()))?;
    Ok(())
}
