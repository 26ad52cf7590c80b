"""The model catalog: RunAPI's own published contracts, strict where the contract is open.

The first tests compare the shipped catalog with the contracts RunAPI's SDKs last published
(``runapi-image-contracts.json``) field by field: every route, model, constraint and rule the
contracts state is in the catalog, no constraint they do not state is, and a model's forbidden
fields are gone. The rest check the validation API: refusals name the field and the limit, images
are counted before any upload, and the body built afterwards is what the server sent before.

The contracts live beside the repository (``../shared/reference``), as in CI; ``RUNAPI_CONTRACTS``
points elsewhere.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from runapi_mcp.catalog import (
    DECOMPOSE_LAYERS_MAX_OUTPUTS,
    IMAGE_ARRAY_MAX_ITEMS,
    JSON_SAFE_INTEGER,
    MAX_PARAMS,
    OUTPUT_COUNT_MAX,
    PROMPT_MAX_LENGTH,
    SOFT_DEFAULTS,
    STRING_MAX_LENGTH,
    Catalog,
    CatalogError,
    FieldSpec,
    ItemSpec,
    RequestKind,
    Rule,
    ValidatedRequest,
    get_catalog,
)

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS_PATH = Path(
    os.environ.get("RUNAPI_CONTRACTS") or ROOT.parent / "shared" / "reference" / "runapi-image-contracts.json"
)
CONTRACTS: dict[str, Any] | None = (
    json.loads(CONTRACTS_PATH.read_text("utf-8")) if CONTRACTS_PATH.is_file() else None
)
# "family/action" -> the contract of that action.
CONTRACT_ACTIONS: dict[str, Any] = (
    {f"{a['family']}/{a['action']}": a for a in CONTRACTS["actions"]} if CONTRACTS else {}
)
# A clone on its own (a new user's) has no ../shared: the comparisons with the contracts skip there, saying
# so; where the contracts are (CI's checkout beside shared/), they run.
needs_contracts = pytest.mark.skipif(
    CONTRACTS is None, reason=f"RunAPI contracts not found at {CONTRACTS_PATH}; set RUNAPI_CONTRACTS or add ../shared"
)
# Every key a contract field may carry. A new one fails the comparison until the catalog learns it.
CONTRACT_FIELD_KEYS = {"type", "required", "enum", "min", "max", "length", "min_items", "max_items"}
CONSTRAINTS = ("required", "enum", "min", "max", "min_length", "max_length", "min_items", "max_items", "pattern")
SHIPPED = ROOT / "src" / "runapi_mcp" / "catalog" / "actions.json"


def catalog_name(key: str, slug: str) -> str:
    return key if slug == "_" else slug  # as scripts/build_catalog.py names a model-less action


MODEL_CASES = [(key, slug) for key, action in sorted(CONTRACT_ACTIONS.items()) for slug in action["fields_by_model"]]
CATALOG_CASES = [(a.key, slug) for a in get_catalog().actions for slug in a.models]


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return get_catalog()


def load_builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_catalog", ROOT / "scripts" / "build_catalog.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def same(a: Any, b: Any) -> bool:
    """Equal, and bool never standing in for a number (``False == 0`` in Python)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def expected_constraints(source: dict[str, Any]) -> dict[str, Any]:
    """What the catalog must hold for one contract field, derived here independently of the builder."""
    assert set(source) <= CONTRACT_FIELD_KEYS, f"unknown contract keys {set(source) - CONTRACT_FIELD_KEYS}"
    length = bool(source.get("length"))
    return {
        "required": bool(source.get("required", False)),
        "enum": source.get("enum"),
        "min": None if length else source.get("min"),
        "max": None if length else source.get("max"),
        "min_length": source.get("min") if length else None,
        "max_length": source.get("max") if length else None,
        "min_items": source.get("min_items"),
        "max_items": source.get("max_items"),
        "pattern": None,
    }


def actual_constraints(spec: FieldSpec) -> dict[str, Any]:
    return {name: getattr(spec, name) for name in CONSTRAINTS}


UNCONSTRAINED = dict.fromkeys(CONSTRAINTS) | {"required": False}


