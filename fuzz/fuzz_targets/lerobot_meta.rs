//! LeRobot metadata parsers and the tfds features.json parser. The first byte picks the file the rest becomes:
//! 0 `meta/info.json`, 1 `meta/episodes/chunk-000/file-000.parquet`, 2 `meta/episodes.jsonl`,
//! 3 `meta/tasks.parquet`, 4 an RLDS `features.json`. Errors must name a file; nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vadapt::io::lerobot::meta::{load_episodes_v2, load_episodes_v3, load_tasks, Info, Version};
use vadapt::Location;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::create_dir_all(root.join("meta/episodes/chunk-000")).expect("mkdir");
    let keys = ["observation.images.rgb".to_string()];
    let named = |e: vadapt::Error| assert!(e.location().and_then(|l| l.path.as_ref()).is_some(), "{e}");
    match which % 5 {
        0 => {
            std::fs::write(root.join("meta/info.json"), rest).expect("write");
            let _ = Info::load(root).map_err(named);
        }
        1 => {
            std::fs::write(root.join("meta/episodes/chunk-000/file-000.parquet"), rest).expect("write");
            let _ = load_episodes_v3(root, &keys).map_err(named);
        }
        2 => {
            std::fs::write(root.join("meta/episodes.jsonl"), rest).expect("write");
            let _ = load_episodes_v2(root, 1000, &keys).map_err(named);
        }
        3 => {
            std::fs::write(root.join("meta/tasks.parquet"), rest).expect("write");
            let _ = load_tasks(root, Version::V3_0);
        }
        _ => {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(rest) {
                let _ = vadapt::io::rlds::parse_features(&v, &Location::file("features.json"));
            }
        }
    }
});
