"""The local provider: asynchronous predictions (static ads, voice-overs) rendered on this machine.

It behaves like a hosted provider from the job's side: ``submit`` returns at once with an id, the
job parks, and when the output is ready the provider calls back (``on_done``) into the same
settle path a Replicate webhook takes. State lives in files under its directory, so ``get``
answers after a restart and a prediction that was mid-render is started again.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from genloom.errors import PermanentError
from genloom.media.ads import render_ad, template_copy
from genloom.media.voice import synthesize
from genloom.observability import get_logger
from genloom.providers.base import Prediction

log = get_logger("genloom.providers.local")
OnDone = Callable[[Prediction], Awaitable[None]]
_OUTPUTS = {"static_ad": ("png", "image/png"), "tts": ("wav", "audio/wav")}


def _render(model: str, input: dict[str, Any], out: Path) -> None:
    if model == "tts":
        synthesize(str(input.get("text", "")), out, pitch=float(input.get("pitch", 140.0)))
        return
    copy = template_copy(str(input.get("name", "")), str(input.get("description", "")), str(input.get("audience", "")))
    copy |= {k: str(input[k]) for k in ("headline", "body", "cta") if input.get(k)}
    image = Path(input["image_path"]) if input.get("image_path") else None
    render_ad(out, **copy, aspect=str(input.get("aspect", "1:1")), height=int(input.get("height", 1080)),
              seed=int(input.get("seed", 0)), image=image)


class LocalPredictions:
    name = "local"

    def __init__(self, root: Path, executor: Executor | None = None, on_done: OnDone | None = None) -> None:
        self.root = root
        self.executor = executor
        self.on_done = on_done
        self._tasks: dict[str, asyncio.Task[None]] = {}
        root.mkdir(parents=True, exist_ok=True)

    # -- the provider protocol -------------------------------------------------
    async def submit(self, model: str, input: dict[str, Any], webhook_url: str | None = None) -> Prediction:
        if model not in _OUTPUTS:
            raise PermanentError(f"the local provider has no model {model!r}", code="provider_rejected")
        pred_id = "loc_" + secrets.token_hex(10)
        self._save(pred_id, {"id": pred_id, "model": model, "input": input, "status": "processing"})
        self._start(pred_id)
        return Prediction(pred_id, "starting")

    async def get(self, prediction_id: str) -> Prediction:
        state = self._load(prediction_id)
        if state is None:
            return Prediction(prediction_id, "failed", error="the local provider has no such prediction")
        if state["status"] == "processing" and prediction_id not in self._tasks:
            self._start(prediction_id)  # this process restarted mid-render: start it again
        return self._prediction(state)

    async def cancel(self, prediction_id: str) -> None:
        task = self._tasks.pop(prediction_id, None)
        if task is not None:
            task.cancel()
        state = self._load(prediction_id)
        if state is not None and state["status"] == "processing":
            self._save(prediction_id, state | {"status": "canceled"})

    async def fetch_output(self, pred: Prediction, dest: Path) -> tuple[Path, str]:
        """The output file and its content type (settle stores it; there is no URL to fetch)."""
        state = self._load(pred.id)
        if state is None or state["status"] != "succeeded":
            raise PermanentError("the local prediction has no output", code="provider_failed")
        return self._output(pred.id, state["model"]), _OUTPUTS[state["model"]][1]

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        self._tasks.clear()

    # -- internals -----------------------------------------------------------
    def _start(self, pred_id: str) -> None:
        self._tasks[pred_id] = asyncio.create_task(self._run(pred_id), name=f"local-{pred_id}")

    async def _run(self, pred_id: str) -> None:
        state = self._load(pred_id)
        assert state is not None
        try:
            loop = asyncio.get_running_loop()
            out = self._output(pred_id, state["model"])
            await loop.run_in_executor(self.executor, _render, state["model"], state["input"], out)
            state |= {"status": "succeeded", "output": out.name}
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            state |= {"status": "failed", "error": str(exc) or type(exc).__name__}
        finally:
            self._tasks.pop(pred_id, None)
        self._save(pred_id, state)
        if self.on_done is not None:
            try:
                await self.on_done(self._prediction(state))
            except Exception as exc:  # the reconciler re-asks get() later
                log.warning("provider.local_callback_failed", prediction=pred_id, error=str(exc))

    def _prediction(self, state: dict[str, Any]) -> Prediction:
        return Prediction(state["id"], state["status"], output=state.get("output"), error=state.get("error"),
                          raw={"model": state["model"]})

    def _output(self, pred_id: str, model: str) -> Path:
        return self.root / f"{pred_id}.{_OUTPUTS[model][0]}"

    def _path(self, pred_id: str) -> Path:
        if not pred_id.startswith("loc_") or not pred_id[4:].isalnum():
            raise PermanentError("not a local prediction id", code="provider_rejected")
        return self.root / f"{pred_id}.json"

    def _save(self, pred_id: str, state: dict[str, Any]) -> None:
        tmp = self._path(pred_id).with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self._path(pred_id))

    def _load(self, pred_id: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self._path(pred_id).read_text())
            return data
        except FileNotFoundError:
            return None
