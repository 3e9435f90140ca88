"""The OpenAPI 3.1 document of the portal's HTTP API (served at /api/openapi.json)."""

from __future__ import annotations

from typing import Any

_STR_LIST = {"type": "array", "items": {"type": "string"}}
_ERROR = {"$ref": "#/components/schemas/Error"}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "X-Forwarded-User sent more than once (AmbiguousIdentity)",
        401: "Not signed in",
        403: "Not allowed: an identified export for a researcher the project's data "
        "managers did not allow; X-Forwarded-User from an address that is not a trusted "
        "proxy; a browser request from another origin; in development, a request that is "
        "not from loopback with a loopback Host",
        404: "Not found or not yours to see",
        409: "Wrong state",
        410: "File gone",
        415: "A body that is not application/json on a POST or DELETE",
        413: "Over a limit: the export over MAX_EXPORT_SIZE or the quota "
        "(LimitExceeded), or the body over MAX_REQUEST_BODY (RequestTooLarge)",
        422: "Body or parameters do not fit (InvalidRequest; 'fields' names each): not "
        "JSON, nested deeper than MAX_NESTING, text that cannot be stored (a lone "
        "surrogate, a control character), a list over MAX_LIST_ITEMS, notes over "
        "MAX_NOTES_LENGTH, a name over MAX_NAME_LENGTH, an unknown folder or patient",
        507: "Not enough free space at the export root for this export (NotEnoughSpace): "
        "the server lacks room; choose less, or ask an administrator",
    }
    return {
        str(code): {
            "description": text[code],
            "content": {"application/json": {"schema": _ERROR}},
        }
        for code in codes
    }


