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
from mdp_cli.settings import setting
from mdp_cli.errors import MdpError
from mdp_cli.families import register_family
from mdp_cli.families.base import Discovered, Family
from mdp_cli.latency.engine import Measurement

# timm modules whose models are (subclasses of) timm's VisionTransformer; space/vit.py refuses, in one
# line, the variants it does not support.
VIT_MODULES = ("timm.models.vision_transformer", "timm.models.deit")
STEP_KEYS = ("embed", "heads", "qk", "v", "mlp")
GRID_KEYS = ("embed", "heads", "qk", "v", "hidden")
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


def load_vit_weights(model, path) -> None:
    """Load a local checkpoint through timm's ViT checkpoint filter: it resamples the position embedding to
    the model's grid (weights trained at 518 px load into a model created at 224 px), resizes the patch
    kernel, and converts the original DINOv2 / CLIP key layouts. The weights must then fit exactly."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    from mdp_cli.models import read_state_dict

    state = {k.removeprefix("module."): v for k, v in read_state_dict(path).items()}
    try:
        state = checkpoint_filter_fn(state, model)
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


@dataclasses.dataclass
class VitSpaceSection:
    steps: Optional[Any] = setting(None, doc="units per option step, e.g. embed=16,heads=1,qk=8,v=8,mlp=64")


@register_family
class VitFamily(Family):
    name = "vit"
    title = "ViT"
    summary = "timm VisionTransformer (DeiT, DeiT-III, ViT, DINOv2): embedding, heads, q/k, v, MLP, attention/MLP branches"
    space_section = VitSpaceSection
    default_model = "deit_tiny"
    default_resolution = None  # the model's own img_size
    from mdp_cli.latency.vit_plan import VIT_TIMING as timing  # noqa: E402  (a class attribute)
    priority = 10
    score_methods = frozenset((o, c) for o in ("labels", "pseudo_labels", "features") for c in ("taylor", "fisher"))

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

    def check_space(self, space: dict[str, Any], where: str) -> dict[str, Any]:
        if space.get("steps") is not None:
            space["steps"] = parse_mapping(space["steps"], f"{where}: space.steps (--steps)", STEP_KEYS)
        return space

    def parse_grid(self, grid: Any, where: str) -> dict[str, int] | None:
        if grid is None:
            return None
        parsed = parse_mapping(grid, f"{where}: profile.grid (--grid)", GRID_KEYS + tuple(GRID_ALIASES))
        return {GRID_ALIASES.get(k, k): v for k, v in parsed.items()}

    def _model(self, cfg: Mapping[str, Any]):
        """The dense timm model at the configured resolution (``img_size``; a ``dynamic_img_size`` model is
        created, and exported, at that fixed size) with ``--pretrained`` weights, whose position embedding
        (and patch kernel) timm resamples when they were trained at another size."""
        from mdp_cli.models import canonical_name, create_model

        name = canonical_name(str(cfg["model"]))
        overrides = {k: v for k, v in (("img_size", cfg.get("resolution")), ("num_classes", cfg.get("num_classes")))
                     if v is not None}
        try:
            model = create_model(name, **overrides)
        except TypeError as exc:
            if "img_size" not in str(exc):
                raise
            raise MdpError(f"{name} has a fixed input size {native_size(name)} (timm cannot create it at "
                           f"--resolution {cfg['resolution']}); use --resolution {native_size(name)} or omit it") from None
        patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
        res = cfg.get("resolution")
        if res is not None and patch and any(int(res) % int(p) for p in patch):
            lo = max(int(res) // int(patch[0]), 1) * int(patch[0])
            raise MdpError(f"--resolution {res} is not a multiple of {name}'s patch size {int(patch[0])} "
                           f"(use {lo} or {lo + int(patch[0])})")
        if cfg.get("pretrained"):
            load_vit_weights(model, cfg["pretrained"])
        return model.eval()

    def discover(self, cfg: Mapping[str, Any]) -> Discovered:
        from mdp_cli.models import canonical_name
        from mdp_cli.space.vit import build_vit_space

        p = cfg["profile"]
        model = self._model(cfg)
        space = build_vit_space(model, canonical_name(cfg["model"]), cfg["space"].get("steps"), batch=int(p["batch"]),
                                dtype=p["dtype"])
        return Discovered(model, space)

    def measurements(self, discovered: Discovered, grid: Any) -> list[Measurement]:
        from mdp_cli.latency.vit_plan import vit_measurements

        return vit_measurements(discovered.space, grid)

    def build_problem(self, cfg, discovered, lut, importance, importance_path):
        from mdp_cli.latency.counts import space_counts
        from mdp_cli.latency.vit_tables import rows_from_lut, split_attention_counts, vit_tables
        from mdp_cli.space.vit import vit_problem

        if importance is None:
            raise MdpError(f"a ViT problem needs --importance (from 'mdp score --model {cfg['model']}')")
        space = discovered.space
        planned = {m.key for m in self.measurements(discovered, cfg["profile"]["grid"])}
        tables = vit_tables(space, {"rows": rows_from_lut(lut, space, only=planned)})
        counts = split_attention_counts(space, space_counts(space))
        return vit_problem(space, tables, importance, lut_file=str(lut.path), importance_file=str(importance_path),
                           device=lut.device, stat=lut.stat, counts=counts)

    def score(self, cfg, discovered: Discovered, batches: Iterable, device: str) -> dict[str, Any]:
        from mdp_cli.importance.objectives import make_loss
        from mdp_cli.importance.vit import vit_importance
        from mdp_cli.space.vit import vit_facts

        s = cfg["score"]
        objective, criterion = s.get("objective", "labels"), s.get("criterion", "taylor")
        loss = make_loss(objective, int(s.get("seed", 0)), has_classifier=vit_facts(discovered.model)["num_classes"] > 0)
        record = vit_importance(discovered.model, batches, discovered.space, loss_fn=loss, device=device,
                                criterion=criterion)
        prov = record["provenance"]
        return {"dims": record["dims"], "batches": prov.get("batches"), "images": prov.get("images"),
                "method": prov.get("method", "taylor_first_order"), "objective": objective, "criterion": criterion,
                "steps": cfg["space"].get("steps")}

    def export(self, discovered: Discovered, choice, kept, importance):
        from mdp_cli.export.vit import export_vit

        return export_vit(discovered.model, choice, kept, importance)

    def write_onnx(self, net, arch, shape, path):
        from mdp_cli.export.onnx import check_onnx
        from mdp_cli.export.vit import export_vit_onnx

        export_vit_onnx(net, str(path), arch)
        return check_onnx(net, shape, path)
