"""Synthetic problems with the structure of real networks, for the solver benchmark and the bundled example.

The structure (dims, couplings, blocks, which dims each table spans) is exactly that of the named network;
the table values come from a simple device model (FLOPs over a peak rate, bytes over a bandwidth, a
per-kernel overhead, tile quantisation, ±3 % noise) and importance from sorted log-normal chunk scores.
They are not measurements: real problems come from `mdp profile` + `mdp score`. They exist so that the
solver can be timed at real sizes without a GPU and tested without torch.
"""

from __future__ import annotations


import numpy as np

from mdp_cli.solve.problem import Block, Dim, ImportanceEntry, Problem, Term, make_problem

# A mid-range GPU at batch 256: ~14 TFLOP/s fp32 sustained, ~600 GB/s, ~8 us per kernel launch.
_PEAK_FLOPS = 14e12
_BANDWIDTH = 600e9
_KERNEL_MS = 0.008


def _options(size: int, step: int) -> tuple[int, ...]:
    step = min(step, size)
    return tuple(range(step, size + 1, step)) if size % step == 0 else tuple(range(step, size, step)) + (size,)


def _round_up(value: np.ndarray, tile: int) -> np.ndarray:
    return np.ceil(value / tile) * tile


def conv_ms(cin: np.ndarray, cout: np.ndarray, kernel: int, hw: int, batch: int, groups_dw: bool = False) -> np.ndarray:
    """Latency of conv+BN+ReLU for broadcastable arrays of channel counts (tile-quantised like GEMMs)."""
    cin_t, cout_t = _round_up(cin, 8), _round_up(cout, 32)
    macs = batch * hw * hw * kernel * kernel * cout_t * (1 if groups_dw else cin_t)
    bytes_moved = 4 * (batch * hw * hw * (cin + cout) + kernel * kernel * cin * (1 if groups_dw else cout))
    return np.maximum(2 * macs / _PEAK_FLOPS, bytes_moved / _BANDWIDTH) * 1e3 + _KERNEL_MS


def _cumulative_importance(rng: np.random.Generator, size: int, options: tuple[int, ...], scale: float = 1.0) -> np.ndarray:
    scores = np.sort(rng.lognormal(mean=0.0, sigma=1.0, size=size))[::-1] * scale / size
    cumulative = np.cumsum(scores)
    return np.array([cumulative[o - 1] for o in options])


def _conv_counts(cin, cout, kernel: int, hw: int, depthwise: bool = False) -> dict[str, np.ndarray]:
    """Parameters and FLOPs (per image) of a conv for broadcastable channel counts."""
    params = np.asarray(kernel * kernel * cout * (1 if depthwise else cin), dtype=float)
    return {"params": params, "flops": 2 * params * hw * hw}


def _noisy(rng: np.random.Generator, table: np.ndarray) -> np.ndarray:
    return table * (1 + 0.03 * rng.standard_normal(table.shape))


