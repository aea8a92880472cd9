"""KV-cached generation and sampling."""
import pytest
import torch

from cogvlm.models.inputs import ImageInputs
from cogvlm.utils.inference.generation import (PromptTooLongError, SamplingConfig, decode_one_token, generate, prefill,
                                               sample_next_token)
from conftest import case_inputs

EOS = 2


def prompt_of(case, pixels):
    return case_inputs(case, ImageInputs(pixels))


@pytest.mark.parametrize("name", ["base_describe", "chat_describe", "chat_old_count", "vqa_color", "chat_history",
                                  "chat_old_history", "vqa_history_ignored", "base_history_ignored", "chat_bytes"])
def test_greedy_generation_matches_published_tokens(cogvlm_model, cogvlm_cases, name):
    case = cogvlm_cases["cases"][name]
    sampling = SamplingConfig(max_length=case["generation"]["max_length"])      # the CLI defaults: greedy
    tokens = list(generate(cogvlm_model, prompt_of(case, cogvlm_cases["image"]["pixel_values"]), sampling, (EOS,)))
    assert tokens == case["generation"]["new_token_ids"]


@pytest.mark.parametrize("name", ["chat_describe", "chat_history"])
def test_cached_step_logits_match_published(cogvlm_model, cogvlm_cases, name):
    """Teacher-forced on the published tokens: every decode step's logits, from the preallocated cache."""
    case = cogvlm_cases["cases"][name]
    expected = case["generation"]["step_logits"]                                   # (n, vocab)
    cache = cogvlm_model.new_kv_cache(1, case["generation"]["max_length"])
    with torch.no_grad():
        steps = [prefill(cogvlm_model, prompt_of(case, cogvlm_cases["image"]["pixel_values"]), cache)]
        position = case["position_ids"][:, -1:]
        for token in case["generation"]["new_token_ids"][:-1]:
            position = position + 1
            steps.append(decode_one_token(cogvlm_model, torch.tensor([[token]]), position, cache))
    torch.testing.assert_close(torch.cat(steps), expected, atol=1e-5, rtol=1e-5)
    assert cache.length == len(case["input_ids"][0]) + len(expected) - 1


def test_cached_decoding_equals_uncached_forward(cogvlm_model, cogvlm_cases):
    case = cogvlm_cases["cases"]["chat_old_history"]
    new = torch.tensor([case["generation"]["new_token_ids"]])                       # (1, n)
    full = torch.cat([case["input_ids"], new], 1)
    length = case["input_ids"].shape[1]
    positions = torch.cat([case["position_ids"], case["position_ids"][:, -1:] + torch.arange(1, new.shape[1] + 1)], 1)
    pad = torch.zeros_like(new)
    with torch.no_grad():
        uncached = cogvlm_model(full, positions, images=ImageInputs(cogvlm_cases["image"]["pixel_values"]),
                                image_embed_mask=torch.cat([case["image_embed_mask"], pad], 1),
                                vision_expert_mask=torch.cat([case["vision_expert_mask"], pad], 1))[0]
        cache = cogvlm_model.new_kv_cache(1, full.shape[1])
        cached = [prefill(cogvlm_model, prompt_of(case, cogvlm_cases["image"]["pixel_values"]), cache)]
        for i in range(new.shape[1]):
            cached.append(decode_one_token(cogvlm_model, new[:, i:i + 1], positions[:, length + i:length + i + 1],
                                           cache))
    torch.testing.assert_close(torch.cat(cached), uncached[0, length - 1:], atol=1e-5, rtol=1e-5)


def test_prompt_that_does_not_fit_is_a_clear_error(cogvlm_model, cogvlm_cases):
    case = cogvlm_cases["cases"]["chat_describe"]
    with pytest.raises(PromptTooLongError, match="40 tokens, 18 of them for the image; max_length 40"):
        next(generate(cogvlm_model, prompt_of(case, cogvlm_cases["image"]["pixel_values"]),
                      SamplingConfig(max_length=40)))


def test_generation_stops_at_max_length_and_at_stop_tokens(cogvlm_model, cogvlm_cases):
    case = cogvlm_cases["cases"]["chat_describe"]
    prompt = prompt_of(case, cogvlm_cases["image"]["pixel_values"])
    expected = case["generation"]["new_token_ids"]
    assert list(generate(cogvlm_model, prompt, SamplingConfig(max_length=len(prompt) + 3))) == expected[:3]
    # The 4th greedy token (266) treated as a stop token ends the answer before it.
    assert list(generate(cogvlm_model, prompt, SamplingConfig(max_length=len(prompt) + 8), (266,))) == expected[:3]


def test_seeded_sampling_is_reproducible_and_differs_from_greedy(cogvlm_model, cogvlm_cases):
    case = cogvlm_cases["cases"]["chat_describe"]
    prompt = prompt_of(case, cogvlm_cases["image"]["pixel_values"])
    sampling = SamplingConfig(max_length=len(prompt) + 12, temperature=1.5, top_k=0, top_p=1.0, seed=7)
    first, second = (list(generate(cogvlm_model, prompt, sampling)) for _ in range(2))
    assert first == second
    greedy = list(generate(cogvlm_model, prompt, SamplingConfig(max_length=len(prompt) + 12)))
    assert first != greedy


def test_top_k_and_top_p_keep_only_the_allowed_tokens():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    none = torch.empty(1, 0, dtype=torch.long)
    draws = lambda sampling: {int(sample_next_token(logits, none, sampling, torch.Generator().manual_seed(s)))  # noqa
                              for s in range(1000)}
    assert draws(SamplingConfig(temperature=1.0, top_k=2, top_p=1.0)) == {0, 1}
    # softmax([4,3,2,1,0]) = [.636, .234, .086, .032, .012]: top_p .8 keeps the first two (.636 < .8 <= .87).
    assert draws(SamplingConfig(temperature=1.0, top_k=0, top_p=0.8)) == {0, 1}
    assert draws(SamplingConfig(temperature=1.0, top_k=0, top_p=0.5)) == {0}
    assert draws(SamplingConfig(temperature=1.0, top_k=0, top_p=1.0)) == {0, 1, 2, 3, 4}


def test_repetition_penalty_demotes_generated_tokens_whatever_their_sign():
    logits = torch.tensor([[2.0, 1.9, -1.0, -1.1]])
    penalised = SamplingConfig(repetition_penalty=1.2)          # greedy (top_k=1)
    assert int(sample_next_token(logits, torch.tensor([[0]]), penalised)) == 1     # 2.0/1.2 < 1.9
    assert int(sample_next_token(logits[:, 2:], torch.tensor([[0]]), penalised)) == 1   # -1.2 < -1.1
    assert int(sample_next_token(logits, torch.tensor([[0]]), SamplingConfig())) == 0
