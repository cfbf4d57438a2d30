//! `vadapt preview OUT`: a PNG contact sheet of one augmented episode (rows: source camera, its edges, each
//! target; columns: frames spread over the episode) and optionally a side-by-side mp4 of the same rows.

use std::path::Path;

use image::{Rgb, RgbImage};

use super::config::{Layout, PipelineConfig, SOURCE_TARGET};
use super::units::WorkDir;
use super::variants;
use crate::episode::EpisodeIndex;
use crate::error::{Error, Location, Result};
use crate::io::open_dataset;
use crate::io::video::{encode_frames, EncoderOptions, VideoCodec};
use crate::vision::edges::edge_in_unit_range;

/// Rows of one episode: (label, frames), all at the same size and length.
pub fn preview_rows(out: &Path, episode: u64) -> Result<Vec<(String, Vec<RgbImage>)>> {
    let st = super::output::read_state(&WorkDir::new(out))?.ok_or_else(|| {
        Error::invalid(
            Location::file(out),
            "not a vadapt augment output (no .vadapt/state.json)",
        )
    })?;
    let cfg: PipelineConfig = st.config;
    let ds = open_dataset(out)?;
    let key = &cfg.input.image_key;
    let mut rows = Vec::new();
    let indices = ds.episode_indices();
    let not_found = || {
        Error::invalid(
            Location::file(out).episode(episode),
            "no such source episode in the output",
        )
    };
    match cfg.output.layout {
        Layout::Paired => {
            if !indices.contains(&EpisodeIndex(episode)) {
                return Err(not_found());
            }
            let ep = ds.read_episode(EpisodeIndex(episode))?;
            let camera = |k: &str| {
                ep.cameras
                    .get(k)
                    .ok_or_else(|| Error::invalid(Location::file(out).field(k), "camera missing"))?
                    .decode()
            };
            let src = camera(key)?;
            rows.push(("source".to_string(), src));
            for t in &cfg.targets {
                rows.push((t.name.clone(), camera(&t.camera_key())?));
            }
        }
        Layout::Expanded => {
            // One episode per (source, target): the source camera itself is replaced, so the source row is read
            // from the input dataset.
            let input = open_dataset(&st.input)?;
            let src = input.read_episode(EpisodeIndex(episode))?;
            let frames = src
                .cameras
                .get(key)
                .ok_or_else(|| {
                    Error::invalid(Location::file(&st.input).field(key), "camera missing")
                })?
                .decode()?;
            rows.push(("source".to_string(), frames));
            for idx in indices {
                let ep = ds.read_episode(idx)?;
                let col = ep
                    .columns
                    .column_by_name("augmentation.source_episode_index")
                    .and_then(|c| {
                        c.as_any()
                            .downcast_ref::<arrow::array::Int64Array>()
                            .map(|a| a.value(0))
                    });
                if col != Some(episode as i64) {
                    continue;
                }
                let text = |k: &str| {
                    ep.columns.column_by_name(k).and_then(|c| {
                        c.as_any()
                            .downcast_ref::<arrow::array::StringArray>()
                            .map(|a| a.value(0).to_string())
                    })
                };
                let name = text("augmentation.target").unwrap_or_default();
                if name == SOURCE_TARGET {
                    continue; // a kept source episode: the source row already shows it
                }
                // A randomized run's row says which variant and which prompt (the prior's, else the target's).
                let label = match (
                    text("augmentation.prior_prompt"),
                    text("augmentation.prompt"),
                ) {
                    (Some(p), _) if !p.is_empty() => format!("{name}: {p}"),
                    (_, Some(p)) if !p.is_empty() => format!("{name}: {p}"),
                    _ => name,
                };
                let f = ep
                    .cameras
                    .get(variants::expanded_key(&cfg))
                    .ok_or_else(not_found)?
                    .decode()?;
                rows.push((label, f));
            }
            if rows.len() == 1 {
                return Err(not_found());
            }
        }
    }
    let src = rows[0].1.clone();
    // Edges are small numbers (Sobel dx / 4): shown around mid-grey, stretched to the episode's largest magnitude.
    let planes: Vec<_> = src.iter().map(edge_in_unit_range).collect();
    let peak = planes
        .iter()
        .flat_map(|p| p.data.iter())
        .fold(1e-6f32, |m, v| m.max(v.abs()));
    let edges = src
        .iter()
        .zip(&planes)
        .map(|(f, e)| {
            RgbImage::from_fn(f.width(), f.height(), |x, y| {
                let v = e.data[y as usize * e.width + x as usize] / peak;
                let g = (128.0 + 127.0 * v.clamp(-1.0, 1.0)).round() as u8;
                Rgb([g, g, g])
            })
        })
        .collect();
    rows.insert(1, ("edges".to_string(), edges));
    Ok(rows)
}

/// The contact sheet: `columns` frames spread evenly over the episode, one row per entry of `rows`, 2-pixel gaps.
pub fn contact_sheet(rows: &[(String, Vec<RgbImage>)], columns: usize) -> RgbImage {
    let n = rows.iter().map(|(_, f)| f.len()).min().unwrap_or(0);
    let (w, h) = rows
        .first()
        .and_then(|(_, f)| f.first())
        .map(|f| (f.width(), f.height()))
        .unwrap_or((0, 0));
    let cols = columns.clamp(1, n.max(1));
    let pick: Vec<usize> = (0..cols)
        .map(|c| {
            if cols == 1 {
                0
            } else {
                c * (n.saturating_sub(1)) / (cols - 1)
            }
        })
        .collect();
    let gap = 2;
    let mut sheet = RgbImage::from_pixel(
        cols as u32 * (w + gap) + gap,
        rows.len() as u32 * (h + gap) + gap,
        Rgb([255, 255, 255]),
    );
    if n == 0 {
        return sheet;
    }
    for (r, (_, frames)) in rows.iter().enumerate() {
        for (c, &i) in pick.iter().enumerate() {
            let f = &frames[i];
            let (x0, y0) = (gap + c as u32 * (w + gap), gap + r as u32 * (h + gap));
            for (x, y, p) in f.enumerate_pixels() {
                if x < w && y < h {
                    sheet.put_pixel(x0 + x, y0 + y, *p);
                }
            }
        }
    }
    sheet
}

/// Every row side by side, frame by frame, as one H.264 video.
pub fn side_by_side(rows: &[(String, Vec<RgbImage>)], path: &Path, fps: f64) -> Result<()> {
    let n = rows.iter().map(|(_, f)| f.len()).min().unwrap_or(0);
    let (w, h) = rows
        .first()
        .and_then(|(_, f)| f.first())
        .map(|f| (f.width(), f.height()))
        .unwrap_or((0, 0));
    let frames: Vec<RgbImage> = (0..n)
        .map(|i| {
            RgbImage::from_fn(w * rows.len() as u32, h, |x, y| {
                *rows[(x / w) as usize].1[i].get_pixel(x % w, y)
            })
        })
        .collect();
    encode_frames(
        path,
        &frames,
        fps,
        &EncoderOptions {
            codec: Some(VideoCodec::H264),
            crf: 18,
            ..EncoderOptions::default()
        },
    )?;
    Ok(())
}