def split_rules(action: dict[str, Any], slug: str) -> tuple[set[str], list[dict[str, Any]]]:
    """The fields the contract's model rules take from ``slug``, and the rules across fields."""
    forbidden: set[str] = set()
    kept = []
    for rule in action.get("rules", []):
        if set(rule.get("when", {})) == {"model"}:
            if rule["when"]["model"] == slug:
                forbidden.update(rule["forbidden"])
        else:
            kept.append(rule)
    return forbidden, kept


# -- the catalog is RunAPI's contracts ------------------------------------------------------------


@needs_contracts
def test_contracts_are_present() -> None:
    assert CONTRACTS is not None
    assert MODEL_CASES


@needs_contracts
def test_every_contract_action_is_in_the_catalog(catalog: Catalog) -> None:
    assert CONTRACTS is not None
    built = {a.key: a for a in catalog.actions}
    without = {
        f"{f['family']}/{action}": f for f in CONTRACTS["families_without_contract"] for action in f["endpoints"]
    }
    assert set(built) == set(CONTRACT_ACTIONS) | set(without)
    for excluded in CONTRACTS["excluded_actions"]:  # Grok's "upscale" upscales a video
        assert f"{excluded['family']}/{excluded['action']}" not in built
    sources = {g["repo"]: g for g in CONTRACTS["generated_from"]}
    for key, contract in CONTRACT_ACTIONS.items():
        action = built[key]
        assert action.path == contract["endpoint"]
        assert set(action.models) == {catalog_name(key, slug) for slug in contract["models"]}
        origin = sources[action.source["repo"]]
        assert action.source["repo"] == f"runapi-ai/{action.family}-sdk"
        assert (action.source["commit"], action.source["sdk_version"]) == (origin["commit"], origin["sdk_version"])
    for key, family in without.items():
        assert built[key].path == family["endpoints"][key.split("/", 1)[1]]
        assert set(built[key].models) <= set(family["models_named_in_readme"])


@needs_contracts
@pytest.mark.parametrize(("key", "slug"), MODEL_CASES, ids=[f"{k}:{s}" for k, s in MODEL_CASES])
def test_model_matches_the_contract_field_by_field(catalog: Catalog, key: str, slug: str) -> None:
    contract = CONTRACT_ACTIONS[key]
    action = next(a for a in catalog.actions if a.key == key)
    model = action.models[catalog_name(key, slug)]
    assert model.send_model is (slug != "_")
    forbidden, rules = split_rules(contract, slug)
    fields = contract["fields_by_model"][slug]
    # Every field the contract constrains is there, with exactly its constraints; a forbidden one is gone.
    assert set(fields) - forbidden <= set(model.fields)
    assert not forbidden & set(model.fields)
    for name, spec in model.fields.items():
        expected = expected_constraints(fields[name]) if name in fields else UNCONSTRAINED
        actual = actual_constraints(spec)
        for attr in CONSTRAINTS:
            assert same(actual[attr], expected[attr]), f"{key} {slug} {name}.{attr}: {actual[attr]!r} != {expected[attr]!r}"
        if name in fields and "type" in fields[name]:
            assert spec.type == fields[name]["type"]
    # The rules across fields are the contract's, in its order.
    assert list(model.rules) == [Rule.model_validate(r) for r in rules]
    for rule in model.rules:  # every field a rule names exists, so its error can describe it
        assert set(rule.when) | set(rule.forbidden) | set(rule.required_any) <= set(model.fields)


@needs_contracts
def test_shipped_actions_json_is_the_build_of_the_contracts() -> None:
    """Re-running the build on the contracts and its own output changes nothing (it is re-runnable)."""
    builder = load_builder()
    assert CONTRACTS is not None
    shipped = SHIPPED.read_text("utf-8")
    assert shipped == builder.render(builder.build(CONTRACTS, json.loads(shipped))), (
        "run scripts/build_catalog.py on the contracts"
    )


def test_the_tests_read_no_retired_facts() -> None:
    """The catalog comparison moved to the contracts: nothing reads the retired file of image actions."""
    retired = "runapi-image-" + "actions"
    for path in [*ROOT.joinpath("tests").glob("*.py"), *ROOT.joinpath("scripts").glob("*.py")]:
        assert retired not in path.read_text("utf-8"), path


