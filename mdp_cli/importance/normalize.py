"""Per-dim normalisation of importance scores (``score.normalize``), the same for every family.

The solver maximises the summed importance a configuration keeps. Raw Taylor/Fisher scores make that sum
favour whichever dims have large scores — wide layers, residual widths summed over many blocks, late
layers with large gradients — and let it cut a narrow layer nearly to nothing when its scores are small,
even though a layer at a few channels breaks the network whatever its scores say. Normalising puts the
dims on one scale before the solver weighs them against each other:

- ``none``: the scores as measured (the paper's rule).
- ``sum``: each dim's scores are divided by their total, so every dim at full width is worth 1 and the
  objective is the sum over dims of the fraction of each dim's importance kept: a narrow layer weighs as
  much as a wide one.
- ``mean``: each dim's scores are divided by their mean per unit, so a dim at full width is worth its
  number of units (Torch-Pruning's per-group ``mean`` normaliser): units compare across layers by how
  they stand within their own layer.

Every share of a dim (``scores``, ``cumulative``, ``base``, ``gated``) is scaled by one factor, so which
units a dim keeps (``order``) is unchanged; a dim whose scores are all zero is left alone. Normalising
after ``score.coupled`` overrides its weighting (a residual width is scaled like any other dim).
"""

from __future__ import annotations

from typing import Any, Mapping

from mdp_cli.errors import MdpError

NORMALIZE_MODES = ("none", "sum", "mean")
DEFAULT_NORMALIZE = "none"


def normalize_dims(dims: Mapping[str, Mapping[str, Any]], mode: str) -> dict[str, dict[str, Any]]:
    """A copy of an importance file's ``dims`` with every dim scaled as ``mode`` says."""
    if mode not in NORMALIZE_MODES:
        raise MdpError(f"score.normalize (--normalize) = {mode!r} is not allowed; expected one of "
                       f"{', '.join(NORMALIZE_MODES)}")
    out: dict[str, dict[str, Any]] = {}
    for name, record in dims.items():
        total = float(sum(record["scores"]))
        rec = dict(record)
        if mode != "none" and total > 0:
            factor = 1.0 / total if mode == "sum" else len(record["scores"]) / total
            for key in ("scores", "cumulative", "base"):
                if key in record:
                    rec[key] = [float(v) * factor for v in record[key]]
            rec["gated"] = {blk: [float(v) * factor for v in values]
                            for blk, values in (record.get("gated") or {}).items()}
        out[name] = rec
    return out
