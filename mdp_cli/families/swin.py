"""The Swin family: timm ``SwinTransformer`` (v1: swin_tiny/small/base_patch4_window7_224).

Space (``space/swin.py``): per block heads, q/k and v widths per head, MLP neurons; each block's attention
and MLP branches removable. The stage widths stay fixed (patch merging couples them; ``mdp space`` lists
the stem, merges and head as fixed terms). Latency: ``swin_attn(H, Q, V)`` and ``swin_mlp(M)`` per block
(one table set per stage and window shift), measured on a sub-grid (``latency/vit_plan.points``) and
interpolated (``latency/vit_tables.term_table``); stem, merges and head as constants. Importance
(``importance/swin.py``) with the shared objectives; export ``export/swin.py`` into ``modules/swin.py``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, Optional

import mdp_cli.latency.swin_ops  # noqa: F401  (registers this family's latency ops)
from mdp_cli.errors import MdpError
from mdp_cli.families import register_family
from mdp_cli.families.base import Discovered, Family
from mdp_cli.families.vit import native_size, parse_mapping
from mdp_cli.latency.engine import Measurement
from mdp_cli.latency.vit_plan import VIT_TIMING
from mdp_cli.settings import setting

STEP_KEYS = ("heads", "qk", "v", "mlp")
GRID_KEYS = ("heads", "qk", "v", "hidden")
DEFAULT_GRID = {"heads": 4, "qk": 3, "v": 3, "hidden": 5}
FIXED_OPS = ("swin_stem", "swin_merge", "swin_head")  # once per model: timed alone


@dataclasses.dataclass
class SwinSpaceSection:
    steps: Optional[Any] = setting(None, doc="units per option step, e.g. heads=1,qk=8,v=8,mlp=64")


@register_family
class SwinFamily(Family):
    name = "swin"
    title = "Swin"
    summary = "timm SwinTransformer v1: heads, q/k, v, MLP per block, attention/MLP branches (stage widths fixed)"
    space_section = SwinSpaceSection
    default_model = "swin_tiny_patch4_window7_224"
    timing = VIT_TIMING
    # the narrowest rule (timm's swin_transformer module only), so asked first; config.py names the last
    # family owning a foreign key, so ViT (asked after) stays the one named for `space.steps` on a CNN
    priority = 5
    score_methods = frozenset((o, c) for o in ("labels", "pseudo_labels", "features") for c in ("taylor", "fisher"))

    def recognises(self, model: str) -> bool:
        try:
            import timm

            return timm.is_model(model) and timm.models.model_entrypoint(model).__module__ == "timm.models.swin_transformer"
        except Exception:
            return False

    def check_space(self, space: dict[str, Any], where: str) -> dict[str, Any]:
        if space.get("steps") is not None:
            space["steps"] = parse_mapping(space["steps"], f"{where}: space.steps (--steps)", STEP_KEYS)
        return space

    def parse_grid(self, grid: Any, where: str) -> dict[str, int] | None:
        if grid is None:
            return None
        parsed = parse_mapping(grid, f"{where}: profile.grid (--grid)", GRID_KEYS + ("mlp",))
        return {("hidden" if k == "mlp" else k): v for k, v in parsed.items()}

    def _model(self, cfg: Mapping[str, Any]):
        from mdp_cli.models import create_model, read_state_dict

        name = str(cfg["model"])
        overrides = {k: v for k, v in (("img_size", cfg.get("resolution")), ("num_classes", cfg.get("num_classes")))
                     if v is not None}
        res = cfg.get("resolution")
        if res is not None and int(res) % 4:
            raise MdpError(f"--resolution {res} is not a multiple of {name}'s patch size 4 (use {int(res) // 4 * 4 or 4})")
        try:
            model = create_model(name, **overrides)
        except TypeError as exc:
            if "img_size" not in str(exc):
                raise
            raise MdpError(f"{name} has a fixed input size {native_size(name)}; use --resolution {native_size(name)}") from None
        if cfg.get("pretrained"):
            from timm.models.swin_transformer import checkpoint_filter_fn

            state = checkpoint_filter_fn({k.removeprefix("module."): v for k, v in
                                          read_state_dict(cfg["pretrained"]).items()}, model)
            try:
                result = model.load_state_dict(state, strict=False)
            except RuntimeError as exc:
                raise MdpError(f"{cfg['pretrained']}: weights do not fit the model "
                               f"({str(exc).strip().splitlines()[-1].strip()})") from None
            if result.missing_keys or result.unexpected_keys:
                raise MdpError(f"{cfg['pretrained']}: weights do not fit the model (missing {result.missing_keys[:3]}..., "
                               f"unexpected {result.unexpected_keys[:3]}...)")
        return model.eval()

    def discover(self, cfg: Mapping[str, Any]) -> Discovered:
        from mdp_cli.space.swin import build_swin_space

        p = cfg["profile"]
        model = self._model(cfg)
        space = build_swin_space(model, str(cfg["model"]), cfg["space"].get("steps"), batch=int(p["batch"]),
                                 dtype=p["dtype"])
        return Discovered(model, space)

    def measurements(self, discovered: Discovered, grid: Any) -> list[Measurement]:
        from mdp_cli.latency.vit_plan import points
        from mdp_cli.latency.vit_tables import lut_sizes, unique_terms

        space, grid = discovered.space, {**DEFAULT_GRID, **(grid or {})}
        copies: dict[str, int] = {}
        for term in space.terms:
            copies[term.signature()] = copies.get(term.signature(), 0) + 1
        out = []
        for sig, term in unique_terms(space).items():
            n = 1 if term.op in FIXED_OPS else copies[sig]
            for sizes in points(space, term, grid):
                out.append(Measurement(op=term.op, signature=sig, sizes_key=lut_sizes(sizes), context=term.context,
                                       sizes=sizes, copies=n))
        return out

    def build_problem(self, cfg, discovered, lut, importance, importance_path):
        from mdp_cli.latency.vit_tables import rows_from_lut, term_table, unique_terms
        from mdp_cli.space.vit import vit_problem

        if importance is None:
            raise MdpError(f"a Swin problem needs --importance (from 'mdp score --model {cfg['model']}')")
        space = discovered.space
        planned = {m.key for m in self.measurements(discovered, cfg["profile"]["grid"])}
        rows = rows_from_lut(lut, space, only=planned)
        by_sig = {sig: term_table(space, term, rows) for sig, term in unique_terms(space).items()}
        tables = {t.name: by_sig[t.signature()] for t in space.terms}
        return vit_problem(space, tables, importance, family="swin", lut_file=str(lut.path),
                           importance_file=str(importance_path), device=lut.device, stat=lut.stat)

    def score(self, cfg, discovered: Discovered, batches: Iterable, device: str) -> dict[str, Any]:
        from mdp_cli.importance.objectives import make_loss
        from mdp_cli.importance.swin import swin_importance
        from mdp_cli.space.swin import swin_facts

        s = cfg["score"]
        objective, criterion = s.get("objective", "labels"), s.get("criterion", "taylor")
        loss = make_loss(objective, int(s.get("seed", 0)), has_classifier=swin_facts(discovered.model)["num_classes"] > 0)
        record = swin_importance(discovered.model, batches, discovered.space, loss_fn=loss, device=device,
                                 criterion=criterion)
        prov = record["provenance"]
        return {"dims": record["dims"], "batches": prov["batches"], "images": prov["images"], "method": prov["method"],
                "objective": objective, "criterion": criterion, "steps": cfg["space"].get("steps")}

    def export(self, discovered: Discovered, choice, kept, importance):
        from mdp_cli.export.swin import export_swin

        return export_swin(discovered.model, choice, kept, importance)
