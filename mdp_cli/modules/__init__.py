"""Pruned building blocks: the plain-PyTorch modules an exported model is made of.

The lowest model layer: ``space/``, ``latency/`` and ``export/`` import these (the latency terms time the
very modules the exporter builds), and these import nothing from them. Each file registers a builder
``arch dict -> nn.Module`` for its ``mdp.arch`` family (``registry.register_arch``), so loading an export
needs only torch, safetensors and this package.
"""