def test_builder_keeps_falsy_constraints_and_refuses_unknown_keys() -> None:
    builder = load_builder()
    converted = builder.contract_field("seed", {"type": "integer", "min": 0, "max": 10}, None, "seed")
    assert converted == {"type": "integer", "min": 0, "max": 10}
    carried = {"type": "boolean", "default": False, "doc": "Safety."}
    assert builder.inventory_field({**carried, "required": True, "enum": [True]}) == carried
    text = builder.contract_field("note", {"min": 0, "max": 50, "length": True}, None, "note")
    assert text == {"type": "string", "min_length": 0, "max_length": 50}
    assert builder.contract_field("urls", {"max_items": 3}, None, "urls")["type"] == "array"
    with pytest.raises(builder.SourceError, match="multiple_of"):
        builder.contract_field("n", {"type": "integer", "multiple_of": 8}, None, "n")
    with pytest.raises(builder.SourceError, match="shape"):
        builder.build(
            {
                "actions": [
                    {
                        "family": "x",
                        "action": "text-to-image",
                        "endpoint": "/api/v1/x/text_to_image",
                        "models": ["x-1"],
                        "fields_by_model": {"x-1": {}},
                        "rules": [{"when": {"a": 1}, "forbidden": ["b"], "required_any": ["c"]}],
                    }
                ],
                "generated_from": [],
            },
            {"actions": []},
        )


def test_falsy_constraints_reach_the_catalog(catalog: Catalog) -> None:
    qwen = next(a for a in catalog.actions if a.key == "qwen-3/text-to-image").models["qwen-3-text-to-image"]
    assert qwen.fields["seed"].min == 0 and qwen.fields["seed"].max == 2147483647
    assert qwen.fields["enable_safety_checker"].default is False
    assert qwen.fields["negative_prompt"].min_length == 0
    strength = next(a for a in catalog.actions if a.key == "qwen-image/remix-image").models["qwen-image-remix-image"]
    assert strength.fields["strength"].min == 0


@pytest.mark.parametrize(("key", "slug"), CATALOG_CASES, ids=[f"{k}:{s}" for k, s in CATALOG_CASES])
def test_documented_values_pass_the_catalogs_own_limits(catalog: Catalog, key: str, slug: str) -> None:
    # The project's limits for open fields must never refuse what the contract documents.
    model = next(a for a in catalog.actions if a.key == key).models[catalog_name(key, slug)]
    for spec in model.fields.values():
        for value in (*(spec.enum or ()), *(() if spec.default is None else (spec.default,))):
            assert spec.check(value, model=model.slug) == value


# -- refusals name the field and the limit -------------------------------------------------------

QWEN3 = sorted((slug, a.endpoint) for a in get_catalog().actions if a.family == "qwen-3" for slug in a.models)


def kind_of(endpoint: str) -> RequestKind:
    return "generate" if endpoint == "text_to_image" else "edit"


def check(
    catalog: Catalog,
    kind: RequestKind,
    model: str,
    *,
    prompt: str | None = "a lighthouse at dusk",
    image_count: int | None = None,
    params: dict[Any, Any] | None = None,
) -> ValidatedRequest:
    count = image_count if image_count is not None else (1 if kind == "edit" else 0)
    return catalog.validate(kind, model, prompt=prompt, image_count=count, params=params)


def test_qwen3_models_are_found_in_the_catalog() -> None:
    assert {slug for slug, _ in QWEN3} >= {"qwen-3-text-to-image", "qwen-3-edit-image"}


@pytest.mark.parametrize(("slug", "endpoint"), QWEN3)
def test_negative_seed_is_refused_for_qwen3(catalog: Catalog, slug: str, endpoint: str) -> None:
    kind = kind_of(endpoint)
    with pytest.raises(CatalogError) as err:
        check(catalog, kind, slug, params={"seed": -1})
    assert err.value.field == "seed"
    assert "'seed'" in str(err.value) and "0..2147483647" in str(err.value)
    with pytest.raises(CatalogError, match=r"0\.\.2147483647"):
        check(catalog, kind, slug, params={"seed": 2147483648})
    for edge in (0, 2147483647):
        assert check(catalog, kind, slug, params={"seed": edge}).body["seed"] == edge


