"""covidnetx.results: the typed, versioned result row and the append-only results table (concurrent
appends, checks on read, the schema-1 rows that older tables hold)."""
import json
import multiprocessing as mp

import pytest

from covidnetx.results import SCHEMA_VERSION, ResultRow, append_row, load_results
from covidnetx.utils import UserError
from tests.train_helpers import make_row


def _writer(path, tag, n):
    for i in range(n):
        append_row(path, make_row(f"{tag}-{i}", pad="x" * 3000))     # long rows: a torn write would show


def test_concurrent_appends_never_tear_or_lose_rows(tmp_path):
    path = tmp_path / "results.jsonl"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(path, t, 150)) for t in ("a", "b", "c")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    rows = load_results(path)
    assert len(rows) == 450
    assert sorted(r["run_id"] for r in rows) == sorted(f"{t}-{i}" for t in "abc" for i in range(150))
    with pytest.raises(TypeError, match="takes a ResultRow"):
        append_row(path, {"run_id": "x"})


def test_result_rows_are_typed_versioned_and_checked_on_read(tmp_path):
    import json
    from covidnetx.rundir import RunDir
    from covidnetx.results import SCHEMA_VERSION, ResultRow
    from covidnetx.scaling.cells import load_table
    from covidnetx.utils import UserError
    path = tmp_path / "results.jsonl"
    row = make_row("a", accuracy=float("nan"), auc_ci_lo=0.4, **{"sensitivity/covid": 0.7})
    RunDir(tmp_path / "run").publish(row, str(path))       # the table's row, then done.json
    [back] = load_results(path)
    assert isinstance(back, ResultRow) and back.run_id == "a" and back.accuracy is None      # NaN is null on disk
    assert back["auc_ci_lo"] == 0.4 and back.extra["sensitivity/covid"] == 0.7 and back["schema"] == SCHEMA_VERSION
    assert back.params == 1000 and back.get("absent") is None
    assert RunDir(tmp_path / "run").result() == back
    d = json.loads(path.read_text())
    cases = [(dict(d, params="many"), "key 'params' is 'many', expected int"),
             (dict(d, shots=2.5), "key 'shots' is 2.5, expected int or null"),
             (dict(d, final=1), "key 'final' is 1, expected bool"),
             ({k: v for k, v in d.items() if k != "seed"}, "lacks seed"),
             (dict(d, schema=SCHEMA_VERSION + 1), f"schema {SCHEMA_VERSION + 1}; this covidnetx reads schema"),
             ([1, 2], "a JSON object")]
    for bad, msg in cases:
        path.write_text(json.dumps(d) + "\n" + json.dumps(bad) + "\n")
        with pytest.raises(UserError) as e:
            load_results(path)
        assert f"{path}:2: " in str(e.value) and msg in str(e.value), str(e.value)
    # the analysis reads covidnetx rows checked and other JSONL rows as plain columns
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps(d) + "\n" + json.dumps({"width": 8, "acc": 0.5}) + "\n")
    a, b = load_table(other)
    assert isinstance(a, ResultRow) and b == {"width": 8, "acc": 0.5}
    other.write_text(json.dumps(dict(d, steps=None)) + "\n")
    with pytest.raises(UserError, match=r"other.jsonl:1: result row key 'steps' is None, expected int"):
        load_table(other)
    with pytest.raises(ValueError, match="extra metrics reuse field names"):
        ResultRow(**{k: d[k] for k in d if k in ResultRow.__dataclass_fields__}, extra={"steps": 1})


def _schema_1(row: dict) -> dict:
    """A row as schema 1 wrote it: no probe_iterations field, schema 1; a probe row's L-BFGS iterations in
    steps and total_steps and its training-set size in global_batch, the iterations also as a metric."""
    d = {k: v for k, v in row.items() if not (k == "probe_iterations" and v is None)}
    d["schema"] = 1
    return d


def test_schema_1_tables_are_read_in_schema_2_meaning(tmp_path):
    sgd = make_row("full", regime="full", steps=150, total_steps=150, global_batch=64).as_dict()
    probe = make_row("lin", regime="linear", steps=53, total_steps=53, global_batch=185, train_size=185,
                     probe_iterations=53).as_dict()
    path = tmp_path / "old.jsonl"
    path.write_text("".join(json.dumps(_schema_1(d)) + "\n" for d in (sgd, probe)))
    full, lin = load_results(path)
    assert (full.steps, full.global_batch, full.probe_iterations) == (150, 64, None)
    assert (lin.steps, lin.total_steps, lin.global_batch, lin.probe_iterations) == (0, 0, None, 53)
    assert lin.train_size == 185 and full["schema"] == lin["schema"] == SCHEMA_VERSION == 2
    # a schema-1 row missing a field is still named, as a schema-2 one would be
    bad = _schema_1(sgd)
    del bad["seed"]
    path.write_text(json.dumps(bad) + "\n")
    with pytest.raises(UserError, match="old.jsonl:1: result row lacks seed"):
        load_results(path)


def test_a_probe_row_says_it_took_no_sgd_steps(tmp_path):
    row = make_row("lin", regime="linear", steps=0, total_steps=0, global_batch=None, probe_iterations=40)
    append_row(tmp_path / "r.jsonl", row)
    [back] = load_results(tmp_path / "r.jsonl")
    assert back.global_batch is None and back.steps == 0 and back.probe_iterations == 40
    assert "probe_iterations" not in back.extra            # a field, not an extra metric
    with pytest.raises(ValueError, match="reuse field names"):
        ResultRow.build(**{**row.as_dict(), "schema": 2})
