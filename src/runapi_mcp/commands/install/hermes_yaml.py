"""Hermes' ``config.yaml``, edited through ruamel.yaml's round trip: the entry set, the file's comments, key
order, quoting and indentation kept, and the edit read back before it is written (see the comment below)."""

from __future__ import annotations

import copy
import io
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from difflib import SequenceMatcher
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import CommentMark, MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.scalarstring import DoubleQuotedScalarString
from ruamel.yaml.tokens import CommentToken

from runapi_mcp.commands.install.clients import ASK_EVERY_PAID_CALL, CONFIRM_VAR, KEY_VAR, STALE_TRUST, InstallError
from runapi_mcp.commands.install.keys import KeyPlan
from runapi_mcp.commands.install.launch import Launch

# Hermes' config.yaml is long and commented. ruamel.yaml reads it into a document that remembers comments,
# key order and quoting, the entry is set in that document, and the document is written back. Two things
# are added to a plain round trip:
#
# - Comments after a block (blank lines, the next section's heading) belong to the last value before them in
#   ruamel's model, so a key added after that value would land below them. They are moved to follow the new
#   key, which leaves them where they were in the file: before the next section.
# - ruamel writes the whole file in one indentation (and drops lines holding only spaces). So the lines the
#   edit changed in ruamel's rendering are carried into the original text instead, when the lines around
#   them are the same there, and the result is read back to be sure it says the same; only when it does
#   not is ruamel's rendering of the whole file used.
#
# Keys that appear twice are refused: Hermes (PyYAML) silently reads only the last of them, so an entry put
# in the other block would be reported as installed and never be read. Inline (flow style) server blocks,
# tabs, several documents and files that are not YAML are refused too, and the file is left unchanged.


class YamlShapeError(InstallError):
    """The YAML cannot be read, or not edited safely; the file is left alone."""


class YamlSyntaxError(YamlShapeError):
    """The file is not valid YAML: Hermes cannot read it either."""


class YamlDuplicateKeyError(YamlShapeError):
    """A key appears twice in one mapping; Hermes reads only the last."""

    def __init__(self, where: Sequence[str], lines: tuple[int, int]) -> None:
        self.where, self.lines = tuple(where), lines
        self.summary = f"the key {'.'.join(self.where)} appears twice (lines {lines[0]} and {lines[1]})"
        super().__init__(
            f"{self.summary}; Hermes reads only the last one, so whatever is under the first is ignored. Merge the "
            f"two into one {self.where[-1]}: block"
        )


_HERMES_KEY = "mcp_servers"


def _yaml(mapping: int = 2, sequence: int = 2, offset: int = 0) -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 1 << 30  # never fold a long line the file has on one line
    yaml.indent(mapping=mapping, sequence=max(sequence, offset + 2), offset=offset)
    return yaml


def _problem(exc: Exception) -> str:
    if isinstance(exc, MarkedYAMLError):
        line = f", line {exc.problem_mark.line + 1}" if exc.problem_mark is not None else ""
        return f"{exc.problem or exc.context or 'not YAML'}{line}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _compose(text: str) -> Node | None:
    try:
        node: Node | None = _yaml().compose(text)
    except YAMLError as exc:
        raise YamlSyntaxError(f"it is not valid YAML ({_problem(exc)})") from None
    return node


def _refuse_duplicates(node: Node, where: tuple[str, ...], seen: set[int]) -> None:
    if id(node) in seen:  # an alias: checked where its anchor is
        return
    seen.add(id(node))
    if isinstance(node, MappingNode):
        first: dict[tuple[str | None, str], int] = {}
        for key, value in node.value:
            name = str(key.value) if isinstance(key, ScalarNode) else "?"
            if isinstance(key, ScalarNode) and name != "<<":
                line = key.start_mark.line + 1
                if (key.tag, name) in first:
                    raise YamlDuplicateKeyError((*where, name), (first[key.tag, name], line))
                first[key.tag, name] = line
            _refuse_duplicates(value, (*where, name), seen)
    elif isinstance(node, SequenceNode):
        for index, item in enumerate(node.value):
            _refuse_duplicates(item, (*where, f"[{index}]"), seen)