_PREVIEW = {
    "type": "object",
    "required": ["rows", "series_total", "series_shown", "other_files"],
    "properties": {
        "series_total": {"type": "integer"},
        "series_shown": {"type": "integer"},
        "other_files": {"type": "integer", "description": "non-DICOM files to be scrubbed"},
        "rows": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "patient": {"type": "string"},
                    "series": {"type": "string"},
                    "file": {"type": "string"},
                    "tag": {"type": "string"},
                    "keyword": {"type": "string"},
                    "old_value": {"type": ["string", "null"]},
                    "new_value": {"type": ["string", "null"]},
                    "reason": {"type": "string", "enum": ["curated", "pseudonym", "deidentified"]},
                    "action": {"type": "string"},
                },
            },
        },
    },
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_PROJECT = {"name": "project", "in": "path", "required": True, "schema": {"type": "string"}}
_EXPORT_ID = {"name": "export_id", "in": "path", "required": True, "schema": {"type": "string"}}
_EXPORT = {"$ref": "#/components/schemas/Export"}
_PART = {
    "name": "part",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1},
}
_DOWNLOAD = {
    "200": {"description": "The ZIP", "content": {"application/zip": {}}},
    "206": {"description": "Part of the ZIP (Range)", "content": {"application/zip": {}}},
    "416": {"description": "Range not satisfiable"},
    **_errors(400, 401, 403, 404, 409, 410),
}
_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ExportRequest"}}},
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["type", "message"],
                "properties": {
                    "type": {"type": "string"},
                    "message": {"type": "string"},
                    "fields": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            }
        },
    },
    "StudyFilter": {
        "type": "object",
        "additionalProperties": False,
        "description": "What must be in a file's study for it to be selected (files without "
        "it are left out): its acquisition date in the range, and for DICOM files the "
        "registry's header values (any case)",
        "properties": {
            "date_from": {"type": "string", "format": "date", "description": "YYYY-MM-DD"},
            "date_to": {"type": "string", "format": "date", "description": "YYYY-MM-DD"},
            "series_description": {
                "type": "string",
                "maxLength": 64,
                "description": "SeriesDescription contains it",
            },
            "body_part": {
                "type": "string",
                "maxLength": 64,
                "description": "BodyPartExamined is it",
            },
            "manufacturer": {"type": "string", "maxLength": 64, "description": "contains it"},
            "model": {
                "type": "string",
                "maxLength": 64,
                "description": "ManufacturerModelName contains it",
            },
        },
    },
    "ExportRequest": {
        "type": "object",
        "additionalProperties": False,
        "description": "At most MAX_REQUEST_BODY (4 MiB) of UTF-8 JSON, nested at most "
        "MAX_NESTING (16) deep; each list at most MAX_LIST_ITEMS (50,000) entries of at most "
        "1,024 characters; no string may hold a lone surrogate or a control character (notes "
        "may hold line breaks and tabs). The defaults are shown; the settings decide.",
        "properties": {
            "folders": {**_STR_LIST, "description": 'folder paths; "/" is the whole project'},
            "patients": {**_STR_LIST, "description": "patient labels"},
            "tags": _STR_LIST,
            "tag_mode": {"type": "string", "enum": ["any", "all"]},
            "modalities": {**_STR_LIST, "description": "modality keys, e.g. cbct, ios"},
            "kinds": {"type": "array", "items": {"type": "string", "enum": ["raw", "processed"]}},
            "not_exported": {"type": "boolean"},
            "study": {"$ref": "#/components/schemas/StudyFilter"},
            "name": {
                "type": "string",
                "description": "the archive's top folder (sanitised); at most MAX_NAME_LENGTH "
                "(100) characters",
            },
            "notes": {
                "type": "string",
                "description": "at most MAX_NOTES_LENGTH (4,000) characters; line breaks kept",
            },
            "options": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "compression": {"type": "string", "enum": ["store", "fast", "small"]},
                    "part_size": {
                        "oneOf": [{"type": "integer", "minimum": 1048576}, {"type": "string"}],
                        "description": "bytes, or like '4GiB'",
                    },
                    "privacy": {
                        "type": "string",
                        "enum": ["pseudonymised", "deidentified", "identified"],
                        "default": "pseudonymised",
                        "description": "pseudonymised: stable pseudonyms, direct identifiers "
                        "removed (PS3.15 Basic profile with what the project allows), other files "
                        "scrubbed; deidentified: also dates shifted per patient and UIDs "
                        "replaced; identified: stored headers and labels, for data managers (or "
                        "researchers they allow), audited",
                    },
                    "fresh_pseudonyms": {
                        "type": "boolean",
                        "description": "pseudonyms, date shifts and UIDs unlinkable to other "
                        "exports (default: the project's stable ones)",
                    },
                    "skip_missing": {"type": "boolean"},
                    "shift_dates": {
                        "type": "boolean",
                        "default": True,
                        "description": "deidentified: dates shifted per patient (false: removed)",
                    },
                    "clean_descriptors": {
                        "type": "boolean",
                        "description": "descriptions kept, cleaned of identifiers",
                    },
                },
            },
        },
    },
    "Export": {
        "type": "object",
        "required": ["id", "project", "name", "status", "url"],
        "properties": {
            "id": {"type": "string"},
            "project": {"type": "string"},
            "name": {"type": "string"},
            "notes": {"type": "string"},
            "status": {
                "type": "string",
                "enum": [
                    "pending",
                    "processing",
                    "completed",
                    "failed",
                    "cancelled",
                    "expired",
                    "deleted",
                ],
            },
            "creator": {"type": "string"},
            "patient_count": {"type": "integer"},
            "file_count": {"type": "integer"},
            "estimated_bytes": {"type": "integer"},
            "archive_bytes": {"type": ["integer", "null"]},
            "files_done": {"type": "integer"},
            "bytes_done": {"type": "integer"},
            "progress": {"type": "number"},
            "eta_seconds": {"type": ["number", "null"]},
            "error_message": {"type": ["string", "null"]},
            "privacy": {"type": "string", "enum": ["pseudonymised", "deidentified", "identified"]},
            "privacy_check": {
                "type": ["string", "null"],
                "description": "the residual-identifier check: passed, failed, identifiers "
                "present (identified exports), or null before it ran",
            },
            "url": {"type": "string"},
            "downloads": _STR_LIST,
        },
    },
}


_EDITS = {
    "type": "object",
    "required": ["edits"],
    "properties": {
        "edits": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer"},
                    "patient": {"type": "string"},
                    "scope": {"type": "string", "enum": ["file", "series", "patient"]},
                    "series_label": {"type": ["string", "null"]},
                    "file_path": {"type": ["string", "null"]},
                    "tag": {"type": "string"},
                    "keyword": {"type": "string"},
                    "old_value": {"type": ["string", "null"]},
                    "value": {"type": ["string", "null"], "description": "null: cleared"},
                    "by": {"type": "string"},
                    "at": {"type": "string"},
                    "in_force": {"type": "boolean"},
                },
            },
        }
    },
}
_TEXT_OR_NULL = {"type": ["string", "null"]}


