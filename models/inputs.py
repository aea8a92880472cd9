"""The typed inputs of a CogVLM / CogAgent forward: one container for inference, batching and training.

    ImageInputs     the preprocessed pixels of the images of a forward (and CogAgent's high-resolution copies)
    ModelInputs     token ids, rotary positions, image masks (B, L), the images, and optionally a padding mask
                    and training labels; `ModelInputs.batch(...)` pads single requests into one batch
    check_inputs    the checks the model runs before any weight is touched (clear one-line errors)

A prompt with an image holds one image slot of `image_length + 2` positions (boi, patches, eoi); the images of a
batch are the images of its rows that have a slot, in row order, so the slots of row-major order meet them in turn.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal, Sequence

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100             # a label that carries no loss (the prompt, the image, padding)
NUM_IMAGE_DELIMITERS = 2        # boi + eoi around the patches of an image slot


class InvalidInputsError(ValueError):
    """Model inputs whose shapes or masks do not fit together."""


class MissingImageMasksError(InvalidInputsError):
    """Images were given without the masks that say where their tokens go."""


class ImageTokenMismatchError(InvalidInputsError):
    """The prompt's image slots do not match the images given."""


class MissingCrossImageError(InvalidInputsError):
    """A CogAgent model was given an image without its high-resolution copy."""


@dataclass
class ImageInputs:
    """Images for one forward, already preprocessed: one per image slot of the prompts (`len`)."""
    pixel_values: torch.Tensor                          # (B_img, 3, S, S) for the EVA2-CLIP-E encoder
    cross_pixel_values: torch.Tensor | None = None      # (B_img, 3, S', S') for CogAgent's EVA2-CLIP-L
    # (n_slots,) the image each slot shows, when slots share images (each is then encoded once); None: slot i
    # shows image i
    slot_images: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.pixel_values.shape[0] if self.slot_images is None else self.slot_images.shape[0]

    def per_slot(self, encoded: torch.Tensor) -> torch.Tensor:
        """Encoder outputs (B_img, ...) -> (n_slots, ...)."""
        return encoded if self.slot_images is None else encoded.index_select(0, self.slot_images)

    def to(self, device, dtype) -> "ImageInputs":
        cross, slots = self.cross_pixel_values, self.slot_images
        return ImageInputs(self.pixel_values.to(device=device, dtype=dtype),
                           None if cross is None else cross.to(device=device, dtype=dtype),
                           None if slots is None else slots.to(device))

    @classmethod
    def concat(cls, images: Sequence["ImageInputs"]) -> "ImageInputs | None":
        """The images of several requests as one batch of images (None when there are none). Requests that pass
        the same ImageInputs object (several queries on one image) share its pixels: it is encoded once."""
        if not images:
            return None
        if any(image.slot_images is not None for image in images):
            raise InvalidInputsError("ImageInputs.concat takes the images of single requests")
        unique = list({id(image): image for image in images}.values())
        if len(unique) < len(images):
            index = {id(image): i for i, image in enumerate(unique)}
            shared = cls.concat(unique)
            return replace(shared, slot_images=torch.tensor([index[id(image)] for image in images]))
        images = unique
        has_cross = {image.cross_pixel_values is not None for image in images}
        if len(has_cross) > 1:
            raise InvalidInputsError("some images have a high-resolution (cross) copy and some do not; a batch "
                                     "needs all or none")
        cross = torch.cat([image.cross_pixel_values for image in images]) if has_cross == {True} else None
        return cls(torch.cat([image.pixel_values for image in images]), cross)


# The (B, L) tensors of ModelInputs and the value that pads each.
_PAD_VALUES = {"position_ids": 0, "vision_expert_mask": 0, "image_embed_mask": 0, "labels": IGNORE_INDEX}


