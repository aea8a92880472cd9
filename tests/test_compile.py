"""The compiled decode step (utils/inference/generation.compiled_decode_step) over a static cache.

torch.compile on this CPU takes most of a minute for a tiny model, so two tests cover it: the compiled steps give
the eager steps' greedy tokens and logits within 1e-5, the step is one graph without graph breaks, and no step
after the first compiles again; and the engine compiled (CogAgent, a batch that shrinks and grows) gives the
published tokens from one graph."""
import pytest
import torch

from cogvlm.models.inputs import ImageInputs
from cogvlm.utils.inference.generation import compiled_decode_step, decode_one_token, prefill
from conftest import case_inputs

STEPS = 6


def greedy_steps(model, cases, name, decode_step, static):
    """Prefill a case, then STEPS greedy decode steps. -> tokens [STEPS + 1], logits (STEPS + 1, vocab), and the
    dynamo counters after each decode step."""
    from torch._dynamo.utils import counters

    case = cases["cases"][name]
    cache = model.new_kv_cache(1, len(case["input_ids"][0]) + STEPS, static=static)
    logits = [prefill(model, case_inputs(case, ImageInputs(cases["image"]["pixel_values"])), cache)]
    position, seen = case["position_ids"][:, -1:], []
    for _ in range(STEPS):
        position = position + 1
        logits.append(decode_step(model, logits[-1].argmax(-1)[:, None], position, cache))
        seen.append((counters["stats"]["unique_graphs"], sum(counters["graph_break"].values()),
                     counters["frames"]["total"]))
    logits = torch.cat(logits)
    return logits.argmax(-1).tolist(), logits, seen


def test_compiled_decode_steps_equal_eager_ones_and_compile_once(cogvlm_model, cogvlm_cases):
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    with torch.inference_mode():
        eager_tokens, eager_logits, _ = greedy_steps(cogvlm_model, cogvlm_cases, "chat_history", decode_one_token,
                                                     static=False)
        tokens, logits, seen = greedy_steps(cogvlm_model, cogvlm_cases, "chat_history", compiled_decode_step,
                                            static=True)
    assert tokens == eager_tokens
    torch.testing.assert_close(logits, eager_logits, atol=1e-5, rtol=1e-5)
    graphs, breaks, frames = seen[0]
    assert graphs == 1 and breaks == 0 and frames == 1          # the whole step is one graph
    assert set(seen) == {seen[0]}                               # and later steps replay it: nothing new is traced


@pytest.mark.slow
def test_the_engine_compiled_gives_every_cogagent_row_its_published_tokens(cogagent_model, cogagent_cases):
    """Continuous batching with compiled steps (3 slots for 9 requests: the batch shrinks and grows), on CogAgent
    (its cross-attention keys/values read from the cache): published greedy tokens, one graph, no graph breaks."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from cogvlm.utils.inference.engine import Request, collect, generate_batch
    from cogvlm.utils.inference.generation import SamplingConfig

    torch._dynamo.reset()
    counters.clear()
    images = ImageInputs(cogagent_cases["image"]["pixel_values"], cogagent_cases["cross_image"]["pixel_values"])
    cases = cogagent_cases["cases"]
    requests = [Request(case_inputs(case, images), SamplingConfig(max_length=case["generation"]["max_length"]),
                        (2,), name) for name, case in cases.items()]
    results = collect(generate_batch(cogagent_model, requests, num_slots=3, compile=True))
    for name, case in cases.items():
        assert results[name][0] == case["generation"]["new_token_ids"], name
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
