"""WD14 and DeepDanbooru taggers exported to ONNX, run through onnxruntime(-gpu).

What this backend loads:

* **WD14** (SmilingWolf ``wd-v1-4-*`` v2/v2.1 and ``wd-*-v3``): ``model.onnx`` + ``selected_tags.csv``.
  Input NHWC ``(N, S, S, 3)`` float, **BGR 0..255, no normalisation** (the graph normalises
  itself); output **sigmoid probabilities** (the sigmoid is inside the graph), one per CSV row.
* **DeepDanbooru** exports: ``*.onnx`` + ``tags.txt`` (or a CSV). Input NHWC RGB float ``0..1``;
  output probabilities (the sigmoid is inside the network, as in KichangKim's model).

Input size, layout (NHWC/NCHW), names and a fixed batch dimension are read from the graph. A
fixed batch (old v2.0 exports are batch-1) sets :attr:`OnnxTagger.max_batch` and ``predict``
splits any batch into chunks of that size; a symbolic batch runs the whole batch in one call.

Execution providers are **checked, not assumed**: after the session is created,
``session.get_providers()`` is compared with what was asked for. When CUDA was asked for and is
not in use, one loud warning per model and process goes to stderr, with the reason we can tell
(CPU-only onnxruntime, both ``onnxruntime`` and ``onnxruntime-gpu`` installed, no GPU visible,
CUDA/cuDNN libraries missing); with ``require_gpu`` a :class:`GPUUnavailableError` is raised instead.
``dtype`` only matters for the TensorRT provider (``fp16``/``auto`` turn on its FP16 mode): the CUDA
and CPU providers run the graph in the precision it was exported in.
"""

from __future__ import annotations

import csv
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from . import preprocess as pp
from .base import (
    GPUUnavailableError,
    LoadOptions,
    ModelFileError,
    ModelNotFoundError,
    Tagger,
    TaggerError,
    register_backend,
)
from .labels import find_label_file, read_label_file

__all__ = [
    "OnnxGraphInfo",
    "OnnxTagger",
    "detect_onnx",
    "explain_cuda_fallback",
    "find_onnx_file",
    "load_onnx_tagger",
]

CUDA_EP = "CUDAExecutionProvider"
TRT_EP = "TensorrtExecutionProvider"
CPU_EP = "CPUExecutionProvider"

#: Input side used when a graph leaves height/width symbolic (the published models never do).
DEFAULT_SIZE = {"wd14": 448, "deepdanbooru": 512}

#: (model file, problem) pairs already reported in this process: one warning per model.
_WARNED: set[tuple[str, str]] = set()


# --------------------------------------------------------------------------------------------
# Files and detection
# --------------------------------------------------------------------------------------------


