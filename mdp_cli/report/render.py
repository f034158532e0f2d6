"""One self-contained HTML page from a run directory's artifacts: styles inline, plots as base64 PNG, no
external URL. Every number shown from an artifact carries it exactly in ``data-value`` (and its place in
``data-field``), so a test can check the page against the files it was made from."""

from __future__ import annotations

import datetime as _dt
import html
from pathlib import Path
from typing import Any, Iterable, Sequence

from mdp_cli import __version__
from mdp_cli.artifacts import is_finite_number
from mdp_cli.report import plots
from mdp_cli.report.commands import reproduce
from mdp_cli.report.gather import RunArtifacts

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
 color:#222;padding:0 1em;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}th,td{border:1px solid #ddd;padding:.25em .6em}
th{background:#f3f3f3;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.removed td{color:#999}.absent{color:#8a5a00;background:#fff7e6;padding:.5em .8em;border-left:3px solid #e0a030}
.note{color:#a00}pre{background:#f6f6f6;padding:.7em;overflow-x:auto;font-size:.85em}img{max-width:100%}
details{margin:.5em 0}
"""

# Sets data-images on <body> once the page has loaded: the number of images when every one decoded to a
# picture of non-zero width, "broken" otherwise (what the headless-browser test reads back).
IMAGE_CHECK = """
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var ok = images.every(function (i) { return i.complete && i.naturalWidth > 0; });
  document.body.setAttribute('data-images', ok ? String(images.length) : 'broken');
});
"""


REMOVED = ' class="removed"'


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, fmt: str, field: str) -> str:
    """A table cell with a number: shown with ``fmt``, exact in ``data-value``."""
    if value is None:
        return '<td class="num">&ndash;</td>'
    return (f'<td class="num" data-field="{_e(field)}" data-value="{_e(repr(value))}">'
            f'{_e(format(value, fmt))}</td>')


def _table(head: Sequence[str], rows: Iterable[str]) -> str:
    return ("<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>\n"
            + "\n".join(rows) + "</table>")


def _img(png: str, alt: str) -> str:
    return f'<p><img alt="{_e(alt)}" src="data:image/png;base64,{png}"></p>'


def _absent(text: str) -> str:
    return f'<p class="absent">{text}</p>'


def render(found: RunArtifacts, report_path: Path | None = None) -> str:
    cfg = found.config or {}
    title = f"mdp report: {cfg.get('model') or (found.problem or {}).get('name') or found.run_dir.name}"
    parts = [f"<h1>{_e(title)}</h1>", _header(found)]
    if found.notes:
        parts.append("".join(f'<p class="note">{_e(n)}</p>' for n in found.notes))
    parts += [_pareto(found), _widths(found), _latency(found), _calibration(found), _accuracy(found), _refine(found),
              _commands(found, report_path)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{STYLE}</style></head>\n<body>\n" + "\n".join(parts)
            + f"\n<script>{IMAGE_CHECK}</script>\n</body></html>\n")


# ------------------------------------------------------------------------------------------------- header

def _header(found: RunArtifacts) -> str:
    cfg, problem = found.config or {}, found.problem or {}
    prov = problem.get("provenance") or {}
    export = found.exports[0][1] if found.exports else {}
    versions = sorted({str(((a or {}).get("provenance") or {}).get("versions", {}).get("mdp"))
                       for a in (found.solution, found.sweep, export, {"provenance": prov})} - {"None"})
    created = sorted(str(((a or {}).get("provenance") or {}).get("created")) for a in
                     (found.solution, found.sweep, export, {"provenance": prov}, found.refine)
                     if ((a or {}).get("provenance") or {}).get("created"))
    profile = cfg.get("profile") or {}
    weights = cfg.get("pretrained") or ("random init (seeded): importance and accuracy mean nothing"
                                        if cfg.get("random_init") else None)
    lut = prov.get("lut")
    lut_text = (f"{lut} ({prov.get('dtype', profile.get('dtype'))}, batch {prov.get('batch', profile.get('batch'))}, "
                f"{prov.get('threads', profile.get('threads'))} thread(s), runtime {profile.get('runtime', 'eager')}, "
                f"{profile.get('stat', 'median')})") if lut else None
    rows = [("run directory", found.run_dir), ("model", cfg.get("model") or problem.get("name")),
            ("family", cfg.get("family")), ("resolution", cfg.get("resolution") or prov.get("resolution")),
            ("weights", weights), ("importance data", (cfg.get("score") or {}).get("data")),
            ("device (LUT)", prov.get("device") or profile.get("device")),
            ("device (export timed on)", export.get("device")),
            ("LUT", lut_text), ("budget", (cfg.get("solve") or {}).get("budget")),
            ("mdp version of the run", ", ".join(versions) or None),
            ("artifacts created", f"{created[0]} .. {created[-1]}" if created else None),
            ("report made", f"{_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')} by mdp {__version__}")]
    if found.state:
        rows.append(("stages recorded (state.json)", ", ".join(found.state.get("stages", {}))))
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows
                               if v not in (None, "")) + "</table>"


# ------------------------------------------------------------------------------------------------- sweep

def _chosen_point(found: RunArtifacts) -> tuple[float, float] | None:
    s = found.solution
    if not s or not s.get("dense_latency") or not s.get("dense_objective"):
        return None
    return s["predicted_latency"] / s["dense_latency"], s["objective"] / s["dense_objective"]


def _pareto(found: RunArtifacts) -> str:
    out = ["<h2>Pareto front: importance kept vs predicted latency</h2>"]
    sweep = found.sweep
    if sweep is None:
        out.append(_absent(f"No budget sweep in this run (no sweep.json). Make one with <code>mdp solve "
                           f"{_e(found.run_dir)} --sweep 0.3:0.9:0.1</code> (writes {_e(found.run_dir)}/sweep.json), "
                           "or set <code>solve.sweep: \"0.3:0.9:0.1\"</code> in the config (or <code>mdp run "
                           "--sweep 0.3:0.9:0.1</code>) and run <code>mdp run</code> again."))
        return "\n".join(out)
    chosen = _chosen_point(found)
    measured = None
    if chosen and found.exports and found.exports[0][1].get("measured_fraction") is not None:
        measured = (found.exports[0][1]["measured_fraction"], chosen[1])
    out.append(f"<p>Sweep <code>{_e(sweep['spec'])}</code>, {_e(sweep['latency_model'])} latency model"
               f"{'' if sweep.get('blocks_enabled', True) else ', blocks never removed'}; dense latency "
               f"{sweep['dense_latency']:.4g} {_e(sweep['units'])} (predicted). Each budget is the proven optimum "
               "unless its status says otherwise.</p>")
    out.append(_img(plots.pareto_plot(sweep["points"], chosen, measured), "Pareto front"))
    rows = []
    for p in sweep["points"]:
        key = f"sweep.{p['budget']!r}"
        if p["status"] == "infeasible":
            rows.append(f"<tr>{_num(p['budget'], '.3g', key + '.budget')}<td>infeasible</td>"
                        f"<td colspan=\"6\">{_e(p.get('message', ''))}</td></tr>")
            continue
        removed = sum(not k for k in p["blocks"].values())
        pruned = sum(p["choice"][d["name"]] != d["size"] for d in sweep["dims"] if d["name"] in p["choice"])
        rows.append(f"<tr>{_num(p['budget'], '.3g', key + '.budget')}<td>{_e(p['status'])}</td>"
                    + _num(p["predicted_latency"], ".4g", key + ".predicted_latency")
                    + _num(p["latency_fraction"], ".1%", key + ".latency_fraction")
                    + _num(p["objective"], ".5g", key + ".objective")
                    + _num(p.get("importance_fraction"), ".1%", key + ".importance_fraction")
                    + f"<td class=\"num\">{pruned}</td><td class=\"num\">{removed}</td></tr>")
    out.append(_table(("budget (of dense)", "status", f"predicted latency ({sweep['units']})", "of dense",
                       "importance kept", "of dense", "dims pruned", "blocks removed"), rows))
    out.append(_sweep_widths(sweep))
    return "\n".join(out)


def _sweep_widths(sweep: dict[str, Any]) -> str:
    """Every budget's chosen width per dim (and removed blocks), folded away: the front in detail."""
    solved = [p for p in sweep["points"] if p["status"] != "infeasible"]
    if not solved:
        return ""
    head = ["dim", "full"] + [f"{p['budget']:g}" for p in solved]
    rows = [f"<tr><td>{_e(d['name'])}</td><td class=\"num\">{d['size']}</td>"
            + "".join(_num(p["choice"].get(d["name"]), "d", f"sweep.{p['budget']!r}.choice.{d['name']}")
                      for p in solved) + "</tr>" for d in sweep["dims"]]
    rows.append("<tr><td>removed blocks</td><td></td>" + "".join(
        f"<td>{_e(', '.join(b for b, k in p['blocks'].items() if not k) or '-')}</td>" for p in solved) + "</tr>")
    return f"<details><summary>Chosen widths at every budget</summary>{_table(head, rows)}</details>"


