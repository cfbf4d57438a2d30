//! Resampling of frames.
//!
//! * [`area`]: the mean over each output pixel's footprint in the source, weighted by overlap: OpenCV's
//!   `INTER_AREA` for downscaling (compose/README.md makes its edge video with it). For integer factors
//!   (360x640 -> 24x40) this is the exact block mean.
//! * [`bilinear`]: half-pixel-centre bilinear interpolation (`cv2.INTER_LINEAR`, `align_corners=False`), for upscaling
//!   model outputs back to the source resolution.
//!
//! Both are separable (rows, then columns) and work on interleaved f32 channels.

use image::RgbImage;

/// Per output index: (first source index, weights over consecutive source indices).
type Taps = Vec<(usize, Vec<f32>)>;

fn area_taps(src: usize, dst: usize) -> Taps {
    let scale = src as f64 / dst as f64;
    (0..dst)
        .map(|o| {
            let (lo, hi) = (o as f64 * scale, (o + 1) as f64 * scale);
            let first = lo.floor() as usize;
            let last = (hi.ceil() as usize).min(src);
            let w: Vec<f32> = (first..last)
                .map(|s| {
                    let overlap = (hi.min(s as f64 + 1.0) - lo.max(s as f64)).max(0.0);
                    (overlap / scale) as f32
                })
                .collect();
            (first, w)
        })
        .collect()
}

fn bilinear_taps(src: usize, dst: usize) -> Taps {
    let scale = src as f64 / dst as f64;
    (0..dst)
        .map(|o| {
            let x = ((o as f64 + 0.5) * scale - 0.5).clamp(0.0, (src - 1) as f64);
            let first = x.floor() as usize;
            let frac = (x - first as f64) as f32;
            if first + 1 < src {
                (first, vec![1.0 - frac, frac])
            } else {
                (first, vec![1.0])
            }
        })
        .collect()
}

/// Apply separable taps to an interleaved (h, w, c) f32 image.
fn separable(src: &[f32], h: usize, w: usize, c: usize, rows: &Taps, cols: &Taps) -> Vec<f32> {
    let (dh, dw) = (rows.len(), cols.len());
    // Columns first: (h, dw, c).
    let mut tmp = vec![0.0f32; h * dw * c];
    for i in 0..h {
        let srow = &src[i * w * c..(i + 1) * w * c];
        let trow = &mut tmp[i * dw * c..(i + 1) * dw * c];
        for (o, (first, ws)) in cols.iter().enumerate() {
            for (k, &wt) in ws.iter().enumerate() {
                let s = &srow[(first + k) * c..(first + k + 1) * c];
                for ch in 0..c {
                    trow[o * c + ch] += wt * s[ch];
                }
            }
        }
    }
    let mut out = vec![0.0f32; dh * dw * c];
    for (o, (first, ws)) in rows.iter().enumerate() {
        let orow = &mut out[o * dw * c..(o + 1) * dw * c];
        for (k, &wt) in ws.iter().enumerate() {
            let trow = &tmp[(first + k) * dw * c..(first + k + 1) * dw * c];
            for (dst, s) in orow.iter_mut().zip(trow) {
                *dst += wt * s;
            }
        }
    }
    out
}

/// Area resampling of an interleaved (h, w, c) f32 image to (dh, dw, c).
pub fn area(src: &[f32], h: usize, w: usize, c: usize, dh: usize, dw: usize) -> Vec<f32> {
    separable(src, h, w, c, &area_taps(h, dh), &area_taps(w, dw))
}

/// Bilinear resampling of an interleaved (h, w, c) f32 image to (dh, dw, c).
pub fn bilinear(src: &[f32], h: usize, w: usize, c: usize, dh: usize, dw: usize) -> Vec<f32> {
    separable(src, h, w, c, &bilinear_taps(h, dh), &bilinear_taps(w, dw))
}

fn to_rgb(data: &[f32], h: usize, w: usize) -> RgbImage {
    let bytes = data
        .iter()
        .map(|v| v.round().clamp(0.0, 255.0) as u8)
        .collect();
    RgbImage::from_raw(w as u32, h as u32, bytes)
        .unwrap_or_else(|| RgbImage::new(w as u32, h as u32))
}

/// Resize an RGB frame: area averaging when shrinking, bilinear when growing (per axis the larger of the two
/// sizes decides; mixed cases use area, which is exact for the common integer downscale).
pub fn resize_rgb(frame: &RgbImage, height: u32, width: u32) -> RgbImage {
    let (h, w) = (frame.height() as usize, frame.width() as usize);
    let (dh, dw) = (height as usize, width as usize);
    if (h, w) == (dh, dw) {
        return frame.clone();
    }
    let src: Vec<f32> = frame.as_raw().iter().map(|&v| v as f32).collect();
    let out = if dh <= h && dw <= w {
        area(&src, h, w, 3, dh, dw)
    } else {
        bilinear(&src, h, w, 3, dh, dw)
    };
    to_rgb(&out, dh, dw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_area_downscale_is_the_block_mean() {
        let (h, w, f) = (6, 8, 2);
        let src: Vec<f32> = (0..h * w).map(|k| (k * 7 % 13) as f32).collect();
        let out = area(&src, h, w, 1, h / f, w / f);
        for i in 0..h / f {
            for j in 0..w / f {
                let mut s = 0.0;
                for a in 0..f {
                    for b in 0..f {
                        s += src[(i * f + a) * w + j * f + b];
                    }
                }
                assert!((out[i * (w / f) + j] - s / 4.0).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn fractional_area_preserves_the_mean_and_constants() {
        let (h, w) = (9, 10);
        let src = vec![42.0f32; h * w * 3];
        let out = area(&src, h, w, 3, 4, 7);
        assert!(out.iter().all(|v| (v - 42.0).abs() < 1e-4));
        let ramp: Vec<f32> = (0..h * w).map(|k| k as f32).collect();
        let out = area(&ramp, h, w, 1, 3, 5);
        let mean_in = ramp.iter().sum::<f32>() / ramp.len() as f32;
        let mean_out = out.iter().sum::<f32>() / out.len() as f32;
        assert!((mean_in - mean_out).abs() < 1e-3);
    }

    #[test]
    fn bilinear_upscale_keeps_constants_and_is_monotone_on_ramps() {
        let src: Vec<f32> = (0..4).map(|k| k as f32 * 10.0).collect();
        let out = bilinear(&src, 1, 4, 1, 1, 8);
        assert!(out.windows(2).all(|p| p[1] >= p[0]));
        assert_eq!(out[0], 0.0);
        assert_eq!(out[7], 30.0);
        let img = RgbImage::from_pixel(4, 3, image::Rgb([10, 20, 30]));
        let up = resize_rgb(&img, 6, 8);
        assert_eq!((up.width(), up.height()), (8, 6));
        assert!(up.pixels().all(|p| p.0 == [10, 20, 30]));
    }
}
