"""The GLM-4V-9B / CogAgent-9B processor: GLM-4 tokenizer + chat template + image processor -> one `ModelInputs`.

The same interface as processor.Processor (what ChatModel and the engine call), for the 9B family:

    processor = GLM4Processor(tokenizer, ImageProcessor(1120), to_model_inputs)
    processor("What is shown?", history, picture)          # inference inputs, (1, S), image tokens included
    processor.training_example("What is shown?", "A cat.", (), picture, max_length)   # + labels on the answer

The template gives the published, unexpanded ids (3 image placeholders); `to_model_inputs`, the model's own
expansion (image_placeholders.py), turns them into ModelInputs with the image slot expanded to [boi, image tokens, eoi] and
the published position ids. So `len(inputs)` counts every image token, and `--max_length` (prompt + answer) does
too, as the issue asks. The image preprocessing is CogVLM's (bicubic resize, CLIP mean/std): the published
GLM-4V tokenizer applies the same transform at `vision_config.image_size`.
"""
from __future__ import annotations

from collections.abc import Callable

from PIL import Image

from cogvlm.models.inputs import ImageInputs, ModelInputs, truncated, with_answer

from .glm4_template import ChatMessage, GLM4Prompt, chat_messages, conversation_ids, left_padded, message_ids
from .glm4_tokenizer import GLM4Tokenizer
from .image_processor import ImageProcessor
from .text_processor import History

TEMPLATE_NAME = "glm4"      # what ChatModel.version reports: the 9B models have one chat template
# The published fine-tuning (THUDM/CogAgent finetune/finetune.py) closes a conversation with <|user|>, the turn
# that would follow the answer.
END_OF_TURN_TOKEN = "<|user|>"

# unexpanded prompt (B = 1) and its image (None: text-only) -> the model's inputs
ToModelInputs = Callable[[GLM4Prompt, "ImageInputs | None"], ModelInputs]


class GLM4Processor:
    # GLM-4V-9B's template has a text-only form (the message without the image placeholders, GLM-4-9B's own chat),
    # which the published remote code builds for a message without an image: the 9B models chat text-only too.
    answers_without_image = True

    def __init__(self, tokenizer: GLM4Tokenizer, image: ImageProcessor, to_model_inputs: ToModelInputs):
        self.tokenizer, self.image, self.to_model_inputs = tokenizer, image, to_model_inputs

    @property
    def version(self) -> str:
        return TEMPLATE_NAME

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        return self.tokenizer.stop_token_ids

    def images(self, picture: Image.Image) -> ImageInputs:
        """A PIL image -> the model's pixel tensor, B_img = 1."""
        return ImageInputs(self.image(picture))

    def prompt(self, query: str, history: History = (), with_image: bool = True) -> GLM4Prompt:
        """The published tokenizer's outputs for a chat turn (B = 1): ids, mask, positions before expansion."""
        ids = conversation_ids(self.tokenizer, chat_messages(query, history, with_image))
        return left_padded([ids], self.pad_id)

    def __call__(self, query: str, history: History = (),
                 image: Image.Image | ImageInputs | None = None) -> ModelInputs:
        """Inference inputs for one request (B = 1), image tokens expanded."""
        if isinstance(image, Image.Image):
            image = self.images(image)
        return self.to_model_inputs(self.prompt(query, history, with_image=image is not None), image)

    def training_example(self, query: str, answer: str, history: History = (),
                         image: Image.Image | ImageInputs | None = None, max_length: int = 2048) -> ModelInputs:
        """The inference prompt (ending in <|assistant|>), then "\\n" + answer + <|user|>, truncated to
        `max_length`; the loss is on those answer tokens only (not the prompt, not the image slot).

        The published fine-tuning also puts a label on <|assistant|> (always given at inference, so it teaches
        nothing here) and none on its closing <|user|>; this one supervises <|user|>, one of the stop ids, so
        that the fine-tuned model learns where its answer ends."""
        prompt = self(query, history, image)
        if len(prompt) + 1 >= max_length:
            raise ValueError(f"the prompt is {len(prompt)} tokens; max_length {max_length} leaves no room to learn")
        # the assistant message as the template writes it, without its <|assistant|> (the prompt's last token)
        answer_ids = message_ids(self.tokenizer, ChatMessage("assistant", answer))[1:]
        answer_ids.append(self.tokenizer.token_id(END_OF_TURN_TOKEN))
        return truncated(with_answer(prompt, answer_ids), max_length)


def model_inputs_builder(config) -> ToModelInputs:
    """The 9B model's expansion of a published prompt into ModelInputs, for a GLM4VConfig `config`
    (utils/preprocessing/image_placeholders.py, written with the model: [boi, image_length tokens, eoi] at the
    published position ids)."""
    from cogvlm.utils.preprocessing.image_placeholders import expand_image_placeholders

    def build(prompt: GLM4Prompt, images: ImageInputs | None) -> ModelInputs:
        return expand_image_placeholders(prompt.input_ids, config, images, prompt.attention_mask,
                                         prompt.position_ids)

    return build
