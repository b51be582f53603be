"""A1111 "infotext": the ``parameters`` text stored in generated images, written and read back.

Layout (A1111 ``create_infotext``)::

    <prompt, may span lines>
    Negative prompt: <negative prompt>          (only when not empty)
    Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 2607380765, Size: 512x512, ...

The parameter line joins ``Key: value`` pairs with ``", "``; ``None`` values are skipped, a value
equal to its key is written as the key alone, and a value holding ``,``, ``:`` or a newline is
written as a JSON string (``json.dumps(ensure_ascii=False)``). PNGs keep the text in a
``parameters`` chunk (tEXt when Latin-1 encodable, else iTXt, as PIL's ``PngInfo.add_text``
decides); JPEG and WebP in the EXIF ``UserComment``.
"""

from __future__ import annotations

import io
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ..fileio import atomic_write_bytes

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

#: Parameter-line keys in the order A1111 1.10 writes them; unknown keys follow, then Version, User.
KNOWN_KEYS: tuple[str, ...] = (
    "Steps",
    "Sampler",
    "Schedule type",
    "CFG scale",
    "Image CFG scale",
    "Seed",
    "Face restoration",
    "Size",
    "Model hash",
    "Model",
    "FP8 weight",
    "Cache FP16 weight for LoRA",
    "VAE hash",
    "VAE",
    "Variation seed",
    "Variation seed strength",
    "Seed resize from",
    "Denoising strength",
    "Conditional mask weight",
    "Clip skip",
    "ENSD",
    "Token merging ratio",
    "Token merging ratio hr",
    "Init image hash",
    "RNG",
    "Tiling",
)
TRAILING_KEYS: tuple[str, ...] = ("Version", "User")

#: Values A1111's ``parse_generation_parameters`` fills in when a key is absent.
PARSE_DEFAULTS: dict[str, object] = {
    "Clip skip": "1",
    "Hires resize-1": 0,
    "Hires resize-2": 0,
    "Hires sampler": "Use same sampler",
    "Hires checkpoint": "Use same checkpoint",
    "Hires prompt": "",
    "Hires negative prompt": "",
    "Mask mode": "Inpaint masked",
    "Masked content": "original",
    "Inpaint area": "Whole picture",
    "Masked area padding": 32,
    "RNG": "GPU",
    "Schedule type": "Automatic",
    "Schedule max sigma": 0,
    "Schedule min sigma": 0,
    "Schedule rho": 0,
    "VAE Encoder": "Full",
    "VAE Decoder": "Full",
    "FP8 weight": "Disable",
}

#: One ``Key: value`` pair: key of word characters, spaces, ``-`` or ``/`` (2+ characters); value a
#: JSON-style quoted string or anything up to the next comma.
PARAM_PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
IMAGE_SIZE = re.compile(r"^(\d+)x(\d+)$")
NEGATIVE_PREFIX = "Negative prompt:"

#: PIL ``info`` keys that are image properties, not text metadata (A1111 drops the same ones).
_NOT_TEXT = {
    "jfif",
    "jfif_version",
    "jfif_unit",
    "jfif_density",
    "dpi",
    "exif",
    "loop",
    "background",
    "timestamp",
    "duration",
    "progressive",
    "progression",
    "icc_profile",
    "chromaticity",
    "photoshop",
    "transparency",
    "gamma",
    "srgb",
    "aspect",
    "xmp",
    "adobe",
    "adobe_transform",
}


def quote(value: object) -> str:
    """A value as A1111 writes it: JSON-quoted iff it holds ``,``, ``:`` or a newline."""
    text = str(value)
    if "," in text or ":" in text or "\n" in text:
        return json.dumps(text, ensure_ascii=False)
    return text


def unquote(text: str) -> str:
    """Undo :func:`quote`; a value that is not valid JSON is returned as it is."""
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, str) else text


def _clip_skip_written(value: object) -> bool:
    try:
        return int(str(value)) > 1
    except ValueError:
        return True


def order_parameters(params: Mapping[str, object]) -> dict[str, object]:
    """``params`` in A1111's key order, ``None`` values and ``Clip skip`` <= 1 dropped."""
    ordered: dict[str, object] = {}
    for key in KNOWN_KEYS:
        if key in params:
            ordered[key] = params[key]
    for key, value in params.items():
        if key not in ordered and key not in TRAILING_KEYS:
            ordered[key] = value
    for key in TRAILING_KEYS:
        if key in params:
            ordered[key] = params[key]
    result = {k: v for k, v in ordered.items() if v is not None}
    if "Clip skip" in result and not _clip_skip_written(result["Clip skip"]):
        del result["Clip skip"]
    return result


