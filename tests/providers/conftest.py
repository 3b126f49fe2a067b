"""Provider fixtures: stand-in servers over real HTTP and an httpx client that ignores proxy settings."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import anyio
import httpx
import pytest

from genloom.providers.base import Prediction, PredictionProvider
from genloom.providers.openai_compat import OpenAIChatProvider
from genloom.providers.replicate import ReplicateProvider
from genloom.testing import CallbackSink, FakeOpenAI, FakeReplicate

CLIP = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom stand-in clip"
FRAME = b"\x89PNG\r\n\x1a\n stand-in frame"


@pytest.fixture
def replicate_server() -> Iterator[FakeReplicate]:
    with FakeReplicate(files={"clip.mp4": CLIP, "frame.png": FRAME}) as fake:
        yield fake


@pytest.fixture
def sink() -> Iterator[CallbackSink]:
    with CallbackSink() as receiver:
        yield receiver


@pytest.fixture
def openai_server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key="sk-test") as fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as client:
        yield client


@pytest.fixture
def replicate(replicate_server: FakeReplicate, http: httpx.AsyncClient) -> ReplicateProvider:
    assert replicate_server.token is not None
    return ReplicateProvider(http, replicate_server.url, token=replicate_server.token, timeout=2)


@pytest.fixture
def chat(openai_server: FakeOpenAI, http: httpx.AsyncClient) -> OpenAIChatProvider:
    return OpenAIChatProvider(http, openai_server.url, "sk-test", "test-model", timeout=2)


async def settle(provider: PredictionProvider, prediction_id: str, within: float = 5.0) -> Prediction:
    """Poll until the prediction is terminal."""
    with anyio.fail_after(within):
        while True:
            prediction = await provider.get(prediction_id)
            if prediction.terminal:
                return prediction
            await anyio.sleep(0.01)
    raise AssertionError("unreachable")
