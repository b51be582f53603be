"""ControlNet: keep a source image's composition (its Canny edges, or a condition image given as is).

A :class:`ControlUnit` is one ControlNet as sd-webui-controlnet has it: a module (the preprocessor:
``canny``, or ``none`` to use the image as the condition as it is; ``image`` is an alias of ``none``),
the control image, the ControlNet model, its weight, the fraction of the steps it acts on
(``guidance_start`` .. ``guidance_end``) and how the control image is fitted to the output size
(``resize_mode``: ``crop`` = "Crop and Resize", ``fit`` = "Resize and Fill", ``stretch`` = "Just
Resize"). Several units run together as diffusers' multi-ControlNet.

ControlNet models are, in this order: a local diffusers folder (``config.json`` + weights), a single
file as sd-webui-controlnet users keep them (``models/ControlNet/control_v11p_sd15_canny.safetensors``,
original ``control_model.*`` layout or diffusers layout; ``.pth``/``.pt``/``.ckpt`` only with
``allow_pickle``), a name in the A1111 (``models/ControlNet``) or ComfyUI (``models/controlnet``)
folders or in ``controlnet_dirs`` (``NAME`` or ``NAME [HASH]`` as the extension lists it), or a hub id.
A single file's configuration is the base model's UNet (a ControlNet is a copy of its encoder, as
lllyasviel's files are), with the condition-embedding widths read from the file, so nothing is
downloaded. A ControlNet made for another family than the checkpoint is refused before anything loads.

SD3.x checkpoints take SD3 ControlNets (diffusers' ``SD3ControlNetModel``: a diffusers folder or a hub
id; diffusers cannot build one from a single file, so single files are refused for SD3), text-to-image
only (diffusers has no SD3 ControlNet image-to-image pipeline). The pipeline encodes the condition
image with the VAE itself.

The condition image (the Canny map, or the resized image) is computed at the output size, as
sd-webui-controlnet's "Pixel Perfect" does, and recorded in the infotext as the extension writes it:
``ControlNet 0: "Module: canny, Model: NAME [HASH], Weight: 1.0, Resize Mode: Crop and Resize, ..."``.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Literal

from ..errors import ModelFileError, ModelNotFoundError
from .settings import SettingsError

#: tagloop's resize names -> sd-webui-controlnet's (its infotext and API names).
RESIZE_MODES: dict[str, str] = {"crop": "Crop and Resize", "fit": "Resize and Fill", "stretch": "Just Resize"}
#: sd-webui-controlnet's API ``resize_mode`` numbers (``ResizeMode`` order) -> tagloop's names.
RESIZE_NUMBERS = {0: "stretch", 1: "crop", 2: "fit"}
#: Modules tagloop runs (no weights needed); ``image`` is tagloop's word for ``none``.
MODULES = ("canny", "none")
MODULE_ALIASES = {"image": "none", "None": "none", "": "none"}
#: Preprocessors that need their own annotator weights (refused with the weights they need).
ANNOTATOR_WEIGHTS = {
    "openpose": "the OpenPose body model (body_pose_model.pth)",
    "dw_openpose": "the DWPose ONNX models (yolox_l.onnx, dw-ll_ucoco_384.onnx)",
    "depth": "a depth estimator (MiDaS dpt_hybrid-midas-501f0c75.pt)",
    "depth_midas": "a depth estimator (MiDaS dpt_hybrid-midas-501f0c75.pt)",
    "depth_zoe": "the ZoeDepth model (ZoeD_M12_N.pt)",
    "lineart": "the line-art model (sk_model.pth)",
    "lineart_realistic": "the line-art model (sk_model.pth)",
    "lineart_anime": "the anime line-art model (netG.pth)",
    "softedge_hed": "the HED model (ControlNetHED.pth)",
    "softedge_pidinet": "the PiDiNet model (table5_pidinet.pth)",
    "normal_bae": "the normal-BAE model (scannet.pt)",
    "seg_ofade20k": "the OneFormer ADE20K model",
    "mlsd": "the M-LSD model (mlsd_large_512_fp32.pth)",
}
CONTROL_EXTS = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")


@dataclass
class ControlUnit:
    """One ControlNet of a request (see the module docstring).

    ``image``: a path, PIL image or image bytes (the control image; with ``module`` ``none`` it is the
    condition itself). ``model``: a ControlNet folder, file, name or hub id. ``low_threshold`` /
    ``high_threshold``: ``cv2.Canny``'s thresholds (sd-webui-controlnet's Threshold A / B).
    """

    module: str = "canny"
    image: Any = None
    model: str | Path = ""
    weight: float = 1.0
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    resize_mode: Literal["crop", "fit", "stretch"] = "crop"
    low_threshold: float = 100
    high_threshold: float = 200

    @property
    def active(self) -> bool:
        """Whether the unit acts on any step (an empty guidance window never does, and is skipped)."""
        return self.guidance_end > self.guidance_start


def normal_module(module: str) -> str:
    return MODULE_ALIASES.get(str(module).strip(), str(module).strip().lower())


def check_units(units: Iterable[ControlUnit], family: str | None = None) -> None:
    """Validate the control units' settings (no file is read); :class:`SettingsError` names the field."""
    units = list(units)
    if not isinstance(units, list):
        raise SettingsError("`control` must be a list of ControlUnit values.")
    for i, u in enumerate(units):
        if not isinstance(u, ControlUnit):
            raise SettingsError(f"`control` item {i} is a {type(u).__name__}, not a ControlUnit.")
        where = f"`control` unit {i}"
        module = normal_module(u.module)
        if module in ANNOTATOR_WEIGHTS:
            raise SettingsError(
                f"{where}: the {module} preprocessor needs {ANNOTATOR_WEIGHTS[module]}, which tagloop does not run; "
                "make the condition image elsewhere and give it with module `none`, or use module `canny`."
            )
        if module not in MODULES:
            raise SettingsError(f"{where}: `module` must be canny or none (the image as the condition), not {u.module!r}.")
        if u.image is None:
            raise SettingsError(f"{where} has no `image`; give the control image (the picture whose composition to keep).")
        if not str(u.model).strip():
            raise SettingsError(f"{where} has no ControlNet model; give a ControlNet file, folder, name or hub id.")
        if isinstance(u.weight, bool) or not isinstance(u.weight, (int, float)) or not 0.0 <= u.weight <= 2.0:
            raise SettingsError(f"{where}: `weight` must be between 0 and 2, not {u.weight!r}.")
        for name in ("guidance_start", "guidance_end"):
            v = getattr(u, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise SettingsError(f"{where}: `{name}` must be between 0 and 1, not {v!r}.")
        if u.guidance_start > u.guidance_end:
            raise SettingsError(
                f"{where}: `guidance_start` {u.guidance_start} is after `guidance_end` {u.guidance_end}; "
                "the start must not be later than the end."
            )
        if u.resize_mode not in RESIZE_MODES:
            raise SettingsError(f"{where}: `resize_mode` must be crop, fit or stretch, not {u.resize_mode!r}.")
        for name in ("low_threshold", "high_threshold"):
            v = getattr(u, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 255:
                raise SettingsError(f"{where}: `{name}` must be between 0 and 255, not {v!r}.")
        if module == "canny" and u.low_threshold > u.high_threshold:
            raise SettingsError(f"{where}: `low_threshold` {u.low_threshold} is above `high_threshold` {u.high_threshold}.")


# --- condition images ----------------------------------------------------------------------------


def load_control_image(source: Any, where: str = "`control` image"):
    """A control image (path, PIL image or bytes) as RGB."""
    import io

    from PIL import Image, UnidentifiedImageError

    if isinstance(source, Image.Image):
        return source.convert("RGB")
    try:
        data = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
        with Image.open(data) as im:
            im.load()
            return im.convert("RGB")
    except FileNotFoundError:
        raise SettingsError(f"{where} {source} does not exist; give an image file that exists.") from None
    except (UnidentifiedImageError, OSError, TypeError, ValueError) as e:
        shown = "the given bytes" if isinstance(source, (bytes, bytearray)) else str(source)
        raise SettingsError(f"{where} {shown} is not an image Pillow can read ({e}).") from None


def fit_image(image, width: int, height: int, mode: str):
    """``image`` at ``width x height``: crop (cover, centre crop), fit (inside, black borders) or stretch."""
    from PIL import Image

    w, h = image.size
    if mode == "stretch" or (w, h) == (width, height):
        return image.resize((width, height), Image.LANCZOS) if (w, h) != (width, height) else image.copy()
    scale = max(width / w, height / h) if mode == "crop" else min(width / w, height / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    resized = image.resize((nw, nh), Image.LANCZOS)
    if mode == "crop":
        left, top = (nw - width) // 2, (nh - height) // 2
        return resized.crop((left, top, left + width, top + height))
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    canvas.paste(resized, ((width - nw) // 2, (height - nh) // 2))
    return canvas


def canny_map(image, low: float = 100, high: float = 200):
    """``cv2.Canny`` of the grey image (as :func:`tagloop.tagger.threshold.edge_density`), as a white-on-black RGB image."""
    import cv2
    import numpy as np
    from PIL import Image

    arr = np.asarray(image.convert("RGB"), dtype=np.uint8)
    edges = cv2.Canny(cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY), int(low), int(high))
    return Image.fromarray(np.stack([edges] * 3, axis=-1))


def condition_image(unit: ControlUnit, width: int, height: int, image=None):
    """The condition image of ``unit`` at the output size (``image``: the control image, loaded already)."""
    src = image if image is not None else load_control_image(unit.image)
    fitted = fit_image(src, width, height, unit.resize_mode)
    if normal_module(unit.module) == "canny":
        return canny_map(fitted, unit.low_threshold, unit.high_threshold)
    return fitted


# --- ControlNet models ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ControlSource:
    """A resolved ControlNet: ``kind`` folder / file / hub; ``name`` as the infotext writes it."""

    kind: Literal["diffusers", "single_file", "hub"]
    name: str
    path: Path | None = None
    repo_id: str | None = None

    @property
    def ident(self) -> str:
        return str(self.path.resolve()) if self.path is not None else f"hub:{self.repo_id}"


_HASH_SUFFIX = re.compile(r"\s*\[[0-9a-fA-F]{6,64}\]\s*$")


def resolve_controlnet(spec: str | Path, dirs: Iterable[Path] = (), allow_pickle: bool = False) -> ControlSource:
    """A ControlNet ``model`` as a local folder or file, a name in ``dirs`` or a hub id (nothing loaded)."""
    from ..hub import looks_like_repo_id
    from .locate import find_named_file

    text = _HASH_SUFFIX.sub("", str(spec).strip())
    path = Path(text).expanduser()
    dirs = list(dirs)
    if not path.exists():
        found = find_named_file(text, dirs, exts=CONTROL_EXTS)
        if found is not None:
            path = found
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelFileError(
                f"the ControlNet folder {path} has no config.json; give a diffusers ControlNet folder or a ControlNet file."
            )
        return ControlSource("diffusers", path.name, path=path)
    if path.is_file():
        if path.suffix.lower() not in CONTROL_EXTS:
            raise ModelFileError(f"the ControlNet {path} has the unknown extension {path.suffix!r}; give a .safetensors file.")
        if path.suffix.lower() != ".safetensors" and not allow_pickle:
            raise ModelFileError(
                f"the ControlNet {path.name} is a pickle file ({path.suffix}), which can run code when loaded; convert it "
                "to .safetensors, or set `allow_pickle` if you trust its source."
            )
        return ControlSource("single_file", path.stem, path=path)
    if looks_like_repo_id(text) and not any(sep in text for sep in ("\\",)) and text.count("/") == 1:
        return ControlSource("hub", text.split("/")[-1], repo_id=text)
    looked = f" (looked in {', '.join(str(d) for d in dirs)})" if dirs else " (no ControlNet folder is set)"
    raise ModelNotFoundError(
        f"ControlNet {text!r} is not a file, a folder or a known name{looked}; set `controlnet_dirs` (or `a1111_dir`/"
        "`comfyui_dir`) to the folder that holds it, or give its path."
    )


def _file_tensors(path: Path, allow_pickle: bool) -> dict[str, dict]:
    from .recognise import checkpoint_tensors

    return checkpoint_tensors(path, allow_pickle=allow_pickle)


def _sd3_width(cfg: dict) -> int | None:
    heads, dim = cfg.get("num_attention_heads"), cfg.get("attention_head_dim")
    return heads * dim if isinstance(heads, int) and isinstance(dim, int) else None


def controlnet_traits(source: ControlSource, allow_pickle: bool = False) -> tuple[int | None, bool | str] | None:
    """``(width, kind)`` of a local ControlNet from its config or file header (None for hub ids).

    UNet ControlNets: ``(cross_attention_dim, sdxl)``; SD3 ControlNets: ``(hidden width, "sd3")``.
    """
    from ..weights import classify_keys

    if source.kind == "hub":
        return None
    if source.kind == "diffusers":
        try:
            cfg = json.loads((source.path / "config.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ModelFileError(f"the ControlNet folder {source.path} has an unreadable config.json ({e}).") from None
        if cfg.get("_class_name") == "SD3ControlNetModel":
            return _sd3_width(cfg), "sd3"
        if cfg.get("_class_name") not in (None, "ControlNetModel"):
            raise ModelFileError(
                f"the folder {source.path} holds a {cfg.get('_class_name')}, not a ControlNetModel or SD3ControlNetModel; "
                "give a ControlNet."
            )
        dim = cfg.get("cross_attention_dim")
        return (int(dim) if isinstance(dim, int) else None), cfg.get("addition_embed_type") == "text_time"
    tensors = _file_tensors(source.path, allow_pickle)
    if any(k.startswith("pos_embed_input.") for k in tensors) or (
        any(k.startswith("controlnet_blocks.") for k in tensors) and any(k.startswith("transformer_blocks.") for k in tensors)
    ):
        shape = (tensors.get("pos_embed_input.proj.weight") or {}).get("shape") or [0]
        return (int(shape[0]) or None), "sd3"  # an SD3 ControlNet (diffusers names)
    if classify_keys(tensors) != "controlnet":
        from ..weights import describe_kind

        raise ModelFileError(f"{source.path.name} is {describe_kind(classify_keys(tensors))}, not a ControlNet.")
    dim = None
    for k, v in tensors.items():
        if k.endswith("attn2.to_k.weight"):
            dim = int((v.get("shape") or [0])[-1]) or None
            break
    sdxl = any(".label_emb." in f".{k}" or k.startswith("add_embedding.") for k in tensors)
    return dim, sdxl


#: Cross-attention widths of the real families (a ControlNet of another width is another family).
_FAMILY_DIMS = {768: "sd1", 1024: "sd2", 2048: "sdxl"}


def base_context_dim(source) -> int | None:
    """The checkpoint's UNet cross-attention width (SD3: its transformer's hidden width), from its config
    or header (None when unknown)."""
    try:
        if getattr(source, "family", None) == "sd3":
            if source.kind == "diffusers" and source.path is not None:
                return _sd3_width(json.loads((source.path / "transformer" / "config.json").read_text(encoding="utf-8")))
            if source.kind == "single_file" and source.path is not None:
                from .recognise import checkpoint_tensors

                header = checkpoint_tensors(source.path, allow_pickle=True)
                shape = (header.get("model.diffusion_model.x_embedder.proj.weight") or {}).get("shape") or [0]
                return int(shape[0]) or None
            return None
        if source.kind == "diffusers" and source.path is not None:
            cfg = json.loads((source.path / "unet" / "config.json").read_text(encoding="utf-8"))
            return int(cfg["cross_attention_dim"])
        if source.kind == "single_file" and source.path is not None:
            from .recognise import checkpoint_tensors

            for k, v in checkpoint_tensors(source.path, allow_pickle=True).items():
                if k.startswith("model.diffusion_model.") and k.endswith("attn2.to_k.weight"):
                    return int(v["shape"][-1])
    except (OSError, KeyError, ValueError, TypeError, json.JSONDecodeError, ModelFileError):
        return None
    return None


def check_family(control: ControlSource, traits, source, base_dim: int | None) -> None:
    """A ControlNet of another family than the checkpoint ``source`` is one sentence (before any weights load)."""
    from .models import family_words

    if traits is None:
        return
    dim, sdxl = traits
    family = source.family
    what = f"{source.name} is an {family_words(family, getattr(source, 'variant', None))} checkpoint"
    if sdxl == "sd3" or family == "sd3":
        if sdxl != "sd3":
            guess = "SDXL" if sdxl else family_words(_FAMILY_DIMS[dim]) if dim in _FAMILY_DIMS else "SD1.x/SDXL"
            raise ModelFileError(
                f"the ControlNet {control.name} is made for {guess} models but {what}; give an SD3 ControlNet "
                "(an SD3ControlNetModel folder)."
            )
        if family != "sd3":
            raise ModelFileError(
                f"the ControlNet {control.name} is an SD3 ControlNet but {what}; give a ControlNet made for "
                f"{family_words(family)}."
            )
        if control.kind == "single_file":
            raise ModelFileError(
                f"the SD3 ControlNet {control.name} is a single file, which diffusers cannot load as an SD3 ControlNet; "
                "give its diffusers folder (config.json + weights) or hub id."
            )
        if dim is not None and base_dim is not None and dim != base_dim:
            raise ModelFileError(
                f"the SD3 ControlNet {control.name} has width {dim} but {what} with width {base_dim}; give a ControlNet "
                "made for this SD3 variant."
            )
        return
    if sdxl != (family == "sdxl") or (dim is not None and base_dim is not None and dim != base_dim):
        guess = "SDXL" if sdxl else family_words(_FAMILY_DIMS.get(dim, "sd1")) if dim in _FAMILY_DIMS else "another"
        raise ModelFileError(
            f"the ControlNet {control.name} is made for {guess} models (cross-attention width {dim}) but "
            f"{source.name} is an {family_words(family, getattr(source, 'variant', None))} checkpoint (width {base_dim}); "
            f"give a ControlNet made for {family_words(family)}."
        )


_MODELS: dict[tuple, Any] = {}
_MODELS_LOCK = threading.Lock()


def load_controlnet(control: ControlSource, unet, dtype, device: str, allow_pickle: bool = False):
    """The ``ControlNetModel`` of ``control`` (cached per process), on ``device`` in ``dtype``.

    A single file in the original layout (``control_model.*``) is converted with diffusers' own
    converter; its configuration is the base ``unet``'s (condition-embedding widths read from the file).
    With an SD3 transformer as ``unet`` it is an ``SD3ControlNetModel`` (a folder or hub id).
    """
    key = (control.ident, str(dtype), device)
    with _MODELS_LOCK:
        hit = _MODELS.get(key)
    if hit is not None:
        return hit
    if type(unet).__name__ == "SD3Transformer2DModel":
        return _load_sd3_controlnet(control, unet, dtype, device, key)
    from diffusers import ControlNetModel

    from .models import _dtype_kwarg

    try:
        if control.kind == "diffusers":
            model = ControlNetModel.from_pretrained(str(control.path), local_files_only=True, **{_dtype_kwarg(): dtype})
        elif control.kind == "hub":
            from ..hub import _offline

            model = ControlNetModel.from_pretrained(control.repo_id, local_files_only=_offline(), **{_dtype_kwarg(): dtype})
        else:
            model = _load_single_file(control, unet, allow_pickle)
            if model.dtype != dtype:
                model = model.to(dtype)
    except (ModelFileError, ModelNotFoundError):
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelFileError(f"loading the ControlNet {control.path or control.repo_id} failed: {first}") from None
    dim = getattr(model.config, "cross_attention_dim", None)
    if unet is not None and dim != unet.config.cross_attention_dim:
        raise ModelFileError(
            f"the ControlNet {control.name} has cross-attention width {dim} but the checkpoint's UNet has "
            f"{unet.config.cross_attention_dim}; give a ControlNet made for this model's family."
        )
    model = model.to(device).eval()
    with _MODELS_LOCK:
        _MODELS[key] = model
    return model


def _load_sd3_controlnet(control: ControlSource, transformer, dtype, device: str, key: tuple):
    from diffusers import SD3ControlNetModel

    from .models import _dtype_kwarg

    if control.kind == "single_file":
        raise ModelFileError(
            f"the ControlNet {control.name} is a single file, which diffusers cannot load as an SD3 ControlNet; "
            "give its diffusers folder (config.json + weights) or hub id."
        )
    try:
        if control.kind == "diffusers":
            model = SD3ControlNetModel.from_pretrained(str(control.path), local_files_only=True, **{_dtype_kwarg(): dtype})
        else:
            from ..hub import _offline

            model = SD3ControlNetModel.from_pretrained(control.repo_id, local_files_only=_offline(), **{_dtype_kwarg(): dtype})
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelFileError(f"loading the SD3 ControlNet {control.path or control.repo_id} failed: {first}") from None
    cfg, base = dict(model.config), dict(transformer.config)
    if model.config.get("_class_name", "SD3ControlNetModel") != "SD3ControlNetModel" or any(
        cfg.get(k) != base.get(k) for k in ("num_attention_heads", "attention_head_dim", "in_channels", "patch_size")
    ):
        raise ModelFileError(
            f"the ControlNet {control.name} (width {_sd3_width(cfg)}) does not fit the checkpoint's SD3 transformer "
            f"(width {_sd3_width(base)}); give an SD3 ControlNet made for this model."
        )
    model = model.to(device).eval()
    with _MODELS_LOCK:
        _MODELS[key] = model
    return model


def _read_state_dict(path: Path, allow_pickle: bool) -> dict:
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001 - a broken file is the same user problem whatever the library says
            raise ModelFileError(f"the ControlNet {path} is not a readable .safetensors file ({e}).") from None
    if not allow_pickle:
        raise ModelFileError(
            f"the ControlNet {path.name} is a pickle file, which can run code when loaded; convert it to .safetensors, "
            "or set `allow_pickle` if you trust its source."
        )
    import torch

    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise ModelFileError(f"the ControlNet {path} could not be read as a torch checkpoint ({e}).") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ModelFileError(f"the ControlNet {path} holds a {type(sd).__name__}, not a state dict of tensors.")
    return sd


def original_to_diffusers(sd: dict, config: dict) -> dict:
    """lllyasviel's layout (``control_model.input_blocks...``) -> diffusers ``ControlNetModel`` names.

    diffusers' converter reads the condition embedding's last conv as ``input_hint_block.14`` (the
    released files' four embedding widths); a file with fewer widths has it earlier and is renumbered.
    """
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    sd = {k[len("control_model.") :] if k.startswith("control_model.") else k: v for k, v in sd.items()}
    hint = sorted({int(k.split(".")[1]) for k in sd if k.startswith("input_hint_block.") and k.endswith(".weight")})
    if hint and hint[-1] != 14:
        last = hint[-1]
        sd = {
            (
                k.replace(f"input_hint_block.{last}.", "input_hint_block.14.", 1)
                if k.startswith(f"input_hint_block.{last}.")
                else k
            ): v
            for k, v in sd.items()
        }
    return convert_controlnet_checkpoint(sd, config)


def _embedding_widths(sd: dict) -> tuple[int, ...]:
    """The condition embedding's widths from its convs (diffusers or original names)."""
    convs = []
    if "controlnet_cond_embedding.conv_in.weight" in sd:
        convs.append(sd["controlnet_cond_embedding.conv_in.weight"].shape[0])
        i = 0
        while f"controlnet_cond_embedding.blocks.{i}.weight" in sd:
            convs.append(sd[f"controlnet_cond_embedding.blocks.{i}.weight"].shape[0])
            i += 1
    else:
        idx = sorted({int(k.split(".")[1]) for k in sd if k.startswith("input_hint_block.") and k.endswith(".weight")})
        convs = [sd[f"input_hint_block.{i}.weight"].shape[0] for i in idx[:-1]]
    # conv_in, then per width step (same width, next width stride 2): widths are every other output
    return tuple(convs[0::2]) if convs else (16, 32, 96, 256)


def _load_single_file(control: ControlSource, unet, allow_pickle: bool):
    from diffusers import ControlNetModel

    sd = _read_state_dict(control.path, allow_pickle)
    original = any(k.startswith("control_model.") or k.startswith("input_hint_block.") for k in sd)
    stripped = {k[len("control_model.") :]: v for k, v in sd.items() if k.startswith("control_model.")} if original else sd
    if unet is None:
        raise ModelFileError(f"the ControlNet file {control.path.name} needs the base model's UNet for its configuration.")
    widths = _embedding_widths(stripped)
    model = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=widths, load_weights_from_unet=False)
    config = dict(model.config)
    weights = original_to_diffusers(sd, config) if original else sd
    weights = {k: v for k, v in weights.items() if v is not None}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        what = f"lacks {missing[0]}" if missing else f"has {unexpected[0]} that the model does not"
        raise ModelFileError(
            f"the ControlNet file {control.path.name} does not fit the checkpoint's UNet: it {what} "
            f"({len(missing)} missing, {len(unexpected)} unexpected tensors); give a ControlNet made for this model, "
            "or its diffusers folder (config.json + weights)."
        )
    return model


def controlnet_cache_clear() -> None:
    with _MODELS_LOCK:
        _MODELS.clear()


# --- infotext ------------------------------------------------------------------------------------


def _fmt(v: float) -> str:
    return str(float(v))


def unit_infotext(unit: ControlUnit, model_name: str, model_hash: str | None, width: int, height: int) -> str:
    """One unit as sd-webui-controlnet writes it (``ControlNetUnit.serialize``: its infotext fields, in order).

    tagloop runs the preprocessor at the output size, which is the extension's Pixel Perfect; Processor
    Res is that size's shorter side. Only the Balanced control mode exists here.
    """
    module = normal_module(unit.module)
    model = f"{model_name} [{model_hash}]" if model_hash else model_name
    model = model.replace(",", "").replace(":", "")
    canny = module == "canny"
    fields = [
        ("Module", module),
        ("Model", model),
        ("Weight", _fmt(unit.weight)),
        ("Resize Mode", RESIZE_MODES[unit.resize_mode]),
        ("Processor Res", str(min(width, height)) if canny else "-1"),
        ("Threshold A", _fmt(unit.low_threshold) if canny else "-1"),
        ("Threshold B", _fmt(unit.high_threshold) if canny else "-1"),
        ("Guidance Start", _fmt(unit.guidance_start)),
        ("Guidance End", _fmt(unit.guidance_end)),
        ("Pixel Perfect", "True"),
        ("Control Mode", "Balanced"),
    ]
    return ", ".join(f"{k}: {v}" for k, v in fields)


_RESIZE_BY_NAME = {v.lower(): k for k, v in RESIZE_MODES.items()} | {
    "inner fit (scale to fit)": "crop",
    "scale to fit (inner fit)": "crop",
    "outer fit (shrink to fit)": "fit",
    "envelope (outer fit)": "fit",
}


def resize_mode_from(value: Any) -> str:
    """sd-webui-controlnet's resize mode (a name or its API number) -> ``crop``/``fit``/``stretch``."""
    if isinstance(value, bool):
        raise SettingsError(f"`resize_mode` {value!r} is not a resize mode.")
    if isinstance(value, int) and value in RESIZE_NUMBERS:
        return RESIZE_NUMBERS[value]
    text = str(value).strip()
    if text in RESIZE_MODES:
        return text
    if text.lower() in _RESIZE_BY_NAME:
        return _RESIZE_BY_NAME[text.lower()]
    raise SettingsError(
        f"`resize_mode` {value!r} is not one of crop, fit, stretch (Crop and Resize, Resize and Fill, Just Resize)."
    )


def units_from_infotext(params) -> list[ControlUnit]:
    """The ``ControlNet N`` entries of a parsed infotext as units (image left None: give it again)."""
    units = []
    for i in range(64):
        text = params.get(f"ControlNet {i}")
        if text is None:
            if i == 0:
                continue
            break
        fields: dict[str, str] = {}
        for item in str(text).split(","):
            if ":" in item:
                k, _, v = item.partition(":")
                fields[k.strip()] = v.strip()
        try:
            module = normal_module(fields.get("Module", "none"))
            a, b = float(fields.get("Threshold A", "-1")), float(fields.get("Threshold B", "-1"))
            units.append(
                ControlUnit(
                    module=module,
                    model=fields.get("Model", ""),
                    weight=float(fields.get("Weight", "1.0")),
                    guidance_start=float(fields.get("Guidance Start", "0.0")),
                    guidance_end=float(fields.get("Guidance End", "1.0")),
                    resize_mode=resize_mode_from(fields.get("Resize Mode", "Crop and Resize")),
                    low_threshold=a if a >= 0 else 100,
                    high_threshold=b if b >= 0 else 200,
                )
            )
        except ValueError:
            raise SettingsError(f"infotext value ControlNet {i}: {text!r} has a value that is not a number.") from None
        if fields.get("Control Mode", "Balanced") != "Balanced":
            raise SettingsError(
                f"infotext value ControlNet {i} uses the control mode {fields['Control Mode']!r}; tagloop runs Balanced only."
            )
    return units


def condition_path(image_path: Path, index: int) -> Path:
    """Where the condition image of unit ``index`` of an image is saved: ``00000-SEED-control0.png`` beside it."""
    return image_path.with_name(f"{image_path.stem}-control{index}.png")


def with_saved_conditions(units: list[ControlUnit], image_path: Path) -> list[ControlUnit]:
    """Units re-created from an image's infotext, given that image's saved condition images (module ``none``)."""
    out = []
    for i, u in enumerate(units):
        if u.image is None:
            saved = condition_path(image_path, i)
            if saved.is_file():
                u = replace(u, image=saved, module="none", resize_mode="stretch")
        out.append(u)
    return out
