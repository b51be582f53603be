"""Tiny Stable Diffusion pipelines with random weights, in the formats users have on disk.

Used by the tests, the demo and the benchmarks: each builder makes a real diffusers pipeline of
the family's architecture (SD1.x UNet, SDXL dual-encoder UNet, SD3 MMDiT) at toy widths, with an
offline CLIP tokenizer whose vocabulary is written here. The pipelines are saved

* as a diffusers folder (``save_pretrained``), and
* as one A1111-style single-file checkpoint, with the original (LDM/SGM) key names that
  ``from_single_file`` reads: ``model.diffusion_model.*``, ``first_stage_model.*``,
  ``cond_stage_model.transformer.text_model.*`` (SD1) or ``conditioner.embedders.{0,1}.*`` (SDXL);
  SD3 as the published SD3/SD3.5 files: MMDiT ``model.diffusion_model.joint_blocks.N.*`` (fused
  ``qkv``, original adaLN chunk order), ``first_stage_model.*`` and
  ``text_encoders.clip_{l,g}.transformer.text_model.*`` (no T5).

The diffusers -> LDM key mapping below is written from the published layout of the original
repositories (CompVis ``ldm/modules/diffusionmodules/openaimodel.py`` UNet: ``input_blocks``,
``middle_block``, ``output_blocks``; ``ldm/modules/diffusionmodules/model.py`` VAE: ``down.N.block.M``,
``mid.attn_1``; OpenCLIP ``transformer.resblocks.N`` with a fused ``in_proj``), so loading a tiny
file back through ``from_single_file`` is an independent check of both directions.

Also: a kohya/A1111 LoRA file for the SD1 tiny model (``lora_unet_*``/``lora_te_*`` keys with
``lora_down``/``lora_up``/``alpha``), a VAE-only file and an A1111 textual-inversion embedding.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from ..a1111.clip_bpe import clip_vocab

Family = Literal["sd1", "sdxl", "sd3"]

#: The tiny CLIP vocabulary: 256 byte-level characters, their end-of-word forms and two specials.
TINY_VOCAB_SIZE = 514
BOS_ID = 512
EOS_ID = 513


def write_tiny_clip_tokenizer_files(folder: str | Path) -> Path:
    """Write ``vocab.json`` + ``merges.txt`` (+ tokenizer config) of a character-level CLIP BPE vocabulary.

    Every character is a token, so any prompt tokenizes without a download; ids are stable.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = clip_vocab()  # no merges: 256 characters, their </w> forms, BOS 512, EOS 513
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return folder


def tiny_clip_tokenizer(folder: str | Path):
    """A ``CLIPTokenizer`` over :func:`write_tiny_clip_tokenizer_files` (positional form: valid on transformers 4 and 5)."""
    from transformers import CLIPTokenizer

    folder = write_tiny_clip_tokenizer_files(folder)
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def _clip_config(hidden: int, layers: int = 2, projection: int | None = None, act: str = "quick_gelu"):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=EOS_ID,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=layers,
        vocab_size=TINY_VOCAB_SIZE + 2,
        projection_dim=projection or hidden,
        hidden_act=act,
        max_position_embeddings=77,
    )


