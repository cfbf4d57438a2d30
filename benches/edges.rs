//! Edge extraction throughput at LanguageTable's native 360x640: frames per second for a whole video
//! (`edge_channel`, frames in parallel with rayon), one frame's full Sobel outputs, and the area
//! downsampling that follows (360x640 -> 24x40).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use image::{Rgb, RgbImage};
use vadapt::vision::{edges, resize};

fn frames(n: usize) -> Vec<RgbImage> {
    // Deterministic texture with edges in every direction.
    (0..n)
        .map(|t| {
            RgbImage::from_fn(640, 360, |x, y| {
                let v = ((x * 7 + y * 13 + t as u32 * 31) ^ (x / 9 * y / 7)) as u8;
                Rgb([v, v.wrapping_mul(3), 255 - v])
            })
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let video = frames(16);
    let mut g = c.benchmark_group("edges_360x640");
    g.throughput(Throughput::Elements(video.len() as u64));
    g.bench_function("edge_channel_16_frames", |b| {
        b.iter(|| black_box(edges::edge_channel(black_box(&video))))
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("sobel_one_frame", |b| {
        b.iter(|| black_box(edges::sobel(black_box(video[0].as_raw()), 360, 640)))
    });
    let plane = edges::edge_in_unit_range(&video[0]);
    g.bench_function("area_resize_to_24x40", |b| {
        b.iter(|| black_box(resize::area(black_box(&plane.data), 360, 640, 1, 24, 40)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
