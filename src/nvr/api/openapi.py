"""The OpenAPI 3.1 document of the API, served at /api/v1/openapi.json.

Kept next to the routes by a test: every route the app serves must be described here. The
bearer-token requirement of each operation (and its 401/403 answers) is filled in from
``auth.ROUTE_ROLES``, so the document cannot disagree with the policy.
"""

from __future__ import annotations

from typing import Any

from nvr import __version__
from nvr.api.auth import TOKEN_NAME, Role, required_role

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
_TOKEN_NAME = {"name": "id", "in": "path", "required": True, "description": "The token's name",
               "schema": {"type": "string", "pattern": f"^{TOKEN_NAME.pattern}$"}}  # fmt: skip
_EXPORT_ID = {"name": "id", "in": "path", "required": True,
              "schema": {"type": "string", "pattern": "^[0-9a-f]{16}$"}}  # fmt: skip
_HOLD_ID = {"name": "id", "in": "path", "required": True,
            "schema": {"type": "string", "pattern": "^[0-9a-f]{16}$"}}  # fmt: skip
_CLIP_HEADERS = {
    "Content-Disposition": {"schema": {"type": "string"}},
    "ETag": {"schema": {"type": "string"}},
    "X-Nvr-Delivered": {"description": "start/end actually shown", "schema": {"type": "string"}},
    "X-Nvr-Gaps": {"description": "start/end;reason=R for each gap skipped, comma-separated",
                   "schema": {"type": "string"}},
}  # fmt: skip
_UNAUTHORIZED = {
    "description": "No bearer token, a malformed one, or one unknown or revoked",
    "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_FORBIDDEN = {
    "description": "The token's role is below the one this operation needs (x-nvr-role)",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}


def _json(schema_ref: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {"$ref": schema_ref}}}}


