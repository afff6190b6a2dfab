"""A bulk chunk's "are alerts waiting?" check: one Redis command per interval per process."""

import threading

from emailq.worker.tasks import _Shared


def test_threads_share_one_answer_per_interval():
    asked = []
    check = _Shared(lambda: asked.append(1) or True, every_s=60)
    threads = [threading.Thread(target=lambda: [check() for _ in range(100)]) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert check() is True
    assert len(asked) <= 8  # at most one per thread racing at the first turn, not 800


def test_the_answer_is_asked_again_after_the_interval():
    answers = iter([False, True])
    check = _Shared(lambda: next(answers), every_s=0)
    assert check() is False
    assert check() is True