def find_onnx_file(path: Path) -> Path:
    """The ``.onnx`` file for ``path``: the file itself, ``model.onnx`` in a folder, or its only ``.onnx``."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() != ".onnx":
            raise ModelFileError(f"{path} is not an ONNX model (expected a .onnx file or a folder holding one).")
        return path
    if not path.is_dir():
        raise ModelNotFoundError(f"ONNX model {str(path)!r} does not exist.")
    found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".onnx")
    if (path / "model.onnx").is_file():
        others = [p.name for p in found if p.name != "model.onnx"]
        if others:
            from ..notices import notice

            notice(f"{path} holds several ONNX files; using model.onnx (a WD14 release's name), not {', '.join(others)}.")
        return path / "model.onnx"
    if len(found) == 1:
        return found[0]
    if not found:
        raise ModelNotFoundError(f"No .onnx file in {path}; a WD14 folder holds model.onnx and selected_tags.csv.")
    names = ", ".join(p.name for p in found)
    raise ModelFileError(f"{path} holds several ONNX models ({names}); pass the one to use as the model path.")


def detect_onnx(path: Path) -> bool:
    """A ``.onnx`` file, or a folder holding ``model.onnx`` or exactly one ``.onnx`` file."""
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() == ".onnx"
    if path.is_dir():
        if (path / "model.onnx").is_file():
            return True
        return sum(1 for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".onnx") == 1
    return False


def _csv_has_category(path: Path) -> bool:
    with open(path, newline="", encoding="utf-8-sig") as f:
        header = next(csv.reader(f), [])
    return "category" in [h.strip() for h in header]


# --------------------------------------------------------------------------------------------
# Providers
# --------------------------------------------------------------------------------------------


def _installed_ort_distributions() -> dict[str, str]:
    """Installed onnxruntime wheels (``onnxruntime``, ``onnxruntime-gpu``, ...) -> version."""
    from importlib import metadata

    found: dict[str, str] = {}
    for name in ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino", "ort-nightly-gpu"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _nvidia_driver_loadable() -> bool:
    import ctypes

    names = ["nvcuda.dll"] if os.name == "nt" else ["libcuda.so.1", "libcuda.so"]
    for name in names:
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def _torch_sees_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def explain_cuda_fallback() -> str:
    """Why onnxruntime is not running on CUDA here, in one clause with the fix."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    dists = _installed_ort_distributions()
    if CUDA_EP not in available:
        if "onnxruntime" in dists and "onnxruntime-gpu" in dists:
            return (
                f"both `onnxruntime` {dists['onnxruntime']} and `onnxruntime-gpu` {dists['onnxruntime-gpu']} are "
                "installed and overwrite each other's files, leaving a CPU-only build; run "
                "`pip uninstall -y onnxruntime onnxruntime-gpu` and then `pip install onnxruntime-gpu`"
            )
        which = ", ".join(f"{k} {v}" for k, v in dists.items()) or f"onnxruntime {ort.__version__}"
        return (
            f"the installed {which} has no CUDA provider (available: {', '.join(available)}); run "
            "`pip uninstall -y onnxruntime` and then `pip install onnxruntime-gpu`"
        )
    if not _nvidia_driver_loadable():
        return (
            "onnxruntime-gpu is installed but no NVIDIA driver or GPU is visible (libcuda cannot be loaded); "
            "run on a machine with a GPU, or check the driver and CUDA_VISIBLE_DEVICES"
        )
    if not _torch_sees_cuda():
        return (
            "onnxruntime-gpu is installed but no CUDA GPU is visible (torch.cuda.is_available() is False); "
            "check CUDA_VISIBLE_DEVICES and the driver"
        )
    return (
        f"the CUDA provider of onnxruntime-gpu {ort.__version__} failed to load: CUDA or cuDNN libraries are missing "
        "or do not match the versions it was built for (onnxruntime printed which above); install them, e.g. "
        "`pip install onnxruntime-gpu[cuda,cudnn]`, or install the onnxruntime-gpu build matching your CUDA"
    )


def _warn_once(key: tuple[str, str], message: str) -> None:
    if key in _WARNED:
        return
    _WARNED.add(key)
    bar = "!" * 78
    print(f"{bar}\nWARNING (tagloop): {message}\n{bar}", file=sys.stderr, flush=True)


def _resolve_onnx_device(device: str) -> tuple[bool, int]:
    """``(want_cuda, device_id)`` for ``device``; ``auto`` asks for CUDA when the driver shows a GPU."""
    if device == "cpu":
        return False, 0
    if device == "cuda":
        return True, 0
    if device.startswith("cuda:"):
        try:
            return True, int(device.split(":", 1)[1])
        except ValueError:
            raise TaggerError(f"`device` {device!r} is not cuda:<index>.") from None
    if device == "auto":
        from ..devices import guess_device

        return guess_device("auto") == "cuda", 0
    raise TaggerError(f"device must be auto, cpu or cuda, not {device!r}.")


def _default_trt_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tagloop" / "tensorrt"


def _requested_providers(
    want_cuda: bool, device_id: int, options: LoadOptions, onnx_file: Path
) -> list[tuple[str, dict[str, Any]]]:
    if not want_cuda:
        return [(CPU_EP, {})]
    providers: list[tuple[str, dict[str, Any]]] = []
    if options.tensorrt:
        cache = Path(options.extra.get("trt_cache_dir") or _default_trt_cache())
        cache.mkdir(parents=True, exist_ok=True)
        trt: dict[str, Any] = {
            "device_id": device_id,
            "trt_fp16_enable": options.dtype in ("auto", "fp16"),
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache),
        }
        trt.update(_trt_profile(onnx_file, int(options.extra.get("trt_max_batch", 64))))
        providers.append((TRT_EP, trt))
    providers.append((CUDA_EP, {"device_id": device_id}))
    providers.append((CPU_EP, {}))
    return providers


