"""Hermes Agent itself against this server: before a paid call Hermes asks, before a read-only call it does not.

    .venv/bin/python bench/hermes_check.py [--hermes-python PATH] [--venv DIR] [--no-install]

hermes-agent (0.19.0, the newest on PyPI when written) pins ``mcp==1.26.0`` (its ``mcp`` extra) while this
package needs ``mcp>=2.3``, so the two cannot share a venv: the check uses an interpreter that has
``hermes-agent[mcp]`` (``--hermes-python``, or ``RUNAPI_HERMES_PYTHON``), else the venv at ``--venv``
(default ``$TMPDIR/runapi-mcp-hermes/venv``), which it creates and fills from PyPI with ``pip install
"hermes-agent[mcp]"`` when it is missing (about 235 MB and a minute; ``--no-install`` skips that). When no
Hermes can be had it prints ``SKIP`` and why, and exits 0.

What runs, all on this machine (no key, no RunAPI; only the install reaches PyPI):

1. The RunAPI simulator.
2. ``runapi-mcp install hermes --api-key-from-env`` (the default, which asks) and ``runapi-mcp install hermes
   --api-key-from-env --name runapi_full --trust full``: the commands a user runs, writing a throwaway
   ``HERMES_HOME`` (config.yaml, and the key into its .env). Before they run, the file holds the two entries'
   ``env`` with what a user never sets: the simulator's address and a scratch picture library.
3. In Hermes' own interpreter, this script again (``--driver``): Hermes reads that config.yaml
   (``hermes_cli.config``), starts both servers over stdio with its own MCP client and elicitation handler
   (``tools.mcp_tool.discover_mcp_tools``), and each call goes through ``model_tools.handle_function_call``, the
   dispatcher a model's tool call takes. Only the user is played: the keyboard Hermes' approval prompt reads
   (``input``), and the approve/deny buttons of its gateway (``tools.approval.resolve_gateway_approval``, what a
   Telegram, Slack or TUI button calls).

The checks: read-only calls (list_models, check_balance, list_tasks) never reach Hermes' elicitation handler;
each generate_image does, before anything is created: denied, nothing is created; approved ([o]nce, or the
gateway's button), the task is created once and finishes; the ``--trust full`` entry is never asked. Counted
in Hermes' own handler (its ``metrics``) and in the simulator (creates, by prompt). One ``info`` line shows
what Hermes 0.19's classic prompt_toolkit terminal does (declines unseen: its elicitation path passes no
approval callback) without counting. Exit status 1 if a check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VENV = Path(tempfile.gettempdir()) / "runapi-mcp-hermes" / "venv"
HERMES_REQUIREMENT = "hermes-agent[mcp]"
HERMES_PYTHON_VAR = "RUNAPI_HERMES_PYTHON"
SIM_KEY = "sk-sim-hermes-check-0123456789abcdef"
ASK, FULL = "runapi", "runapi_full"  # the two entries' names
INSTALL_TIMEOUT_S = 900
DRIVER_TIMEOUT_S = 300
REPL_INFO = "Hermes 0.19 classic terminal (hermes, hermes --cli)"

# The driver's steps: (step, server, tool, arguments, how the user answers). The prompt names the step, so the
# simulator's creates say which steps created a task.
STEPS: list[tuple[str, str, str, dict[str, Any], str]] = [
    ("list_models", ASK, "list_models", {}, "none"),
    ("check_balance", ASK, "check_balance", {}, "none"),
    ("list_tasks", ASK, "list_tasks", {}, "none"),
    ("deny", ASK, "generate_image", {"prompt": "step deny: a red fox"}, "keyboard:d"),
    ("once", ASK, "generate_image", {"prompt": "step once: a red fox"}, "keyboard:o"),
    ("gateway", ASK, "generate_image", {"prompt": "step gateway: a red fox"}, "gateway:once"),
    ("repl", ASK, "generate_image", {"prompt": "step repl: a red fox"}, "repl"),
    ("full", FULL, "generate_image", {"prompt": "step full: a red fox"}, "none"),
]


# -- the driver: runs in Hermes' interpreter, imports only Hermes and the standard library ---------------------


def _tool_name(server: str, tool: str) -> str:
    return f"mcp__{server}__{tool}"


def drive(home: str, out_path: str) -> int:
    """Connect Hermes to the servers in ``home``/config.yaml and run STEPS; the outcome as JSON at ``out_path``."""
    import builtins

    os.environ["HERMES_HOME"] = home
    os.environ.pop("HERMES_GATEWAY_SESSION", None)
    answers: list[str] = []
    keyboard: list[str] = []

    def keyboard_input(prompt: object = "") -> str:  # the user at the terminal Hermes' approval prompt reads
        answer = answers.pop(0) if answers else ""
        keyboard.append(str(prompt))
        print(f"{prompt}{answer}")
        return answer

    builtins.input = keyboard_input
    metadata = importlib.import_module("importlib.metadata")
    mcp_tool = importlib.import_module("tools.mcp_tool")
    model_tools = importlib.import_module("model_tools")
    approval = importlib.import_module("tools.approval")
    started = time.monotonic()
    registered = list(mcp_tool.discover_mcp_tools())
    report: dict[str, Any] = {
        "hermes": metadata.version("hermes-agent"),
        "mcp": metadata.version("mcp"),
        "connect_s": round(time.monotonic() - started, 2),
        "tools": registered,
        "steps": [],
    }
    gateway_asked: list[dict[str, Any]] = []

    def gateway_button(data: dict[str, Any]) -> None:  # a chat's approval message; the user presses "once"
        gateway_asked.append({"command": data.get("command"), "description": data.get("description")})
        threading.Timer(0.2, approval.resolve_gateway_approval, args=("default", "once")).start()

    for step, server, tool, arguments, how in STEPS:
        handler = mcp_tool._servers[server]._elicitation
        before = dict(handler.metrics) if handler is not None else {}
        answers[:] = [how.split(":", 1)[1]] if how.startswith("keyboard:") else []
        keyboard.clear()
        gateway_asked.clear()
        screen = io.StringIO()
        with contextlib.ExitStack() as stack:
            stack.enter_context(contextlib.redirect_stdout(screen))
            if how.startswith("gateway:"):
                os.environ["HERMES_GATEWAY_SESSION"] = "1"
                approval.register_gateway_notify("default", gateway_button)
                stack.callback(os.environ.pop, "HERMES_GATEWAY_SESSION", None)
                stack.callback(approval.unregister_gateway_notify, "default")
            if how == "repl":
                # What `hermes --cli` has while its prompt_toolkit application runs: an app on the (shared)
                # default app session. Hermes' approval prompt sees it and declines rather than read stdin.
                pt_input = importlib.import_module("prompt_toolkit.input")
                pt_output = importlib.import_module("prompt_toolkit.output")
                pt_app = importlib.import_module("prompt_toolkit.application")
                pt_current = importlib.import_module("prompt_toolkit.application.current")
                pipe = stack.enter_context(pt_input.create_pipe_input())
                stack.enter_context(pt_current.set_app(pt_app.Application(input=pipe, output=pt_output.DummyOutput())))
            took = time.monotonic()
            raw = model_tools.handle_function_call(_tool_name(server, tool), dict(arguments))
            took = time.monotonic() - took
        after = dict(handler.metrics) if handler is not None else {}
        parsed = json.loads(raw) if isinstance(raw, str) else raw
        report["steps"].append(
            {
                "step": step,
                "server": server,
                "tool": tool,
                "how": how,
                "elicitations": {k: after.get(k, 0) - before.get(k, 0) for k in after},
                "keyboard_prompts": len(keyboard),
                "gateway_requests": list(gateway_asked),
                "screen": screen.getvalue(),
                "error": parsed.get("error") if isinstance(parsed, dict) else None,
                "result": str(parsed.get("result") if isinstance(parsed, dict) else parsed),
                "seconds": round(took, 2),
            }
        )
    mcp_tool.shutdown_mcp_servers()
    Path(out_path).write_text(json.dumps(report, indent=1))
    return 0


# -- finding a Hermes ------------------------------------------------------------------------------------------


def _probe(python: str) -> tuple[str, str] | None:
    """(hermes-agent's version, mcp's) in ``python``, or None when it lacks either."""
    code = "import importlib.metadata as m, tools.mcp_tool; print(m.version('hermes-agent'), m.version('mcp'))"
    try:
        done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    parts = done.stdout.split()
    return (parts[0], parts[1]) if done.returncode == 0 and len(parts) == 2 else None


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def find_hermes(hermes_python: str | None, venv: Path, install: bool) -> tuple[str | None, str]:
    """(an interpreter with hermes-agent[mcp], what was done to get it) or (None, why there is none)."""
    named = hermes_python or os.environ.get(HERMES_PYTHON_VAR)
    if named:
        found = _probe(named)
        return (named, f"given: {named}") if found else (None, f"{named} cannot import hermes-agent and mcp")
    python = venv_python(venv)
    if python.exists() and _probe(str(python)):
        return str(python), f"found in {venv}"
    if not install:
        return None, f"no hermes-agent in {venv} and --no-install was given"
    print(f"installing {HERMES_REQUIREMENT} from PyPI into {venv} ...", flush=True)
    started = time.monotonic()
    try:
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=300)
        done = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", HERMES_REQUIREMENT],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"could not create {venv}: {exc}"
    if done.returncode != 0:
        tail = [line for line in done.stderr.splitlines() if "is ignored" not in line][-5:]
        return None, f"pip install {HERMES_REQUIREMENT} failed (exit {done.returncode}): {' | '.join(tail)}"
    size = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file() and not f.is_symlink())
    return str(python), (
        f"installed into {venv} in {time.monotonic() - started:.0f} s ({size / 2**20:.0f} MB on disk)"
    )


# -- the check -------------------------------------------------------------------------------------------------


def _install(home: Path, *args: str) -> str:
    """``runapi-mcp install hermes ARGS`` as a user runs it (this venv's runapi-mcp), into ``home``."""
    env = {**os.environ, "HERMES_HOME": str(home), "RUNAPI_API_KEY": SIM_KEY}
    done = subprocess.run(
        [sys.executable, "-m", "runapi_mcp", "install", "hermes", "--api-key-from-env", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"runapi-mcp install hermes {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def _indent(text: str, by: str = "    ") -> str:
    return "\n".join(by + line for line in text.rstrip().splitlines())


def run_check(hermes: str, found: str) -> bool:
    from _common import print_checks
    from runapi_mcp.simulator import Simulator, SimulatorConfig

    print(f"hermes: {found}")
    with tempfile.TemporaryDirectory(prefix="runapi-hermes-") as scratch, Simulator(
        SimulatorConfig(api_key=SIM_KEY, time_scale=0.05)
    ) as sim:
        home = Path(scratch) / "hermes-home"
        home.mkdir()
        library = Path(scratch) / "library"
        # What a user never sets: the simulator's address and a scratch library, in each entry's env.
        seeded = "mcp_servers:\n" + "".join(
            f'  {name}:\n    env:\n      RUNAPI_BASE_URL: "{sim.base_url}"\n      RUNAPI_MCP_HOME: "{library / name}"\n'
            for name in (ASK, FULL)
        )
        (home / "config.yaml").write_text(seeded)
        said = _install(home)
        said_full = _install(home, "--name", FULL, "--trust", "full")
        print("\n$ runapi-mcp install hermes --api-key-from-env\n" + _indent(said))
        print(f"\n$ runapi-mcp install hermes --api-key-from-env --name {FULL} --trust full\n" + _indent(said_full))
        print(f"\n{home / 'config.yaml'}:\n" + _indent((home / "config.yaml").read_text()))

        out = Path(scratch) / "driver.json"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNAPI_", "HERMES_"))}
        started = time.monotonic()
        done = subprocess.run(
            [hermes, str(Path(__file__).resolve()), "--driver", str(home), str(out)],
            capture_output=True,
            text=True,
            env=env,
            timeout=DRIVER_TIMEOUT_S,
            check=False,
        )
        wall = time.monotonic() - started
        if done.returncode != 0 or not out.exists():
            shown = _indent(done.stdout[-3000:] + done.stderr[-3000:])
            print(f"\nthe driver failed (exit {done.returncode}):\n{shown}")
            return False
        report = json.loads(out.read_text())
        created = [str((r.json or {}).get("prompt", "")) for r in sim.requests if _is_create(r.method, r.path)]
    print(
        f"\nhermes-agent {report['hermes']} (mcp {report['mcp']}): connected both servers in "
        f"{report['connect_s']} s; {len(report['tools'])} tools registered; driver {wall:.1f} s in all"
    )
    steps = {s["step"]: s for s in report["steps"]}
    for s in report["steps"]:
        times = s["elicitations"].get("requests", 0)
        outcome = "error: " + s["error"] if s["error"] else s["result"]
        print(
            f"\n[{s['step']}] {s['server']}.{s['tool']} ({s['how']}): Hermes' elicitation handler asked {times}x, "
            f"{s['seconds']} s\n" + _indent(s["screen"] or "(nothing on screen)", "  | ")
        )
        for request in s["gateway_requests"]:
            print(f"  | gateway approval request: {request['description']} / {request['command']}")
        print("  -> " + outcome.splitlines()[0][:300] if outcome else "  -> (empty)")

    def made(step: str) -> int:
        return sum(prompt.startswith(f"step {step}:") for prompt in created)

    def asked(step: str, key: str = "requests") -> int:
        return int(steps[step]["elicitations"].get(key, 0))

    read_only = ("list_models", "check_balance", "list_tasks")
    checks = [
        (
            "install hermes says what the user sees before a paid call",
            "Hermes asks before each paid call" in said and "[o]nce | [s]ession | [d]eny" in said,
        ),
        (
            f"read-only calls ({', '.join(read_only)}) never reach Hermes' elicitation handler, and answer",
            all(asked(s) == 0 and not steps[s]["keyboard_prompts"] and not steps[s]["error"] for s in read_only),
        ),
        (
            "generate_image asks first: Hermes' handler gets the question and prompts in the terminal",
            asked("deny") == asked("once") == 1
            and steps["once"]["keyboard_prompts"] == 1
            and "Create this image task for" in steps["once"]["screen"],
        ),
        (
            "denied at the prompt ([d]eny): nothing is created, the result says so",
            made("deny") == 0 and "Not created" in (steps["deny"]["error"] or ""),
        ),
        (
            "approved at the prompt ([o]nce): created once, and finished",
            made("once") == 1 and asked("once", "accepted") == 1 and "completed" in steps["once"]["result"],
        ),
        (
            "approved with the gateway's button (hermes --tui, chats): created once, and finished",
            len(steps["gateway"]["gateway_requests"]) == 1
            and made("gateway") == 1
            and "completed" in steps["gateway"]["result"],
        ),
        (
            "the --trust full entry is never asked, and creates",
            asked("full") == 0 and not steps["full"]["keyboard_prompts"] and made("full") == 1,
        ),
        (
            "nothing else was created",
            len(created) == sum(made(s) for s in steps),
        ),
        (
            f"{REPL_INFO}: the question reaches Hermes, which declines it unseen; nothing created",
            asked("repl") == 1 and asked("repl", "declined") == 1 and made("repl") == 0
            and not steps["repl"]["keyboard_prompts"],
        ),
    ]
    return print_checks(checks, info=lambda text: text.startswith(REPL_INFO))


def _is_create(method: str, path: str) -> bool:
    """A request that could have created (and charged) a task (a price quote or an upload creates none)."""
    return (
        method == "POST"
        and path.startswith("/api/v1/")
        and not path.startswith("/api/v1/files")
        and path != "/api/v1/price_quotes"
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--driver"]:
        return drive(argv[1], argv[2])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--hermes-python", help=f"An interpreter with hermes-agent[mcp] (or ${HERMES_PYTHON_VAR})")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help=f"Where to install it (default {DEFAULT_VENV})")
    parser.add_argument("--no-install", action="store_true", help="Skip (exit 0) rather than install hermes-agent")
    args = parser.parse_args(argv)
    if shutil.which("runapi-mcp") is None and not (Path(sys.executable).parent / "runapi-mcp").exists():
        print("SKIP  runapi-mcp is not installed in this interpreter (pip install -e . first)")
        return 0
    hermes, found = find_hermes(args.hermes_python, args.venv, not args.no_install)
    if hermes is None:
        print(f"SKIP  no Hermes Agent to check against: {found}")
        return 0
    return 0 if run_check(hermes, found) else 1


if __name__ == "__main__":
    sys.exit(main())
