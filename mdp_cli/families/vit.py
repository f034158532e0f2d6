"""The ViT family: timm ``VisionTransformer`` models (DeiT, distilled DeiT, DeiT-III, ViT, DINOv2 with or
without registers, CLIP-style pre-norm, global-pool and headless variants) in all of the paper's dims.

Space: embedding (shared by every block), per block heads, q/k width, v width, MLP hidden; attention and MLP
branches removable (``space/vit.py``). Latency: qk(E,H,Q) + vproj(E,H,V) + sdpa(H,Q,V) + mlp(E,M) + stem + head,
measured on a sub-grid and interpolated (``latency/vit_plan.py``, ``latency/vit_tables.py``). Importance:
Taylor or Fisher per unit, on labels, pseudo-labels or features
(``importance/vit.py``, ``importance/objectives.py``). Export: ``export/vit.py`` into ``modules/vit.py``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, Optional

import mdp_cli.latency.vit_ops  # noqa: F401  (registers this family's latency ops)
from mdp_cli.errors import MdpError
from mdp_cli.families import register_family
from mdp_cli.families.transformer import TransformerFamily, create_at_resolution, load_timm_weights
from mdp_cli.latency.vit_plan import DEFAULT_GRID, UNCHAINED
from mdp_cli.settings import setting

# timm modules whose models are (subclasses of) timm's VisionTransformer; space/vit.py refuses, in one
# line, the variants it does not support.
VIT_MODULES = ("timm.models.vision_transformer", "timm.models.deit")
STEP_KEYS = ("embed", "heads", "qk", "v", "mlp")
GRID_KEYS = ("embed", "heads", "qk", "v", "hidden")


def load_vit_weights(model, path) -> None:
    """Load a local checkpoint through timm's ViT checkpoint filter: it resamples the position embedding to
    the model's grid (weights trained at 518 px load into a model created at 224 px), resizes the patch
    kernel, and converts the original DINOv2 / CLIP key layouts. The weights must then fit exactly."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    load_timm_weights(model, path, checkpoint_filter_fn)


@dataclasses.dataclass
class VitSpaceSection:
    steps: Optional[Any] = setting(None, doc="units per option step, e.g. embed=16,heads=1,qk=8,v=8,mlp=64")


@register_family
class VitFamily(TransformerFamily):
    name = "vit"
    title = "ViT"
    summary = "timm VisionTransformer (DeiT, DeiT-III, ViT, DINOv2): embedding, heads, q/k, v, MLP, attention/MLP branches"
    space_section = VitSpaceSection
    default_model = "deit_tiny"
    default_resolution = None  # the model's own img_size
    priority = 10
    step_keys = STEP_KEYS
    grid_keys = GRID_KEYS
    default_grid = DEFAULT_GRID
    unchained = UNCHAINED

    def recognises(self, model: str) -> bool:
        from mdp_cli.models import canonical_name

        prefix, _, bare = str(model).rpartition(":")
        if prefix and prefix != "timm":  # tv:NAME, or the user's own file.py:factory / package.module:factory
            return False
        name = canonical_name(bare)
        if name.startswith(("deit_", "vit_")):
            return True
        try:
            import timm

            return timm.is_model(name) and timm.models.model_entrypoint(name).__module__ in VIT_MODULES
        except Exception:  # a name timm does not know: another family's (or nobody's)
            return False

    def _model_name(self, cfg: Mapping[str, Any]) -> str:
        from mdp_cli.models import canonical_name

        return canonical_name(str(cfg["model"]))

    def _model(self, cfg: Mapping[str, Any]):
        """The dense timm model at the configured resolution (``img_size``; a ``dynamic_img_size`` model is
        created, and exported, at that fixed size) with ``--pretrained`` weights, whose position embedding
        (and patch kernel) timm resamples when they were trained at another size."""
        name = self._model_name(cfg)
        model = create_at_resolution(name, cfg)
        patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
        res = cfg.get("resolution")
        if res is not None and patch and any(int(res) % int(p) for p in patch):
            lo = max(int(res) // int(patch[0]), 1) * int(patch[0])
            raise MdpError(f"--resolution {res} is not a multiple of {name}'s patch size {int(patch[0])} "
                           f"(use {lo} or {lo + int(patch[0])})")
        if cfg.get("pretrained"):
            load_vit_weights(model, cfg["pretrained"])
        return model.eval()

    def _space(self, model, name, steps, batch, dtype):
        from mdp_cli.space.vit import build_vit_space

        return build_vit_space(model, name, steps, batch=batch, dtype=dtype)

    def _tables(self, space, rows):
        from mdp_cli.latency.counts import space_counts
        from mdp_cli.latency.vit_tables import split_attention_counts, vit_tables

        return vit_tables(space, {"rows": rows}), {"counts": split_attention_counts(space, space_counts(space))}

    def _importance(self, model, batches: Iterable, space, **options) -> dict[str, Any]:
        from mdp_cli.importance.vit import vit_importance

        return vit_importance(model, batches, space, **options)

    def _has_classifier(self, model) -> bool:
        from mdp_cli.space.vit import vit_facts

        return vit_facts(model)["num_classes"] > 0

    def export(self, discovered, choice, kept, importance):
        from mdp_cli.export.vit import export_vit

        return export_vit(discovered.model, choice, kept, importance)

    def write_onnx(self, net, arch, shape, path):
        from mdp_cli.export.onnx import check_onnx
        from mdp_cli.export.vit import export_vit_onnx

        export_vit_onnx(net, str(path), arch)
        return check_onnx(net, shape, path)
