"""Every user-facing string of the command-line demos, in English and Chinese, in one table."""

MESSAGES = {
    "welcome": {
        "en": 'Welcome to the CogVLM / CogAgent CLI. Enter an image URL or local file path to load an image, then '
              'type queries to chat about it. Type "clear" to start over with a new image, or "stop" to end.',
        "zh": "欢迎使用 CogVLM / CogAgent 命令行，输入图像URL或本地路径读图，继续输入内容对话，clear 重新开始，stop 终止程序",
    },
    "image_prompt": {"en": "Please enter the image path or URL: ", "zh": "请输入图像路径或URL： "},
    "user_prompt": {"en": "User: ", "zh": "用户："},
    "model_prefix": {"en": "Model: ", "zh": "模型："},
    "error_prefix": {"en": "Error: ", "zh": "错误："},
    "version": {"en": "[Language processor version]: {version}", "zh": "[语言处理器版本]：{version}"},
    "boxes_drawn": {"en": "Boxes drawn: {path}", "zh": "已标注框：{path}"},
    "quant_unsupported": {
        "en": "--quant {bits} is not supported yet: quantization is not implemented in this version.",
        "zh": "暂不支持 --quant {bits}：此版本尚未实现量化。",
    },
}


def message(key: str, chinese: bool = False, **values) -> str:
    return MESSAGES[key]["zh" if chinese else "en"].format(**values)
