"""`mdp solve` imports only what the latency-only hub path needs (start-up is most of a small solve), and
the fast library-version lookup reads the same versions as importlib.metadata."""

import json
import subprocess
import sys

from mdp_cli.solve.cli import example_problem_path

# Modules the default path must not load: heavy (pyomo, highspy, pandas, torch) or needless start-up
# (importlib.metadata ~30 ms, tempfile ~15 ms, numpy.ma ~20 ms through np.quantile).
NOT_ON_THE_FAST_PATH = ("torch", "pyomo", "highspy", "pandas", "importlib.metadata", "tempfile", "numpy.ma")


def test_a_latency_only_solve_loads_nothing_heavy():
    code = (
        "import sys, json\n"
        "from mdp_cli.cli import main\n"
        "try:\n"
        f"    main(['solve', {str(example_problem_path())!r}, '--budget', '0.5'])\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        f"print(json.dumps([m for m in {NOT_ON_THE_FAST_PATH!r} if m in sys.modules]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "status      optimal" in result.stdout
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_library_versions_match_importlib_metadata():
    from importlib import metadata

    from mdp_cli.artifacts import _TRACKED_LIBRARIES, library_versions

    versions = library_versions()
    for name in _TRACKED_LIBRARIES:
        try:
            expected = metadata.version(name)
        except metadata.PackageNotFoundError:
            assert name not in versions
        else:
            assert versions[name] == expected, name
    assert versions["numpy"]  # the solver's own dependency is always found
