"""Regenerate ``src/runapi_mcp/catalog/actions.json`` from the shared RunAPI facts.

The shared reference describes RunAPI's contract action by action with per-model rules
kept apart from the fields. The project's catalog folds the rules into each model (a
forbidden field simply does not exist for that model), drops empty descriptions, and keys
everything by what a user types: the model slug. Run it when the reference changes:

    python scripts/build_catalog.py ../shared/reference/runapi-image-actions.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "src" / "runapi_mcp" / "catalog" / "actions.json"
FIELD_KEYS = ("type", "required", "enum", "default", "min", "max", "min_items", "max_items", "pattern", "items")


def convert_field(spec: dict[str, Any]) -> dict[str, Any]:
    out = {k: spec[k] for k in FIELD_KEYS if k in spec and spec[k] not in (None, False)}
    if spec.get("length"):
        out["min_length"], out["max_length"] = out.pop("min", None), out.pop("max", None)
        out = {k: v for k, v in out.items() if v is not None}
    if spec.get("description"):
        out["doc"] = spec["description"]
    return out


def main(source: str) -> None:
    data = json.loads(Path(source).read_text())
    actions = []
    for key, action in sorted(data["actions"].items()):
        family = key.split("/", 1)[0]
        forbidden: dict[str, set[str]] = {}
        for rule in action.get("rules", []):
            forbidden.setdefault(rule["when"]["model"], set()).update(rule["forbidden"])
        models = {}
        for slug, fields in sorted(action["fields_by_model"].items()):
            name = key if slug == "_" else slug  # an action with no model slug is named by its key
            models[name] = {
                "send_model": slug != "_",
                "fields": {
                    f: convert_field(s) for f, s in sorted(fields.items()) if f not in forbidden.get(slug, set())
                },
            }
        actions.append(
            {
                "family": family,
                "title": action["model"],
                "service": family.replace("-", "_"),
                "endpoint": action["endpoint"],
                "models": models,
            }
        )
    OUT.write_text(json.dumps({"version": 1, "actions": actions}, indent=1, sort_keys=False) + "\n")
    print(f"wrote {OUT} ({len(actions)} actions)", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/reference/runapi-image-actions.json")
