"""Chat completions over the OpenAI-compatible HTTP API (OpenAI, Ollama, vLLM), and the text
helpers built on any ChatProvider: narration scripts and ad copy.

Failures are classified as for every provider (see ``replicate.http_error``): timeouts,
connection errors, 408/425/429/5xx are transient; other 4xx and refusals are permanent.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx

from genloom.errors import PermanentError, TransientError
from genloom.providers.base import ChatProvider
from genloom.providers.replicate import api_root, bad_response, http_error, transport_error

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_FENCED = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?(.*?)```", re.DOTALL)
_MARKER = re.compile(
    r"^\s*(?:[-*•]\s+|\d{1,2}[.):]\s+|\**\s*(?:paragraph|part|scene)\s*\d+\s*(?:[:.)-]\s*\**|\**\s*[:.)-]|\*\*)\s*)",
    re.IGNORECASE,
)
_LABEL_ONLY = re.compile(r"^\s*(?:#{1,6}\s.*|\**\s*(?:paragraph|part|scene)\s*\d+\s*:?\s*\**\s*:?)\s*$", re.IGNORECASE)
_CHATTER_HEAD = re.compile(r"^(?:here(?:'s| is| are)|sure|certainly|of course|okay|ok)\b", re.IGNORECASE)
_CHATTER_TAIL = re.compile(r"^(?:let me know|i hope|feel free|would you like|do you want)\b", re.IGNORECASE)
_AD_KEYS = {"headline": "headline", "body": "body", "cta": "cta", "call_to_action": "cta", "calltoaction": "cta"}


class OpenAIChatProvider:
    """ChatProvider over ``POST {base_url}/v1/chat/completions``; ``base_url`` may end in ``/v1``."""

    name = "openai"

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        api_key: str | None,
        model: str,
        timeout: float = 60.0,
    ) -> None:
        self._client = client
        self._url = api_root(base_url) + "/v1/chat/completions"
        self._api_key = api_key
        self.model = model
        self._timeout = httpx.Timeout(timeout)

    def __repr__(self) -> str:
        return f"OpenAIChatProvider(url={self._url!r}, model={self.model!r})"

    async def complete(self, prompt: str, *, system: str | None = None, image_url: str | None = None) -> str:
        """The assistant's answer to ``prompt``; with ``image_url`` the image is sent as a content part."""
        messages: list[dict[str, Any]] = []
        if system is not None:
            messages.append({"role": "system", "content": system})
        if image_url is None:
            messages.append({"role": "user", "content": prompt})
        else:
            parts = [{"type": "text", "text": prompt}, {"type": "image_url", "image_url": {"url": image_url}}]
            messages.append({"role": "user", "content": parts})
        body = {"model": self.model, "messages": messages, "stream": False}
        headers = {"Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        try:
            response = await self._client.post(self._url, json=body, headers=headers, timeout=self._timeout)
        except httpx.TransportError as exc:
            raise transport_error(exc, self.name, "chat completion") from exc
        if not response.is_success:
            raise http_error(response, self.name)
        try:
            data = response.json()
        except ValueError:
            raise bad_response(self.name, "chat completion", "body is not JSON") from None
        return self._answer(data)

    def _answer(self, data: Any) -> str:
        choices = data.get("choices") if isinstance(data, dict) else None
        first = choices[0] if isinstance(choices, list) and choices else None
        message = first.get("message") if isinstance(first, dict) else None
        if not isinstance(first, dict) or not isinstance(message, dict):
            raise bad_response(self.name, "chat completion", "no choices[0].message")
        content = message.get("content")
        if isinstance(content, list):  # some servers answer in content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if isinstance(content, str):
            return content
        refusal = message.get("refusal")
        if refusal or first.get("finish_reason") == "content_filter":
            raise PermanentError(
                f"{self.name} refused the request",
                code="provider_rejected",
                provider=self.name,
                detail=str(refusal or "content_filter"),
            )
        raise bad_response(self.name, "chat completion", "message has no content")


def _unwrap(text: str) -> str:
    """Drop reasoning blocks and a fence around the whole answer; normalise newlines."""
    text = _THINK.sub("", text).replace("\r\n", "\n").replace("\r", "\n").strip()
    fenced = re.fullmatch(r"```[A-Za-z0-9_-]*[ \t]*\n(.*?)\n?```", text, re.DOTALL)
    return (fenced.group(1) if fenced else text).strip()


def _clean_paragraph(block: str) -> str:
    lines = [line for line in block.split("\n") if not _LABEL_ONLY.match(line)]
    text = " ".join(line.strip() for line in lines if line.strip())
    text = _MARKER.sub("", text).strip()
    emphasised = re.fullmatch(r"(\*\*|\*|__|_)(.+)\1", text)
    return (emphasised.group(2) if emphasised else text).strip()


def split_paragraphs(text: str, n: int) -> list[str]:
    """At most ``n`` narration paragraphs from a model's answer.

    Splits on blank lines (on single newlines when that finds too few), drops headings,
    paragraph labels, list markers, markdown emphasis and the chatter models wrap answers in
    ("Here is your script:", "Let me know..."). Surplus paragraphs are dropped; fewer than
    ``n`` are returned as found.
    """
    body = _unwrap(text)
    blocks = re.split(r"\n\s*\n", body)
    if len(blocks) < n:
        lines = [line for line in body.split("\n") if line.strip()]
        if len(lines) > len(blocks):
            blocks = lines
    paragraphs = [p for p in (_clean_paragraph(b) for b in blocks) if p]
    while len(paragraphs) > n and (_CHATTER_HEAD.match(paragraphs[0]) or paragraphs[0].endswith(":")):
        paragraphs.pop(0)
    while len(paragraphs) > n and _CHATTER_TAIL.match(paragraphs[-1]):
        paragraphs.pop()
    return paragraphs[:n]


async def write_script(chat: ChatProvider, subject: str, n: int) -> list[str]:
    """Ask ``chat`` for a narration script about ``subject`` in ``n`` paragraphs and split it."""
    if n < 1:
        raise ValueError("n must be at least 1")
    prompt = (
        f"Write a narration script about: {subject}\n\n"
        f"Write exactly {n} paragraphs separated by one blank line. Plain text only: "
        "no title, no headings, no numbering, no bullet points, no markdown, no remarks before or after."
    )
    answer = await chat.complete(prompt, system="You write scripts for short narrated videos.")
    paragraphs = split_paragraphs(answer, n)
    if not paragraphs:
        raise TransientError("the model returned no script", code="empty_answer", provider=chat.name)
    return paragraphs


def _ad_fields(candidate: Any) -> dict[str, str] | None:
    if not isinstance(candidate, dict):
        return None
    fields: dict[str, str] = {}
    for key, value in candidate.items():
        name = _AD_KEYS.get(re.sub(r"[\s-]+", "_", str(key).strip().lower()))
        if name and isinstance(value, str | int | float) and not isinstance(value, bool) and str(value).strip():
            fields.setdefault(name, str(value).strip())
    return fields if len(fields) == 3 else None


def parse_ad_copy(text: str) -> dict[str, str]:
    """``{"headline", "body", "cta"}`` from the first JSON object in ``text`` that holds all three,
    inside a code fence or bare amid prose. Raises TransientError (``unparseable_answer``)."""
    unwrapped = _unwrap(text)
    decoder = json.JSONDecoder()
    for candidate in [*_FENCED.findall(unwrapped), unwrapped]:
        for start in (m.start() for m in re.finditer(r"\{", candidate)):
            try:
                value, _ = decoder.raw_decode(candidate, start)
            except ValueError:
                continue
            fields = _ad_fields(value)
            if fields:
                return fields
    raise TransientError(
        "the model's answer holds no JSON object with headline, body and cta",
        code="unparseable_answer",
        answer=text[:500],
    )


async def ad_copy(chat: ChatProvider, product: dict[str, Any]) -> dict[str, str]:
    """Headline, body and call to action for ``product``, asked of ``chat`` as JSON."""
    prompt = (
        "Write ad copy for this product. Answer with one JSON object and nothing else, with the "
        'string keys "headline" (at most 8 words), "body" (one or two sentences) and "cta" '
        "(a short call to action).\n\nProduct:\n" + json.dumps(product, ensure_ascii=False, indent=2, default=str)
    )
    answer = await chat.complete(prompt, system="You are a concise direct-response copywriter. Answer in JSON.")
    return parse_ad_copy(answer)