@dataclass
class ModelInputs:
    """Everything a forward reads, each tensor (B, L) int64 except `attention_mask` (B, L) bool.

    attention_mask   True at real tokens, False at padding; None when no row is padded. Padded keys are masked
                     out of attention, so a padded row's logits at its real tokens equal the row run alone.
    labels           the target token at every position, IGNORE_INDEX where there is no loss (training only)
    """
    input_ids: torch.Tensor
    position_ids: torch.Tensor
    vision_expert_mask: torch.Tensor                    # boi + patches: routed to the visual experts
    image_embed_mask: torch.Tensor                      # boi + patches + eoi: embeddings replaced by the image's
    images: ImageInputs | None = None
    attention_mask: torch.Tensor | None = None
    labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.input_ids.shape[1]

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def prompt_length(self) -> int:
        """Positions before the first label of a single (B = 1) training example: its prompt."""
        if self.labels is None:
            return len(self)
        return int((self.labels[0] == IGNORE_INDEX).cumprod(0).sum())

    def to(self, device, dtype: torch.dtype) -> "ModelInputs":
        """Tensors to `device`; pixels also to the model's `dtype` (ids and masks stay integer)."""
        moved = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "images"}
        moved = {name: None if t is None else t.to(device) for name, t in moved.items()}
        images = None if self.images is None else self.images.to(device, dtype)
        return ModelInputs(images=images, **moved)

    def forward_arguments(self) -> dict:
        """The keyword arguments of the model's forward (labels are not among them: the loss is the caller's)."""
        return dict(input_ids=self.input_ids, position_ids=self.position_ids, images=self.images,
                    image_embed_mask=self.image_embed_mask, vision_expert_mask=self.vision_expert_mask,
                    attention_mask=self.attention_mask)

    def row(self, index: int) -> "ModelInputs":
        """Row `index` alone, its padding removed (B = 1)."""
        keep = slice(None) if self.attention_mask is None else self.attention_mask[index].nonzero().squeeze(1)
        tensors = {name: t[index:index + 1, keep] for name, t in self._row_tensors().items()}
        return ModelInputs(images=self._images_of_row(index), **tensors)

    def prompt(self) -> "ModelInputs":
        """A single training example without its answer: what generation starts from."""
        if self.batch_size != 1:
            raise InvalidInputsError(f"prompt() takes a single example; this one has {self.batch_size} rows (use row)")
        length = self.prompt_length
        tensors = {name: t[:, :length] for name, t in self._row_tensors().items() if name != "labels"}
        return ModelInputs(images=self.images, **tensors)

    @classmethod
    def batch(cls, rows: Sequence["ModelInputs"], pad_id: int,
              side: Literal["left", "right"] = "left") -> "ModelInputs":
        """Pad single requests (B = 1 each, any lengths, each with an image or none) into one batch.

        Left padding (generation: every row's last prompt token is at the same index) or right padding (training:
        the causal mask alone already keeps padding out of every real token's view). `attention_mask` marks the
        real tokens (None when no row needed padding); the images are those of the rows that have one, in order.
        """
        if not rows:
            raise InvalidInputsError("a batch needs at least one row")
        if any(row.batch_size != 1 for row in rows):
            raise InvalidInputsError("ModelInputs.batch takes single requests (B = 1 each)")
        if len({row.labels is None for row in rows}) > 1:
            raise InvalidInputsError("either every row of a batch has labels or none has")
        length = max(len(row) for row in rows)
        padded = {name: torch.cat([_pad(t, length, _PAD_VALUES.get(name, pad_id), side) for t in tensors])
                  for name, tensors in _columns(rows).items()}
        real = [torch.ones(1, len(row), dtype=torch.bool) for row in rows]
        attention_mask = None
        if any(len(row) != length for row in rows):
            attention_mask = torch.cat([_pad(mask, length, False, side) for mask in real])      # (B, L)
        images = ImageInputs.concat([row.images for row in rows if row.images is not None])
        return cls(images=images, attention_mask=attention_mask, **padded)

    def _row_tensors(self) -> dict[str, torch.Tensor]:
        names = ("input_ids", "position_ids", "vision_expert_mask", "image_embed_mask", "labels")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def _images_of_row(self, index: int) -> ImageInputs | None:
        """The images are those of the rows with an image slot, in row order."""
        if self.images is None or not bool(self.image_embed_mask[index].any()):
            return None
        image_index = int(self.image_embed_mask[:index].any(dim=1).sum())
        if self.images.slot_images is not None:
            image_index = int(self.images.slot_images[image_index])
        cross = self.images.cross_pixel_values
        return ImageInputs(self.images.pixel_values[image_index:image_index + 1],
                           None if cross is None else cross[image_index:image_index + 1])


