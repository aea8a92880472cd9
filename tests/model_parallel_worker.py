"""Run under torchrun by tests/test_model_parallel.py: load a checkpoint split across the processes, forward
and greedy-decode every fixture case, one at a time and all together through the continuous-batching engine
(fewer slots than cases: rows join and retire), and (rank 0) save the results, with every rank's trace of the
engine's decode batches; optionally save the split checkpoint.

    torchrun --standalone --nproc-per-node=2 tests/model_parallel_worker.py --checkpoint C --cases cases.pt \
        --out results.pt [--save DIR] [--quant 8|4]
"""
import argparse
import os

import torch

from cogvlm.models.inputs import ImageInputs, ModelInputs
from cogvlm.utils.checkpoint_io.loading import load_model, save_model
from cogvlm.utils.inference.engine import Request, Scheduler, collect
from cogvlm.utils.inference.generation import SamplingConfig, generate

ENGINE_SLOTS = 3


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--cases", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--save")
    parser.add_argument("--quant", type=int, choices=[8, 4])
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, config = load_model(args.checkpoint, model_parallel_size=int(os.environ["WORLD_SIZE"]), quant=args.quant)
    data = torch.load(args.cases, weights_only=False)
    cross = data.get("cross_image", {}).get("pixel_values")
    images = ImageInputs(data["image"]["pixel_values"], cross)
    logits, tokens = {}, {}
    with torch.no_grad():
        for name, case in data["cases"].items():
            prompt = ModelInputs(case["input_ids"], case["position_ids"], case["vision_expert_mask"],
                                 case["image_embed_mask"], images)
            logits[name] = model.forward_inputs(prompt)[0]
            tokens[name] = list(generate(model, prompt, SamplingConfig(max_length=case["generation"]["max_length"]),
                                         (config.eos_token_id,)))
    batched = run_engine(model, data, images, config.eos_token_id)
    traces = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(traces, batched.pop("trace"))
    if args.save:
        save_model(model, args.save)
    if torch.distributed.get_rank() == 0:
        heads = model.transformer.layers[0].attention.num_attention_heads_per_partition
        torch.save({"logits": logits, "tokens": tokens, "heads_per_rank": heads, "batched": batched,
                    "engine_traces": traces}, args.out)


def run_engine(model, data, images, eos_token_id) -> dict:
    """Every case through one Scheduler. -> each case's tokens and step logits, and this rank's trace of the
    decode batches (the request ids of each step's rows, in cache order)."""
    step_logits, trace = {}, []
    scheduler = Scheduler(model, ENGINE_SLOTS, max_length=max(c["generation"]["max_length"]
                                                              for c in data["cases"].values()),
                          on_logits=lambda request_id, row: step_logits.setdefault(request_id, []).append(row))
    decode = scheduler.decode_step
    scheduler.decode_step = lambda *args: (trace.append([row.request_id for row in scheduler.rows]),
                                           decode(*args))[1]
    for name, case in data["cases"].items():
        prompt = ModelInputs(case["input_ids"], case["position_ids"], case["vision_expert_mask"],
                             case["image_embed_mask"], images)
        scheduler.submit(Request(prompt, SamplingConfig(max_length=case["generation"]["max_length"]),
                                 (eos_token_id,), name))
    events = []
    while scheduler.busy:
        events += scheduler.step()
    results = collect(events)
    return {"tokens": {name: tokens for name, (tokens, _) in results.items()},
            "step_logits": {name: torch.stack(rows) for name, rows in step_logits.items()}, "trace": trace}


if __name__ == "__main__":
    main()
