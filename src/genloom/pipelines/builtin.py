"""The built-in job types of the three products, as pipelines of stages.

    motion     (Motioness)      vision -> single | stage1 -> stage2 -> merge -> store
    video      (MoneyPrinter)   script -> clips -> render -> store
    copy       (CutX, sync)     write
    scrape     (CutX, sync)     fetch
    static_ad  (CutX, async)    submit, then the job waits for the provider's callback
    tts        (CutX, async)    submit, then the job waits for the provider's callback

Media work runs in the worker's pool (``ctx.run_blocking``) and polls ``ctx.should_stop`` between
frames, so a cancel lands within a frame or two.
"""

from __future__ import annotations

import html.parser
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from genloom.errors import InvalidInput, JobCancelled
from genloom.media import ads, renderer, text, vision, voice
from genloom.pipelines.context import StageContext
from genloom.pipelines.registry import Registry, Stage, StageFn
from genloom.providers.openai_compat import ad_copy, write_script
from genloom.storage.base import output_key, upload_prefix

T = TypeVar("T")
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp")
SAMPLE = "sample"  # the packaged CC0 photo: ``src: "sample"`` needs no network and no upload
Height = Literal[240, 360, 480, 720, 1080]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class MotionInput(_Input):
    """Motioness: (src, motion, dur, prompt, seed, aspect); the mode is the job's own field."""

    src: str = Field(min_length=1, max_length=2048, description="https URL, an upload key, or 'sample'")
    motion: Literal["auto", *vision.MOTIONS] = "auto"  # type: ignore[valid-type]
    dur: float = Field(4.0, gt=0, le=30, description="seconds")
    prompt: str = Field("", max_length=2000)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    idem: str = Field("", max_length=100, description="a variant tag: a different idem is a distinct asset")
    aspect: renderer.Aspect = "9:16"
    height: Height = 720


class VideoInput(_Input):
    """MoneyPrinter: a subject and a number of paragraphs, or a ready script."""

    subject: str = Field(min_length=1, max_length=200)
    paragraphs: int = Field(3, ge=1, le=10)
    script: list[str] | None = Field(None, max_length=10)
    aspect: renderer.Aspect = "9:16"
    height: Height = 720
    seconds_per_scene: float | None = Field(None, ge=1, le=20)
    voice: bool = True
    seed: int = Field(0, ge=0, le=2**31 - 1)


class CopyInput(_Input):
    name: str = Field(min_length=1, max_length=200)
    description: str = Field("", max_length=2000)
    audience: str = Field("", max_length=200)


class ScrapeInput(_Input):
    url: str = Field(min_length=8, max_length=2048, pattern=r"^https?://")


class StaticAdInput(CopyInput):
    headline: str = Field("", max_length=200)
    body: str = Field("", max_length=500)
    cta: str = Field("", max_length=40)
    image_url: str = Field("", max_length=2048)
    style: str = Field("", max_length=40, description="e.g. lifestyle, studio; steers the provider's prompt")
    aspect: renderer.Aspect = "1:1"
    seed: int = Field(0, ge=0, le=2**31 - 1)


class TtsInput(_Input):
    text: str = Field(min_length=1, max_length=voice.MAX_CHARS)
    voice: str = Field("default", max_length=64)


# -- helpers ---------------------------------------------------------------------------------

