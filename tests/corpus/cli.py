"""The command-line corpus: inventories, group_data and arguments every tool must refuse in
one line, with a non-zero exit and no traceback.

Each case is an inventory file (``fleet.py`` in a directory of its own), the group_data
files beside it, the targeting arguments (``--limit``/``--exclude``, ``--data``) and the
fragments that one line of the output must hold (``{dir}`` is the case's directory). Every
case runs through each tool it applies to: the deploy (``pyinfra -y INV deploy.py``), verify
(``pytest tests/verify --inventory INV``), the rollout and the Prometheus targets command.
tests/unit/test_cli_corpus.py runs them; the classes are issue 13's:

    4  a run that targets no host (says so, exits non-zero; prometheus writes no file)
    6  an operator's mistake that gave a traceback (one line: file, line, problem)
    7  a refusal that must name the file the value came from, or warn about a file

Hosts are pyinfra ``@fake`` hosts: a deploy that got as far as running would never connect.

``python -m tests.corpus.cli`` is the runner the test uses: it reads ``[{"module", "argv"}]``
as JSON, imports the tools' libraries once, and runs each command in a forked child exactly
as ``python -m MODULE ARGV`` would (``runpy``), so that 200 runs cost seconds, not minutes.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import tempfile
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.plan.harness import gateway_off_beside

TOOLS = frozenset({"deploy", "verify", "rollout", "prometheus"})
WITH_DATA = frozenset({"deploy", "rollout"})  # the tools that take --data
GOOD = "gpu = ['@fake/a', '@fake/b']\n"
TWO_GROUPS = "gpu = ['@fake/a']\ncpu = ['@fake/b']\n"
CHECKED = "from operations.config.load import checked_hosts\n\n"


@dataclass(frozen=True)
class CliCase:
    id: str
    issue_class: int  # 4, 6 or 7 (see the module docstring)
    expect: tuple[str, ...]  # fragments of one output line; {dir}: the case's directory
    inventory: str | bytes | None = GOOD  # fleet.py (None: not written)
    inventory_arg: str = "{dir}/fleet.py"
    args: tuple[str, ...] = ()  # --limit/--exclude, given to every tool
    data: tuple[str, ...] = ()  # --data values (deploy; rollout after --)
    group_data: Mapping[str, str | bytes | None] = field(default_factory=dict)  # None: a dir
    output: str = "{dir}/targets.json"  # prometheus -o
    tools: frozenset[str] = TOOLS
    secret: str | None = None  # a value the output must never show


def _nothing(id: str, expect: str, **kwargs) -> CliCase:
    return CliCase(id, 4, (expect,), **kwargs)


def _trace(id: str, expect: tuple[str, ...] | str, **kwargs) -> CliCase:
    return CliCase(id, 6, (expect,) if isinstance(expect, str) else expect, **kwargs)


def _source(id: str, expect: tuple[str, ...], **kwargs) -> CliCase:
    return CliCase(id, 7, expect, **kwargs)


NOT_ON_DISK = "no such file"
NO_GROUP = "it defines no group"

CASES = [
    # --- 4: nothing targeted ------------------------------------------------------------
    _nothing("inventory-path-typo", NOT_ON_DISK, inventory_arg="{dir}/flet.py"),
    _nothing("inventory-dir-typo", NOT_ON_DISK, inventory_arg="{dir}/inventry/fleet.py"),
    _nothing("inventory-no-suffix-path", NOT_ON_DISK, inventory_arg="{dir}/fleet"),
    _nothing("inventory-relative-typo", NOT_ON_DISK, inventory_arg="inventory/prd.py"),
    _nothing("inventory-bare-name-py", NOT_ON_DISK, inventory_arg="prod.py"),
    _nothing("inventory-is-a-directory", "is a directory, not an inventory file",
             inventory_arg="{dir}"),
    _nothing("inventory-bare-word", "is no inventory file, host list or connector",
             inventory_arg="nosuchinventory"),
    _nothing("limit-no-such-host", "--limit nohost matches no host or group of",
             args=("--limit", "nohost")),
    _nothing("limit-group-typo", "--limit gpu_servres matches no host or group",
             args=("--limit", "gpu_servres"), inventory="gpu_servers = ['@fake/a']\n"),
    _nothing("limit-group-typo-hint", "did you mean gpu_servers?",
             args=("--limit", "gpu_servres"), inventory="gpu_servers = ['@fake/a']\n"),
    _nothing("limit-wrong-case", "--limit @FAKE/A matches no host", args=("--limit", "@FAKE/A")),
    _nothing("limit-pattern-no-match", "--limit gpu-* matches no host", args=("--limit", "gpu-*")),
    _nothing("limit-group-with-only-group-data", "--limit orphan matches no host",
             args=("--limit", "orphan"), group_data={"orphan": "vllm_port = 8001\n"}),
    _nothing("exclude-every-host", "--exclude @fake/a, @fake/b excludes all 2 host(s)",
             args=("--exclude", "@fake/a", "--exclude", "@fake/b")),
    _nothing("exclude-the-only-group", "--exclude gpu excludes all 2 host(s)",
             args=("--exclude", "gpu")),
    _nothing("exclude-pattern-all", "--exclude @fake/* excludes all 2",
             args=("--exclude", "@fake/*")),
    _nothing("exclude-what-limit-selects", "excludes the 1 host(s) --limit gpu selects",
             inventory=TWO_GROUPS, args=("--limit", "gpu", "--exclude", "@fake/a")),
    _nothing("exclude-file-group", "--exclude fleet excludes all 2 host(s)",
             args=("--exclude", "fleet")),
    _nothing("group-is-a-dict", "'gpu' is a dict, not a group",
             inventory="gpu = {'@fake/a': {}, '@fake/b': {}}\n"),
    _nothing("group-is-a-string", "'gpu' is a str, not a group", inventory="gpu = '@fake/a'\n"),
    _nothing("group-is-a-set", "'gpu' is a set, not a group", inventory="gpu = {'@fake/a'}\n"),
    _nothing("group-is-empty", "group 'gpu' is empty", inventory="gpu = []\n"),
    _nothing("group-hosts-empty", "group 'gpu' is empty",
             inventory="gpu = ([], {'vllm_port': 8001})\n"),
    _nothing("checked-group-empty", "group 'gpu' is empty",
             inventory=CHECKED + "gpu = checked_hosts([])\n"),
    _nothing("no-groups", NO_GROUP, inventory="host_count = 3\n"),
    _nothing("empty-inventory-file", NO_GROUP, inventory=""),
    _nothing("only-comments", NO_GROUP, inventory="# gpu = ['@fake/a']\n"),
    _nothing("only-private-groups", NO_GROUP, inventory="_gpu = ['@fake/a']\n"),
    _nothing("group-list-built-empty", "group 'gpu' is empty",
             inventory="_tags = {}\ngpu = [name for name in _tags]\n"),
    # --- 6: tracebacks --------------------------------------------------------------------
    _trace("inventory-syntax-error", "fleet.py line 1: SyntaxError",
           inventory="gpu = ['@fake/a'\n"),
    _trace("inventory-unterminated-string", "fleet.py line 1: SyntaxError",
           inventory="gpu = ['@fake/a]\n"),
    _trace("inventory-indentation", "fleet.py line 2: IndentationError",
           inventory="gpu = ['@fake/a']\n  cpu = []\n"),
    _trace("inventory-name-error", "fleet.py line 1: NameError: name 'host' is not defined",
           inventory="gpu = [host]\n"),
    _trace("inventory-division", "fleet.py line 2: ZeroDivisionError",
           inventory="gpu = ['@fake/a']\n_share = 1 / 0\n"),
    _trace("inventory-import-error", "fleet.py line 1: ModuleNotFoundError",
           inventory="import nosuch_cloud_sdk\ngpu = ['@fake/a']\n"),
    _trace("inventory-raises-in-helper", "fleet.py line 2: RuntimeError: tag API down",
           inventory="def _hosts():\n    raise RuntimeError('tag API down')\n\ngpu = _hosts()\n"),
    _trace("inventory-key-error", "fleet.py line 2: KeyError",
           inventory="_tags = {}\ngpu = [_tags['gpu']]\n"),
    _trace("inventory-null-byte", "fleet.py", inventory="gpu = ['@fake/a']\n\x00\n"),
    _trace("inventory-not-utf8", "fleet.py", inventory=b"gpu = ['\xff@fake/a']\n"),
    _trace("host-data-is-a-string", "host '@fake/a': its data is a str, not a dict",
           inventory="gpu = [('@fake/a', 'vllm_port=8001')]\n"),
    _trace("host-data-is-a-list", "host '@fake/a': its data is a list, not a dict",
           inventory="gpu = [('@fake/a', ['vllm_port', 8001])]\n"),
    _trace("host-data-is-none", "host '@fake/a': its data is a NoneType, not a dict",
           inventory="gpu = [('@fake/a', None)]\n"),
    _trace("host-tuple-of-three", "host 1 is a tuple of 3 but not (name, data)",
           inventory="gpu = [('@fake/a', {}, {})]\n"),
    _trace("host-tuple-of-one", "host 1 is a tuple of 1 but not (name, data)",
           inventory="gpu = [('@fake/a',)]\n"),
    _trace("host-name-is-int", "host 2 is a int", inventory="gpu = ['@fake/a', 7]\n"),
    _trace("host-name-is-none", "host 1 is a NoneType", inventory="gpu = [None]\n"),
    _trace("host-name-empty", "host 1 is an empty name", inventory="gpu = ['']\n"),
    _trace("host-tuple-name-int", "host 1 is a tuple of 2 but not (name, data)",
           inventory="gpu = [(1, {})]\n"),
    _trace("host-dict-in-list", "host 1 is a dict", inventory="gpu = [{'@fake/a': {}}]\n"),
    _trace("group-data-is-a-string", "its data is a str, not a dict",
           inventory="gpu = (['@fake/a'], 'vllm_port=8001')\n"),
    _trace("group-tuple-of-three", "is a tuple but not (list of hosts, data)",
           inventory="gpu = (['@fake/a'], {}, {})\n"),
    _trace("group-tuple-of-names", "is a tuple but not (list of hosts, data)",
           inventory="gpu = ('@fake/a', '@fake/b')\n"),
    _trace("constant-tuple", "group 'VERSION' is a tuple but not",
           inventory=GOOD + "VERSION = (1, 2)\n"),
    _trace("unknown-connector", "Invalid connector: nosuch", inventory="gpu = ['@nosuch/a']\n"),
    _trace("group-data-syntax-error", "group_data/gpu.py line 2: SyntaxError",
           group_data={"gpu": "vllm_port = 8001\nvllm_gpus = [0,\n"}),
    _trace("group-data-name-error", "group_data/gpu.py line 1: NameError",
           group_data={"gpu": "vllm_port = port\n"}),
    _trace("group-data-import-error", "group_data/gpu.py line 1: ModuleNotFoundError",
           group_data={"gpu": "from nosuch_vault import token\n"}),
    _trace("group-data-exception-in-all", "group_data/all.py line 2: ValueError",
           group_data={"all": "import os\nvllm_port = int('eighty')\n"}),
    _trace("group-data-not-utf8", "group_data/gpu.py", group_data={"gpu": b"x = '\xff'\n"}),
    _trace("group-data-is-a-directory", ("group_data/gpu.py", "cannot read it"),
           group_data={"gpu": None}),
    _trace("group-data-of-file-group-error", "group_data/fleet.py line 1: TypeError",
           group_data={"fleet": "vllm_port = 8000 + '1'\n"}),
    _trace("data-without-equals", "--data 'vllm_port': no '='; write it as --data key=value",
           data=("vllm_port",), tools=WITH_DATA),
    _trace("data-empty-key", "--data with no key before '='", data=("=hf_Secret0Value1",),
           tools=WITH_DATA, secret="hf_Secret0Value1"),
    _trace("data-token-without-key", "--data (value not shown): no '='",
           data=("hf_Secret0Value1",), tools=WITH_DATA, secret="hf_Secret0Value1"),
    _trace("output-is-a-directory", "is a directory", output="{dir}", tools={"prometheus"}),
    _trace("output-under-a-file", "is not a directory", output="{dir}/fleet.py/targets.json",
           tools={"prometheus"}),
    _trace("output-unwritable", "cannot write /proc/gpufleet-targets.json",
           output="/proc/gpufleet-targets.json", tools={"prometheus"}),
    # --- 7: the file a value came from; a warning naming a file ----------------------------
    _source("host-data-value", ("@fake/a: vllm_port = 'eighty'", "(from {dir}/fleet.py)"),
            inventory="gpu = [('@fake/a', {'vllm_port': 'eighty'})]\n"),
    _source("group-data-value", ("@fake/b: vllm_port = 'eighty'",
                                 "(from {dir}/group_data/gpu.py)"),
            group_data={"gpu": "vllm_port = 'eighty'\n"}),
    _source("all-group-data-value", ("@fake/a: vllm_dtype = 'fp7'",
                                     "(from {dir}/group_data/all.py)"),
            group_data={"all": "vllm_dtype = 'fp7'\n"}),
    _source("group-tuple-data-value", ("@fake/a: vllm_port = 'eighty'", "(from {dir}/fleet.py)"),
            inventory="gpu = (['@fake/a'], {'vllm_port': 'eighty'})\n"),
    _source("all-tuple-data-never-used", ("fleet.py line 1: vllm_port of group 'all' is never"
                                          " used: group_data/all.py sets it",),
            inventory="all = (['@fake/a'], {'vllm_port': 8001})\n"
                      "gpu = [('@fake/a', {'vllm_dtype': 'fp7'})]\n"),
    _source("group-tuple-data-never-used", ("vllm_port of group 'gpu' is never used: ",
                                            "{dir}/group_data/gpu.py sets it"),
            inventory="gpu = (['@fake/a'], {'vllm_port': 8001, 'vllm_dtype': 'fp7'})\n",
            group_data={"gpu": "vllm_port = 8002\n"}),
    _source("group-data-file-beats-tuple", ("vllm_port = 'ninety'",
                                            "(from {dir}/group_data/gpu.py)"),
            inventory="gpu = (['@fake/a'], {'vllm_port': 'eighty'})\n",
            group_data={"gpu": "vllm_port = 'ninety'\n"}),
    _source("host-data-beats-group-data", ("@fake/a: vllm_port = 'eighty'",
                                           "(from {dir}/fleet.py)"),
            inventory="gpu = [('@fake/a', {'vllm_port': 'eighty'})]\n",
            group_data={"gpu": "vllm_port = 8001\n"}),
    _source("later-group-wins", ("@fake/a: vllm_port = 'ninety'",
                                 "(from {dir}/group_data/second.py)"),
            inventory="first = ['@fake/a']\nsecond = ['@fake/a']\n",
            group_data={"first": "vllm_port = 8001\n", "second": "vllm_port = 'ninety'\n"}),
    _source("group-data-key-typo", ("vllm_prot = 8001", "did you mean 'vllm_port'?",
                                    "(from {dir}/group_data/gpu.py)"),
            group_data={"gpu": "vllm_prot = 8001\n"}),
    _source("file-group-data", ("vllm_gpus = 'most'", "(from {dir}/group_data/fleet.py)"),
            group_data={"fleet": "vllm_gpus = 'most'\n"}),
    _source("checked-hosts-ssh", ("ssh_port = 70000", "(from {dir}/fleet.py)"),
            inventory=CHECKED + "gpu = checked_hosts([('@fake/a', {'ssh_port': 70000})])\n"),
    _source("cli-data-value", ("vllm_port = 'eighty'", "(from --data)"),
            data=("vllm_port=eighty",), tools=WITH_DATA),
    _source("cli-user-option", ("@fake/a: ssh_user = 'ops team'", "(from --user)"),
            args=("--user", "ops team"), tools={"deploy"}),
    _source("cli-data-beats-host-data", ("vllm_dtype = 'fp7'", "(from --data)"),
            inventory="gpu = [('@fake/a', {'vllm_dtype': 'half'})]\n",
            data=("vllm_dtype=fp7",), tools=WITH_DATA),
    _source("group-data-for-no-group", ("group_data/gpu_servres.py: no inventory has a group",
                                        "did you mean gpu_servers?"),
            inventory="gpu_servers = [('@fake/a', {'vllm_port': 'eighty'})]\n",
            group_data={"gpu_servres": "vllm_port = 8001\n"}),
    _source("dict-group-beside-a-group", ("'cpu' is a dict, not a group, so it adds no host",),
            inventory="gpu = [('@fake/a', {'vllm_port': 'eighty'})]\ncpu = {'@fake/b': {}}\n"),
    _source("empty-group-beside-a-group", ("fleet.py line 2: group 'cpu' is empty",),
            inventory="gpu = [('@fake/a', {'vllm_port': 'eighty'})]\ncpu = []\n"),
]  # fmt: skip


def write_case(case: CliCase, directory: Path) -> None:
    """The case's inventory and group_data files in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    if case.inventory is not None:
        _write(directory / "fleet.py", case.inventory)
    if "all" not in case.group_data:  # the cases are about other settings: no gateway
        gateway_off_beside(directory / "fleet.py")
    for name, text in case.group_data.items():
        path = directory / "group_data" / f"{name}.py"
        path.parent.mkdir(exist_ok=True)
        if text is None:
            path.mkdir()
        else:
            _write(path, text)


