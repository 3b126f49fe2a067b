"""OpenAIChatProvider against FakeOpenAI over real HTTP, and the script / ad-copy helpers."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from genloom.errors import PermanentError, TransientError
from genloom.providers.openai_compat import (
    OpenAIChatProvider,
    ad_copy,
    parse_ad_copy,
    split_paragraphs,
    write_script,
)
from genloom.testing import FakeOpenAI

pytestmark = pytest.mark.anyio


async def test_text_prompt_with_system_message(chat: OpenAIChatProvider, openai_server: FakeOpenAI) -> None:
    openai_server.replies.append("Hello there.")
    assert await chat.complete("Say hello", system="Be brief.") == "Hello there."
    [request] = openai_server.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.json() == {
        "model": "test-model",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}],
        "stream": False,
    }


async def test_vision_request_sends_the_image_as_a_content_part(
    chat: OpenAIChatProvider, openai_server: FakeOpenAI
) -> None:
    await chat.complete("What is in this picture?", image_url="https://cdn.example/cat.png")
    [message] = openai_server.requests[0].json()["messages"]
    assert message == {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": "https://cdn.example/cat.png"}},
        ],
    }


async def test_data_url_images_pass_through(chat: OpenAIChatProvider, openai_server: FakeOpenAI) -> None:
    data_url = "data:image/png;base64,iVBORw0KGgo="
    await chat.complete("Describe", image_url=data_url, system="s")
    parts = openai_server.requests[0].json()["messages"][1]["content"]
    assert parts[1]["image_url"]["url"] == data_url


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
async def test_no_api_key_for_local_servers_and_any_base_url_spelling(http: httpx.AsyncClient, suffix: str) -> None:
    with FakeOpenAI(["local answer"]) as ollama:
        chat = OpenAIChatProvider(http, ollama.url + suffix, None, "llama3.2")
        assert await chat.complete("hi") == "local answer"
        [request] = ollama.requests
        assert request.path == "/v1/chat/completions"
        assert "authorization" not in request.headers


async def test_replies_in_turn_then_default(chat: OpenAIChatProvider, openai_server: FakeOpenAI) -> None:
    openai_server.replies.extend(["one", "two"])
    assert [await chat.complete("q") for _ in range(3)] == ["one", "two", "OK"]


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_server_errors_are_transient(chat: OpenAIChatProvider, openai_server: FakeOpenAI, status: int) -> None:
    openai_server.fail_next("chat", status, detail="The server is overloaded")
    with pytest.raises(TransientError) as caught:
        await chat.complete("q")
    assert caught.value.code == "provider_unavailable"
    assert caught.value.details["detail"] == "The server is overloaded"
    assert await chat.complete("q") == "OK"


async def test_rate_limit_carries_retry_after(chat: OpenAIChatProvider, openai_server: FakeOpenAI) -> None:
    openai_server.fail_next("chat", 429, retry_after="20")
    with pytest.raises(TransientError) as caught:
        await chat.complete("q")
    assert caught.value.code == "provider_rate_limited" and caught.value.details["retry_after"] == 20.0


@pytest.mark.parametrize("status", [400, 404, 413, 422])
async def test_client_errors_are_permanent_with_the_message(
    chat: OpenAIChatProvider, openai_server: FakeOpenAI, status: int
) -> None:
    openai_server.fail_next("chat", status, detail="model 'nope' not found")
    with pytest.raises(PermanentError) as caught:
        await chat.complete("q")
    assert caught.value.code == "provider_rejected"
    assert caught.value.details == {"provider": "openai", "status": status, "detail": "model 'nope' not found"}


async def test_wrong_key_is_permanent_and_not_echoed(openai_server: FakeOpenAI, http: httpx.AsyncClient) -> None:
    chat = OpenAIChatProvider(http, openai_server.url, "sk-WrongKeyDoNotLeak", "m")
    with pytest.raises(PermanentError) as caught:
        await chat.complete("q")
    assert caught.value.details["status"] == 401
    assert "sk-WrongKeyDoNotLeak" not in f"{caught.value} {caught.value.details} {chat!r}"


async def test_slow_answer_beyond_client_timeout_is_transient(
    openai_server: FakeOpenAI, http: httpx.AsyncClient
) -> None:
    openai_server.delay("chat", math.inf)
    chat = OpenAIChatProvider(http, openai_server.url, "sk-test", "m", timeout=0.3)
    with pytest.raises(TransientError) as caught:
        await chat.complete("q")
    assert caught.value.code == "provider_timeout"


async def test_unreachable_server_is_transient(http: httpx.AsyncClient) -> None:
    with FakeOpenAI() as gone:
        url = gone.url
    with pytest.raises(TransientError) as caught:
        await OpenAIChatProvider(http, url, None, "m").complete("q")
    assert caught.value.code == "provider_unreachable"


@asynccontextmanager
async def answering(body: Any) -> AsyncIterator[OpenAIChatProvider]:
    """A provider over an in-process transport, for answers no well-behaved server sends."""

    def handler(request: httpx.Request) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.Response(200, content=content, headers={"content-type": "application/json"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        yield OpenAIChatProvider(client, "http://llm", None, "m")


@pytest.mark.parametrize("body", [b"<html>proxy</html>", {"choices": []}, {"object": "list"}, [1], {"choices": [{}]}])
async def test_malformed_success_is_transient(body: Any) -> None:
    async with answering(body) as chat:
        with pytest.raises(TransientError) as caught:
            await chat.complete("q")
    assert caught.value.code == "provider_bad_response"


async def test_refusal_is_permanent() -> None:
    refusal = {"choices": [{"message": {"role": "assistant", "content": None, "refusal": "I can't help with that."}}]}
    async with answering(refusal) as chat:
        with pytest.raises(PermanentError) as caught:
            await chat.complete("q")
    assert caught.value.details["detail"] == "I can't help with that."
    filtered = {"choices": [{"message": {"content": None}, "finish_reason": "content_filter"}]}
    async with answering(filtered) as chat:
        with pytest.raises(PermanentError):
            await chat.complete("q")


async def test_content_parts_answer_is_joined() -> None:
    parts = {"choices": [{"message": {"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}}]}
    async with answering(parts) as chat:
        assert await chat.complete("q") == "ab"


# -- write_script ---------------------------------------------------------------------------------


async def test_write_script_over_http(chat: OpenAIChatProvider, openai_server: FakeOpenAI) -> None:
    openai_server.replies.append(
        "Here is your script:\n\nBees talk by dancing.\n\nThe waggle points to food.\n\n"
        "Hives vote on new homes.\n\nLet me know if you want changes!"
    )
    assert await write_script(chat, "honey bees", 3) == [
        "Bees talk by dancing.",
        "The waggle points to food.",
        "Hives vote on new homes.",
    ]
    prompt = openai_server.requests[0].json()["messages"][-1]["content"]
    assert "honey bees" in prompt and "exactly 3 paragraphs" in prompt


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("One.\n\nTwo.\n\nThree.", ["One.", "Two.", "Three."]),
        ("One.\r\n\r\nTwo.\r\n\r\nThree.", ["One.", "Two.", "Three."]),
        ("1. One.\n2. Two.\n3. Three.", ["One.", "Two.", "Three."]),
        ("- One.\n\n- Two.\n\n- Three.", ["One.", "Two.", "Three."]),
        ("**Paragraph 1:** One.\n\n**Paragraph 2:** Two.\n\nParagraph 3: Three.", ["One.", "Two.", "Three."]),
        ("Paragraph 1\nOne.\n\nParagraph 2\nTwo.\n\nParagraph 3\nThree.", ["One.", "Two.", "Three."]),
        ("# The Title\n\nOne.\n\nTwo.\n\nThree.", ["One.", "Two.", "Three."]),
        ("<think>plan: 3 parts</think>\n\nOne.\n\nTwo.\n\nThree.", ["One.", "Two.", "Three."]),
        ("```\nOne.\n\nTwo.\n\nThree.\n```", ["One.", "Two.", "Three."]),
        ("One wraps\nacross lines.\n\nTwo.\n\nThree.", ["One wraps across lines.", "Two.", "Three."]),
        ("Sure! Here are three paragraphs:\n\nOne.\n\nTwo.\n\nThree.", ["One.", "Two.", "Three."]),
        ("One.\n\nTwo.\n\nThree.\n\nFour.", ["One.", "Two.", "Three."]),
        ("*One.*\n\n**Two.**\n\nThree has **bold** inside.", ["One.", "Two.", "Three has **bold** inside."]),
        ("Only one paragraph.", ["Only one paragraph."]),
        ("  \n\n ", []),
        ("#hashtags stay.\n\nTwo.\n\n2024 was warm.", ["#hashtags stay.", "Two.", "2024 was warm."]),
    ],
)
def test_split_paragraphs(answer: str, expected: list[str]) -> None:
    assert split_paragraphs(answer, 3) == expected


async def test_write_script_with_an_empty_answer_is_transient(
    openai_server: FakeOpenAI, chat: OpenAIChatProvider
) -> None:
    openai_server.replies.append("<think>hmm</think>")
    with pytest.raises(TransientError) as caught:
        await write_script(chat, "anything", 2)
    assert caught.value.code == "empty_answer"


async def test_write_script_needs_a_positive_count(chat: OpenAIChatProvider) -> None:
    with pytest.raises(ValueError):
        await write_script(chat, "x", 0)


# -- ad_copy --------------------------------------------------------------------------------------


async def test_ad_copy_over_http_with_a_fenced_answer(chat: OpenAIChatProvider, openai_server: FakeOpenAI) -> None:
    openai_server.replies.append(
        'Here you go:\n```json\n{"headline": "Sleep Like a Stone", "body": "Memory foam that cools.", '
        '"cta": "Try it for 100 nights"}\n```'
    )
    product = {"name": "CoolRest Pillow", "price": 49, "features": ["cooling", "memory foam"]}
    assert await ad_copy(chat, product) == {
        "headline": "Sleep Like a Stone",
        "body": "Memory foam that cools.",
        "cta": "Try it for 100 nights",
    }
    prompt = openai_server.requests[0].json()["messages"][-1]["content"]
    assert '"CoolRest Pillow"' in prompt and '"headline"' in prompt


@pytest.mark.parametrize(
    "answer",
    [
        '{"headline": "H", "body": "B", "cta": "C"}',
        'Sure! {"headline": "H", "body": "B", "cta": "C"} Hope it helps.',
        '```\n{"headline": "H", "body": "B", "cta": "C"}\n```',
        '```JSON\n{\n  "Headline": "H",\n  "Body": "B",\n  "Call to action": "C"\n}\n```',
        '<think>{"draft": true}</think>{"headline": " H ", "body": "B", "CTA": "C", "extra": 1}',
        'Options {a} and {"note": "x"} then {"headline": "H", "body": "B", "call-to-action": "C"}',
    ],
)
def test_parse_ad_copy_tolerates_fences_and_prose(answer: str) -> None:
    assert parse_ad_copy(answer) == {"headline": "H", "body": "B", "cta": "C"}


@pytest.mark.parametrize(
    "answer",
    ["no json here", '{"headline": "H", "body": "B"}', '{"headline": "H", "body": "", "cta": "C"}', "{broken"],
)
def test_parse_ad_copy_refuses_incomplete_answers(answer: str) -> None:
    with pytest.raises(TransientError) as caught:
        parse_ad_copy(answer)
    assert caught.value.code == "unparseable_answer"
