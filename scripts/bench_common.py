"""Shared parts of the accuracy benchmarks (bench_vs_torch_pruning.py, bench_ablation.py).

- dense models trained by ``mdp_cli.train.finetune`` on built-in real data, cached on disk by their settings;
- the mdp side through the library (``pipeline``: profile -> score -> problem, then solve -> export);
- latency measured in one process, in turns, one thread (``mdp_cli.latency.timing``);
- one finetune recipe for every method (``mdp_cli.train.engine.finetune_module``);
- seed-level statistics: mean ± sd, paired t statistic and an exact sign-flip permutation test;
- JSON, markdown tables and accuracy-vs-latency plots.

What is seeded: the dense training (seed 0), the scoring batches (seed 0) and therefore every pruned model are
fixed; the benchmark's seeds are the finetune seeds (data order, augmentation, dropout), the same seed for every
method, so that the differences are paired.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ------------------------------------------------------------------------------------------------ statistics

def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = list(values)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def sign_flip_p(diffs: Sequence[float]) -> float:
    """Exact two-sided p-value of the paired sign-flip permutation test: under the null hypothesis (no
    difference between the methods) each paired difference is as likely positive as negative, so every one of
    the 2^n sign patterns is equally likely; p is the share of patterns whose |mean| is at least the observed
    one. Needs no distributional assumption; with n seeds the smallest possible p is 2 / 2^n."""
    diffs = [float(d) for d in diffs]
    n = len(diffs)
    if n == 0:
        return float("nan")
    observed = abs(sum(diffs))
    eps = 1e-12 * max(1.0, observed)
    hits = sum(abs(sum(s * d for s, d in zip(signs, diffs))) >= observed - eps
               for signs in itertools.product((1, -1), repeat=n))
    return hits / 2 ** n


def paired_t(diffs: Sequence[float]) -> float:
    """Paired t statistic: mean difference over its standard error (inf when all differences are equal and
    non-zero, nan when they are all zero)."""
    mean, sd = mean_sd(diffs)
    if sd == 0:
        return float("nan") if mean == 0 else math.copysign(float("inf"), mean)
    return mean / (sd / math.sqrt(len(diffs)))


def t_two_sided_p(t: float, df: int) -> float | None:
    """Two-sided p of Student's t (scipy when installed, else None: the permutation p stands alone)."""
    try:
        from scipy import stats
    except ImportError:
        return None
    if math.isnan(t):
        return None
    return float(2 * stats.t.sf(abs(t), df))


