//! Text conditioning: the embedded byte encoder, CLIP/T5 through candle-transformers on tiny random models the
//! test writes itself, the loader's dispatch and the embedding cache.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::{clip, t5};
use serde_json::json;
use vadapt::models::text::{
    corpus_words, load_text_encoder, load_text_encoder_with, word_pieces, ByteEncoderConfig,
    ByteTextEncoder, CachedTextEncoder, ClipText, LoadOptions, T5Text, TextEncoder, BOS,
    BYTE_VOCAB_SIZE, EOS, PAD,
};

use crate::common::max_abs_diff;

fn vals(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn small() -> ByteEncoderConfig {
    ByteEncoderConfig::small(32)
}

const PROMPTS: [&str; 3] = [
    "push the red star to the blue cube",
    "",
    "schiebe den Würfel",
];

#[test]
fn byte_encoder_shapes_and_determinism() {
    let dev = Device::Cpu;
    let (enc, _vars) = ByteTextEncoder::random(&small(), 7, &dev).unwrap();
    let out = enc.encode(&PROMPTS).unwrap();
    assert_eq!(out.dims(), &[3, 77, 32]);
    assert_eq!((enc.dim(), enc.max_tokens()), (32, 77));
    assert_eq!(out.dtype(), DType::F32);

    // Same call twice, and a second encoder from the same seed: identical bits.
    assert_eq!(vals(&out), vals(&enc.encode(&PROMPTS).unwrap()));
    let (again, _) = ByteTextEncoder::random(&small(), 7, &dev).unwrap();
    assert_eq!(vals(&out), vals(&again.encode(&PROMPTS).unwrap()));
    // Another seed gives another model.
    let (other, _) = ByteTextEncoder::random(&small(), 8, &dev).unwrap();
    assert!(max_abs_diff(&vals(&out), &vals(&other.encode(&PROMPTS).unwrap())) > 1e-3);

    // Real rows (BOS + bytes + EOS) are LayerNorm outputs (unit variance), padded rows are zero.
    for (i, p) in PROMPTS.iter().enumerate() {
        let n = p.len() + 2;
        let row = out.get(i).unwrap();
        let real = vals(&row.narrow(0, 0, n).unwrap());
        let pad = vals(&row.narrow(0, n, 77 - n).unwrap());
        assert!(
            pad.iter().all(|&v| v == 0.0),
            "prompt {i}: padded rows not zero"
        );
        for tok in real.chunks(32) {
            let var = tok.iter().map(|v| v * v).sum::<f32>() / 32.0
                - (tok.iter().sum::<f32>() / 32.0).powi(2);
            // eps = 1e-5 shrinks it by eps / var(x), about 1% at this small random init.
            assert!(
                (var - 1.0).abs() < 0.05,
                "prompt {i}: LayerNorm output variance {var}"
            );
        }
    }
    // Different prompts give different embeddings.
    assert!(max_abs_diff(&vals(&out.get(0).unwrap()), &vals(&out.get(2).unwrap())) > 1e-3);

    // The unconditional embedding is zeros unless the model stores one.
    let u = enc.unconditional(2).unwrap();
    assert_eq!(u.dims(), &[2, 77, 32]);
    assert!(vals(&u).iter().all(|&v| v == 0.0));
}

#[test]
fn byte_tokens_and_truncation() {
    let (enc, _) = ByteTextEncoder::random(&small(), 1, &Device::Cpu).unwrap();
    assert_eq!(enc.token_ids("ab"), vec![BOS, 97, 98, EOS]);
    assert_eq!(enc.token_ids("é"), vec![BOS, 0xC3, 0xA9, EOS]);
    let long = "x".repeat(200);
    let ids = enc.token_ids(&long);
    assert_eq!(ids.len(), 77);
    assert_eq!((ids[0], ids[76]), (BOS, EOS));
    let out = enc.encode(&[&long]).unwrap();
    assert_eq!(out.dims(), &[1, 77, 32]);
    let (ids, mask) = enc.tokenize_to(&["ab"], 6).unwrap();
    assert_eq!(
        ids.to_vec2::<u32>().unwrap(),
        vec![vec![BOS, 97, 98, EOS, PAD, PAD]]
    );
    assert_eq!(
        mask.to_vec2::<f32>().unwrap(),
        vec![vec![1., 1., 1., 1., 0., 0.]]
    );
}

#[test]
fn byte_encoder_padding_does_not_leak() {
    let (enc, _) = ByteTextEncoder::random(&small(), 3, &Device::Cpu).unwrap();
    let prompt = "move the green circle left";
    let n = prompt.len() + 2;

    // 1. More padding: the real tokens' outputs are unchanged.
    let (ids_short, mask_short) = enc.tokenize_to(&[prompt], n).unwrap();
    let (ids_long, mask_long) = enc.tokenize_to(&[prompt], 77).unwrap();
    let short = enc.forward_tokens(&ids_short, &mask_short).unwrap();
    let long = enc.forward_tokens(&ids_long, &mask_long).unwrap();
    let d1 = max_abs_diff(&vals(&short), &vals(&long.narrow(1, 0, n).unwrap()));
    println!("byte encoder: real-token outputs, {n} vs 77 tokens: max abs diff {d1:e}");
    assert!(d1 < 1e-5, "padding changed real-token outputs by {d1}");

    // 2. Garbage in the padded positions (mask 0): real outputs unchanged. Without the mask they would move.
    let mut garbage = ids_long.to_vec2::<u32>().unwrap();
    for (j, id) in garbage[0].iter_mut().enumerate().skip(n) {
        *id = (j * 7 % 256) as u32;
    }
    let garbage = Tensor::new(garbage, &Device::Cpu).unwrap();
    let masked = enc.forward_tokens(&garbage, &mask_long).unwrap();
    let d2 = max_abs_diff(&vals(&long), &vals(&masked));
    println!("byte encoder: garbage under the padding mask: max abs diff {d2:e}");
    assert!(d2 < 1e-6, "masked positions leaked: {d2}");
    let unmasked = enc
        .forward_tokens(
            &garbage,
            &Tensor::ones((1, 77), DType::F32, &Device::Cpu).unwrap(),
        )
        .unwrap();
    let d3 = max_abs_diff(
        &vals(&long.narrow(1, 0, n).unwrap()),
        &vals(&unmasked.narrow(1, 0, n).unwrap()),
    );
    assert!(
        d3 > 1e-3,
        "the test's garbage tokens should matter when unmasked (diff {d3})"
    );

    // 3. Batch mates do not matter either.
    let alone = enc.encode(&[prompt]).unwrap();
    let batched = enc.encode(&[&"y".repeat(70), prompt]).unwrap();
    let d4 = max_abs_diff(&vals(&alone), &vals(&batched.get(1).unwrap()));
    assert!(d4 < 1e-5, "batch mate changed the output by {d4}");
}

#[test]
fn byte_encoder_is_trainable() {
    let dev = Device::Cpu;
    let (enc, vars) = ByteTextEncoder::random(&small(), 5, &dev).unwrap();
    let out = enc.encode(&["a", "bc"]).unwrap();
    let target = Tensor::zeros(out.shape(), DType::F32, &dev).unwrap();
    let loss = (out.narrow(2, 0, 1).unwrap() - target.narrow(2, 0, 1).unwrap())
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    let all = vars.all_vars();
    assert!(all.len() > 10, "only {} variables", all.len());
    let with_grad = all
        .iter()
        .filter(|v| grads.get(v.as_tensor()).is_some())
        .count();
    assert!(
        with_grad >= all.len() - 2,
        "{with_grad} of {} variables got a gradient",
        all.len()
    );
}

/// Whole-word tokens: a listed word is one id after the byte ids, anything else stays bytes (so every prompt
/// still encodes), the vocabulary survives save/load, and a bytes-only config is written without a `words` key.
#[test]
fn word_tokens_merge_known_words_and_fall_back_to_bytes() {
    let dev = Device::Cpu;
    let corpus = [
        "push the red star to the blue cube, sunset style",
        "push the blue cube to the red moon, neon style",
        "push the red cube to the green star, sunset style",
    ];
    let words = corpus_words(corpus, 2);
    // Most frequent first (6, 3, ..., 2), ties in byte order; "neon", "moon" and "green" are seen once.
    assert_eq!(
        words,
        ["the", "cube", "push", "red", "style", "to", "blue", "star", "sunset"]
    );
    assert_eq!(
        word_pieces("a-b, neon!").collect::<Vec<_>>(),
        ["a", "-", "b", ",", " ", "neon", "!"]
    );
    assert_eq!(word_pieces("Würfel").collect::<String>(), "Würfel");
    let config = ByteEncoderConfig {
        words: words.clone(),
        ..small()
    };
    let (enc, _) = ByteTextEncoder::random(&config, 3, &dev).unwrap();
    let id = |w: &str| (BYTE_VOCAB_SIZE + words.iter().position(|x| x == w).unwrap()) as u32;
    assert_eq!(
        enc.token_ids("red neon, sunset"),
        vec![
            BOS,
            id("red"),
            32,
            110,
            101,
            111,
            110,
            44,
            32,
            id("sunset"),
            EOS
        ]
    );
    assert_eq!(enc.unknown_words("red neon, sunset style"), ["neon"]);
    assert!(ByteTextEncoder::random(&small(), 3, &dev)
        .unwrap()
        .0
        .unknown_words("anything at all")
        .is_empty());
    // A known word reads differently from its spelling out.
    let a = enc.encode(&["sunset"]).unwrap();
    let b = enc.encode(&["sunsetx"]).unwrap();
    assert!(max_abs_diff(&vals(&a), &vals(&b)) > 1e-3);

    let tmp = tempfile::tempdir().unwrap();
    enc.save(tmp.path()).unwrap();
    let json = std::fs::read_to_string(tmp.path().join("config.json")).unwrap();
    assert!(json.contains("\"sunset\""), "{json}");
    let loaded = load_text_encoder(tmp.path(), &dev).unwrap();
    assert_eq!(
        vals(&enc.encode(&corpus).unwrap()),
        vals(&loaded.encode(&corpus).unwrap())
    );
    let (plain, _) = ByteTextEncoder::random(&small(), 3, &dev).unwrap();
    plain.save(&tmp.path().join("plain")).unwrap();
    let json = std::fs::read_to_string(tmp.path().join("plain/config.json")).unwrap();
    assert!(!json.contains("words"), "{json}");

    for (bad, why) in [
        (vec!["sun set".to_string()], "letters and digits"),
        (vec!["sun".into(), "sun".into()], "twice"),
    ] {
        let c = ByteEncoderConfig {
            words: bad,
            ..small()
        };
        let err = ByteTextEncoder::random(&c, 1, &dev)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("words") && err.contains(why), "{err}");
    }
}