SAFE = f"-{JSON_SAFE_INTEGER}..{JSON_SAFE_INTEGER}"
EDIT_ONE: dict[str, Any] = {"kind": "edit", "image_count": 1}
BAD_VALUES: list[tuple[str, str, dict[str, Any], str, list[str]]] = [
    # (id, model, call, field, needles in the message)
    ("huge-int", "imagen-4", {"params": {"seed": 10**400}}, "seed", ["'seed'", SAFE]),
    ("huge-negative-int", "imagen-4", {"params": {"seed": -(10**400)}}, "seed", ["'seed'", SAFE]),
    ("beyond-str-digits", "imagen-4", {"params": {"seed": 10**5000}}, "seed", ["'seed'", SAFE]),
    ("just-beyond-json-safe", "imagen-4", {"params": {"seed": JSON_SAFE_INTEGER + 1}}, "seed", [SAFE]),
    ("true-as-integer", "imagen-4", {"params": {"seed": True}}, "seed", ["'seed'", "must be an integer"]),
    ("float-as-integer", "imagen-4", {"params": {"seed": 1.5}}, "seed", ["'seed'", "must be an integer"]),
    ("nan", "ideogram-v3-remix", {**EDIT_ONE, "params": {"strength": math.nan}}, "strength", ["'strength'", "finite"]),
    ("inf", "ideogram-v3-remix", {**EDIT_ONE, "params": {"strength": math.inf}}, "strength", ["'strength'", "finite"]),
    ("-inf", "ideogram-v3-remix", {**EDIT_ONE, "params": {"strength": -math.inf}}, "strength", ["finite"]),
    ("huge-float", "ideogram-v3-remix", {**EDIT_ONE, "params": {"strength": 1e300}}, "strength", [SAFE]),
    ("huge-int-number", "ideogram-v3-remix", {**EDIT_ONE, "params": {"strength": 10**400}}, "strength", [SAFE]),
    ("true-as-number", "ideogram-v3-remix", {**EDIT_ONE, "params": {"strength": True}}, "strength", ["a number"]),
    ("source-range", "qwen-image-remix-image", {**EDIT_ONE, "params": {"strength": 1.5}}, "strength", ["0..1"]),
    (
        "nul-in-prompt",
        "gpt-image-2",
        {"prompt": "a cat\x00ignore"},
        "prompt",
        ["'prompt'", "U+0000", "tab, newline and carriage return"],
    ),
    ("escape-in-prompt", "gpt-image-2", {"prompt": "red \x1b[31m"}, "prompt", ["U+001B"]),
    ("lone-surrogate", "gpt-image-2", {"prompt": "a cat \ud800"}, "prompt", ["'prompt'", "U+D800", "Unicode"]),
    (
        "overlong-open-prompt",
        "gpt-image-2",
        {"prompt": "x" * (PROMPT_MAX_LENGTH + 1)},
        "prompt",
        ["'prompt'", f"at most {PROMPT_MAX_LENGTH}"],
    ),
    ("overlong-prompt", "qwen-3-text-to-image", {"prompt": "x" * 801}, "prompt", ["'prompt'", "at most 800"]),
    (
        "overlong-string",
        "gpt-image-2",
        {"params": {"callback_url": "https://a.example/" + "x" * STRING_MAX_LENGTH}},
        "callback_url",
        ["'callback_url'", f"at most {STRING_MAX_LENGTH}"],
    ),
    (
        "control-in-string",
        "flux-kontext-pro",
        {"params": {"watermark": "mine\x07"}},
        "watermark",
        ["'watermark'", "U+0007"],
    ),
    (
        "too-many-images-open",
        "gpt-image-2",
        {"kind": "edit", "image_count": IMAGE_ARRAY_MAX_ITEMS + 1},
        "images",
        ["'images'", f"at most {IMAGE_ARRAY_MAX_ITEMS}"],
    ),
    ("too-many-images", "qwen-3-edit-image", {"kind": "edit", "image_count": 4}, "images", ["'images'", "at most 3"]),
    ("one-image-field", "flux-kontext-pro", {"kind": "edit", "image_count": 2}, "images", ["'images'", "exactly one"]),
    ("no-image-field", "gpt-image-2", {"image_count": 1}, "images", ["'images'", "no input images"]),
    ("edit-without-images", "gpt-image-2", {"kind": "edit", "image_count": 0}, "images", ["'images'", "at least one"]),
    (
        "too-many-params",
        "gpt-image-2",
        {"params": {f"field_{i}": 1 for i in range(MAX_PARAMS + 1)}},
        "params",
        ["'params'", f"at most {MAX_PARAMS}"],
    ),
    ("non-string-key", "gpt-image-2", {"params": {1: "x"}}, "params", ["'params'", "strings"]),
    ("unknown-field", "gpt-image-2", {"params": {"seed": 3}}, "seed", ["'seed'", "aspect_ratio"]),
    ("object-for-scalar", "imagen-4", {"params": {"seed": {"value": 3}}}, "seed", ["'seed'", "an integer"]),
    (
        "object-in-open-list",
        "wan-2.7-image",
        {"params": {"color_palette": [{"hex": "#ffffff"}]}},
        "color_palette",
        ["'color_palette'", "objects are not allowed"],
    ),
    (
        "open-list-too-long",
        "wan-2.7-image",
        {"params": {"color_palette": ["#ffffff"] * 65}},
        "color_palette",
        ["'color_palette'", "at most 64"],
    ),
    (
        "open-list-too-deep",
        "wan-2.7-image",
        {"params": {"bbox_list": [[[[1, 2, 3, 4]]]]}},
        "bbox_list",
        ["'bbox_list'", "3 levels"],
    ),
    (
        "huge-int-in-open-list",
        "wan-2.7-image",
        {"params": {"bbox_list": [[10**400]]}},
        "bbox_list",
        ["'bbox_list'", SAFE],
    ),
    (
        "open-output-count",
        "wan-2.7-image",
        {"params": {"output_count": OUTPUT_COUNT_MAX + 1}},
        "output_count",
        ["'output_count'", f"1..{OUTPUT_COUNT_MAX}"],
    ),
    ("zero-output-count", "wan-2.7-image", {"params": {"output_count": 0}}, "output_count", [f"1..{OUTPUT_COUNT_MAX}"]),
    (
        "enum-output-count",
        "gpt-4o-image",
        {"params": {"aspect_ratio": "1:1", "output_count": 3}},
        "output_count",
        ["'output_count'", "1, 2, 4"],
    ),
]


