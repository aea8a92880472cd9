"""utils/inference/engine.py: batched generation and continuous batching.

Every row's tokens must be the published greedy tokens of its request (tests/fixtures/*/cases.pt) and its logits
the published step logits within 1e-5, whatever else runs beside it and whenever it was admitted."""
from collections import defaultdict

import pytest
import torch

from cogvlm.models.inputs import ImageInputs, ModelInputs
from cogvlm.utils.inference.engine import QueueFullError, Request, Scheduler, collect, generate_batch
from cogvlm.utils.inference.generation import SamplingConfig, generate
from conftest import case_inputs

ATOL = RTOL = 1e-5
EOS = 2


def fixture(request, name):
    return request.getfixturevalue(f"{name}_model"), request.getfixturevalue(f"{name}_cases")


def images_of(cases) -> ImageInputs:
    return ImageInputs(cases["image"]["pixel_values"], cases.get("cross_image", {}).get("pixel_values"))


def case_request(cases, name, request_id=None, **sampling) -> Request:
    case = cases["cases"][name]
    settings = dict(max_length=case["generation"]["max_length"]) | sampling
    return Request(case_inputs(case, images_of(cases)), SamplingConfig(**settings), (EOS,), request_id)


def recorder():
    """An on_logits callback and what it saw: request id -> [(vocab,) logits per step]."""
    seen = defaultdict(list)
    return seen, lambda request_id, logits: seen[request_id].append(logits.clone())


def assert_published(cases, name, tokens, logits=None):
    generation = cases["cases"][name]["generation"]
    assert tokens == generation["new_token_ids"], name
    if logits is not None:
        torch.testing.assert_close(torch.stack(logits), generation["step_logits"], atol=ATOL, rtol=RTOL)


# --- batched generation --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["cogvlm", "cogagent"])
def test_every_row_of_a_batch_gives_its_published_tokens_and_logits(name, request):
    """Nine prompts of lengths 23..78, histories and templates differing, all generated together."""
    model, cases = fixture(request, name)
    names = list(cases["cases"])
    seen, on_logits = recorder()
    results = collect(generate_batch(model, [case_request(cases, n, n) for n in names], on_logits=on_logits))
    for n in names:
        tokens, end = results[n]
        assert end.finish_reason == "length"
        assert_published(cases, n, tokens, seen[n])


@pytest.mark.parametrize("name", ["cogvlm", "cogagent"])
def test_requests_queued_beyond_the_slots_join_as_rows_finish(name, request):
    model, cases = fixture(request, name)
    names = list(cases["cases"])
    seen, on_logits = recorder()
    results = collect(generate_batch(model, [case_request(cases, n, n) for n in names], num_slots=2,
                                     on_logits=on_logits))
    for n in names:
        assert_published(cases, n, results[n][0], seen[n])


def test_rows_stop_on_their_own_and_stream_nothing_after_their_end(cogvlm_model, cogvlm_cases):
    """A stop token, a short budget and a full budget in one batch; a row's end is its last event."""
    published = cogvlm_cases["cases"]["chat_describe"]["generation"]["new_token_ids"]
    prompt_length = len(cogvlm_cases["cases"]["chat_describe"]["input_ids"][0])
    stopping = Request(case_inputs(cogvlm_cases["cases"]["chat_describe"], images_of(cogvlm_cases)),
                       SamplingConfig(max_length=prompt_length + 8), (published[3],), "stop")
    requests = [stopping, case_request(cogvlm_cases, "chat_history", "full"),
                case_request(cogvlm_cases, "vqa_color", "short", max_length=32 + 2)]
    events = list(generate_batch(cogvlm_model, requests))
    ends = {event.request_id: i for i, event in enumerate(events) if event.finished}
    assert all(i < ends[event.request_id] for i, event in enumerate(events) if not event.finished)
    assert ends["stop"] < ends["full"] and ends["short"] < ends["full"]
    results = collect(events)
    assert results["stop"][0] == published[:3] and results["stop"][1].finish_reason == "stop"
    assert results["short"][0] == cogvlm_cases["cases"]["vqa_color"]["generation"]["new_token_ids"][:2]
    assert results["short"][1].finish_reason == "length"
    assert_published(cogvlm_cases, "chat_history", results["full"][0])


