"""tagloop's one error family.

Every error the library raises on purpose is a :class:`TagloopError`. Messages are one sentence that
names the setting (``steps``, ``require_gpu``) or the file, and the fix; they never name a command-line
flag, because the same errors reach Python callers and HTTP clients. The command line maps the
families to exit codes in one place (``tagloop/cli`` entry point): 2 for model, configuration and
setting errors; per-input failures are results with ``error`` set, counted to exit code 1.
"""

from __future__ import annotations


class TagloopError(Exception):
    """The root of every error tagloop raises on purpose."""


class ConfigError(TagloopError):
    """A configuration file or setting value that cannot be used."""


class InputError(TagloopError):
    """Bad input: an image that cannot be decoded, a malformed filter file, a bad setting."""


class OutputPathError(InputError):
    """An output path that would overwrite an input (or is otherwise unsafe to write)."""


class ModelNotFoundError(TagloopError):
    """A model (or one of its files) is not on disk and cannot be downloaded."""


class ModelFileError(TagloopError):
    """A file is not the model it was given as (wrong kind, missing key, wrong shape)."""


class GPUUnavailableError(TagloopError):
    """A GPU was required (``require_gpu``) but the model does not run on one."""


class HubError(ModelNotFoundError):
    """A file could not be had from the hub; the message says which and what to do."""


__all__ = [
    "TagloopError",
    "ConfigError",
    "InputError",
    "OutputPathError",
    "ModelNotFoundError",
    "ModelFileError",
    "GPUUnavailableError",
    "HubError",
]
