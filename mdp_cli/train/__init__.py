"""Train stage: evaluation and finetuning of dense and pruned models (``engine``), checkpoints with no
pickles (``checkpoint``), torchrun/DDP plumbing (``dist``) and the ``mdp eval`` / ``mdp finetune`` commands
(``cli``). Images come from ``mdp_cli.data``, shared with ``mdp score``."""