def resnet_problem(
    depths=(3, 4, 6, 3),
    mids=(64, 128, 256, 512),
    expansion: int = 4,
    step: int | None = 32,
    paper_granularity: bool = False,
    resolution: int = 224,
    batch: int = 256,
    seed: int = 0,
    name: str = "resnet50",
    counts: bool = False,
) -> Problem:
    """A bottleneck ResNet problem (ResNet-50 by default): stage dims coupled by residual adds, each
    bottleneck removable, downsample paths and the stem fixed (the stem keeps its full width).

    ``paper_granularity`` uses the official code's coarse chunks (size/16, at least 32 channels:
    2-16 options per dim); otherwise every dim uses ``step`` channels per chunk. ``counts``: terms also
    carry params and FLOPs tables (for constraints beside the budget)."""
    rng = np.random.default_rng(seed)

    def conv(term_name, dims_, table, block_, cin, cout, kernel, hw_):
        return Term(term_name, dims_, table, block_, _conv_counts(cin, cout, kernel, hw_) if counts else {})

    def make_dim(dim_name: str, size: int) -> Dim:
        chunk = max(32, size // 16) if paper_granularity else step
        return Dim(dim_name, _options(size, chunk), chunk)

    dims: list[Dim] = [Dim("stem", (64,), 64)]
    terms: list[Term] = [Term("stem", (), np.asarray(conv_ms(3, 64, 7, resolution // 2, batch) * 1.3), None)]
    importance: list[ImportanceEntry] = [ImportanceEntry("stem", np.zeros(1), None)]
    blocks: list[Block] = []
    previous, hw = "stem", resolution // 4
    for s, (depth, mid) in enumerate(zip(depths, mids)):
        stage = f"stage{s + 1}"
        out = mid * expansion
        stage_dim = make_dim(stage, out)
        dims.append(stage_dim)
        stride = 1 if s == 0 else 2
        out_hw = hw // stride
        importance.append(ImportanceEntry(stage, _cumulative_importance(rng, out, stage_dim.options, scale=2.0), None))
        prev_opts = np.array(next(d for d in dims if d.name == previous).options, dtype=float)
        stage_opts = np.array(stage_dim.options, dtype=float)
        terms.append(conv(f"{stage}.downsample", (previous, stage),
                          _noisy(rng, conv_ms(prev_opts[:, None], stage_opts[None, :], 1, out_hw, batch)), None,
                          prev_opts[:, None], stage_opts[None, :], 1, out_hw))
        for j in range(depth):
            block = f"{stage}.{j}"
            blocks.append(Block(block, removable=True))
            d1, d2 = make_dim(f"{block}.conv1", mid), make_dim(f"{block}.conv2", mid)
            dims += [d1, d2]
            o1, o2 = np.array(d1.options, float), np.array(d2.options, float)
            source = previous if j == 0 else stage
            src = np.array(next(d for d in dims if d.name == source).options, float)
            in_hw = hw if j == 0 else out_hw
            terms += [
                conv(f"{block}.conv1", (source, d1.name), _noisy(rng, conv_ms(src[:, None], o1[None, :], 1, in_hw, batch)), block,
                     src[:, None], o1[None, :], 1, in_hw),
                conv(f"{block}.conv2", (d1.name, d2.name), _noisy(rng, conv_ms(o1[:, None], o2[None, :], 3, out_hw, batch)), block,
                     o1[:, None], o2[None, :], 3, out_hw),
                conv(f"{block}.conv3", (d2.name, stage), _noisy(rng, conv_ms(o2[:, None], stage_opts[None, :], 1, out_hw, batch)), block,
                     o2[:, None], stage_opts[None, :], 1, out_hw),
            ]
            for d in (d1, d2):
                importance.append(ImportanceEntry(d.name, _cumulative_importance(rng, mid, d.options), block))
        previous, hw = stage, out_hw
    last = np.array(next(d for d in dims if d.name == previous).options, float)
    terms.append(conv("fc", (previous,), 2 * batch * last * 1000 / _PEAK_FLOPS * 1e3 + _KERNEL_MS, None, last, 1000, 1, 1))
    return make_problem(dims, importance, terms, blocks, constant_latency=0.05, name=name,
                        generator="synthetic.resnet_problem", seed=seed)


def vit_problem(
    depth: int = 12,
    embed: int = 768,
    heads: int = 12,
    head_dim: int = 64,
    mlp: int = 3072,
    tokens: int = 197,
    batch: int = 256,
    embed_step: int = 16,
    qk_step: int = 8,
    v_step: int = 8,
    mlp_step: int = 64,
    seed: int = 0,
    name: str = "deit_base_patch16_224",
    counts: bool = False,
) -> Problem:
    """A ViT problem (DeiT-Base by default): one global embedding dim E; per block heads H, q/k dim Q,
    v dim V, MLP dim M; attention and MLP branches separately removable. Tables: qk(E,H,Q),
    vproj(E,H,V), sdpa(H,Q,V), mlp(E,M), norms(E)."""
    rng = np.random.default_rng(seed)
    E = Dim("embed", _options(embed, embed_step), embed_step)
    e = np.array(E.options, float)
    dims, terms, importance, blocks = [E], [], [], []
    importance.append(ImportanceEntry("embed", _cumulative_importance(rng, embed, E.options, scale=4.0), None))
    bt = batch * tokens

    def gemm_ms(m, n, k):
        flops = 2 * m * _round_up(n, 16) * _round_up(k, 16)
        return np.maximum(flops / _PEAK_FLOPS, 4 * (m * k + k * n + m * n) / _BANDWIDTH) * 1e3 + _KERNEL_MS

    for b in range(depth):
        attn, mlp_block = f"blocks.{b}.attn", f"blocks.{b}.mlp"
        blocks += [Block(attn, True), Block(mlp_block, True)]
        H = Dim(f"blocks.{b}.heads", tuple(range(1, heads + 1)), 1)
        Q = Dim(f"blocks.{b}.qk", _options(head_dim, qk_step), qk_step)
        V = Dim(f"blocks.{b}.v", _options(head_dim, v_step), v_step)
        M = Dim(f"blocks.{b}.mlp", _options(mlp, mlp_step), mlp_step)
        dims += [H, Q, V, M]
        h = np.array(H.options, float)[None, :, None]
        q = np.array(Q.options, float)[None, None, :]
        v = np.array(V.options, float)[None, None, :]
        ee = e[:, None, None]
        # q/k projections; v and output projections; the attention kernel (QK^T, softmax, attn·V) at the
        # padded head width max(Q, V), as the exporter runs it.
        qk = 2 * gemm_ms(bt, h * q, ee)
        vproj = gemm_ms(bt, h * v, ee) + gemm_ms(bt, ee, h * v)
        width = np.maximum(q[0, 0, :, None], v[0, 0, None, :])[None]  # (1, Q, V)
        hk = h[0][:, :, None]  # (H, 1, 1)
        kernel = (2 * gemm_ms(batch * hk * tokens, tokens, width) + 4 * batch * hk * tokens**2 * 2 / _BANDWIDTH * 1e3)
        m_opts = np.array(M.options, float)
        mlp_table = gemm_ms(bt, m_opts[None, :], e[:, None]) * 2 + 4 * bt * m_opts[None, :] / _BANDWIDTH * 1e3
        norm = 8 * bt * e / _BANDWIDTH * 1e3 + _KERNEL_MS
        def linear_counts(weights):  # a linear layer's weights; FLOPs: 2 per weight per token
            weights = np.asarray(weights, dtype=float)
            return {"params": weights, "flops": 2 * weights * tokens} if counts else {}

        terms += [
            Term(f"{attn}.qk", (E.name, H.name, Q.name), _noisy(rng, qk), attn, linear_counts(2 * ee * h * q)),
            Term(f"{attn}.vproj", (E.name, H.name, V.name), _noisy(rng, vproj), attn, linear_counts(2 * ee * h * v)),
            Term(f"{attn}.sdpa", (H.name, Q.name, V.name), _noisy(rng, kernel), attn),
            Term(f"{attn}.norm", (E.name,), norm, attn),
            Term(f"{mlp_block}.fc", (E.name, M.name), _noisy(rng, mlp_table), mlp_block,
                 linear_counts(2 * e[:, None] * m_opts[None, :])),
            Term(f"{mlp_block}.norm", (E.name,), norm, mlp_block),
        ]
        importance += [
            ImportanceEntry(H.name, _cumulative_importance(rng, heads, H.options, 2.0), attn),
            ImportanceEntry(Q.name, _cumulative_importance(rng, head_dim, Q.options), attn),
            ImportanceEntry(V.name, _cumulative_importance(rng, head_dim, V.options), attn),
            ImportanceEntry(M.name, _cumulative_importance(rng, mlp, M.options, 2.0), mlp_block),
        ]
    patch = gemm_ms(batch * (tokens - 1), e, 3 * 16 * 16)
    head = gemm_ms(batch, 1000, e) + 8 * bt * e / _BANDWIDTH * 1e3
    terms += [Term("patch_embed", (E.name,), patch, None), Term("head", (E.name,), head, None)]
    return make_problem(dims, importance, terms, blocks, constant_latency=0.02, name=name,
                        generator="synthetic.vit_problem", seed=seed)


# MobileNetV2: (expansion t, output channels c, repeats n, stride s) per stage.
MOBILENET_V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1))


def mobilenet_problem(
    stages=MOBILENET_V2_STAGES,
    stem: int = 32,
    last: int = 1280,
    paper_granularity: bool = True,
    step: int = 8,
    resolution: int = 224,
    batch: int = 256,
    seed: int = 0,
    name: str = "mobilenet_v2",
) -> Problem:
    """An inverted-residual chain (MobileNetV2 by default): each stage's output channels are one dim,
    coupled by the residual adds of its blocks and read by the first block of the next stage, so the
    stage dims form a chain; each block's expanded width is a private dim (expand 1x1, depthwise 3x3,
    project 1x1); blocks with a residual are removable, the first block of a stage (which changes the
    width or the resolution) is not. ``paper_granularity``: chunks of size/16 (at least 8 channels)."""
    rng = np.random.default_rng(seed)

    def make_dim(dim_name: str, size: int) -> Dim:
        chunk = max(8, size // 16) if paper_granularity else step
        return Dim(dim_name, _options(size, chunk), chunk)

    def opts(dim: Dim) -> np.ndarray:
        return np.array(dim.options, float)

    stem_dim = Dim("stem", (stem,), stem)
    dims, blocks = [stem_dim], []
    terms = [Term("stem", (), np.asarray(conv_ms(3, stem, 3, resolution // 2, batch)), None)]
    importance = [ImportanceEntry("stem", np.zeros(1), None)]
    previous, hw = stem_dim, resolution // 2
    for s, (t, c, n, stride) in enumerate(stages):
        stage = make_dim(f"stage{s + 1}", c)
        dims.append(stage)
        importance.append(ImportanceEntry(stage.name, _cumulative_importance(rng, c, stage.options, 2.0), None))
        for j in range(n):
            block = f"{stage.name}.{j}"
            source = previous if j == 0 else stage
            in_hw, out_hw = hw, hw // stride if j == 0 else hw
            gate = None if j == 0 else block
            if j > 0:
                blocks.append(Block(block, removable=True))
            if t == 1:  # no expansion: the depthwise conv runs on the input width
                terms += [Term(f"{block}.dw", (source.name,), _noisy(rng, conv_ms(opts(source), opts(source), 3, out_hw, batch, True)), gate),
                          Term(f"{block}.project", (source.name, stage.name),
                               _noisy(rng, conv_ms(opts(source)[:, None], opts(stage)[None, :], 1, out_hw, batch)), gate)]
                continue
            hidden = make_dim(f"{block}.expand", source.size * t)
            dims.append(hidden)
            importance.append(ImportanceEntry(hidden.name, _cumulative_importance(rng, hidden.size, hidden.options), gate))
            h = opts(hidden)
            terms += [
                Term(f"{block}.expand", (source.name, hidden.name), _noisy(rng, conv_ms(opts(source)[:, None], h[None, :], 1, in_hw, batch)), gate),
                Term(f"{block}.dw", (hidden.name,), _noisy(rng, conv_ms(h, h, 3, out_hw, batch, True)), gate),
                Term(f"{block}.project", (hidden.name, stage.name), _noisy(rng, conv_ms(h[:, None], opts(stage)[None, :], 1, out_hw, batch)), gate),
            ]
        previous, hw = stage, hw // stride
    head = make_dim("head", last)
    dims.append(head)
    importance.append(ImportanceEntry("head", _cumulative_importance(rng, last, head.options, 2.0), None))
    terms += [Term("head.conv", (previous.name, head.name), _noisy(rng, conv_ms(opts(previous)[:, None], opts(head)[None, :], 1, hw, batch)), None),
              Term("fc", (head.name,), 2 * batch * opts(head) * 1000 / _PEAK_FLOPS * 1e3 + _KERNEL_MS, None)]
    return make_problem(dims, importance, terms, blocks, constant_latency=0.05, name=name,
                        generator="synthetic.mobilenet_problem", seed=seed)


def example_problem() -> Problem:
    """The bundled example: a small two-stage bottleneck ResNet at paper granularity."""
    return resnet_problem(depths=(2, 2), mids=(64, 128), expansion=4, step=32, resolution=128, batch=64,
                          seed=7, name="example_resnet_2stage")


__all__ = ["conv_ms", "example_problem", "mobilenet_problem", "resnet_problem", "vit_problem"]
