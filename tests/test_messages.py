"""utils/inference/messages.py: the CLI's strings in both languages, and errors raised deeper worded through the
table entry of their exception class."""
from __future__ import annotations

import builtins
import importlib
import inspect
import string

import pytest

from cogvlm.utils.inference.messages import ERROR_MESSAGES, MESSAGES, describe, message

# Every module that raises an error the CLI reports.
ERROR_MODULES = [
    "cogvlm.utils.checkpoint_io.loading",
    "cogvlm.utils.checkpoint_io.download",
    "cogvlm.utils.checkpoint_io.hf_conversion",
    "cogvlm.utils.preprocessing.tokenizer",
    "cogvlm.utils.preprocessing.text_processor",
    "cogvlm.utils.preprocessing.image_processor",
    "cogvlm.utils.inference.generation",
    "cogvlm.utils.inference.chat",
    "cogvlm.utils.quantization.weight_only",
]


def _fields(text: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(text) if field}


def test_every_entry_has_both_languages_and_chinese_uses_no_unknown_field():
    for key, texts in MESSAGES.items():
        assert set(texts) == {"en", "zh"}, key
        assert _fields(texts["zh"]) <= _fields(texts["en"]), key      # the caller passes the English fields


def test_every_mapped_exception_class_exists_and_has_an_entry():
    """A renamed exception class would silently lose its Chinese wording: its name must still be a class."""
    classes = {name for module in ERROR_MODULES
               for name, obj in inspect.getmembers(importlib.import_module(module), inspect.isclass)
               if issubclass(obj, BaseException)}
    classes |= {name for name, obj in vars(builtins).items() if inspect.isclass(obj) and issubclass(obj, BaseException)}
    for name, key in ERROR_MESSAGES.items():
        assert name in classes, name
        assert key in MESSAGES, key


def test_describe_keeps_english_detail_and_words_chinese_by_class():
    from cogvlm.utils.checkpoint_io.loading import CheckpointError
    from cogvlm.utils.preprocessing.image_processor import ImageLoadError
    from cogvlm.utils.preprocessing.text_processor import EmptyQueryError

    problem = CheckpointError("checkpoint 'x' not found:\n  it is   not a folder")
    assert describe(problem) == "checkpoint 'x' not found: it is not a folder"          # one line
    assert describe(problem, chinese=True) == "无法加载检查点：checkpoint 'x' not found: it is not a folder"
    assert describe(ImageLoadError("image file not found: a.png"), True) == "无法读取图像：image file not found: a.png"
    assert describe(EmptyQueryError("the query is empty"), True) == "问题为空，请输入问题或指令"


def test_describe_falls_back_to_the_nearest_listed_base_class():
    class NewInputError(ValueError):
        pass

    assert describe(NewInputError("bad"), True) == "输入有误：bad"
    assert describe(RuntimeError("boom"), True) == "模型运行出错：boom"
    assert describe(KeyError(), False) == "KeyError"        # not listed, no text: its class name


@pytest.mark.parametrize("chinese, expected", [(False, "Error: "), (True, "错误：")])
def test_message_picks_the_language(chinese, expected):
    assert message("error_prefix", chinese) == expected
