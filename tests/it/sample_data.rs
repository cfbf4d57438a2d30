//! Procedural sample data: determinism, motion consistent with actions and states, both outputs of
//! `vadapt sample-data` readable with the values the generator made.

use arrow::array::AsArray;
use arrow::datatypes::{Float32Type, Int64Type};
use vadapt::episode::EpisodeIndex;
use vadapt::io::rlds::RldsDataset;
use vadapt::io::EpisodeSource;
use vadapt::synth::{self, SampleGenerator, SampleOptions, REAL_KEY, SIM_KEY};

use crate::common;

fn pairs(ep: &vadapt::episode::Episode, key: &str) -> Vec<[f32; 2]> {
    let col = ep
        .columns
        .column_by_name(key)
        .unwrap_or_else(|| panic!("column {key} missing"));
    col.as_fixed_size_list()
        .values()
        .as_primitive::<Float32Type>()
        .values()
        .chunks(2)
        .map(|c| [c[0], c[1]])
        .collect()
}

#[test]
fn same_seed_same_bytes_other_seed_other_scene() {
    let a = synth::generate(7, 3, 6, (45, 80)).unwrap();
    let b = synth::generate(7, 3, 6, (45, 80)).unwrap();
    let c = synth::generate(8, 3, 6, (45, 80)).unwrap();
    let raw = |v: &[image::RgbImage]| {
        v.iter()
            .flat_map(|f| f.as_raw().clone())
            .collect::<Vec<u8>>()
    };
    assert_eq!(raw(&a.sim), raw(&b.sim));
    assert_eq!(raw(&a.real), raw(&b.real));
    assert_eq!(a.effector, b.effector);
    assert_eq!(a.task, b.task);
    assert_ne!(raw(&a.real), raw(&c.real));
    assert_ne!(a.effector, c.effector);
}

