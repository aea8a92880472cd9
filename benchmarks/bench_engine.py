"""One table for the batched, quantised engine: every checkpoint x mode (fp32/bf16/int8/int4) x batch size.

    python benchmarks/bench_engine.py                                          # the embedded model, tiny run
    python benchmarks/bench_engine.py --checkpoints MID_COGVLM MID_COGAGENT --prompt_tokens 325 --new_tokens 32

Per checkpoint and mode: the load time and the peak RSS of loading it and running one prefill, in a fresh process
(bench_quantization.measure_load; the RSS of the interpreter with torch, SAT and the model code, the baseline, is
subtracted), and the relative error of the prefill's last-position logits against fp32. Per batch size: every
row is the prompt of bench_generation.py (processor-built, random pixels, an image per row) decoded by the
engine (utils/inference/engine.py) to --new_tokens with no stop token (bench_batching.run_once), and
  prefill + 1 step   the first scheduler step: the B rows prefilled together, then one decode step
  tokens/s           decode speed of the later steps, per row and in aggregate (B rows)
  step / floor       a decode step's time over the time its bytes take at the read bandwidth probed in the same
                     round (bench_generation.decode_bytes: the weights a token reads, and each row's cached keys
                     and values)
All the modes' models are held in one process and their runs interleaved, round by round, with a bandwidth probe
per round: memory bandwidth here drifts by tens of percent within minutes, so only ratios within one run compare.
Timings are medians of --repeats rounds after a short warm-up of every (mode, batch).
"""
from __future__ import annotations

import argparse
import gc
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench_batching import run_once as run_batch
from bench_generation import EMBEDDED, decode_bytes, make_prompt, read_bandwidth_gbs, tokenizer_for
from bench_quantization import MODES, last_logits, load_in_fresh_process

HEADER = ("| checkpoint | mode | batch | load (s) | peak RSS - baseline (MiB) | logit error vs fp32 "
          "| prefill + 1 step (s) | decode tok/s per row | decode tok/s aggregate | vs fp32 | vs batch 1 "
          "| step / floor |")
WARMUP_TOKENS = 3                       # the fewest bench_batching.run_once takes


@dataclass
class Cell:
    """The timings of one (mode, batch size) over the rounds."""
    first_step_s: list[float] = field(default_factory=list)
    step_s: list[float] = field(default_factory=list)
    floor_s: list[float] = field(default_factory=list)


def load_models(checkpoint: str, modes: list[str]) -> dict:
    """mode -> model, fp32 always among them: it is the logit reference."""
    from cogvlm.utils.checkpoint_io.loading import load_model

    wanted = ["fp32", *(mode for mode in modes if mode != "fp32")]
    return {mode: load_model(checkpoint, dtype=MODES[mode][0], quant=MODES[mode][1])[0] for mode in wanted}


def measure(models: dict, modes: list[str], prompt, batch_sizes: list[int], new_tokens: int, repeats: int,
            probe_gib: float) -> tuple[dict[tuple[str, int], Cell], list[float]]:
    """-> ((mode, batch) -> its Cell, the bandwidth probes in GB/s), runs interleaved round by round."""
    context = len(prompt) + new_tokens // 2                 # cache positions an average decode step reads
    steps = new_tokens - 2                                  # bench_batching.run_once times the steps after the first
    cells = {(mode, size): Cell() for mode in modes for size in batch_sizes}
    for mode in modes:
        for size in batch_sizes:
            run_batch(models[mode], prompt, size, WARMUP_TOKENS)
    probes = []
    for _ in range(repeats):
        probes.append(read_bandwidth_gbs(probe_gib, repeats=3))
        for (mode, size), cell in cells.items():
            first, later = run_batch(models[mode], prompt, size, new_tokens)
            cell.first_step_s.append(first)
            cell.step_s.append(later / steps)
            cell.floor_s.append(decode_bytes(models[mode], size, context) / (probes[-1] * 1e9))
    return cells, probes


def table_rows(name: str, modes: list[str], batch_sizes: list[int], loads: dict, errors: dict,
               cells: dict[tuple[str, int], Cell]) -> list[str]:
    def aggregate(mode: str, size: int) -> float:
        return size / statistics.median(cells[mode, size].step_s)

    rows = []
    for mode in modes:
        load = loads[mode]
        for size in batch_sizes:
            cell = cells[mode, size]
            total = aggregate(mode, size)
            vs_fp32 = f"{total / aggregate('fp32', size):.2f}x" if "fp32" in modes else "-"
            vs_one = f"{total / aggregate(mode, 1):.2f}x" if 1 in batch_sizes else "-"
            floor_ratio = statistics.median(s / f for s, f in zip(cell.step_s, cell.floor_s))
            rows.append(f"| {name} | {mode} | {size} | {load['load_s']:.2f} "
                        f"| {load['peak_mib'] - load['baseline_mib']:.0f} | {errors[mode]:.4f} "
                        f"| {statistics.median(cell.first_step_s):.3f} | {total / size:.1f} | {total:.1f} "
                        f"| {vs_fp32} | {vs_one} | {floor_ratio:.2f}x |")
    return rows


def bench_checkpoint(checkpoint: str, args) -> tuple[list[str], str]:
    """-> (the checkpoint's table rows, a footnote on its bandwidth probes and RSS baseline)."""
    loads = {mode: load_in_fresh_process(checkpoint, mode, args.threads, args.prompt_tokens) for mode in args.modes}
    models = load_models(checkpoint, args.modes)
    prompt = make_prompt(models["fp32"].config, tokenizer_for(Path(checkpoint)), args.prompt_tokens)
    reference = last_logits(models["fp32"], prompt)
    errors = {mode: ((last_logits(models[mode], prompt) - reference).norm() / reference.norm()).item()
              for mode in args.modes}
    cells, probes = measure(models, args.modes, prompt, args.batch_sizes, args.new_tokens, args.repeats,
                            args.probe_gib)
    name = Path(checkpoint).name
    note = (f"{name}: read bandwidth {statistics.median(probes):.1f} GB/s (probes {min(probes):.1f}-"
            f"{max(probes):.1f}), RSS baseline {loads[args.modes[0]]['baseline_mib']:.0f} MiB, "
            f"{sum(p.numel() for p in models['fp32'].parameters()) / 1e6:.1f} M parameters")
    del models
    gc.collect()
    return table_rows(name, args.modes, args.batch_sizes, loads, errors, cells), note


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", nargs="+", default=[str(EMBEDDED)])
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--prompt_tokens", type=int, default=96, help="image slot included")
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--probe_gib", type=float, default=1.0, help="buffer size of the bandwidth probe")
    args = parser.parse_args(argv)
    if args.new_tokens <= WARMUP_TOKENS or min(args.batch_sizes) < 1 or args.repeats < 1:
        parser.error(f"--new_tokens must be more than {WARMUP_TOKENS}, --batch_sizes and --repeats at least 1")
    args.modes = list(dict.fromkeys(args.modes))
    args.batch_sizes = list(dict.fromkeys(args.batch_sizes))
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{args.threads} thread(s), prompt {args.prompt_tokens} tokens (image included), {args.new_tokens} new "
          f"tokens per row, medians of {args.repeats} interleaved rounds")
    print(HEADER)
    print("|" + " --- |" * HEADER.count(" | ") + " --- |")
    notes = []
    for checkpoint in args.checkpoints:
        rows, note = bench_checkpoint(checkpoint, args)
        print("\n".join(rows), flush=True)
        notes.append(note)
    print("\n".join(notes))


if __name__ == "__main__":
    main()
