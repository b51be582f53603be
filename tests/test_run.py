"""The batched runner: order, batching, bad files, thresholds, ratings."""

import numpy as np
import pytest
from PIL import Image

from tagloop.tagger.base import Tagger
from tagloop.tagger.run import TagOptions, build_result, expand_paths, tag_sources
from tagloop.tagger.threshold import Band


class ChannelMeanTagger(Tagger):
    """A transparent model: each tag's probability is one channel's mean brightness (0..1)."""

    family = "test"
    backend = "numpy"

    def __init__(self):
        self.tags = ["red", "green", "blue", "hero_(character)", "rating:general", "rating:explicit"]
        self.categories = ["general", "general", "general", "character", "rating", "rating"]
        self.input_size = (8, 8)
        self.source = "channel-mean"
        self.calls: list[int] = []

    def preprocess(self, image):
        return np.asarray(image.convert("RGB").resize((8, 8)), dtype=np.uint8)

    def predict(self, batch):
        self.calls.append(len(batch))
        m = batch.reshape(len(batch), -1, 3).mean(axis=1) / 255.0
        return np.stack([m[:, 0], m[:, 1], m[:, 2], m[:, 0], 1 - m[:, 0], m[:, 0]], axis=1).astype(np.float32)


def colour(c, size=(16, 16)):
    return Image.new("RGB", size, c)


def test_batches_and_input_order(tmp_path):
    tagger = ChannelMeanTagger()
    paths = []
    for i in range(7):
        p = tmp_path / f"{i}.png"
        colour((i * 30, 0, 0)).save(p)
        paths.append(str(p))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    paths.insert(3, str(bad))
    results = list(tag_sources(tagger, paths, TagOptions(batch_size=3, threshold=0.0, workers=2)))
    assert [r.path for r in results] == paths
    assert results[3].error and "not an image" in results[3].error
    assert sum(tagger.calls) == 7 and max(tagger.calls) == 3
    reds = [r.scores()["red"] for r in results if r.ok]
    assert reds == sorted(reds)


def test_thresholds_categories_and_rating():
    tagger = ChannelMeanTagger()
    probs = np.array([0.6, 0.3, 0.5, 0.6, 0.4, 0.6], dtype=np.float32)
    r = build_result(tagger, "x", probs, density=0.2, options=TagOptions())
    # density 0.2 -> complex band 0.38: red, blue, hero pass; green does not
    assert r.complexity == "complex" and r.threshold == 0.38
    assert [t.name for t in r.tags] == ["red", "hero_(character)", "blue"]
    assert {t.category for t in r.tags} == {"general", "character"}
    assert r.rating == pytest.approx({"general": 0.4, "explicit": 0.6})
    r = build_result(tagger, "x", probs, density=0.0, options=TagOptions(character_threshold=0.7, general_threshold=0.55))
    assert [t.name for t in r.tags] == ["red"]
    r = build_result(tagger, "x", probs, density=None, options=TagOptions(threshold=0.0, max_tags=2))
    assert len(r.tags) == 2 and r.tags[0].score >= r.tags[1].score
    r = build_result(tagger, "x", probs, density=0.0, options=TagOptions(threshold=0.0))
    assert len(r.tags) == 4  # every non-rating tag at threshold 0


def test_custom_bands_and_mcut():
    tagger = ChannelMeanTagger()
    probs = np.array([0.9, 0.85, 0.1, 0.5, 0.5, 0.5], dtype=np.float32)
    opts = TagOptions(bands=(Band(0.5, 0.95, "flat"), Band(None, 0.2, "busy")))
    assert build_result(tagger, "x", probs, 0.1, opts).complexity == "flat"
    r = build_result(tagger, "x", probs, 0.1, TagOptions(mcut=True))
    # general scores 0.9 0.85 0.1 -> largest gap 0.85 -> 0.1, threshold 0.475
    assert r.thresholds["general"] == pytest.approx(0.475)
    assert [t.name for t in r.tags if t.category == "general"] == ["red", "green"]


def test_json_contract_fields():
    tagger = ChannelMeanTagger()
    (r,) = tag_sources(tagger, [colour((200, 10, 10))], TagOptions(threshold=0.1))
    data = r.to_json()
    assert set(data) >= {"path", "threshold", "edge_density", "complexity", "tags", "rating"}
    assert data["edge_density"] == 0.0 and data["complexity"] == "simple"
    scores = [t["score"] for t in data["tags"]]
    assert scores == sorted(scores, reverse=True)
    assert all(set(t) == {"name", "score", "category"} for t in data["tags"])


def test_expand_paths_case_insensitive(tmp_path):
    (tmp_path / "A.JPG").write_bytes(b"x")
    (tmp_path / "b.Png").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "c.webp").write_bytes(b"x")
    files, problems = expand_paths([tmp_path, tmp_path / "missing.png"])
    assert [f.name for f in files] == ["A.JPG", "b.Png"]
    assert problems and "missing.png" in problems[0][0]
    files, _ = expand_paths([tmp_path], recursive=True)
    assert {f.name for f in files} == {"A.JPG", "b.Png", "c.webp"}


def test_failed_images_do_not_pile_up_behind_a_batch():
    """A good image then thousands of bad ones: results come back as they go, not after the whole folder."""
    tagger = ChannelMeanTagger()
    consumed = []

    def sources():
        consumed.append(0)
        yield colour((200, 0, 0))
        for i in range(5000):
            consumed.append(i)
            yield b"not an image"

    it = tag_sources(tagger, sources(), TagOptions(batch_size=4, threshold=0.0, workers=1))
    first = next(it)
    assert first.ok and len(consumed) < 100
    second = next(it)
    assert second.error and len(consumed) < 100
    it.close()


class BrokenModelTagger(ChannelMeanTagger):
    """A model whose output does not fit its label table: a model problem, not an image problem."""

    def predict(self, batch):
        from tagloop.tagger.base import ModelFileError

        self.calls.append(len(batch))
        raise ModelFileError("model.onnx returned scores of shape (2, 5) but tags.txt lists 6 tags.")


def test_a_model_error_stops_the_run_instead_of_failing_every_image():
    from tagloop.tagger.base import ModelFileError

    tagger = BrokenModelTagger()
    with pytest.raises(ModelFileError, match="lists 6 tags"):
        list(tag_sources(tagger, [colour((i, 0, 0)) for i in range(6)], TagOptions(batch_size=3, workers=1)))
    assert tagger.calls == [3]  # no image-by-image retries of a broken model


class FlakyTagger(ChannelMeanTagger):
    """Fails on one poisoned image (a runtime error, e.g. out of memory), works on the others."""

    def predict(self, batch):
        if (batch[:, 0, 0, 1] == 77).any():
            raise RuntimeError("CUDA out of memory")
        return super().predict(batch)


def test_a_runtime_failure_in_a_batch_costs_only_its_image():
    tagger = FlakyTagger()
    imgs = [colour((10, 0, 0)), colour((20, 77, 0)), colour((30, 0, 0))]
    results = list(tag_sources(tagger, imgs, TagOptions(batch_size=3, threshold=0.0, workers=1)))
    assert [r.ok for r in results] == [True, False, True]
    assert "out of memory" in results[1].error


def test_expand_paths_names_a_folder_without_images(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.png").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    files, problems = expand_paths([tmp_path])
    assert files == [] and len(problems) == 1
    assert "no images" in problems[0][1] and "--recursive" in problems[0][1]
    files, problems = expand_paths([tmp_path], recursive=True)
    assert [f.name for f in files] == ["a.png"] and problems == []
