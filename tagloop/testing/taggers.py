"""Tiny taggers: DeepDanbooru (A1111's key layout, small widths), WD14 ONNX graphs, WD v3 timm folders."""

from ..tagger.deepdanbooru import make_random_state_dict, save_tiny_deepdanbooru, tiny_tag_names
from ..tagger.onnx_tagger import save_tiny_deepdanbooru_onnx, save_tiny_wd14_onnx
from ..tagger.wd_timm import save_tiny_wd_v3_timm

__all__ = [
    "make_random_state_dict",
    "save_tiny_deepdanbooru",
    "tiny_tag_names",
    "save_tiny_deepdanbooru_onnx",
    "save_tiny_wd14_onnx",
    "save_tiny_wd_v3_timm",
]
