"""Pages/s through the worker's engine one page at a time vs batched, measured side by side in one
run (these machines are noisy: compare the ratio, not absolute numbers across runs).

    python bench/batching.py [--model DIR] [--pages 16] [--batch 8] [--mode base] [--tokens 32]

Without --model it builds the tiny random checkpoint in a temporary folder. Every page generates
exactly --tokens tokens (the guard is off and a random model never emits EOS, so both arms do the
same work). The arms alternate twice (single, batched, single, batched) and the best of each is kept.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))


def make_pages(n: int):
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=32)
    pages = []
    for i in range(n):
        image = Image.new("RGB", (1240, 1754), "white")
        draw = ImageDraw.Draw(image)
        for line in range(20):
            draw.text((80, 100 + line * 70), f"Page {i + 1} line {line + 1}: the quick brown fox", fill="black",
                      font=font)
        pages.append(image)
    return pages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--pages", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--mode", default="base")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    from worker.engine import Engine
    from worker.modes import MODES
    from worker.pages import PageInput
    from worker.schema import GuardConfig
    from worker.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from make_tiny_checkpoint import make_tiny_checkpoint

            model = make_tiny_checkpoint(Path(tmp) / "tiny")
        started = time.perf_counter()
        engine = Engine.load(Settings(model_path=model, device=args.device))
        load_s = time.perf_counter() - started
        engine.warmup()
        inputs = [PageInput(image=im, prompt="<image>\nFree OCR.", view=MODES[args.mode].view,
                            max_tokens=args.tokens, guard=GuardConfig(0, 1)) for im in make_pages(args.pages)]

        def single() -> float:
            started = time.perf_counter()
            for page in inputs:
                engine.generate([page])
            return time.perf_counter() - started

        def batched() -> float:
            started = time.perf_counter()
            for i in range(0, len(inputs), args.batch):
                engine.generate(inputs[i:i + args.batch])
            return time.perf_counter() - started

        times = {"single": [], "batched": []}
        for _ in range(2):
            times["single"].append(single())
            times["batched"].append(batched())
        best = {k: min(v) for k, v in times.items()}
        info = engine.info
        print(f"model {model} on {info.device} ({info.dtype}), loaded in {load_s:.2f}s; mode {args.mode}, "
              f"{args.pages} A4 pages x {args.tokens} tokens, batch {args.batch}")
        for arm in ("single", "batched"):
            print(f"{arm:8s} {args.pages / best[arm]:7.2f} pages/s, {1000 * best[arm] / args.pages:7.0f} ms/page  "
                  f"(best of {len(times[arm])}: {best[arm]:.2f}s; all {[round(t, 2) for t in times[arm]]})")
        print(f"ratio batched/single: {best['single'] / best['batched']:.2f}x")


if __name__ == "__main__":
    main()
