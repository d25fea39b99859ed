import math

import pytest
import yaml

from covidnetx import config as C
from covidnetx.utils import UserError


def test_defaults_overrides_and_yaml(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model: {name: resnet_w16}\noptim: {lr: 0.01}\n")
    cfg = C.load_config(str(f), ["optim.batch_size=8", "data.sources=[a, b]", "shots=[1,5]", "precision=bf16"])
    assert cfg.model.name == "resnet_w16" and cfg.optim.lr == 0.01 and cfg.optim.batch_size == 8
    assert cfg.data.sources == ["a", "b"] and cfg.shots == [1, 5] and cfg.precision == "bf16"
    assert cfg.optim.momentum == 0.9                       # untouched defaults stay
    again = C.load_config(base=C.to_dict(cfg))
    assert C.dump(again) == C.dump(cfg) and C.config_hash(again) == C.config_hash(cfg)
    assert C.config_hash(C.load_config(base=C.to_dict(cfg), overrides=["out_dir=elsewhere"])) == C.config_hash(cfg)
    assert C.config_hash(C.load_config(base=C.to_dict(cfg), overrides=["seed=3"])) != C.config_hash(cfg)


def test_packaged_presets_load():
    for name in ("pretrain_cpu", "transfer_cpu", "bit_juwels"):
        cfg = C.load_config(name)
        assert cfg.task in ("pretrain", "transfer")
    assert C.load_config("bit_juwels").model.name == "bit_r50x1"


@pytest.mark.parametrize("overrides, message", [
    (["optim.lrr=1"], "unknown config key 'optim.lrr'"),
    (["nosuch=1"], "unknown config key 'nosuch'"),
    (["optim.batch_size=eight"], "config key 'optim.batch_size': expected an integer, got 'eight'"),
    (["data.augment=3"], "config key 'data.augment': expected true/false"),
    (["regime=zeroshot"], "config key 'regime': 'zeroshot' is not one of full, linear, fewshot"),
    (["data.fraction=1.5"], "config key 'data.fraction'"),
    (["optim"], "expected key=value"),
])
def test_bad_config_names_the_key(overrides, message):
    with pytest.raises(UserError) as e:
        C.load_config(None, overrides)
    assert message in str(e.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(UserError, match="config file 'nope.yaml' not found"):
        C.load_config("nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name: [\n")
    with pytest.raises(UserError, match="not valid YAML"):
        C.load_config(str(bad))


@pytest.mark.parametrize("overrides, yaml_text, message", [
    (["optim.lrr=1"], None, "unknown config key 'optim.lrr' (did you mean 'optim.lr'?)"),
    (["optm.lr=1"], None, "unknown config key 'optm.lr' (did you mean 'optim.lr'?)"),
    ([], "data: {image_sise: 64}\n", "unknown config key 'data.image_sise' (did you mean 'data.image_size'?)"),
    (["zzz=1"], None, "unknown config key 'zzz' (known here: alignment_reference, alignment_samples, backend,"),
])
def test_unknown_key_suggests_the_nearest_and_where_the_list_is(tmp_path, overrides, yaml_text, message):
    path = None
    if yaml_text:
        path = tmp_path / "c.yaml"
        path.write_text(yaml_text)
    with pytest.raises(UserError) as e:
        C.load_config(str(path) if path else None, overrides)
    assert message in str(e.value) and "`covidnetx pretrain --keys` lists every key" in str(e.value)


def test_key_reference_covers_every_key_with_its_default_and_a_description(capsys):
    """`covidnetx pretrain --keys`: every dotted key of the config, its type and default as the dataclasses
    define them, and a description (the comment beside the field) for each: a key added without one
    fails here."""
    from covidnetx.cli import main
    rows = C.key_reference()
    flat = C.flatten(C.to_dict(C.Config()))
    assert [k for k, *_ in rows] == list(flat)
    assert all(v == flat[k] for k, _, v, _ in rows)
    assert [k for k, _, _, d in rows if not d] == []
    assert dict((k, t) for k, t, _, _ in rows)["data.sources"] == "list[str]"
    assert main(["transfer", "--keys"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert set(lines) == set(flat)
    assert lines["optim.lr"].split(None, 3)[1:3] == ["float", "0.003"]
    assert lines["optim.lr"].split(None, 3)[3].startswith("per global batch base_batch")
    assert "list[float]  [0.5, 0.5, 0.5]" in lines["data.mean"] and lines["data.mean"].endswith("on [0, 1] pixels")


@pytest.mark.parametrize("n_train", [265, 19_999, 20_000, 499_999, 2_000_000])
@pytest.mark.parametrize("world", [1, 4])
@pytest.mark.parametrize("given", [{}, {"optim.steps": 30}, {"optim.epochs": 2.5}, {"optim.warmup_steps": 0},
                                   {"optim.decay_at": [0.5]}, {"optim.mixup": 0.2}, {"hyperrule": False},
                                   {"task": "pretrain"}])
def test_hyperrule_is_resolved_into_the_config_and_reruns_as_it_ran(n_train, world, given):
    from covidnetx.train.schedule import resolve_schedule
    ov = [f"{k}={v}" for k, v in {"task": "transfer", **given}.items()]
    cfg = C.load_config(overrides=ov)
    hyper = cfg.task == "transfer" and cfg.hyperrule
    sched = resolve_schedule(cfg.optim, n_train, world, hyper)
    resolved = C.load_config(base=yaml.safe_load(C.dump(C.with_schedule(cfg, sched))))
    assert C.unresolved_keys(resolved) == ()                       # nothing "unset" is saved
    assert resolve_schedule(resolved.optim, n_train, world, hyper) == sched       # and it reruns as it ran
    assert C.differences(resolved, cfg, ignore=C.RUN_KEYS_FREE + C.unresolved_keys(cfg)) == []
    if hyper and not given:          # BiT-HyperRule by training-set size (Kolesnikov et al., table 3 / sec. 3.3)
        expect = (500, 100, (200, 300, 400), 0.0) if n_train < 20_000 else (
            (10_000, 500, (3000, 6000, 9000), 0.1) if n_train < 500_000 else (20_000, 500, (6000, 12000, 18000), 0.1))
        assert (sched.steps, sched.warmup, sched.decay_at, sched.mixup) == expect
    if "optim.epochs" in given:
        assert sched.steps == math.ceil(2.5 * n_train / (32 * world)) and "optim.epochs" in C.unresolved_keys(cfg)
    if given == {"task": "pretrain"}:
        assert (sched.steps, sched.warmup, sched.decay_at, sched.mixup) == (1000, 50, (400, 600, 800), 0.0)
    if "optim.decay_at" in given:     # a given value wins over the rule
        assert sched.decay_at == (sched.steps // 2,)
    assert sched.base_lr == pytest.approx(0.003 * 32 * world / 512)


def test_keys_added_later_leave_existing_run_ids_alone():
    """optim.min_steps and class_weights came after studies were run: at its default a config hashes as before it existed
    (the value pinned here is the hash covidnetx gave this config before the key), so run ids and the
    resumption of existing studies survive the upgrade; a non-default value changes the hash."""
    from covidnetx import config as C
    cfg = C.load_config(None, ["task=pretrain"])
    assert C.config_hash(cfg) == "9fbcb8dd03b2"
    assert C.config_hash(C.load_config(None, ["task=pretrain", "optim.min_steps=250"])) != "9fbcb8dd03b2"
    assert C.config_hash(C.load_config(None, ["task=pretrain", "progress_s=5"])) == "9fbcb8dd03b2"
    assert C.config_hash(C.load_config(None, ["task=pretrain", "class_weights=balanced"])) != "9fbcb8dd03b2"


def test_class_weights_with_bce_and_dotted_keys_in_a_mapping_are_refused_when_the_config_loads(tmp_path):
    with pytest.raises(UserError, match="'class_weights': balanced needs the ce loss .*loss is bce"):
        C.load_config(None, ["class_weights=balanced", "loss=bce"])
    f = tmp_path / "c.yaml"
    f.write_text("data.image_size: 32\n")
    with pytest.raises(UserError, match=r"unknown config key 'data.image_size' \(a dotted name inside a mapping: "
                                        r"nest it \(data: \{image_size: ...\}\)"):
        C.load_config(str(f))
    f.write_text("data: {image_sise: 32}\n")                # a typo still gets its nearest key
    with pytest.raises(UserError, match="did you mean 'data.image_size'"):
        C.load_config(str(f))