def build_infotext(prompt: str, negative_prompt: str, params: Mapping[str, object]) -> str:
    """The A1111 infotext for one image.

    ``params`` maps parameter-line keys ("Steps", "Sampler", "Schedule type", "CFG scale", "Seed",
    "Size", "Model hash", "Model", "Clip skip", "Lora hashes", "Version", ...) to values; known keys
    are put in A1111 1.10's order, others after them in insertion order, "Version" and "User" last.

    >>> build_infotext("1girl", "lowres", {"Seed": 1, "Steps": 20, "Sampler": "Euler a", "Size": "512x512"})
    '1girl\\nNegative prompt: lowres\\nSteps: 20, Sampler: Euler a, Seed: 1, Size: 512x512'
    """
    pairs = [key if key == value else f"{key}: {quote(value)}" for key, value in order_parameters(params).items()]
    negative = f"\n{NEGATIVE_PREFIX} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{', '.join(pairs)}".strip()


class InfotextParameters(dict):
    """The parsed infotext (a plain ``dict``); ``defaulted`` names the keys filled by defaults."""

    defaulted: frozenset[str] = frozenset()

    def stated(self) -> dict[str, Any]:
        """What the infotext itself says: every key but those A1111's defaults filled in."""
        return {k: v for k, v in self.items() if k not in self.defaulted}

    def defaults(self) -> dict[str, Any]:
        """The values A1111's reader fills in for keys the infotext does not have."""
        return {k: v for k, v in self.items() if k in self.defaulted}


def parse_infotext(text: str) -> InfotextParameters:
    """Parse an infotext as A1111's ``parse_generation_parameters`` does.

    The last line is the parameter line only if it holds at least three ``Key: value`` pairs;
    lines from one starting with ``Negative prompt:`` on form the negative prompt. Values stay
    strings (quoted ones JSON-decoded); ``WxH`` values become ``Key-1`` and ``Key-2``
    (``Size-1``, ``Size-2``). A1111's defaults fill absent keys (``Clip skip`` "1",
    ``Schedule type`` "Automatic", ``RNG`` "GPU", ...); their names are in ``.defaulted``.

    >>> p = parse_infotext("a cat\\nSteps: 20, Sampler: Euler a, Size: 512x768")
    >>> p["Prompt"], p["Steps"], p["Size-1"], p["Size-2"], p["Clip skip"]
    ('a cat', '20', '512', '768', '1')
    """
    lines = text.strip().split("\n")
    last = lines[-1]
    lines = lines[:-1]
    if len(PARAM_PAIR.findall(last)) < 3:
        lines.append(last)
        last = ""

    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    in_negative = False
    for line in lines:
        line = line.strip()
        if line.startswith(NEGATIVE_PREFIX):
            in_negative = True
            line = line[len(NEGATIVE_PREFIX) :].strip()
        (negative_lines if in_negative else prompt_lines).append(line)

    result = InfotextParameters()
    result["Prompt"] = "\n".join(prompt_lines)
    result["Negative prompt"] = "\n".join(negative_lines)
    for key, value in PARAM_PAIR.findall(last):
        if not value:
            continue  # A1111 fails on an empty value and skips the pair
        if value[0] == '"' and value[-1] == '"':
            value = unquote(value)
        size = IMAGE_SIZE.match(value)
        if size is not None:
            result[f"{key}-1"] = size.group(1)
            result[f"{key}-2"] = size.group(2)
        else:
            result[key] = value

    hypernet = result.get("Hypernet")
    if hypernet is not None:
        result["Prompt"] += f"<hypernet:{hypernet}:{result.get('Hypernet strength', '1.0')}>"

    defaulted = set()
    for key, value in PARSE_DEFAULTS.items():
        if key not in result:
            result[key] = value
            defaulted.add(key)
    if "Cache FP16 weight for LoRA" not in result and result["FP8 weight"] != "Disable":
        result["Cache FP16 weight for LoRA"] = False
        defaulted.add("Cache FP16 weight for LoRA")
    result.defaulted = frozenset(defaulted)
    return result


