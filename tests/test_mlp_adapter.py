import pytest
import torch

from cogvlm.models.inputs import ImageInputs, ImageTokenMismatchError


def test_adapter_matches_published_image_embeds(cogvlm_model, cogvlm_cases):
    with torch.no_grad():
        embeds = cogvlm_model.get_mixin("image").adapter(cogvlm_cases["intermediates"]["glu_input"])
    torch.testing.assert_close(embeds, cogvlm_cases["intermediates"]["image_embeds"], atol=1e-5, rtol=1e-5)


def test_image_tokens_are_framed_by_boi_and_eoi(cogvlm_model, cogvlm_cases):
    image = cogvlm_model.get_mixin("image")
    with torch.no_grad():
        tokens = image.embed_images(ImageInputs(cogvlm_cases["image"]["pixel_values"]))
    assert tokens.shape == (1, 16 + 2, 64)
    assert torch.equal(tokens[0, 0], image.boi[0, 0]) and torch.equal(tokens[0, -1], image.eoi[0, 0])


def test_image_slot_count_must_match_images(cogvlm_model, cogvlm_cases):
    case = cogvlm_cases["cases"]["chat_describe"]
    two_images = ImageInputs(cogvlm_cases["image"]["pixel_values"].expand(2, -1, -1, -1))
    with pytest.raises(ImageTokenMismatchError, match=r"marks 18 image positions, but 2 image\(s\) of 18"):
        cogvlm_model(case["input_ids"], case["position_ids"], images=two_images,
                     image_embed_mask=case["image_embed_mask"], vision_expert_mask=case["vision_expert_mask"])
