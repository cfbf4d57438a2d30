//! `keep_mask`: keep the source camera's pixels wherever a mask camera of the dataset says so, so that a target
//! generates only the rest of the scene. ROSIE (Yu et al. 2023) and GenAug (Chen et al. 2023) keep the robot this
//! way; on LanguageTable the restyle model paints the white arm out, and the policy benchmark loses most of its
//! gain without it (docs/results.md, "What the bar needs, and the arm"). Per pixel, at the output size:
//!
//! ```text
//! out = m · source + (1 − m) · generated,   m = mean(R, G, B) of the mask frame / 255
//! ```
//!
//! in integers (`(m·s + (255 − m)·g + 127) / 255` with `m` in 0..=255), so a run, a resumed run and `vadapt
//! regenerate` give the same bytes. The mask camera is soft (a matte: `generate.py --robot-mask` area-averages
//! the renderer's segmentation), and the source and mask frames are resized to the output size like the targets'.

use std::collections::BTreeMap;

use image::{GrayImage, RgbImage};

use super::config::TargetConfig;
use super::workers::decode_camera;
use crate::episode::Episode;
use crate::error::Result;
use crate::vision::resize::resize_rgb;

/// The distinct mask cameras `targets` name, in target order.
pub(super) fn mask_keys<'a>(targets: impl IntoIterator<Item = &'a TargetConfig>) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for t in targets {
        if let Some(k) = &t.keep_mask {
            if !keys.contains(k) {
                keys.push(k.clone());
            }
        }
    }
    keys
}

/// One episode's source frames and masks at the output size, made once for every target that keeps pixels.
pub(super) struct Keep {
    source: Vec<RgbImage>,
    masks: BTreeMap<String, Vec<GrayImage>>,
}

impl Keep {
    /// The source camera `image_key` and the mask cameras `keys` of `ep` at `size` (height, width). Nothing is
    /// decoded when `keys` is empty.
    pub fn of(
        ep: &Episode,
        image_key: &str,
        keys: &[String],
        size: (usize, usize),
    ) -> Result<Self> {
        if keys.is_empty() {
            return Ok(Self {
                source: Vec::new(),
                masks: BTreeMap::new(),
            });
        }
        let (h, w) = (size.0 as u32, size.1 as u32);
        // Checked against the table's rows as the read worker checks the input camera.
        let camera = |key: &str| -> Result<Vec<RgbImage>> {
            Ok(decode_camera(ep, ep.index, key)?
                .into_iter()
                .map(|f| {
                    if f.dimensions() == (w, h) {
                        f
                    } else {
                        resize_rgb(&f, h, w)
                    }
                })
                .collect())
        };
        let source = camera(image_key)?;
        let mut masks = BTreeMap::new();
        for k in keys {
            masks.insert(k.clone(), camera(k)?.iter().map(weight).collect());
        }
        Ok(Self { source, masks })
    }

    /// `generated` (at the output size) with the source kept under the mask camera `key`; unchanged for `None`.
    pub fn apply(&self, key: Option<&str>, mut generated: Vec<RgbImage>) -> Vec<RgbImage> {
        let Some(masks) = key.and_then(|k| self.masks.get(k)) else {
            return generated;
        };
        for ((g, s), m) in generated.iter_mut().zip(&self.source).zip(masks) {
            composite(g, s, m);
        }
        generated
    }
}

/// A mask frame's weight per pixel: the mean of its channels (a grey matte stored as colour video).
fn weight(mask: &RgbImage) -> GrayImage {
    GrayImage::from_fn(mask.width(), mask.height(), |x, y| {
        let p = mask.get_pixel(x, y).0;
        image::Luma([((p[0] as u32 + p[1] as u32 + p[2] as u32 + 1) / 3) as u8])
    })
}

/// `generated = (m·source + (255 − m)·generated + 127) / 255`, in place; all three the same size.
pub(super) fn composite(generated: &mut RgbImage, source: &RgbImage, mask: &GrayImage) {
    debug_assert_eq!(generated.dimensions(), source.dimensions());
    debug_assert_eq!(generated.dimensions(), mask.dimensions());
    let m = mask.as_raw();
    for ((g, s), i) in generated
        .as_mut()
        .chunks_exact_mut(3)
        .zip(source.as_raw().chunks_exact(3))
        .zip(0..)
    {
        let m = m[i] as u32;
        for c in 0..3 {
            g[c] = ((m * s[c] as u32 + (255 - m) * g[c] as u32 + 127) / 255) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composite_keeps_the_source_under_the_mask_and_blends_its_edge() {
        let source = RgbImage::from_pixel(3, 1, image::Rgb([200, 100, 0]));
        let mut generated = RgbImage::from_pixel(3, 1, image::Rgb([0, 50, 255]));
        // Robot, half, background.
        let mask = GrayImage::from_raw(3, 1, vec![255, 128, 0]).unwrap();
        composite(&mut generated, &source, &mask);
        assert_eq!(generated.get_pixel(0, 0).0, [200, 100, 0]);
        // 128/255 of the source: 200·128/255 = 100.4, (100·128 + 50·127)/255 = 75.1, 255·127/255 = 127.
        assert_eq!(generated.get_pixel(1, 0).0, [100, 75, 127]);
        assert_eq!(generated.get_pixel(2, 0).0, [0, 50, 255]);
    }

    #[test]
    fn a_mask_weight_is_the_mean_of_its_channels() {
        let mask = RgbImage::from_raw(2, 1, vec![255, 255, 255, 10, 20, 31]).unwrap();
        assert_eq!(weight(&mask).as_raw(), &vec![255, 20]);
    }

    #[test]
    fn mask_keys_are_distinct_in_target_order() {
        let cfg = super::super::PipelineConfig::parse(
            "[[target]]\nname = \"a\"\nadapter = \"m\"\nkeep_mask = \"observation.images.k2\"\n\
             [[target]]\nname = \"b\"\nadapter = \"m\"\n\
             [[target]]\nname = \"c\"\nadapter = \"m\"\nkeep_mask = \"observation.images.k1\"\n\
             [[target]]\nname = \"d\"\nadapter = \"m\"\nkeep_mask = \"observation.images.k2\"\n",
            std::path::Path::new("p.toml"),
        )
        .unwrap();
        assert_eq!(
            mask_keys(&cfg.targets),
            ["observation.images.k2", "observation.images.k1"]
        );
    }
}
