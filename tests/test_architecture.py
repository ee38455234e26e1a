"""The layout's rules, checked on the source: the import graph has no cycle, the node side never imports the
submit side's tools (NeMo-Run, Hydra, leptonai) nor `compactlm.launch`, imports sit at the top of modules (one
inside a function says why on its line), every write goes through compactlm.manifest's writers (which never write
through a symbolic link), and every stage follows the stage contract."""

from __future__ import annotations

import ast
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, compose

from compactlm import stages
from compactlm.launch.validate import to_config
from compactlm.pipeline import StageConfig, UndeclaredRead
from compactlm.run_config import CompactLMConfig

SRC = REPO / "src"
SUBMIT_SIDE = "compactlm.launch"
SUBMIT_ONLY = ("nemo_run", "hydra", "leptonai")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted((SRC / "compactlm").rglob("*.py"))}


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) of every import statement of a file; `from a import b` counts
    as a.b when that is a module of compactlm, else as a."""
    tree = ast.parse(path.read_text(), str(path))
    out = []

    def visit(node, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                out.extend((a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                subs = [f"{child.module}.{a.name}" for a in child.names if f"{child.module}.{a.name}" in MODULES]
                out.extend((m, child.lineno, in_function) for m in subs or [child.module])
            visit(child, inner)

    visit(tree, False)
    return out


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for mod, path in MODULES.items():
        for target, _, _ in imports(path):
            while target and target not in MODULES:  # compactlm.x.y.attr -> compactlm.x.y
                target = target.rpartition(".")[0]
            if target and target != mod:
                edges[mod].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            strong(v)
    return out


def test_the_import_graph_has_no_cycle():
    assert len(MODULES) > 30
    assert cycles(graph()) == []


# Floors, lowest first: a module imports only modules of its own floor or below (`floor`).
# 0 the ground: what every stage uses (errors, config's shared sections, results' reading back, manifest, the
#   stage registry); 1 each stage's package (its library, schema, checks, report rows); 2 the root config and the
#   runner of one stage; 3 the stage classes (`<package>.stage`); 4 the submit side (compactlm.launch).
GROUND = {
    "compactlm",
    "compactlm.errors",
    "compactlm.cli",
    "compactlm.arch",
    "compactlm.manifest",
    "compactlm.config",
    "compactlm.results",
    "compactlm.stages",
    "compactlm.train_options",
    "compactlm.report_blocks",
    "compactlm.preempt",
    "compactlm.rewards",
}
ROOT = {"compactlm.run_config", "compactlm.pipeline", "compactlm.run"}


def floor(mod: str) -> int:
    if mod in GROUND:
        return 0
    if mod in ROOT:
        return 2
    if mod == SUBMIT_SIDE or mod.startswith(SUBMIT_SIDE + "."):
        return 4
    return 3 if mod.endswith(".stage") else 1


def test_no_import_runs_from_a_lower_floor_to_a_higher_one():
    assert floor("compactlm.prune.schema") == 1 and floor("compactlm.prune.stage") == 3
    bad = [
        f"{mod} (floor {floor(mod)}) imports {target} (floor {floor(target)})"
        for mod, targets in graph().items()
        for target in targets
        if floor(target) > floor(mod)
    ]
    assert bad == []


def test_every_stage_part_imports_without_torch():
    """The registry, every schema, checks and report module, and the root config import with torch blocked: the
    launcher reads them, and no stage's config may pull its trainer in."""
    parts = sorted(m for m in MODULES if m.rsplit(".", 1)[-1] in ("schema", "checks", "report") and m.count(".") == 2)
    assert len(parts) >= 8, parts
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "import importlib\n"
        f"for m in {['compactlm.stages', 'compactlm.run_config', *parts]!r}:\n"
        "    importlib.import_module(m)\n"
        "assert 'transformers' not in sys.modules\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(SRC)}
    )
    assert r.returncode == 0, r.stderr[-2000:]


def stage_tables(source: str, own: set[str], names: set[str]) -> list[tuple[int, list[str]]]:
    """(line, stage names) of every literal in `source` that lists three or more stages as a table does: a tuple,
    list or set of stage names, or a dict keyed by stage names only, unless all of them are stages of the module's
    own package (`own`: the align package's formats of its own three stages are its own business). A stage class's
    `reads` (the config sections it reads, some named like stages) is no table."""
    out = []
    tree = ast.parse(source)
    reads = {
        id(n.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "reads" for t in n.targets)
    }
    for node in ast.walk(tree):
        if id(node) in reads:
            continue
        if isinstance(node, ast.Dict):
            keys = [k for k in node.keys if k is not None]
            if not all(isinstance(k, ast.Constant) and k.value in names for k in keys):
                continue  # a record (some keys are no stage), not a table of stages
            elts = keys
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            elts = node.elts
        else:
            continue
        found = sorted({e.value for e in elts if isinstance(e, ast.Constant) and e.value in names})
        if len(found) >= 3 and not set(found) <= own:
            out.append((node.lineno, found))
    return out


