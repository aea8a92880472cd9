"""Run under torchrun by tests/test_glm4v_model_parallel.py: load a GLM-4V-9B / CogAgent-9B checkpoint split
across the processes, forward and greedy-decode every case of a reference fixture (the batch case through the
engine), and (rank 0) save the results.

    torchrun --standalone --nproc-per-node=2 tests/glm4v_model_parallel_worker.py --checkpoint C --fixture F --out R
"""
import argparse
import os
from pathlib import Path

import torch

from cogvlm.utils.checkpoint_io.loading import load_model
from cogvlm.utils.inference.engine import Request, collect, generate_batch
from cogvlm.utils.inference.generation import SamplingConfig
from glm4v_reference import case_inputs, load_cases


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--fixture", required=True, type=Path)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, config = load_model(args.checkpoint, model_parallel_size=int(os.environ["WORLD_SIZE"]))
    cases = load_cases(args.fixture)
    logits, tokens = {}, {}
    with torch.no_grad():
        for name in cases["case_order"]:
            batch = case_inputs(cases, cases["cases"][name], config)
            logits[name] = model.forward_inputs(batch)[0][..., cases["vocab_subset"]]
            rows = [batch.row(row) for row in range(batch.batch_size)]
            requests = [Request(row, SamplingConfig(max_length=len(row) + 8, top_k=1), config.eos_token_ids)
                        for row in rows]
            results = collect(generate_batch(model, requests))
            tokens[name] = [results[row][0] for row in range(len(rows))]
    if torch.distributed.get_rank() == 0:
        attention = model.transformer.layers[0].attention
        torch.save({"logits": logits, "tokens": tokens, "heads_per_rank": attention.num_attention_heads_per_partition,
                    "kv_groups_per_rank": attention.num_multi_query_heads_per_partition}, args.out)


if __name__ == "__main__":
    main()
