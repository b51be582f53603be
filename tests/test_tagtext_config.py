"""The shared tag-text policy and tagloop.toml handling."""

import click
from click.testing import CliRunner

from tagloop.cli import main
from tagloop.tagtext import TagPolicy, canonical, escape, split_tags, unescape


def test_canonical_matches_spaces_underscores_escapes_and_case():
    assert canonical("Hair Ribbon \\(Blue\\)") == canonical("hair_ribbon_(blue)") == "hair_ribbon_(blue)"
    assert canonical("^ ^") == "^_^"


def test_policy_format():
    p = TagPolicy()
    assert p.format("hair_ribbon_(blue)") == "hair ribbon \\(blue\\)"
    assert p.format("^_^") == "^_^" and p.format(":d") == ":d"
    assert TagPolicy(keep_kaomoji=False).format("^_^") == "^ ^"
    assert TagPolicy(use_spaces=False, escape=False).format("long_hair") == "long_hair"
    assert p.format("smile", 0.8712) == "(smile:0.87)"
    assert p.join(["1girl", "long_hair"], {"long_hair": 0.5}) == "1girl, (long hair:0.50)"


def test_escape_round_trip():
    for raw in ("a\\b", "(x)", "back\\\\slash"):
        assert unescape(escape(raw)) == raw
    assert split_tags("a, b\nc,, ") == ["a", "b", "c"]


def _config(tmp_path, text):
    p = tmp_path / "tagloop.toml"
    p.write_text(text, encoding="utf-8")
    return p


def test_config_unknown_and_bad_keys_are_named(tmp_path):
    runner = CliRunner()
    p = _config(tmp_path, 'colour = "red"\n')
    r = runner.invoke(main, ["--config", str(p), "tag", "--help"])
    assert r.exit_code == 2 and "colour" in r.output and "tagloop.toml" in r.output
    p = _config(tmp_path, '[tag]\nbatch_size = "many"\n')
    r = runner.invoke(main, ["--config", str(p), "tag", "--help"])
    assert r.exit_code == 2 and "batch_size" in r.output
    p = _config(tmp_path, "[tag]\nthreshold = 3\n")
    r = runner.invoke(main, ["--config", str(p), "tag", "x.png"])
    assert r.exit_code == 2 and "threshold" in r.output
    r = runner.invoke(main, ["--config", str(tmp_path / "none.toml"), "tag", "--help"])
    assert r.exit_code == 2 and "does not exist" in r.output


def test_config_fills_defaults_and_cli_overrides(tmp_path, monkeypatch):
    seen = {}

    @main.command("echo-defaults")
    @click.option("--device", default="auto")
    @click.option("--batch-size", type=int, default=1)
    def echo_defaults(device, batch_size):
        seen.update(device=device, batch_size=batch_size)

    try:
        p = _config(tmp_path, 'device = "cpu"\n[echo-defaults]\nbatch-size = 7\n')
        r = CliRunner().invoke(main, ["--config", str(p), "echo-defaults"])
        assert r.exit_code == 0, r.output
        assert seen == {"device": "cpu", "batch_size": 7}
        r = CliRunner().invoke(main, ["--config", str(p), "echo-defaults", "--batch-size", "3"])
        assert seen["batch_size"] == 3
        monkeypatch.chdir(tmp_path)  # ./tagloop.toml is found without --config
        r = CliRunner().invoke(main, ["echo-defaults"])
        assert seen == {"device": "cpu", "batch_size": 7}
    finally:
        main.commands.pop("echo-defaults")


def test_version():
    r = CliRunner().invoke(main, ["--version"])
    assert r.exit_code == 0 and "tagloop" in r.output


def test_config_keys_are_the_option_names(tmp_path):
    """`--format` stores into `fmt`, `--filters` into `filter_files`: the file uses the names users type."""
    seen = {}

    @main.command("echo-aliases")
    @click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
    @click.option("--filters", "filter_files", multiple=True)
    def echo_aliases(fmt, filter_files):
        seen.update(fmt=fmt, filters=filter_files)

    try:
        p = _config(tmp_path, '[echo-aliases]\nformat = "json"\nfilters = ["a.txt", "b.txt"]\n')
        r = CliRunner().invoke(main, ["--config", str(p), "echo-aliases"])
        assert r.exit_code == 0, r.output
        assert seen == {"fmt": "json", "filters": ("a.txt", "b.txt")}
        p = _config(tmp_path, '[echo-aliases]\nformat = "xml"\n')
        r = CliRunner().invoke(main, ["--config", str(p), "echo-aliases"])
        assert r.exit_code == 2 and "format" in r.output and "xml" in r.output
    finally:
        main.commands.pop("echo-aliases")


def test_config_tag_format_and_scores(tmp_path):
    p = _config(tmp_path, '[tag]\nformat = "jsonl"\nscores = true\ncaption_extension = "caption"\n')
    r = CliRunner().invoke(main, ["--config", str(p), "tag", "--help"])
    assert r.exit_code == 0, r.output


def test_config_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    seen = {}

    @main.command("echo-path")
    @click.option("--a1111-dir", type=click.Path(file_okay=False), default=None)
    @click.option("--filters", multiple=True, type=click.Path(dir_okay=False))
    def echo_path(a1111_dir, filters):
        seen.update(a1111_dir=a1111_dir, filters=filters)

    try:
        folder = tmp_path / "project"
        folder.mkdir()
        p = _config(folder, '[echo-path]\na1111_dir = "webui"\nfilters = ["f.txt", "/abs/g.txt"]\n')
        monkeypatch.chdir(tmp_path)
        r = CliRunner().invoke(main, ["--config", str(p), "echo-path"])
        assert r.exit_code == 0, r.output
        assert seen["a1111_dir"] == str(folder.resolve() / "webui")
        assert list(seen["filters"]) == [str(folder.resolve() / "f.txt"), "/abs/g.txt"]
    finally:
        main.commands.pop("echo-path")