def _load(text: str) -> Any:
    """``text`` loaded for a round trip; a key that appears twice is refused (ruamel.yaml's own check)."""
    try:
        return _yaml().load(text)
    except DuplicateKeyError as exc:
        node = _compose(text)  # to say where the duplicate is, by its path
        if node is not None:
            _refuse_duplicates(node, (), set())
        raise YamlSyntaxError(f"it has a duplicate key ({_problem(exc)})") from None
    except YAMLError as exc:
        raise YamlSyntaxError(f"it is not valid YAML ({_problem(exc)})") from None


_PLAIN_DOCS: OrderedDict[str, Any] = OrderedDict()  # text -> its plain data: one edit reads a text several times


_PLAIN_DOCS_LOCK = threading.Lock()


def _plain_doc(text: str) -> Any:
    """``text`` (LF line ends) as plain data, remembered for the next few calls: do not change what it returns."""
    with _PLAIN_DOCS_LOCK:
        if text in _PLAIN_DOCS:
            return _PLAIN_DOCS[text]
    plain = plain_data(_load(text))
    _remember(text, plain)
    return plain


def _remember(text: str, plain: Any) -> None:
    with _PLAIN_DOCS_LOCK:
        _PLAIN_DOCS[text] = plain
        while len(_PLAIN_DOCS) > 8:
            _PLAIN_DOCS.popitem(last=False)


def plain_data(value: Any) -> Any:
    """A loaded document as plain dicts, lists, strings and numbers (to compare two of them)."""
    if isinstance(value, Mapping):
        return {(tuple(k) if isinstance(k, list) else plain_data(k)): plain_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_data(v) for v in value]
    for kind in (bool, str, int, float):
        if isinstance(value, kind):
            return kind(value)
    return value


def hermes_servers(text: str) -> dict[str, dict[str, Any]]:
    """The ``mcp_servers`` entries of a Hermes config (command, args, env, timeout, ...), as Hermes reads them.

    Raises :class:`YamlDuplicateKeyError` for a key that appears twice, :class:`YamlSyntaxError` for text that
    is not YAML, and :class:`YamlShapeError` for YAML that is not a mapping of settings.
    """
    doc = copy.deepcopy(_plain_doc(text.replace("\r\n", "\n")))
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise YamlShapeError(f"the file holds a {_yaml_kind(doc)}, not a mapping of settings")
    servers = doc.get(_HERMES_KEY)
    if not servers:
        return {}
    if not isinstance(servers, dict):
        raise YamlShapeError(f"{_HERMES_KEY} is a {_yaml_kind(servers)}, not a mapping of servers")
    return {str(name): entry if isinstance(entry, dict) else {} for name, entry in servers.items()}


def _yaml_kind(value: Any) -> str:
    return "list" if isinstance(value, list) else "mapping" if isinstance(value, dict) else "single value"