def _tiny_vae(latent_channels: int = 4, sd3: bool = False):
    from diffusers import AutoencoderKL

    kw: dict[str, Any] = {}
    if sd3:
        kw = dict(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
    return AutoencoderKL(
        block_out_channels=[4, 8],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=latent_channels,
        norm_num_groups=2,
        sample_size=64,
        **kw,
    )


#: The UNet shape SD1 and SDXL tiny pipelines share (FORMATS.md section 8); each family adds its own.
_TINY_UNET = dict(
    block_out_channels=(4, 8),
    layers_per_block=1,
    sample_size=32,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
)


def build_tiny_pipeline(
    family: Family = "sd1",
    seed: int = 0,
    work_dir: str | Path | None = None,
    *,
    sd3_transformer: dict[str, Any] | None = None,
):
    """A tiny text-to-image pipeline of ``family`` with seeded random weights (CPU, fp32).

    ``work_dir`` receives the tokenizer files (a temporary folder when omitted). ``sd3_transformer``
    overrides ``SD3Transformer2DModel`` arguments of the SD3 build, e.g. ``num_layers=2,
    qk_norm="rms_norm", dual_attention_layers=(0,)`` for the SD3.5-medium block layout.
    """
    import tempfile

    import torch

    work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="tagloop-tiny-"))
    tok = tiny_clip_tokenizer(work / "tok")
    if family == "sd1":
        from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
        from transformers import CLIPTextModel

        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            **_TINY_UNET,
            cross_attention_dim=32,
            norm_num_groups=2,
            attention_head_dim=2,
        )
        torch.manual_seed(seed + 1)
        vae = _tiny_vae()
        torch.manual_seed(seed + 2)
        te = CLIPTextModel(_clip_config(32))
        sched = DDIMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
        )
        return StableDiffusionPipeline(
            unet=unet,
            vae=vae,
            text_encoder=te,
            tokenizer=tok,
            scheduler=sched,
            safety_checker=None,
            feature_extractor=None,
            image_encoder=None,
            requires_safety_checker=False,
        )
    if family == "sdxl":
        from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            **_TINY_UNET,
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 2),
            projection_class_embeddings_input_dim=80,  # 6 * 8 + 32 (pooled projection of text_encoder_2)
            cross_attention_dim=96,  # 32 (CLIP-L stand-in) + 64 (CLIP-G stand-in)
            norm_num_groups=1,
        )
        torch.manual_seed(seed + 1)
        vae = _tiny_vae()
        torch.manual_seed(seed + 2)
        te = CLIPTextModel(_clip_config(32))
        torch.manual_seed(seed + 3)
        te2 = CLIPTextModelWithProjection(_clip_config(64, projection=32, act="gelu"))
        sched = EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            steps_offset=1,
            timestep_spacing="leading",
        )
        return StableDiffusionXLPipeline(
            unet=unet,
            vae=vae,
            text_encoder=te,
            text_encoder_2=te2,
            tokenizer=tok,
            tokenizer_2=tok,
            scheduler=sched,
            image_encoder=None,
            feature_extractor=None,
        )
    if family == "sd3":
        from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
        from transformers import CLIPTextModelWithProjection

        torch.manual_seed(seed)
        mmdit: dict[str, Any] = dict(
            sample_size=32,
            patch_size=1,
            in_channels=4,
            num_layers=1,
            attention_head_dim=8,
            num_attention_heads=4,
            caption_projection_dim=32,
            joint_attention_dim=96,  # 32 + 48 CLIP hidden states, zero-padded to the T5 width
            pooled_projection_dim=64,  # 32 + 32 projections
            out_channels=4,
        )
        transformer = SD3Transformer2DModel(**{**mmdit, **(sd3_transformer or {})})
        torch.manual_seed(seed + 1)
        vae = _tiny_vae(latent_channels=4, sd3=True)
        torch.manual_seed(seed + 2)
        te = CLIPTextModelWithProjection(_clip_config(32, projection=32))
        # SD3 uses CLIP-L's pooled output unprojected: SD3 checkpoints carry no CLIP-L projection and
        # loaders (diffusers' single-file code among them) use the identity, so the tiny model does too.
        with torch.no_grad():
            te.text_projection.weight.copy_(torch.eye(32))
        torch.manual_seed(seed + 3)
        te2 = CLIPTextModelWithProjection(_clip_config(48, projection=32, act="gelu"))
        sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
        return StableDiffusion3Pipeline(
            transformer=transformer,
            vae=vae,
            text_encoder=te,
            text_encoder_2=te2,
            text_encoder_3=None,
            tokenizer=tok,
            tokenizer_2=tok,
            tokenizer_3=None,
            scheduler=sched,
        )
    raise ValueError(f"`family` must be one of sd1, sdxl, sd3, not {family!r}.")


def save_tiny_diffusers(family: Family, folder: str | Path, seed: int = 0, sd3_transformer: dict[str, Any] | None = None):
    """Build a tiny pipeline and save it as a diffusers folder; returns the pipeline
    (``sd3_transformer``: overrides of the tiny SD3 transformer's config, as :func:`build_tiny_pipeline`)."""
    folder = Path(folder)
    pipe = build_tiny_pipeline(family, seed, work_dir=folder.parent / f".{folder.name}-work", sd3_transformer=sd3_transformer)
    pipe.save_pretrained(folder, safe_serialization=True)
    return pipe


