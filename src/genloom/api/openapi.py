"""The OpenAPI document, completed with what only the running server knows: its job types (the
registry, entry points included). ``JobCreate`` becomes a union discriminated by ``type``, each
member with that type's modes and input schema, so clients and generated tests see the request
as the server really checks it."""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI

from genloom.pipelines.registry import Registry

_REF = "#/components/schemas/{model}"


def _camel(name: str) -> str:
    return "".join(part.title() for part in name.split("_"))


def describe_job_types(doc: dict[str, Any], registry: Registry) -> None:
    schemas: dict[str, Any] = doc.setdefault("components", {}).setdefault("schemas", {})
    generic = schemas.get("JobCreate")
    if generic is None or not registry.names():
        return
    variants: dict[str, str] = {}
    for name in registry.names():
        jt = registry.get(name)
        member = copy.deepcopy(generic)
        props = member["properties"]
        props["type"] = {"type": "string", "enum": [name], "title": "Type"}
        if jt.modes:
            props["mode"] = {"anyOf": [{"type": "string", "enum": list(jt.modes)}, {"type": "null"}],
                             "title": "Mode", "description": f"Default: {jt.modes[0]}"}
        if jt.input_model is not None:
            schema = jt.input_model.model_json_schema(ref_template=_REF)
            schemas.update(schema.pop("$defs", {}))
            schemas[f"{_camel(name)}Input"] = schema
            props["input"] = {"$ref": _REF.format(model=f"{_camel(name)}Input")}
        member["title"] = f"JobCreate{_camel(name)}"
        member["description"] = f"A new {name} job."
        schemas[member["title"]] = member
        variants[name] = _REF.format(model=member["title"])
    schemas["JobCreate"] = {
        "title": "JobCreate", "description": generic.get("description", ""),
        "oneOf": [{"$ref": ref} for ref in variants.values()],
        "discriminator": {"propertyName": "type", "mapping": variants},
    }


class GenloomAPI(FastAPI):
    """FastAPI whose document lists the registry's job types."""

    registry: Registry | None = None

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            doc = super().openapi()
            if self.registry is not None:
                describe_job_types(doc, self.registry)
        return self.openapi_schema or {}
