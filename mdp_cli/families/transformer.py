"""What the transformer families (``vit.py``, ``swin.py``) share: the ``KEY=N`` config mappings, creating a timm
model at the configured resolution with local weights, and a ``TransformerFamily`` base that plans the
latency rows (a sub-grid per term, ``latency/vit_plan.py``), builds the problem from the interpolated tables
(``space/vit.vit_problem``), scores, and names the rows a configuration reads. A subclass supplies its
model, space, tables, importance and export.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, ClassVar, Iterable, Mapping

from mdp_cli.errors import MdpError
from mdp_cli.families.base import Discovered, Family
from mdp_cli.latency.engine import Measurement
from mdp_cli.latency.vit_plan import VIT_TIMING

GRID_ALIASES = {"mlp": "hidden"}  # one vocabulary with space.steps


def parse_mapping(text: Any, what: str, allowed: tuple[str, ...]) -> dict[str, int]:
    """``embed=16,heads=1`` (or a mapping from YAML) -> {"embed": 16, "heads": 1}, positive integers of
    ``allowed`` keys only."""
    if isinstance(text, Mapping):
        items = list(text.items())
    else:
        items = [kv.split("=", 1) for kv in str(text).split(",") if kv.strip()]
    try:
        out = {str(k).strip(): int(v) for k, v in items}
    except (TypeError, ValueError):
        out = {}
    if not out or any(isinstance(v, bool) for _, v in items):
        raise MdpError(f"{what} {text!r}: expected KEY=N pairs, e.g. embed=16,heads=1,qk=8,v=8,mlp=64")
    bad = [k for k in out if k not in allowed]
    if bad:
        raise MdpError(f"{what} {text!r}: unknown key(s) {bad} (known: {', '.join(allowed)})")
    low = [k for k, v in out.items() if v < 1]
    if low:
        raise MdpError(f"{what} {text!r}: {low[0]} must be a positive integer")
    return out


def native_size(name: str) -> int | str:
    """The input size timm's default config gives a model (e.g. 224)."""
    try:
        import timm

        return int(timm.models.get_pretrained_cfg(name).input_size[-1])
    except Exception:  # no config known: say so rather than guess
        return "(unknown)"


def create_at_resolution(name: str, cfg: Mapping[str, Any]):
    """The timm model ``name`` created at ``cfg``'s resolution (``img_size``) and class count; a model with a
    fixed input size is refused in one line."""
    from mdp_cli.models import create_model

    overrides = {k: v for k, v in (("img_size", cfg.get("resolution")), ("num_classes", cfg.get("num_classes")))
                 if v is not None}
    try:
        return create_model(name, **overrides)
    except TypeError as exc:
        if "img_size" not in str(exc):
            raise
        raise MdpError(f"{name} has a fixed input size {native_size(name)} (timm cannot create it at "
                       f"--resolution {cfg['resolution']}); use --resolution {native_size(name)} or omit it") from None


def load_timm_weights(model, path, checkpoint_filter: Callable[[dict, Any], dict]) -> None:
    """Load a local checkpoint through timm's ``checkpoint_filter`` for the model's architecture (it adapts
    position embeddings or tables to the model's grid and converts original key layouts). The weights
    must then fit exactly."""
    from mdp_cli.models import read_state_dict

    state = {k.removeprefix("module."): v for k, v in read_state_dict(path).items()}
    try:
        state = checkpoint_filter(state, model)
    except Exception as exc:  # a shape timm cannot resample: keep the message on one line
        raise MdpError(f"{path}: cannot adapt these weights to the model ({exc})".replace("\n", " ")) from None
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()
        raise MdpError(f"{path}: weights do not fit the model ({first}); check --model and --num-classes") from None
    if result.missing_keys or result.unexpected_keys:
        raise MdpError(f"{path}: weights do not fit the model (missing {result.missing_keys[:3]}..., "
                       f"unexpected {result.unexpected_keys[:3]}...); check --model and --num-classes")