def document() -> dict[str, Any]:
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "nvr", "version": __version__},
        "paths": {
            "/healthz": {"get": {
                "summary": "Health: the index takes writes and the storage is this index's",
                "description": (
                    "200 while the event loop runs, the index commits a write and the storage "
                    "directory carries the index's identity; otherwise 503 naming each problem. "
                    "Both list the enabled cameras that are not streaming, and storage facts. "
                    "Each probe waits at most 2 s."),
                "responses": {
                    "200": {"description": "Healthy", **_json("#/components/schemas/Health")},
                    "503": {"description": "Failing; `problems` says why",
                            **_json("#/components/schemas/Health")}}}},
            "/metrics": {"get": {
                "summary": "Prometheus metrics (text format)",
                "description": (
                    "Metric names, labels and units are in docs/operations.md. Prometheus sends "
                    "the token with its `authorization` (`credentials_file`) or "
                    "`bearer_token_file` scrape setting."),
                "responses": {"200": {"description": "Prometheus text exposition format",
                                      "content": {"text/plain": {
                                          "schema": {"type": "string"}}}}}}},
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
            "/api/v1/cameras/{id}/video.mp4": {"get": {
                "summary": "[start, end) as one MP4 (gaps skipped); honours Range",
                "description": (
                    "Starts at the keyframe at or before `start`; an edit list starts the "
                    "picture at the frame on screen at `start`. No transcoding: every video "
                    "sample is the recorded one. X-Nvr-Gaps lists skipped gaps with reasons; "
                    "the file's comment tag holds the same facts as JSON."),
                "parameters": [
                    _CAMERA_ID,
                    {"name": "start", "in": "query", "required": True, "schema": _TIME},
                    {"name": "end", "in": "query", "required": True, "schema": _TIME},
                    {"name": "Range", "in": "header", "required": False,
                     "schema": {"type": "string", "examples": ["bytes=0-1023", "bytes=-500"]}},
                ],
                "responses": {
                    "200": {"description": "The whole clip", "headers": _CLIP_HEADERS,
                            "content": {"video/mp4": {}}},
                    "206": {"description": "A byte range of the clip", "headers": _CLIP_HEADERS,
                            "content": {"video/mp4": {}}},
                    "400": _ERROR, "404": _ERROR, "409": _ERROR,
                    "416": {"description": "No byte of the asked range exists"}}}},
            "/api/v1/exports": {
                "get": {"summary": "Export jobs, newest first", "responses": {
                    "200": {"description": "Exports",
                            **_json("#/components/schemas/ExportList")}}},
                "post": {
                    "summary": "Start an export job: the clip and its JSON manifest",
                    "requestBody": {"required": True,
                                    **_json("#/components/schemas/ExportRequest")},
                    "responses": {
                        "202": {"description": "Queued", **_json("#/components/schemas/Export")},
                        "400": _ERROR, "404": _ERROR}}},
            "/api/v1/exports/{id}": {"get": {
                "summary": "An export's state, progress, size and SHA-256",
                "parameters": [_EXPORT_ID], "responses": {
                    "200": {"description": "Export", **_json("#/components/schemas/Export")},
                    "404": _ERROR}}},
            "/api/v1/exports/{id}/file": {"get": {
                "summary": "The exported MP4 (Range honoured); Repr-Digest carries its SHA-256",
                "parameters": [_EXPORT_ID], "responses": {
                    "200": {"description": "The clip", "content": {"video/mp4": {}}},
                    "206": {"description": "A byte range", "content": {"video/mp4": {}}},
                    "404": _ERROR, "409": _ERROR,
                    "416": {"description": "No byte of the asked range exists"}}}},
            "/api/v1/exports/{id}/manifest": {"get": {
                "summary": "The export's manifest (identity, ranges, gaps, sources, clocks)",
                "parameters": [_EXPORT_ID], "responses": {
                    "200": {"description": "Manifest", "content": {"application/json": {}}},
                    "404": _ERROR, "409": _ERROR}}},
            "/api/v1/holds": {
                "get": {
                    "summary": "Evidence holds, newest first",
                    "parameters": [{"name": "active", "in": "query", "required": False,
                                    "description": "true: only holds in force",
                                    "schema": {"type": "boolean", "default": False}}],
                    "responses": {
                        "200": {"description": "Holds", **_json("#/components/schemas/HoldList")},
                        "400": _ERROR}},
                "post": {
                    "summary": "Keep the recording of cameras over [start, end) from retention",
                    "requestBody": {"required": True,
                                    **_json("#/components/schemas/HoldRequest")},
                    "responses": {
                        "201": {"description": "Placed", "headers": {
                                    "Location": {"schema": {"type": "string"}}},
                                **_json("#/components/schemas/Hold")},
                        "400": _ERROR, "404": _ERROR}}},
            "/api/v1/holds/{id}": {
                "get": {"summary": "One hold", "parameters": [_HOLD_ID], "responses": {
                    "200": {"description": "Hold", **_json("#/components/schemas/Hold")},
                    "404": _ERROR}},
                "delete": {
                    "summary": "Release a hold: its recording is subject to retention again",
                    "parameters": [_HOLD_ID], "responses": {
                        "200": {"description": "The released hold",
                                **_json("#/components/schemas/Hold")},
                        "404": _ERROR, "409": _ERROR}}},
            "/api/v1/config": {"get": {
                "summary": "The running configuration, without secrets (URLs redacted)",
                "responses": {"200": {"description": "Configuration",
                                      "content": {"application/json": {
                                          "schema": {"type": "object"}}}}}}},
            "/api/v1/tokens": {
                "get": {"summary": "Every API token (never the token itself)", "responses": {
                    "200": {"description": "Tokens", **_json("#/components/schemas/TokenList")}}},
                "post": {
                    "summary": "Make a token; the response is the only time it is shown",
                    "requestBody": {"required": True,
                                    **_json("#/components/schemas/TokenRequest")},
                    "responses": {
                        "201": {"description": "The new token",
                                **_json("#/components/schemas/NewToken")},
                        "400": _ERROR, "409": _ERROR}}},
            "/api/v1/tokens/{id}": {"delete": {
                "summary": "Revoke a token", "parameters": [_TOKEN_NAME], "responses": {
                    "204": {"description": "Revoked"}, "404": _ERROR}}},
        },
        "components": {"schemas": _schemas()},
    }  # fmt: skip
    return _with_auth(doc)


def _with_auth(doc: dict[str, Any]) -> dict[str, Any]:
    """Mark each operation open (``security: []``) or needing a token of a role."""
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            role = required_role(method.upper(), path)
            if role is None:
                op["security"] = []
                continue
            op["x-nvr-role"] = role.value
            op["responses"].setdefault("401", _UNAUTHORIZED)
            op["responses"].setdefault("403", _FORBIDDEN)
    doc["security"] = [{"bearerAuth": []}]
    doc["components"]["securitySchemes"] = {"bearerAuth": {
        "type": "http", "scheme": "bearer",
        "description": "An nvr API token (`nvr token add`); roles: viewer < operator < admin",
    }}  # fmt: skip
    return doc


def _nullable(kind: str) -> dict[str, Any]:
    return {"type": [kind, "null"]}


