"""Chat prompts and a small text-generation helper on top of a loaded model."""

from __future__ import annotations

from typing import Any

from leanstack.errors import LeanstackError
from leanstack.llm.loading import LoadedModel

FALLBACK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def chat_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """Render chat messages with the tokenizer's template (ChatML when it has none)."""
    for m in messages:
        if not isinstance(m, dict) or set(m) != {"role", "content"}:
            raise LeanstackError(f"bad chat message {m!r}: each needs exactly 'role' and 'content'")
    template = getattr(tokenizer, "chat_template", None) or FALLBACK_TEMPLATE
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=True
    )


def generate_text(
    loaded: LoadedModel,
    prompts: list[str],
    max_new_tokens: int = 64,
    cache: Any = None,
    chat: bool = True,
) -> list[str]:
    """Greedy-decode a batch of prompts (left padded) into ``cache`` (default: dense);
    returns only the new text of each."""
    import torch

    tok = loaded.tokenizer
    texts = [chat_prompt(tok, [{"role": "user", "content": p}]) if chat else p for p in prompts]
    tok.padding_side = "left"
    enc = tok(texts, return_tensors="pt", padding=True).to(loaded.model.device)
    with torch.no_grad():
        out = loaded.model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            cache=cache,
            pad_token_id=tok.pad_token_id,
        )
    new = out[:, enc["input_ids"].shape[1]:]
    return [tok.decode(row, skip_special_tokens=True) for row in new]
