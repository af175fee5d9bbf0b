"""Settings of the plugin: one table, resolved CLI > environment > ini > default."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import pytest

from ..process.compile_cache import CACHE_DIR_ENV, DEFAULT_CACHE_DIR

MODES = ("colocate", "server")
MODE_CHOICES = (*MODES, "all")
LANE_CHOICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Setting:
    name: str  # option dest and ini name, e.g. vllm_mode
    env: str
    default: str
    help: str
    choices: tuple[str, ...] = ()
    kind: type = str
    positive: bool = False  # numbers only: must be > 0

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


SETTINGS = (
    Setting("vllm_mode", "VLLMCOMPAT_MODE", "all", "which backend modes to test", MODE_CHOICES),
    Setting("vllm_model", "VLLMCOMPAT_MODEL", "", "model directory to use instead of the built-in tiny model"),
    Setting("vllm_startup_timeout", "VLLMCOMPAT_STARTUP_TIMEOUT", "300", "seconds a server may take to answer its health check", kind=float, positive=True),
    Setting("vllm_lane", "VLLMCOMPAT_LANE", "auto", "cpu or cuda lane (auto: cuda when a GPU is visible)", LANE_CHOICES),
    Setting("vllm_target", "VLLMCOMPAT_TARGET", "", "backend target label (pip spec or checkout path) used to match known failures; default: trl==<installed version>"),
    Setting("vllm_cache_dir", CACHE_DIR_ENV, str(DEFAULT_CACHE_DIR), "where the tiny models and the compile caches are kept"),
    Setting("vllm_results", "VLLMCOMPAT_RESULTS", "", "directory to write this run's JSON result into (the gate reads it); default: none written"),
)
BY_NAME = {s.name: s for s in SETTINGS}


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("vllmcompat", "vLLM backend compatibility")
    for s in SETTINGS:
        extra = {"choices": s.choices} if s.choices else {}
        group.addoption(s.flag, dest=s.name, default=None, help=f"{s.help} (env {s.env}, ini {s.name}; default {s.default or 'none'})", **extra)
        parser.addini(s.name, s.help, default=None)


def resolve_with_source(config: pytest.Config, name: str) -> tuple[Any, str]:
    """(effective value of setting `name`, where it came from: `--flag`, `$ENV`, `ini name` or `default`);
    an invalid value raises a UsageError naming that source and, for choices, the valid values."""
    s = BY_NAME[name]
    for source, value in (
        (s.flag, config.getoption(s.name, None)),
        (f"${s.env}", os.environ.get(s.env)),
        (f"ini {s.name}", config.getini(s.name)),
    ):
        if value not in (None, ""):
            return _validated(s, str(value).strip(), source), source
    return (s.kind(s.default) if s.default else s.default), "default"


def resolve(config: pytest.Config, name: str) -> Any:
    """The effective value of setting `name` (see resolve_with_source)."""
    return resolve_with_source(config, name)[0]


def _validated(s: Setting, value: str, source: str) -> Any:
    if s.choices and value not in s.choices:
        raise pytest.UsageError(f"{source}: invalid value {value!r} for {s.name}; valid are {', '.join(s.choices)}")
    try:
        converted = s.kind(value)
    except ValueError:
        raise pytest.UsageError(f"{source}: {s.name} must be a {s.kind.__name__}, got {value!r}") from None
    if s.positive and not converted > 0:
        raise pytest.UsageError(f"{source}: {s.name} must be a positive number of seconds, got {value!r}")
    return converted


def selected_modes(config: pytest.Config) -> tuple[str, ...]:
    mode = resolve(config, "vllm_mode")
    return MODES if mode == "all" else (mode,)
