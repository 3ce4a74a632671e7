"""The rendered tutorial: run the notebooks, record where the results came from, check the copies.

Start reading at ``run_notebooks`` (what ``make reproduce`` calls), then ``tutorial_problems``
(what ``make test`` checks on the committed tree).

Layout. ``notebooks/NN_*.ipynb`` are **sources**: no outputs, their own ``parameters`` cell, so
that opening one in JupyterLab runs it with the same defaults as its neighbours. ``make reproduce``
executes each source with papermill into ``notebooks/executed/NN_*.ipynb`` (a **copy** with
outputs, the full parameters injected in a cell tagged ``injected-parameters``) and renders it to
``notebooks/html/NN_*.html``. A reader reads the copies; a user runs the sources; git diffs of the
sources stay readable. One run writes every copy, figure and table together, and the record of that
run (``figures/provenance.json``: commit, package versions, machine, per-notebook wall time,
peak memory and the time of each section, ``stage_times``) sits next to the figures.

The checks (each returns a list of problems, empty when all is well):

- ``executed_problems(source, executed)``: the copy exists, every code cell ran, it has outputs,
  papermill recorded no exception, and its code equals the source's (the injected cell aside).
- ``default_problems(sources)``: notebooks that share a parameter give it one default.
- ``missing_artifacts(paths, texts)``: every ``figures/...`` file named in the README or a notebook
  exists.
- ``table_problems(readme, csv)``: the README's generated results table says what the CSV it was
  written from says.
- ``provenance_staleness(record)``: a sentence when ``utils/``, the notebook sources or their
  parameters differ between the recorded commit and HEAD (reported, not failed: a code change lands
  before its run).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import re
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import nbformat

from .machine import machine_record
from .paths import REPO_ROOT

NOTEBOOKS: tuple[str, ...] = (
    "01_activation_extraction",
    "02_general_redundancy",
    "03_task_specific_redundancy",
    "04_feature_selected_transfer",
    "06_redundancy_at_scale",
)
"""The notebooks ``make reproduce`` runs, in order (each reads what the one before wrote)."""

NEEDS: dict[str, tuple[str, ...]] = {
    "02_general_redundancy": ("01_activation_extraction",),
    "03_task_specific_redundancy": ("01_activation_extraction",),
    "04_feature_selected_transfer": (
        "01_activation_extraction",
        "02_general_redundancy",
        "03_task_specific_redundancy",
    ),
    "06_redundancy_at_scale": ("01_activation_extraction",),
}
"""What each notebook reads that another notebook writes (stores and fine-tuned models from 01, CSV
tables from 02 and 03). With ``jobs > 1`` a notebook starts as soon as these have finished; a notebook
not named here waits for every notebook before it in the run."""

AFTER: dict[str, tuple[str, ...]] = {
    "06_redundancy_at_scale": ("03_task_specific_redundancy",),
}
"""Order without data, to keep memory peaks apart (applied only where the other notebook comes earlier in
the run). Notebook 06 holds up to 2.5 GiB (its largest exact component block, 9,775 neurons in the full
run); beside notebook 03's two layer-probe workers (up to 2.3 GiB each) the full run of feb0dfd went over
8 GiB. After notebook 03 it runs beside notebook 04, whose first pipelines (MPNet) are small."""

SOURCE_DIR = REPO_ROOT / "notebooks"
EXECUTED_DIR = SOURCE_DIR / "executed"
INJECTED_TAG = "injected-parameters"
PROVENANCE_FILE = "provenance.json"
_PACKAGES = ("torch", "transformers", "numpy", "scipy", "scikit-learn", "pandas", "papermill", "matplotlib")
_ARTIFACT = re.compile(r"\bfigures/[\w./-]+\.(?:png|csv|txt|json)\b")


# --------------------------------------------------------------------------------------------------
# Running the notebooks
# --------------------------------------------------------------------------------------------------
@dataclass
class NotebookRun:
    """One executed notebook: its name, wall time in seconds and the kernel's peak RSS in MiB."""

    name: str
    seconds: float
    peak_rss_mib: float
    stages: list[dict] = field(default_factory=list)
    started_s: float = 0.0
    """When it started, in seconds after the run began (notebooks overlap when ``jobs > 1``)."""


