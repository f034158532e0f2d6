"""An export directory is replaced as a unit; corrupt weights are one-line errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from mdp_cli.artifacts import write_json
from mdp_cli.errors import MdpError
from mdp_cli.export.spec import load_exported, replace_directory, staged_directory
from mdp_cli.models import read_state_dict
from train_helpers import TinyCNN, export_tiny


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


@pytest.fixture
def old_export(tmp_path):
    out = tmp_path / "exported"
    torch.manual_seed(0)
    export_tiny(out, TinyCNN([8, 8, 8]))
    write_json(out / "report.json", {"schema": "mdp.export_report", "version": 1, "widths": [8, 8, 8]})
    return out


def test_staged_export_replaces_every_file(old_export):
    torch.manual_seed(1)
    new = TinyCNN([4, 6, 8])
    with staged_directory(old_export) as tmp:
        export_tiny(tmp, new)
        write_json(tmp / "report.json", {"schema": "mdp.export_report", "version": 1, "widths": [4, 6, 8]})
    assert sorted(p.name for p in old_export.iterdir()) == ["arch.json", "model.safetensors", "report.json"]
    loaded = load_exported(old_export)
    x = torch.randn(2, 3, 16, 16)
    new.eval()
    torch.testing.assert_close(loaded(x), new(x), rtol=0, atol=0)
    assert json.loads((old_export / "report.json").read_text())["widths"] == [4, 6, 8]
    assert leftovers(old_export.parent, "exported") == []


@pytest.mark.parametrize("failure", [MdpError("measured latency misses the budget"), KeyboardInterrupt()])
def test_an_error_after_the_weights_leaves_the_old_export_untouched(old_export, failure):
    before = snapshot(old_export)
    with pytest.raises(type(failure)):
        with staged_directory(old_export) as tmp:
            export_tiny(tmp, TinyCNN([4, 4, 4]))  # weights and spec written...
            raise failure  # ...then the budget gate, ONNX or --device cuda fails
    assert snapshot(old_export) == before
    assert leftovers(old_export.parent, "exported") == []


def test_save_exported_alone_never_leaves_a_stale_report_beside_a_new_model(old_export):
    export_tiny(old_export, TinyCNN([4, 4, 4]))
    assert sorted(p.name for p in old_export.iterdir()) == ["arch.json", "model.safetensors"]


def test_a_directory_that_is_not_an_export_is_never_replaced(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(MdpError, match=r"holds files that are not an mdp export \(notes.txt\)"):
        export_tiny(tmp_path, TinyCNN([4, 4, 4]))
    assert (tmp_path / "notes.txt").read_text() == "mine" and len(list(tmp_path.iterdir())) == 1
    (tmp_path / "file").write_text("x")
    with pytest.raises(MdpError, match="exists and is not a directory"):
        export_tiny(tmp_path / "file", TinyCNN([4, 4, 4]))


def test_replace_directory_into_a_new_path(tmp_path):
    new = tmp_path / "new"
    new.mkdir()
    (new / "arch.json").write_text("{}")
    replace_directory(new, tmp_path / "out")
    assert (tmp_path / "out" / "arch.json").read_text() == "{}" and not new.exists()


@pytest.mark.parametrize("damage", ["truncate", "header", "empty"])
def test_corrupt_safetensors_are_one_line_errors(old_export, damage):
    weights = old_export / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"truncate": data[: len(data) // 2], "header": data[:8] + b"{not json" + data[17:],
                         "empty": b""}[damage])
    for read in (read_state_dict, lambda _: load_exported(old_export)):
        with pytest.raises(MdpError) as err:
            read(weights)
        assert "\n" not in str(err.value) and str(weights) in str(err.value)


def test_weights_that_do_not_fit_the_spec_are_one_line(old_export, tmp_path):
    export_tiny(tmp_path / "other", TinyCNN([4, 4, 4]))
    os.replace(tmp_path / "other" / "model.safetensors", old_export / "model.safetensors")
    with pytest.raises(MdpError, match="does not fit") as err:
        load_exported(old_export)
    assert "\n" not in str(err.value)


def test_two_rename_fallback_also_replaces_as_a_unit(old_export, monkeypatch):
    """Where renameat2 is missing (not Linux), the old directory is renamed aside, then the new one in."""
    import mdp_cli.export.spec as spec

    monkeypatch.setattr(spec, "_exchange", lambda a, b: False)
    export_tiny(old_export, TinyCNN([4, 4, 4]))
    assert sorted(p.name for p in old_export.iterdir()) == ["arch.json", "model.safetensors"]
    assert load_exported(old_export).fc.in_features == 4
    assert leftovers(old_export.parent, "exported") == []
