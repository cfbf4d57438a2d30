//! Cameras stored in the data parquet as images (lerobot `dtype: "image"`), the layout lerobot v3.0 writes with
//! `LeRobotDataset.create(..., use_videos=False)`: one PNG per frame, embedded by `datasets`' `embed_table_storage`
//! as `struct<bytes: binary, path: string>`, where `path` keeps only the file name lerobot's image writer gave the
//! frame (`frame-{frame_index:06d}.png`, from `DEFAULT_IMAGE_PATH`). No `videos/` directory and no FFmpeg: a build
//! without the `video` feature writes datasets this way.

use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryArray, StringArray, StructArray};
use arrow::datatypes::{DataType, Field, Fields};
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ExtendedColorType, ImageEncoder, RgbImage};
use serde_json::{json, Value};

use crate::error::{Error, Location, Result};

/// How a LeRobot dataset stores its cameras.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CameraStorage {
    /// mp4 per camera under `videos/` (`dtype: "video"`, lerobot's default `use_videos=True`).
    #[default]
    Video,
    /// PNG frames in the data parquet (`dtype: "image"`, `use_videos=False`): lossless, no video codec needed.
    Images,
}

impl CameraStorage {
    /// The info.json dtype of a camera stored this way.
    pub fn dtype(self) -> &'static str {
        match self {
            CameraStorage::Video => "video",
            CameraStorage::Images => "image",
        }
    }
}

/// The arrow type of an image column: `datasets.Image()`'s storage type.
pub fn image_type() -> DataType {
    DataType::Struct(Fields::from(vec![
        Field::new("bytes", DataType::Binary, true),
        Field::new("path", DataType::Utf8, true),
    ]))
}

/// The `huggingface` schema metadata of an image column (`datasets.Image()`).
pub fn hf_image_feature() -> Value {
    json!({"_type": "Image"})
}

/// One frame as PNG. Fast compression, like lerobot's `write_image(..., compress_level=1)`; the encoder is
/// deterministic, so the same frames give the same bytes.
pub fn encode_png(frame: &RgbImage, loc: &Location) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Adaptive)
        .write_image(
            frame.as_raw(),
            frame.width(),
            frame.height(),
            ExtendedColorType::Rgb8,
        )
        .map_err(|e| Error::invalid(loc.clone(), format!("cannot encode PNG: {e}")))?;
    Ok(out)
}

/// An episode's frames of camera `key` as an image column, one PNG per row.
pub fn image_column(frames: &[RgbImage], episode: u64, key: &str) -> Result<ArrayRef> {
    let bytes = frames
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let loc = Location::none().episode(episode).frame(i as u64).field(key);
            encode_png(f, &loc)
        })
        .collect::<Result<Vec<_>>>()?;
    let paths: Vec<String> = (0..frames.len())
        .map(|i| format!("frame-{i:06}.png"))
        .collect();
    let DataType::Struct(fields) = image_type() else {
        unreachable!("image_type is a struct")
    };
    let col = StructArray::try_new(
        fields,
        vec![
            Arc::new(BinaryArray::from_iter_values(bytes)),
            Arc::new(StringArray::from(paths)),
        ],
        None,
    )
    .map_err(|e| Error::table(Location::none().episode(episode).field(key), e))?;
    Ok(Arc::new(col))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};

    #[test]
    fn png_column_round_trips_pixels_and_names_frames_like_lerobot() {
        let frames: Vec<RgbImage> = (0..3u8)
            .map(|k| {
                RgbImage::from_fn(5, 3, |x, y| image::Rgb([k, x as u8 * 40, y as u8 * 70 + k]))
            })
            .collect();
        let col = image_column(&frames, 7, "observation.images.cam").unwrap();
        assert_eq!(col.data_type(), &image_type());
        let s = col.as_struct();
        let paths = s.column(1).as_string::<i32>();
        assert_eq!(paths.value(2), "frame-000002.png");
        for (i, f) in frames.iter().enumerate() {
            let b = s.column(0).as_binary::<i32>().value(i);
            assert_eq!(&b[..4], b"\x89PNG");
            let back = image::load_from_memory(b).unwrap().to_rgb8();
            assert_eq!(back.as_raw(), f.as_raw(), "frame {i}");
        }
        // Deterministic bytes.
        let again = image_column(&frames, 7, "observation.images.cam").unwrap();
        assert_eq!(col.to_data(), again.to_data());
    }
}