def test_no_per_stage_table_outside_the_registry():
    names = set(stages.names())
    by_package: dict[str, set[str]] = {}
    for s in stages.specs():
        by_package.setdefault(s.package, set()).add(s.name)
    bad = []
    for mod, path in MODULES.items():
        if mod == "compactlm.stages":
            continue
        own = by_package.get(mod.rpartition(".")[0], set())
        bad += [
            f"{path.relative_to(REPO)}:{line}: {found}" for line, found in stage_tables(path.read_text(), own, names)
        ]
    assert bad == []


def test_the_table_finder_finds_tables():
    names = {"model", "data", "prune", "distill"}
    found = stage_tables(
        "A = ('model', 'data', 'prune')\n"
        "B = {'model': 1, 'data': 2, 'distill': 3}\n"
        "C = {'model': 1, 'data': 2, 'distill': 3, 'seed': 4}\n"
        "D = ['model', 'data']\n"
        "E = ('data', 'prune', 'distill')\n",
        {"data", "prune", "distill"},
        names,
    )
    assert found == [(1, ["data", "model", "prune"]), (2, ["data", "distill", "model"])]


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_node_side_never_imports_the_submit_side():
    bad = []
    for mod, path in MODULES.items():
        if mod == SUBMIT_SIDE or mod.startswith(SUBMIT_SIDE + "."):
            continue
        for target, line, _ in imports(path):
            top = target.split(".")[0]
            if top in SUBMIT_ONLY or target == SUBMIT_SIDE or target.startswith(SUBMIT_SIDE + "."):
                bad.append(f"{path.relative_to(REPO)}:{line} imports {target}")
    assert bad == []


# The one exception to "never import compactlm inside a function": the modules that bring NeMo-Run (and with it
# torch and leptonai, 8 CPU-s) are imported by the launcher and the run operations only on the paths that submit or
# read NeMo-Run records, so a configuration error, `--help`, `list` or the parameter table answer in about a second.
LAZY_SUBMIT_SIDE = {
    ("compactlm.launch.launcher", "compactlm.launch.executors"),
    ("compactlm.launch.ops", "compactlm.launch.cloud"),
}


@pytest.mark.parametrize("argv", [["model=no_such_model"], ["list", "runs_root=/nonexistent"], ["--help"]])
def test_answers_that_submit_nothing_do_not_import_nemo_run(argv):
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['launch.py', *{argv!r}]\n"
        "try:\n    runpy.run_path('launch.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print('IMPORTED', sorted(m for m in ('nemo_run', 'torch', 'leptonai') if m in sys.modules), file=sys.stderr)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "IMPORTED []" in r.stderr, r.stderr[-2000:]


def test_imports_inside_functions_say_why():
    """Imports belong at the top; one inside a function (a heavy or optional dependency) carries its reason as a
    comment on its line (or on the first line of a block of imports), and never imports compactlm itself (but for
    LAZY_SUBMIT_SIDE)."""
    bad = []
    for mod, path in MODULES.items():
        lines = path.read_text().splitlines()
        for target, line, in_function in imports(path):
            if not in_function:
                continue
            if target.startswith("compactlm") and (mod, target) not in LAZY_SUBMIT_SIDE:
                bad.append(f"{path.relative_to(REPO)}:{line} imports {target} inside a function")
                continue
            block = line
            while block > 1 and lines[block - 2].strip().startswith(("import ", "from ")):
                block -= 1
            if "#" not in lines[line - 1] and "#" not in lines[block - 1]:
                bad.append(f"{path.relative_to(REPO)}:{line}: {lines[line - 1].strip()}")
    assert bad == []


# ------------------------------------------------------------------------------------------ stage contract
@pytest.mark.parametrize("spec", stages.specs(), ids=lambda s: s.name)
def test_every_stage_follows_the_contract(spec):
    module, cls = spec.stage.split(":")
    assert module == f"{spec.package}.stage", "a stage's module sits next to the library it drives"
    stage = stages.load(spec.stage)
    fields = {f.name for f in dataclasses.fields(CompactLMConfig)}
    assert stage.name == spec.name
    assert stage.reads and set(stage.reads) <= fields, f"{spec.name}.reads names no config section: {stage.reads}"
    assert spec.section is None or spec.section in stage.reads
    assert isinstance(stage.keep, tuple)
    assert dataclasses.is_dataclass(stages.load(spec.result))
    for dotted in (spec.config, spec.checks, spec.report, spec.summary):
        assert dotted is None or callable(stages.load(dotted)), dotted


