"""How a coupled dim's importance is aggregated over the layers that share it (``score.coupled``).

A dim shared by several layers gets one score per layer and unit: a CNN residual width gets the Taylor score
of every norm on its channels (each block's last norm, the shortcut's, the stem's when it is prunable); a
ViT embedding gets one share from the stem and head and one from every attention and MLP branch. How those
shares are combined decides how much the dim weighs against the others in the solver's objective:

- ``sum``: their sum (the paper's rule). A residual channel shared by n blocks weighs about n times a channel
  inside one block, so the solver keeps residual widths whole and cuts the blocks' inner widths instead.
- ``mean``: the sum divided by the number of layers: a shared channel weighs like one layer's channel.
- ``sqrt``: the sum divided by the square root of the number of layers: between the two.

Every share of a dim (``scores``, ``cumulative``, ``base``, ``gated``) is scaled by the same factor, so the
ranking of the dim's own units (``order``), and hence which channels an export keeps, is the same in every
mode; a dim of one layer is unchanged. The record keeps the count as ``layers``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from mdp_cli.errors import MdpError

COUPLED_MODES = ("sum", "mean", "sqrt")
DEFAULT_COUPLED = "sum"


def coupled_weight(mode: str, layers: int) -> float:
    """The factor a dim shared by ``layers`` layers has its summed scores multiplied by under ``mode``."""
    if mode not in COUPLED_MODES:
        raise MdpError(f"score.coupled (--coupled) = {mode!r} is not allowed; expected one of "
                       f"{', '.join(COUPLED_MODES)}")
    n = max(int(layers), 1)  # a dim nothing scored (all zeros) is left as it is
    return {"sum": 1.0, "mean": 1.0 / n, "sqrt": 1.0 / math.sqrt(n)}[mode]


def aggregate(record: Mapping[str, Any], layers: int, mode: str) -> dict[str, Any]:
    """A copy of one dim's importance ``record`` (summed over its ``layers`` sharing layers) with every share
    scaled for ``mode``, and ``layers`` recorded."""
    w = coupled_weight(mode, layers)
    out = dict(record)
    for key in ("scores", "cumulative", "base"):
        if key in record:
            out[key] = [float(v) * w for v in record[key]]
    out["gated"] = {blk: [float(v) * w for v in values] for blk, values in (record.get("gated") or {}).items()}
    out["layers"] = int(layers)
    return out


def coupled_of(importance: Mapping[str, Any] | None) -> str | None:
    """The mode an importance file was aggregated with (files written before the setting: ``sum``); None
    without importance."""
    if importance is None:
        return None
    return str((importance.get("provenance") or {}).get("coupled", DEFAULT_COUPLED))