def yaml_str(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid YAML double-quoted scalar


def _flow_list(items: Sequence[str]) -> CommentedSeq:
    seq = CommentedSeq([DoubleQuotedScalarString(item) for item in items])
    seq.fa.set_flow_style()
    return seq


def _new_entry(launch: Launch, key: KeyPlan, ask: bool) -> CommentedMap:
    entry = CommentedMap()
    entry["command"] = DoubleQuotedScalarString(launch.command)
    entry["args"] = _flow_list(launch.args)
    env = CommentedMap()
    if key.op == "set":
        env[KEY_VAR] = DoubleQuotedScalarString(key.value)
    if ask:
        env[CONFIRM_VAR] = DoubleQuotedScalarString(ASK_EVERY_PAID_CALL)
    if env:
        entry["env"] = env
    return entry


def hermes_snippet(name: str, launch: Launch, key: KeyPlan, *, ask: bool) -> str:
    """The ``mcp_servers`` block with this server's entry alone, as it is written into a Hermes config."""
    out = io.StringIO()
    _yaml().dump(CommentedMap([(_HERMES_KEY, CommentedMap([(name, _new_entry(launch, key, ask))]))]), out)
    return out.getvalue()


def _own_keys(mapping: CommentedMap) -> list[Any]:
    """The keys written in ``mapping`` itself, in order (not those a ``<<`` merge key brings in)."""
    return [key for key, _ in mapping.non_merged_items()]


# Where ruamel keeps the comment after a value: slot 2 of a mapping's key, slot 0 of a list's item.
def _last_leaf(container: CommentedMap | CommentedSeq, key: Any) -> tuple[CommentedMap | CommentedSeq, Any]:
    """The innermost last key (or item) of the block value at ``container[key]``, where comments after it live."""
    value = container[key]
    if isinstance(value, (CommentedMap, CommentedSeq)) and len(value) and not value.fa.flow_style():
        return _last_leaf(value, _own_keys(value)[-1] if isinstance(value, CommentedMap) else len(value) - 1)
    return container, key


def _slot(container: CommentedMap | CommentedSeq) -> int:
    return 2 if isinstance(container, CommentedMap) else 0


def _take_trailing(container: CommentedMap | CommentedSeq, key: Any) -> str:
    """Detach the lines of comments (and blank lines) after the value at ``container[key]``; its own end-of-line
    comment stays."""
    leaf, leaf_key = _last_leaf(container, key)
    slots = leaf.ca.items.get(leaf_key)
    token = slots[_slot(leaf)] if slots and len(slots) > _slot(leaf) else None
    if not isinstance(token, CommentToken) or "\n" not in token.value:
        return ""
    own, rest = token.value.split("\n", 1)
    if not rest:
        return ""
    if own.strip():
        token.value = own + "\n"
    else:
        slots[_slot(leaf)] = None
    return rest


def _give_trailing(container: CommentedMap | CommentedSeq, key: Any, rest: str, *, inside: bool = True) -> None:
    """Attach comment lines ``rest`` (from :func:`_take_trailing`) after the value at ``container[key]`` (after
    its key's own line when not ``inside``)."""
    if not rest:
        return
    leaf, leaf_key = _last_leaf(container, key) if inside else (container, key)
    slot = _slot(leaf)
    slots = leaf.ca.items.setdefault(leaf_key, [None, None, None, None])
    while len(slots) <= slot:
        slots.append(None)
    token = slots[slot]
    if isinstance(token, CommentToken):
        token.value = (token.value if token.value.endswith("\n") else token.value + "\n") + rest
    else:
        slots[slot] = CommentToken("\n" + rest, CommentMark(0), None)


def _put(mapping: CommentedMap, key: str, value: Any, *, after: str | None = None, first: bool = False) -> None:
    """``mapping[key] = value``, comments kept where they were in the file.

    A value replaced in place hands the comment lines that followed it to the new value. A new key goes
    first, after ``after`` or last, and takes over the comment lines that followed the key before it.
    """
    if key in mapping:
        rest = _take_trailing(mapping, key)
        mapping[key] = value
        _give_trailing(mapping, key, rest)
        return
    keys = _own_keys(mapping)
    index = 0 if first else keys.index(after) + 1 if after in keys else len(keys)
    rest = _take_trailing(mapping, keys[index - 1]) if index else ""
    mapping.insert(index, key, value)
    _give_trailing(mapping, key, rest)


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, (CommentedMap, dict)) and not value)


def _block_map(value: Any, where: str) -> CommentedMap:
    if not isinstance(value, CommentedMap):
        raise YamlShapeError(f"{where} is a {_yaml_kind(plain_data(value))}, not a mapping")
    if value.fa.flow_style():
        raise YamlShapeError(f"{where} is written inline (flow style)")
    return value


