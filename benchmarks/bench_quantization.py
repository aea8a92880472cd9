"""fp32 against bf16, --quant 8 and --quant 4 on one checkpoint: peak RSS and time of loading, logit error,
decode speed.

    python benchmarks/bench_quantization.py --checkpoint checkpoints/captcha-tiny      # the embedded tiny model
    python benchmarks/bench_quantization.py --checkpoint MID_COGVLM_DIR --prompt_tokens 325 --new_tokens 64

Loading is measured in a fresh process per mode (peak RSS is a high-water mark): the RSS after importing torch,
SAT and the model code is the baseline; the peak after loading and one prefill, minus it, is what the weights cost. Decode speed and
logit error come from one process holding the three models, their runs interleaved so that a drifting machine
(memory bandwidth here swings by 30% within minutes) moves them alike. The logit error is that of the prefill's
last position (the first generated token's distribution), relative to fp32: |q - f| / |f|. Prints a table.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench_generation import EMBEDDED, make_prompt, run_once, tokenizer_for

# mode -> (compute dtype, weight bits): bf16 is the unquantised half-precision reference the quantised modes beat
MODES = {"fp32": (torch.float32, None), "bf16": (torch.bfloat16, None), "int8": (torch.float32, 8),
         "int4": (torch.float32, 4)}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def measure_load(checkpoint: str, mode: str, prompt_tokens: int) -> dict:
    """In this (fresh) process: the RSS baseline after the imports, then the load time and the peak RSS of
    loading and running one prefill. The prefill counts because the states file is memory-mapped: an fp32 load
    reads no weight until the first forward does (the peak of loading alone would flatter it)."""
    import sat  # noqa: F401 - imported before the baseline is taken: the loading imports it
    from cogvlm.utils.checkpoint_io.loading import load_model

    baseline = peak_rss_mib()
    start = time.perf_counter()
    dtype, bits = MODES[mode]
    model, config = load_model(checkpoint, dtype=dtype, quant=bits)
    load_seconds = time.perf_counter() - start
    last_logits(model, make_prompt(config, tokenizer_for(Path(checkpoint)), prompt_tokens))
    return {"load_s": load_seconds, "baseline_mib": baseline, "peak_mib": peak_rss_mib()}


def load_in_fresh_process(checkpoint: str, mode: str, threads: int, prompt_tokens: int) -> dict:
    result = subprocess.run([sys.executable, __file__, "--checkpoint", checkpoint, "--threads", str(threads),
                             "--prompt_tokens", str(prompt_tokens), "--measure_load", mode],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"Error: loading {mode} failed: {result.stderr.strip().splitlines()[-1]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def last_logits(model, prompt) -> torch.Tensor:
    with torch.no_grad():
        inputs = prompt.to(model.device, model.dtype)
        return model.forward_inputs(inputs, last_token_only=True)[0][0, -1].float()       # (vocab,)


def compare(checkpoint: str, prompt_tokens: int, new_tokens: int, repeats: int) -> dict[str, dict]:
    from cogvlm.utils.checkpoint_io.loading import load_model

    models = {mode: load_model(checkpoint, dtype=dtype, quant=bits)[0] for mode, (dtype, bits) in MODES.items()}
    config = models["fp32"].config
    prompt = make_prompt(config, tokenizer_for(Path(checkpoint)), prompt_tokens)
    reference = last_logits(models["fp32"], prompt)
    results = {}
    for mode, model in models.items():
        logits = last_logits(model, prompt)
        results[mode] = {"logit_error": ((logits - reference).norm() / reference.norm()).item(),
                         "same_top1": bool(logits.argmax() == reference.argmax()), "runs": []}
        run_once(model, prompt, new_tokens)                                                  # warm-up
    for _ in range(repeats):
        for mode, model in models.items():
            results[mode]["runs"].append(run_once(model, prompt, new_tokens))
    for result in results.values():
        runs = result.pop("runs")
        result["ttft_s"] = statistics.median(r[0] for r in runs)
        result["decode_tps"] = statistics.median(r[1] for r in runs)
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(EMBEDDED))
    parser.add_argument("--prompt_tokens", type=int, default=96, help="image slot included")
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--measure_load", choices=list(MODES), help=argparse.SUPPRESS)     # the child's task
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.measure_load:
        print(json.dumps(measure_load(args.checkpoint, args.measure_load, args.prompt_tokens)))
        return

    loads = {mode: load_in_fresh_process(args.checkpoint, mode, args.threads, args.prompt_tokens) for mode in MODES}
    speed = compare(args.checkpoint, args.prompt_tokens, args.new_tokens, args.repeats)
    fp32_weights = loads["fp32"]["peak_mib"] - loads["fp32"]["baseline_mib"]
    fp32_tps = speed["fp32"]["decode_tps"]
    print(f"| {Path(args.checkpoint).name} | load (s) | peak RSS of load + prefill - baseline (MiB) | vs fp32 "
          f"| last-position logit error vs fp32 | same top-1 | time to first token (s) | decode tokens/s | vs fp32 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for mode in MODES:
        load, result = loads[mode], speed[mode]
        weights = load["peak_mib"] - load["baseline_mib"]
        print(f"| {mode} | {load['load_s']:.2f} | {weights:.0f} | {weights / fp32_weights:.2f}x "
              f"| {result['logit_error']:.4f} | {'yes' if result['same_top1'] else 'no'} | {result['ttft_s']:.3f} "
              f"| {result['decode_tps']:.1f} | {result['decode_tps'] / fp32_tps:.2f}x |")
    print(f"(threads {args.threads}, prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens, medians of "
          f"{args.repeats} interleaved runs; baseline RSS {loads['fp32']['baseline_mib']:.0f} MiB)")


if __name__ == "__main__":
    main()
