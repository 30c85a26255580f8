"""``carapace run`` freezes the heap once the host is up (issue 19): what is alive then is
no longer walked by full collections, and garbage made later is still collected."""

from __future__ import annotations

import gc
import weakref

from carapace.ops.runtime import freeze_heap


class _Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


def test_freeze_heap_takes_what_lives_out_of_the_collectors_walks() -> None:
    gc.unfreeze()
    alive = _Node()
    try:
        freeze_heap()
        assert gc.get_freeze_count() > 0
        assert alive not in gc.get_objects()  # frozen: not in any generation
        later = _Node()
        gone = weakref.ref(later)
        del later
        gc.collect()
        assert gone() is None  # a cycle made after the freeze is collected as before
    finally:
        gc.unfreeze()
