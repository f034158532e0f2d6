"""N mixed-precision training steps of an exported model on synthetic data: does AMP train it on this device?

Loads an export (``arch.json`` + ``model.safetensors``) the way ``mdp finetune`` does
(``train.engine.load_model``), and runs SGD steps under ``torch.autocast`` (float16 with a gradient scaler,
or bfloat16) on random images and labels made on the device, so no data set is needed. Fails (exit 1) when
a loss is not finite; writes steps/s, images/s, the first and last loss as JSON.

    python scripts/amp_steps.py exported/ --steps 100 --batch 64 --amp fp16 --device cuda --out amp.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mdp_cli.train.engine import load_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", help="Exported model directory.")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--amp", choices=["fp16", "bf16", "off"], default="fp16")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--channels-last", action="store_true", help="Train in channels_last memory format.")
    parser.add_argument("--out", help="Write the result as JSON here.")
    args = parser.parse_args()

    loaded = load_model(args.export)
    arch = loaded.arch or {}
    size = int(arch.get("resolution") or (arch.get("data_config") or {}).get("input_size", [3, 224, 224])[-1])
    model = loaded.module.to(args.device).eval()
    with torch.no_grad():
        classes = int(model(torch.randn(1, 3, size, size, device=args.device)).shape[-1])
    model.train()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "off": None}[args.amp]
    scaler = torch.amp.GradScaler(enabled=args.amp == "fp16")
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    generator = torch.Generator(device=args.device).manual_seed(0)
    losses = []
    cuda = args.device.startswith("cuda")
    start = None
    for step in range(args.steps + 1):
        if step == 1:  # the first step (allocations, autotuning) is not timed
            if cuda:
                torch.cuda.synchronize(args.device)
            start = time.perf_counter()
        x = torch.randn(args.batch, 3, size, size, device=args.device, generator=generator)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, classes, (args.batch,), device=args.device, generator=generator)
        with torch.autocast(device_type="cuda" if cuda else "cpu", dtype=dtype or torch.float32,
                            enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # clip the true gradients: a random-init net at a tiny batch can blow up
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        losses.append(float(loss.detach()))
    if cuda:
        torch.cuda.synchronize(args.device)
    seconds = time.perf_counter() - start if start is not None else float("nan")
    result = {"export": args.export, "steps": args.steps, "batch": args.batch, "amp": args.amp, "device": args.device,
              "resolution": size, "steps_per_s": args.steps / seconds if args.steps else None,
              "images_per_s": args.steps * args.batch / seconds if args.steps else None,
              "first_loss": losses[0], "last_loss": losses[-1],
              "finite": all(math.isfinite(v) for v in losses)}
    print(json.dumps(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    if not result["finite"]:
        raise SystemExit(f"{args.export}: a loss was not finite under --amp {args.amp}")


if __name__ == "__main__":
    main()
