"""A1111 infotext: build, quote, parse back, PNG/JPEG/WebP storage, ComfyUI chunks, hashes, file names, `tagloop info`."""

from __future__ import annotations

import hashlib
import json
import os
import random
import struct
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image, PngImagePlugin

from tagloop.a1111 import hashes
from tagloop.a1111.infotext import (
    ImageMetadata,
    build_infotext,
    decode_user_comment,
    next_image_path,
    parse_infotext,
    read_image_metadata,
    save_image,
    save_png,
)
from tagloop.cli.info import info_command

SEED_LINE = (
    "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 2607380765, Size: 512x512, "
    "Model hash: b6928134bb, Model: 25D_mixProV3_v3, Clip skip: 2"
)


# -- an independent reader written from the format description (FORMATS 4 / 4.1) --------------


def reference_parse(text: str) -> dict[str, str]:
    """Character-level reader of the parameter line; no regular expressions shared with the code."""
    lines = text.strip().split("\n")
    params_line = lines[-1]
    pairs = _reference_pairs(params_line)
    if len(pairs) < 3:
        pairs, body = [], lines
    else:
        body = lines[:-1]
    prompt, negative, in_negative = [], [], False
    for line in body:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:") :].strip()
        (negative if in_negative else prompt).append(line)
    out = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in pairs:
        if value.startswith('"'):
            value = json.loads(value)
        parts = value.split("x")
        if len(parts) == 2 and all(p.isdigit() and p for p in parts):
            out[key + "-1"], out[key + "-2"] = parts
        else:
            out[key] = value
    return out


def _reference_pairs(line: str) -> list[tuple[str, str]]:
    pairs, i = [], 0
    while i < len(line):
        colon = line.find(":", i)
        if colon < 0:
            break
        key = line[i:colon].strip()
        j = colon + 1
        while j < len(line) and line[j] == " ":
            j += 1
        if j < len(line) and line[j] == '"':
            k = j + 1
            while line[k] != '"':
                k += 2 if line[k] == "\\" else 1
            value, i = line[j : k + 1], k + 1
            i = line.find(",", i) + 1 if line.find(",", i) >= 0 else len(line)
        else:
            end = line.find(",", j)
            end = len(line) if end < 0 else end
            value, i = line[j:end], end + 1
        pairs.append((key, value))
    return pairs


# -- building and quoting ---------------------------------------------------------------------


def test_seed_example_parsed_field_by_field() -> None:
    params = parse_infotext("1girl, smile\nNegative prompt: lowres\n" + SEED_LINE)
    assert params["Prompt"] == "1girl, smile"
    assert params["Negative prompt"] == "lowres"
    assert params["Steps"] == "20"
    assert params["Sampler"] == "Euler a"
    assert params["CFG scale"] == "7"
    assert params["Seed"] == "2607380765"
    assert params["Size-1"] == "512" and params["Size-2"] == "512"
    assert "Size" not in params
    assert params["Model hash"] == "b6928134bb"
    assert params["Model"] == "25D_mixProV3_v3"
    assert params["Clip skip"] == "2"
    # A1111's defaults for absent keys
    assert params["Schedule type"] == "Automatic" and params["RNG"] == "GPU"
    assert params["Hires sampler"] == "Use same sampler"
    assert "Schedule type" in params.defaulted and "Clip skip" not in params.defaulted


def test_build_orders_keys_as_a1111() -> None:
    params = {
        "Version": "v1.10.1",
        "Lora hashes": "ace: 0123456789ab",
        "Clip skip": 2,
        "Model": "anything-v5",
        "Size": "512x768",
        "Seed": 42,
        "CFG scale": 7,
        "Schedule type": "Karras",
        "Sampler": "DPM++ 2M",
        "Steps": 20,
        "Model hash": "7f96a1a9ca",
        "Denoising strength": 0.5,
        "Hires upscale": 1.5,
        "Tiling": None,
    }
    text = build_infotext("a", "", params)
    assert text == (
        "a\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 42, Size: 512x768, "
        "Model hash: 7f96a1a9ca, Model: anything-v5, Denoising strength: 0.5, Clip skip: 2, "
        'Lora hashes: "ace: 0123456789ab", Hires upscale: 1.5, Version: v1.10.1'
    )


