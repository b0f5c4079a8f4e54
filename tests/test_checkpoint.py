"""Specification of `progprune.train.checkpoint` on small states, without training.

Restore must refuse, and set aside, every checkpoint it cannot trust: unreadable files, a
checksum or step that disagrees with the data, and non-finite parameters. Save refuses the
last, so those checkpoints are written here by going around it (orbax directly), as a disk
written by an older version or a bit flip after the checksum would look.
"""

from __future__ import annotations

import json

import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from progprune.train.checkpoint import (
    NON_SEMANTIC_KEYS,
    Checkpointer,
    config_diff,
    config_fingerprint,
)
from progprune.train.state import TrainState, state_checksum


def _state(step: int, value: float = 1.0) -> TrainState:
    params = {"w": np.full((2, 3), value, np.float32), "b": np.arange(3, dtype=np.float32)}
    stats = {"mean": np.full(3, value / 2, np.float32)}
    step_ = np.asarray(step, np.int32)  # 0-d arrays, as `to_host` gives them
    return TrainState(step_, params, stats, (step_.copy(),), np.zeros(2, np.uint32))


def _write_around_save(ckpt: Checkpointer, state: TrainState, meta: dict) -> None:
    """Writes a checkpoint without `Checkpointer.save`'s checks, with a matching checksum."""
    step = int(state.step)
    meta = {"step": step, "checksum": state_checksum(state), **meta}
    ckpt.manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        force=True,
    )
    ckpt.wait()


def _assert_same(a: TrainState, b: TrainState) -> None:
    assert state_checksum(a) == state_checksum(b)


@pytest.fixture
def ckpt(tmp_path):
    c = Checkpointer(tmp_path, max_to_keep=5, async_save=False)
    yield c
    c.close()


def test_round_trip_and_newest_first(ckpt, tmp_path):
    assert ckpt.restore_latest(_state(0)) is None  # nothing saved yet
    for step in (3, 7):
        ckpt.save(_state(step, float(step)), {"config": {"a": 1}})
    assert ckpt.steps() == [3, 7]
    state, meta = ckpt.restore_latest(_state(0))
    _assert_same(state, _state(7, 7.0))
    assert meta["step"] == 7 and meta["config"] == {"a": 1}
    assert "checksum" in meta
    assert not (tmp_path / "corrupt_checkpoints").exists()


def test_saving_a_step_twice_keeps_the_first(ckpt):
    ckpt.save(_state(4, 1.0), {})
    ckpt.save(_state(4, 2.0), {})  # e.g. the final step saved again after a resume
    state, _ = ckpt.restore_latest(_state(0))
    _assert_same(state, _state(4, 1.0))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_save_refuses_non_finite_parameters(ckpt, bad):
    state = _state(5)
    state.params["w"][0, 1] = bad
    with pytest.raises(FloatingPointError, match="refusing to checkpoint non-finite parameters"):
        ckpt.save(state, {})
    assert ckpt.steps() == []


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_restore_sets_aside_non_finite_parameters(ckpt, tmp_path, capsys, bad):
    ckpt.save(_state(2, 2.0), {})
    nan_state = _state(6, 6.0)
    nan_state.params["w"][1, 2] = bad
    _write_around_save(ckpt, nan_state, {})
    assert ckpt.steps() == [2, 6]
    state, meta = ckpt.restore_latest(_state(0))
    _assert_same(state, _state(2, 2.0))  # the previous, finite one
    assert meta["step"] == 2
    # The set-aside warning goes to stderr, where a cluster log keeps it.
    assert "non-finite parameters" in capsys.readouterr().err
    moved = [p.name for p in (tmp_path / "corrupt_checkpoints").iterdir()]
    assert len(moved) == 1 and moved[0].startswith("6_")
    assert ckpt.steps() == [2]


def test_non_finite_batch_stats_alone_are_not_refused(ckpt):
    # Only the parameters are checked: a NaN elsewhere has no checksum problem and restores.
    state = _state(3)
    state.batch_stats["mean"][0] = np.nan
    _write_around_save(ckpt, state, {})
    restored, _ = ckpt.restore_latest(_state(0))
    assert np.isnan(restored.batch_stats["mean"][0])


def test_restore_sets_aside_a_checksum_mismatch(ckpt, tmp_path):
    ckpt.save(_state(1), {})
    _write_around_save(ckpt, _state(8, 8.0), {"checksum": "00000000"})
    state, _ = ckpt.restore_latest(_state(0))
    assert int(state.step) == 1
    assert [p.name.split("_")[0] for p in (tmp_path / "corrupt_checkpoints").iterdir()] == ["8"]


def test_restore_sets_aside_a_step_mismatch(ckpt, capsys):
    ckpt.save(_state(1), {})
    _write_around_save(ckpt, _state(9), {"step": 10})  # meta disagrees with the directory
    state, _ = ckpt.restore_latest(_state(0))
    assert int(state.step) == 1
    assert "step mismatch" in capsys.readouterr().err