def paired_stats(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Seed-level comparison of method a against method b (same seeds, same order)."""
    if len(a) != len(b):
        raise ValueError("paired_stats needs one value per seed for both methods")
    diffs = [x - y for x, y in zip(a, b)]
    (ma, sa), (mb, sb), (md, sdd) = mean_sd(a), mean_sd(b), mean_sd(diffs)
    t = paired_t(diffs)
    return {"n": len(diffs), "mean_a": ma, "sd_a": sa, "mean_b": mb, "sd_b": sb, "mean_diff": md, "sd_diff": sdd,
            "t": t, "p_t": t_two_sided_p(t, len(diffs) - 1), "p_sign_flip": sign_flip_p(diffs),
            "a_wins": sum(d > 0 for d in diffs), "b_wins": sum(d < 0 for d in diffs)}


def verdict(stats: Mapping[str, Any], alpha: float = 0.05) -> str:
    """'win' / 'loss' (of method a) when the paired t-test rejects at ``alpha``, else 'tie'. Without scipy, the
    sign-flip test decides; note that its smallest p is 2 / 2^n, so with 5 seeds (0.0625) it can never reject
    at 0.05: it is reported beside the t-test as the distribution-free check, not used alone."""
    p = stats["p_t"] if stats.get("p_t") is not None else stats["p_sign_flip"]
    if p is not None and p <= alpha:
        return "win" if stats["mean_diff"] > 0 else "loss"
    return "tie"


# ------------------------------------------------------------------------------------------------ data, training

def data_spec(train_subset: int | None, val_subset: int | None, name: str = "builtin:fashion-mnist") -> str:
    sizes = [f"{k}={v}" for k, v in (("train", train_subset), ("val", val_subset)) if v]
    return name + ("?" + "&".join(sizes) if sizes else "")


def train_dense(model: str, data: str, resolution: int, epochs: int, cache: Path, *, lr: float = 0.05,
                batch_size: int = 64, augment: bool = False, num_classes: int = 10) -> Path:
    """Dense weights trained from scratch by ``mdp finetune``'s library function, cached by their settings:
    a rerun with the same settings reads them back."""
    from mdp_cli.train.engine import FinetuneConfig, finetune

    key = {"model": model, "data": data, "resolution": resolution, "epochs": epochs, "lr": lr,
           "batch_size": batch_size, "augment": augment, "num_classes": num_classes, "seed": 0}
    name = f"{model}_{resolution}px_" + "_".join(f"{v}" for v in (epochs, lr, batch_size, int(augment)))
    out = cache / "dense" / name
    weights = out / "final" / "model.safetensors"
    key_file = out / "bench_key.json"
    if weights.is_file() and key_file.is_file() and json.loads(key_file.read_text()) == key:
        log(f"dense {model}: cached {weights}")
        return weights
    if out.exists():
        import shutil

        shutil.rmtree(out)
    cfg = FinetuneConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=5e-4, img_size=resolution,
                         num_classes=num_classes, augment=augment, seed=0, warmup_epochs=min(1.0, epochs / 10),
                         optimizer="sgd" if "resnet" in model else "adamw")
    if cfg.optimizer == "adamw":
        cfg.lr, cfg.weight_decay = min(lr, 1e-3), 0.05
    log(f"dense {model}: training {epochs} epochs on {data} at {resolution} px")
    row = finetune(model, data, out, cfg, progress=False, log=log)
    log(f"dense {model}: val top1 {row.get('val_top1', float('nan')):.2f}")
    key_file.write_text(json.dumps(key, sort_keys=True))
    return weights


def recipe(epochs: int, seed: int, *, lr: float = 0.01, batch_size: int = 64, train_subset: int | None = None,
           val_subset: int | None = None, augment: bool = False, optimizer: str = "sgd"):
    """The one finetune recipe every method gets (SGD, cosine, label smoothing 0.1, no distillation)."""
    from mdp_cli.train.engine import FinetuneConfig

    return FinetuneConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, weight_decay=5e-5,
                          augment=augment, seed=seed, train_limit=train_subset, val_limit=val_subset)


def finetuned_top1(module, data: str, cfg, config: Mapping[str, Any]) -> float:
    """Val top-1 of a copy of ``module`` after finetuning it with ``cfg`` (the module itself is untouched)."""
    from mdp_cli.train.engine import finetune_module

    rows = finetune_module(copy.deepcopy(module), data, cfg, dict(config))
    return float(rows[-1]["val_top1"])


def top1(module, data: str, config: Mapping[str, Any], limit: int | None = None) -> float:
    from mdp_cli.train.engine import evaluate_module

    return float(evaluate_module(module, data, dict(config), limit=limit)["top1"])


# ------------------------------------------------------------------------------------------------ mdp side

def mdp_config(model: str, weights: Path, resolution: int, batch: int, score_data: str, cache: Path,
               repeats: int = 30, num_classes: int = 10, space: Mapping[str, Any] | None = None,
               grid: Any = None, coupled: str | None = None,
               score: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The mdp config of a benchmark; ``coupled``: ``score.coupled`` (None: the model family's default);
    ``score``: further ``score`` settings (objective, criterion, normalize)."""
    from mdp_cli.config import load_config

    overrides: dict[str, Any] = {
        "model": model, "resolution": resolution, "pretrained": str(weights), "num_classes": num_classes,
        "profile": {"batch": batch, "threads": 1, "repeats": repeats, "lut_dir": str(cache / "luts")},
        "score": {"data": score_data, "batches": 8, "batch_size": 32, "seed": 0, "coupled": coupled,
                  **{k: v for k, v in (score or {}).items() if v is not None}},
        "export": {"tolerance": 10.0, "measure": True, "repeats": repeats, "onnx": False},
    }
    if space:
        overrides["space"] = dict(space)
    if grid is not None:
        overrides["profile"]["grid"] = grid
    return load_config(None, overrides)


def add_score_flags(parser) -> None:
    """``--objective --criterion --normalize``: the mdp ``score`` settings a benchmark may vary (unset: the
    model family's defaults, as ``mdp run`` uses them); read back with ``score_flags``."""
    from mdp_cli.importance.normalize import NORMALIZE_MODES

    parser.add_argument("--objective", choices=("labels", "pseudo_labels", "distill"),
                        help="mdp: score.objective, the loss the importance is the Taylor/Fisher term of "
                             "(default: the family's)")
    parser.add_argument("--criterion", choices=("taylor", "fisher"), help="mdp: score.criterion (default: the family's)")
    parser.add_argument("--normalize", choices=NORMALIZE_MODES,
                        help="mdp: score.normalize, every dim scaled to one total or one mean per unit (default none)")


def score_flags(args) -> dict[str, Any]:
    return {"objective": args.objective, "criterion": args.criterion, "normalize": args.normalize}


def mdp_run_suffix(cfg: Mapping[str, Any]) -> str:
    """What a benchmark's cache names add for mdp settings other than the ones it first ran with (stem kept,
    summed Taylor importance of the labels, not normalised), so that earlier caches keep their names."""
    s = cfg["score"]
    return (("_stem" if cfg["space"].get("prune_stem") else "")
            + ("" if s.get("coupled", "sum") == "sum" else f"_{s['coupled']}")
            + ("" if s.get("objective", "labels") == "labels" else f"_{s['objective']}")
            + ("" if s.get("criterion", "taylor") == "taylor" else f"_{s['criterion']}")
            + ("" if s.get("normalize", "none") == "none" else f"_norm{s['normalize']}"))


def prepare_mdp(cfg: Mapping[str, Any], run_dir: Path):
    """Profile (the LUT at the config's batch), score and build the problem, cached in ``run_dir``."""
    from mdp_cli.pipeline import discover, run_pipeline
    from mdp_cli.solve import load_problem

    run_pipeline(dict(cfg), run_dir, echo=log, progress=False, check_budget=False, until="problem")
    return discover(cfg), load_problem(run_dir / "problem.json")


def mdp_prune(cfg: Mapping[str, Any], discovered, problem, run_dir: Path, budget: float, name: str = "mdp",
              latency_model: str = "multidim", blocks: bool = True, min_keep: float | None = None):
    """Solve at ``budget`` (one of the solver's variants) and export; returns (pruned module, solution).
    The linear latency model is solved by the monolithic MILP: its tables hold negative entries, on which the
    hub decomposition (mdp 0.1.0) reports feasible budgets as infeasible (see docs/results.md)."""
    from mdp_cli.export.spec import load_exported
    from mdp_cli.pipeline import stage_export
    from mdp_cli.solve import solve_problem

    out = run_dir / f"{name}_{budget:g}"
    solution = solve_problem(problem, budget=budget, latency_model=latency_model, blocks=blocks,
                             time_limit=cfg["solve"].get("time_limit"), min_keep=min_keep,
                             formulation="monolithic" if latency_model == "linear" else "auto")
    solution.save(out / "solution.json", problem=str(run_dir / "problem.json"))
    stage_export(cfg, out / "solution.json", out / "exported", run_dir / "importance.json", discovered,
                 check_budget=False)
    return load_exported(out / "exported"), solution


# ------------------------------------------------------------------------------------------------ real photos

def real_photos(model):
    """scikit-image's bundled real photographs (no download), in ``model``'s eval transform, each also
    flipped horizontally: twice the photos."""
    import torch
    from PIL import Image
    from skimage import data as skdata

    from mdp_cli.data import data_config, make_transform

    names = ["astronaut", "chelsea", "coffee", "rocket", "cat", "immunohistochemistry", "hubble_deep_field",
             "retina", "colorwheel", "logo", "motorcycle_left", "page", "camera", "moon"]
    transform = make_transform(data_config(model), train=False)
    images = []
    for name in names:
        fn = getattr(skdata, name, None)
        if fn is None:
            continue
        try:
            array = fn()
        except Exception:  # some need an optional download (pooch): skipped
            continue
        if array.ndim == 3 and array.shape[2] == 4:
            array = array[:, :, :3]
        tensor = transform(Image.fromarray(array).convert("RGB"))
        images += [tensor, torch.flip(tensor, dims=[2])]
    return torch.stack(images)


# ------------------------------------------------------------------------------------------------ latency

def ratio_in_turns(module, ref, batch: int, resolution: int, repeats: int = 30, warmup: int = 10) -> dict[str, float]:
    """Median latency (ms) of ``module`` and ``ref`` timed in turns in this process, one thread, and their
    ratio (which holds when the shared machine's speed drifts)."""
    import torch

    from mdp_cli.latency.timing import sample_calls_in_turns, threads

    x = torch.randn(batch, 3, resolution, resolution)
    a, b = copy.deepcopy(module).eval(), copy.deepcopy(ref).eval()
    with threads(1):
        times, ref_times = sample_calls_in_turns(lambda: a(x), lambda: b(x), warmup, repeats, "cpu")
    ms, ref_ms = statistics.median(times), statistics.median(ref_times)
    return {"ms": ms, "ref_ms": ref_ms, "ratio": ms / ref_ms}


# ------------------------------------------------------------------------------------------------ output

def _finite(value: Any) -> Any:
    """JSON has no NaN/inf: such floats (an undefined t statistic) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_json(path: Path, data: Any) -> None:
    from mdp_cli.artifacts import write_json as atomic_write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, _finite(data))


def markdown_table(rows: Iterable[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A markdown table of ``rows`` with (key, header) ``columns``; floats to 2 decimals (p-values to 3)."""
    def fmt(key: str, value: Any) -> str:
        if value is None:
            return "–"
        if isinstance(value, float):
            if math.isnan(value):
                return "–"
            return f"{value:.3f}" if key == "p" or key.startswith("p_") else f"{value:.2f}"
        return str(value)

    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(k, row.get(k)) for k, _ in columns) + " |" for row in rows]
    return "\n".join(lines)


