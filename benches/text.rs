//! Text encoding cost: the embedded byte encoder at two widths, a cache hit, and a CLIP ViT-B/32-sized text
//! tower through candle-transformers (what a frozen pretrained encoder costs per prompt batch).
//!
//! Prompts are encoded once per distinct string thanks to `CachedTextEncoder`, so these numbers matter for
//! training (`vadapt train` runs the byte encoder every step) more than for augmentation.

use std::hint::black_box;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::clip;
use criterion::{criterion_group, criterion_main, Criterion};
use vadapt::models::text::{ByteEncoderConfig, ByteTextEncoder, CachedTextEncoder, TextEncoder};

const PROMPT: &str = "push the red star to the left of the blue cube, claymation style";

fn bench_byte(c: &mut Criterion) {
    let dev = Device::Cpu;
    for dim in [64, 256] {
        let (enc, _) =
            ByteTextEncoder::random(&ByteEncoderConfig::small(dim), 0, &dev).expect("byte encoder");
        c.bench_function(&format!("byte_encoder_d{dim}_b1"), |b| {
            b.iter(|| black_box(enc.encode(&[PROMPT]).expect("encode")))
        });
        let batch = [PROMPT; 8];
        c.bench_function(&format!("byte_encoder_d{dim}_b8"), |b| {
            b.iter(|| black_box(enc.encode(&batch).expect("encode")))
        });
    }
    let (enc, _) =
        ByteTextEncoder::random(&ByteEncoderConfig::small(256), 0, &dev).expect("byte encoder");
    let cache = CachedTextEncoder::new(enc, 64);
    cache.encode(&[PROMPT]).expect("warm");
    c.bench_function("cache_hit_d256_b1", |b| {
        b.iter(|| black_box(cache.encode(&[PROMPT]).expect("encode")))
    });
}

fn bench_clip(c: &mut Criterion) {
    let dev = Device::Cpu;
    let cfg = clip::text_model::ClipTextConfig::vit_base_patch32();
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F32, &dev);
    let model =
        clip::text_model::ClipTextTransformer::new(vb.pp("text_model"), &cfg).expect("clip");
    let ids = Tensor::arange(0u32, 77, &dev)
        .expect("ids")
        .unsqueeze(0)
        .expect("ids");
    c.bench_function("clip_vit_b32_text_b1", |b| {
        b.iter(|| black_box(model.forward_with_mask(&ids, usize::MAX).expect("forward")))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench_byte, bench_clip
}
criterion_main!(benches);