/// `padded_rows = "prompt"`: the rows after the prompt carry a summary of it (they differ between prompts and
/// are the same for the same prompt) instead of zeros; the real rows are unchanged; the setting is saved.
#[test]
fn padded_rows_can_summarise_the_prompt() {
    use vadapt::models::text::PaddedRows;
    let dev = Device::Cpu;
    let (zeros, _) = ByteTextEncoder::random(&small(), 5, &dev).unwrap();
    let config = ByteEncoderConfig {
        padded_rows: PaddedRows::Prompt,
        ..small()
    };
    let (summary, _) = ByteTextEncoder::random(&config, 5, &dev).unwrap();
    let prompts = ["red", "blue", "red"];
    let (a, b) = (
        zeros.encode(&prompts).unwrap(),
        summary.encode(&prompts).unwrap(),
    );
    let real = 5; // BOS r e d EOS
    let rows = |t: &Tensor, i: usize, from: usize| {
        vals(
            &t.narrow(0, i, 1)
                .unwrap()
                .narrow(1, from, 77 - from)
                .unwrap(),
        )
    };
    assert_eq!(
        vals(&a.narrow(1, 0, real).unwrap().narrow(0, 0, 1).unwrap()),
        vals(&b.narrow(1, 0, real).unwrap().narrow(0, 0, 1).unwrap()),
        "the prompt's own rows do not depend on the setting"
    );
    assert!(rows(&a, 0, 6).iter().all(|&v| v == 0.0));
    assert!(rows(&b, 0, 6).iter().any(|&v| v.abs() > 0.1));
    assert_eq!(
        rows(&b, 0, 6),
        rows(&b, 2, 6),
        "same prompt, same padded rows"
    );
    assert!(max_abs_diff(&rows(&b, 0, 6), &rows(&b, 1, 6)) > 1e-4);
    let tmp = tempfile::tempdir().unwrap();
    summary.save(tmp.path()).unwrap();
    let json = std::fs::read_to_string(tmp.path().join("config.json")).unwrap();
    assert!(json.contains("\"padded_rows\": \"prompt\""), "{json}");
    let loaded = load_text_encoder(tmp.path(), &dev).unwrap();
    assert_eq!(vals(&b), vals(&loaded.encode(&prompts).unwrap()));
}