def test_seeded_sampled_rows_equal_each_request_alone(cogvlm_model, cogvlm_cases):
    sampled = dict(temperature=1.5, top_k=0, top_p=1.0)
    requests = [case_request(cogvlm_cases, "chat_describe", "a", seed=7, **sampled),
                case_request(cogvlm_cases, "chat_history", "b", seed=11, **sampled),
                case_request(cogvlm_cases, "base_describe", "greedy")]
    results = collect(generate_batch(cogvlm_model, requests))
    for request in requests:
        alone = list(generate(cogvlm_model, request.prompt, request.sampling, request.stop_token_ids))
        assert results[request.request_id][0] == alone, request.request_id
    assert results["a"][0] != cogvlm_cases["cases"]["chat_describe"]["generation"]["new_token_ids"]


def text_only(case) -> ModelInputs:
    """The text after a case's image slot, as a prompt without an image."""
    ids = case["input_ids"][:, 19:]
    zeros = torch.zeros_like(ids)
    return ModelInputs(ids, torch.arange(ids.shape[1])[None], zeros, zeros)


def test_cogagent_rows_with_and_without_an_image_batch_together(cogagent_model, cogagent_cases):
    """Per-row cross keys/values: a row without an image skips cross-attention as it does alone."""
    prompt = text_only(cogagent_cases["cases"]["chat_describe"])
    text_request = Request(prompt, SamplingConfig(max_length=len(prompt) + 6), (), "text")
    alone = list(generate(cogagent_model, prompt, text_request.sampling))
    short = case_request(cogagent_cases, "vqa_color", "short", max_length=32 + 2)
    # Two slots: the text row waits, then takes the slot the short image row leaves (its cross keys/values stay).
    requests = [short, case_request(cogagent_cases, "chat_history", "image"), text_request]
    seen, on_logits = recorder()
    results = collect(generate_batch(cogagent_model, requests, num_slots=2, on_logits=on_logits))
    assert results["text"][0] == alone
    assert_published(cogagent_cases, "chat_history", results["image"][0], seen["image"])
    assert results["short"][0] == cogagent_cases["cases"]["vqa_color"]["generation"]["new_token_ids"][:2]


# --- continuous batching -------------------------------------------------------------------------------------------

def drain(scheduler) -> list:
    events = []
    while scheduler.busy:
        events += scheduler.step()
    return events


@pytest.mark.parametrize("name", ["cogvlm", "cogagent"])
def test_requests_admitted_at_different_steps_equal_each_alone(name, request):
    """Submitted between decode steps, longer prompts after shorter ones, in a cache just as long as the longest
    request: every row writes at its own position, and a retired row's place goes to the last busy row."""
    model, cases = fixture(request, name)
    seen, on_logits = recorder()
    scheduler = Scheduler(model, num_slots=2, max_length=86, on_logits=on_logits)
    moves, positions = [], []
    move = scheduler.cache.move
    scheduler.cache.move = lambda *args: (moves.append(args), move(*args))[1]
    decode = scheduler.decode_step
    scheduler.decode_step = lambda model, tokens, position, cache: (
        positions.append(cache.next_position[:len(tokens)].tolist()), decode(model, tokens, position, cache))[1]
    plan = {0: ["base_describe"], 2: ["chat_describe"], 5: ["chat_history"], 9: ["vqa_color", "chat_bytes"],
            12: ["base_history_ignored"]}
    events, step = [], 0
    while step <= max(plan) or scheduler.busy:
        for n in plan.get(step, []):
            scheduler.submit(case_request(cases, n, n))
        events += scheduler.step()
        step += 1
    results = collect(events)
    for n in [n for names in plan.values() for n in names]:
        assert_published(cases, n, results[n][0], seen[n])
    assert moves and any(len(set(rows)) == len(rows) == 2 for rows in positions)     # rows at their own positions


