"""``mdiff doctor``: what the environment has (torch, CUDA, attention backends, media and
provenance libraries, threads), one row each."""

from __future__ import annotations

import argparse
import importlib
import os

__all__ = ["register", "report", "run"]

LIBRARIES = ("xformers", "c2pa", "av", "decord", "transformers", "tokenizers", "accelerate",
             "safetensors", "numpy")  # fmt: skip


def register(commands) -> None:
    commands.add("doctor", "print versions of torch, CUDA, xformers, c2pa, av, decord, threads",
                 run)  # fmt: skip


def _version(module: str) -> str:
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - report any import failure, never crash doctor
        return f"not available ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})"
    return str(getattr(mod, "__version__", "installed"))


def report() -> list[tuple[str, str]]:
    """What the environment has, as (name, value) rows."""
    import platform

    import torch

    import mdiff
    from mdiff.cli import physical_cores

    rows = [
        ("mdiff", mdiff.__version__),
        ("python", platform.python_version()),
        ("platform", f"{platform.system()} {platform.machine()}"),
        ("torch", torch.__version__),
    ]
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        rows.append(("cuda", f"{torch.version.cuda} ({names})"))
    else:
        rows.append(("cuda", "not available (CPU only)"))
    rows += [(name, _version(name)) for name in LIBRARIES]
    rows.append(("attention", _attention_backends()))
    rows.append(("threads", f"torch {torch.get_num_threads()}, physical cores {physical_cores()}"))
    return rows


def _attention_backends() -> str:
    """Which attention backends run here (see mdiff.nn.attention), and any override."""
    import torch

    from mdiff.nn.attention import ENV_VAR, available_backends

    device = "cuda" if torch.cuda.is_available() else "cpu"
    names = [
        "flex (forward-only)" if n == "flex" and device == "cpu" else n
        for n in available_backends(device)
    ]
    override = f"; ${ENV_VAR}={os.environ[ENV_VAR]}" if os.environ.get(ENV_VAR) else ""
    return ", ".join(names) + f" on {device}{override}"


def run(args: argparse.Namespace) -> int:
    for name, value in report():
        print(f"{name:>13}  {value}")
    return 0