@dataclass
class ImageMetadata:
    """Generation metadata found in an image file."""

    #: A1111 infotext: PNG ``parameters`` (tEXt/iTXt), else EXIF UserComment, else GIF comment.
    infotext: str | None = None
    #: What ``infotext`` says, parsed as A1111 parses it (:func:`parse_infotext`: string values,
    #: ``Size`` as ``Size-1``/``Size-2``), without the defaults A1111 fills in (empty when there is none).
    parameters: dict[str, Any] = field(default_factory=dict)
    #: The values A1111's reader would fill in for keys ``infotext`` does not have (``RNG``: GPU,
    #: ``Schedule type``: Automatic, ...): what pasting it into the WebUI sets; not in the file.
    defaults: dict[str, Any] = field(default_factory=dict)
    #: ComfyUI API graph from the PNG ``prompt`` chunk.
    comfyui_prompt: dict | None = None
    #: ComfyUI editor graph from the PNG ``workflow`` chunk.
    comfyui_workflow: dict | None = None
    #: Other text chunks, as strings.
    items: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        """JSON text of :meth:`to_dict` (non-ASCII kept)."""
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=indent, default=str)


_EXIF_IFD = 0x8769
_USER_COMMENT = 0x9286


def decode_user_comment(data: bytes | str) -> str:
    """Decode an EXIF UserComment: 8-byte charset prefix (``UNICODE``, ``ASCII``, ``JIS``, none).

    ``UNICODE`` is UTF-16; piexif (and so A1111) writes big-endian, some tools little-endian: a
    BOM decides, else the byte order whose zero bytes look like ASCII text.
    """
    if isinstance(data, str):
        return data.rstrip("\0")
    prefix, body = data[:8], data[8:]
    if prefix == b"UNICODE\0":
        if body[:2] in (b"\xfe\xff", b"\xff\xfe"):
            return body.decode("utf-16", errors="replace").rstrip("\0")
        even_zeros = body[0::2].count(0)
        odd_zeros = body[1::2].count(0)
        encoding = "utf-16-le" if odd_zeros > even_zeros else "utf-16-be"
        return body.decode(encoding, errors="replace").rstrip("\0")
    if prefix == b"ASCII\0\0\0":
        return body.decode("ascii", errors="replace").rstrip("\0")
    if prefix == b"JIS\0\0\0\0\0":
        return body.decode("shift_jis", errors="replace").rstrip("\0")
    if prefix != b"\0" * 8:  # no charset prefix at all: plain UTF-8 text
        body = data
    return body.decode("utf-8", errors="ignore").rstrip("\0")


def _json_object(text: str | None) -> dict | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _open_image(source: str | Path | bytes | Image.Image) -> Image.Image:
    from PIL import Image

    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (bytes, bytearray)):
        return Image.open(io.BytesIO(bytes(source)))
    return Image.open(Path(source))


def read_image_metadata(source: str | Path | bytes | Image.Image) -> ImageMetadata:
    """Read the A1111 infotext and ComfyUI graphs of an image (PNG, JPEG, WebP, GIF, ...).

    Raises:
        OSError: the file is missing or not an image PIL can open (``PIL.UnidentifiedImageError``
            is an ``OSError``).
    """
    image = _open_image(source)
    try:
        return _read_metadata(image)
    finally:
        if image is not source:
            image.close()


def _read_metadata(image: Image.Image) -> ImageMetadata:
    info = dict(getattr(image, "info", {}) or {})
    text_chunks = getattr(image, "text", None)  # PNG: all tEXt/zTXt/iTXt chunks, loading if needed
    if isinstance(text_chunks, dict):
        info.update(text_chunks)

    infotext = info.pop("parameters", None)
    if infotext is not None and not isinstance(infotext, str):
        infotext = str(infotext)
    if infotext is None:
        comment = _exif_user_comment(image)
        if comment:
            infotext = comment
    if infotext is None and "comment" in info:
        comment = info.pop("comment")
        infotext = comment.decode("utf-8", errors="ignore") if isinstance(comment, bytes) else str(comment)

    comfy_prompt = _json_object(info.get("prompt") if isinstance(info.get("prompt"), str) else None)
    comfy_workflow = _json_object(info.get("workflow") if isinstance(info.get("workflow"), str) else None)
    items: dict[str, str] = {}
    for key, value in info.items():
        if key in _NOT_TEXT or key == "comment" and infotext is not None:
            continue
        if key == "prompt" and comfy_prompt is not None or key == "workflow" and comfy_workflow is not None:
            continue
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        if isinstance(value, str):
            items[key] = value
    parsed = parse_infotext(infotext) if infotext else InfotextParameters()
    return ImageMetadata(
        infotext=infotext,
        parameters=parsed.stated(),
        defaults=parsed.defaults(),
        comfyui_prompt=comfy_prompt,
        comfyui_workflow=comfy_workflow,
        items=items,
    )


