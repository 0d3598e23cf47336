"""Early stopping at its boundary (issue 16): the rule is "stop before `epoch` when more than `patience` epochs have
passed since the best validation AUC, and `epoch` is past `min_epochs`". An off-by-one (>= instead of >) stops one
epoch early; these cases sit exactly on both edges."""

import pytest

from training.trainer import should_stop


@pytest.mark.parametrize("epoch,best,patience,min_epochs,stop", [
    (6, 4, 2, 1, False),   # 2 epochs (5, 6) without improvement: patience 2 allows them, epoch 6 runs
    (7, 4, 2, 1, True),    # a third would be one too many: stop before epoch 7
    (2, 1, 1, 1, False),   # patience 1: the epoch right after the best still runs
    (3, 1, 1, 1, True),
    (5, 1, 2, 5, False),   # epoch == min_epochs: never stop at or before min_epochs
    (6, 1, 2, 5, True),    # the first epoch past min_epochs stops (6 - 1 = 5 > 2)
    (9, 0, 2, 1, False),   # no finite AUC yet (best epoch 0): never stop
])
def test_should_stop_on_both_edges(epoch, best, patience, min_epochs, stop):
    assert should_stop(epoch, best, patience, min_epochs) is stop


def test_a_run_with_patience_p_trains_p_epochs_after_its_best():
    """What the loop does with the rule: from the best epoch b on, epochs b+1 .. b+p run and b+p+1 does not."""
    b, p = 3, 4
    ran = [e for e in range(b + 1, b + 10) if not should_stop(e, b, p, min_epochs=1)]
    assert ran == list(range(b + 1, b + p + 1))