# ------------------------------------------------------------------------------------------------- widths

# A dim kept at this fraction of its width or less is flagged: the 1/8-width bottlenecks that recovered worst in
# a one-epoch finetune (ResNet-18, served batch 32, docs/results.md)
NARROW_FRACTION = 1 / 8

def _widths(found: RunArtifacts) -> str:
    out = ["<h2>Chosen width of every dim, and the blocks</h2>"]
    solution = found.solution
    dims = (found.problem or {}).get("dims") or [dict(d, block=None) for d in (found.sweep or {}).get("dims", [])]
    if solution is None or not dims:
        missing = "solution.json" if solution is None else "problem.json"
        out.append(_absent(f"No {missing} in this run: run <code>mdp run CONFIG --run-dir {_e(found.run_dir)}</code> "
                           "(or <code>mdp solve RUN_DIR --budget B -o RUN_DIR/solution.json</code>)."))
        return "\n".join(out)
    kept_blocks = solution.get("blocks", {})
    removed_blocks = {b for b, k in kept_blocks.items() if not k}
    names, fractions, removed, rows, narrow = [], [], [], [], []
    for d in dims:
        kept = solution["choice"].get(d["name"], d["size"])
        gone = d.get("block") in removed_blocks or any(d["name"].startswith(b + ".") for b in removed_blocks)
        names.append(d["name"])
        fractions.append(kept / d["size"])
        removed.append(gone)
        is_narrow = not gone and kept / d["size"] <= NARROW_FRACTION
        if is_narrow:
            narrow.append(f"{d['name']} {kept}/{d['size']}")
        key = f"width.{d['name']}"
        flag = "block removed" if gone else "narrow" if is_narrow else ""
        rows.append(f"<tr{REMOVED if gone else ''}><td>{_e(d['name'])}</td>"
                    f"<td>{_e(d.get('block') or '')}</td>{_num(d['size'], 'd', key + '.full')}"
                    f"{_num(kept, 'd', key + '.kept')}{_num(kept / d['size'], '.1%', key + '.fraction')}"
                    f"<td>{flag}</td></tr>")
    out.append(f"<p>Budget {solution['budget']:.4g} {_e(solution.get('units', 'ms'))}: predicted "
               f"{solution['predicted_latency']:.4g} {_e(solution.get('units', 'ms'))} "
               f"({solution['predicted_latency'] / solution['dense_latency']:.1%} of dense), status "
               f"{_e(solution['status'])}. Dims in network order.</p>")
    out.append(_img(plots.widths_plot(names, fractions, removed), "kept width per dim"))
    out.append(_table(("dim", "block", "dense width", "kept width", "kept fraction", ""), rows))
    if narrow:
        out.append(f'<p class="note" data-field="narrow_dims" data-value="{len(narrow)}">{len(narrow)} dim(s) kept at '
                   f"1/8 of their width or less: {_e(', '.join(narrow))}. Such bottlenecks kept accuracy right after "
                   "pruning but recovered worst in a short finetune in mdp's benchmarks (docs/results.md); "
                   "<code>solve.min_keep: 0.25</code> (<code>--min-keep</code>) rules them out if you finetune "
                   "briefly.</p>")
    blocks = (found.problem or {}).get("blocks") or [{"name": b, "removable": True} for b in kept_blocks]
    block_rows = []
    for b in blocks:
        kept = kept_blocks.get(b["name"], True)
        state = "kept" if kept else "removed"
        block_rows.append(f"<tr{'' if kept else REMOVED}><td>{_e(b['name'])}</td>"
                          f"<td>{'yes' if b['removable'] else 'no (always kept)'}</td>"
                          f'<td data-field="block.{_e(b["name"])}" data-value="{state}">'
                          f"{'kept' if kept else '<b>removed</b>'}</td></tr>")
    out.append(f"<p>{len(removed_blocks)} of {len(blocks)} blocks removed"
               + (f": {_e(', '.join(sorted(removed_blocks)))}" if removed_blocks else "") + ".</p>")
    out.append(_table(("block", "removable", "in the pruned model"), block_rows))
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------- latency

