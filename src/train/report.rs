//! What a training run shows: the loss log (CSV), its curve (PNG) and contact sheets of samples.
//!
//! The curve is drawn with `image` + `imageproc` line primitives (log-scale loss over steps, decade grid lines)
//! rather than a plotting crate: the plotting crates need a font stack (fontconfig/freetype) for any text, and
//! the numbers are in the CSV next to it anyway.

use std::io::Write;
use std::path::Path;

use image::{Rgb, RgbImage};
use imageproc::drawing::draw_line_segment_mut;

use crate::error::{IoResultExt, Result};

/// One row of `loss.csv`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossRow {
    pub step: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub seconds: f64,
}

pub const CSV_HEADER: &str = "step,loss,lr,grad_norm,seconds";

/// Read `loss.csv`, keeping rows with `step <= up_to` (a resumed run drops what it will redo).
pub fn read_loss_csv(path: &Path, up_to: usize) -> Result<Vec<LossRow>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path).at(path)?;
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|l| {
            let v: Vec<f64> = l.split(',').filter_map(|x| x.trim().parse().ok()).collect();
            (v.len() == 5).then(|| LossRow {
                step: v[0] as usize,
                loss: v[1],
                lr: v[2],
                grad_norm: v[3],
                seconds: v[4],
            })
        })
        .filter(|r| r.step <= up_to)
        .collect())
}

/// Rewrite `loss.csv` with `rows`.
pub fn write_loss_csv(path: &Path, rows: &[LossRow]) -> Result<()> {
    let mut text = String::from(CSV_HEADER);
    text.push('\n');
    for r in rows {
        text.push_str(&format_row(r));
    }
    crate::io::fs::write_atomic(path, text.as_bytes())
}

fn format_row(r: &LossRow) -> String {
    format!(
        "{},{:.6e},{:.6e},{:.6e},{:.3}\n",
        r.step, r.loss, r.lr, r.grad_norm, r.seconds
    )
}

/// Append one row (the file exists with its header).
pub fn append_loss_row(path: &Path, row: &LossRow) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .at(path)?;
    f.write_all(format_row(row).as_bytes()).at(path)?;
    Ok(())
}

/// The loss curve: x = step, y = log10(loss), raw points in light blue and a moving average in dark blue;
/// grey horizontal lines at every power of ten.
pub fn loss_curve(rows: &[LossRow], width: u32, height: u32) -> RgbImage {
    let mut img = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let pts: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r.loss.is_finite() && r.loss > 0.0)
        .map(|r| (r.step as f64, r.loss.log10()))
        .collect();
    if pts.len() < 2 {
        return img;
    }
    let (x0, x1) = (pts[0].0, pts[pts.len() - 1].0.max(pts[0].0 + 1.0));
    let lo = pts
        .iter()
        .map(|p| p.1)
        .fold(f64::INFINITY, f64::min)
        .floor();
    let hi = pts
        .iter()
        .map(|p| p.1)
        .fold(f64::NEG_INFINITY, f64::max)
        .ceil()
        .max(lo + 1.0);
    let m = 20.0f32;
    let (w, h) = (width as f32 - 2.0 * m, height as f32 - 2.0 * m);
    let px = |x: f64| m + ((x - x0) / (x1 - x0)) as f32 * w;
    let py = |y: f64| m + ((hi - y) / (hi - lo)) as f32 * h;
    let mut decade = lo;
    while decade <= hi {
        draw_line_segment_mut(
            &mut img,
            (m, py(decade)),
            (m + w, py(decade)),
            Rgb([210, 210, 210]),
        );
        decade += 1.0;
    }
    draw_line_segment_mut(&mut img, (m, m), (m, m + h), Rgb([0, 0, 0]));
    draw_line_segment_mut(&mut img, (m, m + h), (m + w, m + h), Rgb([0, 0, 0]));
    for p in pts.windows(2) {
        draw_line_segment_mut(
            &mut img,
            (px(p[0].0), py(p[0].1)),
            (px(p[1].0), py(p[1].1)),
            Rgb([160, 190, 240]),
        );
    }
    let k = (pts.len() / 50).max(1);
    let smooth: Vec<(f64, f64)> = (0..pts.len())
        .map(|i| {
            let a = i.saturating_sub(k);
            let b = (i + k + 1).min(pts.len());
            let mean = pts[a..b].iter().map(|p| p.1).sum::<f64>() / (b - a) as f64;
            (pts[i].0, mean)
        })
        .collect();
    for p in smooth.windows(2) {
        draw_line_segment_mut(
            &mut img,
            (px(p[0].0), py(p[0].1)),
            (px(p[1].0), py(p[1].1)),
            Rgb([20, 60, 160]),
        );
    }
    img
}

