"""Exported (pruned) model format: an architecture spec (JSON) plus safetensors weights, no pickles.

A directory holds ``arch.json`` (schema ``mdp.arch``: ``family`` and whatever that family's builder needs
to rebuild the module tree with the pruned sizes) and ``model.safetensors`` (and, from the export stage,
``report.json`` and optionally ``model.onnx``). Each family registers a builder ``arch dict -> nn.Module``
with ``mdp_cli.modules.registry.register_arch``; loading needs no pruning code path, only those
plain-PyTorch module definitions.

An export directory is replaced as a unit: its files are written into a hidden sibling directory
(``staged_directory``) that is swapped in only when everything is written (``replace_directory``), so an
error or Ctrl-C half-way leaves the previous export as it was, never a new model beside an old report.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from torch import nn

from mdp_cli.artifacts import atomic_path, provenance, read_json, write_json
from mdp_cli.errors import MdpError
from mdp_cli.modules.registry import ARCH_BUILDERS, arch_builder

ARCH_SCHEMA = "mdp.arch"
ARCH_VERSION = 1
# What an export directory may hold; a directory with anything else is not replaced (it is not ours).
EXPORT_FILES = frozenset({"arch.json", "model.safetensors", "report.json", "model.onnx", "model.onnx.data"})


# ---------------------------------------------------------------------------------------------------------
# Replacing a directory as a unit
# ---------------------------------------------------------------------------------------------------------


def check_replaceable(target: str | Path) -> None:
    """Refuse to replace anything but an export: a path that does not exist, an empty directory, or a
    directory holding an export (``arch.json``, or only export files). ``--output .`` must not wipe a folder."""
    target = Path(target)
    if not target.exists() and not target.is_symlink():
        return
    if target.is_symlink() or not target.is_dir():
        raise MdpError(f"{target}: exists and is not a directory; choose another --output")
    names = {p.name for p in target.iterdir()}
    if names and "arch.json" not in names and not names <= EXPORT_FILES:
        shown = ", ".join(sorted(names - EXPORT_FILES)[:3])
        raise MdpError(f"{target}: holds files that are not an mdp export ({shown}); choose another --output "
                       "(an export directory is replaced as a whole)")


@contextlib.contextmanager
def staged_directory(target: str | Path) -> Iterator[Path]:
    """``with staged_directory(out) as tmp: ...write every file into tmp...``: on success ``tmp`` replaces
    ``out`` as a unit (``replace_directory``); on any error (or Ctrl-C) ``tmp`` is removed and ``out``
    is untouched."""
    target = Path(target)
    check_replaceable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes 0700; an export is an ordinary directory
    try:
        yield staging
        replace_directory(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def replace_directory(new: str | Path, target: str | Path) -> None:
    """Put directory ``new`` at ``target`` (same file system), removing what ``target`` held before.

    On Linux the two are exchanged atomically (renameat2 RENAME_EXCHANGE): at every moment ``target`` is
    either the complete old or the complete new directory. Elsewhere the old one is first renamed aside
    (a crash between the two renames leaves it as ``.NAME.old-*`` beside a missing ``target``)."""
    new, target = Path(new), Path(target)
    check_replaceable(target)
    if not target.exists():
        os.rename(new, target)
        return
    if _exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)  # ``new`` now holds the old directory
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.rename(target, old / target.name)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old / target.name, target)
        raise
    finally:
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False  # old kernel or a file system without exchange: fall back to two renames
    raise OSError(code, os.strerror(code), str(b))


# ---------------------------------------------------------------------------------------------------------
# Saving and loading
# ---------------------------------------------------------------------------------------------------------


def save_exported(directory: str | Path, model: nn.Module, arch: dict[str, Any], **provenance_fields: Any) -> None:
    """Write ``model.safetensors`` and ``arch.json`` as a new ``directory`` that replaces the old one as a
    unit (a stale ``report.json`` of an earlier export never sits beside the new model).

    To add more files (report, ONNX) to the same unit, write them all inside ``staged_directory``::

        with staged_directory(out) as tmp:
            save_exported(tmp, model, arch, ...)
            write_json(tmp / "report.json", report)
    """
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with staged_directory(directory) as tmp:
        with atomic_path(tmp / "model.safetensors") as weights:
            save_file(state, str(weights))
        write_json(
            tmp / "arch.json",
            {"schema": ARCH_SCHEMA, "version": ARCH_VERSION, "provenance": provenance(**provenance_fields), **arch},
        )


def load_exported(directory: str | Path) -> nn.Module:
    from mdp_cli.models import read_state_dict

    directory = Path(directory)
    arch = read_json(directory / "arch.json", ARCH_SCHEMA, ARCH_VERSION)
    family = arch.get("family")
    builder = arch_builder(str(family))
    if builder is None:
        raise MdpError(f"{directory / 'arch.json'}: unknown family {family!r} (known: {sorted(ARCH_BUILDERS)})")
    model = builder(arch)
    weights = directory / "model.safetensors"
    if not weights.is_file():
        raise MdpError(f"{weights}: missing; re-run 'mdp export'")
    try:
        model.load_state_dict(read_state_dict(weights), strict=True)
    except RuntimeError as exc:  # shapes or names that do not fit the spec: torch's message spans lines
        first = str(exc).strip().splitlines()
        raise MdpError(f"{weights}: does not fit {directory / 'arch.json'} ({' '.join(first[:2])[:300]}); "
                       "re-run 'mdp export'") from None
    model.eval()
    return model