def _columns(rows: Sequence[ModelInputs]) -> dict[str, list[torch.Tensor]]:
    names = rows[0]._row_tensors().keys()
    return {name: [getattr(row, name) for row in rows] for name in names}


def _pad(tensor: torch.Tensor, length: int, value, side: str) -> torch.Tensor:
    """(1, n) -> (1, length) with `value` on the given side."""
    missing = length - tensor.shape[1]
    return F.pad(tensor, (missing, 0) if side == "left" else (0, missing), value=value)


def with_answer(prompt: ModelInputs, answer_ids: Sequence[int]) -> ModelInputs:
    """A training example: `prompt` (B = 1) followed by the answer's tokens, the loss on the answer only.

    Answer tokens are text: no expert, no image embedding, positions continuing after the prompt's last."""
    answer = torch.tensor([list(answer_ids)], dtype=torch.long)                       # (1, n)
    zeros = torch.zeros_like(answer)
    positions = prompt.position_ids[:, -1:] + torch.arange(1, answer.shape[1] + 1)
    return replace(
        prompt,
        input_ids=torch.cat([prompt.input_ids, answer], 1),
        position_ids=torch.cat([prompt.position_ids, positions], 1),
        vision_expert_mask=torch.cat([prompt.vision_expert_mask, zeros], 1),
        image_embed_mask=torch.cat([prompt.image_embed_mask, zeros], 1),
        labels=torch.cat([torch.full_like(prompt.input_ids, IGNORE_INDEX), answer], 1))


def truncated(inputs: ModelInputs, max_length: int) -> ModelInputs:
    """The first `max_length` positions of every (B, L) tensor."""
    return replace(inputs, **{name: t[:, :max_length] for name, t in inputs._row_tensors().items()},
                   attention_mask=None if inputs.attention_mask is None else inputs.attention_mask[:, :max_length])


def check_inputs(input_ids: torch.Tensor, position_ids: torch.Tensor, images: ImageInputs | None,
                 image_embed_mask: torch.Tensor | None, vision_expert_mask: torch.Tensor | None,
                 attention_mask: torch.Tensor | None, image_length: int) -> None:
    """Raise an InvalidInputsError (one line) for inputs a forward cannot honour, before any weight is used.

    Counting the image slots reads the masks once per forward (a prefill or training step), never per layer;
    decode steps carry no masks and cost nothing here."""
    if input_ids.dim() != 2:
        raise InvalidInputsError(f"input_ids must be (batch, length); got shape {tuple(input_ids.shape)}")
    for name, tensor in (("position_ids", position_ids), ("image_embed_mask", image_embed_mask),
                         ("vision_expert_mask", vision_expert_mask), ("attention_mask", attention_mask)):
        if tensor is not None and tensor.shape != input_ids.shape:
            raise InvalidInputsError(f"{name} has shape {tuple(tensor.shape)}; input_ids has "
                                     f"{tuple(input_ids.shape)}")
    if images is not None and (image_embed_mask is None or vision_expert_mask is None):
        missing = " and ".join(n for n, m in (("image_embed_mask", image_embed_mask),
                                               ("vision_expert_mask", vision_expert_mask)) if m is None)
        raise MissingImageMasksError(f"images were given without {missing}: the masks say which positions hold "
                                     f"the image (build inputs with the processor)")
    num_images = 0 if images is None else len(images)
    for name, mask, per_image in (("image_embed_mask", image_embed_mask, image_length + NUM_IMAGE_DELIMITERS),
                                  ("vision_expert_mask", vision_expert_mask, image_length + 1)):
        if mask is None:
            continue
        slots = int(mask.bool().sum())
        if slots != num_images * per_image:
            raise ImageTokenMismatchError(
                f"{name} marks {slots} image positions, but {num_images} image(s) of {per_image} positions each "
                f"were given ({num_images * per_image})")
