"""Regenerate ``src/runapi_mcp/catalog/actions.json`` from RunAPI's own published contracts.

Since 2026-09-30 RunAPI's SDKs validate nothing locally and ship no contract; the last contract each
image family's SDK published is gathered in ``runapi-image-contracts.json`` (with the repository,
commit and package version it came from). That file is the authority for what it states: the
routes, the models on each route, every constraint (required, enum, min/max, lengths, item counts,
types) and the rules. Run this whenever it changes:

    python scripts/build_catalog.py ../shared/reference/runapi-image-contracts.json

What the contracts do not state, this script keeps from the catalog it replaces: a contract lists
only *constrained* fields, so an optional field such as ``callback_url`` or ``seed`` (which RunAPI
accepts) appears in none. The previous catalog's inventory of fields (name, type, description)
is carried over, stripped of every constraint the contract does not repeat; a model's rules of the
form ``{"when": {"model": slug}, "forbidden": [...]}`` remove fields from that model (Grok Image
2.0's edit loses ``source_task_id`` and ``mask_indices``). Every other rule (``when`` on field
values, ``{"present": bool}``, ``required_any``) is kept as a rule of each model of the action,
checked by ``ModelSpec.check_rules`` before anything is uploaded or created. The build is a fixed
point: run on its own output and the same contracts, it writes the same file
(``tests/test_catalog.py`` checks it, and compares the catalog with the contracts field by field).

A family without a published contract (``families_without_contract``: Qwen 2.1) takes the fields of
the family named in ``INVENTORY_FROM``, unconstrained: RunAPI validates on its side, and its 4xx
words reach the user. A key this script does not know stops the build instead of being skipped,
so a new kind of constraint cannot go missing silently.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "src" / "runapi_mcp" / "catalog" / "actions.json"
DEFAULT_SOURCE = "../shared/reference/runapi-image-contracts.json"
# What a contract's field may state, and where each lands in the catalog (``length`` renames min/max).
CONTRACT_KEYS = frozenset({"required", "enum", "min", "max", "length", "min_items", "max_items", "type"})
# The constraints a field carries in the catalog: all of them come from the contract, never from the past.
CONSTRAINT_KEYS = ("required", "enum", "min", "max", "min_length", "max_length", "min_items", "max_items")
# What the previous catalog may hold on a field (carried: type, items, default, doc).
CARRIED_KEYS = ("type", "items", "default", "doc")
RULE_KEYS = frozenset({"when", "forbidden", "required_any"})
# New families and actions whose fields (names, types, descriptions) are those of an older one.
# gpt-image-2.5: "Fields as GPT Image 2" (RunAPI's docs); qwen-2.1: published with no contract.
INVENTORY_FROM: dict[str, str] = {"gpt-image-2.5": "gpt-image-2", "qwen-2.1": "qwen-2"}
TITLES: dict[str, str] = {"gpt-image-2.5": "GPT Image 2.5", "qwen-2.1": "Qwen 2.1"}
# Every RunAPI task action takes a callback URL (runapi-api.md): a new action without an inventory gets it.
CALLBACK_URL = {"type": "string", "doc": "Webhook URL for async notifications."}


class SourceError(ValueError):
    """The source holds something this script cannot carry over faithfully."""


def _endpoint(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[1]


def _guess_type(name: str, spec: dict[str, Any]) -> str:
    """A field's JSON type where neither the contract nor the inventory states one."""
    if "type" in spec:
        return str(spec["type"])
    if "min_items" in spec or "max_items" in spec or name.endswith("_urls") or name.endswith("_indices"):
        return "array"
    enum = spec.get("enum")
    if enum and all(isinstance(v, bool) for v in enum):
        return "boolean"
    if enum and all(isinstance(v, int) and not isinstance(v, bool) for v in enum):
        return "integer"
    return "string"