#[test]
fn byte_encoder_save_load_round_trip() {
    let dev = Device::Cpu;
    let tmp = tempfile::tempdir().unwrap();
    let (mut enc, _) = ByteTextEncoder::random(
        &ByteEncoderConfig {
            num_hidden_layers: 3,
            ..small()
        },
        11,
        &dev,
    )
    .unwrap();
    let te = tmp.path().join("model").join("text_encoder");
    enc.save(&te).unwrap();
    assert!(te.join("config.json").is_file() && te.join("model.safetensors").is_file());
    let before = enc.encode(&PROMPTS).unwrap();

    // Through the dispatching loader, from the model directory (finds text_encoder/) and from the folder itself.
    for dir in [tmp.path().join("model"), te.clone()] {
        let loaded = load_text_encoder(&dir, &dev).unwrap();
        assert_eq!((loaded.dim(), loaded.max_tokens()), (32, 77));
        assert_eq!(
            vals(&before),
            vals(&loaded.encode(&PROMPTS).unwrap()),
            "round trip not bit-exact"
        );
        assert!(vals(&loaded.unconditional(1).unwrap())
            .iter()
            .all(|&v| v == 0.0));
    }

    // With its own unconditional embedding.
    let uncond = (Tensor::arange(0f32, 77.0 * 32.0, &dev)
        .unwrap()
        .reshape((77, 32))
        .unwrap()
        * 1e-3)
        .unwrap();
    enc.set_uncond(Some(uncond.clone())).unwrap();
    enc.save(&te).unwrap();
    let loaded = ByteTextEncoder::load(&te, &dev).unwrap();
    let u = loaded.unconditional(3).unwrap();
    assert_eq!(u.dims(), &[3, 77, 32]);
    for b in 0..3 {
        assert_eq!(vals(&u.get(b).unwrap()), vals(&uncond));
    }
    assert_eq!(vals(&before), vals(&loaded.encode(&PROMPTS).unwrap()));
}

