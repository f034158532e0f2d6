"""mdp: latency-constrained multidimensional structural pruning of vision models.

The pipeline reads like the data path: model -> space -> LUT -> importance -> problem -> solution ->
pruned model. Each stage is a library function; `mdp_cli.cli` is a thin click layer over them.
"""

__version__ = "0.1.0"