@pytest.mark.parametrize(
    ("model", "call", "field", "needles"),
    [case[1:] for case in BAD_VALUES],
    ids=[case[0] for case in BAD_VALUES],
)
def test_bad_values_are_refused_naming_field_and_limit(
    catalog: Catalog, model: str, call: dict[str, Any], field: str, needles: list[str]
) -> None:
    call = dict(call)
    kind: RequestKind = call.pop("kind", "generate")
    # pytest.raises(CatalogError) also proves no other exception (OverflowError, ...) escapes.
    with pytest.raises(CatalogError) as err:
        check(catalog, kind, model, **call)
    message = str(err.value)
    assert err.value.field == field, message
    for needle in needles:
        assert needle in message, (needle, message)
    assert len(message) < 1000, "the message echoes a huge value"


def test_array_items_keep_their_own_limits(catalog: Catalog) -> None:
    # No field of today's contracts bounds its items (Grok's mask_indices did until its edit changed): the
    # mechanism stays, for the next contract that does.
    mask = FieldSpec(name="mask_indices", type="array", items=ItemSpec(type="integer", min=1))
    assert mask.check([1, 2], model="m") == [1, 2]
    for bad, needle in (([0], f"1..{JSON_SAFE_INTEGER}"), ([True], "an integer"), ([10**400], "1..")):
        with pytest.raises(CatalogError, match=needle.replace(".", r"\.")) as err:
            mask.check(bad, model="m")
        assert err.value.field == "mask_indices"


def test_tab_newline_and_wide_characters_are_fine(catalog: Catalog) -> None:
    prompt = "line one\n\tline two\r\nfox 🦊 and 漢字"
    assert check(catalog, "generate", "gpt-image-2", prompt=prompt).body["prompt"] == prompt
    edge = "x" * PROMPT_MAX_LENGTH
    assert check(catalog, "generate", "gpt-image-2", prompt=edge).body["prompt"] == edge
    boxes = {"bbox_list": [[[1, 2, 3, 4], [5, 6, 7, 8]]], "color_palette": ["#ffffff"], "seed": JSON_SAFE_INTEGER}
    assert check(catalog, "generate", "wan-2.7-image", params=boxes).body["bbox_list"] == boxes["bbox_list"]


