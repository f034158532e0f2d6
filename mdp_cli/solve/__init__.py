"""Solve stage: a torch-free pruning problem in, an optimal configuration out.

    from mdp_cli.solve import load_problem, solve_problem
    solution = solve_problem(load_problem("problem.json"), budget=0.5)
    solution.choice   # dim -> kept size
    solution.kept     # block -> kept?
"""

from mdp_cli.solve.problem import Block, Dim, ImportanceEntry, Problem, Term, load_problem, make_problem
from mdp_cli.solve.solution import Solution, load_solution
from mdp_cli.solve.solver import minimum_latency, solve_problem

__all__ = [
    "Block", "Dim", "ImportanceEntry", "Problem", "Solution", "Term",
    "load_problem", "load_solution", "make_problem", "minimum_latency", "solve_problem",
]
