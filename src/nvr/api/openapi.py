"""The OpenAPI 3.1 document of the API, served at /api/v1/openapi.json.

Kept next to the routes by a test: every route the app serves must be described here.
"""

from __future__ import annotations

from typing import Any

from nvr import __version__

_TIME = {
    "type": "string",
    "format": "date-time",
    "description": "RFC 3339 with an explicit offset, e.g. 2026-11-28T21:00:00+07:00",
}
_ERROR = {
    "description": "Bad input, named in the message",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_CAMERA_ID = {"name": "id", "in": "path", "required": True,
              "schema": {"type": "string", "pattern": "^[a-z0-9-]+$"}}  # fmt: skip


def _json(schema_ref: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {"$ref": schema_ref}}}}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "nvr", "version": __version__},
        "paths": {
            "/healthz": {"get": {"summary": "Liveness", "responses": {
                "200": {"description": "Up", **_json("#/components/schemas/Health")}}}},
            "/api/v1/openapi.json": {"get": {"summary": "This document", "responses": {
                "200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}}}},
            "/api/v1/cameras": {"get": {"summary": "Every camera and its state", "responses": {
                "200": {"description": "Cameras", **_json("#/components/schemas/CameraList")}}}},
            "/api/v1/cameras/{id}": {"get": {
                "summary": "One camera", "parameters": [_CAMERA_ID], "responses": {
                    "200": {"description": "Camera", **_json("#/components/schemas/Camera")},
                    "404": _ERROR}}},
            "/api/v1/cameras/{id}/recordings": {"get": {
                "summary": "Runs, segments and gaps (with reasons) overlapping [start, end)",
                "parameters": [
                    _CAMERA_ID,
                    {"name": "start", "in": "query", "required": True, "schema": _TIME},
                    {"name": "end", "in": "query", "required": True, "schema": _TIME},
                ],
                "responses": {
                    "200": {"description": "Recordings",
                            **_json("#/components/schemas/Recordings")},
                    "400": _ERROR, "404": _ERROR}}},
            "/api/v1/cameras/{id}/snapshot.jpg": {"get": {
                "summary": "The keyframe at or before `at` (default: the latest), as JPEG",
                "parameters": [
                    _CAMERA_ID,
                    {"name": "at", "in": "query", "required": False, "schema": _TIME},
                ],
                "responses": {
                    "200": {"description": "JPEG", "content": {"image/jpeg": {}}},
                    "400": _ERROR, "404": _ERROR}}},
        },
        "components": {"schemas": _schemas()},
    }  # fmt: skip


def _nullable(kind: str) -> dict[str, Any]:
    return {"type": [kind, "null"]}


def _schemas() -> dict[str, Any]:
    camera_props = {
        "id": {"type": "string"}, "state": {"type": "string", "enum": [
            "connecting", "streaming", "backoff", "disabled", "stopped"]},
        "failures": {"type": "integer"}, "last_error": _nullable("string"),
        "last_error_kind": _nullable("string"), "last_frame_wall_ns": _nullable("integer"),
        "runs": {"type": "integer"}, "frames": {"type": "integer"},
        "segments_closed": {"type": "integer"}, "current_run_id": _nullable("integer"),
        "codec": _nullable("string"), "width": _nullable("integer"),
        "height": _nullable("integer"), "fps": _nullable("number"),
        "bitrate_kbps": _nullable("integer"),
    }  # fmt: skip
    run_props = {
        "id": {"type": "integer"}, "start": _TIME, "end": {**_TIME, "type": ["string", "null"]},
        "end_reason": _nullable("string"), "end_detail": _nullable("string"),
        "camera_clock_offset_ms": _nullable("integer"), "video_codec": {"type": "string"},
        "width": _nullable("integer"), "height": _nullable("integer"),
        "audio_codec": _nullable("string"),
    }  # fmt: skip
    segment_props = {
        "id": {"type": "integer"}, "run_id": {"type": "integer"}, "state": {"type": "string"},
        "start": _TIME, "end": {**_TIME, "type": ["string", "null"]},
        "bytes": _nullable("integer"), "frames": _nullable("integer"),
        "sha256": _nullable("string"),
    }  # fmt: skip
    gap_props = {"start": _TIME, "end": _TIME, "reason": {"type": "string"},
                 "detail": _nullable("string")}  # fmt: skip

    def obj(props: dict[str, Any]) -> dict[str, Any]:
        return {"type": "object", "properties": props, "required": list(props),
                "additionalProperties": False}  # fmt: skip

    return {
        "Health": obj({"status": {"type": "string"}}),
        "Camera": obj(camera_props),
        "CameraList": obj({"cameras": {"type": "array",
                                       "items": {"$ref": "#/components/schemas/Camera"}}}),
        "Run": obj(run_props),
        "Segment": obj(segment_props),
        "Gap": obj(gap_props),
        "Recordings": obj({
            "camera": {"type": "string"}, "start": _TIME, "end": _TIME,
            "runs": {"type": "array", "items": {"$ref": "#/components/schemas/Run"}},
            "segments": {"type": "array", "items": {"$ref": "#/components/schemas/Segment"}},
            "gaps": {"type": "array", "items": {"$ref": "#/components/schemas/Gap"}},
        }),
        "Error": obj({"error": obj({"code": {"type": "string"},
                                    "message": {"type": "string"}})}),
    }  # fmt: skip