def stage_times(executed: str | os.PathLike) -> list[dict]:
    """Wall time of each stage of an executed notebook, from papermill's per-cell durations.

    A stage is a markdown cell and the code cells that follow it (its name: the markdown's first line,
    without ``#`` marks); code before the first markdown cell is the stage ``"(setup)"``.

    Returns
    -------
    stages : list of dict
        ``{"stage": str, "seconds": float}`` in notebook order; stages without code are left out.
    """
    nb = nbformat.read(executed, as_version=4)
    stages: list[dict] = []
    name = "(setup)"
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            first = next((line for line in cell.source.splitlines() if line.strip()), "")
            name = first.lstrip("#").strip()[:80] or "(untitled)"
        elif cell.cell_type == "code":
            seconds = float(cell.metadata.get("papermill", {}).get("duration") or 0.0)
            if stages and stages[-1]["stage"] == name:
                stages[-1]["seconds"] += seconds
            else:
                stages.append({"stage": name, "seconds": seconds})
    return [{"stage": st["stage"], "seconds": round(st["seconds"], 1)} for st in stages]


def _git(*args: str, cwd: Path = REPO_ROOT) -> str:
    """Run ``git args`` in ``cwd`` and return its stripped stdout ('' when git fails)."""
    out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    return out.stdout.strip() if out.returncode == 0 else ""


def _children_peak_rss_mib() -> float:
    """Peak resident memory of the largest child process waited for so far, in MiB (Linux reports KiB)."""
    kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return kib / 1024 if sys.platform != "darwin" else kib / 2**20


class MemorySampler:
    """Sample the memory of this process's tree and of the machine in a background thread.

    Every ``interval`` seconds it adds up, over this process and all its descendants (notebook
    kernels, their worker processes): the resident memory (RSS: counts pages of memory-mapped files
    once per process that touches them, so it overstates) and the anonymous memory (RSS less file-backed
    and shared pages: what the run holds that the kernel cannot drop or reread from disk). It also reads
    the machine's memory in use (total less available, every process on it). ``peaks()`` gives the
    largest of each, in MiB, and the machine's use when sampling began.

    Use as a context manager: ``with MemorySampler() as mem: ...; mem.peaks()``.
    """

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = float(interval)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="memory-sampler", daemon=True)
        self._peaks = {"rss_mib": 0.0, "anonymous_mib": 0.0, "machine_used_mib": 0.0}
        self._machine_at_start = None
        self.samples = 0

    @staticmethod
    def sample() -> dict[str, float]:
        """One reading: ``rss_mib`` and ``anonymous_mib`` of the process tree, ``machine_used_mib``."""
        import psutil

        me = psutil.Process()
        rss = anon = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                info = p.memory_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue  # ended between the listing and the reading
            rss += info.rss
            anon += max(info.rss - getattr(info, "shared", 0), 0)
        vm = psutil.virtual_memory()
        return {
            "rss_mib": rss / 2**20,
            "anonymous_mib": anon / 2**20,
            "machine_used_mib": (vm.total - vm.available) / 2**20,
        }

    def _record(self) -> None:
        now = self.sample()
        if self._machine_at_start is None:
            self._machine_at_start = now["machine_used_mib"]
        for k, v in now.items():
            self._peaks[k] = max(self._peaks[k], v)
        self.samples += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._record()

    def __enter__(self) -> MemorySampler:
        self._record()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._record()

    def peaks(self) -> dict[str, float]:
        """``{"rss_mib", "anonymous_mib", "machine_used_mib", "machine_used_at_start_mib", "samples",
        "interval_s"}``: the peaks so far (MiB, rounded) and how they were taken."""
        out = {k: round(v) for k, v in self._peaks.items()}
        out["machine_used_at_start_mib"] = None if self._machine_at_start is None else round(self._machine_at_start)
        return {**out, "samples": self.samples, "interval_s": self.interval}


