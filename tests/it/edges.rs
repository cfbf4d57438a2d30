//! Sobel edges against tests/fixtures/sobel (OpenCV), through the library and through `vadapt debug edges`.

use crate::common::{fixture, load_f32, max_abs_diff, vadapt};
use vadapt::vision::edges::sobel;

const TOL: f32 = 1e-5; // fixtures/sobel/README.md: max abs diff <= 1e-5 on gray, gx, gy, mag

#[test]
fn sobel_matches_opencv_fixture() {
    let inputs = load_f32(&fixture("sobel/inputs.safetensors"));
    let expected = load_f32(&fixture("sobel/expected.safetensors"));
    let mut checked = 0;
    for (name, (shape, rgb)) in &inputs {
        let stem = name.trim_end_matches(".rgb");
        let bytes: Vec<u8> = rgb.iter().map(|&v| v as u8).collect();
        let e = sobel(&bytes, shape[0], shape[1]);
        for (suffix, ours) in [
            ("gray", &e.gray),
            ("gx", &e.sobel_dx),
            ("gy", &e.sobel_dy),
            ("mag", &e.magnitude),
        ] {
            let (eshape, want) = &expected[&format!("{stem}.{suffix}")];
            assert_eq!(eshape, &vec![shape[0], shape[1]]);
            let d = max_abs_diff(&ours.data, want);
            eprintln!("{stem}.{suffix}: max abs diff {d:.3e}");
            assert!(d <= TOL, "{stem}.{suffix}: max abs diff {d} > {TOL}");
            checked += 1;
        }
    }
    assert_eq!(checked, 12, "3 frames x 4 outputs");
}

#[test]
fn debug_edges_cli_reproduces_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("edges.safetensors");
    vadapt(&[
        "debug",
        "edges",
        "--inputs",
        fixture("sobel/inputs.safetensors").to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    let got = load_f32(&out);
    let expected = load_f32(&fixture("sobel/expected.safetensors"));
    assert_eq!(got.len(), expected.len());
    for (k, (shape, want)) in &expected {
        let (gshape, g) = &got[k];
        assert_eq!(gshape, shape, "{k}");
        assert!(max_abs_diff(g, want) <= TOL, "{k}");
    }
}

#[test]
fn debug_edges_rejects_bad_shapes_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let inp = dir.path().join("bad.safetensors");
    let data = vec![0u8; 4 * 5 * 4];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::U8, vec![4, 5, 4], &data).unwrap();
    safetensors::serialize_to_file(vec![("x.rgb", view)], None, &inp).unwrap();
    let out = dir.path().join("out.safetensors");
    let res = std::process::Command::new(crate::common::vadapt_bin())
        .args([
            "debug",
            "edges",
            "--inputs",
            inp.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!res.status.success());
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(err.contains("x.rgb") && err.contains("(H, W, 3)"), "{err}");
    assert!(!out.exists(), "no partial output");
}
