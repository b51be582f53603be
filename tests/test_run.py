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
