"""The processor: tokenizer + prompt template + image processor(s) -> one `ModelInputs`.

    processor = Processor.for_model(config, tokenizer, version)
    processor("What is shown?", history, picture)              # inference inputs, (1, L)
    processor.training_example("What is shown?", "A cat.", (), picture, max_length)   # + labels on the answer
    ModelInputs.batch([...], processor.pad_id)                  # many requests: left-padded, one padding mask

The image may be a PIL image, already preprocessed `ImageInputs` (to reuse one image across queries), or None
for a text-only prompt. CogAgent configurations also get the image at the cross resolution.
"""
from __future__ import annotations

from dataclasses import replace

from PIL import Image

from cogvlm.models.inputs import ImageInputs, ModelInputs, truncated, with_answer

from .image_processor import ImageProcessor
from .text_processor import History, TextProcessor
from .tokenizer import LlamaTokenizer


class Processor:
    # CogVLM and CogAgent-18B were trained with an image in every conversation, and their published CLI asks for
    # one; their text-only prompt serves the language-model paths (the API's image-less messages, fine-tuning).
    answers_without_image = False

    def __init__(self, text: TextProcessor, image: ImageProcessor, cross_image: ImageProcessor | None = None):
        self.text, self.image, self.cross_image = text, image, cross_image

    @classmethod
    def for_model(cls, config, tokenizer: LlamaTokenizer, version: str) -> "Processor":
        """The processor a model of `config` (CogVLMConfig or CogAgentConfig) reads its inputs from."""
        cross = ImageProcessor(config.cross_image_size) if config.cross_image_size else None
        return cls(TextProcessor(tokenizer, version, config.image_length), ImageProcessor(config.vision.image_size),
                   cross)

    @property
    def tokenizer(self) -> LlamaTokenizer:
        return self.text.tokenizer

    @property
    def version(self) -> str:
        return self.text.version

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    def images(self, picture: Image.Image) -> ImageInputs:
        """A PIL image -> the model's pixel tensors (and CogAgent's high-resolution copy), B_img = 1."""
        cross = self.cross_image(picture) if self.cross_image is not None else None
        return ImageInputs(self.image(picture), cross)

    def __call__(self, query: str, history: History = (),
                 image: Image.Image | ImageInputs | None = None) -> ModelInputs:
        """Inference inputs for one request (B = 1): the prompt's tokens, positions, masks and its image."""
        if isinstance(image, Image.Image):
            image = self.images(image)
        return replace(self.text(query, history, with_image=image is not None), images=image)

    def training_example(self, query: str, answer: str, history: History = (),
                         image: Image.Image | ImageInputs | None = None, max_length: int = 2048) -> ModelInputs:
        """The prompt, then the answer and eos, truncated to `max_length`; labels carry the loss on the answer
        and eos only."""
        prompt = self(query, history, image)
        if len(prompt) + 1 >= max_length:
            raise ValueError(f"the prompt is {len(prompt)} tokens; max_length {max_length} leaves no room to learn")
        answer_ids = self.tokenizer.encode(answer) + [self.tokenizer.eos_token_id]
        return truncated(with_answer(prompt, answer_ids), max_length)