def _set_env(entry: CommentedMap, where: str, var: str, value: str) -> None:
    """``entry.env[var] = value`` (as a quoted string), the env block made when there is none."""
    env = entry.get("env")
    if _empty(env):
        _put(entry, "env", CommentedMap([(var, DoubleQuotedScalarString(value))]))
    elif plain_data(_block_map(env, f"{where}.env").get(var)) != value:
        _put(env, var, DoubleQuotedScalarString(value))


def _drop_env(entry: CommentedMap, var: str) -> None:
    """Take ``var`` out of the entry's env block, the comments after it kept in place (``env: {}`` when it was
    the only one)."""
    env = entry.get("env")
    if not isinstance(env, CommentedMap) or var not in env:
        return
    index = _own_keys(env).index(var)
    rest = _take_trailing(env, var)
    del env[var]
    if not env:
        entry["env"] = CommentedMap()
        entry["env"].fa.set_flow_style()
        _give_trailing(entry, "env", rest)
    elif index:
        _give_trailing(env, _own_keys(env)[index - 1], rest)
    else:
        _give_trailing(entry, "env", rest, inside=False)


def _drop_key(mapping: CommentedMap, key: str) -> None:
    """Take ``key`` out of ``mapping``, the comment lines after its value handed to the key before it."""
    index = _own_keys(mapping).index(key)
    rest = _take_trailing(mapping, key)
    del mapping[key]
    keys = _own_keys(mapping)
    if keys:
        _give_trailing(mapping, keys[max(index - 1, 0)], rest)


def _edit_hermes(doc: CommentedMap, name: str, launch: Launch, key: KeyPlan, ask: bool) -> None:
    """Set the entry ``name`` in a loaded Hermes config: added, or brought up to date with its other keys kept."""
    servers = doc[_HERMES_KEY]
    if _empty(servers):
        _put(doc, _HERMES_KEY, CommentedMap([(name, _new_entry(launch, key, ask))]))
        return
    servers = _block_map(servers, _HERMES_KEY)
    if _empty(servers.get(name)):
        _put(servers, name, _new_entry(launch, key, ask))
        return
    where = f"{_HERMES_KEY}.{name}"
    entry = _block_map(servers[name], where)
    if plain_data(entry.get("command")) != launch.command:
        _put(entry, "command", DoubleQuotedScalarString(launch.command), first=True)
    if plain_data(entry.get("args")) != list(launch.args):
        _put(entry, "args", _flow_list(launch.args), after="command")
    if key.op == "set":
        _set_env(entry, where, KEY_VAR, key.value)
    elif key.op == "remove":
        _drop_env(entry, KEY_VAR)
    env = entry.get("env")
    if ask and not (isinstance(env, Mapping) and CONFIRM_VAR in env):
        _set_env(entry, where, CONFIRM_VAR, ASK_EVERY_PAID_CALL)  # a threshold of the user's own is kept
    elif not ask:
        _drop_env(entry, CONFIRM_VAR)
    if plain_data(entry.get("trust")) == STALE_TRUST:
        _drop_key(entry, "trust")  # an earlier install's promise: Hermes reads no `trust` key


