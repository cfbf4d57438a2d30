#!/usr/bin/env python3
"""Reference fixtures for vadapt's latent-prior pieces (tests/it/parity_latent.rs): tiny random-weight models in
the diffusers text-to-video layout, their inputs and the outputs of diffusers / transformers on them.

    nice -n 19 .venv/bin/python tests/parity/gen_latent_parity.py [--out tests/fixtures/parity]

Writes (all float32, safetensors):
  t2v/vae/              AutoencoderKL (block_out_channels (8, 16), layers_per_block 1, latent_channels 4,
                        norm_num_groups 4, sample_size 16), save_pretrained(safe_serialization=True)
  vae_io.safetensors    video (1,3,2,16,24) in [-1,1]; latents_mean = encode(frames).latent_dist.mean * scaling_factor,
                        logvar (clamped, unscaled); z (1,4,2,8,12) ~ N(0,1); decoded = decode(z / scaling_factor)
                        frames folded into the batch as TextToVideoSDPipeline does
  vae_variant/          AutoencoderKL (block_out_channels (4, 8, 8), layers_per_block 2, latent_channels 3,
                        norm_num_groups 2, no quant convs, no mid-block attention, scaling 0.5, shift 0.1)
  vae_variant_io.safetensors  video as above; latents_mean = (mean - shift) * scale (1,3,2,4,6); z; decoded
  t2v/text_encoder/     CLIPTextModel (hidden 32, 2 layers, 4 heads, vocab 1000, 77 positions, quick_gelu, eps 1e-5)
  clip_gelu/            config.json only: the same weights with hidden_act "gelu" (erf) and layer_norm_eps 1e-6
  t2v/tokenizer/        a tiny CLIP BPE tokenizer (tokenizer.json, CLIPTokenizerFast), vocab 1000
  clip_io.safetensors   input_ids (4,77) int64 from that tokenizer (padding max_length, truncation), and
                        last_hidden_state_quick_gelu / last_hidden_state_gelu (4,77,32), no attention mask
  prompts.json          the 4 prompts behind input_ids
  t2v/                  the rest of a diffusers text-to-video directory: model_index.json, scheduler/ (DDIM),
                        unet/ (UNet3DConditionModel, in_channels 4, block_out_channels (8,), float16)
"""

import argparse
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import diffusers
import torch
import transformers
from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPTokenizerFast

SEED_VAE = 1001
SEED_CLIP = 1002
SEED_INPUTS = 1004
SEED_UNET = 1005
SEED_VAE_VARIANT = 1006
VOCAB = 1000

PROMPTS = [
    "push the red star to the blue cube",
    "Slide the GREEN circle towards the top left corner, then stop.",
    "",
    "move the yellow hexagon next to the red moon " * 10,  # 92 tokens: truncated to 77
]

# Words the tiny BPE learns its merges from (CLIP vocabularies are learned from web text; any corpus will do here).
CORPUS = """
push the red star to the blue cube slide the green circle towards the top left corner then stop
move the yellow hexagon next to the red moon put block into bottom right of board separate blocks
robot arm pushes a small object on a table video of a robot in a kitchen claymation style watercolor
painting photorealistic sim real edges frame camera pick place grasp open close drawer
""".split()


def perturb_norms(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Norm gains start at 1 and biases at 0; perturb them so a wrong weight mapping cannot hide."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm)) and m.weight is not None:
                m.weight.add_(0.1 * torch.randn(m.weight.shape, generator=gen))
                m.bias.add_(0.1 * torch.randn(m.bias.shape, generator=gen))


def tiny_vae() -> AutoencoderKL:
    torch.manual_seed(SEED_VAE)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        act_fn="silu",
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
        scaling_factor=0.18215,
    )
    perturb_norms(vae, torch.Generator().manual_seed(SEED_VAE))
    return vae.eval()


def tiny_vae_variant() -> AutoencoderKL:
    """The code paths the main VAE does not take: three blocks (downscale 4), two layers per block, 3 latent
    channels, no quant convs, no mid-block attention, a shift_factor."""
    torch.manual_seed(SEED_VAE_VARIANT)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(4, 8, 8),
        layers_per_block=2,
        latent_channels=3,
        norm_num_groups=2,
        sample_size=16,
        scaling_factor=0.5,
        shift_factor=0.1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=False,
    )
    perturb_norms(vae, torch.Generator().manual_seed(SEED_VAE_VARIANT))
    return vae.eval()


