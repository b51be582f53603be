"""SD3 / SD3.5 single-file checkpoints (the layout of the published ``sd3*.safetensors`` files).

A tiny SD3 pipeline is saved as a diffusers folder and as one checkpoint with the original MMDiT names
(``model.diffusion_model.joint_blocks.N.{x_block,context_block}``, fused ``qkv``, original adaLN chunk
order), ``first_stage_model.*`` and ``text_encoders.clip_{l,g}.transformer.*``; the file is loaded back
through tagloop's own loader and must give the folder's weights and image, bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tagloop.generator.generate import GenerationSettings, Generator
from tagloop.generator.models import GeneratorError, cache_clear, checkpoint_tensors, classify_keys, resolve_model
from tagloop.testing import diffusion as tiny

FAST = dict(steps=2, width=64, height=64)

#: SD3 medium blocks (the tiny default: one pre-only block), and SD3.5 medium blocks: a full joint
#: block with dual attention (``attn2``) and RMS q/k norms (``ln_q``/``ln_k``), then the pre-only one.
LAYOUTS = {
    "sd3-medium": None,
    "sd35-medium": dict(num_layers=2, qk_norm="rms_norm", dual_attention_layers=(0,)),
}


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def sd3(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    pipe = tiny.build_tiny_pipeline("sd3", seed=4, work_dir=root / "work", sd3_transformer=LAYOUTS[request.param])
    pipe.save_pretrained(root / "diffusers", safe_serialization=True)
    tiny.write_config_folder(pipe, root / "config")
    # a misleading name: the family must come from the tensor names
    ckpt = tiny.save_tiny_single_file(pipe, "sd3", root / "sdxl_anime_v2.safetensors")
    yield {
        "layout": request.param,
        "root": root,
        "pipe": pipe,
        "diffusers": root / "diffusers",
        "config": root / "config",
        "ckpt": ckpt,
    }
    cache_clear()


def arr(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def _rematerialise(pipe) -> None:
    """Copy every weight of ``pipe`` into freshly allocated memory (values unchanged)."""
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        for t in list(getattr(pipe, name).parameters()) + list(getattr(pipe, name).buffers()):
            t.data = t.data.clone()


def gen(model, **kw) -> Generator:
    kw.setdefault("notice", lambda m: None)
    return Generator(model, device="cpu", progress=False, **kw)


def test_file_has_the_published_sd3_key_layout(sd3):
    keys = set(checkpoint_tensors(sd3["ckpt"]))
    mm = "model.diffusion_model."
    n = sd3["pipe"].transformer.config.num_layers
    last = f"{mm}joint_blocks.{n - 1}."
    assert {
        f"{mm}pos_embed",
        f"{mm}x_embedder.proj.weight",
        f"{mm}context_embedder.weight",
        f"{mm}t_embedder.mlp.0.weight",
        f"{mm}t_embedder.mlp.2.weight",
        f"{mm}y_embedder.mlp.0.weight",
        f"{mm}y_embedder.mlp.2.weight",
        f"{mm}final_layer.linear.weight",
        f"{mm}final_layer.adaLN_modulation.1.weight",
        f"{mm}joint_blocks.0.x_block.attn.qkv.weight",
        f"{mm}joint_blocks.0.context_block.attn.qkv.weight",
        f"{mm}joint_blocks.0.x_block.attn.proj.weight",
        f"{mm}joint_blocks.0.context_block.adaLN_modulation.1.bias",
        "first_stage_model.encoder.conv_in.weight",
        "first_stage_model.decoder.mid.attn_1.q.weight",
        "text_encoders.clip_l.transformer.text_model.embeddings.position_embedding.weight",
        "text_encoders.clip_g.transformer.text_model.embeddings.position_embedding.weight",
        "text_encoders.clip_g.transformer.text_projection.weight",
    } <= keys
    # the last block is pre-only on the context side; SD3 files carry no CLIP-L projection and here no T5
    assert f"{last}context_block.attn.proj.weight" not in keys and f"{last}context_block.mlp.fc1.weight" not in keys
    assert "text_encoders.clip_l.transformer.text_projection.weight" not in keys
    assert not any(
        k.startswith(("text_encoders.t5xxl.", "transformer_blocks.", "model.diffusion_model.transformer_blocks")) for k in keys
    )
    assert not any(".to_q." in k or ".to_k." in k or ".add_q_proj." in k for k in keys)
    dim = sd3["pipe"].transformer.config.num_attention_heads * sd3["pipe"].transformer.config.attention_head_dim
    shapes = checkpoint_tensors(sd3["ckpt"])
    assert shapes[f"{mm}joint_blocks.0.x_block.attn.qkv.weight"]["shape"] == [3 * dim, dim]
    assert shapes[f"{last}context_block.adaLN_modulation.1.weight"]["shape"] == [2 * dim, dim]  # shift, scale


def test_family_is_sd3_from_the_keys_not_the_file_name(sd3):
    assert classify_keys(checkpoint_tensors(sd3["ckpt"])) == "sd3"
    src = resolve_model(sd3["ckpt"])
    # SD3.5 medium has dual-attention blocks and q/k norms; SD3 (3.0) medium has neither
    expected = {"sd3-medium": "medium-3.0", "sd35-medium": "medium"}[sd3["layout"]]
    assert (src.kind, src.family, src.variant) == ("single_file", "sd3", expected)


@pytest.mark.parametrize("sd3", ["sd3-medium"], indirect=True)
def test_sd3_medium_file_without_config_is_one_clear_sentence(sd3):
    """The packaged SD3.5-medium config does not fit SD3 (3.0) medium blocks: say so instead of a shape error."""
    with pytest.raises(GeneratorError, match=r"SD3 \(3\.0\) medium checkpoint.*--config-dir"):
        gen(sd3["ckpt"]).load()


def test_single_file_loads_the_folders_weights_and_image(sd3):
    said: list[str] = []
    g_file = gen(sd3["ckpt"], config=sd3["config"], notice=said.append)
    g_dir = gen(sd3["diffusers"])
    a, b = g_file.load().pipe, g_dir.load().pipe
    assert g_file.family == "sd3" and g_file.source.kind == "single_file"
    assert a.text_encoder_3 is None and a.tokenizer_3 is None
    for part in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        sa, sb = getattr(a, part).state_dict(), getattr(b, part).state_dict()
        assert sa.keys() == sb.keys(), part
        assert all(torch.equal(sa[k], sb[k]) for k in sa), part
    s = GenerationSettings(prompt="1girl, (red eyes:1.2), night sky", negative_prompt="lowres", seed=21, **FAST)
    x, y = g_file.generate(s)[0], g_dir.generate(s)[0]
    # as loaded, equal weights can sit at different byte alignments inside the two safetensors buffers,
    # and CPU matmul kernels then round the last bit differently (seen: 2e-7 in CLIP-G's projection)
    assert np.abs(arr(x.image) - arr(y.image)).max() <= 1
    assert x.image.size == (64, 64) and arr(x.image).std() > 0
    # in fresh (allocator-aligned) memory the same weights give the same image, bit for bit
    for pipe in (a, b):
        _rematerialise(pipe)
    x, y = g_file.generate(s)[0], g_dir.generate(s)[0]
    assert np.array_equal(arr(x.image), arr(y.image))
    assert "SD3 runs without its T5 text encoder (the file has no T5 encoder); prompts use CLIP-L/CLIP-G only." in said


def test_writer_refuses_what_sd3_files_cannot_hold(sd3, tmp_path):
    pipe = sd3["pipe"]
    with torch.no_grad():
        saved = pipe.text_encoder.text_projection.weight.clone()
        pipe.text_encoder.text_projection.weight.mul_(2.0)
    try:
        with pytest.raises(ValueError, match="CLIP-L projection"):
            tiny.save_tiny_single_file(pipe, "sd3", tmp_path / "x.safetensors")
    finally:
        with torch.no_grad():
            pipe.text_encoder.text_projection.weight.copy_(saved)
    with pytest.raises(KeyError, match="no SD3 original-layout name"):
        tiny.sd3_transformer_to_original({"unexpected.weight": torch.zeros(1)}, {"num_layers": 0})
