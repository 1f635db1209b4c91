"""RowStore keeps rows of several arrays in step: growing past its capacity keeps their contents, removing
a row moves the last one into its place, and the owner's attributes always view the live rows."""

from __future__ import annotations

import numpy as np

from durchwahl.media.rowstore import RowStore


class Owner:
    flat: np.ndarray
    deep: np.ndarray


def test_rows_grow_move_and_clear_in_every_array() -> None:
    owner = Owner()
    store = RowStore(owner, capacity=2)
    store.add_array("flat", (0,), np.int64)
    store.add_array("deep", (3, 0, 2), np.float64, axis=1)
    for value in range(5):  # past the capacity twice
        row = store.add()
        owner.flat[row] = value
        owner.deep[:, row] = value
    assert owner.flat.tolist() == [0, 1, 2, 3, 4] and owner.deep.shape == (3, 5, 2)
    assert all((owner.deep[:, row] == row).all() for row in range(5))
    store.remove(1)  # the last row takes its place
    assert owner.flat.tolist() == [0, 4, 2, 3] and (owner.deep[:, 1] == 4).all()
    store.remove(3)
    assert owner.flat.tolist() == [0, 4, 2] and owner.deep.shape == (3, 3, 2)
    row = store.add()  # a new row starts at zero, whatever was stored there before
    assert row == 3 and owner.flat[3] == 0 and not owner.deep[:, 3].any()
