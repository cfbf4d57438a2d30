//! Tile shuffling: a reference still cut into a grid of tiles, the tiles permuted.
//!
//! A restyle model takes the look to render (board material and colour, background, light) from a reference still and
//! the scene from the edges and the first frame. Shuffled tiles keep what a look is made of (colours, textures, their
//! proportions) and break every position in the still, so that copying its layout is never right. Training shuffles
//! each clip's still its own way (`data.reference_tiles`); at sampling a model whose `vadapt.json` has
//! `reference_tiles` gets its reference shuffled by [`REFERENCE_PERMUTATION_SEED`]'s permutation, one of the many it
//! was trained on. The shipped restyle model does not use it: with stills of the clip's own episode a board tile
//! lands on the board often enough that pasting tiles still paid; stills of other episodes of the same look
//! (`data.reference = "same_look"`) fixed that instead (docs/results.md, "Restyle").

use image::RgbImage;

use crate::rng::NoiseRng;

/// The seed of the permutation applied to a reference image at sampling (any fixed one will do: training saw them
/// all); fixed so that a target's output depends on its reference alone.
pub const REFERENCE_PERMUTATION_SEED: u64 = 0x7469_6c65_7321;

/// `img` cut into `grid` x `grid` tiles of `(h / grid) x (w / grid)` pixels, the tiles permuted uniformly at random
/// (Fisher-Yates from `rng`) and each mirrored left-right with probability 1/2. Rows and columns past the last whole
/// tile (when `grid` does not divide the size) stay where they are. A grid of 0 or 1 returns the image unchanged.
pub fn shuffle_tiles(img: &RgbImage, grid: usize, rng: &mut NoiseRng) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (th, tw) = (h / grid.max(1), w / grid.max(1));
    if grid < 2 || th == 0 || tw == 0 {
        return img.clone();
    }
    let n = grid * grid;
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let mirror: Vec<bool> = (0..n).map(|_| rng.below(2) == 1).collect();
    let mut out = img.clone();
    for (dst, &src) in order.iter().enumerate() {
        let (dy, dx) = ((dst / grid) * th, (dst % grid) * tw);
        let (sy, sx) = ((src / grid) * th, (src % grid) * tw);
        for y in 0..th {
            for x in 0..tw {
                let from = if mirror[dst] { tw - 1 - x } else { x };
                let p = *img.get_pixel((sx + from) as u32, (sy + y) as u32);
                out.put_pixel((dx + x) as u32, (dy + y) as u32, p);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A picture whose every pixel is distinct, so each tile can be found again.
    fn distinct(h: u32, w: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([x as u8, y as u8, (x * 7 + y * 3) as u8])
        })
    }

    fn tile(img: &RgbImage, y0: u32, x0: u32, th: u32, tw: u32) -> Vec<[u8; 3]> {
        (0..th)
            .flat_map(|y| (0..tw).map(move |x| img.get_pixel(x0 + x, y0 + y).0))
            .collect()
    }

    #[test]
    fn tiles_are_a_permutation_of_the_original_tiles_each_maybe_mirrored() {
        let img = distinct(40, 72);
        let out = shuffle_tiles(&img, 4, &mut NoiseRng::new(3));
        assert_ne!(out, img, "a 16-tile permutation from seed 3 moved nothing");
        let (th, tw) = (10, 18);
        let originals: Vec<Vec<[u8; 3]>> = (0..16)
            .map(|i| tile(&img, (i / 4) * th, (i % 4) * tw, th, tw))
            .collect();
        let mut used = [false; 16];
        for i in 0..16 {
            let t = tile(&out, (i / 4) * th, (i % 4) * tw, th, tw);
            let flipped: Vec<[u8; 3]> = t
                .chunks(tw as usize)
                .flat_map(|row| row.iter().rev().copied())
                .collect();
            let j = originals
                .iter()
                .position(|o| *o == t || *o == flipped)
                .unwrap_or_else(|| panic!("output tile {i} is no original tile, mirrored or not"));
            assert!(!used[j], "original tile {j} appears twice");
            used[j] = true;
        }
    }

    #[test]
    fn the_remainder_stays_and_the_same_seed_gives_the_same_image() {
        let img = distinct(42, 75); // 4x4 tiles of 10x18: rows 40-41 and columns 72-74 are left over
        let a = shuffle_tiles(&img, 4, &mut NoiseRng::new(REFERENCE_PERMUTATION_SEED));
        let b = shuffle_tiles(&img, 4, &mut NoiseRng::new(REFERENCE_PERMUTATION_SEED));
        assert_eq!(a, b);
        assert_ne!(a, shuffle_tiles(&img, 4, &mut NoiseRng::new(1)));
        for y in 0..42 {
            for x in 0..75 {
                if y >= 40 || x >= 72 {
                    assert_eq!(a.get_pixel(x, y), img.get_pixel(x, y), "({x}, {y}) moved");
                }
            }
        }
        assert_eq!(shuffle_tiles(&img, 1, &mut NoiseRng::new(0)), img);
        assert_eq!(shuffle_tiles(&img, 100, &mut NoiseRng::new(0)), img);
    }
}