# -- validate() then with_images() ---------------------------------------------------------------


def test_validate_counts_images_without_urls(catalog: Catalog) -> None:
    validated = check(catalog, "edit", "qwen-3-edit-image", image_count=3, params={"seed": 7})
    assert validated.image_count == 3 and validated.image_field is not None
    assert "source_image_urls" not in validated.body
    assert validated.path == "/api/v1/qwen_3/edit_image"
    urls = [f"https://img.example/{i}.png" for i in range(3)]
    prepared = validated.with_images(urls)
    assert prepared.body["source_image_urls"] == urls and prepared.body["seed"] == 7
    assert "source_image_urls" not in validated.body, "with_images must not change the validated body"

    # The count validated is the count built: another number would skip the limit check.
    with pytest.raises(CatalogError, match="validated as 3") as err:
        validated.with_images(urls[:2])
    assert err.value.field == "images"
    with pytest.raises(CatalogError, match=r"http\(s\) URL") as err:
        validated.with_images(["ftp://img.example/a.png", *urls[1:]])
    assert err.value.field == "source_image_urls"
    with pytest.raises(CatalogError, match="list of URLs"):
        validated.with_images("https://img.example/a.png")


def test_validate_with_a_single_url_field_and_with_no_images(catalog: Catalog) -> None:
    validated = check(catalog, "edit", "flux-kontext-pro", image_count=1)
    assert validated.with_images(["https://img.example/a.png"]).body["source_image_url"] == "https://img.example/a.png"
    text = check(catalog, "generate", "gpt-image-2")
    assert text.image_count == 0 and text.with_images([]).body == dict(text.body)


def test_required_image_field_is_satisfied_by_the_count(catalog: Catalog) -> None:
    # ideogram-v3-character-edit requires both its source image and reference_image_urls; the
    # source image comes from `images`, the references must come from params.
    validated = check(
        catalog,
        "edit",
        "ideogram-v3-character-edit",
        params={"mask_url": "https://img.example/m.png", "reference_image_urls": ["https://img.example/r.png"]},
    )
    assert validated.image_field is not None and validated.image_field.name == "source_image_url"


OLD_BODIES: list[tuple[str, RequestKind, str, dict[str, Any], list[str], list[tuple[str, Any]]]] = [
    # Bodies the one-step prepare() built before validation was split, with key order.
    (
        "text-to-image",
        "generate",
        "gpt-image-2",
        {
            "prompt": "a red fox in snow",
            "options": {"aspect_ratio": "16:9"},
            "soft_options": {"output_resolution": "1k"},
            "params": {"callback_url": "https://hooks.example/cb"},
        },
        [],
        [
            ("model", "gpt-image-2"),
            ("prompt", "a red fox in snow"),
            ("output_resolution", "1k"),
            ("aspect_ratio", "16:9"),
            ("callback_url", "https://hooks.example/cb"),
        ],
    ),
    (
        "text-to-image-defaults",
        "generate",
        "gpt-image-2",
        {"prompt": "a red fox", "soft_options": {"aspect_ratio": "auto", "output_resolution": "1k"}},
        [],
        [("model", "gpt-image-2"), ("prompt", "a red fox"), ("aspect_ratio", "auto"), ("output_resolution", "1k")],
    ),
    (
        "edit",
        "edit",
        "gpt-image-2",
        {"prompt": "make it night", "options": {"output_resolution": "2k"}, "soft_options": {"aspect_ratio": "auto"}},
        ["https://img.example/a.png", "https://img.example/b.png"],
        [
            ("model", "gpt-image-2"),
            ("prompt", "make it night"),
            ("aspect_ratio", "auto"),
            ("output_resolution", "2k"),
            ("source_image_urls", ["https://img.example/a.png", "https://img.example/b.png"]),
        ],
    ),
    (
        "edit-alias",
        "edit",
        "gpt-image-2-image-to-image",
        {"prompt": "make it night", "soft_options": {"aspect_ratio": "auto", "output_resolution": "1k"}},
        ["https://img.example/a.png"],
        [
            ("model", "gpt-image-2"),
            ("prompt", "make it night"),
            ("aspect_ratio", "auto"),
            ("output_resolution", "1k"),
            ("source_image_urls", ["https://img.example/a.png"]),
        ],
    ),
]


