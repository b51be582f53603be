"""The device-side host path (`preprocess_on="device"`): JPEGs decoded, measured and preprocessed in
torch on the tagger's device give exactly what the CPU path gives. Run here on CPU torch; on a GPU
machine the same code runs on CUDA (nvjpeg)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tagloop.pipeline.demo import draw_source_image
from tagloop.tagger.base import LoadOptions
from tagloop.tagger.resolve import get_tagger
from tagloop.tagger.run import TagOptions, host_device, tag_sources


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def _inputs(tmp_path):
    rng = np.random.default_rng(3)
    pic = draw_source_image(seed=5)
    rotated = Image.Exif()
    rotated[0x0112] = 6  # EXIF orientation: rotate 90 on display
    files = {
        "square.jpg": _jpeg(pic, quality=90),
        "wide.jpg": _jpeg(pic.resize((400, 150)), quality=80),
        "tall.jpg": _jpeg(pic.resize((120, 333)), quality=95, subsampling=0),
        "noise.jpg": _jpeg(Image.fromarray(rng.integers(0, 256, (97, 131, 3), dtype=np.uint8))),
        "grey.jpg": _jpeg(pic.convert("L")),
        "exif.jpg": _jpeg(pic.resize((200, 120)), exif=rotated),
        "cmyk.jpg": _jpeg(pic.convert("CMYK")),  # the torch decoder leaves CMYK to Pillow
        "plain.png": None,
        "broken.jpg": b"\xff\xd8\xff\xe0 not a whole jpeg",
    }
    paths = []
    for name, data in files.items():
        p = tmp_path / name
        if data is None:
            pic.save(p)
        else:
            p.write_bytes(data)
        paths.append(str(p))
    return paths


@pytest.fixture(scope="module")
def wd_timm(tmp_path_factory):
    from tagloop.testing import save_tiny_wd_v3_timm

    return save_tiny_wd_v3_timm(tmp_path_factory.mktemp("wdtimm") / "wd")


@pytest.mark.parametrize("which", ["dd", "wd_timm"])
def test_device_path_equals_the_cpu_path(which, tiny_dd_path, wd_timm, tmp_path):
    model = tiny_dd_path if which == "dd" else wd_timm
    tagger = get_tagger(str(model), LoadOptions(device="cpu"))
    assert tagger.backend == "torch"
    paths = _inputs(tmp_path)
    cpu = list(tag_sources(tagger, paths, TagOptions(workers=2, batch_size=4, preprocess_on="cpu")))
    dev = list(tag_sources(tagger, paths, TagOptions(workers=2, batch_size=4, preprocess_on="device")))
    assert host_device(tagger, TagOptions(preprocess_on="device")) == "cpu"
    assert host_device(tagger, TagOptions(preprocess_on="auto")) is None  # auto: the device path is for CUDA
    for a, b in zip(cpu, dev):
        assert a.error == b.error, a.path
        if a.error is None:
            assert a.edge_density == b.edge_density and a.complexity == b.complexity, a.path
            assert [(t.name, t.score) for t in a.tags] == [(t.name, t.score) for t in b.tags], a.path
    assert sum(r.error is not None for r in dev) == 1  # broken.jpg, with the CPU path's own message


def test_device_path_needs_a_torch_tagger(tiny_wd):
    from tagloop.errors import InputError

    onnx = get_tagger(str(tiny_wd), LoadOptions(device="cpu"))
    assert host_device(onnx, TagOptions(preprocess_on="auto")) is None
    with pytest.raises(InputError, match="preprocess_on device needs a torch tagger"):
        host_device(onnx, TagOptions(preprocess_on="device"))
