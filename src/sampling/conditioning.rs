//! The conditioning channels a model takes after the noisy video, built one way for `vadapt augment`
//! ([`TargetSampler`](super::TargetSampler)), `vadapt sample` and training (`train::data`): a model sees at
//! sampling exactly what it was trained on.
//!
//! From frames already at the model's pixel resolution:
//! ```text
//! edges        Sobel dx / 4 of each frame (vision::edges), 1 channel per frame
//! first_frame  the clip's first frame in [-1, 1], repeated over time, 3 channels
//! low_res      a super-resolution stage's input: the previous stage's video upsampled to this resolution, in
//!              [-1, 1], 3 channels per frame
//! reference    a still of the look to render in [-1, 1] (tiles shuffled for models trained so), repeated over
//!              time, 3 channels
//! source       the source camera's frames themselves in [-1, 1], 3 channels per frame (a restyle model that keeps
//!              the scene's fill and changes its look)
//! ```
//! each average-pooled to the sample resolution (by the VAE's downscale for a latent model, unchanged for a pixel
//! model) and concatenated in the order the model's `conditioning` lists (edges, then the first frame, as
//! [`Conditioning`] documents).

use std::path::Path;

use candle_core::{Device, Tensor};
use image::RgbImage;

use crate::error::{Error, Location, Result};
use crate::model_dir::{Conditioning, ModelDir};
use crate::vision::edges::edge_channel;
use crate::vision::tensor::{frame_to_tensor, frames_to_tensor};

/// The signals conditioning channels are built from, each at the model's sample resolution (latent size for a
/// latent model); a model takes the ones its `conditioning` lists.
#[derive(Default, Clone)]
pub struct Signals {
    /// The edge channel, (1, F, h, w).
    pub edges: Option<Tensor>,
    /// The first frame, (3, h, w) in [-1, 1].
    pub first_frame: Option<Tensor>,
    /// The previous stage's video upsampled, (3, F, h, w) in [-1, 1].
    pub low_res: Option<Tensor>,
    /// The look's reference still, (3, h, w) in [-1, 1].
    pub reference: Option<Tensor>,
    /// The source frames, (3, F, h, w) in [-1, 1].
    pub source: Option<Tensor>,
}

/// Builds each signal from frames at the model's pixel resolution: the one recipe of the module docs.
#[derive(Clone, Copy)]
pub struct SignalBuilder<'a> {
    /// Pixels per sample along height and width: 1, or a latent model's VAE downscale.
    pub downscale: usize,
    pub device: &'a Device,
}

impl<'a> SignalBuilder<'a> {
    pub fn new(downscale: usize, device: &'a Device) -> Self {
        Self { downscale, device }
    }

    /// Signals at the sample resolution of `model` (whose VAE, if any, sets the downscale).
    pub fn for_model(model: &ModelDir, device: &'a Device) -> Self {
        Self::new(model.downscale(), device)
    }

    /// The edge channel of `frames`, (1, F, h, w).
    pub fn edges(&self, frames: &[RgbImage]) -> Result<Tensor> {
        let (h, w) = (frames[0].height() as usize, frames[0].width() as usize);
        self.edges_from_planes(edge_channel(frames), (frames.len(), h, w))
    }

    /// The edge channel from edge planes computed earlier (`vision::edges::edge_channel` of each frame,
    /// concatenated frame-major): `(frames, height, width)` in pixels.
    pub fn edges_from_planes(
        &self,
        planes: Vec<f32>,
        (n, h, w): (usize, usize, usize),
    ) -> Result<Tensor> {
        self.at_sample_resolution(Tensor::from_vec(planes, (1, n, h, w), self.device)?)
    }

    /// One frame as the first-frame signal, (3, h, w).
    pub fn first_frame(&self, frame: &RgbImage) -> Result<Tensor> {
        self.at_sample_resolution(frame_to_tensor(frame, self.device)?)
    }

    /// A super-resolution stage's input video as the low_res signal, (3, F, h, w).
    pub fn low_res(&self, frames: &[RgbImage]) -> Result<Tensor> {
        self.video(frames)
    }

    /// The source frames as the source signal, (3, F, h, w).
    pub fn source(&self, frames: &[RgbImage]) -> Result<Tensor> {
        self.video(frames)
    }

    /// A video as a per-frame signal, (3, F, h, w) in [-1, 1].
    fn video(&self, frames: &[RgbImage]) -> Result<Tensor> {
        self.at_sample_resolution(frames_to_tensor(frames, self.device)?)
    }

    /// Every signal of a clip: the edges of `frames`, its first frame, and `low_res` when given.
    pub fn clip(&self, frames: &[RgbImage], low_res: Option<&[RgbImage]>) -> Result<Signals> {
        Ok(Signals {
            edges: Some(self.edges(frames)?),
            first_frame: Some(self.first_frame(&frames[0])?),
            low_res: low_res.map(|l| self.low_res(l)).transpose()?,
            reference: None,
            source: Some(self.source(frames)?),
        })
    }

