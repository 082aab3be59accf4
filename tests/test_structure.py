"""The package's shape: imports run one way, and the BPF C gets every parameter it needs from
Python."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from thread_observer import bpf_backend
from thread_observer.bpf_backend import DNS_KERNEL_FIELDS, SYSCALL_HOOKS
from thread_observer.constants import bpf_cflags
from thread_observer.preemption import PLACEHOLDERS, PreemptGuard
from thread_observer.timeline.recorder import timeline_cflags

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("thread_observer", "workloads", "benchmarks")
COMMANDS = {
    "thread_observer.cli",
    "thread_observer.__main__",
    "thread_observer.check",
    "thread_observer.demo",
    "thread_observer.top",
    "thread_observer.top_sample",
    "thread_observer.top_view",
    "thread_observer.timeline.command",
}
MIDDLE = {
    "thread_observer.observers",
    "thread_observer.collector",
    "thread_observer.server",
    "thread_observer.startup",
}
LOWER = {
    "thread_observer.bpf_backend",
    "thread_observer.procfs",
    "thread_observer.labels",
    "thread_observer.capabilities",
    "thread_observer.targets",
    "thread_observer.arguments",
    "thread_observer.model",
    "thread_observer.constants",
    "thread_observer.errors",
    "thread_observer.histogram",
    "thread_observer.kubernetes",
    "thread_observer.web_config",
    "thread_observer.self_metrics",
    "thread_observer.pyruntime",
    "thread_observer.pyoffsets",
    "thread_observer.sites",
    "thread_observer.tracefs",
    "thread_observer.compile_errors",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules a file imports, at any depth (function-level imports count too);
    a package's own ``__init__`` is left out: importing a submodule runs it, but it imports
    nothing."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {
            name
            for name in names
            if name in modules and name not in PACKAGES and modules[name].name != "__init__.py"
        }
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return [*path[path.index(target) :], target] if target in path else [node, target]
            if target not in state:
                cycle = visit(target, [*path, target])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node, [node])
            if cycle:
                return cycle
    return None


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "thread_observer.startup" in graph["thread_observer.cli"]  # imported inside run()
    assert "thread_observer.timeline.render" in graph["thread_observer.timeline.command"]


def test_no_import_cycle():
    assert find_cycle(import_graph()) is None


def test_a_cycle_is_found():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_imports_run_from_commands_down():
    graph = import_graph()
    assert set(graph) >= COMMANDS | MIDDLE | LOWER
    for module, imported in graph.items():
        if module not in COMMANDS and module.startswith("thread_observer"):
            assert not imported & COMMANDS, f"{module} imports a command: {imported & COMMANDS}"
        if module in LOWER:
            assert not imported & MIDDLE, f"{module} imports {imported & MIDDLE}"


def test_timeline_render_needs_only_the_model():
    # The model, and the lanes' grouping, which needs only the model itself.
    graph = import_graph()
    model, groups = "thread_observer.timeline.model", "thread_observer.timeline.groups"
    assert graph["thread_observer.timeline.render"] == {model, groups}
    assert graph[groups] == {model}


def required_defines() -> set[str]:
    """Names the BPF C refuses to compile without (``#error``)."""
    names = set()
    for path in (ROOT / "probes").glob("*.[ch]"):
        names |= set(re.findall(r"#ifndef (\w+)\n#error", path.read_text()))
    return names


def every_cflag(monkeypatch) -> list[str]:
    """Every -D flag Python can give, as if the observer ran in a PID namespace, with the
    kernel's offsets where there is BTF to read them from."""
    monkeypatch.setattr(bpf_backend, "in_pid_namespace", lambda: True)
    btf = bpf_backend.kernel_btf()
    fields = [] if isinstance(btf, Exception) else bpf_backend.forked_child_cflags(btf)
    return [
        *bpf_cflags(True),
        *timeline_cflags(follow_children=True),
        *SYSCALL_HOOKS.cflags(epoll_mark=True),
        *bpf_backend.pid_namespace_cflags(),
        *bpf_backend.process_exit_cflags(frozenset({"group_dead"}), btf),
        *fields,
        *PreemptGuard({number: 1 for number in PLACEHOLDERS.values()}).cflags(),
        "-DRAW_TASK_EVENTS=1",
    ]


def test_every_required_define_comes_from_python(monkeypatch):
    given = {flag[2:].split("=")[0].split("(")[0] for flag in every_cflag(monkeypatch)} | {
        field.macro
        for field in DNS_KERNEL_FIELDS  # offsets from the kernel's BTF
    }
    required = required_defines()
    assert {"MAX_PROCESSES", "HOST_LENGTH", "EVENT_PROCESS_EXIT"} <= required
    assert required <= given, required - given


def test_no_silent_default_for_a_python_value():
    given = {
        flag[2:].split("=")[0].split("(")[0]
        for flag in bpf_cflags(True) + timeline_cflags(follow_children=True)
    } | {field.macro for field in DNS_KERNEL_FIELDS}  # offsets from the kernel's BTF
    for path in (ROOT / "probes").glob("*.[ch]"):
        defined = set(re.findall(r"#define (\w+)", path.read_text()))
        assert not defined & given, f"{path.name} defines {defined & given} itself"