class TransformerFamily(Family):
    """A family whose latency terms are profiled on a sub-grid of sizes and interpolated, with the transformer
    importance objectives. Subclasses set the keys and ops below and implement ``recognises``, ``_model``,
    ``_space``, ``_tables``, ``_importance``, ``_has_classifier`` and ``export``."""

    step_keys: ClassVar[tuple[str, ...]]  # keys of space.steps
    grid_keys: ClassVar[tuple[str, ...]]  # keys of profile.grid (plus the alias mlp for hidden)
    default_grid: ClassVar[dict[str, int]]  # sub-grid points per role
    unchained: ClassVar[tuple[str, ...]]  # ops timed alone (once per model, or weight-free), not as chains of copies
    share_timings: ClassVar[bool] = True  # rows at one configuration of the same op and context: one timing
    timing = VIT_TIMING
    score_methods = frozenset((o, c) for o in ("labels", "pseudo_labels", "distill", "features") for c in ("taylor", "fisher"))
    # Label-free KL-Fisher scoring kept the most accuracy on ResNet-18 and DeiT-Tiny (docs/results.md,
    # "Importance criteria"); it needs no labels, so any unlabelled images of the task will do.
    default_objective = "distill"
    default_criterion = "fisher"

    # -- what differs per family ------------------------------------------------------------------------
    def _model_name(self, cfg: Mapping[str, Any]) -> str:
        return str(cfg["model"])

    @abc.abstractmethod
    def _model(self, cfg: Mapping[str, Any]):
        """The dense model in eval mode (resolution, classes and ``--pretrained`` weights from ``cfg``)."""

    @abc.abstractmethod
    def _space(self, model, name: str, steps: Any, batch: int, dtype: str):
        """The model's ``PruningSpace``."""

    @abc.abstractmethod
    def _tables(self, space, rows: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(full-option latency tables by term name, extra ``vit_problem`` arguments) from the planned LUT rows."""

    @abc.abstractmethod
    def _importance(self, model, batches: Iterable, space, **options) -> dict[str, Any]:
        """The importance record (``importance/vit.py`` form) from batches."""

    @abc.abstractmethod
    def _has_classifier(self, model) -> bool:
        """Whether the model has a classifier (the ``labels`` objectives need one)."""

    # -- shared -------------------------------------------------------------------------------------------
    def check_space(self, space: dict[str, Any], where: str) -> dict[str, Any]:
        if space.get("steps") is not None:
            space["steps"] = parse_mapping(space["steps"], f"{where}: space.steps (--steps)", self.step_keys)
        return space

    def parse_grid(self, grid: Any, where: str) -> dict[str, int] | None:
        if grid is None:
            return None
        parsed = parse_mapping(grid, f"{where}: profile.grid (--grid)", self.grid_keys + tuple(GRID_ALIASES))
        return {GRID_ALIASES.get(k, k): v for k, v in parsed.items()}

    def discover(self, cfg: Mapping[str, Any]) -> Discovered:
        p = cfg["profile"]
        model = self._model(cfg)
        space = self._space(model, self._model_name(cfg), cfg["space"].get("steps"), batch=int(p["batch"]),
                            dtype=p["dtype"])
        return Discovered(model, space)

    def measurements(self, discovered: Discovered, grid: Any) -> list[Measurement]:
        from mdp_cli.latency.vit_plan import plan_measurements

        return plan_measurements(discovered.space, {**self.default_grid, **(grid or {})}, self.unchained,
                                 share_timings=self.share_timings)

    def rows_used(self, discovered: Discovered, grid: Any, choice: Mapping[str, int],
                  kept: Mapping[str, bool]) -> list[Measurement]:
        """The bracketing rows of every kept term and, for the ViT attention split, the reference and SDPA
        rows it subtracts (``latency/vit_tables.rows_used``)."""
        from mdp_cli.latency.vit_tables import rows_used

        return rows_used(discovered.space, self.measurements(discovered, grid), choice, kept)

    def build_problem(self, cfg, discovered, lut, importance, importance_path):
        from mdp_cli.latency.vit_tables import rows_from_lut
        from mdp_cli.space.vit import vit_problem

        space = discovered.space
        planned = {m.key for m in self.measurements(discovered, cfg["profile"]["grid"])}
        from mdp_cli.importance.coupled import coupled_of

        tables, extra = self._tables(space, rows_from_lut(lut, space, only=planned))
        return vit_problem(space, tables, importance, family=self.name, lut_file=str(lut.path),
                           importance_file=str(importance_path), device=lut.device, stat=lut.stat,
                           coupled=coupled_of(importance), **extra)

    def score(self, cfg, discovered: Discovered, batches: Iterable, device: str) -> dict[str, Any]:
        from mdp_cli.importance.objectives import make_loss

        s = cfg["score"]
        objective = s.get("objective") or self.default_objective
        criterion = s.get("criterion") or self.default_criterion
        coupled = s.get("coupled") or self.default_coupled
        loss = make_loss(objective, int(s.get("seed", 0)), has_classifier=self._has_classifier(discovered.model))
        record = self._importance(discovered.model, batches, discovered.space, loss_fn=loss, device=device,
                                  criterion=criterion, coupled=coupled)
        prov = record["provenance"]
        return {"dims": record["dims"], "batches": prov.get("batches"), "images": prov.get("images"),
                "method": prov.get("method", "taylor_first_order"), "objective": objective, "criterion": criterion,
                "coupled": coupled, "steps": cfg["space"].get("steps")}