#[test]
fn byte_encoder_missing_parts_are_named() {
    let dev = Device::Cpu;
    let tmp = tempfile::tempdir().unwrap();
    let (enc, _) = ByteTextEncoder::random(&small(), 2, &dev).unwrap();
    enc.save(tmp.path()).unwrap();

    // Drop one tensor.
    let file = tmp.path().join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&file, &dev).unwrap();
    assert!(tensors.remove("layers.1.mlp.fc2.weight").is_some());
    candle_core::safetensors::save(&tensors, &file).unwrap();
    let err = load_text_encoder(tmp.path(), &dev)
        .err()
        .expect("a missing tensor must fail")
        .to_string();
    assert!(
        err.contains("layers.1.mlp.fc2.weight") && err.contains("model.safetensors"),
        "{err}"
    );

    // A wrongly shaped one.
    let mut tensors = candle_core::safetensors::load(&file, &dev).unwrap();
    tensors.insert(
        "layers.1.mlp.fc2.weight".into(),
        Tensor::zeros((32, 7), DType::F32, &dev).unwrap(),
    );
    candle_core::safetensors::save(&tensors, &file).unwrap();
    let err = load_text_encoder(tmp.path(), &dev)
        .err()
        .expect("a mis-shaped tensor must fail")
        .to_string();
    assert!(err.contains("layers.1.mlp.fc2.weight"), "{err}");

    // No weights file at all.
    std::fs::remove_file(&file).unwrap();
    let err = load_text_encoder(tmp.path(), &dev)
        .err()
        .expect("missing weights must fail")
        .to_string();
    assert!(err.contains("model.safetensors"), "{err}");

    // No config.
    let empty = tempfile::tempdir().unwrap();
    let err = load_text_encoder(empty.path(), &dev)
        .err()
        .expect("an empty dir must fail")
        .to_string();
    assert!(err.contains("config.json"), "{err}");

    // An unknown model type names it.
    std::fs::write(
        empty.path().join("config.json"),
        r#"{"model_type": "bert", "architectures": ["BertModel"]}"#,
    )
    .unwrap();
    let err = load_text_encoder(empty.path(), &dev)
        .err()
        .expect("bert is not supported")
        .to_string();
    assert!(err.contains("bert") && err.contains("unsupported"), "{err}");
}

// ---------------------------------------------------------------------------------------------------------------
// Pretrained encoders on tiny random models.

const WORDS: [&str; 10] = [
    "push", "the", "red", "blue", "block", "to", "star", "left", "right", "cube",
];

/// A WordLevel tokenizer.json (lowercase, whitespace split) with `specials` first in the vocabulary and the
/// template `single` (e.g. `["<s>", "$A", "</s>"]`) as post-processor.
fn write_tokenizer(path: &Path, specials: &[&str], unk: &str, single: &[&str]) {
    let mut vocab = serde_json::Map::new();
    for (i, t) in specials.iter().chain(WORDS.iter()).enumerate() {
        vocab.insert(t.to_string(), json!(i));
    }
    let id = |t: &str| specials.iter().position(|s| *s == t).unwrap();
    let piece = |t: &str, type_id: u32| {
        if t == "$A" {
            json!({"Sequence": {"id": "A", "type_id": type_id}})
        } else if t == "$B" {
            json!({"Sequence": {"id": "B", "type_id": type_id}})
        } else {
            json!({"SpecialToken": {"id": t, "type_id": type_id}})
        }
    };
    let single_t: Vec<_> = single.iter().map(|t| piece(t, 0)).collect();
    let mut pair_t = single_t.clone();
    pair_t.extend(
        single
            .iter()
            .map(|t| piece(if *t == "$A" { "$B" } else { t }, 1)),
    );
    let mut special_tokens = serde_json::Map::new();
    for t in single.iter().filter(|t| !t.starts_with('$')) {
        special_tokens.insert(
            t.to_string(),
            json!({"id": t, "ids": [id(t)], "tokens": [t]}),
        );
    }
    let added: Vec<_> = specials
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": true})
        })
        .collect();
    let tok = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {"type": "TemplateProcessing", "single": single_t, "pair": pair_t, "special_tokens": special_tokens},
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": unk}
    });
    std::fs::write(path, serde_json::to_string_pretty(&tok).unwrap()).unwrap();
}

