//! `vadapt eval` on the bundled sample: the real rendering scored against the sim rendering of the same motion.

use crate::common::{repo, vadapt, vadapt_fails};

#[test]
fn eval_scores_a_paired_rendering() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("eval.json");
    let ds = repo().join("datasets/sample/lerobot");
    let out = vadapt(&[
        "eval",
        ds.to_str().unwrap(),
        "--key",
        "observation.images.real",
        "--condition-key",
        "observation.images.sim",
        "--reference-key",
        "observation.images.sim",
        "--size",
        "24x40",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(
        out.contains("| episodes |"),
        "markdown table on stdout: {out}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["episodes"].as_array().unwrap().len(), 4);
    let m = &v["mean"];
    let corr = m["edge_correlation"].as_f64().unwrap();
    assert!(
        corr > 0.5 && corr < 1.0,
        "same motion, different texture: edges agree but not exactly ({corr})"
    );
    let psnr = m["psnr"].as_f64().unwrap();
    assert!(
        psnr > 5.0 && psnr < 30.0,
        "two different renderings: {psnr}"
    );
    assert!(m["frechet_distance"].as_f64().unwrap() > 0.0);

    // A camera the dataset lacks is named.
    let err = vadapt_fails(&[
        "eval",
        ds.to_str().unwrap(),
        "--key",
        "observation.images.nope",
        "--condition-key",
        "observation.images.sim",
    ]);
    assert!(
        err.contains("observation.images.nope") && err.contains("episode 0"),
        "{err}"
    );
}
