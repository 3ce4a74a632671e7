"""The tutorial checks: executed copies, named artefacts, README numbers, provenance.

Each check is tested on a real executed notebook (papermill runs a two-cell source in a kernel)
and then shown to fail when the copy is broken the way a careless commit breaks it.
"""

from __future__ import annotations

import copy
import json
import subprocess
import warnings

import nbformat
import pandas as pd
import pytest

from utils import tutorial
from utils.report import README_COLUMNS, markdown_table


@pytest.fixture(scope="module")
def executed_pair(tmp_path_factory):
    """A source notebook (parameters cell + two code cells) and its papermill-executed copy."""
    pm = pytest.importorskip("papermill")
    folder = tmp_path_factory.mktemp("nb")
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell("n = 3")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Demo\nWrites `figures/demo.csv`."),
        params,
        nbformat.v4.new_code_cell("squares = [i * i for i in range(n)]"),
        nbformat.v4.new_code_cell("print(sum(squares))"),
    ]
    source, executed = folder / "demo.ipynb", folder / "executed.ipynb"
    nbformat.write(nb, source)
    pm.execute_notebook(str(source), str(executed), parameters={"n": 4}, kernel_name="python3", progress_bar=False)
    return source, executed


def test_executed_copy_passes_and_ran_the_injected_parameters(executed_pair):
    source, executed = executed_pair
    assert tutorial.executed_problems(source, executed) == []
    assert tutorial.source_problems(source) == []
    run = nbformat.read(executed, as_version=4)
    assert run.cells[-1].outputs[0]["text"].strip() == str(sum(i * i for i in range(4)))  # n = 4 was injected
    assert tutorial.source_problems(executed)  # an executed copy is no source: outputs + injected cell


def test_stage_times_split_at_markdown_cells(tmp_path):
    nb = nbformat.v4.new_notebook()
    cells = [
        nbformat.v4.new_code_cell("a = 1"),
        nbformat.v4.new_markdown_cell("## Load the data\nmore text"),
        nbformat.v4.new_code_cell("b = 2"),
        nbformat.v4.new_code_cell("c = 3"),
        nbformat.v4.new_markdown_cell("## Fit"),
        nbformat.v4.new_code_cell("d = 4"),
    ]
    for cell, seconds in zip([cells[i] for i in (0, 2, 3, 5)], (0.5, 2.0, 3.25, 7.0), strict=True):
        cell.metadata["papermill"] = {"duration": seconds}
    nb.cells = cells
    nbformat.write(nb, tmp_path / "t.ipynb")
    assert tutorial.stage_times(tmp_path / "t.ipynb") == [
        {"stage": "(setup)", "seconds": 0.5},
        {"stage": "Load the data", "seconds": 5.2},
        {"stage": "Fit", "seconds": 7.0},
    ]


def test_stripped_outputs_fail_the_check(executed_pair, tmp_path):
    source, executed = executed_pair
    nb = nbformat.read(executed, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
    stripped = tmp_path / "stripped.ipynb"
    nbformat.write(nb, stripped)
    problems = tutorial.executed_problems(source, stripped)
    assert any("no cell has any output" in p for p in problems)

    for cell in nb.cells:  # nbstripout also clears execution counts
        if cell.cell_type == "code":
            cell.execution_count = None
    nbformat.write(nb, stripped)
    assert any("never executed" in p for p in tutorial.executed_problems(source, stripped))


def test_changed_source_and_failed_run_fail_the_check(executed_pair, tmp_path):
    source, executed = executed_pair
    nb = nbformat.read(source, as_version=4)
    nb.cells[2].source = "squares = [i ** 3 for i in range(n)]"
    changed = tmp_path / "changed.ipynb"
    nbformat.write(nb, changed)
    assert any("differs from" in p for p in tutorial.executed_problems(changed, executed))

    run = nbformat.read(executed, as_version=4)
    run.metadata["papermill"]["exception"] = True
    failed = tmp_path / "failed.ipynb"
    nbformat.write(run, failed)
    assert any("exception" in p for p in tutorial.executed_problems(source, failed))
    assert any("no executed copy" in p for p in tutorial.executed_problems(source, tmp_path / "absent.ipynb"))


def test_named_artifacts_are_found_and_missing_ones_reported(tmp_path):
    text = "See `figures/layer_cka.png` and figures/transfer_results.csv; not figures/ alone, nor figures/x.py."
    assert tutorial.referenced_artifacts(text) == {"figures/layer_cka.png", "figures/transfer_results.csv"}
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "layer_cka.png").write_bytes(b"png")
    assert tutorial.missing_artifacts([text], root=tmp_path) == ["figures/transfer_results.csv"]