_EXPORT_ROWS = (("predicted_ms", "predicted (ms)", ".4g"), ("measured_ms", "measured (ms)", ".4g"),
                ("dense_predicted_ms", "dense predicted (ms)", ".4g"), ("measured_dense_ms", "dense measured (ms)", ".4g"),
                ("predicted_fraction", "predicted / dense", ".1%"), ("measured_fraction", "measured / dense (in turns)", ".1%"),
                ("budget_fraction", "budget / dense", ".1%"), ("fraction_error", "fraction error (predicted vs measured)", "+.1%"),
                ("prediction_error", "absolute error (predicted vs measured)", "+.1%"), ("spread_ms", "measured IQR (ms)", ".3g"),
                ("params", "parameters", ",d"), ("dense_params", "dense parameters", ",d"),
                ("flops", "FLOPs", ",d"), ("dense_flops", "dense FLOPs", ",d"))


def _latency(found: RunArtifacts) -> str:
    out = ["<h2>Predicted vs measured latency of the export</h2>"]
    if not found.exports:
        out.append(_absent("No export in this run (no exported/report.json): <code>mdp run</code> exports and "
                           "measures the pruned model in turns with the dense one."))
        return "\n".join(out)
    labels = [str(path.parent.relative_to(found.run_dir)) for path, _ in found.exports]
    reports = [r for _, r in found.exports]
    measured_any = any(r.get("measured_ms") is not None for r in reports)
    if measured_any:
        budget = reports[0].get("budget_fraction")
        out.append(_img(plots.latency_plot(labels, [r.get("predicted_fraction") for r in reports],
                                           [r.get("measured_fraction") for r in reports], budget),
                        "predicted vs measured latency"))
    else:
        out.append(_absent("The export was not measured (<code>export.measure: false</code>); set it to true and "
                           "run <code>mdp run</code> again to time it against the dense model."))
    head = ["", *labels]
    rows = []
    for key, name, fmt in _EXPORT_ROWS:
        if all(r.get(key) is None for r in reports):
            continue
        rows.append(f"<tr><th>{_e(name)}</th>" + "".join(_num(r.get(key), fmt, f"export.{i}.{key}")
                                                        for i, r in enumerate(reports)) + "</tr>")
    for key, name in (("within_tolerance", "budget met (within tolerance)"), ("device", "device"),
                      ("runtime", "runtime"), ("clock", "clock"), ("batch", "batch"), ("stat", "statistic"),
                      ("tolerance", "tolerance")):
        if any(r.get(key) is not None for r in reports):
            rows.append(f"<tr><th>{_e(name)}</th>" + "".join(f"<td>{_e(r.get(key, ''))}</td>" for r in reports) + "</tr>")
    out.append(_table(head, rows))
    return "\n".join(out)


