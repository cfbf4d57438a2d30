//! A diffusers UNet3DConditionModel `config.json`, `vadapt.json` and a scheduler config: parsed and validated, or
//! refused naming the file, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vadapt::models::unet_3d::UNet3DConfig;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("config.json");
    std::fs::write(&p, data).expect("write");
    if let Err(e) = UNet3DConfig::from_file(&p) {
        assert!(e.location().and_then(|l| l.path.as_ref()).is_some(), "{e}");
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = serde_json::from_str::<vadapt::model_dir::ModelMeta>(text);
        let _ = vadapt::schedulers::SchedulerConfig::from_json(text, &p);
    }
});
