"""The tagger stage: DeepDanbooru and WD14 backends, preprocessing, thresholds, the batched runner.

Each backend is one module that registers itself with :func:`tagloop.tagger.base.register_backend`
(the registry imports none of them); importing this package registers the built-in ones. A new
tagger family is one new module listed here. Backends import torch, onnxruntime or timm only when a
model loads.
"""

from . import deepdanbooru, onnx_tagger, wd_timm  # noqa: F401  (they register themselves)