def _layout(doc: CommentedMap) -> tuple[int, int, int]:
    """The file's indentation for ruamel (mapping, sequence, offset): the servers block's first, then the file's.

    Read from where ruamel found each key and item (an item's dash is taken to be two columns before it)."""
    found: dict[str, tuple[int, ...]] = {}

    def visit(mapping: CommentedMap, keys: Sequence[Any], depth: int) -> None:
        for key in keys:
            if depth > 50 or len(found) == 2:
                return
            value = mapping[key]
            try:
                column = mapping.lc.key(key)[1]
                if isinstance(value, CommentedMap) and value and not value.fa.flow_style():
                    inner = _own_keys(value)
                    found.setdefault("mapping", (value.lc.key(inner[0])[1] - column,))
                    visit(value, inner, depth + 1)
                elif isinstance(value, CommentedSeq) and value and not value.fa.flow_style():
                    item = value.lc.item(0)[1] - column
                    found.setdefault("sequence", (item, item - 2))
                    for entry in value:
                        if isinstance(entry, CommentedMap):
                            visit(entry, _own_keys(entry), depth + 1)
            except (KeyError, IndexError, TypeError):  # no position recorded: nothing to learn here
                continue

    if _HERMES_KEY in _own_keys(doc):
        visit(doc, [_HERMES_KEY], 0)
    visit(doc, _own_keys(doc), 0)
    mapping = found.get("mapping", (2,))[0]
    sequence, offset = found.get("sequence", (2, 0))
    return max(mapping, 1), sequence, max(offset, 0)


def _carry_over(original: str, before: str, after: str) -> str | None:
    """``original`` with the change from ``before`` to ``after`` (two renderings of it by ruamel) made in it.

    Each changed run of lines is replaced in ``original`` where its neighbours are the same lines as in
    ``before``; None when some run's neighbourhood reads differently there (then there is no safe place).
    """
    old, base, new = (t.splitlines(keepends=True) for t in (original, before, after))
    strip = [line.rstrip() for line in base]
    to_old: dict[int, int] = {}
    for block in SequenceMatcher(None, strip, [line.rstrip() for line in old], autojunk=False).get_matching_blocks():
        to_old.update((block.a + k, block.b + k) for k in range(block.size))
    edits: list[tuple[int, int, list[str]]] = []
    for tag, i1, i2, j1, j2 in SequenceMatcher(
        None, strip, [line.rstrip() for line in new], autojunk=False
    ).get_opcodes():
        if tag == "equal":
            continue
        if any(i not in to_old for i in range(i1, i2)):
            return None
        if i1 > 0 and i1 - 1 not in to_old:
            return None
        if i1 < len(base) and i2 < len(base) and i2 not in to_old:
            return None
        start = to_old[i1] if i1 < i2 else (to_old[i1 - 1] + 1 if i1 else 0)
        end = start + (i2 - i1)
        if (i1 > 0 and to_old[i1 - 1] != start - 1) or (i2 < len(base) and to_old[i2] != end):
            return None
        if i2 == len(base) and end != len(old):
            return None
        if any(to_old[i] != start + (i - i1) for i in range(i1, i2)):
            return None
        edits.append((start, end, new[j1:j2]))
    for start, end, lines in reversed(edits):
        old[start:end] = lines
    return "".join(old)