def _curation_body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema = {
        "type": "object",
        "additionalProperties": False,
        "required": required,
        "properties": properties,
    }
    return {"required": True, "content": {"application/json": {"schema": schema}}}


_CURATION_ERRORS = (400, 401, 403, 404, 413, 415, 422)
_CURATION_PATHS: dict[str, Any] = {
    "/api/{project}/curation/": {
        "post": {
            "summary": "Set (value null: clear) a curated DICOM field on patients, one series "
            "of each, or one file (data managers)",
            "parameters": [_PROJECT],
            "requestBody": _curation_body(
                {
                    "patients": {**_STR_LIST, "minItems": 1},
                    "series": {**_TEXT_OR_NULL, "description": "e.g. cbct/raw/series_001"},
                    "file_id": {"type": ["integer", "null"], "minimum": 1},
                    "field": {"type": "string", "description": "a keyword or a tag"},
                    "value": _TEXT_OR_NULL,
                },
                ["patients", "field", "value"],
            ),
            "responses": {"200": _json(_EDITS, "The edits made"), **_errors(*_CURATION_ERRORS)},
        }
    },
    "/api/{project}/curation/import/": {
        "post": {
            "summary": "Many curated values at once, all or nothing (data managers)",
            "parameters": [_PROJECT],
            "requestBody": _curation_body(
                {
                    "rows": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": 10_000,
                        "items": {
                            "type": "object",
                            "required": ["patient", "field", "value"],
                            "properties": {
                                "patient": {"type": "string"},
                                "series": _TEXT_OR_NULL,
                                "field": {"type": "string"},
                                "value": {"type": "string"},
                            },
                        },
                    }
                },
                ["rows"],
            ),
            "responses": {"200": _json(_EDITS, "The edits made"), **_errors(*_CURATION_ERRORS)},
        }
    },
    "/api/{project}/curation/restore/": {
        "post": {
            "summary": "Put an earlier value back in force, as a new edit (data managers)",
            "parameters": [_PROJECT],
            "requestBody": _curation_body(
                {"value_id": {"type": "integer", "minimum": 1}}, ["value_id"]
            ),
            "responses": {"200": _json(_EDITS, "The new edit"), **_errors(*_CURATION_ERRORS)},
        }
    },
    "/api/{project}/curation/history/": {
        "get": {
            "summary": "Every curation edit of a patient, newest first (data managers)",
            "parameters": [
                _PROJECT,
                {"name": "patient", "in": "query", "required": True, "schema": {"type": "string"}},
            ],
            "responses": {"200": _json(_EDITS, "The edits"), **_errors(400, 401, 403, 404, 422)},
        }
    },
}