def test_a_step_computes_the_busy_rows_only(cogvlm_model, cogvlm_cases):
    """2 requests in 16 slots: every decode step is a batch of 2 (or 1 once one ends), and the results are the
    published ones."""
    seen, on_logits = recorder()
    scheduler = Scheduler(cogvlm_model, num_slots=16, max_length=86, on_logits=on_logits)
    batch_sizes = []
    decode = scheduler.decode_step
    scheduler.decode_step = lambda model, tokens, *rest: (batch_sizes.append(len(tokens)), decode(model, tokens,
                                                                                                   *rest))[1]
    scheduler.submit(case_request(cogvlm_cases, "chat_describe", "long"))
    scheduler.submit(case_request(cogvlm_cases, "vqa_color", "short", max_length=32 + 4))
    results = collect(drain(scheduler))
    assert_published(cogvlm_cases, "chat_describe", results["long"][0], seen["long"])
    assert results["short"][0] == cogvlm_cases["cases"]["vqa_color"]["generation"]["new_token_ids"][:4]
    assert batch_sizes[:3] == [2, 2, 2] and set(batch_sizes[3:]) == {1}


def test_cancel_frees_the_slot_for_a_queued_request(cogvlm_model, cogvlm_cases):
    seen, on_logits = recorder()
    scheduler = Scheduler(cogvlm_model, num_slots=1, max_length=86, on_logits=on_logits)
    for n in ("chat_history", "vqa_color", "chat_describe"):
        scheduler.submit(case_request(cogvlm_cases, n, n))
    first = scheduler.step() + scheduler.step()
    assert [e.token_id for e in first if e.request_id == "chat_history"] == \
        cogvlm_cases["cases"]["chat_history"]["generation"]["new_token_ids"][:3]     # prefill + 2 decode steps
    assert scheduler.cancel("chat_describe") and scheduler.cancel("chat_history")
    assert not scheduler.cancel("no such request")
    events = scheduler.step()
    assert events[0].finish_reason == "cancelled" and events[0].request_id == "chat_describe"
    assert events[1].finish_reason == "cancelled" and events[1].request_id == "chat_history"
    assert {e.request_id for e in events[2:]} == {"vqa_color"}           # in the freed slot at once
    results = collect(first + events + drain(scheduler))
    assert_published(cogvlm_cases, "vqa_color", results["vqa_color"][0], seen["vqa_color"])
    assert "chat_describe" not in seen and scheduler.rows == []


def test_a_full_queue_refuses_a_request(cogvlm_model, cogvlm_cases):
    scheduler = Scheduler(cogvlm_model, num_slots=1, max_length=48, max_queue=2)
    for i in range(2):
        scheduler.submit(case_request(cogvlm_cases, "chat_describe", i))
    with pytest.raises(QueueFullError, match="already holds 2 request"):
        scheduler.submit(case_request(cogvlm_cases, "chat_describe", 2))
    assert len(scheduler.queue) == 2
    scheduler.step()                                 # one admitted: room again
    with pytest.raises(ValueError, match="request id 1 is already queued or running"):
        scheduler.submit(case_request(cogvlm_cases, "chat_describe", 1))
    assert scheduler.submit(case_request(cogvlm_cases, "chat_describe")) == 2         # numbered past ids in use