async def blocking(ctx: StageContext, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run media work off the loop; a stop it obeyed (cancel, lost lease) is a cancellation."""
    try:
        return await ctx.run_blocking(fn, *args, **kwargs)
    except InterruptedError:
        raise JobCancelled() from None


async def resolve_image(ctx: StageContext, src: str, dest: Path) -> Path:
    """A source image on local disk: the packaged sample, an uploaded object, or a fetched URL."""
    if src == SAMPLE:
        return Path(str(files("genloom") / "assets" / "sample.jpg"))
    if src.startswith(("http://", "https://")):
        fetched = await ctx.services.fetcher.fetch_to_file(src, dest, allowed_types=IMAGE_TYPES)
        return Path(fetched.path)
    if src.startswith("uploads/"):
        storage = ctx.services.storage
        # an upload is its project's: another project's key is as unknown as a made-up one
        if not src.startswith(upload_prefix(ctx.job.project_id)) or await storage.stat(src) is None:
            raise InvalidInput(f"no uploaded file {src!r}", code="invalid_input")
        with dest.open("wb") as f:
            async for chunk in storage.open_range(src):
                f.write(chunk)
        return dest
    raise InvalidInput("src must be an http(s) URL, an upload key (uploads/…) or 'sample'", code="invalid_input")


async def store_file(ctx: StageContext, path: Path, ext: str, content_type: str, **meta: Any) -> None:
    stored = await ctx.services.storage.put_file(output_key(ctx.job.id, ctx.job.attempt, ext), path, content_type)
    ctx.result_key = stored.key
    ctx.result = {"content_type": content_type, "bytes": stored.size, "etag": stored.etag, **meta}
    ctx.artefacts["_event_data"] = {"bytes": stored.size, "key": stored.key}


def _clip(ctx: StageContext, name: str) -> Path:
    return ctx.workdir / f"{name}.mp4"


# -- motion ----------------------------------------------------------------------------------

async def motion_vision(ctx: StageContext) -> None:
    inp = MotionInput.model_validate(ctx.input)
    path = await resolve_image(ctx, inp.src, ctx.workdir / "source")
    seen = await blocking(ctx, vision.analyze, path, max_pixels=ctx.services.settings.max_image_pixels)
    motion = seen.motion if inp.motion == "auto" else inp.motion
    ctx.artefacts |= {"source": path, "focal": (seen.focal_x, seen.focal_y), "motion": motion}
    ctx.artefacts["_event_data"] = {"motion": motion, "prompt": inp.prompt or seen.prompt,
                                    "width": seen.width, "height": seen.height}


def _motion_stage(name: str, *, reverse: bool = False, part: float = 1.0, lo: float = 0.0, hi: float = 1.0) -> StageFn:
    async def run(ctx: StageContext) -> None:
        inp = MotionInput.model_validate(ctx.input)
        result = await blocking(
            ctx, renderer.render_motion, ctx.artefacts["source"], _clip(ctx, name),
            motion=ctx.artefacts["motion"], duration=inp.dur * part, aspect=inp.aspect, height=inp.height,
            focal=ctx.artefacts["focal"], seed=inp.seed, reverse=reverse,
            progress=ctx.progress_cb(lo, hi), should_stop=ctx.should_stop,
        )
        ctx.artefacts[name] = result
        ctx.artefacts["_event_data"] = {"frames": result.frames, "duration": result.duration}

    return run


async def motion_merge(ctx: StageContext) -> None:
    result = await blocking(ctx, renderer.merge_loop, _clip(ctx, "stage1"), _clip(ctx, "stage2"), _clip(ctx, "merge"),
                            progress=ctx.progress_cb(0.8, 0.95), should_stop=ctx.should_stop)
    ctx.artefacts["merge"] = result
    ctx.artefacts["_event_data"] = {"frames": result.frames, "duration": result.duration}


async def motion_store(ctx: StageContext) -> None:
    last = ctx.artefacts.get("merge") or ctx.artefacts["single"]
    await store_file(ctx, last.path, "mp4", "video/mp4", width=last.width, height=last.height,
                     duration=last.duration, fps=last.fps, motion=ctx.artefacts["motion"])


def motion_plan(mode: str | None, input: dict[str, Any]) -> list[Stage]:
    head = [Stage("vision", motion_vision, kind="vision")]
    store = Stage("store", motion_store, kind="storage")
    if mode == "loop":
        return [*head, Stage("stage1", _motion_stage("stage1", part=0.5, hi=0.4)),
                Stage("stage2", _motion_stage("stage2", reverse=True, part=0.5, lo=0.4, hi=0.8)),
                Stage("merge", motion_merge), store]
    return [*head, Stage("single", _motion_stage("single", hi=0.95)), store]


# -- video -----------------------------------------------------------------------------------

async def video_script(ctx: StageContext) -> None:
    inp = VideoInput.model_validate(ctx.input)
    if inp.script:
        paragraphs = [p for p in (" ".join(x.split()) for x in inp.script) if p]
        source = "given"
    elif ctx.services.chat is not None:
        paragraphs, source = await write_script(ctx.services.chat, inp.subject, inp.paragraphs), "chat"
    else:
        paragraphs, source = text.template_script(inp.subject, inp.paragraphs, inp.seed), "template"
    if not paragraphs:
        raise InvalidInput("the script is empty", code="invalid_input")
    ctx.artefacts["paragraphs"] = paragraphs
    ctx.result |= {"script": paragraphs, "script_source": source}  # "template": written locally, not by a model
    ctx.artefacts["_event_data"] = {"paragraphs": len(paragraphs), "source": source}
    ctx.progress(0.1)


async def video_clips(ctx: StageContext) -> None:
    """Narration and timing: each scene lasts as long as its share of the voice-over."""
    inp = VideoInput.model_validate(ctx.input)
    paragraphs: list[str] = ctx.artefacts["paragraphs"]
    audio, seconds = None, inp.seconds_per_scene or 3.0
    if inp.voice:
        audio = ctx.workdir / "narration.wav"
        length = await blocking(ctx, voice.synthesize, " ".join(paragraphs), audio)
        if inp.seconds_per_scene is None:
            seconds = min(20.0, max(2.0, length / len(paragraphs)))
    total = seconds * len(paragraphs)
    if total > ctx.services.settings.max_video_seconds:
        raise InvalidInput(f"the video would last {total:.0f} s, over the limit of "
                           f"{ctx.services.settings.max_video_seconds:.0f} s", code="too_long")
    ctx.artefacts |= {"audio": audio, "seconds_per_scene": seconds}
    ctx.artefacts["_event_data"] = {"scenes": len(paragraphs), "seconds_per_scene": round(seconds, 2)}
    ctx.progress(0.2)


async def video_render(ctx: StageContext) -> None:
    inp = VideoInput.model_validate(ctx.input)
    result = await blocking(
        ctx, renderer.render_video, ctx.artefacts["paragraphs"], _clip(ctx, "video"), subject=inp.subject,
        aspect=inp.aspect, height=inp.height, seconds_per_scene=ctx.artefacts["seconds_per_scene"],
        audio=ctx.artefacts["audio"], seed=inp.seed, progress=ctx.progress_cb(0.2, 0.95),
        should_stop=ctx.should_stop,
    )
    ctx.artefacts["video"] = result
    ctx.artefacts["_event_data"] = {"frames": result.frames, "duration": result.duration}


async def video_store(ctx: StageContext) -> None:
    r = ctx.artefacts["video"]
    await store_file(ctx, r.path, "mp4", "video/mp4", width=r.width, height=r.height, duration=r.duration,
                     fps=r.fps, script=ctx.artefacts["paragraphs"], script_source=ctx.result["script_source"])


def video_plan(mode: str | None, input: dict[str, Any]) -> list[Stage]:
    return [Stage("script", video_script), Stage("clips", video_clips), Stage("render", video_render),
            Stage("store", video_store, kind="storage")]


# -- copy and scrape (synchronous) -----------------------------------------------------------

async def copy_write(ctx: StageContext) -> None:
    inp = CopyInput.model_validate(ctx.input)
    if ctx.services.chat is not None:
        ctx.result = await ad_copy(ctx.services.chat, inp.model_dump())
    else:
        ctx.result = ads.template_copy(inp.name, inp.description, inp.audience, seed=len(ctx.job.id))


class _PageParser(html.parser.HTMLParser):
    """Title, description, image and visible text of a page; scripts and styles are skipped."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title, self.meta, self.text = "", dict[str, str](), list[str]()
        self._skip = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag in ("script", "style", "noscript", "template"):
            self._skip += 1
        elif tag == "title":
            self._in_title = True
        elif tag == "meta" and a.get("content"):
            key = (a.get("property") or a.get("name") or "").lower()
            if key:
                self.meta.setdefault(key, a["content"])

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "noscript", "template"):
            self._skip = max(0, self._skip - 1)
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif not self._skip and data.strip():
            self.text.append(" ".join(data.split()))


