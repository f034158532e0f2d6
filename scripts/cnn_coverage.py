"""Coverage table of CNN architectures: discovery, nothing-pruned equality, a random pruned export (runs, reloads,
one SGD step). Random-init weights, small resolution. Prints a markdown table (docs/cnn.md § Coverage).

    PYTHONPATH=. python scripts/cnn_coverage.py [--resolution 64] [NAME ...]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time

import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))

from mdp_cli.errors import MdpError  # noqa: E402

MODELS = [
    "resnet18", "tv:resnet50", "timm:resnet18", "resnext50_32x4d", "wide_resnet50_2",
    "regnet_x_400mf", "regnet_y_400mf", "timm:regnetx_002", "timm:regnety_002",
    "mobilenet_v2", "timm:mobilenetv2_050", "mobilenet_v3_small", "mobilenet_v3_large", "timm:mobilenetv3_small_050",
    "efficientnet_b0", "timm:efficientnet_b0", "efficientnet_b3", "timm:tf_efficientnet_lite0",
    "mnasnet0_5", "timm:ghostnet_100", "convnext_tiny", "timm:convnext_tiny",
    "densenet121", "squeezenet1_0", "squeezenet1_1", "shufflenet_v2_x0_5",
    "vgg11", "vgg11_bn", "timm:resnet18d", "timm:gernet_s",
]


def check(name: str, resolution: int) -> tuple[str, str]:
    from mdp_cli.export.cnn_prune import prune_cnn
    from mdp_cli.export.spec import load_exported, save_exported
    from mdp_cli.space.cnn import discover_space

    try:
        model, analysis = discover_space(name, resolution)
    except MdpError as exc:
        return "refused", str(exc)
    space = analysis.space
    x = torch.randn(2, 3, resolution, resolution)
    net, _ = prune_cnn(model, analysis, {}, {})
    with torch.no_grad():
        diff = (net(x) - model(x)).abs().max().item()
    rng = random.Random(0)
    choice = {d.name: rng.choice(d.options[:-1] or d.options) for d in space.dims}
    kept = {b.name: rng.random() < 0.6 for b in analysis.blocks if b.removable}
    pruned, arch = prune_cnn(model, analysis, choice, kept)
    with tempfile.TemporaryDirectory() as tmp:
        save_exported(tmp, pruned, arch)
        again = load_exported(tmp)
    with torch.no_grad():
        same = torch.equal(again(x), pruned(x))
    again.train()
    opt = torch.optim.SGD(again.parameters(), lr=0.01)
    loss = again(x).logsumexp(1).mean()
    loss.backward()
    opt.step()
    ratio = sum(p.numel() for p in pruned.parameters()) / sum(p.numel() for p in model.parameters())
    status = "ok" if diff <= 1e-4 and same else "MISMATCH"
    return status, (f"{len(space.dims)} dims, {sum(b.removable for b in space.blocks)} removable blocks; "
                    f"dense max|diff| {diff:.1e}; random pruned export: {ratio:.0%} params, reloads, trains")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("names", nargs="*")
    args = parser.parse_args()
    torch.manual_seed(0)
    print("| model | result | details |\n|---|---|---|")
    for name in args.names or MODELS:
        t0 = time.perf_counter()
        try:
            status, detail = check(name, args.resolution)
        except Exception as exc:  # the table reports crashes too: they are bugs to fix
            status, detail = "CRASH", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        print(f"| {name} | {status} | {detail} ({time.perf_counter() - t0:.1f} s) |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
