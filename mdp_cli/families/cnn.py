"""The CNN family: any torchvision/timm CNN that torch.fx traces into convs, norms, activations, pools, adds.

Space: channel dims coupled through residual adds (``space/cnn.py``), removable residual blocks.
Latency: one term per conv/linear/norm/... at its feature map (``latency/cnn_ops.py``), measured on every
``grid``-th option. Importance: first-order Taylor of BN parameters (``importance/taylor.py``). Export: a
plain-PyTorch graph (``modules/cnn.py``) cut by ``export/cnn_prune.py``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, Optional

import mdp_cli.latency.cnn_ops  # noqa: F401  (registers this family's latency ops)
from mdp_cli.settings import setting
from mdp_cli.errors import MdpError
from mdp_cli.families import register_family
from mdp_cli.families.base import Discovered, Family
from mdp_cli.latency.engine import Measurement


@dataclasses.dataclass
class CnnSpaceSection:
    step: Optional[int] = setting(None, min=1, doc="channels per option step (default: size / max_options)")
    max_options: int = setting(8, min=1, doc="options per dim when step is not given")
    multiple: int = setting(1, min=1, doc="widths restricted to multiples of this (e.g. 8)")
    prune_stem: bool = setting(True, doc="let the stem's output width be pruned (false: the paper's rule)")


@register_family
class CnnFamily(Family):
    name = "cnn"
    title = "CNN"
    summary = "torchvision/timm CNNs traced by torch.fx: channels coupled through residuals, residual blocks"
    space_section = CnnSpaceSection
    default_model = "resnet18"
    default_resolution = 64
    from mdp_cli.latency.profile import GRID_TIMING as timing  # noqa: E402  (a class attribute)
    priority = 90  # the catch-all: asked after every family with a narrower rule
    score_methods = frozenset((o, c) for o in ("labels", "pseudo_labels", "distill", "features") for c in ("taylor", "fisher"))
    # Label-free KL-Fisher scoring kept the most accuracy on ResNet-18 and DeiT-Tiny (docs/results.md,
    # "Importance criteria"); it needs no labels, so any unlabelled images of the task will do.
    default_objective = "distill"
    default_criterion = "fisher"

    def recognises(self, model: str) -> bool:
        return True

    def parse_grid(self, grid: Any, where: str) -> int:
        if grid is None:
            return 1
        if isinstance(grid, str) and grid.strip().isdigit():  # from the --grid flag
            grid = int(grid)
        if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
            raise MdpError(f"{where}: profile.grid (--grid) = {grid!r}: for a CNN an integer >= 1 (measure every N-th "
                           "option); per-dim points (embed=5,...) are for ViTs")
        return grid

    def discover(self, cfg: Mapping[str, Any]) -> Discovered:
        from mdp_cli.space.cnn import discover_space

        overrides = {"num_classes": cfg["num_classes"]} if cfg.get("num_classes") else {}
        model, analysis = discover_space(cfg["model"], cfg["resolution"], pretrained=cfg.get("pretrained"),
                                         model_overrides=overrides, **cfg["space"])
        return Discovered(model, analysis.space, analysis)

    def measurements(self, discovered: Discovered, grid: Any) -> list[Measurement]:
        from mdp_cli.latency.profile import grid_measurements

        return grid_measurements(discovered.space, grid)

    def build_problem(self, cfg, discovered, lut, importance, importance_path):
        from mdp_cli.latency.lut import require_rows
        from mdp_cli.latency.to_problem import build_problem

        grid = int(cfg["profile"]["grid"])
        require_rows(lut, discovered.space, grid)  # interpolate only inside a grid profiled to be interpolated
        from mdp_cli.importance.coupled import coupled_of

        return build_problem(discovered.space, lut, importance, interpolate=grid > 1, source=str(importance_path),
                             resolution=cfg["resolution"], space_options=dict(cfg["space"]),
                             importance_file=str(importance_path) if importance_path else None,
                             coupled=coupled_of(importance))

    def score(self, cfg, discovered: Discovered, batches: Iterable, device: str) -> dict[str, Any]:
        from mdp_cli.importance.objectives import make_loss
        from mdp_cli.importance.taylor import bn_taylor_scores, importance_record

        s = cfg["score"]
        objective = s.get("objective") or self.default_objective
        criterion = s.get("criterion") or self.default_criterion
        coupled = s.get("coupled") or self.default_coupled
        node_scores, count = bn_taylor_scores(discovered.model, discovered.details, batches, device=device,
                                              loss_fn=make_loss(objective, int(s.get("seed", 0))), criterion=criterion)
        return {"dims": importance_record(discovered.details, node_scores, coupled=coupled), "batches": count,
                "method": "taylor_bn" if criterion == "taylor" else "fisher_bn", "objective": objective,
                "criterion": criterion, "coupled": coupled, "space": dict(cfg["space"])}

    def export(self, discovered: Discovered, choice, kept, importance):
        from mdp_cli.export.cnn_prune import prune_cnn

        order = {k: v["order"] for k, v in importance.items()} if importance else None
        if choice and order is None:
            raise MdpError("export needs --importance (which channels to keep); without it nothing can be chosen")
        return prune_cnn(discovered.model, discovered.details, choice, kept, order)

    def export_for_timing(self, discovered: Discovered, choice, kept):
        from mdp_cli.export.cnn_prune import prune_cnn

        # the first channels of every dim: any would do for timing
        first = {d.name: list(range(d.size)) for d in discovered.space.dims}
        return prune_cnn(discovered.model, discovered.details, choice, kept, first)[0]

    def num_classes(self, discovered: Discovered) -> int:
        graph = discovered.details.graph
        return int(graph.nodes[-2].shape[-1]) if len(graph.nodes) > 1 else 1000

    def model_stats(self, net, shape):
        from mdp_cli.export.cnn_prune import model_stats

        return model_stats(net, shape)