def parse_page(body: str, limit: int = 2000) -> dict[str, str]:
    p = _PageParser()
    p.feed(body)
    p.close()
    return {
        "title": " ".join((p.meta.get("og:title") or p.title).split())[:300],
        "description": (p.meta.get("description") or p.meta.get("og:description") or "")[:1000],
        "image": p.meta.get("og:image", "")[:2048],
        "text": " ".join(p.text)[:limit],
    }


async def scrape_fetch(ctx: StageContext) -> None:
    inp = ScrapeInput.model_validate(ctx.input)
    body = await ctx.services.fetcher.fetch_text(inp.url, max_bytes=2 * 1024 * 1024,
                                                 allowed_types=("text/html", "application/xhtml+xml"))
    ctx.result = {"url": inp.url, **parse_page(body)}


# -- static ads and voice-overs (asynchronous, via a provider) -------------------------------

async def static_ad_submit(ctx: StageContext) -> None:
    inp = StaticAdInput.model_validate(ctx.input)
    s = ctx.services.settings
    provider = s.static_ad_provider
    if provider == "replicate":
        prompt = f"A {inp.style or 'clean'} product ad for {inp.name}. {inp.description} {inp.headline}".strip()
        await ctx.submit("replicate", s.static_ad_model, {"prompt": prompt, "aspect_ratio": inp.aspect}, webhook=True)
    else:
        payload: dict[str, Any] = inp.model_dump(exclude={"image_url", "style"})
        if inp.image_url:  # fetched now, with the job's rules; the provider reads it from its own folder
            dest = Path(s.data_dir) / "predictions" / "inputs" / f"{ctx.job.id}-{ctx.job.attempt}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            payload["image_path"] = str(await resolve_image(ctx, inp.image_url, dest))
        await ctx.submit("local", "static_ad", payload)
    await ctx.park(s.callback_deadline_seconds)


