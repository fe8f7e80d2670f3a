"""The LLM substrate: load a model (Hugging Face directory, GGUF file or the bundled SmolLM2),
build chat prompts and generate text. Shared by LeanKV and ChipExpert."""

from leanstack.llm.chat import chat_prompt, generate_text
from leanstack.llm.loading import LoadedModel, bundled_gguf_path, cache_dir, load_model

__all__ = [
    "LoadedModel",
    "bundled_gguf_path",
    "cache_dir",
    "chat_prompt",
    "generate_text",
    "load_model",
]