def test_quoting_clip_skip_and_key_only_values() -> None:
    text = build_infotext(
        "p",
        "n",
        {
            "Steps": 20,
            "Sampler": "Euler",
            "Seed": 1,
            "Clip skip": 1,
            "Note": 'say "hi", then: go\nnow',
            "Tiling": "Tiling",
            "Hires upscaler": "R-ESRGAN 4x+ Anime6B",
            "Emoji": "日本語",
        },
    )
    line = text.split("\n")[-1]
    assert "Clip skip" not in line
    assert 'Note: "say \\"hi\\", then: go\\nnow"' in line
    assert ", Tiling," in line + ","  # key == value -> key only
    assert "Hires upscaler: R-ESRGAN 4x+ Anime6B" in line
    assert "Emoji: 日本語" in line
    parsed = parse_infotext(text)
    assert parsed["Note"] == 'say "hi", then: go\nnow'
    assert parsed["Hires upscaler"] == "R-ESRGAN 4x+ Anime6B"


def test_short_last_line_belongs_to_the_prompt() -> None:
    params = parse_infotext("a cat\nSteps: 20, Seed: 1")
    assert params["Prompt"] == "a cat\nSteps: 20, Seed: 1"
    assert "Steps" not in params


def test_multiline_prompts_and_negative() -> None:
    text = build_infotext("line one\nline two", "bad\nworse", {"Steps": 5, "Sampler": "Euler", "Seed": 3, "Size": "64x64"})
    params = parse_infotext(text)
    assert params["Prompt"] == "line one\nline two"
    assert params["Negative prompt"] == "bad\nworse"


def _random_infotext(rng: random.Random) -> tuple[str, str, dict]:
    words = ["1girl", "smile", "(red eyes:1.2)", "[blurry]", "日本", "a, b", "x: y", 'q"uote', "back\\slash"]
    prompt = ", ".join(rng.sample(words, 4))
    negative = rng.choice(["", "lowres, bad hands", "worst quality\nlow quality"])
    params = {
        "Steps": rng.randint(1, 150),
        "Sampler": rng.choice(["Euler a", "DPM++ 2M", "DDIM"]),
        "Schedule type": rng.choice([None, "Karras", "Exponential"]),
        "CFG scale": rng.choice([7, 6.5, 11]),
        "Seed": rng.randint(0, 2**32 - 1),
        "Size": f"{rng.choice([512, 768])}x{rng.choice([512, 1024])}",
        "Model hash": f"{rng.getrandbits(40):010x}",
        "Model": rng.choice(["anything-v5", "model, with comma", "m:colon"]),
        "Clip skip": rng.choice([1, 2]),
        "Lora hashes": rng.choice([None, "a: 0123456789ab, b: ba9876543210"]),
        "Extra": rng.choice([None, "multi\nline", 'quote"d, value']),
        "Version": "v1.10.1",
    }
    return prompt, negative, params


def test_independent_parser_agrees_on_generated_infotexts() -> None:
    rng = random.Random(7)
    for _ in range(40):
        prompt, negative, params = _random_infotext(rng)
        text = build_infotext(prompt, negative, params)
        ours = parse_infotext(text)
        theirs = reference_parse(text)
        for key, value in theirs.items():
            assert ours[key] == value, (key, text)
        expected = {k: str(v) for k, v in params.items() if v is not None and k != "Size"}
        if params["Clip skip"] == 1:
            expected.pop("Clip skip")
        for key, value in expected.items():
            assert theirs[key] == value, (key, text)
        width, height = params["Size"].split("x")
        assert (ours["Size-1"], ours["Size-2"]) == (width, height)
        assert ours["Prompt"] == prompt and ours["Negative prompt"] == negative


# -- PNG storage --------------------------------------------------------------------------------


def _png_chunks(path: Path) -> list[tuple[bytes, bytes]]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        chunks.append((kind, data[offset + 8 : offset + 8 + length]))
        offset += 12 + length
    return chunks


def test_round_trip_latin1_uses_text_chunk(tmp_path: Path) -> None:
    params = {
        "Steps": 20,
        "Sampler": "Euler a",
        "CFG scale": 7,
        "Seed": 2607380765,
        "Size": "64x64",
        "Model hash": "b6928134bb",
        "Model": "25D_mixProV3_v3",
        "Clip skip": 2,
    }
    text = build_infotext("masterpiece, 1girl, (smile:1.2), café", "lowres", params)
    path = save_png(Image.new("RGB", (64, 64), "white"), tmp_path / "00000-2607380765.png", text)
    kinds = [kind for kind, body in _png_chunks(path) if body.startswith(b"parameters\0")]
    assert kinds == [b"tEXt"]
    meta = read_image_metadata(path)
    assert meta.infotext == text
    parsed = meta.parameters
    assert parsed["Prompt"] == "masterpiece, 1girl, (smile:1.2), café"
    assert parsed["Negative prompt"] == "lowres"
    for key, value in params.items():
        if key != "Size":
            assert parsed[key] == str(value)
    assert (parsed["Size-1"], parsed["Size-2"]) == ("64", "64")


