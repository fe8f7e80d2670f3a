"""Schema check of manifests against the official OpenAPI schemas of every supported Kubernetes
version (the JSON schemas ``kubernetes-validate`` ships, checked the way it checks them, with the
validators cached), strict: unknown fields are errors too."""

from __future__ import annotations

import functools
import re
from typing import Any

from leanstack.errors import LeanstackError

MIN_VERSION = "1.30"
"""The oldest Kubernetes minor version the manifests and the backend support."""


def supported_versions() -> list[str]:
    """``["1.30", ..., newest]``: every minor version ``kubernetes-validate`` has schemas for,
    from :data:`MIN_VERSION` on."""
    from kubernetes_validate.utils import all_versions

    out = []
    for v in all_versions():
        minor = ".".join(v.split(".")[:2])
        if _minor_key(minor) >= _minor_key(MIN_VERSION) and minor not in out:
            out.append(minor)
    return out


def validate_object(obj: dict[str, Any], version: str) -> str | None:
    """``None`` when ``obj`` is valid in Kubernetes ``version``, else why not (one line)."""
    import jsonschema

    api_version, kind = obj.get("apiVersion", ""), obj.get("kind", "")
    validator = _validator(version, kind.lower(), re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-",
                                                          api_version))
    if validator is None:
        return f"no schema for {kind} {api_version} in Kubernetes {version}"
    try:
        validator.validate(obj)
    except jsonschema.ValidationError as e:
        return f"{'.'.join(str(p) for p in e.path)}: {e.message}"
    return None


@functools.lru_cache(maxsize=256)
def _validator(version: str, kind: str, api_version: str) -> Any:
    """The strict JSON-schema validator of one kind in one version (loading one costs ~40 ms;
    cached, a manifest checks in well under a millisecond)."""
    import jsonschema
    from kubernetes_validate.utils import schema_contents
    from referencing import Registry, Resource

    schema_dir = f"kubernetes-json-schema/v{version}.0-local-strict"
    try:
        schema = schema_contents(f"{schema_dir}/{kind}-{api_version}.json", version)
    except FileNotFoundError:
        return None
    definitions = schema_contents(f"{schema_dir}/_definitions.json", version)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


def validation_matrix(objects: list[dict[str, Any]],
                      versions: list[str] | None = None) -> dict[str, dict[str, str | None]]:
    """``{version: {"kind/name": None or the error}}`` for every object and version."""
    versions = versions or supported_versions()
    return {v: {_ref(o): validate_object(o, v) for o in objects} for v in versions}


def check_manifests(objects: list[dict[str, Any]], versions: list[str] | None = None) -> None:
    """Raise one LeanstackError listing the first failure when any object is invalid."""
    for version, results in validation_matrix(objects, versions).items():
        for ref, error in results.items():
            if error is not None:
                raise LeanstackError(f"{ref} is not valid in Kubernetes {version}: {error}")


def _ref(obj: dict[str, Any]) -> str:
    return f"{obj.get('kind', '?')}/{obj.get('metadata', {}).get('name', '?')}"


def _minor_key(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)
