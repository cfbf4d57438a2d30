//! Sobel edges, the conditioning signal of the edge-to-video models.
//!
//! Numeric contract (fixtures/sobel/README.md, = OpenCV `cv2.Sobel(gray, CV_32F, dx, dy, ksize=3,
//! borderType=BORDER_REPLICATE)` on an f32 gray image):
//! ```text
//! gray    = (r/255 * 0.299 + g/255 * 0.587) + b/255 * 0.114          (f32, in this order)
//! P(i, j) = gray(clamp(i, 0, H-1), clamp(j, 0, W-1))                  (replicated border)
//! dx(i,j) = -P(i-1,j-1) + P(i-1,j+1) - 2 P(i,j-1) + 2 P(i,j+1) - P(i+1,j-1) + P(i+1,j+1)
//! dy(i,j) = -P(i-1,j-1) - 2 P(i-1,j) - P(i-1,j+1) + P(i+1,j-1) + 2 P(i+1,j) + P(i+1,j+1)
//! mag     = sqrt(dx^2 + dy^2)
//! ```
//! Cross-correlation (not a flipped convolution): `dx > 0` where the image gets brighter to the right, `dy > 0` where
//! it gets brighter downwards. No normalisation, so |dx|, |dy| <= 4. The model's edge channel is `dx / 4`
//! ([`edge_channel`]): a fixed scale, so every window of an episode gets the same values.

use image::RgbImage;
use rayon::prelude::*;

/// A single-channel f32 image, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Plane {
    pub height: usize,
    pub width: usize,
    pub data: Vec<f32>,
}

impl Plane {
    pub fn zeros(height: usize, width: usize) -> Self {
        Self {
            height,
            width,
            data: vec![0.0; height * width],
        }
    }
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.width..(i + 1) * self.width]
    }
}

/// The Sobel outputs of one frame.
#[derive(Debug, Clone, PartialEq)]
pub struct SobelEdges {
    pub gray: Plane,
    /// d/dx (columns), `cv2.Sobel(dx=1, dy=0)`.
    pub sobel_dx: Plane,
    /// d/dy (rows), `cv2.Sobel(dx=0, dy=1)`.
    pub sobel_dy: Plane,
    pub magnitude: Plane,
}

/// BT.601 luma of RGB/255, in the fixture's f32 operation order.
pub fn gray(rgb: &[u8], height: usize, width: usize) -> Plane {
    debug_assert_eq!(rgb.len(), height * width * 3);
    let data = rgb
        .chunks_exact(3)
        .map(|p| {
            let (r, g, b) = (
                p[0] as f32 / 255.0,
                p[1] as f32 / 255.0,
                p[2] as f32 / 255.0,
            );
            (r * 0.299 + g * 0.587) + b * 0.114
        })
        .collect();
    Plane {
        height,
        width,
        data,
    }
}

/// Row-wise Sobel: for each output row, the three source rows (replicated at the border) are combined first into
/// a vertical smoothing `s = up + 2 mid + down` and a vertical difference `d = down - up`, then
/// `dx(j) = s(j+1) - s(j-1)` and `dy(j) = d(j-1) + 2 d(j) + d(j+1)`: two passes over contiguous f32 rows that the
/// compiler vectorises. The sums are regrouped relative to the README's formula, which changes the result only by
/// f32 rounding (~1e-7 on O(1) values; the fixture tolerance is 1e-5).
fn sobel_rows(
    gray: &Plane,
    out_dx: &mut [f32],
    out_dy: &mut [f32],
    out_mag: &mut [f32],
    s: &mut Vec<f32>,
    d: &mut Vec<f32>,
) {
    let (h, w) = (gray.height, gray.width);
    s.resize(w, 0.0);
    d.resize(w, 0.0);
    for i in 0..h {
        let up = gray.row(i.saturating_sub(1));
        let mid = gray.row(i);
        let down = gray.row((i + 1).min(h - 1));
        for j in 0..w {
            s[j] = up[j] + 2.0 * mid[j] + down[j];
            d[j] = down[j] - up[j];
        }
        let row_dx = &mut out_dx[i * w..(i + 1) * w];
        let row_dy = &mut out_dy[i * w..(i + 1) * w];
        let row_mag = &mut out_mag[i * w..(i + 1) * w];
        for j in 0..w {
            let l = j.saturating_sub(1);
            let r = (j + 1).min(w - 1);
            let gx = s[r] - s[l];
            let gy = d[l] + 2.0 * d[j] + d[r];
            row_dx[j] = gx;
            row_dy[j] = gy;
            row_mag[j] = (gx * gx + gy * gy).sqrt();
        }
    }
}