_RELEASE_ID = {"name": "release_id", "in": "path", "required": True, "schema": {"type": "string"}}
_RELEASE_SCHEMA = {
    "type": "object",
    "required": ["id", "project", "destination", "name", "status", "url"],
    "properties": {
        "id": {"type": "string"},
        "project": {"type": "string", "description": "the source project"},
        "destination": {"type": "string"},
        "archive": {"type": ["string", "null"]},
        "name": {"type": "string"},
        "status": {
            "type": "string",
            "enum": ["pending", "processing", "completed", "failed", "cancelled"],
        },
        "creator": {"type": "string"},
        "patient_count": {"type": "integer"},
        "file_count": {"type": "integer"},
        "files_done": {"type": "integer"},
        "progress": {"type": "number"},
        "counts": {
            "type": "object",
            "additionalProperties": {"type": "integer"},
            "description": "destination files created, new_version, skipped, failed; the "
            "archive's as archive_created, ...",
        },
        "error_message": {"type": ["string", "null"]},
        "privacy": {"type": "string", "enum": ["pseudonymised", "deidentified"]},
        "url": {"type": "string"},
        "log": {"type": "string", "description": "release_log.csv"},
        "changes": {"type": "string", "description": "dicom_changes.csv"},
    },
}
_RELEASE_BODY = {
    "type": "object",
    "additionalProperties": False,
    "required": ["destination"],
    "properties": {
        "folders": {**_STR_LIST, "description": 'folder paths; "/" is the whole project'},
        "patients": {**_STR_LIST, "description": "patient labels"},
        "tags": _STR_LIST,
        "tag_mode": {"type": "string", "enum": ["any", "all"]},
        "modalities": _STR_LIST,
        "kinds": {"type": "array", "items": {"type": "string", "enum": ["raw", "processed"]}},
        "not_released": {
            "type": "boolean",
            "description": "only patients not yet released to the destination",
        },
        "study": {"$ref": "#/components/schemas/StudyFilter"},
        "destination": {"type": "string", "description": "a project you manage"},
        "archive": {
            "type": ["string", "null"],
            "description": "a third project you manage: the untouched originals go there",
        },
        "name": {"type": "string"},
        "notes": {"type": "string"},
        "options": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "privacy": {
                    "type": "string",
                    "enum": ["pseudonymised", "deidentified"],
                    "default": "pseudonymised",
                },
                "shift_dates": {"type": "boolean", "default": True},
                "clean_descriptors": {"type": "boolean"},
                "skip_changed": {
                    "type": "boolean",
                    "description": "a source file changed since registration fails alone",
                },
                "move_out": {
                    "type": "boolean",
                    "description": "with an archive: released patients whose every file is "
                    "archived leave the source project (their source files are deleted once "
                    "the archive's copies check out again)",
                },
            },
        },
    },
}
_CSV = {"description": "CSV", "content": {"text/csv": {"schema": {"type": "string"}}}}
_RELEASE_PATHS: dict[str, Any] = {
    "/api/{project}/releases/create/": {
        "post": {
            "summary": "Release curated patients of this (source) project into a destination "
            "project, the originals optionally into an archive (data managers of all three)",
            "parameters": [_PROJECT],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _RELEASE_BODY}},
            },
            "responses": {
                "202": _json(_RELEASE_SCHEMA, "Queued"),
                **_errors(400, 401, 403, 404, 409, 413, 415, 422, 507),
            },
        }
    },
    "/api/{project}/releases/": {
        "get": {
            "summary": "Releases out of this project, newest first (its data managers)",
            "parameters": [
                _PROJECT,
                {"name": "limit", "in": "query", "schema": {"type": "integer"}},
            ],
            "responses": {
                "200": _json(
                    {"type": "object", "properties": {"items": {"type": "array"}}},
                    "Releases",
                ),
                **_errors(400, 401, 403, 404, 422),
            },
        }
    },
    "/api/{project}/releases/links/": {
        "get": {
            "summary": "Which destination patient each source patient became (the "
            "re-identification key: data managers of the source only)",
            "parameters": [_PROJECT],
            "responses": {
                "200": _json(
                    {"type": "object", "properties": {"items": {"type": "array"}}}, "Links"
                ),
                **_errors(400, 401, 403, 404),
            },
        }
    },
    "/api/{project}/releases/{release_id}/": {
        "get": {
            "summary": "Status, progress and counts of one release",
            "parameters": [_PROJECT, _RELEASE_ID],
            "responses": {
                "200": _json(_RELEASE_SCHEMA, "The release"),
                **_errors(400, 401, 403, 404),
            },
        }
    },
    "/api/{project}/releases/{release_id}/cancel/": {
        "post": {
            "summary": "Cancel a pending or processing release (what it registered stays)",
            "parameters": [_PROJECT, _RELEASE_ID],
            "responses": {
                "200": _json(_RELEASE_SCHEMA, "Cancelled"),
                **_errors(400, 401, 403, 404, 409, 415),
            },
        }
    },
    "/api/{project}/releases/{release_id}/retry/": {
        "post": {
            "summary": "Run a failed or cancelled release again (registered files skipped)",
            "parameters": [_PROJECT, _RELEASE_ID],
            "responses": {
                "200": _json(_RELEASE_SCHEMA, "Queued again"),
                **_errors(400, 401, 403, 404, 409, 415),
            },
        }
    },
    "/api/{project}/releases/{release_id}/log/": {
        "get": {
            "summary": "release_log.csv: per patient, series and file, what the release did",
            "parameters": [_PROJECT, _RELEASE_ID],
            "responses": {"200": _CSV, **_errors(400, 401, 403, 404)},
        }
    },
    "/api/{project}/releases/{release_id}/changes/": {
        "get": {
            "summary": "dicom_changes.csv: every changed DICOM field of the released files "
            "(new values only)",
            "parameters": [_PROJECT, _RELEASE_ID],
            "responses": {"200": _CSV, **_errors(400, 401, 403, 404)},
        }
    },
    "/api/{project}/files/history/": {
        "get": {
            "summary": "Which release wrote which version of a file (data managers)",
            "parameters": [
                _PROJECT,
                {"name": "path", "in": "query", "required": True, "schema": {"type": "string"}},
            ],
            "responses": {
                "200": _json(
                    {"type": "object", "properties": {"versions": {"type": "array"}}},
                    "The versions, oldest first",
                ),
                **_errors(400, 401, 403, 404, 422),
            },
        }
    },
}