@pytest.mark.parametrize(
    ("kind", "model", "args", "urls", "body"), [c[1:] for c in OLD_BODIES], ids=[c[0] for c in OLD_BODIES]
)
def test_with_images_builds_the_body_prepare_built(
    catalog: Catalog,
    kind: RequestKind,
    model: str,
    args: dict[str, Any],
    urls: list[str],
    body: list[tuple[str, Any]],
) -> None:
    validated = catalog.validate(kind, model, image_count=len(urls), **args)
    prepared = validated.with_images(urls)
    assert list(prepared.body.items()) == body
    assert prepared.path == f"/api/v1/gpt_image_2/{'text_to_image' if kind == 'generate' else 'edit_image'}"
    assert (prepared.action, prepared.model) == (validated.action, validated.model)
    # prepare() is the same two steps in one call.
    old = catalog.prepare(kind, model, image_urls=urls or None, **args)
    assert list(old.body.items()) == body and old.path == prepared.path


# -- max_outputs ------------------------------------------------------------------------------------

MAX_OUTPUTS = {
    "gpt-image-2": 1,
    "flux-2-max-text-to-image": 1,  # output_count enum [1]
    "recraft-crisp-upscale": 1,
    "gpt-4o-image": 4,  # output_count enum 1, 2, 4
    "ideogram-v3-text-to-image": 4,
    "seedream-v4-text-to-image": 6,
    "seedream-4.5-text-to-image": OUTPUT_COUNT_MAX,  # open output_count
    "wan-2.7-image": OUTPUT_COUNT_MAX,
    "midjourney-v8.1": 5,  # grid + 4 split images
    "seedream-5-pro-layer-decomposition": DECOMPOSE_LAYERS_MAX_OUTPUTS,
}


@pytest.mark.parametrize(("slug", "expected"), sorted(MAX_OUTPUTS.items()))
def test_max_outputs_per_family(catalog: Catalog, slug: str, expected: int) -> None:
    specs = [a.models[slug] for a in catalog.actions if slug in a.models]
    assert specs and all(spec.max_outputs == expected for spec in specs)


def test_max_outputs_covers_every_count_a_model_accepts(catalog: Catalog) -> None:
    for action in catalog.actions:
        for spec in action.models.values():
            assert spec.max_outputs >= 1
            count = spec.fields.get("output_count")
            if count is not None:
                top = max(count.enum) if count.enum else count.value_bounds[1]
                assert spec.max_outputs >= top, spec.slug
                with pytest.raises(CatalogError):
                    count.check(int(top) + 1, model=spec.slug)
    listed = {(m["model"], m["action"]): m["max_outputs"] for m in catalog.describe()}
    assert listed[("gpt-4o-image", "text_to_image")] == 4


# -- the contract's rules across fields ------------------------------------------------------------

GPT_25 = ("gpt-image-2.5-flare", "gpt-image-2.5-sunburst")
TOOL_DEFAULTS = SOFT_DEFAULTS  # what generate_image fills in