# --- bad requests fail alone ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["cogvlm", "cogagent"])
def test_a_bad_request_fails_alone_with_a_clear_error(name, request):
    model, cases = fixture(request, name)
    case = cases["cases"]["chat_describe"]
    good = case_request(cases, "chat_describe", "good")
    empty = Request(ModelInputs(*(torch.zeros(1, 0, dtype=torch.long),) * 4), SamplingConfig(max_length=8),
                    request_id="empty")
    too_long = Request(good.prompt, SamplingConfig(max_length=40), request_id="too long")
    beyond = Request(good.prompt, SamplingConfig(max_length=500), request_id="beyond")
    two_images = ImageInputs(torch.cat([cases["image"]["pixel_values"]] * 2))
    mismatched = Request(case_inputs(case, two_images), good.sampling, request_id="mismatched")
    seen, on_logits = recorder()
    scheduler = Scheduler(model, num_slots=3, max_length=48, on_logits=on_logits)
    for bad_or_good in (empty, good, too_long, mismatched, beyond):
        scheduler.submit(bad_or_good)
    results = collect(drain(scheduler))
    errors = {request_id: end.error for request_id, (_, end) in results.items() if end.finish_reason == "error"}
    assert set(errors) == {"empty", "too long", "mismatched", "beyond"}
    assert all(error and "\n" not in error for error in errors.values())
    assert errors["empty"] == "the prompt is empty"
    assert "the prompt is 40 tokens, 18 of them for the image; max_length 40" in errors["too long"]
    assert "max_length 500 exceeds the 48 positions" in errors["beyond"]
    assert "image(s)" in errors["mismatched"]
    assert_published(cases, "chat_describe", results["good"][0], seen["good"])


@pytest.mark.parametrize("name", ["cogvlm", "cogagent"])
def test_several_queries_on_one_image_encode_it_once(name, request):
    model, cases = fixture(request, name)
    image = images_of(cases)                                      # one object, as ChatModel.prepare_image gives
    names = ["chat_describe", "chat_history", "vqa_color"]
    requests = [Request(case_inputs(cases["cases"][n], image), SamplingConfig(max_length=cases["cases"][n][
        "generation"]["max_length"]), (EOS,), n) for n in names]
    encoders = [model.get_mixin("image").encoder]
    if name == "cogagent":
        encoders.append(model.get_mixin("cross_vision").encoder)
    encoded = []
    hooks = [encoder.register_forward_hook(lambda module, args, output: encoded.append(len(args[0])))
             for encoder in encoders]
    try:
        seen, on_logits = recorder()
        results = collect(generate_batch(model, requests, on_logits=on_logits))
    finally:
        for hook in hooks:
            hook.remove()
    assert encoded == [1] * len(encoders)                       # one image through each encoder, once
    for n in names:
        assert_published(cases, n, results[n][0], seen[n])


# --- evaluation through the batched path ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def captcha_chat():
    from cogvlm import PACKAGE_ROOT
    from cogvlm.utils.inference.chat import ChatModel

    checkpoint = PACKAGE_ROOT / "checkpoints" / "captcha-tiny"
    return ChatModel.from_pretrained(checkpoint, str(checkpoint / "tokenizer.model"))


def test_evaluate_in_batches_predicts_what_it_predicts_one_at_a_time(captcha_chat, tmp_path):
    """Held-out captchas of the embedded model; 4 slots for 13 images: rows finish and are replaced."""
    from cogvlm.finetune_demo.evaluate import evaluate
    from cogvlm.finetune_demo.make_captcha_dataset import generate as make_captchas
    from cogvlm.utils.training.data import CAPTCHA_QUERY, captcha_samples

    make_captchas(tmp_path, count=13, seed=12345)
    samples = captcha_samples(tmp_path, CAPTCHA_QUERY)
    one, _, one_pairs = evaluate(captcha_chat, tmp_path, samples, max_new_tokens=8, batch_size=1)
    four, _, four_pairs = evaluate(captcha_chat, tmp_path, samples, max_new_tokens=8, batch_size=4)
    assert four_pairs == one_pairs and four == one and one.count == 13
    assert one.exact > 0.5                      # the embedded model reads them: the predictions are not all empty


def test_evaluate_refuses_a_batch_size_below_one(capsys):
    from cogvlm.finetune_demo.evaluate import main

    assert main(["--from_pretrained", "nowhere", "--data", "nowhere", "--batch_size", "0"]) == 1
    assert capsys.readouterr().err.strip() == "Error: --batch_size must be at least 1, got 0"