def _calibration(found: RunArtifacts) -> str:
    out = ["<h2>The latency table inside the network (calibration)</h2>"]
    calibration = found.calibration
    if calibration is None:
        out.append(_absent("No calibration.json in this run (<code>calibrate.configs: 0</code>, or a run from before "
                           "the stage): <code>mdp run</code> times the dense model and 16 pruned configurations in "
                           "turns and fits how the table's terms add up inside the network (docs/latency.md)."))
        return "\n".join(out)
    f = calibration["fit"]
    measured, plain, after = f.get("measured"), f.get("predicted_before"), f.get("predicted_after")
    if measured and plain and after and len(measured) == len(plain) == len(after) and measured[0] > 0:
        fractions = [[v / series[0] for v in series[1:]] for series in (measured, plain, after)]
        out.append(_img(plots.calibration_plot(fractions[0], fractions[1], fractions[2] if f.get("accepted") else None),
                        "predicted vs measured fraction of dense of the calibration's configurations"))
    if not f.get("accepted"):
        verdict = "not used: the plain table's shape was kept (within timing noise, or the fit was not clearly better)"
    elif f.get("accepted_on") == "high_pruning":
        verdict = ("used: the problem's tables are the calibrated ones (clearly better below 40 % of dense, where the "
                   "plain table erred)")
    else:
        verdict = "used: the problem's tables are the calibrated ones"
    high = f.get("high_pruning") if isinstance(f.get("high_pruning"), dict) else {}
    rows = [f"<tr><th>{_e(name)}</th>{_num(value, fmt, 'calibration.' + key)}</tr>" for key, name, value, fmt in (
        ("median_error_before", "plain table: median error of the fraction of dense", f.get("median_error_before"), ".1%"),
        ("median_error_held_out", "fit, on configurations it did not see", f.get("median_error_held_out"), ".1%"),
        ("high_pruning.median_error_before", "plain table, configurations below 40 % of dense",
         high.get("median_error_before"), ".1%"),
        ("high_pruning.median_error_held_out", "fit, configurations below 40 % of dense it did not see",
         high.get("median_error_held_out"), ".1%"),
        ("measurement_disagreement", "the measurement itself: its two halves' fractions of dense apart (median)",
         f.get("measurement_disagreement"), ".1%"),
        ("noise_floor", "noise floor of the rule (3 % since 2026-12-04, 4 % before; or the halves' disagreement if larger)", f.get("noise_floor"), ".1%"),
        ("level", "dense network / sum of its terms (tables scaled to it)", f.get("level"), ".2f"),
        ("weights_share", "the fit's cost per weight kept: its share of the dense network's time", f.get("weights_share"),
         ".1%"),
    ) if value is not None]
    scales = calibration["scales"]
    rows.append(f"<tr><th>scales (compute, memory); overhead per term</th><td>{scales['compute']:.3g}, "
                f"{scales['memory']:.3g}; {calibration['overhead'] * 1000:+.1f} µs</td></tr>")
    rows.append(f"<tr><th>fit</th><td>{_e(verdict)}</td></tr>")
    out.append(_table(["", ""], rows))
    apart = f.get("measurement_disagreement")
    if f.get("measurement_noisy") is True and is_finite_number(apart):
        out.append(f'<p class="note">This machine\'s timings moved {apart:.1%} between the two halves of the '
                   "calibration's rounds: no latency prediction can be checked more closely than that here. Profile "
                   "and calibrate on a quiet machine (docs/latency.md §1).</p>")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------- accuracy

