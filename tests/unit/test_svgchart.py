"""The dashboard's server-rendered charts: labels escaped, gaps kept, axes rounded."""

from datetime import UTC, datetime, timedelta

from picloud.svgchart import Line, line_chart, nice_max

MINUTES = [datetime(2026, 11, 30, 12, tzinfo=UTC) + timedelta(minutes=i) for i in range(5)]


def test_the_y_axis_tops_at_a_round_number():
    assert [nice_max(v) for v in (0, 0.3, 1, 7, 12, 180, 2001)] == [1, 0.5, 1, 10, 20, 200, 5000]


def test_labels_are_escaped():
    svg = line_chart("<b>title</b>", MINUTES, [Line("<script>x</script>", "#000", [1] * 5)])
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert "<b>" not in svg


def test_a_missing_sample_breaks_the_line():
    svg = line_chart("t", MINUTES, [Line("due", "#000", [1, 2, None, 3, 4])])
    assert svg.count("<polyline") == 2


def test_the_axis_says_thousands_and_its_unit():
    svg = line_chart("t", MINUTES, [Line("n", "#000", [0, 1500, 0, 0, 0])], unit="s")
    assert ">2ks<" in svg and ">1ks<" in svg
