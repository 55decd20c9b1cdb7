"""Values as plain JSON: what SQL's jsonb columns receive."""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np


def json_safe(value: Any) -> Any:
    """Converts numpy scalars/arrays, tuples and mappings to plain JSON types; NaN and inf become None."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    return repr(value)