def contract_field(name: str, spec: dict[str, Any], carried: dict[str, Any] | None, where: str) -> dict[str, Any]:
    """One field as the catalog stores it: the contract's constraints on the inventory's type and doc."""
    unknown = set(spec) - CONTRACT_KEYS
    if unknown:
        raise SourceError(f"{where}: unknown key(s) {sorted(unknown)}; teach build_catalog.py what they mean")
    out: dict[str, Any] = {"type": _guess_type(name, {**({"type": carried["type"]} if carried else {}), **spec})}
    if spec.get("required"):
        out["required"] = True
    if "enum" in spec:
        out["enum"] = list(spec["enum"])
    for bound in ("min", "max"):
        if bound in spec:
            if spec.get("length"):
                if out["type"] != "string":
                    raise SourceError(f"{where}: 'length' on a {out['type']} field")
                out[f"{bound}_length"] = spec[bound]
            else:
                out[bound] = spec[bound]
    for key in ("min_items", "max_items"):
        if key in spec:
            out[key] = spec[key]
    for key in ("items", "default", "doc"):
        if carried and key in carried:
            out[key] = _carried(key, carried[key])
    return out


def _carried(key: str, value: Any) -> Any:
    # An item's type is the field's shape; its bounds would be a constraint the contract does not state.
    return {"type": value["type"]} if key == "items" and "type" in value else value


def inventory_field(carried: dict[str, Any]) -> dict[str, Any]:
    """A field the contract leaves open: its type and description, no constraint."""
    unknown = set(carried) - set(CARRIED_KEYS) - set(CONSTRAINT_KEYS) - {"pattern"}
    if unknown:
        raise SourceError(f"previous catalog field has unknown key(s) {sorted(unknown)}")
    return {k: _carried(k, carried[k]) for k in CARRIED_KEYS if k in carried}