/// Our reading of the test tokenizers: specials then WORDS.
fn word_id(specials: &[&str], w: &str) -> u32 {
    (specials.len() + WORDS.iter().position(|x| *x == w).unwrap()) as u32
}

const CLIP_SPECIALS: [&str; 3] = ["<|startoftext|>", "<|endoftext|>", "<unk>"];

fn write_tiny_clip(dir: &Path) -> clip::text_model::ClipTextConfig {
    std::fs::create_dir_all(dir).unwrap();
    let vocab = CLIP_SPECIALS.len() + WORDS.len();
    let config = json!({
        "architectures": ["CLIPTextModel"],
        "model_type": "clip_text_model",
        "vocab_size": vocab,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 16,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": 32,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 1
    });
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config).unwrap(),
    )
    .unwrap();
    let c = clip::text_model::ClipTextConfig {
        vocab_size: vocab,
        embed_dim: 32,
        activation: clip::text_model::Activation::QuickGelu,
        intermediate_size: 64,
        max_position_embeddings: 16,
        pad_with: None,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        projection_dim: 32,
    };
    // Random weights under transformers' names (text_model.…), written by candle itself.
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
    clip::text_model::ClipTextTransformer::new(vb.pp("text_model"), &c).unwrap();
    // LayerNorm gains start at 1 and biases at 0; perturb them so a wrong mapping would show.
    for (name, var) in vars.data().lock().unwrap().iter() {
        if name.contains("layer_norm") {
            let noise = (Tensor::randn(0f32, 0.1, var.shape(), &Device::Cpu).unwrap()
                + var.as_tensor())
            .unwrap();
            var.set(&noise).unwrap();
        }
    }
    vars.save(dir.join("model.safetensors")).unwrap();
    write_tokenizer(
        &dir.join("tokenizer.json"),
        &CLIP_SPECIALS,
        "<unk>",
        &["<|startoftext|>", "$A", "<|endoftext|>"],
    );
    c
}

#[test]
fn clip_text_matches_candle_transformers() {
    let dev = Device::Cpu;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("clip");
    let c = write_tiny_clip(&dir);

    let enc = load_text_encoder(&dir, &dev).unwrap();
    assert_eq!((enc.dim(), enc.max_tokens()), (32, 16));
    let prompts = [
        "push the red block",
        "Blue STAR left",
        "push the red block to the blue cube left right star the red block",
    ];
    let out = enc.encode(&prompts).unwrap();
    assert_eq!(out.dims(), &[3, 16, 32]);

    // Tokens: BOS, words, EOS, padded with the EOS token (CLIP's pad) and truncated to 16 keeping EOS.
    let clip_enc = ClipText::load(&dir, &dev).unwrap();
    let ids = clip_enc
        .token_ids(&prompts)
        .unwrap()
        .to_vec2::<u32>()
        .unwrap();
    let w = |s| word_id(&CLIP_SPECIALS, s);
    let mut expect0 = vec![0, w("push"), w("the"), w("red"), w("block"), 1];
    expect0.resize(16, 1);
    assert_eq!(ids[0], expect0);
    let mut expect1 = vec![0, w("blue"), w("star"), w("left"), 1];
    expect1.resize(16, 1);
    assert_eq!(ids[1], expect1, "lowercasing / padding");
    assert_eq!(
        (ids[2].len(), ids[2][0], ids[2][15]),
        (16, 0, 1),
        "truncation keeps BOS and EOS"
    );
    assert_eq!(
        ids[2][14],
        w("block"),
        "truncation keeps the first 14 words"
    );

    // The same ids through candle-transformers directly.
    let file = dir.join("model.safetensors");
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[file], DType::F32, &dev) }.unwrap();
    let direct = clip::text_model::ClipTextTransformer::new(vb.pp("text_model"), &c).unwrap();
    let expect = direct
        .forward_with_mask(&Tensor::new(ids, &dev).unwrap(), usize::MAX)
        .unwrap();
    let d = max_abs_diff(&vals(&out), &vals(&expect));
    println!("CLIP text via loader vs candle-transformers: max abs diff {d:e}");
    assert_eq!(d, 0.0);
    assert!(vals(&out).iter().all(|v| v.is_finite()));

    // A full CLIPModel config (text settings nested under text_config) loads the same tower.
    let full = tmp.path().join("clip_full");
    std::fs::create_dir_all(&full).unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(dir.join(f), full.join(f)).unwrap();
    }
    let text_config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let cfg =
        json!({"model_type": "clip", "architectures": ["CLIPModel"], "text_config": text_config});
    std::fs::write(full.join("config.json"), cfg.to_string()).unwrap();
    let enc_full = load_text_encoder(&full, &dev).unwrap();
    assert_eq!(vals(&enc_full.encode(&prompts).unwrap()), vals(&out));

    // A pad token named in tokenizer_config.json wins over the EOS fallback.
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"pad_token": "<unk>"}"#,
    )
    .unwrap();
    let ids = ClipText::load(&dir, &dev)
        .unwrap()
        .token_ids(&["push"])
        .unwrap()
        .to_vec2::<u32>()
        .unwrap();
    assert_eq!(&ids[0][..4], &[0, w("push"), 1, 2]);
}

