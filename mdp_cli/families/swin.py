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
from mdp_cli.families.transformer import TransformerFamily, create_at_resolution, load_timm_weights
from mdp_cli.settings import setting

STEP_KEYS = ("heads", "qk", "v", "mlp")
GRID_KEYS = ("heads", "qk", "v", "hidden")
DEFAULT_GRID = {"heads": 4, "qk": 3, "v": 3, "hidden": 5}
FIXED_OPS = ("swin_stem", "swin_merge", "swin_head")  # once per model: timed alone


@dataclasses.dataclass
class SwinSpaceSection:
    steps: Optional[Any] = setting(None, doc="units per option step, e.g. heads=1,qk=8,v=8,mlp=64")


@register_family
class SwinFamily(TransformerFamily):
    name = "swin"
    title = "Swin"
    summary = "timm SwinTransformer v1: heads, q/k, v, MLP per block, attention/MLP branches (stage widths fixed)"
    space_section = SwinSpaceSection
    default_model = "swin_tiny_patch4_window7_224"
    # the narrowest rule (timm's swin_transformer module only), so asked first; config.py names the last
    # family owning a foreign key, so ViT (asked after) stays the one named for `space.steps` on a CNN
    priority = 5
    step_keys = STEP_KEYS
    grid_keys = GRID_KEYS
    default_grid = DEFAULT_GRID
    unchained = FIXED_OPS
    share_timings = False

    def recognises(self, model: str) -> bool:
        try:
            import timm

            return timm.is_model(model) and timm.models.model_entrypoint(model).__module__ == "timm.models.swin_transformer"
        except Exception:
            return False

    def _model(self, cfg: Mapping[str, Any]):
        name = self._model_name(cfg)
        res = cfg.get("resolution")
        if res is not None and int(res) % 4:
            raise MdpError(f"--resolution {res} is not a multiple of {name}'s patch size 4 (use {int(res) // 4 * 4 or 4})")
        model = create_at_resolution(name, cfg)
        if cfg.get("pretrained"):
            from timm.models.swin_transformer import checkpoint_filter_fn

            load_timm_weights(model, cfg["pretrained"], checkpoint_filter_fn)
        return model.eval()

    def _space(self, model, name, steps, batch, dtype):
        from mdp_cli.space.swin import build_swin_space

        return build_swin_space(model, name, steps, batch=batch, dtype=dtype)

    def _tables(self, space, rows):
        from mdp_cli.latency.vit_tables import term_tables

        return term_tables(space, rows), {}

    def _importance(self, model, batches: Iterable, space, **options) -> dict[str, Any]:
        from mdp_cli.importance.swin import swin_importance

        return swin_importance(model, batches, space, **options)

    def _has_classifier(self, model) -> bool:
        from mdp_cli.space.swin import swin_facts

        return swin_facts(model)["num_classes"] > 0

    def export(self, discovered, choice, kept, importance):
        from mdp_cli.export.swin import export_swin

        return export_swin(discovered.model, choice, kept, importance)
