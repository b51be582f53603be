"""Test set-up: offline, single-threaded, deterministic."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_config(tmp_path_factory, monkeypatch):
    """No test reads the developer's own tagloop.toml or hub cache."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))


# --- tiny models shared by the whole session (built once; tests copy them before changing anything) ---


@pytest.fixture(scope="session")
def tiny_dd(tmp_path_factory):
    """A tiny DeepDanbooru in A1111's file name and key layout: ``(path, tags)``."""
    from tagloop.testing import save_tiny_deepdanbooru

    folder = tmp_path_factory.mktemp("tiny_dd")
    return save_tiny_deepdanbooru(folder / "model-resnet_custom_v3.pt", num_tags=24, seed=1)


@pytest.fixture(scope="session")
def tiny_dd_path(tiny_dd):
    return tiny_dd[0]


@pytest.fixture(scope="session")
def tiny_wd(tmp_path_factory):
    """A tiny WD14 release folder (``model.onnx`` + ``selected_tags.csv``, 12 general and 4 character tags)."""
    from tagloop.testing import save_tiny_wd14_onnx

    return save_tiny_wd14_onnx(tmp_path_factory.mktemp("tiny_wd") / "wd", num_general=12, num_character=4, seed=3)


@pytest.fixture(scope="session")
def loop_models(tmp_path_factory):
    """The demo's tiny DeepDanbooru (scores follow the pixels) and tiny SD1 diffusers folder: ``(dd, sd)``."""
    from tagloop.pipeline.demo import build_models

    return build_models(tmp_path_factory.mktemp("loop_models"))


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """A tiny random CLIP folder (``CLIPModel.save_pretrained`` layout)."""
    from tagloop.testing import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip") / "clip")