#[test]
fn clip_text_missing_parts_are_named() {
    let dev = Device::Cpu;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("clip");
    write_tiny_clip(&dir);

    let file = dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&file, &dev).unwrap();
    tensors
        .remove("text_model.encoder.layers.1.self_attn.v_proj.weight")
        .unwrap();
    candle_core::safetensors::save(&tensors, &file).unwrap();
    let err = load_text_encoder(&dir, &dev)
        .err()
        .expect("missing tensor")
        .to_string();
    assert!(
        err.contains("text_model.encoder.layers.1.self_attn.v_proj.weight"),
        "{err}"
    );

    write_tiny_clip(&dir);
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let err = load_text_encoder(&dir, &dev)
        .err()
        .expect("missing tokenizer")
        .to_string();
    assert!(err.contains("tokenizer.json"), "{err}");

    // A sibling tokenizer/ folder (the diffusers pipeline layout) is found.
    let te = tmp.path().join("pipe").join("text_encoder");
    write_tiny_clip(&te);
    let tk = tmp.path().join("pipe").join("tokenizer");
    std::fs::create_dir_all(&tk).unwrap();
    std::fs::rename(te.join("tokenizer.json"), tk.join("tokenizer.json")).unwrap();
    let enc = load_text_encoder(&tmp.path().join("pipe"), &dev).unwrap();
    assert_eq!(enc.encode(&["red"]).unwrap().dims(), &[1, 16, 32]);

    // gelu runs at any size (the port in models/text/clip_text.rs; parity in parity_latent.rs) and differs from
    // quick_gelu; unsupported activations are refused with the field named.
    let quick = enc.encode(&["red"]).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(te.join("config.json")).unwrap()).unwrap();
    cfg["hidden_act"] = json!("gelu");
    std::fs::write(te.join("config.json"), cfg.to_string()).unwrap();
    let gelu = load_text_encoder(&te, &dev)
        .expect("gelu at this size")
        .encode(&["red"])
        .unwrap();
    assert!(max_abs_diff(&vals(&gelu), &vals(&quick)) > 1e-4);
    cfg["hidden_act"] = json!("relu");
    std::fs::write(te.join("config.json"), cfg.to_string()).unwrap();
    let err = load_text_encoder(&te, &dev)
        .err()
        .expect("relu")
        .to_string();
    assert!(err.contains("hidden_act"), "{err}");
}

const T5_SPECIALS: [&str; 3] = ["<pad>", "</s>", "<unk>"];

fn tiny_t5_config() -> serde_json::Value {
    json!({
        "architectures": ["T5EncoderModel"],
        "model_type": "t5",
        "vocab_size": T5_SPECIALS.len() + WORDS.len(),
        "d_model": 32,
        "d_kv": 8,
        "d_ff": 64,
        "num_layers": 2,
        "num_decoder_layers": 2,
        "num_heads": 4,
        "relative_attention_num_buckets": 8,
        "relative_attention_max_distance": 16,
        "dropout_rate": 0.0,
        "layer_norm_epsilon": 1e-6,
        "initializer_factor": 1.0,
        "feed_forward_proj": "gated-gelu",
        "tie_word_embeddings": false,
        "is_encoder_decoder": true,
        "use_cache": true,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0
    })
}