_STAGE_NAMES = {"dense": "dense (before pruning)", "pruned": "pruned (before finetuning)",
                "finetuned": "pruned + finetuned", "other": "other"}


def _accuracy(found: RunArtifacts) -> str:
    out = ["<h2>Accuracy</h2>"]
    rd = _e(found.run_dir)
    hints = {
        "dense": f"<code>mdp eval MODEL --pretrained WEIGHTS --data DATA -o {rd}/eval_dense.json</code>",
        "pruned": f"<code>mdp eval {rd}/exported --data DATA -o {rd}/eval_pruned.json</code>",
        "finetuned": (f"<code>mdp finetune {rd}/exported --data DATA -o {rd}/finetuned</code> then <code>mdp eval "
                      f"{rd}/finetuned/best --data DATA -o {rd}/eval_finetuned.json</code>"),
    }
    have = {e.stage for e in found.evals}
    if found.evals:
        rows = []
        for ev in found.evals:
            r, prov = ev.record, ev.record.get("provenance", {})
            key = f"eval.{ev.path.relative_to(found.run_dir)}"
            rows.append(f"<tr><td>{_e(_STAGE_NAMES[ev.stage])}</td><td>{_e(prov.get('model', ''))}</td>"
                        f"<td>{_e(prov.get('data', ''))} [{_e(prov.get('split', ''))}]</td>"
                        f"{_num(r.get('images'), 'd', key + '.images')}{_num(r['top1'], '.2f', key + '.top1')}"
                        f"{_num(r['top5'], '.2f', key + '.top5')}{_num(r['loss'], '.4f', key + '.loss')}"
                        f"<td>{_e(ev.path.relative_to(found.run_dir))}</td></tr>")
        out.append(_table(("model", "evaluated", "data [split]", "images", "top-1 (%)", "top-5 (%)", "loss", "file"), rows))
    curves = []
    for ft in found.finetunes:
        epochs = [row for row in ft.epochs if row.get("val_top1") is not None]
        name = str(ft.path.relative_to(found.run_dir))
        curves.append((name, [row["epoch"] for row in epochs], [row["val_top1"] for row in epochs]))
        cfg = ft.run["config"]
        rows = []
        for row in epochs:
            key = f"finetune.{name}.{int(row['epoch'])}"
            rows.append(f"<tr>{_num(row['epoch'], '.0f', key + '.epoch')}"
                        f"{_num(row.get('train_loss'), '.4f', key + '.train_loss')}"
                        f"{_num(row['val_top1'], '.2f', key + '.val_top1')}"
                        f"{_num(row.get('val_top5'), '.2f', key + '.val_top5')}</tr>")
        out.append(f"<p>Finetuning <code>{_e(name)}</code>: {_e(cfg.get('model'))} on {_e(cfg.get('data'))}, "
                   f"{_e(cfg.get('epochs'))} epochs ({len(epochs)} done), kd {_e(cfg.get('kd'))}.</p>")
        out.append(_table(("epoch", "train loss", "val top-1 (%)", "val top-5 (%)"), rows))
    if found.evals or curves:
        out.insert(1, _img(plots.accuracy_plot([_STAGE_NAMES[e.stage] for e in found.evals],
                                               [e.record["top1"] for e in found.evals], curves), "accuracy"))
    if found.finetunes:
        have.add("finetuned")
    missing = [stage for stage in ("dense", "pruned", "finetuned") if stage not in have]
    if missing:
        out.append(_absent("Not in this run: " + "; ".join(f"{_STAGE_NAMES[s]}, from {hints[s]}" for s in missing)
                           + ". The report reads every <code>mdp eval -o</code> JSON and every "
                             "<code>mdp finetune -o</code> directory inside the run directory."))
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------- refine