def _write(path: Path, text: str | bytes) -> None:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())


def command(tool: str, case: CliCase, directory: Path) -> tuple[str, list[str]]:
    """(module, arguments) of ``python -m module arguments`` running the case with a tool."""
    inventory = case.inventory_arg.format(dir=directory)
    data = [arg for value in case.data for arg in ("--data", value)]
    if tool == "deploy":
        return "pyinfra", ["-y", inventory, "deploy.py", *case.args, *data]
    if tool == "verify":
        report = ["--fleet-report", str(directory / "report.json")]
        junit = f"--junitxml={directory / 'junit.xml'}"
        verify = ["tests/verify", "-p", "no:cacheprovider", "-q", f"--inventory={inventory}"]
        # --opt=value: pytest reads an argument starting with @ as a file of arguments
        options = [f"{o}={v}" for o, v in zip(case.args[::2], case.args[1::2], strict=True)]
        return "pytest", [*verify, *options, *report, junit]
    if tool == "rollout":
        return "operations.cli.rollout", [inventory, *case.args, *(["--", *data] if data else [])]
    return "operations.cli.targets", [
        inventory,
        *case.args,
        "-o",
        case.output.format(dir=directory),
    ]


# --- the runner -----------------------------------------------------------------------------

PRELOAD = ("pyinfra_cli.main", "pytest", "operations.run", "tests.verify.fleet")


