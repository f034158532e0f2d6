"""`mdp report RUN_DIR` on a real small run (pipeline + sweep, eval before/after pruning, a short finetune): the
page shows the artifacts' own numbers, every plot is a real PNG, nothing is fetched from outside, what is
absent is said, and a headless Chromium renders it with every image decoded."""

import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
import yaml
from click.testing import CliRunner
from test_cnn_pipeline import TINY
from train_helpers import FASHION_MNIST_MISSING

from mdp_cli.artifacts import write_json
from mdp_cli.cli import main
from mdp_cli.config import load_config
from mdp_cli.report import gather
from mdp_cli.report.render import render

# the real images when installed (make setup); scikit-learn's digits otherwise (slower to import, always there)
DATA = "builtin:digits?train=32&val=32" if FASHION_MNIST_MISSING else "builtin:fashion-mnist?train=32&val=32"


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny run with everything the report can show; refine.json written to the `mdp run --refine` contract."""
    root = tmp_path_factory.mktemp("report")
    cfg = json.loads(json.dumps(TINY))
    cfg["num_classes"] = 10
    cfg["profile"]["lut_dir"] = str(root / "luts")
    cfg["solve"]["sweep"] = "0.4:0.8:0.2"
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run = root / "run"
    invoke("run", config, "--run-dir", run, "-q")
    common = ["--data", DATA, "--no-progress", "--device", "cpu"]
    invoke("eval", "resnet18", "--img-size", 32, "--num-classes", 10, *common, "-o", run / "eval_dense.json")
    invoke("eval", run / "exported", *common, "-o", run / "eval_pruned.json")
    invoke("finetune", run / "exported", *common, "-o", run / "finetuned", "--epochs", 1, "--batch-size", 16)
    invoke("eval", run / "finetuned" / "best", *common, "-o", run / "eval_finetuned.json")
    write_json(run / "refine.json", {
        "schema": "mdp.refine", "version": 1, "provenance": {}, "outcome": "met",
        "reason": "measured 61.0% of dense within 5% of the budget 60.0%",
        "rounds": [{"round": 1, "budget_solved": 0.6, "predicted_fraction": 0.597, "measured_fraction": 0.71,
                    "rows_reprofiled": 12, "met": False},
                   {"round": 2, "budget_solved": 0.52, "predicted_fraction": 0.518, "measured_fraction": 0.61,
                    "rows_reprofiled": 3, "met": True}]})
    invoke("report", run, "-o", root / "report.html")
    return run


@pytest.fixture(scope="module")
def page(run_dir):
    return (run_dir.parent / "report.html").read_text()


class _Cells(HTMLParser):
    """data-field -> (data-value, the cell's text)."""

    def __init__(self):
        super().__init__()
        self.cells, self._open = {}, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "data-field" in attrs:
            self._open = attrs["data-field"]
            self.cells[self._open] = [attrs["data-value"], ""]

    def handle_data(self, data):
        if self._open:
            self.cells[self._open][1] += data

    def handle_endtag(self, tag):
        if tag == "td":
            self._open = None


def cells(page):
    parser = _Cells()
    parser.feed(page)
    return {k: (v, text.strip()) for k, (v, text) in parser.cells.items()}


def number(cell):
    return float(cell[0])


def test_numbers_on_the_page_are_those_of_the_artifacts(run_dir, page):
    found = cells(page)
    sweep = json.loads((run_dir / "sweep.json").read_text())
    assert [p["budget"] for p in sweep["points"]] == [0.4, 0.6, 0.8]
    for p in sweep["points"]:
        key = f"sweep.{p['budget']!r}"
        assert number(found[key + ".budget"]) == p["budget"]
        if p["status"] == "infeasible":
            continue
        for field in ("predicted_latency", "latency_fraction", "objective", "importance_fraction"):
            assert number(found[f"{key}.{field}"]) == p[field]
        assert found[f"{key}.latency_fraction"][1] == f"{p['latency_fraction']:.1%}"
        for dim, size in p["choice"].items():
            assert int(found[f"{key}.choice.{dim}"][0]) == size
    solution = json.loads((run_dir / "solution.json").read_text())
    problem = json.loads((run_dir / "problem.json").read_text())
    widths = [k for k in found if k.startswith("width.") and k.endswith(".kept")]
    assert widths == [f"width.{d['name']}.kept" for d in problem["dims"]]  # every dim, in network order
    for d in problem["dims"]:
        assert int(found[f"width.{d['name']}.kept"][0]) == solution["choice"][d["name"]]
        assert int(found[f"width.{d['name']}.full"][0]) == d["options"][-1]
        assert number(found[f"width.{d['name']}.fraction"]) == solution["choice"][d["name"]] / d["options"][-1]
    for block, kept in solution["blocks"].items():
        assert found[f"block.{block}"][0] == ("kept" if kept else "removed")
    report = json.loads((run_dir / "exported" / "report.json").read_text())
    for field in ("predicted_ms", "measured_ms", "measured_dense_ms", "predicted_fraction", "measured_fraction",
                  "budget_fraction", "params"):
        assert number(found[f"export.0.{field}"]) == report[field]
    assert found["export.0.measured_ms"][1] == f"{report['measured_ms']:.4g}"
    for name in ("eval_dense.json", "eval_pruned.json", "eval_finetuned.json"):
        record = json.loads((run_dir / name).read_text())
        assert number(found[f"eval.{name}.top1"]) == record["top1"] and found[f"eval.{name}.top1"][1] == f"{record['top1']:.2f}"
        assert number(found[f"eval.{name}.top5"]) == record["top5"]
    metrics = (run_dir / "finetuned" / "metrics.csv").read_text().splitlines()
    row = dict(zip(metrics[0].split(","), metrics[1].split(",")))
    assert number(found["finetune.finetuned.1.val_top1"]) == float(row["val_top1"])
    refine = json.loads((run_dir / "refine.json").read_text())
    for r in refine["rounds"]:
        for field in ("budget_solved", "predicted_fraction", "measured_fraction", "rows_reprofiled"):
            assert number(found[f"refine.{r['round']}.{field}"]) == r[field]
        assert found[f"refine.{r['round']}.met"][0] == str(r["met"])
    assert refine["reason"] in page
    calibration = json.loads((run_dir / "calibration.json").read_text())["fit"]
    for field in ("median_error_before", "median_error_held_out", "level", "measurement_disagreement", "noise_floor",
                  "weights_share"):
        assert number(found[f"calibration.{field}"]) == calibration[field]
    # which model each accuracy belongs to, from what was evaluated
    for stage, name in (("dense (before pruning)", "eval_dense.json"), ("pruned (before finetuning)", "eval_pruned.json"),
                        ("pruned + finetuned", "eval_finetuned.json")):
        assert re.search(f"<td>{re.escape(stage)}</td>.*?<td>{re.escape(name)}</td>", page), stage


def test_every_plot_is_an_embedded_png_and_nothing_is_external(page):
    from PIL import Image

    sources = re.findall(r'<img [^>]*src="([^"]*)"', page)
    assert len(sources) == 6  # Pareto front, widths, latency, calibration, accuracy, refinement
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        image = Image.open(io.BytesIO(png))
        image.load()
        assert image.format == "PNG" and image.width > 200 and image.height > 200
        assert sum(1 for count in image.convert("L").histogram() if count) > 10  # drawn, not blank
    assert not re.search(r"(src|href)=\"(?!data:)", page)
    assert "http://" not in page and "https://" not in page and "<link" not in page


def test_the_reproduce_commands_rebuild_the_same_config(run_dir, page, tmp_path):
    import html

    blocks = [html.unescape(b) for b in re.findall(r"<pre>(.*?)</pre>", page, re.S)]
    run = next(b for b in blocks if b.startswith("cat > config.yaml"))
    text = run.split("<<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0]
    assert run.endswith(f"mdp run config.yaml --run-dir {run_dir} --refine")
    (tmp_path / "config.yaml").write_text(text)
    saved = json.loads((run_dir / "config.json").read_text())["config"]
    assert load_config(tmp_path / "config.yaml") == saved
    evals = [b for b in blocks if b.startswith("mdp eval")]
    assert f"mdp eval {run_dir}/exported --data '{DATA}' --split val --batch-size 128 --device cpu --amp off " \
           f"-o {run_dir}/eval_pruned.json" in evals
    finetune = next(b for b in blocks if b.startswith("mdp finetune"))
    assert "--epochs 1 --batch-size 16" in finetune and f"-o {run_dir}/finetuned" in finetune


def copy_of_run(run_dir, where, *names):
    """A run directory at ``where`` holding only the artifacts ``names`` of the fixture run."""
    where.mkdir()
    for name in names:
        shutil.copy(run_dir / name, where / name)
    return where


def test_absent_parts_are_named_with_the_command_that_makes_them(run_dir, tmp_path):
    bare = copy_of_run(run_dir, tmp_path / "bare", "config.json", "problem.json", "solution.json")
    out = tmp_path / "bare.html"
    invoke("report", bare, "-o", out)
    page = out.read_text()
    assert "No budget sweep in this run" in page and f"mdp solve {bare} --sweep 0.3:0.9:0.1" in page
    assert "No export in this run" in page and "No refinement in this run" in page
    assert "Not in this run: dense (before pruning)" in page and "pruned + finetuned" in page
    assert len(re.findall(r"<img ", page)) == 1  # the widths plot alone


def test_removed_blocks_and_their_dims_are_marked(run_dir, tmp_path):
    copy = copy_of_run(run_dir, tmp_path / "run", "config.json", "problem.json", "solution.json")
    solution = json.loads((copy / "solution.json").read_text())
    problem = json.loads((copy / "problem.json").read_text())
    block = next(b["name"] for b in problem["blocks"] if b["removable"])
    # exactly one block removed, whatever the run's own solution removed (it depends on this CPU's timings)
    solution["blocks"] = {b["name"]: b["name"] != block for b in problem["blocks"]}
    write_json(copy / "solution.json", solution)
    invoke("report", copy)
    page = (copy / "report.html").read_text()
    found = cells(page)
    assert found[f"block.{block}"][0] == "removed"
    assert sum(v[0] == "removed" for k, v in found.items() if k.startswith("block.")) == 1
    assert f"1 of {len(problem['blocks'])} blocks removed: {block}." in page
    in_block = [d["name"] for d in problem["dims"] if d.get("block") == block]
    assert in_block
    for dim in in_block:
        assert re.search(f'<tr class="removed"><td>{re.escape(dim)}</td>.*?block removed</td></tr>', page)


def test_narrow_dims_and_a_noisy_calibration_are_flagged(run_dir, tmp_path):
    copy = copy_of_run(run_dir, tmp_path / "run", "config.json", "problem.json", "solution.json", "calibration.json")
    solution = json.loads((copy / "solution.json").read_text())
    problem = json.loads((copy / "problem.json").read_text())
    solution["blocks"] = {b["name"]: True for b in problem["blocks"]}
    # one dim at 1/8 of its width (the tiny space's options stop at 1/2: the report flags what it is given),
    # one at 1/8 + 1 channel (not flagged), every other at full width
    dim, wider = problem["dims"][1], problem["dims"][2]
    narrow = dim["options"][-1] // 8
    solution["choice"] = ({d["name"]: d["options"][-1] for d in problem["dims"]}
                          | {dim["name"]: narrow, wider["name"]: wider["options"][-1] // 8 + 1})
    write_json(copy / "solution.json", solution)
    calibration = json.loads((copy / "calibration.json").read_text())
    calibration["fit"]["measurement_disagreement"], calibration["fit"]["measurement_noisy"] = 0.093, True
    write_json(copy / "calibration.json", calibration)
    invoke("report", copy)
    page = (copy / "report.html").read_text()
    found = cells(page)
    assert found["narrow_dims"][0] == "1"
    assert f"kept at 1/8 of their width or less: {dim['name']} {narrow}/{dim['options'][-1]}." in page
    assert re.search(f'<tr><td>{re.escape(dim["name"])}</td>.*?<td>narrow</td></tr>', page)
    assert sum(row.endswith("<td>narrow</td></tr>") for row in page.splitlines()) == 1
    assert "timings moved 9.3% between the two halves" in page
    calibration["fit"]["noise_floor"] = "high"
    write_json(copy / "calibration.json", calibration)
    result = CliRunner().invoke(main, ["report", str(copy)])
    assert result.exit_code != 0
    assert "calibration.json: field 'fit.noise_floor' must be a number" in result.output


def test_a_sweep_of_another_problem_is_said(run_dir, tmp_path):
    copy = copy_of_run(run_dir, tmp_path / "run", "config.json", "problem.json", "solution.json", "sweep.json")
    sweep = json.loads((copy / "sweep.json").read_text())
    sweep["problem_hash"] = "sha256:" + "0" * 64
    write_json(copy / "sweep.json", sweep)
    assert gather(copy).notes == ["sweep.json was solved for another problem.json (re-run 'mdp solve RUN_DIR --sweep')"]
    assert "sweep.json was solved for another problem.json" in render(gather(copy))


def test_run_sweep_is_a_cached_stage_of_its_own(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    config = run_dir.parent / "tiny.yaml"
    again = invoke("run", config, "--run-dir", copy, "-q")
    assert "[sweep] unchanged" in again.output and "[solve] unchanged" in again.output
    other = invoke("run", config, "--run-dir", copy, "-q", "--sweep", "0.5,0.7")
    assert "[sweep] done" in other.output and "[solve] unchanged" in other.output
    assert [p["budget"] for p in json.loads((copy / "sweep.json").read_text())["points"]] == [0.5, 0.7]
    bad = CliRunner().invoke(main, ["run", str(config), "--run-dir", str(copy), "--sweep", "0.9:0.3:0.1"])
    assert bad.exit_code == 2 and "solve.sweep (--sweep) '0.9:0.3:0.1': stop 0.3 is below start 0.9" in bad.output


@pytest.mark.parametrize("make, words", [
    (lambda d: None, "no such run directory"),
    (lambda d: d.mkdir(), "not a run directory"),
    (lambda d: (d.mkdir(), (d / "sweep.json").write_text('{"schema": "mdp.sweep", "version": 1, "points": []}')),
     "sweep.json: field 'dense_latency' must be a finite number"),
    (lambda d: (d.mkdir(), write_json(d / "refine.json", {"schema": "mdp.refine", "version": 1, "rounds": [{"round": 1}],
                                                          "outcome": "met", "reason": ""})),
     "refine.json: rounds[0].rows_reprofiled must be an integer"),
])
def test_bad_run_directories_are_one_line_errors(tmp_path, make, words):
    target = tmp_path / "run"
    make(target)
    result = CliRunner().invoke(main, ["report", str(target)])
    assert result.exit_code == 2 and words in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_headless_chromium_renders_every_image(run_dir, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium binary (Debian package 'chromium'; `make setup` installs it as root)")
    page = run_dir.parent / "report.html"
    result = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                             "--virtual-time-budget=5000",
                             f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.resolve().as_uri()],
                            capture_output=True, text=True, timeout=60)
    body = re.search(r"<body[^>]*>", result.stdout)
    assert body, result.stderr[-2000:]
    # the page's own script counted its images once loaded: all 6 decoded with a non-zero width (a corrupted
    # image makes it say "broken": checked by hand, 2026-12-02)
    assert 'data-images="6"' in body.group(0), body.group(0)