def _trt_profile(onnx_file: Path, max_batch: int) -> dict[str, str]:
    """TensorRT optimisation-profile shapes for a symbolic batch (engine built once for 1..max_batch)."""
    try:
        import onnx

        graph = onnx.load(str(onnx_file), load_external_data=False).graph
    except Exception:
        return {}
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        return {}
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != 4 or dims[0].dim_value > 0 or any(d.dim_value <= 0 for d in dims[1:]):
        return {}
    rest = "x".join(str(d.dim_value) for d in dims[1:])
    name = inputs[0].name
    opt = max(1, min(max_batch, 32))
    return {
        "trt_profile_min_shapes": f"{name}:1x{rest}",
        "trt_profile_opt_shapes": f"{name}:{opt}x{rest}",
        "trt_profile_max_shapes": f"{name}:{max_batch}x{rest}",
    }


def _session_options(options: LoadOptions):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    threads = options.extra.get("threads")
    if threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "")
        threads = int(env) if env.isdigit() else 0  # 0 = onnxruntime's default (physical cores)
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return so


def _load_error(onnx_file: Path, err: Exception) -> ModelFileError:
    import onnxruntime as ort

    msg = str(err).strip()
    first = msg.splitlines()[0] if msg else type(err).__name__
    # drop onnxruntime's C++ source location ("/onnxruntime_src/...cc:256 void f(...) ") from the reason
    first = re.sub(r"/onnxruntime_src/\S+:\d+ .*?\)\s+(?=[A-Z])", "", first)
    lowered = msg.lower()
    if "unsupported model ir version" in lowered:
        return ModelFileError(
            f"{onnx_file} was saved by a newer ONNX than onnxruntime {ort.__version__} reads; upgrade onnxruntime ({first})."
        )
    if "opset" in lowered and ("supported till" in lowered or "ai.onnx.ml" in lowered or "under development" in lowered):
        if _version_tuple(ort.__version__) < (1, 17):
            return ModelFileError(
                f"{onnx_file} needs onnxruntime >= 1.17 (WD v3 and v2.1 exports use the ai.onnx.ml opset 4), but "
                f"onnxruntime {ort.__version__} is installed; run `pip install -U onnxruntime-gpu` ({first})."
            )
        return ModelFileError(
            f"{onnx_file} uses an operator set newer than onnxruntime {ort.__version__} supports; upgrade onnxruntime ({first})."
        )
    if "protobuf" in lowered or "invalid_graph" in lowered or "no graph" in lowered or "model_path" in lowered:
        return ModelFileError(f"{onnx_file} is not a valid ONNX model ({first}); download it again.")
    return ModelFileError(f"onnxruntime cannot load {onnx_file}: {first}")


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split(".")[:3]:
        m = re.match(r"\d+", piece)
        parts.append(int(m.group()) if m else 0)
    return tuple(parts)


# --------------------------------------------------------------------------------------------
# Graph inspection
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OnnxGraphInfo:
    """What the graph says about its image input and its score output."""

    input_name: str
    input_type: str  # "tensor(float)" | "tensor(float16)"
    layout: str  # "NHWC" | "NCHW"
    height: int | None  # None when symbolic
    width: int | None
    batch: int | None  # fixed batch dimension, None when symbolic
    output_name: str
    output_width: int | None  # None when symbolic


def _dim(value: Any) -> int | None:
    return value if isinstance(value, int) and value > 0 else None


