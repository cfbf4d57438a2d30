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

fn eval_json(args: &[&str], json: &std::path::Path) -> serde_json::Value {
    let mut a = args.to_vec();
    a.extend(["--json", json.to_str().unwrap()]);
    let out = vadapt(&a);
    assert!(
        out.contains("| PSNR dB |"),
        "markdown table on stdout: {out}"
    );
    serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
}

/// `--reference-dataset` without `--condition-key`: one camera compared with another dataset's, frame by frame, and
/// a clear error when the datasets do not hold the same episodes and frames.
#[test]
fn eval_compares_a_camera_with_another_datasets_frame_by_frame() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("cmp.json");
    let sample = repo().join("datasets/sample/lerobot");
    // The sample converted with its cameras as PNG images: the mp4's decoded frames, losslessly.
    let images = dir.path().join("images");
    vadapt(&[
        "convert",
        sample.to_str().unwrap(),
        images.to_str().unwrap(),
        "--storage",
        "images",
    ]);
    let (s, i) = (sample.to_str().unwrap(), images.to_str().unwrap());
    let same = eval_json(
        &[
            "eval",
            i,
            "--key",
            "observation.images.real",
            "--reference-dataset",
            s,
        ],
        &json,
    );
    let t = &same["total"];
    assert_eq!(
        (&t["episodes"], &t["frames"], &t["identical"]),
        (&4.into(), &96.into(), &true.into()),
        "{same}"
    );
    assert_eq!(
        (&t["psnr"], &t["max_abs_diff"]),
        (&serde_json::Value::Null, &0.into())
    );
    assert_eq!(same["reference_key"], "observation.images.real");
    assert_eq!(same["episodes"].as_array().unwrap().len(), 4);

    // Another camera of the other dataset (--reference-key): the two renderings differ, and every number says so.
    let other = eval_json(
        &[
            "eval",
            i,
            "--key",
            "observation.images.real",
            "--reference-dataset",
            s,
            "--reference-key",
            "observation.images.sim",
        ],
        &json,
    );
    let t = &other["total"];
    let psnr = t["psnr"].as_f64().unwrap();
    assert!(psnr > 5.0 && psnr < 30.0, "{other}");
    assert!(t["ssim"].as_f64().unwrap() < 0.99, "{other}");
    assert!(t["max_abs_diff"].as_u64().unwrap() > 50, "{other}");
    assert_eq!(t["identical"], false);
    // The total PSNR is the PSNR of the pooled squared error: between the episodes' extremes.
    let per: Vec<f64> = other["episodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e[1]["psnr"].as_f64().unwrap())
        .collect();
    let (lo, hi) = per
        .iter()
        .fold((f64::MAX, f64::MIN), |(l, h), &p| (l.min(p), h.max(p)));
    assert!(psnr >= lo - 1e-9 && psnr <= hi + 1e-9, "{psnr} vs {per:?}");

    // Other episodes, other frame counts: refused, naming both datasets / the episode.
    let fewer = dir.path().join("fewer");
    let shorter = dir.path().join("shorter");
    for (out, eps, frames) in [(&fewer, "2", "24"), (&shorter, "4", "12")] {
        vadapt(&[
            "sample-data",
            "--out",
            out.to_str().unwrap(),
            "--episodes",
            eps,
            "--frames",
            frames,
            "--size",
            "90x160",
        ]);
    }
    let base = [
        "eval",
        i,
        "--key",
        "observation.images.real",
        "--reference-dataset",
    ];
    let fewer_lr = fewer.join("lerobot");
    let err = vadapt_fails(&[&base[..], &[fewer_lr.to_str().unwrap()]].concat());
    assert!(
        err.contains("same episodes")
            && err.contains("4 episodes [0, 1, 2, 3]")
            && err.contains("2 episodes [0, 1]"),
        "{err}"
    );
    let shorter_lr = shorter.join("lerobot");
    let err = vadapt_fails(&[&base[..], &[shorter_lr.to_str().unwrap()]].concat());
    assert!(
        err.contains("episode 0") && err.contains("24 frames vs 12"),
        "{err}"
    );
    // Neither a condition nor a dataset to compare with: said so.
    let err = vadapt_fails(&["eval", i, "--key", "observation.images.real"]);
    assert!(
        err.contains("--condition-key") && err.contains("--reference-dataset"),
        "{err}"
    );
}
