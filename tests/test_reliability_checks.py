"""export/checks.py: a solution, problem and importance that do not belong to the space are refused."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from mdp_cli.errors import MdpError
from mdp_cli.export.checks import check_importance, check_solution
from mdp_cli.importance.taylor import bn_taylor_scores, importance_record
from mdp_cli.latency.lut import Lut, missing_rows
from mdp_cli.latency.timing import clock_for
from mdp_cli.solve import solve_problem
from mdp_cli.space.cnn import discover_space
from mdp_cli.latency.to_problem import build_problem

CPU = ("cpu-test", "float32", 1, 1)


def scored(model, analysis, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    batches = [(torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 1000, (4,), generator=g))]
    scores, _ = bn_taylor_scores(model, analysis, batches)
    return {"schema": "mdp.importance", "version": 1, "model": "resnet18", "dims": importance_record(analysis, scores)}


def formula_lut(tmp_path, space) -> Lut:
    """Every row the space needs, with a latency that grows with the sizes (the checks need no timing)."""
    lut = Lut.open(tmp_path / "lut.csv", *CPU)
    rows = []
    for term in space.terms:
        options = [space.dim(d).options for d in term.dims]
        for key in missing_rows(lut, term.signature(), term.roles, options):
            sizes = [int(part.split("=")[1]) for part in key.split(";")] if key else []
            ms = 0.01 + 1e-5 * (sizes[0] if sizes else 1) * (sizes[-1] if sizes else 1)
            rows.append({"op": term.op, "signature": term.signature(), "sizes": key, "device": CPU[0],
                         "dtype": CPU[1], "batch": 1, "threads": 1, "clock": clock_for("cpu", 1), "median_ms": ms,
                         "spread_ms": 0.0, "p10_ms": ms, "ref_ms": 1.0, "repeats": 1, "warmup": 0, "created": ""})
    lut.add_rows(rows)
    return lut


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """resnet18 (32 px, 4 options per dim): space, real Taylor importance, problem, solved solution."""
    model, analysis = discover_space("resnet18", 32, max_options=4)
    importance = scored(model, analysis, seed=0)
    lut = formula_lut(tmp_path_factory.mktemp("lut"), analysis.space)
    problem = build_problem(analysis.space, lut, importance, interpolate=False)
    solution = solve_problem(problem, 0.5)
    assert any(not k for k in solution.kept.values()) or any(
        solution.choice[d.name] < d.size for d in problem.dims)  # something is pruned: the checks see real edits
    return {"model": model, "analysis": analysis, "space": analysis.space.to_dict(), "importance": importance,
            "problem": json.loads(json.dumps(problem.to_dict())), "solution": json.loads(json.dumps(solution.to_dict())),
            "lut": lut}


def refused(chain, solution=None, problem="same", importance="same") -> str:
    with pytest.raises(MdpError) as err:
        check_solution(solution or chain["solution"], chain["problem"] if problem == "same" else problem,
                       chain["space"], chain["importance"] if importance == "same" else importance,
                       where="solution.json", problem_where="problem.json", importance_where="importance.json")
    assert "\n" not in str(err.value)
    return str(err.value)


def test_matching_files_pass(chain):
    check_solution(chain["solution"], chain["problem"], chain["space"], chain["importance"])
    check_solution(chain["solution"], None, chain["analysis"].space, None)  # the space object works too


def test_solution_of_another_problem_is_refused(chain):
    other_importance = scored(chain["model"], chain["analysis"], seed=1)
    other = build_problem(chain["analysis"].space, chain["lut"], other_importance, interpolate=False)
    message = refused(chain, problem=json.loads(json.dumps(other.to_dict())))
    assert message == ("solution.json: solved for another problem (its problem_hash does not match problem.json); "
                       "re-run 'mdp solve' on problem.json")


def test_width_that_is_not_an_option_is_refused(chain):
    solution = copy.deepcopy(chain["solution"])
    dim = chain["space"]["dims"][1]
    solution["choice"][dim["name"]] = dim["options"][0] + 1
    assert f"choice['{dim['name']}'] = {dim['options'][0] + 1} is not one of the dim's widths" in refused(
        chain, solution, problem=None)


def test_deleted_and_unknown_dims_are_refused(chain):
    solution = copy.deepcopy(chain["solution"])
    name = chain["space"]["dims"][2]["name"]
    del solution["choice"][name]
    assert f"choice lacks dims of this model's space ({name})" in refused(chain, solution, problem=None)
    solution = copy.deepcopy(chain["solution"])
    solution["choice"]["layer9.0.conv1"] = 8
    assert "choice names dims this model's space does not have (layer9.0.conv1)" in refused(chain, solution,
                                                                                               problem=None)


def test_edited_widths_and_blocks_are_refused_against_the_problem(chain):
    solution = copy.deepcopy(chain["solution"])
    block = next(iter(solution["blocks"]))
    solution["blocks"][block] = not solution["blocks"][block]
    assert "the choice or blocks were edited after solving" in refused(chain, solution)
    solution = copy.deepcopy(chain["solution"])
    dim = next(d for d in chain["space"]["dims"] if solution["choice"][d["name"]] != d["options"][0])
    solution["choice"][dim["name"]] = dim["options"][0]  # another valid width: only the latency tells
    assert "the choice or blocks were edited after solving" in refused(chain, solution)


def test_blocks_that_are_not_removable_or_not_booleans_are_refused(chain):
    fixed = next(b["name"] for b in chain["space"]["blocks"] if not b["removable"])
    solution = copy.deepcopy(chain["solution"])
    solution["blocks"][fixed] = False
    assert f"removes parts of the model that cannot be removed ({fixed})" in refused(chain, solution, problem=None)
    solution["blocks"][fixed] = True  # a fixed part listed as kept (as the ViT/Swin problems list them) is fine
    check_solution(solution, None, chain["space"], chain["importance"])
    solution["blocks"]["no_such_block"] = True
    assert "not removable blocks of this model (no_such_block)" in refused(chain, solution, problem=None)
    solution = copy.deepcopy(chain["solution"])
    solution["blocks"][next(iter(solution["blocks"]))] = "no"
    assert "must be true or false" in refused(chain, solution, problem=None)
    solution = copy.deepcopy(chain["solution"])
    gone = next(iter(solution["blocks"]))
    del solution["blocks"][gone]
    assert f"blocks lacks removable blocks of this model ({gone})" in refused(chain, solution, problem=None)


def test_importance_of_another_space_is_refused(chain):
    importance = copy.deepcopy(chain["importance"])
    name = chain["space"]["dims"][0]["name"]
    del importance["dims"][name]
    assert f"importance.json: no scores for dims {name} of resnet18" in refused(chain, importance=importance)
    model, analysis = discover_space("resnet18", 32, max_options=4, prune_stem=True)  # a space with the stem dim
    extra = set(scored(model, analysis, 0)["dims"]) - {d["name"] for d in chain["space"]["dims"]}
    assert extra, "a stem-pruning space has a dim the default space lacks"
    assert "that resnet18's space does not have" in refused(chain, importance=scored(model, analysis, 0))


def test_importance_of_another_model_with_the_same_dim_names_is_refused():
    """deit_small importance for a deit_tiny export: same dim names, other unit counts (384 vs 192)."""
    from torch import nn

    from mdp_cli.importance.vit import vit_importance
    from mdp_cli.models import create_model
    from mdp_cli.space.vit import build_vit_space

    def space_and_importance(name):
        model = create_model(name, img_size=32, num_classes=10)
        space = build_vit_space(model, name)
        batches = [(torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,)))]
        return space, vit_importance(model, batches, space, max_batches=1,
                                     loss_fn=lambda out, labels: nn.functional.cross_entropy(out, labels))

    tiny, tiny_importance = space_and_importance("deit_tiny")
    _, small_importance = space_and_importance("deit_small")
    check_importance(tiny_importance, tiny)
    with pytest.raises(MdpError) as err:
        check_importance(small_importance, tiny, "small.json")
    assert str(err.value).startswith("small.json: dim embed has 384 scores but deit_tiny")