def inspect_graph(session: Any, onnx_file: Path, num_tags: int, label_file: Path) -> OnnxGraphInfo:
    """Read input/output names and shapes from a session; raise :class:`ModelFileError` for non-taggers."""
    inputs = session.get_inputs()
    if len(inputs) != 1:
        names = ", ".join(f"{i.name} {list(i.shape)}" for i in inputs)
        raise ModelFileError(f"{onnx_file} takes {len(inputs)} inputs ({names}); a tagger takes one image batch.")
    inp = inputs[0]
    shape = list(inp.shape)
    if inp.type not in ("tensor(float)", "tensor(float16)"):
        raise ModelFileError(f"{onnx_file}: input {inp.name!r} is {inp.type}, not a float image tensor.")
    if len(shape) != 4 or (shape[3] != 3 and shape[1] != 3):
        raise ModelFileError(
            f"{onnx_file}: input {inp.name!r} has shape {shape}, not an image batch (N, H, W, 3) or (N, 3, H, W)."
        )
    layout = "NHWC" if shape[3] == 3 else "NCHW"
    h, w = (shape[1], shape[2]) if layout == "NHWC" else (shape[2], shape[3])

    outputs = session.get_outputs()
    chosen = None
    widths = []
    for out in outputs:
        oshape = list(out.shape)
        if len(oshape) != 2:
            continue
        width = _dim(oshape[1])
        widths.append(f"{out.name} {oshape}")
        if width == num_tags:
            chosen = (out.name, width)
            break
        if width is None and chosen is None:
            chosen = (out.name, None)
    if chosen is None:
        shown = ", ".join(widths) or ", ".join(f"{o.name} {list(o.shape)}" for o in outputs)
        raise ModelFileError(
            f"{onnx_file} outputs {shown} but {label_file.name} lists {num_tags} tags; the graph and the label "
            "file do not belong together (pass the label file that came with this model via --tags-file)."
        )
    return OnnxGraphInfo(
        input_name=inp.name,
        input_type=inp.type,
        layout=layout,
        height=_dim(h),
        width=_dim(w),
        batch=_dim(shape[0]),
        output_name=chosen[0],
        output_width=chosen[1],
    )


# --------------------------------------------------------------------------------------------
# The tagger
# --------------------------------------------------------------------------------------------