def _schemas() -> dict[str, Any]:
    camera_props = {
        "id": {"type": "string"}, "state": {"type": "string", "enum": [
            "connecting", "streaming", "backoff", "disabled", "stopped", "storage_full"]},
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
    token_props = {
        "name": {"type": "string"}, "role": {"type": "string", "enum": [r.value for r in Role]},
        "created": _TIME, "last_used": {**_TIME, "type": ["string", "null"]},
        "revoked": {**_TIME, "type": ["string", "null"]},
    }  # fmt: skip
    gap_props = {"start": _TIME, "end": _TIME, "reason": {"type": "string"},
                 "detail": _nullable("string")}  # fmt: skip

    def obj(props: dict[str, Any]) -> dict[str, Any]:
        return {"type": "object", "properties": props, "required": list(props),
                "additionalProperties": False}  # fmt: skip

    return {
        "Health": obj({
            "status": {"type": "string", "enum": ["ok", "failing"]},
            "problems": {"type": "array", "items": {"type": "string"}},
            "degraded_cameras": {"type": "array", "items": obj({
                "id": {"type": "string"}, "state": camera_props["state"],
                "last_error_kind": _nullable("string")})},
            "storage": obj({"free_bytes": _nullable("integer"),
                            "recording_allowed": _nullable("boolean")}),
        }),
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
        "Token": obj(token_props),
        "TokenList": obj({"tokens": {"type": "array",
                                     "items": {"$ref": "#/components/schemas/Token"}}}),
        "NewToken": obj({"token": {"type": "string", "pattern": "^nvr_"}, **token_props}),
        "TokenRequest": obj({
            "name": {"type": "string", "pattern": f"^{TOKEN_NAME.pattern}$"},
            "role": {"type": "string", "enum": [r.value for r in Role]},
        }),
        "ExportRequest": {**obj({
            "camera": {"type": "string", "pattern": "^[a-z0-9-]+$", "maxLength": 64},
            "start": _TIME, "end": _TIME,
            "reason": {"type": "string", "minLength": 1, "maxLength": 500},
            "requested_by": {"type": "string", "minLength": 1, "maxLength": 500},
            "hold": {"type": "boolean", "default": True,
                     "description": "Keep the source recording from retention"},
        }), "required": ["camera", "start", "end", "reason", "requested_by"]},
        "Export": obj({
            "id": {"type": "string"}, "camera": {"type": "string"}, "start": _TIME, "end": _TIME,
            "reason": {"type": "string"}, "requested_by": {"type": "string"},
            "token_name": _nullable("string"), "hold": {"type": "boolean"},
            "state": {"type": "string", "enum": ["queued", "running", "done", "failed"]},
            "progress": {"type": "number", "minimum": 0, "maximum": 1},
            "size_bytes": _nullable("integer"), "sha256": _nullable("string"),
            "error": _nullable("string"), "created": _TIME,
            "started": {**_TIME, "type": ["string", "null"]},
            "finished": {**_TIME, "type": ["string", "null"]},
            "file": _nullable("string"), "manifest": _nullable("string"),
        }),
        "ExportList": obj({"exports": {"type": "array",
                                       "items": {"$ref": "#/components/schemas/Export"}}}),
        "HoldRequest": {**obj({
            "cameras": {"type": "array", "minItems": 1, "maxItems": 64, "items": {
                "type": "string", "pattern": "^[a-z0-9-]+$", "maxLength": 64}},
            "start": _TIME, "end": _TIME,
            "case": {"type": "string", "minLength": 1, "maxLength": 500},
            "reason": {"type": "string", "minLength": 1, "maxLength": 500},
            "until": {**_TIME, "description": "When the hold lapses by itself (default: never)"},
        }), "required": ["cameras", "start", "end", "case", "reason"]},
        "Hold": obj({
            "id": {"type": "string"}, "cameras": {"type": "array", "items": {"type": "string"}},
            "start": _TIME, "end": _TIME, "until": {**_TIME, "type": ["string", "null"]},
            "case": {"type": "string"}, "reason": {"type": "string"}, "created": _TIME,
            "created_by": {"type": "string"}, "released": {**_TIME, "type": ["string", "null"]},
            "released_by": _nullable("string"), "export_id": _nullable("string"),
            "active": {"type": "boolean"},
        }),
        "HoldList": obj({"holds": {"type": "array",
                                   "items": {"$ref": "#/components/schemas/Hold"}}}),
        "Error": obj({"error": obj({"code": {"type": "string"},
                                    "message": {"type": "string"}})}),
    }  # fmt: skip
