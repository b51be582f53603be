"""DeepDanbooru v3 torch backend: architecture parity, loaders, validation, safety."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from tagloop.tagger import deepdanbooru as dd
from tagloop.tagger.base import LoadOptions, ModelFileError, TaggerError
from tagloop.testing import taggers as tiny

sys.path.insert(0, str(Path(__file__).parent))
from reference_deepdanbooru import reference_forward  # noqa: E402

SMALL = LoadOptions(device="cpu", extra={"input_size": 128})


def two_images(height: int = 128, width: int = 256) -> torch.Tensor:
    """Two unlike NHWC images in 0..1: seeded noise and a colour gradient with a dark square."""
    g = torch.Generator().manual_seed(7)
    noise = torch.rand((height, width, 3), generator=g)
    ys = torch.linspace(0, 1, height)[:, None].expand(height, width)
    xs = torch.linspace(0, 1, width)[None, :].expand(height, width)
    grad = torch.stack([xs, ys, 1 - xs * ys], dim=-1).clone()
    grad[10:60, 20:90] = 0.05
    return torch.stack([noise, grad])


def as_uint8(images: torch.Tensor) -> np.ndarray:
    return (images * 255).round().to(torch.uint8).numpy()


@pytest.fixture(scope="module")
def tiny_sd() -> dict[str, torch.Tensor]:
    return tiny.make_random_state_dict(seed=3)


# --- architecture -----------------------------------------------------------------------------


def test_full_model_has_published_parameter_count_and_keys():
    net = dd.DeepDanbooruNet.full(device="meta")
    assert sum(p.numel() for p in net.parameters()) == dd.FULL_PARAMETER_COUNT == 160_956_544
    keys = list(net.state_dict())
    assert len(keys) == 357 and "n_Conv_178.bias" not in keys
    assert set(keys) == {f"n_Conv_{i}.weight" for i in range(179)} | {f"n_Conv_{i}.bias" for i in range(178)}
    # the stage-4 quirk: 100 is the 1024 -> 1024 stride-2 projection, 97 the 1x1 reduce
    assert tuple(net.n_Conv_100.weight.shape) == (1024, 1024, 1, 1) and net.n_Conv_100.stride == (2, 2)
    assert tuple(net.n_Conv_97.weight.shape) == (256, 1024, 1, 1) and net.n_Conv_97.stride == (1, 1)
    assert net.n_Conv_98.stride == (2, 2) and net.n_Conv_13.stride == (2, 2) and net.n_Conv_12.stride == (1, 1)
    assert net.n_Conv_1.stride == (1, 1) and net.n_Conv_0.stride == (2, 2)


def test_parity_with_independent_reference(tiny_sd):
    images = two_images()
    net = dd.build_net(tiny_sd)
    with torch.no_grad():
        ours = net(images).double()
    ref = reference_forward(tiny_sd, images)
    assert ours.shape == (2, 32)
    assert (ours - ref).abs().max().item() < 1e-5
    # non-degenerate scores that differ between the two images (a batch mix-up would show)
    assert 0.05 < ours.mean().item() < 0.95 and ((ours > 0.02) & (ours < 0.98)).any()
    assert (ours[0] - ours[1]).abs().max().item() > 1e-2
    # each image alone gives the same scores as in the batch
    with torch.no_grad():
        single = net(images[1:]).double()
    assert (single[0] - ours[1]).abs().max().item() < 1e-5


def test_stage4_numbering_quirk_changes_the_result():
    # stage 4 with inner == out so that swapping 97 (reduce) and 100 (projection) is shape-compatible
    widths = dd.DeepDanbooruWidths(stem=8, stages=(16, 16, 32, 32, 32, 64), inner=(4, 4, 8, 32, 8, 16), num_tags=16)
    sd = tiny.make_random_state_dict(widths, seed=1)
    images = two_images(128, 128)
    with torch.no_grad():
        ours = dd.build_net(sd)(images).double()
    assert (ours - reference_forward(sd, images)).abs().max().item() < 1e-5
    assert (ours - reference_forward(sd, images, swap_stage4=True)).abs().max().item() > 1e-3


def test_input_side_must_be_a_multiple_of_128(tiny_sd):
    net = dd.build_net(tiny_sd)
    with pytest.raises(ValueError, match="multiples of 128"):
        net(torch.rand(1, 448, 448, 3))
    for bad in (500, "448", (512, 300), 0, "big", True):
        with pytest.raises(TaggerError, match="multiple of 128"):
            dd.parse_input_size(bad)
    assert dd.parse_input_size("512x384") == (512, 384) and dd.parse_input_size(None) == (512, 512)


# --- loading ----------------------------------------------------------------------------------


def test_pt_and_safetensors_round_trips_give_identical_scores(tmp_path):
    pt, tags = tiny.save_tiny_deepdanbooru(tmp_path / "a" / dd.A1111_FILENAME, seed=5)
    st, tags_st = tiny.save_tiny_deepdanbooru(tmp_path / "b" / "dd.safetensors", seed=5)
    assert tags == tags_st and tags[:3] == ["1girl", "solo", "long_hair"]
    assert tags[-3:] == ["rating:safe", "rating:questionable", "rating:explicit"]
    raw = torch.load(pt, weights_only=True)
    assert raw["tags"] == tags and len(raw) == 358  # A1111 layout: 357 tensors + tags

    batch = as_uint8(two_images(128, 128))
    t_pt = dd.load_deepdanbooru(pt, SMALL)
    t_st = dd.load_deepdanbooru(tmp_path / "b", SMALL)  # a folder with one model file
    assert t_pt.tags == tags and t_st.tags == tags
    assert t_pt.categories[-3:] == ["rating"] * 3 and set(t_pt.categories[:-3]) == {"general"}
    assert (t_pt.family, t_pt.backend, t_pt.device, t_pt.input_size) == ("deepdanbooru", "torch", "cpu", (128, 128))
    a, b = t_pt.predict(batch), t_st.predict(batch)
    assert a.dtype == np.float32 and a.shape == (2, len(tags))
    np.testing.assert_array_equal(a, b)
    # the loader's scores are the reference's on the same file
    sd, _ = dd.read_deepdanbooru_file(st)
    ref = reference_forward(sd, torch.from_numpy(batch).double() / 255)
    assert np.abs(a - ref.numpy()).max() < 1e-5

    pre = t_pt.preprocess(Image.new("RGB", (300, 200), (200, 30, 40)))
    assert pre.dtype == np.uint8 and pre.shape == (128, 128, 3)
    t_pt.close()
    with pytest.raises(TaggerError, match="closed"):
        t_pt.predict(batch)


def test_convert_pt_to_safetensors_keeps_scores_and_tags(tmp_path):
    pt, tags = tiny.save_tiny_deepdanbooru(tmp_path / "m.pt", seed=2)
    out = dd.convert_to_safetensors(pt)
    assert out == tmp_path / "m.safetensors"
    pt.unlink()  # the converted file stands alone: tags are in its metadata
    tagger = dd.load_deepdanbooru(out, SMALL)
    assert tagger.tags == tags
    sd = tiny.make_random_state_dict(dd.DeepDanbooruWidths.tiny(32), seed=2)
    batch = as_uint8(two_images(128, 128))
    with torch.no_grad():
        expected = dd.build_net(sd)(torch.from_numpy(batch).float() / 255).numpy()
    np.testing.assert_array_equal(tagger.predict(batch), expected)


def test_legacy_non_zip_pt_loads(tmp_path, tiny_sd):
    tags = tiny.tiny_tag_names(32)
    path = tmp_path / "legacy.pth"
    torch.save({**tiny_sd, "tags": tags}, path, _use_new_zipfile_serialization=False)
    assert dd.detect(path)
    assert dd.load_deepdanbooru(path, SMALL).tags == tags


def test_safetensors_tags_from_label_file_and_tags_file_override(tmp_path, tiny_sd):
    path = tmp_path / "bare.safetensors"
    save_file(tiny_sd, str(path))  # no metadata
    with pytest.raises(ModelFileError, match="tags.txt"):
        dd.load_deepdanbooru(path, SMALL)
    names = [f"t{i}" for i in range(29)] + list(tiny.RATING_TAGS)
    (tmp_path / "tags.txt").write_text("\n".join(names) + "\n\n", encoding="utf-8")
    tagger = dd.load_deepdanbooru(path, SMALL)
    assert tagger.tags == names and tagger.categories[-1] == "rating"
    other = tmp_path / "other.txt"
    other.write_text("\n".join(f"o{i}" for i in range(32)), encoding="utf-8")
    opts = LoadOptions(device="cpu", tags_file=other, extra={"input_size": 128})
    assert dd.load_deepdanbooru(path, opts).tags[0] == "o0"


def _write_pt(path: Path, sd: dict, tags: list[str]) -> Path:
    torch.save({**sd, "tags": tags}, path)
    return path


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (lambda sd, tags: sd.pop("n_Conv_50.bias"), r"n_Conv_50\.bias.*missing.*\(8,\)"),
        (lambda sd, tags: sd.pop("n_Conv_0.weight"), r"n_Conv_0\.weight.*missing"),
        (
            lambda sd, tags: sd.__setitem__("n_Conv_98.weight", torch.zeros(8, 8, 1, 1)),
            r"n_Conv_98\.weight.*shape \(8, 8, 1, 1\), expected \(8, 8, 3, 3\)",
        ),
        (lambda sd, tags: sd.__setitem__("n_Conv_178.bias", torch.zeros(32)), r"unexpected key 'n_Conv_178\.bias'"),
        (lambda sd, tags: tags.pop(), r"31 names.*'n_Conv_178\.weight' has 32 output channels"),
        (lambda sd, tags: sd.__setitem__("n_Conv_7.bias", torch.zeros(16, dtype=torch.long)), r"n_Conv_7\.bias.*dtype"),
    ],
)
def test_bad_files_raise_model_file_error_naming_file_and_key(tmp_path, tiny_sd, mutate, pattern):
    sd, tags = dict(tiny_sd), tiny.tiny_tag_names(32)
    mutate(sd, tags)
    path = _write_pt(tmp_path / "bad.pt", sd, tags)
    with pytest.raises(ModelFileError, match=pattern) as info:
        dd.load_deepdanbooru(path, SMALL)
    assert "bad.pt" in str(info.value)


class _Payload:
    """Unpickling this object would create ``marker``: proof that code in a pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_with_code_is_refused_and_never_run(tmp_path, tiny_sd):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({**tiny_sd, "tags": tiny.tiny_tag_names(32), "extra": _Payload(marker)}, path)
    assert dd.detect(path)  # the key names are there; detect only peeks at bytes
    assert not marker.exists()
    with pytest.raises(ModelFileError, match="--allow-pickle") as info:
        dd.load_deepdanbooru(path, SMALL)
    assert "run code" in str(info.value)
    assert not marker.exists()
    # the payload is live: with --allow-pickle it runs (and the file is still rejected for its extra key)
    with pytest.raises(ModelFileError, match="'extra'"):
        dd.load_deepdanbooru(path, LoadOptions(device="cpu", allow_pickle=True, extra={"input_size": 128}))
    assert marker.exists()


