//! Frames <-> model tensors: RGB8 pixels map to [-1, 1] as `v / 127.5 - 1` (diffusers' convention), and back with
//! rounding and clamping.

use candle_core::{Device, Tensor};
use image::RgbImage;

use crate::error::{Error, Location, Result};

/// One frame as (3, H, W) in [-1, 1].
pub fn frame_to_tensor(frame: &RgbImage, device: &Device) -> Result<Tensor> {
    let (w, h) = (frame.width() as usize, frame.height() as usize);
    let data: Vec<f32> = frame
        .as_raw()
        .iter()
        .map(|&v| v as f32 / 127.5 - 1.0)
        .collect();
    Ok(Tensor::from_vec(data, (h, w, 3), device)?
        .permute((2, 0, 1))?
        .contiguous()?)
}

/// Frames of equal size as one video (3, F, H, W) in [-1, 1].
pub fn frames_to_tensor(frames: &[RgbImage], device: &Device) -> Result<Tensor> {
    let first = frames
        .first()
        .ok_or_else(|| Error::invalid(Location::none(), "no frames to convert"))?;
    let (w, h) = (first.width() as usize, first.height() as usize);
    let mut data = Vec::with_capacity(frames.len() * h * w * 3);
    for f in frames {
        if (f.width() as usize, f.height() as usize) != (w, h) {
            return Err(Error::invalid(
                Location::none(),
                format!(
                    "frames differ in size: {}x{} vs {w}x{h}",
                    f.width(),
                    f.height()
                ),
            ));
        }
        data.extend(f.as_raw().iter().map(|&v| v as f32 / 127.5 - 1.0));
    }
    Ok(Tensor::from_vec(data, (frames.len(), h, w, 3), device)?
        .permute((3, 0, 1, 2))?
        .contiguous()?)
}

/// A video (3, F, H, W) in [-1, 1] back to RGB8 frames.
pub fn tensor_to_frames(x: &Tensor) -> Result<Vec<RgbImage>> {
    let (_, f, h, w) = x.dims4()?;
    let x = ((x.permute((1, 2, 3, 0))?.contiguous()? + 1.0)? * 127.5)?
        .clamp(0.0, 255.0)?
        .round()?;
    let v = x.flatten_all()?.to_vec1::<f32>()?;
    let per = h * w * 3;
    (0..f)
        .map(|i| {
            let bytes = v[i * per..(i + 1) * per].iter().map(|&p| p as u8).collect();
            RgbImage::from_raw(w as u32, h as u32, bytes)
                .ok_or_else(|| Error::invalid(Location::none(), "frame buffer size"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_is_exact() {
        let frames: Vec<RgbImage> = (0..3)
            .map(|t| {
                RgbImage::from_fn(5, 4, |x, y| {
                    image::Rgb([(x * 40 + t) as u8, (y * 60) as u8, 255])
                })
            })
            .collect();
        let t = frames_to_tensor(&frames, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[3, 3, 4, 5]);
        assert_eq!(tensor_to_frames(&t).unwrap(), frames);
        let one = frame_to_tensor(&frames[1], &Device::Cpu).unwrap();
        let diff = (one - t.narrow(1, 1, 1).unwrap().squeeze(1).unwrap())
            .unwrap()
            .abs()
            .unwrap();
        assert_eq!(diff.max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    }
}
