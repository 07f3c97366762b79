"""Output folders, written whole or not at all: nothing a user has is overwritten unless they say so, a second run
into the same folder refuses, a command never writes over what it reads, and an interrupted run leaves nothing
that could pass for a result.

:func:`staged_folder` is how every command writes its folder: it takes a lock beside ``--out`` (a second run
refuses in one line), removes staging folders that earlier, killed runs left there, writes everything into a
fresh staging folder beside ``--out`` (marked :data:`INCOMPLETE` until it is whole) and then renames it into
place; an existing ``--out`` is replaced only once the new one is complete. A folder that still holds the marker
of another process (one pointed at a staging folder, or written in place by a tool of its own) is recognised as
left by an interrupted run by loading, ``push``, ``export`` and a re-run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from .config import QUANT_METHOD
from .errors import FactorEmbedError
from .quantizer.marker import INCOMPLETE, check_complete, marker_text  # noqa: F401  (check_complete: re-exported)


def check_output_dir(out: str | Path, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Refuse to write into a folder that already holds something, unless told to (``overwrite``) or continuing
    there (``resume``, which needs the folder's checkpoints)."""
    check_out_named(out)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FactorEmbedError(f"{out} is a file; give a folder for --out")
    if resume:
        return out
    if out.exists() and any(out.iterdir()) and not overwrite:
        if (out / INCOMPLETE).exists():
            raise FactorEmbedError(
                f"{out} was left by an interrupted run ({marker_text(out)}); pass --overwrite to replace it"
            )
        raise FactorEmbedError(f"{out} exists and is not empty; choose another --out or pass --overwrite")
    return out


def check_out_named(out: str | Path) -> None:
    """``--out`` names a folder (an empty string would be ".", the current folder, once made a Path)."""
    if str(out).strip() == "":
        raise FactorEmbedError("--out is empty; give the folder to write (e.g. --out out/my-model)")


def check_not_input(out: str | Path, inputs: Iterable[str | Path | None]) -> None:
    """``--out`` is none of the folders the command reads and holds none of them: replacing it would destroy the
    input (a model folder compressed into itself). A new folder inside an input is fine (an export beside its
    checkpoint's files, as the Hub keeps ``onnx/model.onnx``)."""
    target = Path(out).expanduser().resolve()
    for given in inputs:
        if given is None or str(given).startswith("bundled:") or not Path(given).exists():
            continue
        source = Path(given).expanduser().resolve()
        if target == source or target in source.parents:
            raise FactorEmbedError(
                f"--out {out} would write over the input {given}, which this command reads; give another --out"
            )


@contextlib.contextmanager
def staged_folder(
    out: str | Path, *, overwrite: bool = False, inputs: Iterable[str | Path | None] = (), command: str = ""
) -> Iterator[Path]:
    """Yield a staging folder to write into; on success it becomes ``out`` in one rename, on any failure (or an
    interrupt) it is removed and ``out`` is as it was."""
    out = check_output_dir(out, overwrite=overwrite)
    check_not_input(out, inputs)
    out.absolute().parent.mkdir(parents=True, exist_ok=True)
    with output_lock(out):
        check_output_dir(out, overwrite=overwrite)  # again, now that no other run can write it
        remove_stale_staging(out)
        staging = _sibling(out, f"staging-{os.getpid()}")
        staging.mkdir()
        mark_incomplete(staging, command)
        try:
            yield staging
            (staging / INCOMPLETE).unlink()
            _replace(out, staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """An exclusive lock (``.<out>.lock`` beside ``out``) for as long as the run writes it; the system drops it
    when the process ends, however it ends, so a killed run never leaves it held."""
    lock = _sibling(out, "lock")
    with open(lock, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FactorEmbedError(
                f"{out} is being written by another run (it holds {lock}); wait for it or choose another --out"
            ) from None
        try:
            yield
        finally:  # the file stays: unlinking it could let a third run lock a new file while a second holds the old
            fcntl.flock(handle, fcntl.LOCK_UN)


def mark_incomplete(folder: Path, command: str = "") -> None:
    (folder / INCOMPLETE).write_text(json.dumps({"pid": os.getpid(), "command": command}))


def remove_stale_staging(out: Path) -> list[str]:
    """Staging folders beside ``out`` left by killed runs (the caller holds ``out``'s lock: nobody else writes
    them); returns their names."""
    stale = sorted(out.absolute().parent.glob(f".{out.name}.staging-*")) + sorted(
        out.absolute().parent.glob(f".{out.name}.replaced-*")
    )
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return [p.name for p in stale]


def _replace(out: Path, staging: Path) -> None:
    """``staging`` becomes ``out``; an existing ``out`` is moved aside first and removed only afterwards."""
    if not out.exists():
        os.rename(staging, out)
        return
    aside = _sibling(out, f"replaced-{os.getpid()}")
    os.rename(out, aside)
    os.rename(staging, out)
    shutil.rmtree(aside, ignore_errors=True)


def _sibling(out: Path, what: str) -> Path:
    return out.absolute().parent / f".{out.name}.{what}"


def read_config(folder: str | Path) -> dict:
    """A saved model folder's config.json, read before any weight loads (a wrong folder fails fast and quietly)."""
    config = Path(folder, "config.json")
    if not Path(folder).exists():
        raise FactorEmbedError(f"the folder {folder} does not exist; give a checkpoint folder")
    if not config.is_file():
        raise FactorEmbedError(f"{folder} is not a saved model folder (no config.json); give a checkpoint folder")
    return json.loads(config.read_text())


def is_factorized_checkpoint(folder: str | Path) -> bool:
    """Read from config.json alone, before any weight loads."""
    quantization = read_config(folder).get("quantization_config") or {}
    return quantization.get("quant_method") == QUANT_METHOD


def factorized_modules(config: dict) -> dict[str, dict]:
    """What a checkpoint's config says of each factorized layer: ``quantization_config.modules`` by role (each entry
    a :class:`hf_factor_embed.layers.layout.LayerLayout`'s ``as_config()``); empty for a dense model."""
    return (config.get("quantization_config") or {}).get("modules") or {}


def folder_bytes(folder: str | Path, pattern: str = "*.safetensors") -> int:
    return sum(p.stat().st_size for p in Path(folder).glob(pattern))