def test_every_stage_starts_through_the_one_module():
    """Stage processes start as `python -m compactlm.run <stage> config=...`: no script per stage (a script
    folder on sys.path shadowed the `gguf` package), and the module names every stage."""
    assert list((REPO / "recipes").glob("*.py")) == [], "recipes/ holds the recipes a user picks (YAML)"
    assert [t for t, _, _ in imports(SRC / "compactlm" / "run.py")] == ["sys", "compactlm.pipeline"]  # thin
    r = subprocess.run(
        [sys.executable, "-m", "compactlm.run", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    assert r.returncode == 0 and r.stdout.startswith("usage: python -m compactlm.run <stage> config=")
    assert r.stdout.splitlines()[-1] == f"Stages: {', '.join(stages.names())}"
    bad = subprocess.run(
        [sys.executable, "-m", "compactlm.run", "gguff", "config=x.yaml"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    assert bad.returncode == 2 and "stage 'gguff' is not one of model, data," in bad.stderr


def test_a_stage_sees_only_the_sections_it_declares():
    conf = to_config(compose([]))
    view = StageConfig(conf, "prune", ("prune", "engine"))
    assert view.prune is conf.prune and view.engine is conf.engine
    with pytest.raises(UndeclaredRead, match=r"stage 'prune' read cfg.importance, which it does not declare"):
        view.importance  # noqa: B018 (the read itself must raise)
    with pytest.raises(AttributeError):
        view.prune = None


# ------------------------------------------------------------------------------------------ writes
# Every write goes through compactlm.manifest (atomic_write_text, atomic_file, staging_dir, open_nofollow), which
# never writes through a symbolic link. Libraries that write by path (save_pretrained, save_file, torch.save,
# savefig, shutil.copy2) write only into what `staging_dir` or `atomic_file` just made (mkdtemp/mkstemp: nothing can
# be planted there beforehand). Anything else says why on its line: `# write-ok: <reason>`.
WRITERS = {"manifest"}
PATH_WRITES = {"write_text", "write_bytes"}
LIBRARY_WRITES = {
    "save_pretrained",
    "save_file",
    "savefig",
    "export_hf_checkpoint",
    "copy",
    "copy2",
    "copyfile",
    "copytree",
    "move",
    "symlink_to",
    "hardlink_to",
}
FRESH = {"staging_dir", "atomic_file"}
WRITE_FLAGS = {"O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND"}


def _name(func: ast.expr) -> str:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _receiver(func: ast.expr) -> str:
    return func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""


def _mode(call: ast.Call, position: int) -> str:
    args = [*call.args[position : position + 1], *(k.value for k in call.keywords if k.arg == "mode")]
    return next((a.value for a in args if isinstance(a, ast.Constant) and isinstance(a.value, str)), "r")


def unsafe_writes(source: str) -> list[tuple[int, str]]:
    """(line, what) of every write in `source` that does not go through compactlm.manifest's link-refusing writers
    (see WRITERS above) and carries no `# write-ok:` reason."""
    tree, lines, out = ast.parse(source), source.splitlines(), []

    def visit(node: ast.AST, fresh: bool) -> None:
        if isinstance(node, ast.With):
            fresh = fresh or any(
                isinstance(i.context_expr, ast.Call) and _name(i.context_expr.func) in FRESH for i in node.items
            )
        if isinstance(node, ast.Call):
            name, func = _name(node.func), node.func
            is_os = _receiver(func) == "os"
            what = None
            if name in PATH_WRITES:
                what = name
            elif name == "open" and is_os:
                flags = (
                    {n.attr for n in ast.walk(node.args[1]) if isinstance(n, ast.Attribute)}
                    if len(node.args) > 1
                    else set()
                )
                what = "os.open for writing" if flags & WRITE_FLAGS else None
            elif name == "open" and set(_mode(node, 1 if isinstance(func, ast.Name) else 0)) & set("wax+"):
                what = "open for writing"
            elif name in LIBRARY_WRITES or name == "save" and _receiver(func) in ("torch", "np", "numpy"):
                what = None if fresh else f"{name} outside staging_dir/atomic_file"
            if what and "# write-ok:" not in lines[node.lineno - 1]:
                out.append((node.lineno, what))
        for child in ast.iter_child_nodes(node):
            visit(child, fresh)

    visit(tree, False)
    return out


def test_every_write_refuses_symbolic_links():
    bad = []
    for mod, path in MODULES.items():
        if mod.rsplit(".", 1)[-1] in WRITERS:
            continue
        bad += [f"{path.relative_to(REPO)}:{line}: {what}" for line, what in unsafe_writes(path.read_text())]
    assert bad == []


def test_the_write_finder_finds_writes():
    found = unsafe_writes(
        "from pathlib import Path\n"
        "Path('a').write_text('x')\n"
        "open('b', 'a')\n"
        "Path('c').open(mode='wb')\n"
        "os.open('d', os.O_RDWR | os.O_CREAT)\n"
        "np.save('e.npy', x)\n"
        "open('f')\n"
        "os.open('g', os.O_RDONLY)\n"
        "with atomic_file('h') as tmp:\n    fig.savefig(tmp)\n"
        "open('i', 'w')  # write-ok: a reason\n"
    )
    assert found == [
        (2, "write_text"),
        (3, "open for writing"),
        (4, "open for writing"),
        (5, "os.open for writing"),
        (6, "save outside staging_dir/atomic_file"),
    ]
