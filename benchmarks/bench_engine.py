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
Timings are medians of --repeats rounds after a short warm-up of every mode.

With --profile_steps N, a second table shows where a decode step's time goes: N engine steps per (mode, batch)
under torch.profiler, each operator's own time summed by kind (the weight matmuls, attention, copies and casts,
sampling, SAT's model-parallel wrappers around every linear, other operators) and, as the rest of the wall time,
what runs outside any operator: Python (SAT's hooks, the engine's bookkeeping), dispatch, and on a loaded machine
time spent waiting for a core. Profiling slows a step down: compare the parts, not the step times, with the first
table.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench_batching import run_once as run_batch
from bench_generation import EMBEDDED, decode_bytes, make_prompt, read_bandwidth_gbs, tokenizer_for
from bench_quantization import MODES as LOAD_MODES
from bench_quantization import last_logits, load_in_fresh_process
from cogvlm.utils.quantization.weight_only import QuantConfig

# mode -> (compute dtype, quantisation); "int8+compile" is int8 with QuantConfig.compile_decode (the same weights:
# its load is measured as int8's)
MODES = LOAD_MODES | {"int8+compile": (torch.float32, QuantConfig(8, compile_decode=True))}
LOADED_AS = {mode: mode for mode in LOAD_MODES} | {"int8+compile": "int8"}

HEADER = ("| checkpoint | mode | batch | load (s) | peak RSS - baseline (MiB) | logit error vs fp32 "
          "| prefill + 1 step (s) | decode tok/s per row | decode tok/s aggregate | vs fp32 | vs batch 1 "
          "| step / floor |")
WARMUP_TOKENS = 3                       # the fewest bench_batching.run_once takes
PROFILE_HEADER = ("| checkpoint | mode | batch | profiled step (ms) | matmuls (ms) | attention (ms) "
                  "| copies and casts (ms) | sampling (ms) | SAT model-parallel wrappers (ms) | other ops (ms) "
                  "| outside ops: Python, hooks, waiting (ms) |")
# Operator kinds, by the start of the profiler's event names (own time, children excluded: aten::linear's is its
# mm's). A compiled graph (int8+compile's one-row matmul) is one event, "## Call CompiledFxGraph <hash> ##".
OP_KINDS = {
    "matmuls": ("aten::mm", "aten::addmm", "aten::_weight_int8pack_mm", "aten::_weight_int4pack_mm_for_cpu",
                "## Call CompiledFxGraph"),
    "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math",
                  "aten::bmm", "aten::baddbmm", "aten::_softmax"),
    "copies and casts": ("aten::copy_", "aten::_to_copy", "aten::cat", "aten::clone", "aten::index_put_"),
    "sampling": ("aten::argmax", "aten::topk", "aten::sort", "aten::multinomial"),
    # SAT's autograd functions around every parallel linear (identities at model-parallel size 1): Python time
    "SAT model-parallel wrappers": ("_CopyToModelParallelRegion", "_ReduceFromModelParallelRegion",
                                    "_GatherFromModelParallelRegion", "_ScatterToModelParallelRegion"),
}


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
    for mode in modes:                   # first calls of each model's kernels; a batch-16 prefill would add nothing
        run_batch(models[mode], prompt, 1, WARMUP_TOKENS)
    probes = []
    for _ in range(repeats):
        probes.append(read_bandwidth_gbs(probe_gib, repeats=3))
        for (mode, size), cell in cells.items():
            first, later = run_batch(models[mode], prompt, size, new_tokens)
            cell.first_step_s.append(first)
            cell.step_s.append(later / steps)
            cell.floor_s.append(decode_bytes(models[mode], size, context) / (probes[-1] * 1e9))
    return cells, probes


def profile_steps(model, prompt, batch_size: int, steps: int) -> dict[str, float]:
    """Milliseconds per decode step: the wall time ("step"), each OP_KINDS kind's operators, the other operators,
    and the rest ("outside ops"), over `steps` engine steps of `batch_size` copies of `prompt` after the prefill."""
    from torch.profiler import ProfilerActivity, profile

    from cogvlm.utils.inference.engine import Request, Scheduler
    from cogvlm.utils.inference.generation import SamplingConfig

    sampling = SamplingConfig(max_length=len(prompt) + steps + 2)
    scheduler = Scheduler(model, batch_size, sampling.max_length, max_queue=batch_size)
    for _ in range(batch_size):
        scheduler.submit(Request(prompt, sampling))
    scheduler.step()                                                   # the prefill and a first decode step
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        start = time.perf_counter()
        for _ in range(steps):
            scheduler.step()
        wall_ms = (time.perf_counter() - start) * 1e3
    own_ms = {event.key: event.self_cpu_time_total / 1e3 for event in profiler.key_averages()}
    parts = {kind: sum(ms for key, ms in own_ms.items() if key.startswith(names)) for kind, names in OP_KINDS.items()}
    parts["other ops"] = sum(own_ms.values()) - sum(parts.values())
    parts["outside ops"] = wall_ms - sum(own_ms.values())
    return {"step": wall_ms / steps} | {kind: ms / steps for kind, ms in parts.items()}


