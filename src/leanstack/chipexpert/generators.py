"""Text generators the assistant can talk to: a local model (the bundled SmolLM2, any Hugging Face
directory or .gguf file) or a remote OpenAI-compatible ``/v1/chat/completions`` endpoint.

Both decode greedily (temperature 0), so the same question gives the same answer. Asked for
``prose``, the local model also stops after a few sentences or words and may not repeat an
8-token run (which ends loops); code and MCQ answers are decoded plainly. A repetition penalty
is not used: on SmolLM2-135M a penalty of 1.1-1.3 turned answers from the passages into
off-topic prose and code.
"""

from __future__ import annotations

import json
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from leanstack.chipexpert.grounding import (
    MAX_ANSWER_SENTENCES,
    MAX_ANSWER_WORDS,
    loop_start,
    split_sentences,
)
from leanstack.errors import LeanstackError

ENDPOINT_TIMEOUT_S = 120.0
SMALL_MODEL_PARAMS = 1_000_000_000  # below this a local model counts as small (auto: extractive)
PROSE_NO_REPEAT_NGRAM = 8


class UpstreamError(LeanstackError):
    """The model endpoint failed (unreachable, an HTTP error, or not OpenAI-compatible)."""


@runtime_checkable
class Generator(Protocol):
    """Anything that turns chat messages into an answer; ``name`` says which model it is."""

    name: str

    def generate(self, messages: list[dict[str, str]], max_new_tokens: int = 256, *,
                 prose: bool = False) -> str:
        """The model's reply to ``messages`` (greedy decoding); ``prose`` asks for a short
        answer in sentences (the generator may stop early and block repetition)."""
        ...

    def score_choices(self, messages: list[dict[str, str]], choices: list[str]) -> list[float]:
        """Log-likelihood of each choice as the start of the reply to ``messages``."""
        ...

    def count_tokens(self, text: str) -> int:
        """How many tokens ``text`` is for this model's tokenizer."""
        ...


class LocalGenerator:
    """A causal LM loaded in this process by ``leanstack.llm.load_model``; ``generate`` can
    stream (``streams``: it takes ``on_text``)."""

    streams = True

    def __init__(self, source: str | None = None) -> None:
        import transformers

        from leanstack.llm import load_model

        transformers.utils.logging.disable_progress_bar()
        self.loaded = load_model(source)
        self.name = source or "SmolLM2-135M-Instruct"
        self.parameters = sum(p.numel() for p in self.loaded.model.parameters())
        self.small = self.parameters < SMALL_MODEL_PARAMS
        self._lock = threading.Lock()  # one forward pass at a time (the server is threaded)

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """The token ids of ``messages`` rendered with the chat template (reply prompt open)."""
        from leanstack.llm import chat_prompt

        tok = self.loaded.tokenizer
        return tok(chat_prompt(tok, messages), add_special_tokens=False)["input_ids"]

    def count_tokens(self, text: str) -> int:
        """How many tokens ``text`` is (no special tokens added)."""
        return len(self.loaded.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(self, messages: list[dict[str, str]], max_new_tokens: int = 256, *,
                 prose: bool = False, on_text: Callable[[str], None] | None = None) -> str:
        """Greedy-decode the reply to ``messages``; returns the new text only. With ``prose``,
        no 8-token run repeats and decoding stops after ``MAX_ANSWER_SENTENCES`` sentences or
        ``MAX_ANSWER_WORDS`` words. ``on_text(piece)`` is called as the reply grows (pieces
        end at a space; together they are the reply before its surrounding spaces are
        stripped)."""
        import torch

        if max_new_tokens < 1:
            raise LeanstackError(f"max_new_tokens must be at least 1 (got {max_new_tokens})")
        tok = self.loaded.tokenizer
        ids = torch.tensor([self.prompt_ids(messages)], device=self.loaded.model.device)
        extra: dict[str, Any] = {}
        if prose:
            extra = {"no_repeat_ngram_size": PROSE_NO_REPEAT_NGRAM,
                     "stopping_criteria": [_SentenceStop(tok, ids.shape[1],
                                                         MAX_ANSWER_SENTENCES, MAX_ANSWER_WORDS)]}
        if on_text is not None:
            extra["streamer"] = _TextPieces(tok, on_text)
        with self._lock, torch.no_grad():
            out = self.loaded.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                             max_new_tokens=max_new_tokens, do_sample=False,
                                             pad_token_id=tok.pad_token_id, **extra)
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


