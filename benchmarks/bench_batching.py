"""Decode speed of batched generation (utils/inference/engine.py): B rows decoding together, per row and in
aggregate, against batch 1.

    python benchmarks/bench_batching.py --checkpoint checkpoints/captcha-tiny          # the embedded tiny model
    python benchmarks/bench_batching.py --checkpoint MID_COGVLM_DIR --prompt_tokens 325 --new_tokens 64

Every row is the prompt of bench_generation.py (processor-built, random pixels) with its own image object, run to
--new_tokens with no stop token. The first step admits the B rows (prefilled together) and decodes once; decode
speed is that of every later step. The row "generate" is the single-request path (generation.generate), for
reference. Each repeat runs every row once, in turn, so that a change of machine load hits all rows alike; timings
are the median of --repeats after a warm-up round.
"""
import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from bench_generation import EMBEDDED, make_prompt, peak_rss_gib, tokenizer_for
from cogvlm.models.inputs import ImageInputs, ModelInputs
from cogvlm.utils.checkpoint_io.loading import load_model
from cogvlm.utils.inference.engine import Request, Scheduler
from cogvlm.utils.inference.generation import SamplingConfig, generate


def run_once(model, prompt: ModelInputs, batch_size: int, new_tokens: int) -> tuple[float, float]:
    """-> (first step's seconds, later steps' seconds) of `batch_size` copies of `prompt`."""
    sampling = SamplingConfig(max_length=len(prompt) + new_tokens)
    scheduler = Scheduler(model, batch_size, sampling.max_length, max_queue=batch_size)
    for _ in range(batch_size):     # a copy of the image per row: each row encodes its own, as distinct images do
        images = ImageInputs(*(None if t is None else t.clone() for t in (prompt.images.pixel_values,
                                                                           prompt.images.cross_pixel_values)))
        scheduler.submit(Request(replace(prompt, images=images), sampling))
    start = time.perf_counter()
    tokens = sum(1 for event in scheduler.step() if not event.finished)
    prefilled = time.perf_counter()
    while scheduler.busy:
        tokens += sum(1 for event in scheduler.step() if not event.finished)
    end = time.perf_counter()
    assert tokens == batch_size * new_tokens, tokens
    return prefilled - start, end - prefilled


def run_alone(model, prompt: ModelInputs, new_tokens: int) -> tuple[float, float]:
    """generate() timed as run_once times the engine: (prefill + 2 tokens, the other tokens) in seconds."""
    stream = generate(model, prompt, SamplingConfig(max_length=len(prompt) + new_tokens))
    start = time.perf_counter()
    next(stream), next(stream)
    prefilled = time.perf_counter()
    assert 2 + sum(1 for _ in stream) == new_tokens
    return prefilled - start, time.perf_counter() - prefilled


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(EMBEDDED))
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--prompt_tokens", type=int, default=96, help="image slot included")
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    if args.new_tokens < 3 or min(args.batch_sizes) < 1:
        raise SystemExit("Error: --new_tokens must be at least 3 and every --batch_sizes at least 1")
    torch.set_num_threads(args.threads)

    model, config = load_model(args.checkpoint)
    prompt = make_prompt(config, tokenizer_for(Path(args.checkpoint)), args.prompt_tokens)
    params = sum(p.numel() for p in model.parameters())
    print(f"checkpoint {Path(args.checkpoint).name} ({params / 1e6:.1f} M parameters, fp32), {args.threads} "
          f"thread(s), prompt {len(prompt)} tokens, {args.new_tokens} new tokens per row, median of {args.repeats}")
    print("| batch | first step: prefill + 1 decode (s) | decode tokens/s per row | decode tokens/s aggregate "
          "| aggregate vs batch 1 |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    rows = {"generate": lambda: run_alone(model, prompt, args.new_tokens)}
    rows |= {size: (lambda size=size: run_once(model, prompt, size, args.new_tokens)) for size in args.batch_sizes}
    runs = {name: [] for name in rows}
    for repeat in range(args.repeats + 1):
        for name, run in rows.items():
            timing = run()
            if repeat:                                  # the first round is the warm-up
                runs[name].append(timing)
    single = None
    for name, timings in runs.items():
        batch_size = 1 if name == "generate" else name
        first_step = statistics.median(t[0] for t in timings)
        aggregate = statistics.median(batch_size * (args.new_tokens - 2) / t[1] for t in timings)
        if name == 1:
            single = aggregate
        ratio = f"{aggregate / single:.2f}x" if single else "-"
        print(f"| {name} | {first_step:.3f} | {aggregate / batch_size:.1f} | {aggregate:.1f} | {ratio} |")
    print(f"peak RSS {peak_rss_gib():.2f} GiB")


if __name__ == "__main__":
    main()