def profile_rows(name: str, models: dict, modes: list[str], prompt, batch_sizes: list[int], steps: int) -> list[str]:
    profile_steps(models[modes[0]], prompt, 1, 1)             # the profiler's first use in a process costs extra
    rows = []
    for mode in modes:
        for size in batch_sizes:
            parts = profile_steps(models[mode], prompt, size, steps)
            rows.append(f"| {name} | {mode} | {size} | " + " | ".join(f"{ms:.2f}" for ms in parts.values()) + " |")
    return rows


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


def measure_loads(checkpoint: str, args) -> dict[str, dict]:
    """mode -> its load time, RSS baseline and peak (bench_quantization.measure_load in a fresh process). Run before
    this process loads any model: a child's peak RSS starts at its parent's RSS when it is forked."""
    measured = {}
    for mode in args.modes:
        if LOADED_AS[mode] not in measured:
            measured[LOADED_AS[mode]] = load_in_fresh_process(checkpoint, LOADED_AS[mode], args.threads,
                                                              args.prompt_tokens)
    return {mode: measured[LOADED_AS[mode]] for mode in args.modes}


def bench_checkpoint(checkpoint: str, loads: dict[str, dict], args) -> tuple[list[str], str, list[str]]:
    """-> (the checkpoint's table rows, a footnote on its bandwidth probes and RSS baseline, its profile rows)."""
    models = load_models(checkpoint, args.modes)
    prompt = make_prompt(models["fp32"].config, tokenizer_for(Path(checkpoint)), args.prompt_tokens)
    reference = last_logits(models["fp32"], prompt)
    errors = {mode: ((last_logits(models[mode], prompt) - reference).norm() / reference.norm()).item()
              for mode in args.modes}
    cells, probes = measure(models, args.modes, prompt, args.batch_sizes, args.new_tokens, args.repeats,
                            args.probe_gib)
    name = Path(checkpoint).name
    profiled = (profile_rows(name, models, args.modes, prompt, args.profile_batch_sizes, args.profile_steps)
                if args.profile_steps else [])
    note = (f"{name}: read bandwidth {statistics.median(probes):.1f} GB/s (probes {min(probes):.1f}-"
            f"{max(probes):.1f}), RSS baseline {loads[args.modes[0]]['baseline_mib']:.0f} MiB, "
            f"{sum(p.numel() for p in models['fp32'].parameters()) / 1e6:.1f} M parameters")
    del models
    gc.collect()
    return table_rows(name, args.modes, args.batch_sizes, loads, errors, cells), note, profiled


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", nargs="+", default=[str(EMBEDDED)])
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(LOAD_MODES),
                        help="int8+compile: int8 with one-row matmuls compiled (QuantConfig.compile_decode)")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--prompt_tokens", type=int, default=96, help="image slot included")
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--probe_gib", type=float, default=1.0, help="buffer size of the bandwidth probe")
    parser.add_argument("--profile_steps", type=int, default=0,
                        help="also profile this many decode steps per mode and --profile_batch_sizes (0: none)")
    parser.add_argument("--profile_batch_sizes", type=int, nargs="+", default=[1])
    args = parser.parse_args(argv)
    sizes = args.batch_sizes + args.profile_batch_sizes
    if args.new_tokens <= WARMUP_TOKENS or min(sizes) < 1 or args.repeats < 1 or args.profile_steps < 0:
        parser.error(f"--new_tokens must be more than {WARMUP_TOKENS}, --batch_sizes and --repeats at least 1, "
                     f"--profile_steps at least 0")
    args.modes = list(dict.fromkeys(args.modes))
    args.batch_sizes = list(dict.fromkeys(args.batch_sizes))
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    import sat  # noqa: F401 - SAT logs to stdout when first imported: before the table, not inside it
    print(f"{args.threads} thread(s), prompt {args.prompt_tokens} tokens (image included), {args.new_tokens} new "
          f"tokens per row, medians of {args.repeats} interleaved rounds")
    print(HEADER)
    print("|" + " --- |" * HEADER.count(" | ") + " --- |")
    loads = {checkpoint: measure_loads(checkpoint, args) for checkpoint in args.checkpoints}
    notes, profiled = [], []
    for checkpoint in args.checkpoints:
        rows, note, breakdown = bench_checkpoint(checkpoint, loads[checkpoint], args)
        print("\n".join(rows), flush=True)
        notes.append(note)
        profiled += breakdown
    print("\n".join(notes))
    if profiled:
        print(f"\nWhere a decode step's time goes ({args.profile_steps} profiled engine steps per row; see --help)")
        print(PROFILE_HEADER)
        print("|" + " --- |" * (PROFILE_HEADER.count(" | ") + 1))
        print("\n".join(profiled))


if __name__ == "__main__":
    main()
