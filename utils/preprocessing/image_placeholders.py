"""GLM-4V-9B / CogAgent-9B prompts: the tokenizer's three image placeholders -> the model's image slot.

The GLM-4 chat template marks an image with `<|begin_of_image|><|endoftext|><|end_of_image|>`. The published
Hugging Face forward replaces those three embeddings by [boi, image_length image tokens, eoi] and gives them rotary
positions p, p + 1 (all image tokens share it) and p + 2, where p is the position of `<|begin_of_image|>`: later text
keeps its tokenizer positions, so the image costs three positions whatever its token count. Here the ids are
expanded once, before the model, into a `ModelInputs` whose image slot the model's embedding overwrites:

    ids        ... boi  boi+1 x image_length  eoi ...      (the middle ids are never read)
    positions  ... p    p + 1 (shared)         p + 2 ...
    image_embed_mask over boi .. eoi; vision_expert_mask over boi + image tokens, as CogVLM's (GLM-4V has no
    visual expert and ignores it, but every ModelInputs carries the same fields)

One image per conversation, as the published tokenizer allows.
"""
from __future__ import annotations

import torch

from cogvlm.models.inputs import ImageInputs, InvalidInputsError, ModelInputs


def expand_image_placeholders(input_ids: torch.Tensor, config, images: ImageInputs | None = None,
                              attention_mask: torch.Tensor | None = None,
                              position_ids: torch.Tensor | None = None) -> ModelInputs:
    """Tokenizer output (B, L) -> the model's inputs with each image's slot expanded, left-padded again.

    `config` is a GLM4VConfig (boi/eoi ids, image_length, pad id). `attention_mask` (B, L) is 1 at real tokens
    (None: no padding); `position_ids` default to each row counting its real tokens from 0, as the tokenizer's
    left padding gives them. `images` are those of the rows with an image, in row order."""
    if input_ids.dim() != 2:
        raise InvalidInputsError(f"input_ids must be (batch, length); got shape {tuple(input_ids.shape)}")
    real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    if position_ids is None:
        position_ids = (real.long().cumsum(dim=1) - 1).clamp(min=0)
    rows = [_expand_row(input_ids[b][real[b]], position_ids[b][real[b]], config) for b in range(len(input_ids))]
    with_image = [b for b, row in enumerate(rows) if row.image_embed_mask.any()]
    num_images = 0 if images is None else len(images)
    if len(with_image) != num_images:
        raise InvalidInputsError(f"the prompts hold {len(with_image)} image placeholder(s) but {num_images} "
                                 f"image(s) were given")
    for index, b in enumerate(with_image):
        rows[b].images = _image(images, index)
    if len(rows) == 1:
        return rows[0]
    return ModelInputs.batch(rows, config.pad_token_id, side="left")


def _expand_row(ids: torch.Tensor, positions: torch.Tensor, config) -> ModelInputs:
    """One row's real tokens (L,) -> ModelInputs (1, L + image_length - 1) with its image slot, if it has one."""
    boi = (ids == config.boi_token_id).nonzero().flatten().tolist()
    eoi = (ids == config.eoi_token_id).nonzero().flatten().tolist()
    if not boi and not eoi:
        zeros = torch.zeros(1, len(ids), dtype=torch.long)
        return ModelInputs(ids[None], positions[None], zeros, zeros.clone())
    if len(boi) != 1 or len(eoi) != 1:
        raise InvalidInputsError(f"a conversation holds one image: found {len(boi)} <|begin_of_image|> and "
                                 f"{len(eoi)} <|end_of_image|> tokens")
    start, end = boi[0], eoi[0]
    if end - start != 2:
        raise InvalidInputsError(f"<|end_of_image|> must follow <|begin_of_image|> with one token between them "
                                 f"(at {start} and {end})")
    count = config.image_length
    slot_ids = ids[start + 1].repeat(count)                                   # overwritten by the image tokens
    slot_positions = positions[start + 1].repeat(count)                       # shared by every image token
    expanded_ids = torch.cat([ids[:start + 1], slot_ids, ids[end:]])
    expanded_positions = torch.cat([positions[:start + 1], slot_positions, positions[end:]])
    image = torch.zeros(len(expanded_ids), dtype=torch.long)
    image[start:start + count + 2] = 1                                         # boi, image tokens, eoi
    expert = image.clone()
    expert[start + count + 1] = 0                                              # boi + image tokens
    return ModelInputs(expanded_ids[None], expanded_positions[None], expert[None], image[None])


def _image(images: ImageInputs, index: int) -> ImageInputs:
    if images.slot_images is not None:
        index = int(images.slot_images[index])
    return ImageInputs(images.pixel_values[index:index + 1])