def test_round_trip_japanese_uses_itxt_chunk(tmp_path: Path) -> None:
    text = build_infotext("1girl, 桜, 日本語のプロンプト", "", {"Steps": 20, "Sampler": "Euler a", "Seed": 1, "Size": "64x64"})
    path = save_png(Image.new("RGB", (64, 64)), tmp_path / "a.png", text)
    kinds = [kind for kind, body in _png_chunks(path) if body.startswith(b"parameters\0")]
    assert kinds == [b"iTXt"]
    meta = read_image_metadata(path)
    assert meta.infotext == text
    assert meta.parameters["Prompt"] == "1girl, 桜, 日本語のプロンプト"
    # the same bytes through the bytes and Image entry points
    assert read_image_metadata(path.read_bytes()).infotext == text
    with Image.open(path) as opened:
        assert read_image_metadata(opened).infotext == text


def test_save_png_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out" / "00000-1.png"
    save_png(Image.new("RGB", (8, 8)), target, "first\nSteps: 1, Sampler: Euler, Seed: 1")

    def broken_save(self, fp, format=None, **params):  # noqa: A002 - PIL's signature
        fp.write(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_png(Image.new("RGB", (8, 8)), target, "second")
    with pytest.raises(OSError):
        save_png(Image.new("RGB", (8, 8)), tmp_path / "out" / "00001-2.png", "third")
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["00000-1.png"]
    assert read_image_metadata(target).infotext.startswith("first")

    # the file write itself failing (after the temporary file has data) leaves no trace either
    def broken_fsync(fd: int) -> None:
        raise OSError("device gone")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="device gone"):
        save_png(Image.new("RGB", (8, 8)), target, "fourth")
    with pytest.raises(OSError, match="device gone"):
        save_image(Image.new("RGB", (8, 8)), tmp_path / "out" / "00002-3.jpg", "fifth")
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["00000-1.png"]
    assert read_image_metadata(target).infotext.startswith("first")


def test_comfyui_png_chunks(tmp_path: Path) -> None:
    prompt = {"3": {"class_type": "KSampler", "inputs": {"seed": 5, "steps": 20}}}
    workflow = {"last_node_id": 9, "nodes": [{"id": 3, "type": "KSampler"}]}
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", json.dumps(prompt))
    info.add_text("workflow", json.dumps(workflow))
    info.add_text("Software", "ComfyUI")
    path = tmp_path / "ComfyUI_00001_.png"
    Image.new("RGB", (16, 16)).save(path, pnginfo=info)
    meta = read_image_metadata(path)
    assert meta.infotext is None and meta.parameters == {}
    assert meta.comfyui_prompt == prompt
    assert meta.comfyui_workflow == workflow
    assert meta.items == {"Software": "ComfyUI"}
    assert json.loads(meta.to_json())["comfyui_prompt"] == prompt


def test_image_without_metadata(tmp_path: Path) -> None:
    path = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(path)
    meta = read_image_metadata(path)
    assert meta == ImageMetadata()
    assert json.loads(meta.to_json()) == {
        "infotext": None,
        "parameters": {},
        "defaults": {},
        "comfyui_prompt": None,
        "comfyui_workflow": None,
        "items": {},
    }


# -- JPEG / WebP EXIF UserComment ---------------------------------------------------------------


def test_jpeg_exif_user_comment_written_as_piexif_does(tmp_path: Path) -> None:
    text = "1girl, 日本\nNegative prompt: lowres\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 9, Size: 64x64"
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + text.encode("utf-16-be")
    path = tmp_path / "a.jpg"
    Image.new("RGB", (64, 64), "blue").save(path, exif=exif, quality=90)
    meta = read_image_metadata(path)
    assert meta.infotext == text
    assert meta.parameters["Seed"] == "9" and meta.parameters["Prompt"] == "1girl, 日本"


def test_save_image_jpeg_and_webp_round_trip(tmp_path: Path) -> None:
    text = "a cat\nSteps: 4, Sampler: DDIM, Seed: 3, Size: 64x64"
    for name in ("b.jpg", "c.webp"):
        path = save_image(Image.new("RGB", (64, 64)), tmp_path / name, text)
        assert read_image_metadata(path).infotext == text