def _execute(source: str, executed: str, params: dict, progress: bool, peak: multiprocessing.Queue) -> None:
    """Run one notebook with papermill (in a process of its own) and report its kernel's peak memory."""
    import papermill as pm

    # Progress bars inside the kernel would be spilled into the executed copy line by line; the kernel
    # inherits this variable (tqdm reads it when imported), papermill's own bar (imported above) stays.
    os.environ["TQDM_DISABLE"] = "1"
    pm.execute_notebook(
        source, executed, parameters=params, cwd=str(REPO_ROOT), kernel_name="python3", progress_bar=progress
    )
    peak.put(_children_peak_rss_mib())


def prerequisites(
    names: Sequence[str],
    needs: dict[str, tuple[str, ...]] | None = None,
    after: dict[str, tuple[str, ...]] | None = None,
) -> dict[str, set[str]]:
    """For each notebook of a run, the notebooks of the same run that must finish before it starts.

    Parameters
    ----------
    names : sequence of str
        Notebook stems in run order.
    needs : dict, default ``NEEDS``
        Stem -> the stems it reads from. A stem not in ``needs`` waits for every stem before it.
    after : dict, default ``AFTER``
        Stem -> stems it waits for without reading them (memory), where they come earlier in ``names``.

    Returns
    -------
    waits : dict of str -> set of str
        Only notebooks of this run appear (a need outside the run is assumed done already).

    Raises
    ------
    ValueError
        When a notebook needs one that comes after it in ``names``.
    """
    needs = NEEDS if needs is None else needs
    after = AFTER if after is None else after
    names = list(names)
    waits = {}
    for i, name in enumerate(names):
        if name not in needs:
            waits[name] = set(names[:i])
            continue
        later = [n for n in needs[name] if n in names[i + 1 :]]
        if later:
            raise ValueError(f"{name} reads what {', '.join(later)} writes, but runs before it; reorder the notebooks")
        waits[name] = {n for n in (*needs[name], *after.get(name, ())) if n in names[:i]}
    return waits


def run_notebooks(
    names: Sequence[str],
    *,
    params_file: str | os.PathLike,
    out_dir: str | os.PathLike,
    figures_dir: str | os.PathLike,
    source_dir: str | os.PathLike = SOURCE_DIR,
    progress: bool = True,
    jobs: int = 1,
    needs: dict[str, tuple[str, ...]] | None = None,
) -> list[NotebookRun]:
    """Execute the source notebooks ``names`` with papermill and record the run.

    Parameters
    ----------
    names : sequence of str
        Notebook stems under ``notebooks/`` (e.g. ``"01_activation_extraction"``), in run order.
    params_file : path
        YAML file of papermill parameters (``notebooks/params/full.yaml``).
    out_dir : path
        Folder for the executed copies (``notebooks/executed`` for the full run).
    figures_dir : path
        Where the provenance record is written (the run's figures folder).
    source_dir : path, default ``notebooks/``
        Folder of the source notebooks.
    progress : bool, default True
        Papermill's per-cell progress bar (only when one notebook runs at a time; with ``jobs > 1`` a
        line is printed when each notebook starts and ends).
    jobs : int, default 1
        How many notebooks may run at once. Each waits for the notebooks it reads from
        (``prerequisites``); most of the probe training in notebooks 02-04 keeps one core busy, so
        on two cores ``jobs=2`` lets notebooks 02, 03 and 06 share the machine.
    needs : dict, default ``NEEDS``
        What each notebook reads from the others.

    Returns
    -------
    runs : list of NotebookRun
        One per notebook, in the order of ``names``. The provenance record is written after every
        notebook, so an interrupted run still says how far it got.
    """
    from multiprocessing.connection import wait

    import yaml

    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    params = yaml.safe_load(Path(params_file).read_text(encoding="utf-8")) or {}
    out_dir, figures_dir = Path(out_dir), Path(figures_dir)
    for name in names:
        if not (Path(source_dir) / f"{name}.ipynb").exists():
            raise FileNotFoundError(
                f"no notebook {Path(source_dir) / name}.ipynb; expected one of {', '.join(NOTEBOOKS)}"
            )
    waits = prerequisites(names, needs)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures_dir.mkdir(parents=True, exist_ok=True)
    ctx = multiprocessing.get_context("spawn")
    started, runs = time.time(), {}
    pending, running = list(names), {}  # running: name -> (process, queue, start time)
    show_bar = progress and jobs == 1
    with MemorySampler() as memory:
        while pending or running:
            ready = [n for n in pending if waits[n] <= runs.keys()]
            for name in ready[: jobs - len(running)]:
                pending.remove(name)
                source = Path(source_dir) / f"{name}.ipynb"
                print(f"== {name}" + (f" (started at {time.time() - started:.0f} s)" if jobs > 1 else ""), flush=True)
                peak = ctx.Queue()
                # One process per notebook, so that each kernel's peak memory is measured on its own.
                child = ctx.Process(
                    target=_execute, args=(str(source), str(out_dir / source.name), params, show_bar, peak)
                )
                child.start()
                running[name] = (child, peak, time.perf_counter(), time.time() - started)
            if not running:
                raise RuntimeError(f"notebooks {', '.join(pending)} wait for notebooks that are not in the run")
            wait([child.sentinel for child, *_ in running.values()])
            for name in [n for n, (child, *_) in running.items() if not child.is_alive()]:
                child, peak, t0, offset = running.pop(name)
                child.join()
                if child.exitcode != 0:
                    for other, *_ in running.values():
                        other.terminate()
                    raise RuntimeError(
                        f"{name} failed (exit code {child.exitcode}); its partial output is in {out_dir / (name + '.ipynb')}"
                    )
                seconds = time.perf_counter() - t0
                runs[name] = NotebookRun(name, seconds, peak.get(), stage_times(out_dir / f"{name}.ipynb"), offset)
                if jobs > 1:
                    print(f"== {name} done in {seconds:.0f} s", flush=True)
                done = [runs[n] for n in names if n in runs]
                write_provenance(
                    figures_dir / PROVENANCE_FILE,
                    done,
                    params_file=params_file,
                    started=started,
                    jobs=jobs,
                    memory=memory.peaks(),
                )
    done = [runs[n] for n in names if n in runs]
    write_provenance(
        figures_dir / PROVENANCE_FILE, done, params_file=params_file, started=started, jobs=jobs, memory=memory.peaks()
    )
    return [runs[n] for n in names]


