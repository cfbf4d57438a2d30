//! Explicit limits on every size that comes from a file or a config (frames, heights, widths, resolutions,
//! channels, steps, tokens, frame rates), checked where the value is read, before anything is allocated from it.
//! Each limit sits far above any real model or dataset (the largest text-to-video models sample 1024x576 x 64
//! frames; LeRobot datasets run at 5 to 200 fps), so only a damaged or mistyped value reaches one; what the values
//! add up to is judged separately, against the memory available (`pipeline::memory`).

use crate::error::{Error, Location, Result};

/// Frames in one model window (`vadapt.json` `frames`).
pub const MAX_MODEL_FRAMES: usize = 1024;
/// Height or width of a model's sample and of a target's `resolution`, in pixels.
pub const MAX_MODEL_SIDE: usize = 4096;
/// Height or width of an output camera (`[output] resolution`), in pixels (8K video is 4320 x 7680).
pub const MAX_OUTPUT_SIDE: usize = 8192;
/// Channels of any UNet / VAE layer (`block_out_channels`, `in_channels`, `cross_attention_dim`, ...).
pub const MAX_CHANNELS: usize = 16384;
/// Denoising steps of a target or stage.
pub const MAX_STEPS: usize = 1000;
/// Tokens of a text encoder's sequence (`max_position_embeddings`, T5's `n_positions`).
pub const MAX_TOKENS: usize = 16384;
/// Frame rates accepted from a dataset or a model: anything outside is a damaged value (a time base read as a
/// rate, a rate in mHz), and an encoder asked for it fails with a message that never mentions fps.
pub const MIN_FPS: f64 = 0.1;
pub const MAX_FPS: f64 = 1000.0;

/// `value` must lie in `1..=max`; the error names `loc` (file and key) and both numbers.
pub fn check_count(value: usize, max: usize, what: &str, loc: Location) -> Result<()> {
    if value == 0 || value > max {
        return Err(Error::config(
            loc,
            format!("{what} {value} is outside 1..={max}, the limit vadapt accepts"),
        ));
    }
    Ok(())
}

/// A frame rate in `MIN_FPS..=MAX_FPS`; `loc` names the file and key, the message the value and the range.
pub fn check_fps(fps: f64, loc: Location) -> Result<()> {
    if !(fps.is_finite() && (MIN_FPS..=MAX_FPS).contains(&fps)) {
        return Err(Error::invalid(
            loc,
            format!("fps {fps} is outside the sane range {MIN_FPS}..={MAX_FPS} frames per second"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_name_the_value_and_the_range() {
        let e = check_count(1_000_000_000, MAX_MODEL_FRAMES, "frames", Location::none())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("frames 1000000000") && e.contains("1..=1024"),
            "{e}"
        );
        assert!(check_count(8, MAX_MODEL_FRAMES, "frames", Location::none()).is_ok());
        assert!(check_count(0, MAX_MODEL_FRAMES, "frames", Location::none()).is_err());
        let e = check_fps(1e12, Location::none()).unwrap_err().to_string();
        assert!(e.contains("fps 1000000000000"), "{e}");
        for bad in [0.0, -10.0, f64::NAN, f64::INFINITY] {
            assert!(check_fps(bad, Location::none()).is_err(), "{bad}");
        }
        for good in [10.0, 29.97, 200.0] {
            assert!(check_fps(good, Location::none()).is_ok(), "{good}");
        }
    }
}
