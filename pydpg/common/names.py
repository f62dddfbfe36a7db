"""Error messages that suggest what was meant: every refusal of an unknown key, name or preset
(configs, specs, presets, env ids) ends with the same "(did you mean ...?)"."""

from __future__ import annotations

import difflib
from typing import Any


def did_you_mean(word: Any, choices) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=3)
    return f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