def provenance_record(
    runs: Iterable[NotebookRun],
    *,
    params_file: str | os.PathLike,
    started: float,
    jobs: int = 1,
    memory: dict | None = None,
) -> dict:
    """What made the committed results: commit, versions, machine, per-notebook time and memory.

    ``memory``: ``MemorySampler.peaks()`` of the whole run (process tree and machine), when sampled."""
    runs = list(runs)
    versions = {}
    for pkg in _PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    params_path = Path(params_file).resolve()
    return {
        "commit": _git("rev-parse", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--", "utils", "notebooks/params")),
        "params_file": str(params_path.relative_to(REPO_ROOT))
        if params_path.is_relative_to(REPO_ROOT)
        else str(params_path),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "versions": versions,
        "machine": machine_record(),
        "notebooks": [
            {
                "name": r.name,
                "seconds": round(r.seconds, 1),
                "peak_rss_mib": round(r.peak_rss_mib),
                "started_s": round(r.started_s, 1),
                "stages": r.stages,
            }
            for r in runs
        ],
        "jobs": jobs,
        "total_seconds": round(sum(r.seconds for r in runs), 1),
        "wall_seconds": round(max((r.started_s + r.seconds for r in runs), default=0.0), 1),
        # With jobs > 1 notebooks overlap: the largest sum of the peaks of notebooks running at one time
        # (an upper bound on the machine's peak, since each kernel's peak need not fall in the overlap).
        "peak_rss_mib_overlapping": round(
            max(
                (
                    sum(o.peak_rss_mib for o in runs if o.started_s <= r.started_s < o.started_s + o.seconds)
                    for r in runs
                ),
                default=0.0,
            )
        ),
        "peak_rss_mib": round(max((r.peak_rss_mib for r in runs), default=0.0)),
        # Sampled over the whole run (MemorySampler): the sum over every process of the run at one time;
        # anonymous_mib leaves out memory-mapped store pages, which the kernel can drop and reread.
        "memory": memory,
    }


def write_provenance(
    path: str | os.PathLike,
    runs: Iterable[NotebookRun],
    *,
    params_file: str | os.PathLike,
    started: float,
    jobs: int = 1,
    memory: dict | None = None,
) -> Path:
    """Write ``provenance_record(...)`` as JSON to ``path`` atomically; return the path."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    record = provenance_record(runs, params_file=params_file, started=started, jobs=jobs, memory=memory)
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def timing_table(record: dict, *, min_seconds: float = 1.0) -> str:
    """A plain-text table of a provenance record: each notebook's seconds and peak memory, then each
    stage (notebook section) that took at least ``min_seconds``."""
    rows = [f"{'notebook':<34} {'seconds':>9} {'peak MiB':>9}"]
    rows += [f"{r['name']:<34} {r['seconds']:>9.1f} {r['peak_rss_mib']:>9}" for r in record["notebooks"]]
    rows.append(f"{'total':<34} {record['total_seconds']:>9.1f} {record['peak_rss_mib']:>9}")
    if record.get("jobs", 1) > 1:
        wall, peak = record["wall_seconds"], record["peak_rss_mib_overlapping"]
        rows.append(f"{'wall time (' + str(record['jobs']) + ' notebooks at once)':<34} {wall:>9.1f} {peak:>9}")
    mem = record.get("memory")
    if mem:
        rows.append(
            f"memory sampled every {mem['interval_s']:g} s over the run's processes: peak {mem['rss_mib']} MiB resident, "
            f"{mem['anonymous_mib']} MiB anonymous (without memory-mapped store pages); machine in use: "
            f"{mem['machine_used_at_start_mib']} MiB at the start, {mem['machine_used_mib']} MiB at the peak"
        )
    stages = [(r["name"][:2], st) for r in record["notebooks"] for st in r.get("stages", [])]
    if stages:
        rows += ["", f"{'stage (notebook: section)':<60} {'seconds':>9}"]
        rows += [
            f"{nb + ': ' + st['stage'][:56]:<60} {st['seconds']:>9.1f}"
            for nb, st in stages
            if st["seconds"] >= min_seconds
        ]
    return "\n".join(rows)


# --------------------------------------------------------------------------------------------------
# Checks on the committed tree
# --------------------------------------------------------------------------------------------------
def code_cells(nb: nbformat.NotebookNode) -> list[str]:
    """The sources of a notebook's code cells, without papermill's injected-parameters cell."""
    return [
        c.source
        for c in nb.cells
        if c.cell_type == "code" and INJECTED_TAG not in c.get("metadata", {}).get("tags", [])
    ]


_ABSOLUTE_PATH = re.compile(r"(?<![\w.])/(?:home|root|tmp|work|Users|private|var)/[^\s'\"]+")


def output_problems(executed: str | os.PathLike) -> list[str]:
    """What a reader should not see in an executed copy: kernel warnings (stderr) and absolute paths.

    Returns
    -------
    problems : list of str
        One per offending cell: its index and the first stderr line or path found.
    """
    nb = nbformat.read(executed, as_version=4)
    name, problems = Path(executed).name, []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            text = out.get("text", "") if out.get("output_type") == "stream" else ""
            text += "".join(str(v) for k, v in out.get("data", {}).items() if k.startswith("text/"))
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                first = next((line for line in text.splitlines() if line.strip()), "")
                problems.append(f"{name}: cell {i} writes to stderr (a kernel warning?): {first[:100]!r}")
            elif (m := _ABSOLUTE_PATH.search(text)) is not None:
                problems.append(f"{name}: cell {i} shows an absolute path: {m.group(0)[:100]!r}")
    return problems


def executed_problems(source: str | os.PathLike, executed: str | os.PathLike) -> list[str]:
    """What is wrong with the executed copy ``executed`` of the notebook ``source`` (empty: nothing).

    A copy is right when it exists, papermill recorded no exception, every code cell ran (has an
    execution count), it holds outputs, and its code cells equal the source's.
    """
    source, executed = Path(source), Path(executed)
    if not executed.exists():
        return [f"{executed.name}: no executed copy at {executed} (run `make reproduce`)"]
    src, run = nbformat.read(source, as_version=4), nbformat.read(executed, as_version=4)
    problems = []
    if run.metadata.get("papermill", {}).get("exception"):
        problems.append(f"{executed.name}: papermill recorded an exception (the run failed part-way)")
    cells = [c for c in run.cells if c.cell_type == "code"]
    unexecuted = sum(c.get("execution_count") is None for c in cells)
    if unexecuted:
        problems.append(f"{executed.name}: {unexecuted} of {len(cells)} code cells were never executed")
    if not any(c.get("outputs") for c in cells):
        problems.append(f"{executed.name}: no cell has any output (outputs stripped, or never run)")
    if code_cells(src) != code_cells(run):
        problems.append(
            f"{executed.name}: its code differs from {source.name} (the source changed after the "
            f"run: run `make reproduce` again)"
        )
    return problems


def source_problems(source: str | os.PathLike) -> list[str]:
    """What is wrong with a source notebook: it must carry no outputs and no injected parameters."""
    nb = nbformat.read(Path(source), as_version=4)
    name, problems = Path(source).name, []
    if any(c.get("outputs") for c in nb.cells if c.cell_type == "code"):
        problems.append(f"{name}: the source holds outputs (executed copies belong in notebooks/executed/)")
    if any(INJECTED_TAG in c.get("metadata", {}).get("tags", []) for c in nb.cells):
        problems.append(f"{name}: the source holds papermill's injected parameters (it would not run with its own)")
    problems += [f"{name}: {p}" for p in _parameter_parse_problems(nb)]
    return problems


def _parameter_parse_problems(nb: nbformat.NotebookNode) -> list[str]:
    """Lines of the ``parameters`` cell that papermill cannot parse (it warns on each run; e.g. '=' in a comment)."""
    import io
    import logging

    from papermill.translators import PythonTranslator

    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not cells:
        return []
    logger, buffer = logging.getLogger("papermill.translators"), io.StringIO()
    handler = logging.StreamHandler(buffer)
    logger.addHandler(handler)
    try:
        PythonTranslator.inspect(cells[0])
    finally:
        logger.removeHandler(handler)
    return [f"papermill cannot parse its parameters cell: {line}" for line in buffer.getvalue().splitlines() if line]


def parameter_defaults(source: str | os.PathLike) -> dict[str, object]:
    """The literal defaults of a notebook's ``parameters`` cell (names whose value is not a literal are left out)."""
    import ast

    nb = nbformat.read(Path(source), as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not cells:
        return {}
    values = {}
    for node in ast.parse(cells[0].source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                values[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return values


def default_problems(sources: Sequence[str | os.PathLike]) -> list[str]:
    """Parameters that two notebooks both define with different defaults (run interactively, the second
    would rebuild what the first made, or read a table the first did not write)."""
    seen: dict[str, tuple[str, object]] = {}
    problems = []
    for source in sources:
        for name, value in parameter_defaults(source).items():
            if name in seen and seen[name][1] != value:
                problems.append(
                    f"{Path(source).name}: parameter {name} = {value!r}, but {seen[name][0]} has "
                    f"{seen[name][1]!r}; give the notebooks one default"
                )
            seen.setdefault(name, (Path(source).name, value))
    return problems


def referenced_artifacts(text: str) -> set[str]:
    """Every ``figures/...`` file (png, csv, txt, json) named in ``text``, as repository-relative paths."""
    return set(_ARTIFACT.findall(text))


def missing_artifacts(texts: Iterable[str], *, root: Path = REPO_ROOT) -> list[str]:
    """The ``figures/...`` files named in ``texts`` that do not exist under ``root``."""
    named = set().union(*(referenced_artifacts(t) for t in texts)) if texts else set()
    return sorted(p for p in named if not (root / p).exists())


def markdown_table_rows(markdown: str) -> list[list[str]]:
    """The cells of the first markdown table in ``markdown``: header first, the rule line dropped."""
    rows, started = [], False
    for line in markdown.splitlines():
        line = line.strip()
        if line.startswith("|"):
            started = True
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                rows.append(cells)
        elif started:
            break
    return rows


def _same_cell(shown: str, value: object, digits: int) -> bool:
    """Does the markdown cell ``shown`` say ``value`` (floats compared at ``digits`` decimals)?"""
    if value is None or (isinstance(value, float) and value != value):
        return shown in ("–", "-", "", "nan")
    try:
        number = float(value)
    except (TypeError, ValueError):
        return shown == str(value)
    try:
        return abs(float(shown) - number) <= 0.5 * 10**-digits + 1e-12
    except ValueError:
        return False


def table_problems(markdown: str, table: pd.DataFrame, *, digits: int = 3) -> list[str]:  # noqa: F821
    """Where the first markdown table in ``markdown`` differs from ``table`` (columns it shows only).

    Parameters
    ----------
    markdown : str
        Text holding a GitHub markdown table (e.g. the README's results section).
    table : pandas.DataFrame
        The CSV it was generated from; every column the markdown shows must exist in it.
    digits : int, default 3
        Decimals the markdown rounds floats to.
    """
    rows = markdown_table_rows(markdown)
    if not rows:
        return ["no markdown table found"]
    header, body = rows[0], rows[1:]
    missing = [h for h in header if h not in table.columns]
    if missing:
        return [f"the table shows columns {missing} that the CSV lacks (columns: {list(table.columns)})"]
    if len(body) != len(table):
        return [f"the table has {len(body)} rows, the CSV {len(table)}"]
    problems = []
    for i, (shown, row) in enumerate(zip(body, table[header].itertuples(index=False))):
        for col, cell, value in zip(header, shown, row):
            if not _same_cell(cell, value, digits):
                problems.append(f"row {i + 1}, column {col!r}: the table says {cell!r}, the CSV {value!r}")
    return problems


def section(text: str, name: str) -> str:
    """What stands between ``<!-- name:start -->`` and ``<!-- name:end -->`` in ``text`` ('' if absent)."""
    m = re.search(rf"<!-- {re.escape(name)}:start -->\n(.*?)<!-- {re.escape(name)}:end -->", text, re.S)
    return m.group(1) if m else ""


CODE_PATHS: tuple[str, ...] = ("utils", "notebooks", ":(exclude)notebooks/executed", ":(exclude)notebooks/html")
"""Git pathspecs of the code that makes the results: the package, the notebook sources and their
parameters (the executed copies and their HTML are outputs, not code)."""


def provenance_staleness(record: dict, *, repo: Path = REPO_ROOT) -> str | None:
    """A sentence when the code that makes the results differs between ``record``'s commit and HEAD.

    Compares trees (``git diff``), not dates, so committing a run's outputs after it, or a change
    made and reverted, is not staleness. ``None`` when nothing of ``CODE_PATHS`` changed.
    """
    made = record.get("commit", "")
    if not made:
        return "the provenance record names no commit: run `make reproduce` to make one"
    if not _git("rev-parse", "--verify", "--quiet", f"{made}^{{commit}}", cwd=repo):
        return f"the provenance commit {made[:10]} is not in this repository: run `make reproduce`"
    changed = _git("diff", "--name-only", made, "HEAD", "--", *CODE_PATHS, cwd=repo).splitlines()
    if not changed:
        return None
    shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
    return (
        f"the committed results come from commit {made[:10]}; since then {len(changed)} file(s) of the code "
        f"that makes them changed ({shown}): run `make reproduce` to bring them up to date"
    )


def committed_staleness(*, root: Path = REPO_ROOT) -> str | None:
    """``provenance_staleness`` of the committed run's record (``figures/provenance.json`` under ``root``);
    ``None`` when there is no record (``missing_artifacts`` reports that)."""
    record_file = root / "figures" / PROVENANCE_FILE
    if not record_file.exists():
        return None
    return provenance_staleness(json.loads(record_file.read_text(encoding="utf-8")), repo=root)


def tutorial_problems(*, root: Path = REPO_ROOT, names: Sequence[str] = NOTEBOOKS) -> list[str]:
    """Every check above on the tree at ``root``: the list of problems (empty when all is well)."""
    import pandas as pd

    problems = []
    texts = [(root / "README.md").read_text(encoding="utf-8")]
    for name in names:
        source = root / "notebooks" / f"{name}.ipynb"
        problems += source_problems(source)
        executed = root / "notebooks" / "executed" / f"{name}.ipynb"
        problems += executed_problems(source, executed)
        problems += output_problems(executed) if executed.exists() else []
        texts.append(source.read_text(encoding="utf-8"))
    problems += default_problems([root / "notebooks" / f"{name}.ipynb" for name in names])
    problems += [f"{p} is named in the README or a notebook but missing" for p in missing_artifacts(texts, root=root)]
    results = section(texts[0], "results")
    csv = root / "figures" / "transfer_results.csv"
    if results and csv.exists():
        from .report import README_COLUMNS

        shown = pd.read_csv(csv).rename(columns=README_COLUMNS)
        problems += [f"README results table: {p}" for p in table_problems(results, shown)]
    return problems


def comparison_report(a: str | Path, b: str | Path) -> str:
    """What ``python -m utils.tutorial compare`` prints: the tables of run ``b`` against those of run ``a``.

    A count per status, the tables that differ (largest relative change first) and every verdict cell
    that changed (``run_comparison``); the last line says whether any verdict changed.
    """
    import pandas as pd

    from .run_comparison import compare_runs, verdict_changes

    table = compare_runs(a, b)
    counts = table["status"].value_counts()
    lines = [f"{len(table)} tables: " + ", ".join(f"{n} {status}" for status, n in counts.items())]
    differing = table[table["status"] != "identical"].sort_values("max_rel", ascending=False, na_position="first")
    names = differing["columns"].str.split(", ")
    differing = differing.assign(
        columns=[", ".join(c[:4]) + (f" (+{len(c) - 4})" if len(c) > 4 else "") for c in names]
    )
    if len(differing):
        with pd.option_context("display.width", 200, "display.max_colwidth", 60, "display.max_rows", None):
            lines.append(differing.to_string(index=False))
    changes = verdict_changes(a, b)
    if len(changes):
        with pd.option_context("display.width", 200, "display.max_colwidth", 80, "display.max_rows", None):
            lines.append(changes.to_string(index=False))
    lines.append(f"{len(changes)} verdict cell(s) changed" if len(changes) else "no verdict changed")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m utils.tutorial run|check|compare``: run the notebooks and record provenance, check the tree,
    or compare another run's tables with the committed ones."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute notebooks with papermill and write the provenance record")
    run.add_argument("--params", required=True, help="papermill parameters YAML")
    run.add_argument("--out", required=True, help="folder for the executed copies")
    run.add_argument("--figures", required=True, help="folder for provenance.json (the run's figures folder)")
    run.add_argument("--notebooks", nargs="*", default=list(NOTEBOOKS), help="notebook stems, in order")
    run.add_argument("--extra", nargs="*", default=[], help="notebook stems run after --notebooks")
    run.add_argument("--jobs", type=int, default=1, help="notebooks run at once, each after those it reads (NEEDS)")
    sub.add_parser("check", help="print what is wrong with the committed tutorial; exit 1 if anything")
    compare = sub.add_parser("compare", help="how another run's CSV tables differ from these (run_comparison)")
    compare.add_argument("other", help="the other run's figures folder")
    compare.add_argument("--against", default=str(REPO_ROOT / "figures"), help="figures folder to compare with")
    args = parser.parse_args(argv)
    if args.command == "compare":
        print(comparison_report(args.against, args.other))
        return
    if args.command == "run":
        run_notebooks(
            [*args.notebooks, *args.extra],
            params_file=args.params,
            out_dir=args.out,
            figures_dir=args.figures,
            jobs=args.jobs,
        )
        record = json.loads((Path(args.figures) / PROVENANCE_FILE).read_text(encoding="utf-8"))
        print(timing_table(record))
    else:
        problems = tutorial_problems()
        print("\n".join(problems) if problems else "the tutorial is consistent")
        if (REPO_ROOT / "figures" / PROVENANCE_FILE).exists():
            stale = committed_staleness()
            print(f"note (not a failure): {stale}" if stale else "the provenance commit made the current code")
        raise SystemExit(1 if problems else 0)


if __name__ == "__main__":
    main()
