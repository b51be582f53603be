"""Typed values the tagger hands to the next stages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Category = Literal["general", "character", "rating", "copyright", "artist", "meta"]

#: WD14 ``selected_tags.csv`` category numbers (Danbooru's), as names.
WD14_CATEGORIES: dict[int, str] = {
    0: "general",
    1: "artist",
    3: "copyright",
    4: "character",
    5: "meta",
    9: "rating",
}


@dataclass(frozen=True)
class TagScore:
    """One tag the model predicted: Danbooru name (underscores), probability, category."""

    name: str
    score: float
    category: str = "general"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "score": round(float(self.score), 6), "category": self.category}


@dataclass
class TagResult:
    """What the tagger says about one image.

    ``tags`` are the tags that passed the thresholds, highest score first; ratings are never
    thresholded and live apart in ``rating`` (name without the ``rating:`` prefix -> probability).
    ``threshold`` is the threshold general tags were really held to and ``thresholds`` the one per
    category; ``threshold_mode`` says where the base came from (``adaptive``: the edge-density band,
    ``fixed``, ``mcut``), and ``band_threshold`` is the band's value when the band chose it.
    """

    path: str
    tags: list[TagScore]
    rating: dict[str, float] = field(default_factory=dict)
    threshold: float | None = None
    edge_density: float | None = None
    complexity: str | None = None
    thresholds: dict[str, float] = field(default_factory=dict)
    model: str | None = None
    error: str | None = None
    threshold_mode: str | None = None
    band_threshold: float | None = None
    #: every non-rating tag's probability down to ``TagOptions.prob_floor``, highest first (None
    #: unless asked for); not part of the tag command's JSON
    probs: list[TagScore] | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    def names(self, categories: tuple[str, ...] | None = None) -> list[str]:
        return [t.name for t in self.tags if categories is None or t.category in categories]

    def scores(self) -> dict[str, float]:
        return {t.name: t.score for t in self.tags}

    def top_rating(self) -> str | None:
        return max(self.rating, key=self.rating.__getitem__) if self.rating else None

    def to_json(self) -> dict[str, Any]:
        """The JSON contract of ``tagloop tag --format json`` (see DESIGN.md)."""
        out: dict[str, Any] = {
            "path": self.path,
            "threshold": None if self.threshold is None else round(float(self.threshold), 6),
            "edge_density": None if self.edge_density is None else round(float(self.edge_density), 6),
            "complexity": self.complexity,
            "tags": [t.to_json() for t in self.tags],
            "rating": {k: round(float(v), 6) for k, v in self.rating.items()},
        }
        if self.thresholds:
            out["thresholds"] = {k: round(float(v), 6) for k, v in self.thresholds.items()}
        if self.threshold_mode:
            out["threshold_mode"] = self.threshold_mode
        if self.band_threshold is not None:
            out["band_threshold"] = round(float(self.band_threshold), 6)
        if self.model:
            out["model"] = self.model
        if self.error:
            out["error"] = self.error
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TagResult:
        return cls(
            path=data.get("path", ""),
            tags=[TagScore(t["name"], float(t["score"]), t.get("category", "general")) for t in data.get("tags", [])],
            rating={k: float(v) for k, v in (data.get("rating") or {}).items()},
            threshold=data.get("threshold"),
            edge_density=data.get("edge_density"),
            complexity=data.get("complexity"),
            thresholds=dict(data.get("thresholds") or {}),
            model=data.get("model"),
            error=data.get("error"),
            threshold_mode=data.get("threshold_mode"),
            band_threshold=data.get("band_threshold"),
        )
