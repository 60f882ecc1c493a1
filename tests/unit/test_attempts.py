"""What the delivery log keeps of an attempt's answer: its start, encoded
no further than that."""

import json

from outbox.dispatch.attempts import _answer
from outbox.storage.delivery_log import DETAIL_CHARS


def test_a_large_result_is_cut_to_its_start_without_encoding_all_of_it():
    result = {"rows": [{"n": i, "text": "x" * 100} for i in range(20_000)]}  # ~2.5 MB as JSON
    detail = _answer(result)
    assert len(detail) <= DETAIL_CHARS
    assert json.dumps(result, ensure_ascii=False).startswith(detail[: DETAIL_CHARS - 10])


def test_small_answers_are_kept_whole_and_text_as_it_is():
    assert _answer(None) == ""
    assert _answer({"ok": True}) == '{"ok": true}'
    assert _answer("thanks") == "thanks"
    assert "\x00" not in _answer({"a\x00": "b"}), "made storable"
