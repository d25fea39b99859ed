"""Fuzzing the readers of user files, as trusted parsers are fuzzed: for arbitrary input each reader
returns a result or raises covidnetx's one user-facing error (UserError) -- never another exception, and
quickly. Bounded (a few hundred examples per reader) so the suite stays within its time."""
import json
import string
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from covidnetx import config as C
from covidnetx.utils import UserError

FUZZ = settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                          HealthCheck.too_slow])
TEXTISH = st.text(alphabet=st.sampled_from(string.printable + "ä€\x00\ufeff"), max_size=300)


def _only_user_errors(fn, *args):
    t = time.perf_counter()
    try:
        fn(*args)
    except UserError:
        pass
    assert time.perf_counter() - t < 2.0


CSV_PIECES = st.lists(st.sampled_from(["path", "label", "patient_id", "split", "img0.png", "a", "b", ",", ",,",
                                       '"', '"x\ny"', "\n", "\r\n", " ", "train", "val", "tst", "\x00", "é"]),
                      max_size=40).map("".join)


@FUZZ
@given(text=st.one_of(CSV_PIECES, TEXTISH), raw=st.binary(max_size=40))
def test_the_labels_csv_reader(tmp_path_factory, text, raw):
    from data_tools.adapters import read_csv
    p = tmp_path_factory.mktemp("csv") / "labels.csv"
    p.write_bytes(text.encode("utf-8", "surrogatepass") + raw)
    _only_user_errors(lambda: list(read_csv(p, ["path", "label"])))


YAML_PIECES = st.lists(st.sampled_from(["task: ", "pretrain", "transfer", "optim:", "\n  ", "lr: ", "0.1", "-1",
                                        "[", "]", "{", "}", ",", "&a ", "*a", "!!python/object ", "seeds: ", "data:",
                                        "rename: ", "x: y", "\n", "  ", ": ", "- ", "'", '"', "null", "1e999", "<<: "]),
                       max_size=30).map("".join)


@FUZZ
@given(text=st.one_of(YAML_PIECES, TEXTISH))
def test_the_run_config_and_sweep_readers(tmp_path_factory, text):
    from covidnetx.sweep import load_sweep
    d = tmp_path_factory.mktemp("yaml")
    p = d / "c.yaml"
    p.write_text(text, encoding="utf-8", errors="surrogatepass")
    _only_user_errors(C.load_config, str(p))
    _only_user_errors(load_sweep, str(p))
    _only_user_errors(C.load_config, None, [f"optim.lr={text}"])


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=10),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children,
                                                                                       max_size=4), max_leaves=20)


@FUZZ
@given(edit_key=st.sampled_from(["name", "kind", "label_kind", "class_names", "encoding", "channels", "image_size",
                                 "num_samples", "splits", "format", "schema_version", "counts"]),
       value=JSON, shard_key=st.sampled_from(["file", "start", "count", "sha256", "bytes", None]))
def test_the_index_reader(packed, tmp_path_factory, edit_key, value, shard_key):
    from covidnetx.data.hdf5 import PackedDataset, load_index
    index = json.loads((packed / "cxr" / "index.json").read_text())
    if shard_key:
        index["splits"]["train"]["shards"][0][shard_key] = value
    else:
        index[edit_key] = value
    d = tmp_path_factory.mktemp("ix")
    (d / "shards").symlink_to(packed / "cxr" / "shards")
    (d / "index.json").write_text(json.dumps(index))
    _only_user_errors(load_index, d)
    _only_user_errors(lambda: PackedDataset(d, "train").verify())


TABLE_PIECES = st.lists(st.sampled_from(["width,acc\n", "4,0.5\n", "8,", "nan", "inf", "-1", "1.7", "x", "\n",
                                         '"', '{"schema": 4}\n', '{"width": 4, "acc": 0.5}\n', "[1]\n", "null\n",
                                         ",", "16,0.7\n", "1e400"]), max_size=30).map("".join)


@FUZZ
@given(text=st.one_of(TABLE_PIECES, TEXTISH), suffix=st.sampled_from([".csv", ".jsonl", ".txt"]))
def test_the_results_table_reader(tmp_path_factory, text, suffix):
    from covidnetx.scaling import cells as T
    p = tmp_path_factory.mktemp("t") / f"t{suffix}"
    p.write_text(text, encoding="utf-8", errors="surrogatepass")
    _only_user_errors(T.load_checked, p, "acc")
    _only_user_errors(T.load_table, p)