def test_readme_table_check_catches_a_changed_number():
    table = pd.DataFrame({"model": ["a", "b"], "test": [0.8761, 0.5], "pct_kept": [4.0, float("nan")]})
    markdown = markdown_table(table.rename(columns=README_COLUMNS), digits=3)
    assert tutorial.table_problems(markdown, table.rename(columns=README_COLUMNS)) == []
    edited = markdown.replace("0.876", "0.880")
    problems = tutorial.table_problems(edited, table.rename(columns=README_COLUMNS))
    assert problems == ["row 1, column 'test': the table says '0.880', the CSV 0.8761"]
    assert tutorial.table_problems(markdown, table.iloc[:1].rename(columns=README_COLUMNS)) == [
        "the table has 2 rows, the CSV 1"
    ]


def test_committed_readme_numbers_match_their_csv():
    """The README's generated results table says what figures/transfer_results.csv says."""
    readme = (tutorial.REPO_ROOT / "README.md").read_text(encoding="utf-8")
    results = tutorial.section(readme, "results")
    assert results, "the README has no generated results section"
    csv = pd.read_csv(tutorial.REPO_ROOT / "figures" / "transfer_results.csv").rename(columns=README_COLUMNS)
    assert tutorial.table_problems(results, csv) == []


def test_provenance_record_and_staleness(tmp_path):
    repo = tmp_path / "repo"
    (repo / "utils").mkdir(parents=True)

    def git(*args):
        return subprocess.run(
            ["git", "-c", "user.email=t@t", "-c", "user.name=t", *args],
            cwd=repo,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    git("init", "-q")
    (repo / "utils" / "a.py").write_text("x = 1\n")
    git("add", "."), git("commit", "-qm", "one")
    first = git("rev-parse", "HEAD")
    assert tutorial.provenance_staleness({"commit": first}, repo=repo) is None
    (repo / "utils" / "a.py").write_text("x = 2\n")
    git("commit", "-qam", "two")
    message = tutorial.provenance_staleness({"commit": first}, repo=repo)
    assert message and first[:10] in message and "make reproduce" in message and "utils/a.py" in message
    # a run made at HEAD, then its outputs committed: not stale; a change reverted: not stale either
    (repo / "notebooks" / "executed").mkdir(parents=True)
    (repo / "notebooks" / "html").mkdir()
    run = git("rev-parse", "HEAD")
    (repo / "notebooks" / "executed" / "01.ipynb").write_text("{}")
    (repo / "notebooks" / "html" / "01.html").write_text("<html/>")
    git("add", "."), git("commit", "-qm", "outputs of the run")
    assert tutorial.provenance_staleness({"commit": run}, repo=repo) is None
    (repo / "notebooks" / "01.ipynb").write_text("{}")  # a notebook source is code
    git("add", "."), git("commit", "-qm", "source")
    assert "notebooks/01.ipynb" in tutorial.provenance_staleness({"commit": run}, repo=repo)
    assert "not in this repository" in tutorial.provenance_staleness({"commit": "0" * 40}, repo=repo)

    runs = [tutorial.NotebookRun("01_x", 12.34, 100.0), tutorial.NotebookRun("02_y", 2.0, 250.4)]
    path = tutorial.write_provenance(tmp_path / "provenance.json", runs, params_file=tmp_path / "p.yaml", started=0.0)
    record = json.loads(path.read_text())
    assert record["total_seconds"] == pytest.approx(14.3, abs=0.05)
    assert record["peak_rss_mib"] == 250
    assert [r["name"] for r in record["notebooks"]] == ["01_x", "02_y"]
    assert "02_y" in tutorial.timing_table(copy.deepcopy(record))
    assert record["memory"] is None and "memory sampled" not in tutorial.timing_table(record)
    memory = {
        "rss_mib": 900,
        "anonymous_mib": 700,
        "machine_used_mib": 5000,
        "machine_used_at_start_mib": 4000,
        "samples": 7,
        "interval_s": 1.0,
    }
    path = tutorial.write_provenance(path, runs, params_file=tmp_path / "p.yaml", started=0.0, memory=memory)
    record = json.loads(path.read_text())
    assert record["memory"] == memory
    assert "peak 900 MiB resident, 700 MiB anonymous" in tutorial.timing_table(record)


def test_committed_tutorial_is_consistent():
    assert tutorial.tutorial_problems() == []
    stale = tutorial.committed_staleness()
    if stale:  # reported, not failed: a code change lands before the run that refreshes the results
        warnings.warn(stale, stacklevel=1)


def test_run_notebooks_executes_in_order_and_records_provenance(executed_pair, tmp_path):
    source, _ = executed_pair
    (tmp_path / "params.yaml").write_text("n: 5\n")
    runs = tutorial.run_notebooks(
        [source.stem],
        params_file=tmp_path / "params.yaml",
        out_dir=tmp_path / "out",
        figures_dir=tmp_path / "figs",
        source_dir=source.parent,
        progress=False,
    )
    copy_ = tmp_path / "out" / source.name
    assert tutorial.executed_problems(source, copy_) == []
    assert nbformat.read(copy_, as_version=4).cells[-1].outputs[0]["text"].strip() == str(sum(i * i for i in range(5)))
    record = json.loads((tmp_path / "figs" / tutorial.PROVENANCE_FILE).read_text())
    assert [r["name"] for r in record["notebooks"]] == [source.stem] == [r.name for r in runs]
    assert 20 < record["peak_rss_mib"] < 4096  # a Python kernel's resident memory, in MiB
    # Per-stage times: the demo has one markdown cell, so everything after it is the stage "Demo"
    cells = nbformat.read(copy_, as_version=4).cells
    durations = [c.metadata["papermill"]["duration"] for c in cells if c.cell_type == "code"]
    (stage,) = record["notebooks"][0]["stages"]
    assert stage["stage"] == "Demo"
    assert stage["seconds"] == pytest.approx(sum(durations), abs=0.11)
    assert "Demo" in tutorial.timing_table(record, min_seconds=0)
    with pytest.raises(FileNotFoundError, match="no notebook"):
        tutorial.run_notebooks(
            ["nope"],
            params_file=tmp_path / "params.yaml",
            out_dir=tmp_path / "out",
            figures_dir=tmp_path / "figs",
            source_dir=source.parent,
        )


def test_committed_sources_share_their_parameter_defaults(tmp_path):
    """Opened in JupyterLab, each notebook runs with its own parameters cell and reuses its neighbours' stores."""
    sources = [tutorial.SOURCE_DIR / f"{name}.ipynb" for name in tutorial.NOTEBOOKS]
    assert tutorial.default_problems(sources) == []
    for source in [*sources, tutorial.SOURCE_DIR / "05_explore.ipynb"]:  # the explorer's None = "all found"
        assert tutorial.source_problems(source) == []
    assert tutorial.parameter_defaults(sources[0])["eval_budget"] == 500
    # a neighbour with another default is reported
    nb = nbformat.read(sources[0], as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = cell.source.replace("eval_budget = 500", "eval_budget = 1000")
    nbformat.write(nb, tmp_path / "other.ipynb")
    cell.source += "\nthreshold = 0.3  # t = 0.3 (an '=' in a comment: papermill cannot parse the line)"
    nbformat.write(nb, tmp_path / "other.ipynb")
    assert any("cannot parse" in p for p in tutorial.source_problems(tmp_path / "other.ipynb"))
    problems = tutorial.default_problems([sources[0], tmp_path / "other.ipynb"])
    assert problems == [
        "other.ipynb: parameter eval_budget = 1000, but 01_activation_extraction.ipynb has 500; "
        "give the notebooks one default"
    ]


def test_output_problems_flag_kernel_warnings_and_absolute_paths(tmp_path):
    nb = nbformat.v4.new_notebook()
    clean = nbformat.v4.new_code_cell("x")
    clean.outputs = [nbformat.v4.new_output("stream", name="stdout", text="note: 3 constant neurons\n")]
    warned = nbformat.v4.new_code_cell("y")
    warned.outputs = [nbformat.v4.new_output("stream", name="stderr", text="/x/utils/clustering.py:570: Warn\n")]
    shown = nbformat.v4.new_code_cell("z")
    shown.outputs = [
        nbformat.v4.new_output("execute_result", data={"text/plain": "PosixPath('/work/main/figures/a.png')"})
    ]
    relative = nbformat.v4.new_code_cell("w")
    relative.outputs = [nbformat.v4.new_output("execute_result", data={"text/plain": "PosixPath('figures/a.png')"})]
    nb.cells = [clean, warned, shown, relative]
    nbformat.write(nb, tmp_path / "n.ipynb")
    problems = tutorial.output_problems(tmp_path / "n.ipynb")
    assert len(problems) == 2
    assert "cell 1 writes to stderr" in problems[0] and "cell 2 shows an absolute path" in problems[1]
    assert "/work/main/figures/a.png" in problems[1]


def _tiny_notebook(path, *lines):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell("folder = '.'")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, *(nbformat.v4.new_code_cell(line) for line in lines)]
    nbformat.write(nb, path)


def test_prerequisites_follow_needs_and_default_to_everything_before():
    names = ["a", "b", "c", "d"]
    waits = tutorial.prerequisites(names, {"b": ("a",), "c": ("a", "outside")})
    assert waits == {"a": set(), "b": {"a"}, "c": {"a"}, "d": {"a", "b", "c"}}
    with pytest.raises(ValueError, match="runs before it"):
        tutorial.prerequisites(["b", "a"], {"b": ("a",)})
    full = tutorial.prerequisites(list(tutorial.NOTEBOOKS))
    assert full["04_feature_selected_transfer"] == {
        "01_activation_extraction",
        "02_general_redundancy",
        "03_task_specific_redundancy",
    }
    assert full["02_general_redundancy"] == full["03_task_specific_redundancy"] == {"01_activation_extraction"}
    # notebook 06 reads only 01, and waits for 03 for memory (AFTER), so it never runs beside 03's probes
    assert full["06_redundancy_at_scale"] == {"01_activation_extraction", "03_task_specific_redundancy"}


def test_after_orders_without_data_and_only_when_earlier():
    names = ["a", "b", "c"]
    needs = {"b": ("a",), "c": ("a",)}
    assert tutorial.prerequisites(names, needs, {"c": ("b",)})["c"] == {"a", "b"}
    assert tutorial.prerequisites(names, needs, {})["c"] == {"a"}
    # an order on a notebook that comes later is not a data need: no error, nothing to wait for
    assert tutorial.prerequisites(names, needs, {"b": ("c",)})["b"] == {"a"}
    assert tutorial.prerequisites(["a", "c"], needs, {"c": ("b",)})["c"] == {"a"}


def test_two_jobs_run_independent_notebooks_together_after_what_they_read(tmp_path):
    """b waits (up to a minute) for c's marker and c for b's: they can only both finish if they overlap;
    both read what a wrote, so they must start after a finished; d waits for b and c."""
    pytest.importorskip("papermill")
    src = tmp_path / "src"
    src.mkdir()
    wait_for = (
        "import time, pathlib\n"
        "def wait_for(name):\n"
        "    for _ in range(600):\n"
        "        if (pathlib.Path(folder) / name).exists():\n"
        "            return\n"
        "        time.sleep(0.1)\n"
        "    raise TimeoutError(name)"
    )
    _tiny_notebook(src / "a.ipynb", "import pathlib; (pathlib.Path(folder) / 'a.txt').write_text('a')")
    for me, other in (("b", "c"), ("c", "b")):
        _tiny_notebook(
            src / f"{me}.ipynb",
            wait_for,
            f"assert (pathlib.Path(folder) / 'a.txt').read_text() == 'a'\n"
            f"(pathlib.Path(folder) / '{me}.txt').write_text('{me}')\nwait_for('{other}.txt')",
        )
    _tiny_notebook(
        src / "d.ipynb",
        "import pathlib; assert {p.name for p in pathlib.Path(folder).glob('?.txt')} == {'a.txt', 'b.txt', 'c.txt'}",
    )
    (tmp_path / "params.yaml").write_text(f"folder: {tmp_path}\n")
    kwargs = dict(params_file=tmp_path / "params.yaml", out_dir=tmp_path / "out", figures_dir=tmp_path / "figs")
    needs = {"b": ("a",), "c": ("a",), "d": ("b", "c")}
    runs = tutorial.run_notebooks(["a", "b", "c", "d"], source_dir=src, progress=False, jobs=2, needs=needs, **kwargs)
    by = {r.name: r for r in runs}
    assert [r.name for r in runs] == ["a", "b", "c", "d"]
    a_end = by["a"].started_s + by["a"].seconds
    assert by["b"].started_s >= a_end - 0.5 and by["c"].started_s >= a_end - 0.5
    assert by["d"].started_s >= max(by[n].started_s + by[n].seconds for n in "bc") - 0.5
    record = json.loads((tmp_path / "figs" / tutorial.PROVENANCE_FILE).read_text())
    assert record["jobs"] == 2 and record["wall_seconds"] < record["total_seconds"]  # b and c overlapped
    assert record["peak_rss_mib_overlapping"] >= record["peak_rss_mib"]
    assert "notebooks at once" in tutorial.timing_table(record)


def test_a_failing_notebook_stops_the_run_and_says_which(tmp_path):
    pytest.importorskip("papermill")
    src = tmp_path / "src"
    src.mkdir()
    _tiny_notebook(src / "ok.ipynb", "import time; time.sleep(30)")
    _tiny_notebook(src / "bad.ipynb", "raise ValueError('boom')")
    (tmp_path / "params.yaml").write_text("folder: .\n")
    t0 = __import__("time").perf_counter()
    with pytest.raises(RuntimeError, match="bad failed"):
        tutorial.run_notebooks(
            ["ok", "bad"],
            params_file=tmp_path / "params.yaml",
            out_dir=tmp_path / "out",
            figures_dir=tmp_path / "figs",
            source_dir=src,
            progress=False,
            jobs=2,
            needs={"bad": ()},
        )
    assert __import__("time").perf_counter() - t0 < 25  # the sleeping notebook was stopped, not waited for


_HOLD = """
import sys, time
import numpy as np
a = np.ones({n}, dtype=np.uint8)  # anonymous memory, every page written
m = np.load(sys.argv[1], mmap_mode="r"); s = int(m.sum())  # every page of the file read: resident, file-backed
print("ready", flush=True)
time.sleep(30)
"""


def test_memory_sampler_counts_child_processes_and_sets_file_pages_apart(tmp_path):
    import sys

    import numpy as np

    mib = 2**20
    np.save(tmp_path / "f.npy", np.ones(300 * mib, dtype=np.uint8))  # a 300 MiB file a child memory-maps
    with tutorial.MemorySampler(interval=0.1) as sampler:
        before = sampler.sample()
        child = subprocess.Popen(
            [sys.executable, "-c", _HOLD.format(n=200 * mib), str(tmp_path / "f.npy")],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout.readline().strip() == "ready"
            import time

            time.sleep(0.5)  # a few samples while the child holds both
        finally:
            child.kill()
            child.wait()
    peaks = sampler.peaks()
    assert peaks["samples"] >= 3 and peaks["interval_s"] == 0.1
    # the child's 200 MiB of written pages are anonymous; its 300 MiB of mapped file pages are resident only
    assert 180 <= peaks["anonymous_mib"] - before["anonymous_mib"] <= 350
    assert peaks["rss_mib"] - before["rss_mib"] >= 480
    # the machine's figure moves with every process on it (and with page-cache writeback): only its order
    assert 0 < peaks["machine_used_at_start_mib"] <= peaks["machine_used_mib"]
