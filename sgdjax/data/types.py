"""Containers shared by the dataset loaders."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class ArraySplit(NamedTuple):
    """Inputs and targets of one split, as host (numpy) arrays.

    Loaders return numpy rather than device arrays so that the caller decides the dtype policy
    (x64 or not) and the device placement once, in one place.
    """

    x: np.ndarray
    y: np.ndarray
