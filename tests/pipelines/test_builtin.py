"""The built-in types' contracts: registration, input validation with clear codes, plans, page parsing."""

from __future__ import annotations

import pytest

from genloom.errors import InvalidInput
from genloom.pipelines.builtin import builtin_registry, parse_page
from genloom.pipelines.registry import Registry, Stage


@pytest.fixture
def registry() -> Registry:
    return builtin_registry(entry_points=False)


def test_every_product_type_is_registered(registry: Registry) -> None:
    assert registry.names() == ["copy", "motion", "scrape", "static_ad", "tts", "video"]
    assert [registry.is_sync(t) for t in ("copy", "scrape", "motion")] == [True, True, False]
    assert registry.get("static_ad").run == "async"


def test_prices_come_from_configuration(registry: Registry) -> None:
    assert registry.cost("motion", "loop") == 10
    assert builtin_registry({"motion": 3}, entry_points=False).cost("motion", "single") == 3


def test_motion_plans(registry: Registry) -> None:
    single = registry.get("motion").plan("single", {})
    loop = registry.get("motion").plan("loop", {})
    assert [(s.name, s.kind) for s in single] == [("vision", "vision"), ("single", "stage"), ("store", "storage")]
    assert [s.name for s in loop] == ["vision", "stage1", "stage2", "merge", "store"]
    assert [s.name for s in registry.get("video").plan(None, {})] == ["script", "clips", "render", "store"]


@pytest.mark.parametrize(
    ("type_", "mode", "input", "code", "where"),
    [
        ("motion", "single", {}, "invalid_input", "input.src"),
        ("motion", "bounce", {"src": "sample"}, "invalid_mode", "mode"),
        ("motion", "single", {"src": "sample", "dur": 99}, "invalid_input", "input.dur"),
        ("motion", "single", {"src": "sample", "aspect": "3:2"}, "invalid_input", "input.aspect"),
        ("motion", "single", {"src": "sample", "surprise": 1}, "invalid_input", "input.surprise"),
        ("video", None, {"subject": "x", "paragraphs": 50}, "invalid_input", "input.paragraphs"),
        ("scrape", None, {"url": "ftp://example.com"}, "invalid_input", "input.url"),
        ("tts", None, {"text": ""}, "invalid_input", "input.text"),
        ("nope", None, {}, "unknown_type", "nope"),
    ],
)
def test_bad_input_is_refused_with_a_code_and_the_field(
    registry: Registry, type_: str, mode: str | None, input: dict[str, object], code: str, where: str
) -> None:
    with pytest.raises(InvalidInput) as info:
        registry.validate(type_, mode, input)
    assert info.value.code == code
    assert where in str(info.value)


def test_a_third_party_type_registers_with_the_decorator() -> None:
    reg = Registry()

    async def thumb(ctx: object) -> None:
        return None

    @reg.job_type("thumbnail", price=2)
    def plan(mode: str | None, input: dict[str, object]) -> list[Stage]:
        return [Stage("render", thumb)]  # type: ignore[arg-type]

    assert reg.cost("thumbnail", None) == 2 and reg.get("thumbnail").plan(None, {})[0].name == "render"
    with pytest.raises(ValueError, match="already registered"):
        reg.job_type("thumbnail")(plan)


def test_parse_page_reads_title_meta_and_visible_text() -> None:
    page = """<html><head><title> Aurora  Lamp </title>
      <meta name="description" content="Wake gently.">
      <meta property="og:image" content="https://cdn.example.com/a.jpg">
      <script>var secret = "not text";</script><style>p{}</style></head>
      <body><h1>Aurora</h1><p>A lamp &amp; an alarm.</p></body></html>"""
    got = parse_page(page)
    assert got == {"title": "Aurora Lamp", "description": "Wake gently.",
                   "image": "https://cdn.example.com/a.jpg", "text": "Aurora A lamp & an alarm."}
