"""WD v3 timm backend: parity with WD's ONNX layout, with timm's own loader + transform, and bad files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tagloop.tagger import onnx_tagger as ot
from tagloop.tagger import preprocess as pp
from tagloop.tagger import wd_timm as wt
from tagloop.tagger.base import GPUUnavailableError, LoadOptions, ModelFileError
from tagloop.testing import taggers as tiny

CPU = LoadOptions(device="cpu")
MEAN = (0.48, 0.45, 0.40)  # deliberately not 0.5 so the channel order of the normalisation shows
STD = (0.23, 0.22, 0.25)


def images() -> list[Image.Image]:
    rng = np.random.RandomState(7)
    square = Image.fromarray((rng.rand(64, 64, 3) * 255).astype(np.uint8), "RGB")
    wide = Image.fromarray((rng.rand(40, 90, 3) * 255).astype(np.uint8), "RGB")  # non-square: white bands
    rgba = np.zeros((100, 72, 4), np.uint8)  # larger than 64: bicubic downscale; alpha: white composite
    rgba[..., :3] = (rng.rand(100, 72, 3) * 255).astype(np.uint8)
    rgba[..., 3] = np.linspace(0, 255, 72, dtype=np.uint8)[None, :]
    return [square, wide, Image.fromarray(rgba, "RGBA")]


@pytest.fixture(scope="module")
def timm_folder(tmp_path_factory) -> Path:
    return tiny.save_tiny_wd_v3_timm(tmp_path_factory.mktemp("wdv3") / "timm", mean=MEAN, std=STD, seed=5)


def test_config_is_in_timm_hub_format(timm_folder):
    cfg = json.loads((timm_folder / "config.json").read_text(encoding="utf-8"))
    assert cfg["architecture"] == "vit_tiny_patch16_224" and cfg["num_classes"] == 20
    assert cfg["pretrained_cfg"]["input_size"] == [3, 64, 64] and cfg["pretrained_cfg"]["crop_pct"] == 1.0
    assert cfg["model_args"]["act_layer"] == "gelu_tanh" and cfg["model_args"]["class_token"] is False
    parsed = wt.read_timm_config(timm_folder)
    assert parsed.input_size == (64, 64) and parsed.mean == MEAN and parsed.std == STD
    assert wt.detect_wd_timm(timm_folder) and wt.detect_wd_timm(timm_folder / "config.json")
    assert not wt.detect_wd_timm(timm_folder / "selected_tags.csv")


def test_onnx_and_timm_paths_agree(timm_folder, tmp_path):
    """The same weights as WD's ONNX graph (BGR 0..255 in, sigmoid out) and through timm agree."""
    onnx_folder = wt.export_wd_timm_to_onnx(timm_folder, tmp_path / "onnx")
    timm_tagger = wt.load_wd_timm(timm_folder, CPU)
    onnx_tagger = ot.load_onnx_tagger(onnx_folder, CPU)
    assert onnx_tagger.family == timm_tagger.family == "wd14"
    assert onnx_tagger.tags == timm_tagger.tags and onnx_tagger.categories == timm_tagger.categories
    imgs = images()
    p_timm = timm_tagger.predict(np.stack([timm_tagger.preprocess(im) for im in imgs]))
    p_onnx = onnx_tagger.predict(np.stack([onnx_tagger.preprocess(im) for im in imgs]))
    assert p_timm.shape == p_onnx.shape == (3, 20)
    assert np.abs(p_onnx - p_timm).max() < 1e-4
    assert p_timm.std() > 0.05 and np.abs(p_timm[0] - p_timm[1]).max() > 0.01  # not degenerate


