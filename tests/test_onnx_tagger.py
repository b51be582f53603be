"""ONNX backend: WD14 and DeepDanbooru graphs exported from tiny torch nets, loaded like users' files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper
from PIL import Image

from tagloop.tagger import onnx_tagger as ot
from tagloop.tagger import preprocess as pp
from tagloop.tagger.base import GPUUnavailableError, LoadOptions, ModelFileError
from tagloop.testing import taggers as tiny

CPU = LoadOptions(device="cpu")


class SessionSpy:
    """Wraps an onnxruntime session and records the batch size of every ``run``."""

    def __init__(self, session):
        self._session = session
        self.batches: list[int] = []

    def run(self, names, feeds):
        self.batches.append(next(iter(feeds.values())).shape[0])
        return self._session.run(names, feeds)

    def __getattr__(self, name):
        return getattr(self._session, name)


def images() -> list[Image.Image]:
    rng = np.random.RandomState(0)
    square = Image.fromarray((rng.rand(64, 64, 3) * 255).astype(np.uint8), "RGB")
    wide = Image.fromarray((rng.rand(40, 90, 3) * 255).astype(np.uint8), "RGB")
    rgba = np.zeros((70, 50, 4), np.uint8)
    rgba[..., :3] = (rng.rand(70, 50, 3) * 255).astype(np.uint8)
    rgba[..., 3] = np.linspace(0, 255, 50, dtype=np.uint8)[None, :]
    return [square, wide, Image.fromarray(rgba, "RGBA")]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("onnx_models")
    return {
        "wd": tiny.save_tiny_wd14_onnx(root / "wd", num_general=12, num_character=4, seed=3),
        "wd_b1": tiny.save_tiny_wd14_onnx(root / "wd_b1", num_general=12, num_character=4, seed=3, dynamic_batch=False),
        "wd_emb": tiny.save_tiny_wd14_onnx(root / "wd_emb", num_general=12, num_character=4, seed=3, with_embedding=True),
        "dd": tiny.save_tiny_deepdanbooru_onnx(root / "dd", num_tags=10, seed=1),
    }


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# -- WD14 ----------------------------------------------------------------------------------------


def test_wd14_scores_categories_and_reference_scaling(models):
    tagger = ot.load_onnx_tagger(models["wd"], CPU)
    assert tagger.family == "wd14" and tagger.backend == "onnx"
    assert tagger.input_size == (64, 64) and tagger.max_batch is None
    assert tagger.tags[:4] == ["general", "sensitive", "questionable", "explicit"]
    assert tagger.categories == ["rating"] * 4 + ["general"] * 12 + ["character"] * 4
    assert tagger.tags[4] == "1girl" and tagger.tags[16] == "hatsune_miku"

    imgs = images()
    batch = np.stack([tagger.preprocess(im) for im in imgs])
    assert batch.dtype == np.uint8 and batch.shape == (3, 64, 64, 3)
    for im, row in zip(imgs, batch):  # BGR, white pad, bicubic: the reference preprocessing
        np.testing.assert_array_equal(row, pp.wd14(im, 64))
    probs = tagger.predict(batch)
    assert probs.dtype == np.float32 and probs.shape == (3, 20)
    assert probs.min() >= 0.0 and probs.max() <= 1.0
    assert probs.std() > 0.05 and np.abs(probs[0] - probs[1]).max() > 0.01  # not degenerate

    # WD graphs take raw 0..255 floats: feeding the session by hand gives the same numbers,
    # while a /255 input (the DeepDanbooru scaling) would not.
    raw = tagger.session.run(None, {"input": batch.astype(np.float32)})[0]
    np.testing.assert_allclose(probs, raw, atol=1e-6)
    scaled = tagger.session.run(None, {"input": batch.astype(np.float32) / 255})[0]
    assert np.abs(scaled - probs).max() > 1e-2
    assert "CPUExecutionProvider" in tagger.describe() and tagger.providers == ["CPUExecutionProvider"]


def test_dynamic_batch_runs_once_and_fixed_batch_is_split(models):
    dynamic = ot.load_onnx_tagger(models["wd"], CPU)
    fixed = ot.load_onnx_tagger(models["wd_b1"], CPU)
    assert dynamic.max_batch is None
    assert fixed.max_batch == 1
    assert fixed.info.input_name == "input_1:0" and fixed.info.output_name == "predictions_sigmoid"
    dynamic.session = SessionSpy(dynamic.session)
    fixed.session = SessionSpy(fixed.session)
    batch = np.stack([dynamic.preprocess(im) for im in images()])
    p_dynamic = dynamic.predict(batch)
    p_fixed = fixed.predict(batch)
    assert dynamic.session.batches == [3]
    assert fixed.session.batches == [1, 1, 1]
    assert p_fixed.shape == (3, 20)
    np.testing.assert_allclose(p_fixed, p_dynamic, atol=1e-6)  # same seed -> same weights
    assert "batch 1" in fixed.describe() and "dynamic batch" in dynamic.describe()


def test_output_chosen_by_label_count_when_graph_has_an_embedding(models):
    tagger = ot.load_onnx_tagger(models["wd_emb"], CPU)
    assert tagger.info.output_name == "output" and tagger.info.output_width == 20
    plain = ot.load_onnx_tagger(models["wd"], CPU)
    batch = np.stack([tagger.preprocess(im) for im in images()])
    np.testing.assert_allclose(tagger.predict(batch), plain.predict(batch), atol=1e-6)


def test_detect(models, tmp_path):
    assert ot.detect_onnx(models["wd"])
    assert ot.detect_onnx(models["wd"] / "model.onnx")
    assert ot.detect_onnx(models["dd"])  # exactly one .onnx, not named model.onnx
    assert not ot.detect_onnx(models["wd"] / "selected_tags.csv")
    two = tmp_path / "two"
    two.mkdir()
    (two / "a.onnx").write_bytes(b"x")
    (two / "b.onnx").write_bytes(b"x")
    assert not ot.detect_onnx(two)
    with pytest.raises(ModelFileError, match="several ONNX models"):
        ot.find_onnx_file(two)


# -- providers -----------------------------------------------------------------------------------


def test_cuda_request_on_a_gpu_less_machine_warns_once(models, tmp_path, capsys):
    folder = _copy(models["wd"], tmp_path / "wd_cuda")
    first = ot.load_onnx_tagger(folder, LoadOptions(device="cuda"))
    second = ot.load_onnx_tagger(folder, LoadOptions(device="cuda"))
    err = capsys.readouterr().err
    assert err.count("WARNING (tagloop)") == 1
    assert "CPU" in err and "model.onnx" in err
    assert first.providers == ["CPUExecutionProvider"] == second.providers
    assert first.requested_providers[0] == "CUDAExecutionProvider"
    assert first.device == "cpu" and "CPUExecutionProvider" in first.describe()
    assert first.predict(np.stack([first.preprocess(im) for im in images()])).shape == (3, 20)


def test_require_gpu_raises_instead_of_falling_back(models, tmp_path):
    folder = _copy(models["wd"], tmp_path / "wd_req")
    with pytest.raises(GPUUnavailableError, match="CPU"):
        ot.load_onnx_tagger(folder, LoadOptions(device="cuda", require_gpu=True))


def test_cpu_request_prints_no_warning(models, tmp_path, capsys):
    folder = _copy(models["wd"], tmp_path / "wd_cpu")
    tagger = ot.load_onnx_tagger(folder, CPU)
    assert tagger.requested_providers == ["CPUExecutionProvider"]
    assert "WARNING" not in capsys.readouterr().err


def test_fallback_reasons(monkeypatch):
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    monkeypatch.setattr(ot, "_installed_ort_distributions", lambda: {"onnxruntime": "1.20.1", "onnxruntime-gpu": "1.20.1"})
    both = ot.explain_cuda_fallback()
    assert "both" in both and "pip uninstall -y onnxruntime onnxruntime-gpu" in both and "pip install onnxruntime-gpu" in both
    monkeypatch.setattr(ot, "_installed_ort_distributions", lambda: {"onnxruntime": "1.20.1"})
    assert "no CUDA provider" in ot.explain_cuda_fallback()
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ot, "_nvidia_driver_loadable", lambda: True)
    monkeypatch.setattr(ot, "_torch_sees_cuda", lambda: True)
    assert "cuDNN" in ot.explain_cuda_fallback()


# -- DeepDanbooru --------------------------------------------------------------------------------


def test_deepdanbooru_onnx_labels_and_rgb_unit_input(models):
    tagger = ot.load_onnx_tagger(models["dd"], CPU)
    assert tagger.family == "deepdanbooru"
    assert tagger.label_file.name == "tags.txt" and tagger.onnx_file.name == "deepdanbooru.onnx"
    assert tagger.tags[-3:] == ["rating:safe", "rating:questionable", "rating:explicit"]
    assert tagger.categories[-3:] == ["rating"] * 3 and set(tagger.categories[:-3]) == {"general"}
    imgs = images()
    batch = np.stack([tagger.preprocess(im) for im in imgs])
    for im, row in zip(imgs, batch):  # RGB, A1111 resize-and-fill
        np.testing.assert_array_equal(row, pp.deepdanbooru_a1111(im, 64, 64))
    probs = tagger.predict(batch)
    assert probs.shape == (3, 13) and 0.0 <= probs.min() and probs.max() <= 1.0
    ref = tagger.session.run(None, {"input_1": batch.astype(np.float32) / 255.0})[0]
    np.testing.assert_allclose(probs, ref, atol=1e-6)
    raw = tagger.session.run(None, {"input_1": batch.astype(np.float32)})[0]
    assert np.abs(raw - probs).max() > 1e-2

    kdd = ot.load_onnx_tagger(models["dd"], LoadOptions(device="cpu", dd_preprocess="kdd"))
    np.testing.assert_array_equal(kdd.preprocess(imgs[1]), pp.deepdanbooru_kdd(imgs[1], 64, 64))


def test_family_override(models):
    tagger = ot.load_onnx_tagger(models["wd"], LoadOptions(device="cpu", extra={"family": "deepdanbooru"}))
    assert tagger.family == "deepdanbooru"


# -- bad files -----------------------------------------------------------------------------------


def test_garbage_onnx_is_a_model_file_error(models, tmp_path):
    folder = tmp_path / "garbage"
    folder.mkdir()
    shutil.copy(models["wd"] / "selected_tags.csv", folder)
    (folder / "model.onnx").write_bytes(b"\x00not a protobuf\xff" * 16)
    with pytest.raises(ModelFileError, match="not a valid ONNX model"):
        ot.load_onnx_tagger(folder, CPU)


def test_label_count_mismatch_names_both_counts(models, tmp_path):
    folder = _copy(models["wd"], tmp_path / "mismatch")
    lines = (folder / "selected_tags.csv").read_text(encoding="utf-8").splitlines()
    (folder / "selected_tags.csv").write_text("\n".join(lines[:-2]) + "\n", encoding="utf-8")
    with pytest.raises(ModelFileError) as info:
        ot.load_onnx_tagger(folder, CPU)
    message = str(info.value)
    assert "20" in message and "18 tags" in message and "selected_tags.csv" in message


def _save_graph(folder: Path, nodes, inputs, outputs, opsets=None, initializers=()) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=opsets or [helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(folder / "model.onnx"))
    return folder


def test_non_image_input_is_rejected(models, tmp_path):
    folder = _copy(models["wd"], tmp_path / "vector")
    (folder / "model.onnx").unlink()
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 20])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 20])
    _save_graph(folder, [helper.make_node("Sigmoid", ["x"], ["y"])], [x], [y])
    with pytest.raises(ModelFileError, match="not an image batch"):
        ot.load_onnx_tagger(folder, CPU)


def test_old_onnxruntime_message_names_1_17(models, tmp_path, monkeypatch):
    folder = _copy(models["wd"], tmp_path / "newopset")
    (folder / "model.onnx").unlink()
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64, 64, 3])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 20])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 99)]
    _save_graph(folder, [helper.make_node("Identity", ["input"], ["output"])], [x], [y], opsets)
    monkeypatch.setattr(onnxruntime, "__version__", "1.16.3")
    with pytest.raises(ModelFileError, match=r"onnxruntime >= 1\.17"):
        ot.load_onnx_tagger(folder, CPU)


def test_logit_outputs_are_caught_and_can_be_declared(models, tmp_path):
    folder = _copy(models["wd"], tmp_path / "logits")
    (folder / "model.onnx").unlink()
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64, 64, 3])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 20])
    consts = [
        helper.make_tensor("shape", TensorProto.INT64, [2], [0, -1]),
        helper.make_tensor("starts", TensorProto.INT64, [1], [0]),
        helper.make_tensor("ends", TensorProto.INT64, [1], [20]),
        helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
        helper.make_tensor("offset", TensorProto.FLOAT, [], [128.0]),
    ]
    nodes = [
        helper.make_node("Reshape", ["input", "shape"], ["flat"]),
        helper.make_node("Slice", ["flat", "starts", "ends", "axes"], ["first"]),
        helper.make_node("Sub", ["first", "offset"], ["output"]),
    ]
    _save_graph(folder, nodes, [x], [y], initializers=consts)
    batch = np.stack([pp.wd14(im, 64) for im in images()])
    with pytest.raises(ModelFileError, match="logits"):
        ot.load_onnx_tagger(folder, CPU).predict(batch)
    tagger = ot.load_onnx_tagger(folder, LoadOptions(device="cpu", extra={"outputs": "logits"}))
    logits = batch.reshape(3, -1)[:, :20].astype(np.float64) - 128
    expected = 1 / (1 + np.exp(-np.clip(logits, -60, 60)))
    np.testing.assert_allclose(tagger.predict(batch), expected, atol=1e-6)


def test_label_csv_not_utf8_or_with_bom(tmp_path):
    from tagloop.tagger.base import ModelFileError
    from tagloop.tagger.labels import read_selected_tags_csv

    bad = tmp_path / "selected_tags.csv"
    bad.write_bytes(b"tag_id,name,category,count\n1,caf\xe9,0,5\n")
    with pytest.raises(ModelFileError, match="selected_tags.csv.*UTF-8"):
        read_selected_tags_csv(bad)
    bom = tmp_path / "bom.csv"
    bom.write_bytes("name,category\n1girl,0\nrating:safe,9\n".encode("utf-8-sig"))
    assert read_selected_tags_csv(bom) == (["1girl", "rating:safe"], ["general", "rating"])
    from tagloop.tagger.labels import read_tags_txt

    txt = tmp_path / "tags.txt"
    txt.write_bytes("1girl\nrating:safe\n".encode("utf-8-sig"))
    assert read_tags_txt(txt)[0] == ["1girl", "rating:safe"]