/// A grid of frames: one row per video, one column per frame, `scale`x nearest-neighbour, 2 px white gaps.
pub fn contact_sheet(rows: &[Vec<RgbImage>], scale: u32) -> RgbImage {
    let gap = 2;
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0) as u32;
    let (fw, fh) = rows
        .iter()
        .flat_map(|r| r.first())
        .map(|f| (f.width() * scale, f.height() * scale))
        .next()
        .unwrap_or((0, 0));
    let mut sheet = RgbImage::from_pixel(
        cols * (fw + gap) + gap,
        rows.len() as u32 * (fh + gap) + gap,
        Rgb([255, 255, 255]),
    );
    for (r, row) in rows.iter().enumerate() {
        for (c, frame) in row.iter().enumerate() {
            let (ox, oy) = (gap + c as u32 * (fw + gap), gap + r as u32 * (fh + gap));
            for y in 0..fh.min(frame.height() * scale) {
                for x in 0..fw.min(frame.width() * scale) {
                    sheet.put_pixel(ox + x, oy + y, *frame.get_pixel(x / scale, y / scale));
                }
            }
        }
    }
    sheet
}

/// An edge plane (`sobel_dx / 4` in [-1, 1]) as a grey image: 0 is mid-grey.
pub fn edge_image(edges: &[f32], height: u32, width: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        let v = edges[(y * width + x) as usize];
        let g = (127.5 + 127.5 * v.clamp(-1.0, 1.0)).round() as u8;
        Rgb([g, g, g])
    })
}

/// Save a PNG atomically.
pub fn save_png(img: &RgbImage, path: &Path) -> Result<()> {
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .map_err(|e| crate::Error::invalid(crate::Location::file(path), e.to_string()))?;
    crate::io::fs::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_round_trip_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("loss.csv");
        let rows: Vec<LossRow> = (1..=5)
            .map(|s| LossRow {
                step: s,
                loss: 1.0 / s as f64,
                lr: 1e-3,
                grad_norm: 0.5,
                seconds: s as f64,
            })
            .collect();
        write_loss_csv(&p, &rows[..3]).unwrap();
        append_loss_row(&p, &rows[3]).unwrap();
        append_loss_row(&p, &rows[4]).unwrap();
        let back = read_loss_csv(&p, 4).unwrap();
        assert_eq!(back.len(), 4);
        assert!((back[2].loss - 1.0 / 3.0).abs() < 1e-6);
        let img = loss_curve(&read_loss_csv(&p, 99).unwrap(), 200, 100);
        let dark = img.pixels().filter(|p| p.0 == [20, 60, 160]).count();
        assert!(dark > 50, "the smoothed curve is drawn ({dark} px)");
    }

    #[test]
    fn sheet_layout() {
        let f = RgbImage::from_pixel(4, 3, Rgb([9, 9, 9]));
        let s = contact_sheet(&[vec![f.clone(), f.clone()], vec![f]], 2);
        assert_eq!((s.width(), s.height()), (2 * (8 + 2) + 2, 2 * (6 + 2) + 2));
        assert_eq!(s.get_pixel(2, 2).0, [9, 9, 9]);
        assert_eq!(
            s.get_pixel(12 + 1, 10 + 1).0,
            [255, 255, 255],
            "missing frame stays blank"
        );
    }
}