    /// A signal, (n, c, h, w) or (c, h, w) in pixels, at the sample resolution: average-pooled by the downscale.
    fn at_sample_resolution(&self, signal: Tensor) -> Result<Tensor> {
        if self.downscale == 1 {
            return Ok(signal);
        }
        Ok(match signal.rank() {
            3 => signal
                .unsqueeze(0)?
                .avg_pool2d(self.downscale)?
                .squeeze(0)?,
            _ => signal.avg_pool2d(self.downscale)?,
        })
    }
}

impl Signals {
    /// The channels `model` takes after the noisy video, (1, k, frames, h, w); `None` when it takes none.
    pub fn channels_for(&self, model: &ModelDir, frames: usize) -> Result<Option<Tensor>> {
        self.channels(&model.conditioning, frames, &model.path)
    }

    /// The channels a model conditioned on `conditioning` takes after the noisy video, (1, k, frames, h, w), in the
    /// order listed (edges, then the first frame repeated over time). `model` names the model in the error when a
    /// signal it needs is missing.
    pub fn channels(
        &self,
        conditioning: &[Conditioning],
        frames: usize,
        model: &Path,
    ) -> Result<Option<Tensor>> {
        let mut parts = Vec::new();
        for c in conditioning {
            match c {
                Conditioning::Edges | Conditioning::LowRes | Conditioning::Source => {
                    // Per-frame signals, already (k, F, h, w).
                    let (signal, field, msg) = match c {
                        Conditioning::Edges => (
                            &self.edges,
                            "edges",
                            "this model is conditioned on edges; give an edge video",
                        ),
                        Conditioning::LowRes => (
                            &self.low_res,
                            "low_res",
                            "this model is a super-resolution stage: it needs the previous stage's video (list it \
                             under a target's stages, after the base model)",
                        ),
                        _ => (
                            &self.source,
                            "source",
                            "this model is conditioned on the source video itself; give a video",
                        ),
                    };
                    let f = signal
                        .as_ref()
                        .ok_or_else(|| Error::config(Location::file(model).field(field), msg))?;
                    parts.push(f.unsqueeze(0)?);
                }
                Conditioning::FirstFrame | Conditioning::Reference => {
                    let (signal, field, msg) = if *c == Conditioning::FirstFrame {
                        (
                            &self.first_frame,
                            "first_frame",
                            "this model is conditioned on the first frame; give a video",
                        )
                    } else {
                        (&self.reference, "reference", "this model restyles after a reference image; give the target one (reference = ...)")
                    };
                    let f = signal
                        .as_ref()
                        .ok_or_else(|| Error::config(Location::file(model).field(field), msg))?;
                    let (c, h, w) = f.dims3()?;
                    parts.push(
                        f.unsqueeze(1)?
                            .broadcast_as((c, frames, h, w))?
                            .contiguous()?
                            .unsqueeze(0)?,
                    );
                }
            }
        }
        if parts.is_empty() {
            return Ok(None);
        }
        Ok(Some(Tensor::cat(&parts, 1)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three 2x3 frames, each one flat grey level (frame i: 40 * (i + 1)).
    fn frames() -> Vec<RgbImage> {
        (0..3)
            .map(|i| RgbImage::from_pixel(3, 2, image::Rgb([40 * (i as u8 + 1); 3])))
            .collect()
    }

    /// A model conditioned on `source` takes the clip's own frames, frame by frame, in the slot its `conditioning`
    /// lists (after the edge channel and the repeated first frame here); one that lists it without a source video
    /// is refused, naming the field.
    #[test]
    fn the_source_channels_are_the_clip_frames_in_their_listed_slot() {
        let device = Device::Cpu;
        let clip = frames();
        let signals = SignalBuilder::new(1, &device).clip(&clip, None).unwrap();
        let order = [
            Conditioning::Edges,
            Conditioning::FirstFrame,
            Conditioning::Source,
        ];
        let ch = signals
            .channels(&order, 3, Path::new("m"))
            .unwrap()
            .unwrap();
        assert_eq!(ch.dims(), &[1, 7, 3, 2, 3]);
        // Channels 4..7 are the source: frame t at 40 (t + 1) / 127.5 - 1; channels 1..4 repeat frame 0.
        let at = |c: usize, t: usize| -> f32 {
            ch.get(0)
                .unwrap()
                .get(c)
                .unwrap()
                .get(t)
                .unwrap()
                .get(1)
                .unwrap()
                .get(2)
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        for t in 0..3 {
            let want = 40.0 * (t as f32 + 1.0) / 127.5 - 1.0;
            for c in 4..7 {
                assert!(
                    (at(c, t) - want).abs() < 1e-6,
                    "source c{c} t{t}: {}",
                    at(c, t)
                );
            }
            assert!(
                (at(1, t) - (40.0 / 127.5 - 1.0)).abs() < 1e-6,
                "first frame repeated"
            );
        }
        let without = Signals {
            source: None,
            ..signals
        };
        let err = without
            .channels(&order, 3, Path::new("m"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("source"), "{err}");
    }
}