def _child(module: str, argv: list[str], log: int) -> None:
    """In the forked child: run ``python -m module argv`` with its output in ``log``."""
    os.dup2(log, 1)
    os.dup2(log, 2)
    sys.argv = [module, *argv]
    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        if isinstance(done.code, str):
            print(done.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - what `python -m` would print
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_all(commands: list[dict], jobs: int = 2, timeout: float = 60) -> list[dict]:
    """Each command's exit code and output, run ``jobs`` at a time in forked children."""
    for module in PRELOAD:
        __import__(module)
    results: list[dict | None] = [None] * len(commands)
    running: dict[int, tuple[int, int, float]] = {}  # pid -> index, log fd, started
    pending = list(enumerate(commands))
    while pending or running:
        while pending and len(running) < jobs:
            index, spec = pending.pop(0)
            log, name = tempfile.mkstemp(prefix="cli-corpus-")
            os.unlink(name)  # the open descriptor is all the child and we need
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(spec["module"], spec["argv"], log)
            running[pid] = (index, log, time.monotonic())
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            for other, (_, _, started) in running.items():
                if time.monotonic() - started > timeout:
                    os.kill(other, 9)
            time.sleep(0.01)
            continue
        index, log, _ = running.pop(pid)
        os.lseek(log, 0, 0)
        with os.fdopen(log, encoding="utf-8", errors="replace") as stream:
            output = stream.read()
        results[index] = {"rc": os.waitstatus_to_exitcode(status), "output": output}
    return results  # type: ignore[return-value]


if __name__ == "__main__":
    json.dump(run_all(json.load(sys.stdin)), sys.stdout)