def fold(v: torch.Tensor) -> torch.Tensor:
    b, c, f, h, w = v.shape
    return v.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)


def unfold(x: torch.Tensor, b: int, f: int) -> torch.Tensor:
    _, c, h, w = x.shape
    return x.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4).contiguous()


def bytes_to_unicode() -> dict:
    # Copied from transformers/models/clip/tokenization_clip.py (the byte alphabet of every CLIP vocabulary).
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def tiny_tokenizer(out: Path) -> CLIPTokenizerFast:
    """A CLIP BPE tokenizer with VOCAB entries: CLIP's 512 byte symbols (bare and with </w>), merges learned from
    CORPUS by plain BPE, and the two specials last, in CLIP's vocab.json order."""
    alphabet = list(bytes_to_unicode().values())
    vocab = alphabet + [a + "</w>" for a in alphabet]
    n_merges = VOCAB - len(vocab) - 2
    words = Counter(tuple(w[:-1]) + (w[-1] + "</w>",) for w in CORPUS)
    merges = []
    while len(merges) < n_merges:
        pairs = Counter()
        for w, c in words.items():
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] += c
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]
        merges.append(best)
        new = {}
        for w, c in words.items():
            i, t = 0, []
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    t.append(w[i] + w[i + 1])
                    i += 2
                else:
                    t.append(w[i])
                    i += 1
            new[tuple(t)] = new.get(tuple(t), 0) + c
        words = new
    vocab += ["".join(m) for m in merges]
    # Fill up to VOCAB with unused placeholder merges of two bytes, so ids match the model's vocab_size.
    k = 0
    while len(vocab) < VOCAB - 2:
        a, b = alphabet[k // 94], alphabet[33 + k % 94]
        if (a, b) not in merges and a + b not in vocab:
            merges.append((a, b))
            vocab.append(a + b)
        k += 1
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == VOCAB, len(vocab)
    slow_dir = out / "_slow_tokenizer"
    slow_dir.mkdir(parents=True, exist_ok=True)
    (slow_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (slow_dir / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    slow = CLIPTokenizer(str(slow_dir / "vocab.json"), str(slow_dir / "merges.txt"), model_max_length=77)
    fast = CLIPTokenizerFast(
        vocab_file=str(slow_dir / "vocab.json"), merges_file=str(slow_dir / "merges.txt"), model_max_length=77
    )
    # The fast tokenizer (what vadapt reads through tokenizer.json) must agree with the slow one.
    for p in PROMPTS:
        assert slow(p).input_ids == fast(p).input_ids, p
    shutil.rmtree(slow_dir)
    return fast


def tiny_clip(seed: int, act: str, eps: float) -> CLIPTextModel:
    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act=act,
        layer_norm_eps=eps,
        projection_dim=32,
        bos_token_id=VOCAB - 2,
        eos_token_id=VOCAB - 1,
        pad_token_id=VOCAB - 1,
    )
    model = CLIPTextModel(cfg)
    perturb_norms(model, torch.Generator().manual_seed(seed))
    return model.eval()


def tiny_unet() -> UNet3DConditionModel:
    torch.manual_seed(SEED_UNET)
    unet = UNet3DConditionModel(
        sample_size=None,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock3D",),
        up_block_types=("CrossAttnUpBlock3D",),
        block_out_channels=(8,),
        layers_per_block=1,
        norm_num_groups=4,
        cross_attention_dim=32,
        attention_head_dim=4,
    )
    perturb_norms(unet, torch.Generator().manual_seed(SEED_UNET))
    return unet.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "fixtures" / "parity"))
    out = Path(ap.parse_args().out)
    for d in ["t2v", "clip_gelu", "vae_variant"]:
        shutil.rmtree(out / d, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    t2v = out / "t2v"

    # VAE
    vae = tiny_vae()
    vae.save_pretrained(t2v / "vae", safe_serialization=True)
    g = torch.Generator().manual_seed(SEED_INPUTS)
    video = torch.rand((1, 3, 2, 16, 24), generator=g) * 2 - 1
    z = torch.randn((1, 4, 2, 8, 12), generator=g)
    with torch.no_grad():
        dist = vae.encode(fold(video)).latent_dist
        latents_mean = unfold(dist.mean * vae.config.scaling_factor, 1, 2)
        logvar = unfold(dist.logvar, 1, 2)
        decoded = unfold(vae.decode(fold(z) / vae.config.scaling_factor).sample, 1, 2)
    save_file(
        {
            "video": video.contiguous(),
            "latents_mean": latents_mean.contiguous(),
            "logvar": logvar.contiguous(),
            "z": z.contiguous(),
            "decoded": decoded.contiguous(),
        },
        out / "vae_io.safetensors",
    )

    # The VAE variant, on the same video; latents = (mean - shift_factor) * scaling_factor and
    # decoded = decode(z / scaling_factor + shift_factor), as the pipelines with a shift_factor (SD3) do.
    var = tiny_vae_variant()
    var.save_pretrained(out / "vae_variant", safe_serialization=True)
    sf, sh = var.config.scaling_factor, var.config.shift_factor
    zv = torch.randn((1, 3, 2, 4, 6), generator=g)
    with torch.no_grad():
        mean_v = var.encode(fold(video)).latent_dist.mean
        decoded_v = var.decode(fold(zv) / sf + sh).sample
    save_file(
        {
            "video": video.contiguous(),
            "latents_mean": unfold((mean_v - sh) * sf, 1, 2),
            "z": zv.contiguous(),
            "decoded": unfold(decoded_v, 1, 2),
        },
        out / "vae_variant_io.safetensors",
    )

    # Tokenizer and CLIP text encoders (the quick_gelu one is the t2v directory's text_encoder/)
    tok = tiny_tokenizer(out)
    tok.save_pretrained(t2v / "tokenizer", legacy_format=False)
    ids = tok(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    io = {"input_ids": ids.to(torch.int64).contiguous()}
    # Two configs over the same weights (same seed): quick_gelu (real CLIP), and gelu (erf, OpenCLIP / SD 2.x /
    # ModelScope) with layer_norm_eps 1e-6. clip_gelu/ holds only its config.json: its weights are
    # t2v/text_encoder/model.safetensors, byte for byte (checked here), which keeps the fixture small.
    quick = tiny_clip(SEED_CLIP, "quick_gelu", 1e-5)
    gelu = tiny_clip(SEED_CLIP, "gelu", 1e-6)
    for (k, a), (k2, b) in zip(quick.state_dict().items(), gelu.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    quick.save_pretrained(t2v / "text_encoder", safe_serialization=True)
    gelu.save_pretrained(out / "clip_gelu", safe_serialization=True)
    (out / "clip_gelu" / "model.safetensors").unlink()
    with torch.no_grad():
        io["last_hidden_state_quick_gelu"] = quick(input_ids=ids).last_hidden_state.contiguous()
        io["last_hidden_state_gelu"] = gelu(input_ids=ids).last_hidden_state.contiguous()
    save_file(io, out / "clip_io.safetensors")
    (out / "prompts.json").write_text(json.dumps(PROMPTS, indent=1) + "\n")

    # The rest of a diffusers text-to-video directory: a tiny latent UNet (stored in float16 to keep the fixture
    # small; only shapes and finiteness are tested with it), the scheduler and model_index.json.
    tiny_unet().half().save_pretrained(t2v / "unet", safe_serialization=True)
    DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, set_alpha_to_one=False
    ).save_pretrained(t2v / "scheduler")
    (t2v / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "TextToVideoSDPipeline",
                "_diffusers_version": diffusers.__version__,
                "scheduler": ["diffusers", "DDIMScheduler"],
                "text_encoder": ["transformers", "CLIPTextModel"],
                "tokenizer": ["transformers", "CLIPTokenizer"],
                "unet": ["diffusers", "UNet3DConditionModel"],
                "vae": ["diffusers", "AutoencoderKL"],
            },
            indent=2,
        )
        + "\n"
    )

    report = {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "seeds": {
            "vae": SEED_VAE,
            "clip": SEED_CLIP,
            "inputs": SEED_INPUTS,
            "unet": SEED_UNET,
            "vae_variant": SEED_VAE_VARIANT,
        },
    }
    (out / "generation_report.json").write_text(json.dumps(report, indent=2) + "\n")
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