class OnnxTagger(Tagger):
    """A WD14 or DeepDanbooru ONNX graph in an onnxruntime session.

    ``providers`` are the execution providers the session really uses (``session.get_providers()``),
    ``requested_providers`` those that were asked for.
    """

    backend = "onnx"

    def __init__(
        self,
        *,
        session: Any,
        info: OnnxGraphInfo,
        onnx_file: Path,
        label_file: Path,
        tags: list[str],
        categories: list[str],
        family: str,
        input_size: tuple[int, int],
        requested_providers: list[str],
        dd_preprocess: str = "a1111",
        device_id: int = 0,
        io_binding: bool = True,
        outputs: str = "probabilities",
    ) -> None:
        self.session = session
        self.info = info
        self.onnx_file = onnx_file
        self.label_file = label_file
        self.tags = tags
        self.categories = categories
        self.family = family
        self.input_size = input_size
        self.max_batch = info.batch
        self.source = str(onnx_file)
        self.requested_providers = requested_providers
        self.providers: list[str] = list(session.get_providers())
        on_gpu = self.providers[0] in (CUDA_EP, TRT_EP)
        self.device = f"cuda:{device_id}" if on_gpu else "cpu"
        self.dd_preprocess = dd_preprocess
        self._device_id = device_id
        self._io_binding = io_binding and self.providers[0] == CUDA_EP
        self._outputs = outputs
        self._checked_range = outputs == "logits"
        self._np_dtype = np.float16 if info.input_type == "tensor(float16)" else np.float32

    # -- per image ---------------------------------------------------------------------------
    def preprocess(self, image: Image.Image) -> np.ndarray:
        """WD14: white pad, bicubic, BGR uint8. DeepDanbooru: A1111 or KDD resize-and-fill, RGB uint8."""
        h, w = self.input_size
        if self.family == "wd14":
            return pp.wd14(image, h)
        if self.dd_preprocess == "kdd":
            return pp.deepdanbooru_kdd(image, w, h)
        return pp.deepdanbooru_a1111(image, w, h)

    # -- per batch ---------------------------------------------------------------------------
    def _to_input(self, batch: np.ndarray) -> np.ndarray:
        x = batch.astype(np.float32)
        if self.family != "wd14":
            x *= np.float32(1.0 / 255.0)
        if self.info.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x, dtype=self._np_dtype)

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self._io_binding:
            binding = self.session.io_binding()
            binding.bind_cpu_input(self.info.input_name, x)
            binding.bind_output(self.info.output_name, "cuda", self._device_id)
            self.session.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()[0]
        return self.session.run([self.info.output_name], {self.info.input_name: x})[0]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """``(N, H, W, 3)`` uint8 -> ``(N, len(tags))`` float32 probabilities, chunked by ``max_batch``."""
        h, w = self.input_size
        if batch.ndim != 4 or batch.shape[1:] != (h, w, 3):
            raise TaggerError(f"predict expects a (N, {h}, {w}, 3) uint8 batch, got {tuple(batch.shape)}.")
        if len(batch) == 0:
            return np.zeros((0, len(self.tags)), dtype=np.float32)
        x = self._to_input(batch)
        step = self.max_batch or len(x)
        parts = [self._run(x[i : i + step]) for i in range(0, len(x), step)]
        out = np.concatenate(parts, axis=0).astype(np.float32, copy=False)
        if out.shape != (len(batch), len(self.tags)):
            raise ModelFileError(
                f"{self.onnx_file} returned scores of shape {out.shape} for {len(batch)} images but "
                f"{self.label_file.name} lists {len(self.tags)} tags."
            )
        if self._outputs == "logits":
            out = (0.5 * (1.0 + np.tanh(0.5 * out))).astype(np.float32)  # sigmoid without overflow
        elif not self._checked_range:
            if out.min() < -1e-3 or out.max() > 1 + 1e-3:
                raise ModelFileError(
                    f"{self.onnx_file} outputs values outside 0..1 (min {out.min():.3g}, max {out.max():.3g}): "
                    "these are logits, not probabilities; load it with extra option outputs=logits."
                )
            self._checked_range = True
        return out

    def close(self) -> None:
        self.session = None

    def describe(self) -> str:
        h, w = self.input_size
        batch = f"batch {self.max_batch}" if self.max_batch else "dynamic batch"
        return (
            f"{self.family}/onnx {self.source} ({w}x{h} {self.info.layout}, {batch}) on {self.device} "
            f"[providers: {', '.join(self.providers)}]"
        )


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _decide_family(options: LoadOptions, label_file: Path, tags: Sequence[str], layout: str) -> str:
    forced = options.extra.get("family")
    if forced is not None:
        if forced not in ("wd14", "deepdanbooru"):
            raise TaggerError(f"`family` must be wd14 or deepdanbooru, not {forced!r}.")
        return forced
    if label_file.suffix.lower() == ".csv" and _csv_has_category(label_file) and layout == "NHWC":
        return "wd14"
    if label_file.suffix.lower() != ".csv":
        return "deepdanbooru"
    return "deepdanbooru" if any(t.startswith("rating:") for t in tags) else "wd14"