def test_matches_wdv3_timm_reference_through_timms_own_loader(timm_folder):
    """Reference = neggles/wdv3-timm's steps on timm's own loader and eval transform.

    timm ``local-dir:`` reads config.json + model.safetensors itself; ``create_transform`` builds the
    resize/crop/normalise from ``pretrained_cfg``; then RGB -> BGR on the tensor and a sigmoid.
    """
    import timm
    from timm.data import create_transform, resolve_data_config

    reference = timm.create_model(f"local-dir:{timm_folder}", pretrained=True).eval()
    transform = create_transform(**resolve_data_config(reference.pretrained_cfg, model=reference))
    tagger = wt.load_wd_timm(timm_folder, CPU)
    for im in images():
        rgb = im.convert("RGBA")
        canvas = Image.new("RGBA", rgb.size, (255, 255, 255))
        canvas.alpha_composite(rgb)
        rgb = canvas.convert("RGB")
        side = max(rgb.size)
        padded = Image.new("RGB", (side, side), (255, 255, 255))
        padded.paste(rgb, ((side - rgb.width) // 2, (side - rgb.height) // 2))
        x = transform(padded).unsqueeze(0)[:, [2, 1, 0]]
        with torch.inference_mode():
            expected = torch.sigmoid(reference(x)).numpy()
        ours_input = tagger.to_model_input(tagger.preprocess(im)[None])
        np.testing.assert_allclose(ours_input.numpy(), x.numpy(), atol=1e-5)
        np.testing.assert_allclose(tagger.predict(tagger.preprocess(im)[None]), expected, atol=1e-5)


def test_normalisation_by_hand(timm_folder):
    tagger = wt.load_wd_timm(timm_folder, CPU)
    white = tagger.to_model_input(tagger.preprocess(Image.new("RGB", (30, 50), (255, 255, 255)))[None]).numpy()
    assert white.shape == (1, 3, 64, 64)
    for c_bgr, c_rgb in enumerate((2, 1, 0)):  # channel 0 is blue, normalised with the blue mean/std
        np.testing.assert_allclose(white[0, c_bgr], (1 - MEAN[c_rgb]) / STD[c_rgb], atol=1e-6)
    red = tagger.to_model_input(tagger.preprocess(Image.new("RGB", (64, 64), (255, 0, 0)))[None]).numpy()
    np.testing.assert_allclose(red[0, 0], (0 - MEAN[2]) / STD[2], atol=1e-6)  # B
    np.testing.assert_allclose(red[0, 1], (0 - MEAN[1]) / STD[1], atol=1e-6)  # G
    np.testing.assert_allclose(red[0, 2], (1 - MEAN[0]) / STD[0], atol=1e-6)  # R
    # the pixels themselves are the WD14 reference preprocessing
    np.testing.assert_array_equal(tagger.preprocess(images()[1]), pp.wd14(images()[1], 64))


def test_key_prefix_is_stripped(tmp_path, timm_folder):
    prefixed = tiny.save_tiny_wd_v3_timm(tmp_path / "prefixed", mean=MEAN, std=STD, seed=5, key_prefix="module.")
    batch = np.stack([pp.wd14(im, 64) for im in images()])
    np.testing.assert_allclose(
        wt.load_wd_timm(prefixed, CPU).predict(batch), wt.load_wd_timm(timm_folder, CPU).predict(batch), atol=1e-6
    )


def test_prefer_backend(timm_folder, tmp_path):
    both = tmp_path / "both"
    shutil.copytree(timm_folder, both)
    wt.export_wd_timm_to_onnx(timm_folder, both)
    assert wt.prefer_backend(both, "cpu") == "onnx"
    assert wt.prefer_backend(both, "cuda") == "wd-timm"
    assert wt.prefer_backend(timm_folder, "cpu") == "wd-timm"
    assert wt.prefer_backend(tmp_path, "cpu") is None


# -- bad files -----------------------------------------------------------------------------------


def _edit_config(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text(encoding="utf-8"))
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    return dst


def test_unknown_architecture(timm_folder, tmp_path):
    folder = _edit_config(timm_folder, tmp_path / "unknown", architecture="vit_tiny_patch16_2244")
    with pytest.raises(ModelFileError, match=r"no architecture 'vit_tiny_patch16_2244'.*similar: vit_tiny_patch16_224"):
        wt.load_wd_timm(folder, CPU)


def test_missing_architecture_is_not_detected_and_not_loaded(timm_folder, tmp_path):
    folder = tmp_path / "noarch"
    shutil.copytree(timm_folder, folder)
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    del cfg["architecture"]
    (folder / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    assert not wt.detect_wd_timm(folder)
    with pytest.raises(ModelFileError, match="no `architecture` key"):
        wt.load_wd_timm(folder, CPU)


def test_mismatched_state_dict_names_keys(timm_folder, tmp_path):
    folder = _edit_config(
        timm_folder,
        tmp_path / "deeper",
        model_args={**json.loads((timm_folder / "config.json").read_text())["model_args"], "depth": 2},
    )
    with pytest.raises(ModelFileError, match=r"missing \d+ keys \(blocks\.1\."):
        wt.load_wd_timm(folder, CPU)


def test_label_count_mismatch(timm_folder, tmp_path):
    folder = tmp_path / "labels"
    shutil.copytree(timm_folder, folder)
    lines = (folder / "selected_tags.csv").read_text(encoding="utf-8").splitlines()
    (folder / "selected_tags.csv").write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")
    with pytest.raises(ModelFileError, match="20 classes but selected_tags.csv lists 19 tags"):
        wt.load_wd_timm(folder, CPU)


def test_garbage_weights(timm_folder, tmp_path):
    folder = tmp_path / "garbage"
    shutil.copytree(timm_folder, folder)
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(ModelFileError, match="not a readable safetensors file"):
        wt.load_wd_timm(folder, CPU)


def test_cuda_without_gpu(timm_folder):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(GPUUnavailableError):
        wt.load_wd_timm(timm_folder, LoadOptions(device="cuda"))
    with pytest.raises(GPUUnavailableError):
        wt.load_wd_timm(timm_folder, LoadOptions(device="auto", require_gpu=True))


def test_broken_config_is_named_when_loading_the_folder(timm_folder, tmp_path):
    from tagloop.tagger.base import load_tagger

    folder = tmp_path / "badjson"
    shutil.copytree(timm_folder, folder)
    (folder / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelFileError, match=r"config.json is not valid JSON"):
        load_tagger(folder, CPU)