def write_config_folder(pipe, folder: str | Path) -> Path:
    """Save ``pipe`` as a diffusers folder *without weights*: what ``from_single_file(config=...)`` reads."""
    folder = Path(folder)
    pipe.save_pretrained(folder, safe_serialization=True)
    for f in list(folder.rglob("*.safetensors")) + list(folder.rglob("*.bin")):
        f.unlink()
    return folder


# --- diffusers -> original (LDM / SGM) key names -------------------------------------------------

_RESNET_UNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def _unet_prefix_map(config: dict) -> dict[str, str]:
    n = len(config["block_out_channels"])
    lpb = config["layers_per_block"]
    m = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
        "add_embedding.linear_1": "label_emb.0.0",
        "add_embedding.linear_2": "label_emb.0.2",
        "mid_block.resnets.0": "middle_block.0",
        "mid_block.attentions.0": "middle_block.1",
        "mid_block.resnets.1": "middle_block.2",
    }
    for i in range(n):
        for j in range(lpb):
            k = 1 + i * (lpb + 1) + j
            m[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{k}.0"
            m[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{k}.1"
        if i < n - 1:
            m[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{(i + 1) * (lpb + 1)}.0.op"
    for i in range(n):
        for j in range(lpb + 1):
            k = i * (lpb + 1) + j
            m[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{k}.0"
            m[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{k}.1"
        if i < n - 1:
            has_attn = "CrossAttn" in config["up_block_types"][i]
            m[f"up_blocks.{i}.upsamplers.0.conv"] = f"output_blocks.{i * (lpb + 1) + lpb}.{2 if has_attn else 1}.conv"
    return m


def _rename(key: str, prefixes: dict[str, str], inner: dict[str, str] | None = None) -> str:
    best = max((p for p in prefixes if key == p or key.startswith(p + ".")), key=len, default=None)
    if best is None:
        raise KeyError(f"no original-layout name for diffusers key {key!r}")
    rest = key[len(best) + 1 :]
    if inner and "resnets." in best:
        head, _, tail = rest.partition(".")
        rest = f"{inner.get(head, head)}.{tail}" if tail else inner.get(head, head)
    return f"{prefixes[best]}.{rest}" if rest else prefixes[best]


def unet_to_ldm(state_dict: dict, config: dict, prefix: str = "model.diffusion_model.") -> dict:
    """Diffusers ``UNet2DConditionModel`` weights -> LDM ``openaimodel.UNetModel`` names (SD1/SD2/SDXL)."""
    pm = _unet_prefix_map(config)
    return {prefix + _rename(k, pm, _RESNET_UNET): v for k, v in state_dict.items()}


_RESNET_VAE = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_to_ldm(state_dict: dict, config: dict, prefix: str = "first_stage_model.") -> dict:
    """Diffusers ``AutoencoderKL`` weights -> LDM ``AutoencoderKL`` names (attention as 1x1 convs)."""
    n = len(config["block_out_channels"])
    out = {}
    for k, v in state_dict.items():
        part, _, rest = k.partition(".")
        new = None
        if rest.startswith("mid_block.attentions.0."):
            sub = rest[len("mid_block.attentions.0.") :]
            for a, b in _VAE_ATTN.items():
                if sub.startswith(a + "."):
                    new = f"{part}.mid.attn_1.{b}.{sub[len(a) + 1 :]}"
                    if b in ("q", "k", "v", "proj_out") and sub.endswith("weight") and v.ndim == 2:
                        v = v[:, :, None, None]
            assert new is not None, k
        elif rest.startswith("mid_block.resnets."):
            idx, _, sub = rest[len("mid_block.resnets.") :].partition(".")
            head, _, tail = sub.partition(".")
            new = f"{part}.mid.block_{int(idx) + 1}.{_RESNET_VAE.get(head, head)}.{tail}"
        elif rest.startswith(("down_blocks.", "up_blocks.")):
            kind, i, what, rest2 = rest.split(".", 3)
            i = int(i)
            blk = f"down.{i}" if kind == "down_blocks" else f"up.{n - 1 - i}"
            if what == "resnets":
                j, head, tail = rest2.split(".", 2)
                new = f"{part}.{blk}.block.{j}.{_RESNET_VAE.get(head, head)}.{tail}"
            else:  # downsamplers.0.conv / upsamplers.0.conv
                new = f"{part}.{blk}.{'downsample' if kind == 'down_blocks' else 'upsample'}.{rest2.split('.', 1)[1]}"
        elif rest.startswith("conv_norm_out."):
            new = f"{part}.norm_out.{rest[len('conv_norm_out.') :]}"
        else:  # conv_in, conv_out, quant_conv, post_quant_conv
            new = k
        out[prefix + new] = v
    return out


def clip_to_ldm(state_dict: dict, prefix: str) -> dict:
    """HF ``CLIPTextModel`` weights -> ``<prefix>text_model.*`` (the FrozenCLIPEmbedder layout)."""
    out = {}
    for k, v in state_dict.items():
        if k.startswith("text_projection") or k.endswith("position_ids"):
            continue
        k = k if k.startswith("text_model.") else "text_model." + k
        out[prefix + k] = v
    return out


def clip_to_open_clip(state_dict: dict, prefix: str) -> dict:
    """HF ``CLIPTextModelWithProjection`` weights -> OpenCLIP text tower names (fused ``in_proj``)."""
    import torch

    sd = {(k[len("text_model.") :] if k.startswith("text_model.") else k): v for k, v in state_dict.items()}
    out = {
        prefix + "token_embedding.weight": sd["embeddings.token_embedding.weight"],
        prefix + "positional_embedding": sd["embeddings.position_embedding.weight"],
        prefix + "ln_final.weight": sd["final_layer_norm.weight"],
        prefix + "ln_final.bias": sd["final_layer_norm.bias"],
        prefix + "text_projection": sd["text_projection.weight"].T.contiguous(),
    }
    layers = sorted({int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers.")})
    for i in layers:
        src, dst = f"encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[dst + f"attn.in_proj_{kind}"] = torch.cat(
                [sd[src + f"self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")], dim=0
            )
            out[dst + f"attn.out_proj.{kind}"] = sd[src + f"self_attn.out_proj.{kind}"]
            out[dst + f"ln_1.{kind}"] = sd[src + f"layer_norm1.{kind}"]
            out[dst + f"ln_2.{kind}"] = sd[src + f"layer_norm2.{kind}"]
            out[dst + f"mlp.c_fc.{kind}"] = sd[src + f"mlp.fc1.{kind}"]
            out[dst + f"mlp.c_proj.{kind}"] = sd[src + f"mlp.fc2.{kind}"]
    return out


# --- diffusers -> original SD3 / SD3.5 (MMDiT) names ----------------------------------------------

#: Simple renames of the MMDiT's embedders and output layer (original ``mmditx.py`` module names).
_SD3_TOP = {
    "pos_embed.pos_embed": "pos_embed",
    "pos_embed.proj": "x_embedder.proj",
    "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
    "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
    "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
    "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
    "context_embedder": "context_embedder",
    "proj_out": "final_layer.linear",
}

#: Per joint block: diffusers sub-name -> original sub-name (the fused ``qkv`` are handled apart).
_SD3_BLOCK = {
    "norm1.linear": "x_block.adaLN_modulation.1",
    "norm1_context.linear": "context_block.adaLN_modulation.1",
    "attn.to_out.0": "x_block.attn.proj",
    "attn.to_add_out": "context_block.attn.proj",
    "attn.norm_q": "x_block.attn.ln_q",
    "attn.norm_k": "x_block.attn.ln_k",
    "attn.norm_added_q": "context_block.attn.ln_q",
    "attn.norm_added_k": "context_block.attn.ln_k",
    "attn2.to_out.0": "x_block.attn2.proj",
    "attn2.norm_q": "x_block.attn2.ln_q",
    "attn2.norm_k": "x_block.attn2.ln_k",
    "ff.net.0.proj": "x_block.mlp.fc1",
    "ff.net.2": "x_block.mlp.fc2",
    "ff_context.net.0.proj": "context_block.mlp.fc1",
    "ff_context.net.2": "context_block.mlp.fc2",
}

#: Separate q/k/v projections that the original fuses into one ``qkv`` linear (order q, k, v).
_SD3_QKV = {
    "x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v"),
}


def _swap_halves(t):
    """``[a; b] -> [b; a]`` along dim 0: the original adaLN order (shift, scale) vs diffusers' (scale, shift)."""
    import torch

    first, second = t.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def sd3_transformer_to_original(state_dict: dict, config: dict, prefix: str = "model.diffusion_model.") -> dict:
    """Diffusers ``SD3Transformer2DModel`` weights -> the MMDiT names of SD3/SD3.5 checkpoints.

    ``joint_blocks.N.{x_block,context_block}``: q/k/v fused into ``attn.qkv`` (and ``attn2.qkv`` in
    SD3.5's dual-attention blocks), RMS q/k norms as ``attn.ln_q``/``ln_k``. The original's
    ``AdaLayerNormContinuous`` layers (the last block's pre-only context norm and ``final_layer``) split
    their modulation as (shift, scale) where diffusers splits (scale, shift), so those halves swap; the
    pre-only last block has no context ``attn.proj`` or ``mlp``. Every input key must be used.
    """
    import torch

    sd = dict(state_dict)
    out: dict = {}

    def take(src: str, dst: str, fn=None) -> None:
        for kind in ("weight", "bias", ""):
            key = f"{src}.{kind}" if kind else src
            if key in sd:
                v = sd.pop(key)
                out[prefix + (f"{dst}.{kind}" if kind else dst)] = fn(v) if fn else v

    for src, dst in _SD3_TOP.items():
        take(src, dst)
    take("norm_out.linear", "final_layer.adaLN_modulation.1", _swap_halves)
    layers = int(config["num_layers"])
    for i in range(layers):
        b, o = f"transformer_blocks.{i}.", f"joint_blocks.{i}."
        pre_only = i == layers - 1  # diffusers: context_pre_only for the last block only
        for src, dst in _SD3_BLOCK.items():
            fn = _swap_halves if (pre_only and src == "norm1_context.linear") else None
            take(b + src, o + dst, fn)
        for dst, parts in _SD3_QKV.items():
            for kind in ("weight", "bias"):
                keys = [f"{b}{p}.{kind}" for p in parts]
                if all(k in sd for k in keys):
                    out[f"{prefix}{o}{dst}.{kind}"] = torch.cat([sd.pop(k) for k in keys], dim=0)
    if sd:
        raise KeyError(f"no SD3 original-layout name for diffusers keys {sorted(sd)[:5]}")
    return out


def clip_to_sd3(state_dict: dict, prefix: str, projection: bool) -> dict:
    """HF CLIP text weights -> ``<prefix>text_model.*`` (+ ``text_projection.weight``), as SD3 files store them.

    SD3 files keep the transformers layout for both CLIPs under ``text_encoders.clip_{l,g}.transformer.``;
    CLIP-G keeps its projection, CLIP-L has none (its pooled output is used unprojected).
    """
    out = {}
    for k, v in state_dict.items():
        if k.endswith("position_ids"):
            continue
        if k.startswith("text_projection"):
            if projection:
                out[prefix + k] = v
            continue
        k = k if k.startswith("text_model.") else "text_model." + k
        out[prefix + k] = v
    return out


def sd3_pipeline_to_original(pipe) -> dict:
    """An SD3/SD3.5 pipeline as one checkpoint state dict in the layout of the published files.

    ``model.diffusion_model.*`` (MMDiT), ``first_stage_model.*`` (VAE, LDM names),
    ``text_encoders.clip_l.transformer.*`` and ``text_encoders.clip_g.transformer.*``. A pipeline with a
    T5 encoder is refused: this writer covers the CLIP-only files (T5 is optional in SD3 checkpoints).
    """
    import torch

    if getattr(pipe, "text_encoder_3", None) is not None:
        raise ValueError("the SD3 single-file writer covers pipelines without T5; build it with text_encoder_3=None.")
    proj = pipe.text_encoder.text_projection.weight
    if not torch.equal(proj, torch.eye(proj.shape[0], proj.shape[1], dtype=proj.dtype)):
        raise ValueError(
            "SD3 single files carry no CLIP-L projection (loaders use the identity); "
            "set text_encoder.text_projection to the identity before writing one."
        )
    sd: dict = {}
    sd.update(sd3_transformer_to_original(pipe.transformer.state_dict(), dict(pipe.transformer.config)))
    sd.update(vae_to_ldm(pipe.vae.state_dict(), dict(pipe.vae.config)))
    sd.update(clip_to_sd3(pipe.text_encoder.state_dict(), "text_encoders.clip_l.transformer.", projection=False))
    sd.update(clip_to_sd3(pipe.text_encoder_2.state_dict(), "text_encoders.clip_g.transformer.", projection=True))
    return sd


def pipeline_to_single_file_state_dict(pipe, family: Family) -> dict:
    """The single-file state dict of a pipeline: A1111-style for SD1/SDXL, the SD3/SD3.5 file layout for SD3."""
    if family == "sd3":
        return {k: v.detach().contiguous() for k, v in sd3_pipeline_to_original(pipe).items()}
    sd: dict = {}
    sd.update(unet_to_ldm(pipe.unet.state_dict(), dict(pipe.unet.config)))
    sd.update(vae_to_ldm(pipe.vae.state_dict(), dict(pipe.vae.config)))
    if family == "sd1":
        sd.update(clip_to_ldm(pipe.text_encoder.state_dict(), "cond_stage_model.transformer."))
    elif family == "sdxl":
        sd.update(clip_to_ldm(pipe.text_encoder.state_dict(), "conditioner.embedders.0.transformer."))
        sd.update(clip_to_open_clip(pipe.text_encoder_2.state_dict(), "conditioner.embedders.1.model."))
    else:
        raise ValueError(f"`family` must be one of sd1, sdxl, sd3, not {family!r}.")
    return {k: v.detach().contiguous() for k, v in sd.items()}


def save_tiny_single_file(pipe, family: Family, path: str | Path) -> Path:
    """Write ``pipe`` as one ``.safetensors`` checkpoint with original key names."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(pipeline_to_single_file_state_dict(pipe, family), str(path))
    return path


def save_tiny_vae_file(pipe, path: str | Path) -> Path:
    """The pipeline's VAE as an A1111 VAE file (``vae-ft-mse-840000-ema-pruned`` layout: no prefix)."""
    from safetensors.torch import save_file

    path = Path(path)
    sd = vae_to_ldm(pipe.vae.state_dict(), dict(pipe.vae.config), prefix="")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def save_tiny_lora(pipe, path: str | Path, rank: int = 2, alpha: float = 1.0, seed: int = 0, scale: float = 0.5) -> Path:
    """A kohya/A1111 LoRA for the tiny SD1 pipeline: every UNet attention projection and TE attention projection.

    Keys as sd-scripts writes them: ``lora_unet_<module path with _>.lora_down.weight`` ([rank, in]),
    ``.lora_up.weight`` ([out, rank]) and ``.alpha`` (scalar); ``lora_te_text_model_encoder_...`` for CLIP.
    """
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def add(name: str, module) -> None:
        w = module.weight
        out_f, in_f = w.shape[0], w.shape[1]
        sd[f"{name}.lora_down.weight"] = torch.randn(rank, in_f, generator=g) * scale
        sd[f"{name}.lora_up.weight"] = torch.randn(out_f, rank, generator=g) * scale
        sd[f"{name}.alpha"] = torch.tensor(float(alpha))

    for mname, module in pipe.unet.named_modules():
        if mname.endswith(
            (
                "attn1.to_q",
                "attn1.to_k",
                "attn1.to_v",
                "attn1.to_out.0",
                "attn2.to_q",
                "attn2.to_k",
                "attn2.to_v",
                "attn2.to_out.0",
            )
        ):
            add("lora_unet_" + mname.replace(".", "_"), module)
    for mname, module in pipe.text_encoder.named_modules():
        if mname.endswith(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj")):
            full = mname if mname.startswith("text_model.") else "text_model." + mname
            add("lora_te_" + full.replace(".", "_"), module)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata={"ss_network_module": "networks.lora"})
    return path


def save_tiny_embedding(pipe, path: str | Path, vectors: int = 2, seed: int = 0) -> Path:
    """An A1111 textual-inversion embedding (``emb_params`` [vectors, hidden]) for the tiny SD1 pipeline."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    hidden = pipe.text_encoder.config.hidden_size
    path = Path(path)
    save_file({"emb_params": torch.randn(vectors, hidden, generator=g)}, str(path))
    return path