def _refine(found: RunArtifacts) -> str:
    out = ["<h2>Refinement rounds</h2>"]
    refine = found.refine
    if refine is None:
        out.append(_absent("No refinement in this run (no refine.json): <code>mdp run CONFIG --refine</code> "
                           "measures the export, re-profiles the entries that disagree and solves again until the "
                           "measured latency meets the budget."))
        return "\n".join(out)
    out.append(f"<p>Outcome: <b>{_e(refine['outcome'])}</b> &mdash; {_e(refine['reason'])}</p>")
    rounds = refine["rounds"]
    if rounds:
        out.append(_img(plots.refine_plot(rounds, _refine_target(found)), "refinement rounds"))
    rows = []
    for r in rounds:
        key = f"refine.{r['round']}"
        rows.append(f"<tr>{_num(r['round'], 'd', key + '.round')}"
                    f"{_num(r['budget_solved'], '.1%', key + '.budget_solved')}"
                    f"{_num(r['predicted_fraction'], '.1%', key + '.predicted_fraction')}"
                    f"{_num(r['measured_fraction'], '.1%', key + '.measured_fraction')}"
                    f"{_num(r['rows_reprofiled'], 'd', key + '.rows_reprofiled')}"
                    f'<td data-field="{key}.met" data-value="{r["met"]}">{"yes" if r["met"] else "no"}</td></tr>')
    out.append(_table(("round", "budget solved (of dense)", "predicted (of dense)", "measured (of dense)",
                       "LUT rows re-profiled", "met"), rows))
    return "\n".join(out)


def _refine_target(found: RunArtifacts) -> float | None:
    """The budget the refinement aims at, as a fraction of dense: refine.json's own when it says, else the
    config's fractional budget, else the export's."""
    budget = (found.refine or {}).get("target_fraction")
    if not isinstance(budget, (int, float)) or isinstance(budget, bool):
        budget = ((found.config or {}).get("solve") or {}).get("budget")
    if isinstance(budget, (int, float)) and not isinstance(budget, bool) and 0 < budget <= 1:
        return float(budget)
    return found.exports[0][1].get("budget_fraction") if found.exports else None


# ------------------------------------------------------------------------------------------------- commands

def _commands(found: RunArtifacts, report_path: Path | None) -> str:
    out = ["<h2>Reproduce</h2>", "<p>The commands that remake this run directory, from what its artifacts "
           "record. Unchanged stages are skipped by <code>mdp run</code> (state.json); latencies and finetuning "
           "on another machine or under another load give other numbers.</p>"]
    for what, text in reproduce(found, report_path):
        out.append(f"<p>{_e(what)}:</p><pre>{_e(text)}</pre>")
    return "\n".join(out)