@pytest.mark.parametrize("slug", GPT_25)
@pytest.mark.parametrize("kind", ["generate", "edit"])
@pytest.mark.parametrize(
    ("options", "field", "allowed_has", "allowed_lacks"),
    [
        ({"output_resolution": "4k", "aspect_ratio": "1:1"}, "aspect_ratio", "16:9", ["1:1", "auto"]),
        ({"output_resolution": "4k", "aspect_ratio": "auto"}, "aspect_ratio", "3:2", ["1:1", "auto"]),
        ({"output_resolution": "2k", "aspect_ratio": "auto"}, "aspect_ratio", "1:1", ["auto"]),
        ({"output_resolution": "4k"}, "output_resolution", "1k", ["2k", "4k"]),
        ({"output_resolution": "2k"}, "output_resolution", "1k", ["2k", "4k"]),
    ],
)
def test_gpt_image_25_rules_are_refused_naming_the_field_and_what_is_allowed(
    catalog: Catalog,
    slug: str,
    kind: RequestKind,
    options: dict[str, str],
    field: str,
    allowed_has: str,
    allowed_lacks: list[str],
) -> None:
    with pytest.raises(CatalogError) as err:
        catalog.validate(
            kind, slug, prompt="a fox", image_count=16 if kind == "edit" else 0, options=options, soft_options=TOOL_DEFAULTS
        )
    assert err.value.field == field and f"'{field}'" in str(err.value)
    assert err.value.allowed is not None and allowed_has in err.value.allowed
    assert not set(allowed_lacks) & set(err.value.allowed)
    if field == "output_resolution":  # the way out is named too: give an aspect ratio
        assert "give 'aspect_ratio'" in str(err.value) and "16:9" in str(err.value)


def test_a_tool_default_never_takes_the_blame_for_a_rule(catalog: Catalog) -> None:
    # generate_image fills in aspect_ratio auto; at 4k with a ratio of the user's own, the default steps aside.
    done = catalog.validate(
        "generate", "gpt-image-2.5-flare", prompt="a fox", image_count=0,
        options={"output_resolution": "4k", "aspect_ratio": "16:9"}, soft_options=TOOL_DEFAULTS,
    )
    assert dict(done.body) == {
        "model": "gpt-image-2.5-flare", "prompt": "a fox", "aspect_ratio": "16:9", "output_resolution": "4k"
    }
    plain = catalog.validate("generate", "gpt-image-2.5-flare", prompt="a fox", image_count=0, soft_options=TOOL_DEFAULTS)
    assert plain.body["aspect_ratio"] == "auto" and plain.body["output_resolution"] == "1k"
    assert catalog.resolve("gpt-image-2.5-sunburst", "edit")[0].path == "/api/v1/gpt_image_2_5/edit_image"


def test_required_any_and_presence_rules(catalog: Catalog) -> None:
    action, spec = catalog.resolve("grok-imagine-segment-map", "edit")
    assert action.path == "/api/v1/grok_imagine/segment_map" and spec.slug == "grok-imagine-image-2-0"
    assert catalog.validate("edit", "grok-imagine-segment-map", prompt=None, image_count=1).with_images(
        ["https://example.com/a.png"]
    ).body == {"model": "grok-imagine-image-2-0", "image_url": "https://example.com/a.png"}
    with pytest.raises(CatalogError) as err:
        catalog.validate("edit", "grok-imagine-segment-map", prompt=None, image_count=1, params={"source_task_id": "t"})
    assert err.value.field == "source_task_id" and "'image_url' is given" in str(err.value)
    with pytest.raises(CatalogError) as err:
        spec.check_rules({"model": "grok-imagine-image-2-0"})
    assert err.value.field == "image_url" and "'image_url' or 'source_task_id'" in str(err.value)
    spec.check_rules({"model": "grok-imagine-image-2-0", "source_task_id": "t"})


def test_todays_contract_changes_reach_the_tools(catalog: Catalog) -> None:
    with pytest.raises(CatalogError) as err:
        catalog.validate("upscale", "topaz-upscale-image", prompt=None, image_count=1, options={"upscale_factor": 8})
    assert err.value.field == "upscale_factor" and err.value.allowed == [1, 2, 4]
    # Grok Image 2.0's edit takes source images and a ratio now, never a source task or mask indices.
    grok = catalog.validate(
        "edit", "grok-imagine-image-2-0", prompt="make it dusk", image_count=5, options={"aspect_ratio": "16:9"}
    )
    assert grok.action.path == "/api/v1/grok_imagine/edit_image" and grok.image_field is not None
    assert grok.image_field.name == "source_image_urls"
    for gone in ("source_task_id", "mask_indices"):
        with pytest.raises(CatalogError) as err:
            check(catalog, "edit", "grok-imagine-image-2-0", params={gone: "x", "aspect_ratio": "1:1"})
        assert err.value.field == gone
    # Grok's "upscale" upscales a video: no image tool takes it.
    assert not [a for a in catalog.actions if a.key == "grok-imagine/upscale-image"]
