//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The reference fixtures: `tests/fixtures/`, committed with the repository (`VADAPT_FIXTURES` overrides).
pub fn fixtures_root() -> PathBuf {
    std::env::var_os("VADAPT_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("tests/fixtures"))
}

/// `tests/fixtures/<rel>` (or `$VADAPT_FIXTURES/<rel>`); fails with a message saying what is missing.
pub fn fixture(rel: &str) -> PathBuf {
    let p = fixtures_root().join(rel);
    assert!(
        p.exists(),
        "fixture {} is missing: the reference fixtures are committed under tests/fixtures/ (or set \
         VADAPT_FIXTURES); tests/parity/gen_*.py regenerate them",
        p.display()
    );
    p
}

/// Path of the built `vadapt` binary.
pub fn vadapt_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vadapt"))
}

/// Run `vadapt ARGS`, assert success, return stdout.
pub fn vadapt(args: &[&str]) -> String {
    let out = std::process::Command::new(vadapt_bin())
        .args(args)
        .output()
        .expect("run vadapt");
    assert!(
        out.status.success(),
        "vadapt {args:?} failed with {:?}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8 stdout")
}

/// Run vadapt expecting failure: asserts a non-zero exit without a panic and returns stderr.
pub fn vadapt_fails(args: &[&str]) -> String {
    let out = std::process::Command::new(vadapt_bin())
        .args(args)
        .output()
        .expect("run vadapt");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "vadapt {args:?} should fail; stdout:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        !stderr.contains("panicked"),
        "vadapt {args:?} panicked:\n{stderr}"
    );
    stderr
}

/// Load every tensor of a safetensors file as (shape, f32 values); U8 / I64 / F64 tensors are converted.
pub fn load_f32(
    path: &std::path::Path,
) -> std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut out = std::collections::BTreeMap::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let vals: Vec<f32> = match view.dtype() {
            safetensors::Dtype::F32 => data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            safetensors::Dtype::U8 => data.iter().map(|&b| b as f32).collect(),
            safetensors::Dtype::I64 => data
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32)
                .collect(),
            safetensors::Dtype::F64 => data
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
                .collect(),
            d => panic!("{name}: unexpected dtype {d:?}"),
        };
        out.insert(name.to_string(), (view.shape().to_vec(), vals));
    }
    out
}

/// Max absolute difference of two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Every column of `a` equals `b`'s, bit for bit, except the index columns lerobot needs renumbered
/// (`episode_index`, `index`, `task_index`); `what` names the episode in a failure.
pub fn assert_columns_equal_but_indices(
    a: &vadapt::episode::Episode,
    b: &vadapt::episode::Episode,
    what: &str,
) {
    for f in a.columns.schema().fields() {
        if ["episode_index", "index", "task_index"].contains(&f.name().as_str()) {
            continue;
        }
        assert_eq!(
            a.columns.column_by_name(f.name()),
            b.columns.column_by_name(f.name()),
            "{what}: column {}",
            f.name()
        );
    }
}

/// The values of a fixed-size-list float32 column (e.g. `action`), flattened over the episode's rows.
pub fn f32_list_column(ep: &vadapt::episode::Episode, name: &str) -> Vec<f32> {
    use arrow::array::{Array, FixedSizeListArray, Float32Array};
    let c = ep
        .columns
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name:?}"));
    let l = c.as_any().downcast_ref::<FixedSizeListArray>().unwrap();
    l.values()
        .as_any()
        .downcast_ref::<Float32Array>()
        .unwrap()
        .values()
        .to_vec()
}