def test_detect_claims_only_deepdanbooru(tmp_path):
    pt, _ = tiny.save_tiny_deepdanbooru(tmp_path / "dd" / dd.A1111_FILENAME)
    assert dd.detect(pt) and dd.detect(pt.parent)
    other = tmp_path / "other.safetensors"
    save_file({"conv.weight": torch.zeros(2, 3, 3, 3), "n_Conv_0.bias": torch.zeros(2)}, str(other))
    other_pt = tmp_path / "other.pt"
    torch.save({"layer.weight": torch.zeros(3)}, other_pt)
    text = tmp_path / "notes.pt"
    text.write_text("n_Conv_0.weight is not a model\n")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(bytes(range(256)) * 10)
    png = tmp_path / "img.png"
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "PNG")
    png.write_bytes(buf.getvalue())
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    for path in (other, other_pt, text, junk, png, empty, tmp_path / "missing.pt"):
        assert not dd.detect(path), path
    (tmp_path / "empty_dir").mkdir()
    assert not dd.detect(tmp_path / "empty_dir")
    with pytest.raises(ModelFileError, match="n_Conv_0.weight.*missing"):
        dd.load_deepdanbooru(other, SMALL)


def test_predict_validates_its_batch(tmp_path):
    pt, _ = tiny.save_tiny_deepdanbooru(tmp_path / "m.pt")
    tagger = dd.load_deepdanbooru(pt, LoadOptions(device="cpu", dd_preprocess="kdd", extra={"input_size": "128"}))
    assert tagger.preprocess(Image.new("RGBA", (50, 90))).shape == (128, 128, 3)
    with pytest.raises(TaggerError, match="uint8"):
        tagger.predict(np.zeros((1, 128, 128, 3), np.float32))
    with pytest.raises(TaggerError, match="multiples of 128"):
        tagger.predict(np.zeros((1, 100, 100, 3), np.uint8))
    assert tagger.predict(np.zeros((0, 128, 128, 3), np.uint8)).shape == (0, 32)
    frozen = np.zeros((1, 128, 128, 3), np.uint8)
    frozen.flags.writeable = False
    assert tagger.predict(frozen).shape == (1, 32)
    with pytest.raises(TaggerError, match="multiple of 128"):
        dd.load_deepdanbooru(pt, LoadOptions(device="cpu", extra={"input_size": 300}))


def test_safetensors_metadata_holds_tags_as_json(tmp_path):
    path, tags = tiny.save_tiny_deepdanbooru(tmp_path / "m.safetensors", num_tags=20)
    header = dd._safetensors_header(path)
    assert json.loads(header["__metadata__"]["tags"]) == tags and "n_Conv_178.weight" in header