class _TextPieces:
    """A ``generate`` streamer that hands on the reply's new text, up to its last space (a word
    or a multi-byte character may still be incomplete after it), and the rest at the end."""

    def __init__(self, tokenizer: Any, on_text: Callable[[str], None]) -> None:
        self.tokenizer, self.on_text = tokenizer, on_text
        self.ids: list[int] = []
        self.prompt_seen = False
        self.sent = 0  # characters of the decoded reply handed on so far

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # generate first passes the prompt
            self.prompt_seen = True
            return
        self.ids.extend(int(t) for t in value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        upto = max(text.rfind(" "), text.rfind("\n")) + 1
        if upto > self.sent:
            self.on_text(text[self.sent:upto])
            self.sent = upto

    def end(self) -> None:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if len(text) > self.sent:
            self.on_text(text[self.sent:])
            self.sent = len(text)


class _SentenceStop:
    """A stopping criterion: true once the new text holds ``limit`` finished sentences or
    ``max_words`` words, or has started a loop of a few words."""

    def __init__(self, tokenizer: Any, prompt_len: int, limit: int, max_words: int) -> None:
        self.tokenizer, self.prompt_len = tokenizer, prompt_len
        self.limit, self.max_words = limit, max_words

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        text = self.tokenizer.decode(input_ids[0, self.prompt_len:], skip_special_tokens=True)
        # finished: followed by more text, or ending the text with its citation
        sentences = split_sentences(text)
        done = len(sentences) - (0 if re.search(r"[.!?](\s*\[\d+\])*\s*$", text) else 1)
        stop = done >= self.limit or len(text.split()) >= self.max_words or \
            loop_start(text) is not None
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool)


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
    """A model behind an OpenAI-compatible HTTP server (vLLM, llama.cpp server, Ollama, ...);
    with ``on_text`` the reply is streamed (``stream: true``, server-sent events)."""

    streams = True

    def __init__(self, endpoint: str, model: str | None = None,
                 timeout_s: float = ENDPOINT_TIMEOUT_S) -> None:
        self.url = chat_completions_url(endpoint)
        self.model = model or "default"
        self.name = f"{self.model}@{self.url}"
        self.timeout_s = timeout_s

    def _post(self, body: dict[str, Any],
              on_event: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """The JSON answer to ``body``; with ``on_event``, each server-sent event's JSON is
        passed to it as it arrives (a server that answers one JSON object is read as such)."""
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                payload = resp.read() if on_event is None else self._events(resp, on_event)
        except urllib.error.HTTPError as e:
            detail = e.read(300).decode(errors="replace").replace("\n", " ")
            raise UpstreamError(f"the model endpoint {self.url} answered HTTP {e.code} "
                                 f"({detail or e.reason}); check the URL and model name") from e
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise UpstreamError(f"cannot reach the model endpoint {self.url} ({reason}); "
                                 "check the URL and that the server is running") from e
        if on_event is not None and not payload:  # the events were the answer
            return {}
        try:
            return json.loads(payload)
        except json.JSONDecodeError as e:
            raise UpstreamError(f"the model endpoint {self.url} did not answer JSON; "
                                 "is it an OpenAI-compatible server?") from e

    def _events(self, resp: Any, on_event: Callable[[dict[str, Any]], None]) -> bytes:
        """Read ``data:`` lines until ``[DONE]``, passing each one's JSON on; returns the body
        if it was not an event stream (empty otherwise)."""
        other = b""
        for raw in resp:
            line = raw.strip()
            if other or (line and not line.startswith((b"data:", b":"))):
                other += raw  # not an event stream: one JSON answer
            elif line.startswith(b"data:"):
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                try:
                    on_event(json.loads(data))
                except json.JSONDecodeError as e:
                    raise UpstreamError(f"the model endpoint {self.url} sent an event that is "
                                         "not JSON; is it an OpenAI-compatible server?") from e
        return other

    def generate(self, messages: list[dict[str, str]], max_new_tokens: int = 256, *,
                 prose: bool = False, on_text: Callable[[str], None] | None = None) -> str:
        """POST the messages with temperature 0 and return the first choice's content
        (``prose`` changes nothing here: the assistant's post-check caps the answer); with
        ``on_text``, ask for a stream and pass each piece of the reply on as it arrives."""
        body = {"model": self.model, "messages": messages, "max_tokens": max_new_tokens,
                "temperature": 0}
        if on_text is None:
            return self._content(self._post(body))
        pieces: list[str] = []

        def event(data: dict[str, Any]) -> None:
            choices = data.get("choices") if isinstance(data, dict) else None
            if not isinstance(choices, list):
                raise UpstreamError(f"the model endpoint {self.url} streamed an event without "
                                     "choices; is it OpenAI-compatible?")
            delta = choices[0].get("delta") if choices and isinstance(choices[0], dict) else None
            if isinstance(delta, dict) and isinstance(delta.get("content"), str) and \
                    delta["content"]:
                pieces.append(delta["content"])
                on_text(delta["content"])

        whole = self._post({**body, "stream": True}, event)
        if whole:  # the server ignored "stream" and answered at once
            text = self._content(whole)
            on_text(text)
            return text
        return "".join(pieces).strip()

    def _content(self, data: dict[str, Any]) -> str:
        try:
            return str(data["choices"][0]["message"]["content"]).strip()
        except (KeyError, IndexError, TypeError) as e:
            raise UpstreamError(f"the model endpoint {self.url} answered without "
                                 "choices[0].message.content; is it OpenAI-compatible?") from e

    def score_choices(self, messages: list[dict[str, str]], choices: list[str]) -> list[float]:
        """Not available: chat endpoints do not score a given continuation."""
        raise LeanstackError("score_choices is not supported by endpoints (chat completions "
                             "cannot score given text); use a local --model for MCQ scoring")

    def count_tokens(self, text: str) -> int:
        """Not available: the endpoint's tokenizer is not reachable."""
        raise LeanstackError("count_tokens is not supported by endpoints; use a local --model "
                             "for per-token MCQ scoring")


class BundledGenerator:
    """The bundled SmolLM2-135M-Instruct, loaded on first use: an extractive answer (the
    default for this small model) never needs it, so ``chip ask`` then starts without torch."""

    name = "SmolLM2-135M-Instruct"
    small = True  # 135M parameters, under SMALL_MODEL_PARAMS
    streams = True

    def __init__(self) -> None:
        self._local: LocalGenerator | None = None
        self._lock = threading.Lock()

    def load(self) -> LocalGenerator:
        """The loaded model (loads it on the first call)."""
        with self._lock:
            if self._local is None:
                self._local = LocalGenerator(None)
            return self._local

    def generate(self, messages: list[dict[str, str]], max_new_tokens: int = 256, *,
                 prose: bool = False, on_text: Callable[[str], None] | None = None) -> str:
        """As ``LocalGenerator.generate``."""
        return self.load().generate(messages, max_new_tokens, prose=prose, on_text=on_text)

    def score_choices(self, messages: list[dict[str, str]], choices: list[str]) -> list[float]:
        """As ``LocalGenerator.score_choices``."""
        return self.load().score_choices(messages, choices)

    def count_tokens(self, text: str) -> int:
        """As ``LocalGenerator.count_tokens``."""
        return self.load().count_tokens(text)


def make_generator(model: str | None = None, endpoint: str | None = None) -> Generator:
    """``endpoint`` -> an OpenAI-compatible server (``model`` names the model there);
    otherwise a local model: None for the bundled SmolLM2, a Hugging Face dir or a .gguf path."""
    if endpoint:
        return EndpointGenerator(endpoint, model)
    return LocalGenerator(model)