def hermes_updated(text: str, name: str, launch: Launch, key: KeyPlan, *, ask: bool) -> str:
    """``text`` (a Hermes config.yaml) with the entry ``name`` added or brought up to date, all else intact.

    Comments, key order, quoting and the file's layout stay; ``text`` itself comes back when the entry is
    already as wanted. ``ask``: the entry's env carries ``RUNAPI_MCP_CONFIRM_ABOVE_CENTS`` (``"0"`` unless it
    has a value of its own), else it carries none. A ``trust: untrusted`` an earlier install wrote goes (Hermes
    does not read it). Raises :class:`YamlShapeError` (nothing to write) when the file cannot be edited safely.
    """
    crlf = "\r\n" in text
    body = text.replace("\r\n", "\n")
    if body and not body.endswith("\n"):
        body += "\n"
    doc = _load(body)
    _remember(body, plain_data(doc))  # for the checks that read it again
    if doc is not None and not isinstance(doc, CommentedMap):
        raise YamlShapeError(f"the file holds a {_yaml_kind(plain_data(doc))}, not a mapping of settings")
    if doc is not None and doc.fa.flow_style():
        raise YamlShapeError("the file is one inline (flow style) mapping")
    if doc is None or _HERMES_KEY not in doc:
        # A new block at the end of the file, after everything in it (comments included).
        gap = "\n" if body.strip() and body.splitlines()[-1].strip() else ""
        new = body + gap + hermes_snippet(name, launch, key, ask=ask)
        if doc is None or _reads_as(
            new, plain_data(doc) | {_HERMES_KEY: {name: plain_data(_new_entry(launch, key, ask))}}
        ):
            return new.replace("\n", "\r\n") if crlf else new
        # The end of the file is not the end of the settings (an explicit document end, '...'): add it in there.
    yaml = _yaml(*_layout(doc))
    rendered = io.StringIO()
    yaml.dump(doc, rendered)  # the file as ruamel writes it, to compare the edited rendering with
    before = rendered.getvalue()
    if _HERMES_KEY in doc:
        _edit_hermes(doc, name, launch, key, ask)
    else:
        doc[_HERMES_KEY] = CommentedMap([(name, _new_entry(launch, key, ask))])
    rendered = io.StringIO()
    yaml.dump(doc, rendered)
    after = rendered.getvalue()
    if after == before:
        return text
    new = _carry_over(body, before, after) or after
    if new != after and not _reads_as(new, plain_data(doc)):
        new = after
    return new.replace("\n", "\r\n") if crlf else new


def _reads_as(text: str, expected: Any) -> bool:
    try:
        return bool(_plain_doc(text) == expected)
    except YamlShapeError:
        return False


def check_hermes_edit(old: str, new: str, name: str, launch: Launch, key: KeyPlan, *, ask: bool) -> None:
    """Read the edited text back (and with PyYAML, which Hermes uses, when it is installed): refuse an edit that
    went wrong."""
    problems: list[str] = []
    try:
        entry: dict[str, Any] | None = hermes_servers(new).get(name)
    except YamlShapeError as exc:
        entry, problems = None, [f"the result cannot be read back ({exc})"]
    if not problems and (not entry or entry.get("command") != launch.command or entry.get("args") != list(launch.args)):
        problems.append("the entry does not read back as written")
    env = (entry or {}).get("env") or {}
    if key.op == "set" and (not isinstance(env, dict) or env.get(KEY_VAR) != key.value):
        problems.append(f"{KEY_VAR} does not read back as written")
    if key.op == "remove" and isinstance(env, dict) and KEY_VAR in env:
        problems.append(f"{KEY_VAR} is still there")
    if isinstance(env, dict) and ask != (CONFIRM_VAR in env):
        problems.append(f"{CONFIRM_VAR} is {'missing' if ask else 'still there'}")
    loaders: list[Callable[[str], Any]] = [lambda text: copy.deepcopy(_plain_doc(text.replace("\r\n", "\n")))]
    try:
        import yaml as pyyaml  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        pass
    else:
        loaders.append(pyyaml.safe_load)
    for load in loaders if not problems else []:
        try:
            before, after = load(old) or {}, load(new) or {}
        except Exception as exc:
            problems.append(f"the result is not valid YAML ({exc})")
            break
        servers = after.get(_HERMES_KEY) if isinstance(after, dict) else None
        got = (servers.get(name) if isinstance(servers, dict) else None) or {}
        if got.get("command") != launch.command or got.get("args") != list(launch.args):
            problems.append("YAML readers see a different entry")
        for doc in (before, after):
            if not isinstance(doc, dict):
                continue
            if isinstance(doc.get(_HERMES_KEY), dict):
                doc[_HERMES_KEY].pop(name, None)
                if not doc[_HERMES_KEY]:
                    doc.pop(_HERMES_KEY)
            elif doc.get(_HERMES_KEY) is None:
                doc.pop(_HERMES_KEY, None)
        if before != after:
            problems.append("something besides the entry changed")
    if problems:
        raise InstallError(f"editing the YAML went wrong ({'; '.join(problems)}); the file was left unchanged.")