def _previous_models(previous: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """The previous catalog's models by (family, endpoint)."""
    return {(a["family"], a["endpoint"]): a["models"] for a in previous.get("actions", [])}


def _inventory(
    previous: dict[tuple[str, str], dict[str, Any]], family: str, endpoint: str, slug: str
) -> dict[str, dict[str, Any]]:
    """The fields the previous catalog knew for ``slug`` on this route (or its model family's, for a new one)."""
    models = previous.get((family, endpoint))
    if models is None and family in INVENTORY_FROM:
        models = previous.get((INVENTORY_FROM[family], endpoint))
    if not models:
        return {"callback_url": dict(CALLBACK_URL)}
    if slug in models:
        return dict(models[slug]["fields"])
    # A new model on an older route: the union of the route's fields (the contract's constraints follow).
    merged: dict[str, dict[str, Any]] = {}
    for model in models.values():
        for name, spec in model["fields"].items():
            merged.setdefault(name, spec)
    return merged


def _rules(key: str, action: dict[str, Any]) -> tuple[dict[str, set[str]], list[dict[str, Any]]]:
    """The action's rules split: {model slug: fields it does not take}, and the rules kept as rules."""
    forbidden: dict[str, set[str]] = {}
    kept: list[dict[str, Any]] = []
    for rule in action.get("rules", []):
        if set(rule) - RULE_KEYS or not (("when" in rule) == ("forbidden" in rule) != ("required_any" in rule)):
            raise SourceError(f"{key}: rule {rule!r} has a shape this script does not know")
        when = rule.get("when", {})
        if set(when) == {"model"}:
            slug = when["model"]
            if slug not in action["fields_by_model"]:
                raise SourceError(f"{key}: rule names model {slug!r}, which has no fields")
            forbidden.setdefault(slug, set()).update(rule["forbidden"])
            continue
        for value in when.values():
            if isinstance(value, dict) and set(value) != {"present"}:
                raise SourceError(f"{key}: rule {rule!r} tests a value this script does not know")
        if "model" in when:
            raise SourceError(f"{key}: rule {rule!r} mixes a model with other conditions")
        kept.append(rule)
    return forbidden, kept


def _rule_fields(rule: dict[str, Any]) -> set[str]:
    return set(rule.get("when", {})) | set(rule.get("forbidden", [])) | set(rule.get("required_any", []))


def _source(generated_from: list[dict[str, Any]], family: str) -> dict[str, Any]:
    repo = f"runapi-ai/{family}-sdk"
    for entry in generated_from:
        if entry["repo"] == repo:
            return {"repo": repo, "commit": entry.get("commit"), "sdk_version": entry["sdk_version"]}
    raise SourceError(f"{family}: no generated_from entry for {repo}")


def build_action(
    family: str,
    endpoint: str,
    models: dict[str, dict[str, Any]],
    rules: list[dict[str, Any]],
    forbidden: dict[str, set[str]],
    previous: dict[tuple[str, str], dict[str, Any]],
    title: str,
    source: dict[str, Any],
) -> dict[str, Any]:
    key = f"{family}/{endpoint}"
    out_models: dict[str, Any] = {}
    for slug, fields in sorted(models.items()):
        inventory = _inventory(previous, family, endpoint, slug)
        built: dict[str, Any] = {}
        for name in sorted(set(inventory) | set(fields) | set().union(*map(_rule_fields, rules))):
            if name in forbidden.get(slug, set()):
                continue
            where = f"{key} {slug} {name}"
            carried = inventory.get(name)
            if name in fields:
                built[name] = contract_field(name, fields[name], carried, where)
            elif carried is not None:
                built[name] = inventory_field(carried)
            else:  # named only by a rule (segment-map's image_url and source_task_id)
                built[name] = {"type": _guess_type(name, {})}
        entry: dict[str, Any] = {"send_model": slug != "_", "fields": built}
        if rules:
            entry["rules"] = rules
        out_models[key if slug == "_" else slug] = entry
    return {
        "family": family,
        "title": title,
        "service": family.replace("-", "_").replace(".", "_"),
        "endpoint": endpoint,
        "source": source,
        "models": out_models,
    }


def build(data: dict[str, Any], previous: dict[str, Any]) -> dict[str, Any]:
    """The catalog document (what ``actions.json`` holds) for the contracts ``data``, keeping from
    ``previous`` (the catalog being replaced) what the contracts do not state."""
    before = _previous_models(previous)
    titles = {a["family"]: a["title"] for a in previous.get("actions", [])} | TITLES
    actions = []
    for action in sorted(data["actions"], key=lambda a: (a["family"], a["endpoint"])):
        family = action["family"]
        key = f"{family}/{action['action']}"
        forbidden, rules = _rules(key, action)
        if set(action["fields_by_model"]) != set(action["models"]):
            raise SourceError(f"{key}: models {action['models']} differ from fields_by_model's keys")
        actions.append(
            build_action(
                family,
                _endpoint(action["endpoint"]),
                action["fields_by_model"],
                rules,
                forbidden,
                before,
                titles.get(family) or family,
                _source(data["generated_from"], family),
            )
        )
    for family_entry in data.get("families_without_contract", []):
        family = family_entry["family"]
        source = {"repo": family_entry["repo"].split(" ", 1)[0], "commit": None, "sdk_version": family_entry["pypi"]}
        for path in family_entry["endpoints"].values():
            endpoint = _endpoint(path)
            slugs = [s for s in family_entry["models_named_in_readme"] if s.endswith(endpoint.replace("_", "-"))]
            if len(slugs) != 1:
                raise SourceError(f"{family}: cannot tell which model serves {path} among {slugs}")
            title = titles.get(family) or family
            actions.append(build_action(family, endpoint, {slugs[0]: {}}, [], {}, before, title, source))
    actions.sort(key=lambda a: (a["family"], a["endpoint"]))
    return {"version": 2, "contracts": "runapi-image-contracts.json", "actions": actions}


def render(catalog: dict[str, Any]) -> str:
    return json.dumps(catalog, indent=1, sort_keys=False) + "\n"


def main(source: str) -> None:
    previous = json.loads(OUT.read_text("utf-8")) if OUT.exists() else {"actions": []}
    catalog = build(json.loads(Path(source).read_text("utf-8")), previous)
    OUT.write_text(render(catalog), "utf-8")
    print(f"wrote {OUT} ({len(catalog['actions'])} actions)", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_SOURCE)
