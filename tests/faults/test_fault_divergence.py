"""Divergence: the documented behaviour is to stop. A NaN loss stops the stage with the last
good rolling checkpoint on disk (tests/test_stages.py::test_nan_loss_stops_with_a_clear_message_
and_no_model); here the harder case, weights that turn NaN while the loss that produced them
was still finite: no NaN checkpoint or model is ever written, the previous checkpoint stays the
last good one, and a rerun resumes from it."""

from __future__ import annotations

import pytest
import torch

from pipelines.core.errors import DivergenceError
from pipelines.training import checkpoint

from fault_kit import assert_same_weights, checkpoint_step


def test_checkpoint_save_refuses_nan_and_keeps_the_previous_file(tmp_path):
    path = tmp_path / "last.pt"
    checkpoint.save(path, {"kind": "training_state", "model": {"w": torch.ones(3)}, "step": 2})
    before = path.read_bytes()
    for bad in (float("nan"), float("inf")):
        with pytest.raises(
            DivergenceError,
            match=r"last.pt: not written: optimizer.state.0.exp_avg "
            r"holds NaN or infinite values",
        ):
            checkpoint.save(
                path,
                {
                    "kind": "training_state",
                    "model": {"w": torch.ones(3)},
                    "optimizer": {"state": {0: {"exp_avg": torch.tensor([1.0, bad])}}},
                    "history": [{"psnr_y": float("inf")}],
                },
            )  # a score may be inf
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def poison_generator_after(monkeypatch, module, step: int) -> None:
    """The generator's optimizer sets a weight to NaN after its ``step``-th update, while the
    loss of that step was finite (an overflow in the update itself)."""
    real = module.adamw
    made = []

    def adamw(params, **kwargs):
        opt = real(params, **kwargs)
        made.append(opt)
        if len(made) == 1:  # train_gan builds the generator's optimizer first
            original, count = opt.step, [0]

            def step_then_poison(*args, **kw):
                out = original(*args, **kw)
                count[0] += 1
                if count[0] == step:
                    with torch.no_grad():  # indexed: the weight may be channels-last
                        weight = opt.param_groups[0]["params"][0]
                        weight[(0,) * weight.dim()] = float("nan")
                return out

            opt.step = step_then_poison
        return opt

    monkeypatch.setattr(module, "adamw", adamw)


@pytest.mark.slow
def test_nan_weights_in_the_gan_phase_are_never_saved_and_a_rerun_resumes(
    stage_inputs, reference, monkeypatch, capsys, caplog
):
    import pipelines.train_gan as gan

    out = stage_inputs / "models/gan_generator.pt"
    out.unlink()
    poison_generator_after(monkeypatch, gan, 4)  # a checkpoint step (checkpoint_every 2)
    assert gan.main(["--no-tracking"]) == 1
    err = capsys.readouterr().err
    assert (
        "error: train_gan: checkpoints/train_gan/last.pt: not written: generator." in err
        and "holds NaN or infinite values (training diverged); the previous last.pt, if any, "
        "is unchanged"
        in err
    ), err
    last = stage_inputs / "checkpoints/train_gan/last.pt"
    assert checkpoint_step(last) == 2  # the last good state
    for name in ("last.pt", "best.pt"):
        assert checkpoint.non_finite(checkpoint.load(last.parent / name)) is None
    assert not out.exists()

    # a transient NaN (say, from a non-deterministic GPU kernel): the rerun resumes
    monkeypatch.undo()
    monkeypatch.chdir(stage_inputs)
    with caplog.at_level("INFO"):
        assert gan.main(["--no-tracking"]) == 0
    assert "resuming from checkpoints/train_gan/last.pt at step 2" in caplog.text
    assert_same_weights(out, reference.path / "models/gan_generator.pt")
