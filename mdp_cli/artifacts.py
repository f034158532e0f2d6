"""Artifact plumbing shared by every stage: atomic writes, versioned JSON envelopes, provenance, hashes.

Every artifact is a JSON object (or a file with a JSON sidecar) carrying ``schema`` (its kind, e.g.
``mdp.problem``), ``version`` (an integer bumped on incompatible change) and ``provenance``. Writers go
through a temporary file in the target directory and ``os.replace`` so a crash or an error never leaves
a half-written file, and an existing artifact is only replaced by a complete new one.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import sys
from pathlib import Path
from typing import Any, Iterator

from mdp_cli import __version__
from mdp_cli.errors import SchemaError

# Libraries whose versions change results; read from package metadata so that the solver (which must not
# import torch) can still record them.
_TRACKED_LIBRARIES = ("torch", "torchvision", "timm", "pyomo", "highspy", "numpy", "pandas")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``, on error delete it."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        import tempfile  # (here: 15 ms of start-up that `mdp solve` without -o does not need)

        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise _naming(exc, target) from None
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600 files; artifacts are ordinary files, readable as the umask allows.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _naming(exc, target, tmp)
        raise


def _naming(exc: OSError, target: Path, tmp: Path | None = None) -> OSError:
    """Make an OSError name the artifact being written, not the hidden temporary file beside it (the CLI
    prints ``exc.filename``: "results/solution.json: no space left on the device ...")."""
    if exc.filename is None or str(exc.filename) == str(tmp) or str(exc.filename).startswith(
            str(target.parent / f".{target.name}.")):
        exc.filename, exc.filename2 = str(target), None
    return exc


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays, Paths: the usual non-JSON values that reach artifacts.
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=_json_default, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Serialise first (so a NaN or bad value fails before anything touches disk), then write atomically."""
    atomic_write_text(path, to_json(obj))


def canonical_hash(obj: Any) -> str:
    """sha256 of the canonical JSON form of ``obj`` (sorted keys, no whitespace): a content address."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default, allow_nan=False)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def file_hash(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def library_versions() -> dict[str, str]:
    versions = {"mdp": __version__, "python": platform.python_version()}
    versions.update(_installed_versions(_TRACKED_LIBRARIES))
    return versions


def _installed_versions(names: tuple[str, ...]) -> dict[str, str]:
    """Versions of installed distributions, read from the names of their metadata folders on sys.path
    (``numpy-2.4.6.dist-info``, ``NAME-VERSION[-pyX.Y].egg-info``), first match in path order as
    importlib.metadata finds them. One directory listing per path entry: importing importlib.metadata
    and reading each METADATA file costs ~35 ms, a tenth of a small `mdp solve`."""
    wanted = {name.lower().replace("-", "_"): name for name in names}
    found: dict[str, str] = {}
    for entry in sys.path:
        try:
            listing = os.listdir(entry or ".")
        except OSError:
            continue
        for item in sorted(listing):
            stem, dot, kind = item.rpartition(".")
            if kind not in ("dist-info", "egg-info") or not dot:
                continue
            parts = stem.split("-")
            name = wanted.get(parts[0].lower().replace("-", "_").replace(".", "_"))
            if name is not None and name not in found and len(parts) >= 2:
                found[name] = parts[1]
    return {name: found[name] for name in names if name in found}


def provenance(**fields: Any) -> dict[str, Any]:
    """Provenance block: who made the artifact, when, with which libraries, plus stage-specific fields."""
    block = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "versions": library_versions(),
    }
    block.update(fields)
    return block


def read_json(path: str | os.PathLike, schema: str, max_version: int) -> dict[str, Any]:
    """Read a JSON artifact and check its envelope; every failure names the file and what to do."""
    path = Path(path)
    if not path.is_file():
        raise SchemaError(f"{path}: no such file")
    try:
        data = json.loads(path.read_text(), parse_constant=_reject_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise SchemaError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        # json recurses once per nesting level: a hostile or corrupted file can exhaust the stack.
        raise SchemaError(f"{path}: JSON nested too deeply to be an mdp artifact; regenerate the file") from None
    if not isinstance(data, dict):
        raise SchemaError(f"{path}: expected a JSON object with schema '{schema}'")
    found = data.get("schema")
    if found != schema:
        raise SchemaError(f"{path}: field 'schema' is {found!r}, expected '{schema}' (wrong kind of file?)")
    version = data.get("version")
    if not isinstance(version, int) or version < 1:
        raise SchemaError(f"{path}: field 'version' must be a positive integer, got {version!r}")
    if version > max_version:
        raise SchemaError(
            f"{path}: {schema} version {version} is newer than this mdp reads ({max_version}); upgrade mdp"
        )
    return data


def _reject_constant(name: str) -> float:
    # json accepts NaN/Infinity by default; artifacts never legitimately hold them.
    raise ValueError(f"non-finite number {name}")


def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