#[test]
fn t5_encoder_matches_candle_transformers() {
    let dev = Device::Cpu;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t5");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg_json = tiny_t5_config();
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&cfg_json).unwrap(),
    )
    .unwrap();
    let cfg: t5::Config = serde_json::from_value(cfg_json).unwrap();
    let vars = VarMap::new();
    t5::T5EncoderModel::load(VarBuilder::from_varmap(&vars, DType::F32, &dev), &cfg).unwrap();
    // candle creates T5's RMSNorm gains as zeros (the output would be all zero); give every weight a value.
    for (name, var) in vars.data().lock().unwrap().iter() {
        let noise = Tensor::randn(0f32, 0.2, var.shape(), &dev).unwrap();
        let value = if name.contains("layer_norm") {
            (noise + 1.0).unwrap()
        } else {
            noise
        };
        var.set(&value).unwrap();
    }
    vars.save(dir.join("model.safetensors")).unwrap();
    write_tokenizer(
        &dir.join("tokenizer.json"),
        &T5_SPECIALS,
        "<unk>",
        &["$A", "</s>"],
    );

    let opts = LoadOptions {
        max_tokens: Some(12),
        ..LoadOptions::default()
    };
    let enc = load_text_encoder_with(&dir, &dev, &opts).unwrap();
    assert_eq!((enc.dim(), enc.max_tokens()), (32, 12));
    let prompts = [
        "push the blue cube",
        "left",
        "the red star to the left the blue cube to the right push",
    ];
    let out = enc.encode(&prompts).unwrap();
    assert_eq!(out.dims(), &[3, 12, 32]);

    let t5_enc = T5Text::load_with(&dir, &dev, &opts).unwrap();
    let ids = t5_enc
        .token_ids(&prompts)
        .unwrap()
        .to_vec2::<u32>()
        .unwrap();
    let w = |s| word_id(&T5_SPECIALS, s);
    let mut expect0 = vec![w("push"), w("the"), w("blue"), w("cube"), 1];
    expect0.resize(12, 0);
    assert_eq!(ids[0], expect0, "words, </s>, <pad>…");
    assert_eq!(
        (ids[2][0], ids[2][10], ids[2][11]),
        (w("the"), w("the"), 1),
        "truncated with </s> kept"
    );

    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(&[dir.join("model.safetensors")], DType::F32, &dev)
    }
    .unwrap();
    let mut direct = t5::T5EncoderModel::load(vb, &cfg).unwrap();
    let expect = direct.forward(&Tensor::new(ids, &dev).unwrap()).unwrap();
    let d = max_abs_diff(&vals(&out), &vals(&expect));
    println!("T5 encoder via loader vs candle-transformers: max abs diff {d:e}");
    assert_eq!(d, 0.0);
    // Different prompts, different rows; all finite.
    assert!(max_abs_diff(&vals(&out.get(0).unwrap()), &vals(&out.get(1).unwrap())) > 1e-4);
    assert!(vals(&out).iter().all(|v| v.is_finite()));

    // Default length is 77 tokens, and an uncond.safetensors beside the model is used for guidance.
    let u = Tensor::ones((77, 32), DType::F32, &dev).unwrap();
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("uncond".to_string(), u)]),
        dir.join("uncond.safetensors"),
    )
    .unwrap();
    let enc77 = load_text_encoder(&dir, &dev).unwrap();
    assert_eq!(enc77.encode(&["red"]).unwrap().dims(), &[1, 77, 32]);
    let uncond = enc77.unconditional(2).unwrap();
    assert_eq!(uncond.dims(), &[2, 77, 32]);
    assert!(vals(&uncond).iter().all(|&v| v == 1.0));
    // …and a wrongly shaped one is refused, naming it.
    let err = load_text_encoder_with(&dir, &dev, &opts)
        .err()
        .expect("uncond of 77 tokens vs 12")
        .to_string();
    assert!(err.contains("uncond"), "{err}");
}

// ---------------------------------------------------------------------------------------------------------------
// Cache.

/// Records every prompt the inner encoder sees.
struct Counting {
    inner: ByteTextEncoder,
    calls: AtomicUsize,
    seen: Mutex<Vec<String>>,
}

impl TextEncoder for Counting {
    fn encode(&self, prompts: &[&str]) -> vadapt::Result<Tensor> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.seen
            .lock()
            .unwrap()
            .extend(prompts.iter().map(|p| p.to_string()));
        self.inner.encode(prompts)
    }
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn max_tokens(&self) -> usize {
        self.inner.max_tokens()
    }
    fn unconditional(&self, batch: usize) -> vadapt::Result<Tensor> {
        self.inner.unconditional(batch)
    }
    fn device(&self) -> &Device {
        self.inner.device()
    }
}

fn counting(seed: u64) -> Counting {
    let (inner, _) = ByteTextEncoder::random(&small(), seed, &Device::Cpu).unwrap();
    Counting {
        inner,
        calls: AtomicUsize::new(0),
        seen: Mutex::new(Vec::new()),
    }
}

#[test]
fn cache_encodes_each_prompt_once() {
    let cache = CachedTextEncoder::new(counting(4), 16);
    let first = cache.encode(&["a", "b", "a"]).unwrap();
    assert_eq!(first.dims(), &[3, 77, 32]);
    assert_eq!(*cache.inner().seen.lock().unwrap(), ["a", "b"]);
    assert_eq!(vals(&first.get(0).unwrap()), vals(&first.get(2).unwrap()));

    // Thousands of episodes with the same prompt: one encode.
    let task = "push the red star to the blue cube";
    let reference = cache.encode(&[task]).unwrap();
    for _ in 0..2000 {
        let again = cache.encode(&[task]).unwrap();
        assert_eq!(vals(&again), vals(&reference));
    }
    let seen = cache.inner().seen.lock().unwrap().clone();
    assert_eq!(seen.iter().filter(|p| *p == task).count(), 1);
    assert_eq!(cache.inner().calls.load(Ordering::SeqCst), 2);

    // Mixed hits and misses keep order; only "c" is new. Rows equal what the encoder alone gives.
    let mixed = cache.encode(&["b", task, "c", "a"]).unwrap();
    assert_eq!(cache.inner().seen.lock().unwrap().last().unwrap(), "c");
    assert_eq!(cache.encoded(), 4);
    let direct = cache.inner().inner.encode(&["b", task, "c", "a"]).unwrap();
    assert!(max_abs_diff(&vals(&mixed), &vals(&direct)) < 1e-5);
    assert_eq!(
        vals(&mixed.get(1).unwrap()),
        vals(&reference.get(0).unwrap())
    );
    assert_eq!(vals(&mixed.get(3).unwrap()), vals(&first.get(0).unwrap()));
    assert_eq!(cache.len(), 4);
    assert_eq!(cache.unconditional(2).unwrap().dims(), &[2, 77, 32]);
}