/// Sobel edges of one RGB u8 frame (H x W x 3, row-major). Any size from 1 x 1 up.
pub fn sobel(rgb: &[u8], height: usize, width: usize) -> SobelEdges {
    let gray = gray(rgb, height, width);
    let n = height * width;
    let (mut dx, mut dy, mut mag) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    if n > 0 {
        sobel_rows(
            &gray,
            &mut dx,
            &mut dy,
            &mut mag,
            &mut Vec::new(),
            &mut Vec::new(),
        );
    }
    let plane = |data| Plane {
        height,
        width,
        data,
    };
    SobelEdges {
        sobel_dx: plane(dx),
        sobel_dy: plane(dy),
        magnitude: plane(mag),
        gray,
    }
}

/// `sobel_dx / 4` of one frame: the model's edge conditioning channel, in [-1, 1].
pub fn edge_in_unit_range(frame: &RgbImage) -> Plane {
    let mut dx = sobel(
        frame.as_raw(),
        frame.height() as usize,
        frame.width() as usize,
    )
    .sobel_dx;
    for v in &mut dx.data {
        *v *= 0.25;
    }
    dx
}

/// The edge channel of a whole video, frames in parallel: `F` planes of `sobel_dx / 4`, concatenated
/// frame-major (F, H, W), ready to become the (1, F, H, W) conditioning channel.
pub fn edge_channel(frames: &[RgbImage]) -> Vec<f32> {
    let planes: Vec<Plane> = frames.par_iter().map(edge_in_unit_range).collect();
    let mut out = Vec::with_capacity(planes.iter().map(|p| p.data.len()).sum());
    for p in planes {
        out.extend_from_slice(&p.data);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's formula, term by term, as the oracle for the regrouped fast path.
    fn naive(rgb: &[u8], h: usize, w: usize) -> (Vec<f32>, Vec<f32>) {
        let g = gray(rgb, h, w);
        let p = |i: isize, j: isize| {
            let i = i.clamp(0, h as isize - 1) as usize;
            let j = j.clamp(0, w as isize - 1) as usize;
            g.data[i * w + j]
        };
        let (mut dx, mut dy) = (vec![], vec![]);
        for i in 0..h as isize {
            for j in 0..w as isize {
                dx.push(
                    -p(i - 1, j - 1) + p(i - 1, j + 1) - 2.0 * p(i, j - 1) + 2.0 * p(i, j + 1)
                        - p(i + 1, j - 1)
                        + p(i + 1, j + 1),
                );
                dy.push(
                    -p(i - 1, j - 1) - 2.0 * p(i - 1, j) - p(i - 1, j + 1)
                        + p(i + 1, j - 1)
                        + 2.0 * p(i + 1, j)
                        + p(i + 1, j + 1),
                );
            }
        }
        (dx, dy)
    }

    #[test]
    fn fast_path_matches_the_formula_on_odd_sizes() {
        for (h, w) in [(1, 1), (1, 7), (7, 1), (2, 3), (13, 17)] {
            let rgb: Vec<u8> = (0..h * w * 3)
                .map(|k| ((k * 37 + 11) % 256) as u8)
                .collect();
            let e = sobel(&rgb, h, w);
            let (dx, dy) = naive(&rgb, h, w);
            for k in 0..h * w {
                assert!(
                    (e.sobel_dx.data[k] - dx[k]).abs() < 1e-6,
                    "dx {h}x{w} at {k}"
                );
                assert!(
                    (e.sobel_dy.data[k] - dy[k]).abs() < 1e-6,
                    "dy {h}x{w} at {k}"
                );
            }
            if w == 1 {
                assert!(
                    e.sobel_dx.data.iter().all(|&v| v == 0.0),
                    "dx must be 0 for W = 1"
                );
            }
            if h == 1 {
                assert!(
                    e.sobel_dy.data.iter().all(|&v| v == 0.0),
                    "dy must be 0 for H = 1"
                );
            }
        }
    }

    #[test]
    fn brighter_to_the_right_is_positive_dx() {
        let (h, w) = (3, 4);
        let mut rgb = vec![0u8; h * w * 3];
        for i in 0..h {
            for j in 2..w {
                rgb[(i * w + j) * 3..(i * w + j) * 3 + 3].copy_from_slice(&[255, 255, 255]);
            }
        }
        let e = sobel(&rgb, h, w);
        assert!(e.sobel_dx.data[1] > 3.9 && e.sobel_dx.data[2] > 3.9);
        let img = RgbImage::from_raw(w as u32, h as u32, rgb).unwrap();
        let ch = edge_channel(&[img.clone(), img]);
        assert_eq!(ch.len(), 2 * h * w);
        assert!(ch.iter().all(|v| (-1.0..=1.0).contains(v)));
        assert!((ch[1] - e.sobel_dx.data[1] / 4.0).abs() < 1e-7);
    }
}