def test_restore_sets_aside_a_state_whose_step_disagrees(ckpt):
    ckpt.save(_state(1), {})
    wrong = _state(9)._replace(step=np.asarray(4, np.int32))  # under step 9, says step 4
    meta = {"step": 9, "checksum": state_checksum(wrong)}
    ckpt.manager.save(
        9,
        args=ocp.args.Composite(state=ocp.args.StandardSave(wrong), meta=ocp.args.JsonSave(meta)),
        force=True,
    )
    ckpt.wait()
    state, _ = ckpt.restore_latest(_state(0))
    assert int(state.step) == 1


def test_unreadable_checkpoint_falls_back_and_all_bad_gives_none(ckpt, tmp_path):
    ckpt.save(_state(2), {})
    ckpt.save(_state(4), {})
    (tmp_path / "checkpoints" / "4" / "meta" / "metadata").write_text("{not json")
    state, _ = ckpt.restore_latest(_state(0))
    assert int(state.step) == 2
    (tmp_path / "checkpoints" / "2" / "meta" / "metadata").write_text(json.dumps({"step": 2}))
    assert ckpt.restore_latest(_state(0)) is None  # no checksum: unusable too
    assert sorted(p.name.split("_")[0] for p in (tmp_path / "corrupt_checkpoints").iterdir()) == [
        "2",
        "4",
    ]


def test_max_to_keep(tmp_path):
    ckpt = Checkpointer(tmp_path, max_to_keep=2, async_save=False)
    for step in (1, 2, 3):
        ckpt.save(_state(step), {})
    assert ckpt.steps() == [2, 3]
    ckpt.close()


def test_async_save_is_committed_after_wait(tmp_path):
    ckpt = Checkpointer(tmp_path, async_save=True)
    ckpt.save(_state(5, 5.0), {})
    ckpt.wait()
    again = Checkpointer(tmp_path, async_save=False)  # a fresh process's view of the disk
    state, _ = again.restore_latest(_state(0))
    _assert_same(state, _state(5, 5.0))
    ckpt.close()
    again.close()


def test_meta_changed_after_an_async_save_is_written_as_it_was_saved(tmp_path):
    # The trainer passes its live metric window; it grows while the write is still pending.
    ckpt = Checkpointer(tmp_path, async_save=True)
    window = [{"step": 1, "loss": 0.5}]
    ckpt.save(_state(5, 5.0), {"window": window})
    window += [{"step": 2, "loss": 0.25}] * 1000
    ckpt.wait()
    state, meta = ckpt.restore_latest(_state(0))  # a checksum mismatch would set it aside
    assert int(state.step) == 5
    assert meta["window"] == [{"step": 1, "loss": 0.5}]
    ckpt.close()


# ------------------------------------------------------------------- config identity


def _config(**overrides) -> ml_collections.ConfigDict:
    d = {"seed": 0, "pruning": {"sparsity": 0.9, "method": "progressive"}, "overwrite": False}
    d.update(overrides)
    return ml_collections.ConfigDict(d)


def test_fingerprint_ignores_exactly_the_non_semantic_keys():
    base = config_fingerprint(_config())
    assert len(base) == 16 and int(base, 16) >= 0
    for key in NON_SEMANTIC_KEYS:
        assert config_fingerprint(_config(**{key: 12345})) == base, key
    assert config_fingerprint(_config(seed=1)) != base
    assert config_fingerprint(_config(pruning={"sparsity": 0.8, "method": "progressive"})) != base


def test_config_diff_names_nested_keys_and_skips_non_semantic_ones():
    a = {"seed": 0, "overwrite": True, "pruning": {"sparsity": 0.9, "method": "gmp"}, "x": 1}
    b = {"seed": 0, "overwrite": False, "pruning": {"sparsity": 0.5, "method": "gmp"}, "y": 2}
    assert config_diff(a, b) == ["pruning.sparsity", "x", "y"]
    assert config_diff(a, a) == []
    assert config_diff({"p": {"q": 1}}, {"p": 3}) == ["p"]


def test_latest_meta_names_the_fix_when_no_checkpoint_records_its_config(ckpt):
    ckpt.save(_state(2), {})
    with pytest.raises(ValueError, match="no checkpoint .* records its config"):
        ckpt.latest_meta()


def test_a_full_disk_fails_the_save_at_once(ckpt, monkeypatch):
    # The probe write, not the (async) checkpoint write, reports a disk that refuses 512 bytes.
    import errno
    import tempfile

    from progprune.train import StorageError

    real = tempfile.NamedTemporaryFile

    class FullDisk:
        def __init__(self, *args, **kwargs):
            self.file = real(*args, **kwargs)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            self.file.flush()

        def fileno(self):
            return self.file.fileno()

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", FullDisk)
    with pytest.raises(StorageError, match="No space left on device"):
        ckpt.save(_state(2), {})
    assert ckpt.steps() == []


def test_the_os_reason_is_found_through_a_chain_of_errors():
    from progprune.train.checkpoint import _os_reason

    try:
        try:
            raise OSError(28, "No space left on device")
        except OSError:
            raise ValueError("write failed") from None  # only __context__ links them
    except ValueError as e:
        error = e
    error.__suppress_context__ = False
    assert _os_reason(error) == "[Errno 28] No space left on device"