def document() -> dict[str, Any]:
    """The API description: paths, parameters, bodies, answers and the two ways to sign in."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "Export Portal API", "version": "1"},
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "token": {"type": "http", "scheme": "bearer"},
                "proxy": {"type": "apiKey", "in": "header", "name": "X-Forwarded-User"},
            },
        },
        "security": [{"token": []}, {"proxy": []}],
        "paths": {
            "/api/{project}/exports/create/": {
                "post": {
                    "summary": "Create an export (the work runs on the queue)",
                    "parameters": [_PROJECT],
                    "requestBody": _BODY,
                    "responses": {
                        "202": _json(_EXPORT, "Accepted"),
                        **_errors(400, 401, 403, 404, 415, 413, 422, 507),
                    },
                }
            },
            "/api/{project}/estimate/": {
                "post": {
                    "summary": "Counts, bytes, and whether create would be refused and why",
                    "parameters": [_PROJECT],
                    "requestBody": _BODY,
                    "responses": {
                        "200": _json({"type": "object"}, "The estimate"),
                        **_errors(400, 401, 403, 404, 415, 413, 422),
                    },
                }
            },
            "/api/{project}/preview/": {
                "post": {
                    "summary": "The DICOM header changes the export would make, one file per "
                    "selected series (old values for data managers only)",
                    "parameters": [_PROJECT],
                    "requestBody": _BODY,
                    "responses": {
                        "200": _json(_PREVIEW, "The changes"),
                        **_errors(400, 401, 403, 404, 415, 413, 422),
                    },
                }
            },
            "/api/{project}/exports/": {
                "get": {
                    "summary": "Exports you may see, newest first",
                    "parameters": [
                        _PROJECT,
                        {
                            "name": "status",
                            "in": "query",
                            "schema": {"type": "string"},
                            "description": "one of the export statuses (else 422)",
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 500},
                        },
                        {
                            "name": "offset",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
                        },
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "items": {"type": "array", "items": _EXPORT},
                                    "limit": {"type": "integer"},
                                    "offset": {"type": "integer"},
                                    "next_offset": {"type": ["integer", "null"]},
                                },
                            },
                            "A page of exports",
                        ),
                        **_errors(400, 401, 403, 404, 422),
                    },
                }
            },
            "/api/{project}/exports/{export_id}/": {
                "get": {
                    "summary": "Status, progress, error and parts of one export",
                    "parameters": [_PROJECT, _EXPORT_ID],
                    "responses": {
                        "200": _json(_EXPORT, "The export"),
                        **_errors(400, 401, 403, 404),
                    },
                },
                "delete": {
                    "summary": "Delete the export's files (its record stays)",
                    "parameters": [_PROJECT, _EXPORT_ID],
                    "responses": {
                        "200": _json(_EXPORT, "Deleted"),
                        **_errors(400, 401, 403, 404, 415, 409),
                    },
                },
            },
            "/api/{project}/exports/{export_id}/cancel/": {
                "post": {
                    "summary": "Cancel a pending or processing export",
                    "parameters": [_PROJECT, _EXPORT_ID],
                    "responses": {
                        "200": _json(_EXPORT, "Cancelled"),
                        **_errors(400, 401, 403, 404, 415, 409),
                    },
                }
            },
            "/api/{project}/exports/{export_id}/download/": {
                "get": {
                    "summary": "The archive of a one-part export (Range, If-Range, ETag)",
                    "parameters": [_PROJECT, _EXPORT_ID],
                    "responses": _DOWNLOAD,
                }
            },
            "/api/{project}/exports/{export_id}/download/{part}": {
                "get": {
                    "summary": "One part of a multi-part export, numbered from 1 (404 for "
                    "0 or a part the export does not have)",
                    "parameters": [_PROJECT, _EXPORT_ID, _PART],
                    "responses": _DOWNLOAD,
                }
            },
            **_CURATION_PATHS,
            **_RELEASE_PATHS,
        },
    }