def pm(values: Sequence[float]) -> str:
    mean, sd = mean_sd(values)
    return f"{mean:.2f} ± {sd:.2f}"


def plot_accuracy_vs_latency(series: Mapping[str, Sequence[tuple[float, Sequence[float]]]], path: Path,
                             title: str, xlabel: str = "measured latency / dense (in turns)") -> None:
    """One line per method: (latency fraction, per-seed accuracies) points, mean with ±sd error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in series.items():
        points = sorted(points, key=lambda p: p[0])
        if not points:
            continue
        xs = [p[0] for p in points]
        stats = [mean_sd(p[1]) for p in points]
        ax.errorbar(xs, [s[0] for s in stats], yerr=[s[1] for s in stats], marker="o", capsize=3, label=name)
    _label_axes(ax, xlabel, "val top-1 (%)", title)
    _save_figure(fig, path)


def _label_axes(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def line_plots(panels: Sequence[tuple[str, str, str, Mapping[str, tuple[Sequence[float], Sequence[float]]]]],
               path: Path) -> None:
    """One figure of side-by-side line plots, saved at ``path``: each panel is (title, x label, y label,
    {line label: (xs, ys)})."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels) if len(panels) > 1 else 6, 4), squeeze=False)
    for ax, (title, xlabel, ylabel, lines) in zip(axes[0], panels):
        for label, (xs, ys) in lines.items():
            ax.plot(xs, ys, marker="o", label=label)
        _label_axes(ax, xlabel, ylabel, title)
    _save_figure(fig, path)


def cached(path: Path, compute: Callable[[], Any]) -> Any:
    """JSON result cached at ``path`` (reruns skip finished work)."""
    if path.is_file():
        return json.loads(path.read_text())
    value = compute()
    write_json(path, value)
    return value
