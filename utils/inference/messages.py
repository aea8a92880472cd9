"""Every user-facing string of the command-line and web demos, in English and Chinese, in one table.

Errors raised deeper (checkpoint, tokenizer, image, prompt) carry their detail in English (paths, sizes, flags);
`describe` gives them a wording of the interface's language through the table entry of their exception class.
"""
from __future__ import annotations

MESSAGES = {
    "welcome": {
        "en": 'Welcome to the CogVLM / CogAgent CLI. Enter an image URL or local file path to load an image, then '
              'type queries to chat about it. Type "clear" to start over with a new image, or "stop" to end. '
              'Ctrl-C stops an answer; at a prompt it ends the session.',
        "zh": "欢迎使用 CogVLM / CogAgent 命令行，输入图像URL或本地路径读图，继续输入内容对话，clear 重新开始，stop 终止程序；"
              "Ctrl-C 停止当前回答，在输入提示处按 Ctrl-C 退出",
    },
    "image_prompt": {"en": "Please enter the image path or URL: ", "zh": "请输入图像路径或URL： "},
    # for a model that also chats without an image (GLM-4V-9B, CogAgent-9B)
    "image_prompt_optional": {"en": "Please enter the image path or URL (press Enter for plain text chat): ",
                              "zh": "请输入图像路径或URL（直接回车进行纯文本对话）： "},
    "user_prompt": {"en": "User: ", "zh": "用户："},
    "model_prefix": {"en": "Model: ", "zh": "模型："},
    "error_prefix": {"en": "Error: ", "zh": "错误："},
    "version": {"en": "[Language processor version]: {version}", "zh": "[语言处理器版本]：{version}"},
    "version_overridden": {
        "en": "Note: the checkpoint's text_processor_version '{version}' overrides --version {requested}",
        "zh": "注意：检查点的 text_processor_version '{version}' 覆盖了 --version {requested}",
    },
    "answer_stopped": {
        "en": "(answer stopped; press Ctrl-C at a prompt to quit)",
        "zh": "（已停止回答；在输入提示处按 Ctrl-C 退出）",
    },
    "boxes_drawn": {"en": "Boxes drawn: {path}", "zh": "已标注框：{path}"},
    "boxes_not_saved": {"en": "cannot save the boxes under {folder}: {detail}",
                        "zh": "无法在 {folder} 下保存标注框：{detail}"},
    "image_and_query": {"en": "--image and --query go together", "zh": "--image 与 --query 须同时给出"},
    "fp16_and_bf16": {"en": "choose one of --fp16 and --bf16", "zh": "--fp16 与 --bf16 只能选一个"},
    "max_length_too_small": {"en": "--max_length must be at least 2", "zh": "--max_length 至少为 2"},
    # basic_demo/agent_demo.py (the CogAgent-9B agent)
    "agent_welcome": {
        "en": "CogAgent agent. Enter a screenshot path or URL, then the task; at the task prompt, Enter asks for the "
              "next step of the current task and \"continue\" asks the model to continue its answer. \"clear\" "
              "forgets the task and its history, \"stop\" ends.",
        "zh": "CogAgent 智能体：输入截图路径或URL，再输入任务；在任务提示处直接回车执行当前任务的下一步，输入 continue 让模型继续回答。"
              "clear 清除任务与历史，stop 终止程序",
    },
    "agent_screenshot_prompt": {"en": "Screenshot path or URL: ", "zh": "请输入截图路径或URL： "},
    "agent_task_prompt": {"en": "Task (Enter: the next step of the current task): ",
                          "zh": "任务（回车：当前任务的下一步）："},
    "agent_no_task": {"en": "no task yet: type what the agent should do", "zh": "还没有任务：请输入要执行的任务"},
    "agent_query": {"en": "Round {round} query:\n{query}", "zh": "第 {round} 轮查询：\n{query}"},
    "agent_operation": {"en": "Operation: {operation}", "zh": "操作：{operation}"},
    "agent_point": {"en": "Acts at ({x}, {y}) in the {width}x{height} screenshot",
                    "zh": "作用点：截图（{width}x{height}）中的 ({x}, {y})"},
    "agent_sensitive": {"en": "Sensitive operation: it runs only after an explicit confirmation",
                        "zh": "敏感操作：须经明确确认才会执行"},
    "agent_unparsed": {"en": "Unparsed answer: {reason}", "zh": "无法解析的回答：{reason}"},
    "agent_history": {"en": "History: {count} step(s)", "zh": "历史：{count} 步"},
    "agent_execution": {"en": "Execution: {outcome}{reason}", "zh": "执行：{outcome}{reason}"},
    "agent_confirm_sensitive": {"en": "Run the sensitive operation {operation}? [y/N] ",
                                "zh": "执行敏感操作 {operation}？[y/N] "},
    "agent_confirm_untagged": {"en": "Run {operation} (its sensitivity is unknown)? [y/N] ",
                               "zh": "执行 {operation}（未标注是否敏感）？[y/N] "},
    "agent_finished": {"en": "Task finished (END): enter a new task", "zh": "任务完成（END），请输入新任务"},
    "no_image": {"en": "upload an image first", "zh": "请先上传图像"},
    "port_out_of_range": {"en": "--port must be between 1 and 65535, got {port}",
                          "zh": "--port 须在 1 到 65535 之间，当前为 {port}"},
    "cannot_serve": {"en": "cannot serve on {host}:{port}: the port is in use or the address is not this "
                           "machine's; choose another --port or --host",
                     "zh": "无法在 {host}:{port} 上提供服务：端口已被占用或地址不属于本机；请换一个 --port 或 --host"},
    "web_one_process": {"en": "the web demo runs in one process; use the CLI under torchrun for model parallel",
                        "zh": "网页演示只在单进程运行；模型并行请在 torchrun 下使用命令行"},
    "no_agent_step": {"en": "the answer names no plan, action or operation", "zh": "回答中没有计划、动作或操作"},
    # Errors raised deeper: English is their own text; Chinese says what failed and keeps the detail.
    "checkpoint_error": {"en": "{detail}", "zh": "无法加载检查点：{detail}"},
    "download_error": {"en": "{detail}", "zh": "下载模型失败：{detail}"},
    "tokenizer_error": {"en": "{detail}", "zh": "分词器不可用：{detail}"},
    "image_error": {"en": "{detail}", "zh": "无法读取图像：{detail}"},
    "prompt_too_long": {"en": "{detail}", "zh": "输入过长：{detail}"},
    "empty_query": {"en": "{detail}", "zh": "问题为空，请输入问题或指令"},
    "input_error": {"en": "{detail}", "zh": "输入有误：{detail}"},
    "model_error": {"en": "{detail}", "zh": "模型运行出错：{detail}"},
    "quantization_error": {"en": "{detail}", "zh": "无法量化模型：{detail}"},
}

# Exception class name -> its MESSAGES entry. Names, not classes, so that this table imports nothing heavy; the
# first class of an exception's MRO listed here is used (so ValueError is the fallback of every input error).
ERROR_MESSAGES = {
    "CheckpointError": "checkpoint_error",
    "ConversionError": "checkpoint_error",
    "DownloadError": "download_error",
    "TokenizerNotFoundError": "tokenizer_error",
    "TokenizerMismatchError": "tokenizer_error",
    "ImageLoadError": "image_error",
    "PromptTooLongError": "prompt_too_long",
    "EmptyQueryError": "empty_query",
    "QuantizationError": "quantization_error",
    "ValueError": "input_error",
    "RuntimeError": "model_error",
}


def message(key: str, chinese: bool = False, **values) -> str:
    return MESSAGES[key]["zh" if chinese else "en"].format(**values)


def describe(problem: BaseException, chinese: bool = False) -> str:
    """One line for an exception: its own text in English; in Chinese, its class's wording with that text."""
    detail = " ".join(str(problem).split()) or type(problem).__name__
    for cls in type(problem).__mro__:
        if cls.__name__ in ERROR_MESSAGES:
            return message(ERROR_MESSAGES[cls.__name__], chinese, detail=detail)
    return detail