def _exif_user_comment(image: Image.Image) -> str | None:
    try:
        exif = image.getexif()
    except Exception:  # a broken EXIF block is no metadata, not a failure
        return None
    if not exif:
        return None
    try:
        value = exif.get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    except Exception:
        value = None
    if value is None:
        value = exif.get(_USER_COMMENT)
    if value is None:
        return None
    text = decode_user_comment(value)
    return text or None


def encode_user_comment(text: str) -> bytes:
    """An EXIF UserComment as piexif's ``UserComment.dump(..., encoding="unicode")`` writes it."""
    return b"UNICODE\0" + text.encode("utf-16-be")


def _encoded(image: Image.Image, **save_args: Any) -> bytes:
    """The bytes ``image.save`` writes (the whole file is built in memory, then written atomically)."""
    buffer = io.BytesIO()
    image.save(buffer, **save_args)
    return buffer.getvalue()


def save_png(image: Image.Image, path: Path, infotext: str | None) -> Path:
    """Write ``image`` as a PNG with the A1111 ``parameters`` chunk, atomically.

    The chunk is tEXt when the text is Latin-1 encodable, else iTXt (PIL ``PngInfo.add_text``,
    which A1111 uses). The file appears complete or not at all.
    """
    return atomic_write_bytes(path, png_bytes(image, infotext))


def png_bytes(image: Image.Image, infotext: str | None) -> bytes:
    """The PNG file :func:`save_png` writes, in memory (the HTTP API answers with it)."""
    from PIL import PngImagePlugin

    pnginfo = PngImagePlugin.PngInfo()
    if infotext is not None:
        pnginfo.add_text("parameters", infotext)
    return _encoded(image, format="PNG", pnginfo=pnginfo)


def save_image(image: Image.Image, path: Path, infotext: str | None, *, quality: int = 95) -> Path:
    """Write PNG (``parameters`` chunk) or JPEG/WebP (EXIF UserComment), by suffix, atomically."""
    from PIL import Image

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".png":
        return save_png(image, path, infotext)
    formats = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
    if suffix not in formats:
        raise ValueError(f"Cannot write metadata into {path.name!r}; use a .png, .jpg or .webp name.")
    exif = Image.Exif()
    if infotext is not None:
        exif.get_ifd(_EXIF_IFD)[_USER_COMMENT] = encode_user_comment(infotext)
    rgb = image.convert("RGB") if formats[suffix] == "JPEG" and image.mode != "RGB" else image
    return atomic_write_bytes(path, _encoded(rgb, format=formats[suffix], exif=exif, quality=quality))


_LEADING_NUMBER = re.compile(r"^(\d+)")


def next_sequence_number(out_dir: Path) -> int:
    """The next A1111 image counter in ``out_dir``: one more than the largest leading number."""
    out_dir = Path(out_dir)
    highest = -1
    if out_dir.is_dir():
        for entry in os.listdir(out_dir):
            stem = os.path.splitext(entry)[0].split("-")[0]
            if stem.isdigit():
                highest = max(highest, int(stem))
    return highest + 1


def next_image_path(out_dir: Path, seed: int, ext: str = "png", *, start: int | None = None) -> Path:
    """A1111's file name for the next image: ``00000-SEED.png``, the counter continuing the folder's.

    The counter is one more than the largest number before the first ``-`` of any file name in
    ``out_dir`` (A1111 ``get_next_sequence_number``), or ``start``; a name already taken moves it on.
    """
    out_dir = Path(out_dir)
    ext = ext.lstrip(".")
    number = next_sequence_number(out_dir) if start is None else start
    while True:
        candidate = out_dir / f"{number:05}-{seed}.{ext}"
        if not candidate.exists():
            return candidate
        number += 1


def plan_image_paths(out_dir: Path, seeds: list[int] | tuple[int, ...], ext: str = "png") -> list[Path]:
    """The names a run writes its images (with these seeds, in this order) to: what
    :func:`next_image_path` gives each one in turn once the ones before it are written.

    Every name is free when planned, so a run writes no file over another; planning them before any
    work lets the caller compare them with the run's inputs (:func:`tagloop.fileio.check_outputs`).
    """
    out_dir = Path(out_dir)
    paths: list[Path] = []
    number: int | None = None
    for seed in seeds:
        path = next_image_path(out_dir, seed, ext, start=number)
        paths.append(path)
        match = _LEADING_NUMBER.match(path.name)
        number = (int(match.group(1)) if match else (number or 0)) + 1
    return paths
