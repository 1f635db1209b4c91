"""Per-stream state of a batched computation: named numpy arrays whose rows (on a given axis) are streams.

Streams come and go one at a time (a call starts listening, a call ends) while the arrays are processed
all at once on every tick. Growing every array by one row per new stream would copy all of them each time
(at 500 streams, milliseconds per call arriving): :class:`RowStore` keeps spare capacity, doubling it when
full, and removes a row by moving the last one into its place. Its owner works on views of the live rows,
which :meth:`RowStore.bind` keeps up to date as attributes of the owner.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["RowStore"]


def _at(axis: int, row: int) -> tuple[slice | int, ...]:
    """The index of one row on ``axis`` (everything on the axes before it)."""
    return (*(slice(None),) * axis, row)


class RowStore:
    """Arrays sharing a number of rows (see the module docstring)."""

    def __init__(self, owner: object, capacity: int = 16) -> None:
        self._owner = owner
        self._full: dict[str, tuple[npt.NDArray[Any], int]] = {}
        self._capacity = max(1, capacity)
        self.rows = 0

    def add_array(self, name: str, shape: tuple[int, ...], dtype: npt.DTypeLike, axis: int = 0) -> Any:
        """A new array ``name`` of ``shape`` with the rows on ``axis`` (its size there is ignored); returns
        the view of its live rows (also set as the owner's attribute ``name``)."""
        full_shape = list(shape)
        full_shape[axis] = self._capacity
        self._full[name] = (np.zeros(full_shape, dtype=dtype), axis)
        return self._bind(name)

    def add(self) -> int:
        """One more row, all zero; returns its index."""
        if self.rows == self._capacity:
            self._capacity *= 2
            for name, (array, axis) in self._full.items():
                shape = list(array.shape)
                shape[axis] = self._capacity
                grown = np.zeros(shape, dtype=array.dtype)
                np.moveaxis(grown, axis, 0)[: self.rows] = np.moveaxis(array, axis, 0)[: self.rows]
                self._full[name] = (grown, axis)
        self.rows += 1
        self.clear(self.rows - 1)
        self.bind()
        return self.rows - 1

    def remove(self, row: int) -> None:
        """Drop ``row``: the last row moves into its place."""
        last = self.rows - 1
        if row != last:
            for array, axis in self._full.values():
                array[_at(axis, row)] = array[_at(axis, last)]
        self.rows = last
        self.bind()

    def clear(self, row: int) -> None:
        """Zero ``row`` in every array."""
        for array, axis in self._full.values():
            array[_at(axis, row)] = 0

    def bind(self) -> None:
        """Set each array's owner attribute to the view of the live rows."""
        for name in self._full:
            self._bind(name)

    def _bind(self, name: str) -> npt.NDArray[Any]:
        array, axis = self._full[name]
        index = [slice(None)] * array.ndim
        index[axis] = slice(0, self.rows)
        view = array[tuple(index)]
        setattr(self._owner, name, view)
        return view