#[test]
fn actions_and_states_follow_the_motion() {
    for seed in 0..6u64 {
        let s = synth::generate(seed, seed % 3, 20, (36, 64)).unwrap();
        assert!((4..=8).contains(&s.blocks.len()));
        let words = format!(
            "push the {} to the {}",
            s.blocks[s.pushed].name(),
            s.blocks[s.target].name()
        );
        assert_eq!(s.task, words);
        let ep = synth::to_episode(&s, 0, 0, 0).unwrap();
        let (state, action, target) = (
            pairs(&ep, "observation.state"),
            pairs(&ep, "action"),
            pairs(&ep, "observation.effector_target_translation"),
        );
        assert_eq!(state.len(), 20);
        for t in 0..19 {
            for k in 0..2 {
                // state[t] + action[t] = state[t+1] = target[t] (f32 rounding of the difference only)
                assert!(
                    (state[t][k] + action[t][k] - state[t + 1][k]).abs() < 1e-6,
                    "seed {seed} t {t}"
                );
                assert_eq!(target[t][k], state[t][k] + action[t][k]);
            }
        }
        assert_eq!(action[19], [0.0, 0.0]);
        // The effector stays on the board.
        assert!(
            state
                .iter()
                .all(|p| (0.0..=0.64).contains(&p[0]) && (0.0..=0.36).contains(&p[1])),
            "seed {seed}"
        );
        // Only the pushed block moves; it moves only once touched, ends closer to the target, and the
        // effector is in contact with it while it moves.
        for (i, b) in s.blocks.iter().enumerate() {
            let moved = b.path.windows(2).any(|p| p[0] != p[1]);
            assert_eq!(moved, i == s.pushed, "seed {seed} block {i}");
        }
        let p = &s.blocks[s.pushed].path;
        let goal = s.blocks[s.target].path[0];
        let d = |a: [f32; 2], b: [f32; 2]| (a[0] - b[0]).hypot(a[1] - b[1]);
        assert!(
            d(p[19], goal) < d(p[0], goal) - 0.01,
            "seed {seed}: block pushed towards its target"
        );
        for t in 1..20 {
            if p[t] != p[t - 1] {
                assert!(
                    d(p[t], state[t]) < 0.04,
                    "seed {seed} t {t}: block moves only in contact with the effector"
                );
            }
        }
        // Both renderings show the scene: the pushed block's colour changes pixels where it moved.
        assert_eq!(s.sim.len(), 20);
        assert_ne!(s.sim[0], s.sim[19]);
        assert_ne!(s.sim[5], s.real[5]);
        let bool_col = |k: &str| {
            ep.columns
                .column_by_name(k)
                .unwrap()
                .as_boolean()
                .iter()
                .map(|b| b.unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(bool_col("is_first").iter().filter(|b| **b).count(), 1);
        assert!(bool_col("is_last")[19] && bool_col("is_terminal")[19]);
    }
}

#[test]
fn sample_data_cli_writes_rlds_and_lerobot_with_the_generated_values() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("a");
    let args = [
        "sample-data",
        "--out",
        out.to_str().unwrap(),
        "--episodes",
        "2",
        "--frames",
        "8",
        "--seed",
        "3",
        "--size",
        "64x96",
    ];
    common::vadapt(&args);
    let expected: Vec<_> = SampleGenerator::new(SampleOptions {
        episodes: 2,
        frames: 8,
        seed: 3,
        size: (64, 96),
        styled: false,
        held_out: false,
    })
    .map(|e| e.unwrap())
    .collect();

    let rlds = RldsDataset::open(out.join("rlds")).unwrap();
    assert_eq!(rlds.episode_indices().len(), 2);
    for (i, want) in expected.iter().enumerate() {
        let got = rlds.read_episode(EpisodeIndex(i as u64)).unwrap();
        assert_eq!(got.task, want.task);
        assert_eq!(got.len(), 8);
        for key in [
            "observation.state",
            "action",
            "observation.effector_target_translation",
        ] {
            assert_eq!(pairs(&got, key), pairs(want, key), "{key}");
        }
        // rgb = the real rendering (JPEG), sim under its own feature.
        for (cam, src) in [
            ("observation.images.rgb", REAL_KEY),
            ("observation.images.sim", SIM_KEY),
        ] {
            let (a, b) = (
                got.cameras[cam].decode().unwrap(),
                want.cameras[src].decode().unwrap(),
            );
            let mad = a
                .iter()
                .zip(&b)
                .flat_map(|(x, y)| {
                    x.as_raw()
                        .iter()
                        .zip(y.as_raw())
                        .map(|(p, q)| (*p as f64 - *q as f64).abs())
                })
                .sum::<f64>()
                / (8 * 64 * 96 * 3) as f64;
            assert!(mad < 4.0, "{cam}: mean abs diff {mad}");
        }
        let idx = got
            .columns
            .column_by_name("index")
            .unwrap()
            .as_primitive::<Int64Type>()
            .values()
            .to_vec();
        assert_eq!(idx, (8 * i as i64..8 * i as i64 + 8).collect::<Vec<_>>());
    }

    let lerobot = vadapt::io::lerobot::LeRobotDataset::open(out.join("lerobot")).unwrap();
    assert_eq!(lerobot.episode_indices().len(), 2);
    assert!(lerobot.features().contains_key(SIM_KEY) && lerobot.features().contains_key(REAL_KEY));
    for (i, want) in expected.iter().enumerate() {
        let got = lerobot.read_episode(EpisodeIndex(i as u64)).unwrap();
        assert_eq!(got.task, want.task);
        assert_eq!(pairs(&got, "action"), pairs(want, "action"));
        assert_eq!(got.cameras[SIM_KEY].len(), 8);
    }

    // Same arguments, same bytes.
    let again = dir.path().join("b");
    let mut args2 = args;
    args2[2] = again.to_str().unwrap();
    common::vadapt(&args2);
    for shard in std::fs::read_dir(out.join("rlds/0.0.1")).unwrap() {
        let p = shard.unwrap().path();
        let q = again.join("rlds/0.0.1").join(p.file_name().unwrap());
        assert_eq!(
            std::fs::read(&p).unwrap(),
            std::fs::read(&q).unwrap(),
            "{}",
            p.display()
        );
    }
}

#[test]
fn bad_sizes_are_rejected() {
    assert_eq!(synth::parse_size("90x160").unwrap(), (90, 160));
    for bad in ["90", "x160", "0x10", "90x-1", "abc"] {
        assert!(synth::parse_size(bad).is_err(), "{bad}");
    }
    assert!(
        synth::generate(0, 0, 1, (36, 64)).is_err(),
        "one frame is not an episode"
    );
}
