"""The ``Family`` interface: everything a model family supplies to the pipeline.

The pipeline (``mdp_cli.pipeline``) runs the same stages for every model and asks the model's family for
the family-specific parts only:

- which models it takes (``recognises``) and its config section (``space_section``, ``check_space``,
  ``parse_grid``, defaults);
- space discovery (``discover``: the dense model and its ``PruningSpace``);
- the latency terms to profile (``measurements``: what to build and time; ``timing``: how its ops like to be
  timed; the one profiling engine, ``latency/engine.py``, does the timing);
- the solver problem from the LUT and the importance (``build_problem``);
- importance scoring (``score``: scores from batches of data);
- export (``export``: the physically smaller model and its ``mdp.arch`` spec).

Families are registered by name (``mdp_cli.families.register_family``) and looked up by model name.
"""

from __future__ import annotations

import abc
import dataclasses
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping

from mdp_cli.latency.engine import Measurement, TimingPlan
from mdp_cli.space.core import PruningSpace


@dataclasses.dataclass
class Discovered:
    """What space discovery returns: the dense model, its pruning space, and whatever else the family
    needs later (``details``: e.g. the CNN's traced graph analysis)."""

    model: Any
    space: PruningSpace
    details: Any = None


class Family(abc.ABC):
    """One model family. Subclasses set the class attributes and implement the abstract methods."""

    name: ClassVar[str]  # registry key, recorded in configs and spaces ("cnn", "vit")
    title: ClassVar[str]  # for messages ("CNN", "ViT")
    summary: ClassVar[str]  # one line for `mdp families`
    space_section: ClassVar[type]  # dataclass of the family's `space:` config section
    default_model: ClassVar[str]
    default_resolution: ClassVar[int | None] = None  # None: the model's own input size
    timing: ClassVar[TimingPlan] = TimingPlan()
    # Lower numbers are asked first; a catch-all family (the CNN tracer) comes last.
    priority: ClassVar[int] = 50
    # (score.objective, score.criterion) pairs ``score`` implements; the pipeline refuses the others.
    score_methods: ClassVar[frozenset] = frozenset({("labels", "taylor")})
    # score.coupled when the config leaves it unset: how a dim shared by several layers combines their
    # scores (importance/coupled.py); a family changes it only on measured evidence (docs/results.md).
    default_coupled: ClassVar[str] = "sum"
    # score.objective and score.criterion when the config leaves them unset (the same rule)
    default_objective: ClassVar[str] = "labels"
    default_criterion: ClassVar[str] = "taylor"

    # -- models and configuration -------------------------------------------------------------------------
    @abc.abstractmethod
    def recognises(self, model: str) -> bool:
        """True when ``model`` (a name from a config or flag) belongs to this family."""

    def check_space(self, space: dict[str, Any], where: str) -> dict[str, Any]:
        """Further checks/normalisation of the validated ``space`` section (default: as is)."""
        return space

    def parse_grid(self, grid: Any, where: str) -> Any:
        """``profile.grid`` in this family's form (``None``: the family's default)."""
        return grid

    # -- the stages -------------------------------------------------------------------------------------
    @abc.abstractmethod
    def discover(self, cfg: Mapping[str, Any]) -> Discovered:
        """Create the dense model (weights, resolution, classes from ``cfg``) and discover its space."""

    @abc.abstractmethod
    def measurements(self, discovered: Discovered, grid: Any) -> list[Measurement]:
        """The LUT rows to measure for this space (ops registered in ``latency.ops``)."""

    @abc.abstractmethod
    def build_problem(self, cfg: Mapping[str, Any], discovered: Discovered, lut: Any,
                      importance: Mapping[str, Any] | None, importance_path: str | None) -> Any:
        """The solver ``Problem`` (``mdp_cli.solve.problem``) from the LUT and the importance record."""

    @abc.abstractmethod
    def score(self, cfg: Mapping[str, Any], discovered: Discovered,
              batches: Iterable[tuple[Any, Any]], device: str) -> dict[str, Any]:
        """Importance record ``{"dims": {dim: {...}}, "batches": n, ...}`` from batches of (images, labels)."""

    @abc.abstractmethod
    def export(self, discovered: Discovered, choice: Mapping[str, int], kept: Mapping[str, bool],
               importance: Mapping[str, Any] | None) -> tuple[Any, dict[str, Any]]:
        """(pruned nn.Module, ``mdp.arch`` spec) for a solution's ``choice`` (dim -> kept size) and ``kept``
        (block -> kept); ``importance`` (dim -> record) decides which units are kept."""

    # -- optional hooks ---------------------------------------------------------------------------------
    def export_for_timing(self, discovered: Discovered, choice: Mapping[str, int],
                          kept: Mapping[str, bool]) -> Any:
        """A pruned model of a configuration, to be timed only (``mdp calibrate``): which units are kept does
        not change its latency, so no importance is needed. Default: ``export`` without importance."""
        return self.export(discovered, choice, kept, None)[0]

    def rows_used(self, discovered: Discovered, grid: Any, choice: Mapping[str, int],
                  kept: Mapping[str, bool]) -> list[Measurement]:
        """The rows of ``measurements`` that the predicted latency of a configuration (``choice``: dim ->
        kept size, ``kept``: block -> kept; missing ones full/kept) reads, for ``mdp run --refine`` to
        re-measure. Default (``latency/usage.py``): per term of a kept block, its rows at the measured sizes
        that bracket the chosen ones."""
        from mdp_cli.latency.usage import rows_used

        return rows_used(discovered.space, self.measurements(discovered, grid), choice, kept)

    def input_shape(self, discovered: Discovered) -> tuple[int, ...]:
        """Shape of one input sample (C, H, W)."""
        return tuple(discovered.space.input_shape)

    def num_classes(self, discovered: Discovered) -> int:
        """Classifier size of the dense model (labels of a larger data set are folded onto it)."""
        return int(getattr(discovered.model, "num_classes", 1000) or 1000)

    def write_onnx(self, net: Any, arch: Mapping[str, Any], shape: tuple[int, ...], path: Path) -> dict[str, Any]:
        """Write ``net`` as ONNX and check it against PyTorch (default: the generic exporter)."""
        from mdp_cli.export.onnx import export_onnx

        return export_onnx(net, shape, path)

    def model_stats(self, net: Any, shape: tuple[int, ...]) -> dict[str, Any]:
        """Parameters (and FLOPs where the family counts them) of a model."""
        return {"params": sum(p.numel() for p in net.parameters()), "flops": None}

    def describe(self) -> str:
        return f"{self.name:6s} {self.summary}"