@register_backend("onnx", detect=detect_onnx)
def load_onnx_tagger(path: Path, options: LoadOptions | None = None) -> OnnxTagger:
    """Load a WD14 or DeepDanbooru ONNX model (file or folder) with its label file.

    ``options.extra`` keys: ``family`` (wd14 | deepdanbooru), ``input_size`` (side for graphs with a
    symbolic H/W), ``threads`` (intra-op threads), ``outputs`` (probabilities | logits),
    ``io_binding`` (bool, CUDA only), ``trt_cache_dir``, ``trt_max_batch``.
    """
    import onnxruntime as ort

    options = options or LoadOptions()
    onnx_file = find_onnx_file(Path(path))
    label_file = find_label_file(onnx_file, options.tags_file)
    if label_file is None or not Path(label_file).is_file():
        where = label_file if label_file is not None else f"selected_tags.csv or tags.txt beside {onnx_file.name}"
        raise ModelNotFoundError(f"No tag list for {onnx_file}: {where} not found; put it there or set `tags_file`.")
    label_file = Path(label_file)
    tags, categories = read_label_file(label_file)

    want_cuda, device_id = _resolve_onnx_device(options.device)
    requested = _requested_providers(want_cuda, device_id, options, onnx_file)
    if want_cuda:
        try:  # let onnxruntime find the CUDA/cuDNN libraries shipped as pip wheels (ORT >= 1.21)
            import torch  # noqa: F401  (loads torch's CUDA libraries first)

            if hasattr(ort, "preload_dlls"):
                ort.preload_dlls()
        except Exception:
            pass
    try:
        session = ort.InferenceSession(
            str(onnx_file),
            sess_options=_session_options(options),
            providers=[name for name, _ in requested],
            provider_options=[opts for _, opts in requested],
        )
    except Exception as e:  # onnxruntime raises its own pybind exception types
        raise _load_error(onnx_file, e) from None

    used = list(session.get_providers())
    asked = [name for name, _ in requested]
    if want_cuda and CUDA_EP not in used and TRT_EP not in used:
        reason = explain_cuda_fallback()
        message = f"{onnx_file} runs on the CPU, not on CUDA as asked: {reason}."
        if options.require_gpu:
            raise GPUUnavailableError(message + " (`require_gpu` is set, so tagloop stops here)")
        _warn_once((str(onnx_file.resolve()), "cuda"), message + " Tagging continues on the CPU, much slower.")
    elif options.tensorrt and want_cuda and TRT_EP not in used:
        _warn_once(
            (str(onnx_file.resolve()), "tensorrt"),
            f"{onnx_file} runs on {used[0]}, not TensorRT as asked (--tensorrt): the TensorRT libraries could not "
            "be loaded (install `tensorrt` matching onnxruntime-gpu, see onnxruntime's message above).",
        )

    info = inspect_graph(session, onnx_file, len(tags), label_file)
    family = _decide_family(options, label_file, tags, info.layout)
    side = int(options.extra.get("input_size") or DEFAULT_SIZE[family])
    height, width = info.height or side, info.width or side
    if family == "wd14" and height != width:
        raise ModelFileError(f"{onnx_file}: a WD14 graph takes square images, this one takes {width}x{height}.")
    outputs = str(options.extra.get("outputs", "probabilities"))
    if outputs not in ("probabilities", "logits"):
        raise TaggerError(f"`outputs` must be probabilities or logits, not {outputs!r}.")
    return OnnxTagger(
        session=session,
        info=info,
        onnx_file=onnx_file,
        label_file=label_file,
        tags=tags,
        categories=categories,
        family=family,
        input_size=(height, width),
        requested_providers=asked,
        dd_preprocess=options.dd_preprocess,
        device_id=device_id,
        io_binding=bool(options.extra.get("io_binding", True)),
        outputs=outputs,
    )


# --------------------------------------------------------------------------------------------
# Tiny models for tests and demos (random weights, real export path)
# --------------------------------------------------------------------------------------------

WD14_RATINGS = ["general", "sensitive", "questionable", "explicit"]


def write_selected_tags_csv(path: Path, general: Sequence[str], character: Sequence[str]) -> Path:
    """Write a WD14 ``selected_tags.csv``: 4 rating rows (category 9), general (0), character (4)."""
    rows = [(n, 9) for n in WD14_RATINGS] + [(n, 0) for n in general] + [(n, 4) for n in character]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["tag_id", "name", "category", "count"])
        for i, (name, cat) in enumerate(rows):
            writer.writerow([100000 + i, name, cat, 1000 * (len(rows) - i)])
    return Path(path)


def export_onnx(module: Any, example: Any, file: Path, input_name: str, output_names: list[str], dynamic_batch: bool) -> Path:
    """``torch.onnx.export`` through the TorchScript exporter (no ``onnxscript`` needed), opset 17."""
    import torch

    dynamic_axes = {name: {0: "batch"} for name in [input_name, *output_names]} if dynamic_batch else None
    kwargs: dict[str, Any] = dict(
        input_names=[input_name],
        output_names=output_names,
        dynamic_axes=dynamic_axes,
        opset_version=17,
        do_constant_folding=True,
    )
    module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, (example,), str(file), dynamo=False, **kwargs)
        except TypeError:  # torch without the `dynamo` switch: the legacy exporter is the default
            torch.onnx.export(module, (example,), str(file), **kwargs)
    return Path(file)