def test_user_comment_prefixes() -> None:
    assert decode_user_comment(b"ASCII\0\0\0hello") == "hello"
    assert decode_user_comment(b"UNICODE\0" + "héllo".encode("utf-16-be")) == "héllo"
    assert decode_user_comment(b"UNICODE\0" + "héllo".encode("utf-16-le")) == "héllo"
    assert decode_user_comment(b"\0" * 8 + b"plain") == "plain"


def test_gif_comment(tmp_path: Path) -> None:
    path = tmp_path / "a.gif"
    Image.new("P", (8, 8)).save(path, comment=b"gif infotext\nSteps: 1, Sampler: Euler, Seed: 2")
    assert read_image_metadata(path).parameters["Seed"] == "2"


# -- file names ---------------------------------------------------------------------------------


def test_next_image_path_continues_the_counter(tmp_path: Path) -> None:
    assert next_image_path(tmp_path / "missing", 5) == tmp_path / "missing" / "00000-5.png"
    assert next_image_path(tmp_path, 42) == tmp_path / "00000-42.png"
    for name in ("00000-1.png", "00007-99.png", "00003-5.jpg", "grid-0100.png", "notes.txt", "00012.txt"):
        (tmp_path / name).write_bytes(b"")
    assert next_image_path(tmp_path, 2607380765) == tmp_path / "00013-2607380765.png"
    assert next_image_path(tmp_path, 1, ext=".webp").name == "00013-1.webp"
    (tmp_path / "00013-8.png").write_bytes(b"")
    assert next_image_path(tmp_path, 8).name == "00014-8.png"
    (tmp_path / "100000-1.png").write_bytes(b"")
    assert next_image_path(tmp_path, 1).name == "100001-1.png"


# -- hashes -------------------------------------------------------------------------------------


def _write(path: Path, size: int, seed: int = 0) -> bytes:
    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    return data


def test_model_hash_is_sha256_prefix(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    data = _write(path, 3 * 1024 * 1024 + 17)
    full = hashlib.sha256(data).hexdigest()
    assert hashes.sha256_file(path) == full
    assert hashes.model_hash(path) == full[:10]
    assert hashes.legacy_model_hash(path) == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    small = tmp_path / "small.bin"
    _write(small, 100, seed=1)
    assert hashes.legacy_model_hash(small) == hashlib.sha256(b"").hexdigest()[:8]


def test_hash_cache_avoids_rereading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.ckpt"
    data = _write(path, 2 * 1024 * 1024 + 5)
    calls = []
    real = hashes._sha256_uncached
    monkeypatch.setattr(hashes, "_sha256_uncached", lambda p: calls.append(p) or real(p))
    first = hashes.model_hash(path)
    assert hashes.model_hash(path) == first
    assert hashes.model_hash(str(path)) == first
    assert len(calls) == 1
    cache_file = Path(os.environ["XDG_CACHE_HOME"]) / "tagloop" / "hashes.json"
    assert json.loads(cache_file.read_text())[str(path.resolve())]["sha256"] == hashlib.sha256(data).hexdigest()
    # a changed file (size or mtime) is hashed again
    _write(path, 1000, seed=2)
    assert hashes.model_hash(path) == hashlib.sha256(path.read_bytes()).hexdigest()[:10]
    assert len(calls) == 2
    assert not [p for p in cache_file.parent.iterdir() if p.name != "hashes.json"]  # no temp files left


def _tiny_safetensors(path: Path, metadata: dict[str, str] | None = None) -> bytes:
    """A .safetensors file written by hand: one F32 tensor of 4 values."""
    payload = struct.pack("<4f", 1.0, 2.0, 3.0, 4.0)
    header = {"lora_unet_x.lora_down.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}
    if metadata:
        header["__metadata__"] = metadata
    header_bytes = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(header_bytes)) + header_bytes + payload)
    return payload


