"""Text generators the assistant can talk to: a local model (the bundled SmolLM2, any Hugging Face
directory or .gguf file) or a remote OpenAI-compatible ``/v1/chat/completions`` endpoint.

Both decode greedily (temperature 0), so the same question gives the same answer.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from typing import Any, Protocol, runtime_checkable

from leanstack.errors import LeanstackError

ENDPOINT_TIMEOUT_S = 120.0


@runtime_checkable
class Generator(Protocol):
    """Anything that turns chat messages into an answer; ``name`` says which model it is."""

    name: str

    def generate(self, messages: list[dict[str, str]], max_new_tokens: int = 256) -> str:
        """The model's reply to ``messages`` (greedy decoding)."""
        ...

    def score_choices(self, messages: list[dict[str, str]], choices: list[str]) -> list[float]:
        """Log-likelihood of each choice as the start of the reply to ``messages``."""
        ...


class LocalGenerator:
    """A causal LM loaded in this process by ``leanstack.llm.load_model``."""

    def __init__(self, source: str | None = None) -> None:
        import transformers

        from leanstack.llm import load_model

        transformers.utils.logging.disable_progress_bar()
        self.loaded = load_model(source)
        self.name = source or "SmolLM2-135M-Instruct"
        self._lock = threading.Lock()  # one forward pass at a time (the server is threaded)

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """The token ids of ``messages`` rendered with the chat template (reply prompt open)."""
        from leanstack.llm import chat_prompt

        tok = self.loaded.tokenizer
        return tok(chat_prompt(tok, messages), add_special_tokens=False)["input_ids"]

    def generate(self, messages: list[dict[str, str]], max_new_tokens: int = 256) -> str:
        """Greedy-decode the reply to ``messages``; returns the new text only."""
        import torch

        if max_new_tokens < 1:
            raise LeanstackError(f"max_new_tokens must be at least 1 (got {max_new_tokens})")
        tok = self.loaded.tokenizer
        ids = torch.tensor([self.prompt_ids(messages)], device=self.loaded.model.device)
        with self._lock, torch.no_grad():
            out = self.loaded.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                             max_new_tokens=max_new_tokens, do_sample=False,
                                             pad_token_id=tok.pad_token_id)
        return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()

    def score_choices(self, messages: list[dict[str, str]], choices: list[str]) -> list[float]:
        """Sum of the log-probabilities of each choice's tokens after the chat prompt. The
        prompt is encoded once; each choice continues its KV cache, which is then cropped back
        (about 3x faster than one padded batch for ~500-token prompts)."""
        import torch
        from transformers import DynamicCache

        if not choices:
            raise LeanstackError("score_choices needs at least one choice")
        tok, model = self.loaded.tokenizer, self.loaded.model
        prompt = self.prompt_ids(messages)
        conts = [tok(c, add_special_tokens=False)["input_ids"] for c in choices]
        if any(not c for c in conts):
            raise LeanstackError("a choice is empty; give every choice some text")
        scores = []
        with self._lock, torch.no_grad():
            cache = DynamicCache(config=model.config)
            first = model(input_ids=torch.tensor([prompt]), cache=cache).logits[0, -1:].float()
            for cont in conts:
                more = model(input_ids=torch.tensor([cont]), cache=cache).logits[0, :-1].float()
                # token i of the choice is predicted by the logits just before it
                logp = torch.log_softmax(torch.cat([first, more]), dim=-1)
                scores.append(float(logp[torch.arange(len(cont)), torch.tensor(cont)].sum()))
                cache.crop(-len(cont))  # back to the prompt for the next choice
        return scores


def chat_completions_url(endpoint: str) -> str:
    """Accept ``http://host:port``, ``.../v1`` or the full ``.../v1/chat/completions`` URL."""
    url = endpoint.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise LeanstackError(f"endpoint {endpoint!r} is not an http(s) URL; pass e.g. "
                             "http://localhost:8000/v1")
    if url.endswith("/chat/completions"):
        return url
    return url + ("/chat/completions" if url.endswith("/v1") else "/v1/chat/completions")


class EndpointGenerator:
    """A model behind an OpenAI-compatible HTTP server (vLLM, llama.cpp server, Ollama, ...)."""

    def __init__(self, endpoint: str, model: str | None = None,
                 timeout_s: float = ENDPOINT_TIMEOUT_S) -> None:
        self.url = chat_completions_url(endpoint)
        self.model = model or "default"
        self.name = f"{self.model}@{self.url}"
        self.timeout_s = timeout_s

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as e:
            detail = e.read(300).decode(errors="replace").replace("\n", " ")
            raise LeanstackError(f"the model endpoint {self.url} answered HTTP {e.code} "
                                 f"({detail or e.reason}); check the URL and model name") from e
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise LeanstackError(f"cannot reach the model endpoint {self.url} ({reason}); "
                                 "check the URL and that the server is running") from e
        try:
            return json.loads(payload)
        except json.JSONDecodeError as e:
            raise LeanstackError(f"the model endpoint {self.url} did not answer JSON; "
                                 "is it an OpenAI-compatible server?") from e

    def generate(self, messages: list[dict[str, str]], max_new_tokens: int = 256) -> str:
        """POST the messages with temperature 0 and return the first choice's content."""
        data = self._post({"model": self.model, "messages": messages,
                           "max_tokens": max_new_tokens, "temperature": 0})
        try:
            return str(data["choices"][0]["message"]["content"]).strip()
        except (KeyError, IndexError, TypeError) as e:
            raise LeanstackError(f"the model endpoint {self.url} answered without "
                                 "choices[0].message.content; is it OpenAI-compatible?") from e

    def score_choices(self, messages: list[dict[str, str]], choices: list[str]) -> list[float]:
        """Not available: chat endpoints do not score a given continuation."""
        raise LeanstackError("score_choices is not supported by endpoints (chat completions "
                             "cannot score given text); use a local --model for MCQ scoring")


def make_generator(model: str | None = None, endpoint: str | None = None) -> Generator:
    """``endpoint`` -> an OpenAI-compatible server (``model`` names the model there);
    otherwise a local model: None for the bundled SmolLM2, a Hugging Face dir or a .gguf path."""
    if endpoint:
        return EndpointGenerator(endpoint, model)
    return LocalGenerator(model)
