"""Regenerate ``src/runapi_mcp/catalog/actions.json`` from the shared RunAPI facts.

The shared reference describes RunAPI's contract action by action with per-model rules
kept apart from the fields. The project's catalog folds the rules into each model (a
forbidden field simply does not exist for that model), drops empty descriptions, and keys
everything by what a user types: the model slug. Run it when the reference changes:

    python scripts/build_catalog.py ../shared/reference/runapi-image-actions.json

Every constraint in the source must reach the catalog: a value is copied whenever its key is
present, whatever it is (``min: 0`` and ``default: false`` are constraints too; filtering on
truthiness once dropped every ``min: 0`` and let a negative seed through, billed). A key this
script does not know stops the build instead of being skipped, so a new kind of constraint
cannot go missing silently. ``tests/test_catalog.py`` compares the result to the source field
by field.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "src" / "runapi_mcp" / "catalog" / "actions.json"
# Constraint keys copied as they are (after the ``length`` renaming below).
FIELD_KEYS = ("type", "required", "enum", "default", "min", "max", "min_items", "max_items", "pattern", "items")
# Keys the source may carry on a field that are not copied under their own name.
OTHER_FIELD_KEYS = frozenset({"length", "description"})
ITEM_KEYS = frozenset({"type", "min", "max"})
RULE_KEYS = frozenset({"when", "forbidden"})
WHEN_KEYS = frozenset({"model"})


class SourceError(ValueError):
    """The source holds something this script cannot carry over faithfully."""


def convert_field(spec: dict[str, Any], where: str = "field") -> dict[str, Any]:
    """One source field as the catalog stores it; every constraint kept, ``None`` meaning absent."""
    unknown = set(spec) - set(FIELD_KEYS) - OTHER_FIELD_KEYS
    if unknown:
        raise SourceError(f"{where}: unknown key(s) {sorted(unknown)}; teach build_catalog.py what they mean")
    out = {k: spec[k] for k in FIELD_KEYS if spec.get(k) is not None}
    if "items" in out:
        if not isinstance(out["items"], dict) or set(out["items"]) - ITEM_KEYS:
            raise SourceError(f"{where}: items {out['items']!r} holds keys other than {sorted(ITEM_KEYS)}")
        out["items"] = {k: v for k, v in out["items"].items() if v is not None}
    if spec.get("length"):
        # With ``length`` the source's min/max count characters, not the value.
        if out.get("type") != "string":
            raise SourceError(f"{where}: 'length' on a {out.get('type')} field")
        for bound in ("min", "max"):
            if bound in out:
                out[f"{bound}_length"] = out.pop(bound)
    if spec.get("description"):
        out["doc"] = spec["description"]
    return out


def forbidden_by_model(key: str, action: dict[str, Any]) -> dict[str, set[str]]:
    """The action's rules as {model slug: fields it does not take}; only rules keyed by model exist."""
    forbidden: dict[str, set[str]] = {}
    for rule in action.get("rules", []):
        if set(rule) - RULE_KEYS or set(rule["when"]) - WHEN_KEYS:
            raise SourceError(f"{key}: rule {rule!r} has a shape this script cannot fold into the models")
        slug = rule["when"]["model"]
        if slug not in action["fields_by_model"]:
            raise SourceError(f"{key}: rule names model {slug!r}, which has no fields")
        forbidden.setdefault(slug, set()).update(rule["forbidden"])
    return forbidden


def build(data: dict[str, Any]) -> dict[str, Any]:
    """The catalog document (what ``actions.json`` holds) for the source facts ``data``."""
    actions = []
    for key, action in sorted(data["actions"].items()):
        family = key.split("/", 1)[0]
        forbidden = forbidden_by_model(key, action)
        models = {}
        for slug, fields in sorted(action["fields_by_model"].items()):
            name = key if slug == "_" else slug  # an action with no model slug is named by its key
            models[name] = {
                "send_model": slug != "_",
                "fields": {
                    f: convert_field(s, f"{key} {slug} {f}")
                    for f, s in sorted(fields.items())
                    if f not in forbidden.get(slug, set())
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
    return {"version": 1, "actions": actions}


def render(catalog: dict[str, Any]) -> str:
    return json.dumps(catalog, indent=1, sort_keys=False) + "\n"


def main(source: str) -> None:
    catalog = build(json.loads(Path(source).read_text("utf-8")))
    OUT.write_text(render(catalog), "utf-8")
    print(f"wrote {OUT} ({len(catalog['actions'])} actions)", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/reference/runapi-image-actions.json")