def test_addnet_hash_ignores_the_header(tmp_path: Path) -> None:
    a = tmp_path / "a.safetensors"
    b = tmp_path / "b.safetensors"
    payload = _tiny_safetensors(a)
    _tiny_safetensors(b, {"ss_output_name": "renamed"})
    expected = hashlib.sha256(payload).hexdigest()
    assert hashes.addnet_hash(a) == expected
    assert hashes.addnet_hash(b) == expected  # metadata edits do not change it
    assert hashes.lora_short_hash(a) == expected[:12]
    assert hashes.sha256_file(a) != hashes.sha256_file(b)
    from safetensors.torch import load_file

    assert load_file(str(a))["lora_unet_x.lora_down.weight"].tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_lora_hash_prefers_sshs_metadata_and_pickles_use_sha256(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    _tiny_safetensors(path, {"sshs_model_hash": "feedfacecafebeef0011"})
    assert hashes.lora_short_hash(path) == "feedfacecafe"
    pt = tmp_path / "d.pt"
    data = _write(pt, 300)
    assert hashes.addnet_hash(pt) == hashlib.sha256(data).hexdigest()
    assert hashes.lora_short_hash(pt) == hashlib.sha256(data).hexdigest()[:12]


# -- tagloop info -------------------------------------------------------------------------------


def test_info_command_json_and_text(tmp_path: Path) -> None:
    text = build_infotext("1girl", "lowres", {"Steps": 20, "Sampler": "Euler a", "Seed": 5, "Size": "64x64"})
    path = save_png(Image.new("RGB", (64, 64)), tmp_path / "00000-5.png", text)
    runner = CliRunner()
    result = runner.invoke(info_command, [str(path)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["infotext"] == text
    assert data["parameters"]["Seed"] == "5" and data["parameters"]["Size-1"] == "64"
    result = runner.invoke(info_command, [str(path), "--format", "text"])
    assert result.exit_code == 0 and result.output == text + "\n"


def test_info_command_no_metadata_and_unreadable(tmp_path: Path) -> None:
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    runner = CliRunner()
    result = runner.invoke(info_command, [str(plain)])
    assert result.exit_code == 0
    assert json.loads(result.output)["infotext"] is None
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    result = runner.invoke(info_command, [str(broken)])
    assert result.exit_code == 1
    assert "broken.png" in result.stderr and result.stdout == ""
    result = runner.invoke(info_command, [str(tmp_path / "missing.png")])
    assert result.exit_code == 1
    assert "--format" in runner.invoke(info_command, ["--help"]).output


def test_info_text_format_without_parameters_says_so(tmp_path: Path) -> None:
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    result = CliRunner().invoke(info_command, [str(plain), "--format", "text"])
    assert result.exit_code == 1
    assert result.stdout == "" and "plain.png" in result.stderr and "no A1111 generation parameters" in result.stderr
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", json.dumps({"3": {"class_type": "KSampler", "inputs": {}}}))
    comfy = tmp_path / "ComfyUI_00001_.png"
    Image.new("RGB", (8, 8)).save(comfy, pnginfo=info)
    result = CliRunner().invoke(info_command, [str(comfy), "--format", "text"])
    assert result.exit_code == 1 and "ComfyUI" in result.stderr and result.stdout == ""


def test_info_json_keeps_what_the_file_says_apart_from_a1111_defaults(tmp_path: Path) -> None:
    text = "1girl\nNegative prompt: lowres\n" + SEED_LINE
    path = save_png(Image.new("RGB", (8, 8)), tmp_path / "00000-2607380765.png", text)
    data = json.loads(CliRunner().invoke(info_command, [str(path)]).output)
    stated, defaults = data["parameters"], data["defaults"]
    # `parameters` is exactly what an independent reader finds in the text: nothing added
    assert stated == reference_parse(text)
    for key in ("RNG", "Mask mode", "FP8 weight", "Schedule type", "Hires sampler"):
        assert key not in stated and key in defaults
    assert defaults["RNG"] == "GPU" and defaults["Schedule type"] == "Automatic" and defaults["FP8 weight"] == "Disable"
    assert "Clip skip" in stated and "Clip skip" not in defaults  # the file says 2; the default 1 does not apply
    # together they are what A1111's reader returns, and no key is in both
    assert {**stated, **defaults} == dict(parse_infotext(text)) and not stated.keys() & defaults.keys()
    assert set(defaults) == set(parse_infotext(text).defaulted)


def test_compressed_itxt_from_other_tools(tmp_path: Path) -> None:
    """A deflate-compressed iTXt ``parameters`` chunk (written by other tools) is read too."""
    info = PngImagePlugin.PngInfo()
    info.add_itxt("parameters", "圧縮\nSteps: 1, Sampler: Euler, Seed: 1", zip=True)
    path = tmp_path / "z.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    assert read_image_metadata(path).parameters["Prompt"] == "圧縮"
