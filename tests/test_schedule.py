import numpy as np
import pytest

from tokcodec import schedule


@pytest.mark.parametrize("h,w", [(2, 2), (32, 48), (20, 30), (188, 250), (2, 64)])
def test_every_position_in_exactly_one_stage(h, w):
    ids = schedule.stage_ids(h, w)
    pos = schedule.stage_positions(h, w)
    flat = np.concatenate(pos)
    assert sorted(flat.tolist()) == list(range(h * w))
    assert ids.max() + 1 == len(pos)


def test_last_three_stages_are_uigc_stages_1_2_3():
    h, w = 32, 48
    ids = schedule.stage_ids(h, w)
    u = schedule.uigc_stage(h, w)
    n = schedule.n_stages(h, w)
    for k, uigc in zip(range(n - 3, n), (1, 2, 3)):
        assert (u[ids == k] == uigc).all()
    assert (u[ids < n - 3] == 0).all()


def test_base_group_is_tiny_and_passes_grow_logarithmically():
    for h, w in [(32, 48), (188, 250), (376, 500)]:
        ids = schedule.stage_ids(h, w)
        assert (ids == 0).sum() <= schedule.BASE_MAX
    assert schedule.n_stages(32, 48) == 10
    assert schedule.n_stages(188, 250) <= 19


def test_odd_grid_rejected():
    with pytest.raises(ValueError):
        schedule.stage_ids(3, 4)
