"""Reading config values: the one comma-list parser (`"a, b,,c"` -> ["a", "b", "c"])."""
from typing import List


def comma_list(spec) -> List[str]:
    return [s.strip() for s in str(spec).split(",") if s.strip()]