async def tts_submit(ctx: StageContext) -> None:
    inp = TtsInput.model_validate(ctx.input)
    s = ctx.services.settings
    if s.tts_provider == "replicate":
        await ctx.submit("replicate", s.tts_model, {"text": inp.text, "voice": inp.voice}, webhook=True)
    else:
        await ctx.submit("local", "tts", {"text": inp.text})
    await ctx.park(s.callback_deadline_seconds)


# -- the registry ----------------------------------------------------------------------------

def register(reg: Registry) -> None:
    reg.job_type("motion", modes=("single", "loop"), price=10, input_model=MotionInput)(motion_plan)
    reg.job_type("video", price=20, input_model=VideoInput)(video_plan)
    reg.job_type("copy", run="sync", price=1, input_model=CopyInput)(
        lambda mode, input: [Stage("write", copy_write)])
    reg.job_type("scrape", run="sync", price=1, input_model=ScrapeInput)(
        lambda mode, input: [Stage("fetch", scrape_fetch)])
    reg.job_type("static_ad", run="async", price=5, input_model=StaticAdInput)(
        lambda mode, input: [Stage("submit", static_ad_submit)])
    reg.job_type("tts", run="async", price=2, input_model=TtsInput)(
        lambda mode, input: [Stage("submit", tts_submit)])


def builtin_registry(prices: dict[str, int] | None = None, *, entry_points: bool = True) -> Registry:
    """The built-in types plus any installed through the ``genloom.job_types`` entry point."""
    reg = Registry(prices)
    register(reg)
    if entry_points:
        reg.load_entry_points()
    return reg