#[test]
fn cache_evicts_least_recently_used() {
    let cache = CachedTextEncoder::new(counting(9), 2);
    cache.encode(&["a"]).unwrap();
    cache.encode(&["b"]).unwrap();
    cache.encode(&["a"]).unwrap(); // a is now more recent than b
    cache.encode(&["c"]).unwrap(); // evicts b
    assert_eq!(cache.len(), 2);
    cache.encode(&["a"]).unwrap();
    assert_eq!(*cache.inner().seen.lock().unwrap(), ["a", "b", "c"]);
    cache.encode(&["b"]).unwrap();
    assert_eq!(*cache.inner().seen.lock().unwrap(), ["a", "b", "c", "b"]);
    // More distinct prompts in one call than the capacity still works.
    let out = cache.encode(&["x", "y", "z", "x"]).unwrap();
    assert_eq!(out.dims(), &[4, 77, 32]);
    assert_eq!(vals(&out.get(0).unwrap()), vals(&out.get(3).unwrap()));
    assert_eq!(cache.len(), 2);
}

#[test]
fn cache_is_shared_across_threads() {
    let cache = std::sync::Arc::new(CachedTextEncoder::new(counting(1), 8));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let c = cache.clone();
            std::thread::spawn(move || vals(&c.encode(&["same prompt"]).unwrap()))
        })
        .collect();
    let outs: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(outs.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(cache.inner().seen.lock().unwrap().len(), 1);
}

#[test]
fn uncond_batches_stack_with_prompts() {
    // The shapes compose for classifier-free guidance: cat([uncond, text]) on the batch axis.
    let (enc, _) = ByteTextEncoder::random(&small(), 6, &Device::Cpu).unwrap();
    let text = enc.encode(&["a", "b"]).unwrap();
    let ctx = Tensor::cat(&[&enc.unconditional(2).unwrap(), &text], 0).unwrap();
    assert_eq!(ctx.dims(), &[4, 77, 32]);
    assert_eq!(enc.config().hidden_size, 32);
}

/// The structure of openai/clip-vit-large-patch14's tokenizer.json (NFC + whitespace + lowercase normalizer, CLIP's
/// `\p{L}` split regex, byte-level BPE with `</w>` word ends, Roberta post-processor) with a toy vocabulary: checks
/// that the pure-Rust regex engine (fancy-regex, no onig) runs CLIP's pre-tokenizer.
#[test]
fn clip_style_bpe_tokenizer_runs_without_onig() {
    let dev = Device::Cpu;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("clip");
    write_tiny_clip(&dir);
    let vocab = json!({
        "<|startoftext|>": 0, "<|endoftext|>": 1, "p": 2, "u": 3, "s": 4, "h": 5, "h</w>": 6, "pu": 7,
        "sh</w>": 8, "push</w>": 9, "!</w>": 10
    });
    let tok = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [
            {"id": 0, "content": "<|startoftext|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": true, "special": true},
            {"id": 1, "content": "<|endoftext|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
        ],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFC"},
            {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
            {"type": "Lowercase"}
        ]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split",
             "pattern": {"Regex": "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+"},
             "behavior": "Removed", "invert": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]},
        "post_processor": {"type": "RobertaProcessing", "sep": ["<|endoftext|>", 1], "cls": ["<|startoftext|>", 0],
                           "trim_offsets": false, "add_prefix_space": false},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<|endoftext|>", "continuing_subword_prefix": "",
                  "end_of_word_suffix": "</w>", "fuse_unk": false, "byte_fallback": false,
                  "vocab": vocab, "merges": ["p u", "s h</w>", "pu sh</w>"]}
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
    let enc = ClipText::load(&dir, &dev).unwrap();
    // "PUSH  push!": lowercased, whitespace split away, "!" its own pre-token, "push" merged to one token.
    let ids = enc
        .token_ids(&["PUSH  push!"])
        .unwrap()
        .to_vec2::<u32>()
        .unwrap();
    assert_eq!(&ids[0][..6], &[0, 9, 9, 10, 1, 1], "{:?}", ids[0]);
    assert_eq!(enc.encode(&["push!"]).unwrap().dims(), &[1, 16, 32]);
}
