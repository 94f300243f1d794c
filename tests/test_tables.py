"""utils/tables.py: the one table printer of the scripts and the bench."""

from utils.tables import format_table, print_table


def test_left_aligned_columns_fit_the_widest_cell():
    lines = format_table(["track", "frames"], [["a", 30], ["b_left", 4]])
    assert lines == ["track   frames",
                     "------  ------",
                     "a       30",  # trailing spaces dropped
                     "b_left  4"]


def test_figures_right_aligned_after_the_first_column():
    lines = format_table(["run", "frames/s"], [["ours", "1234.5"], ["TSAV loop", "12.0"]], right=True)
    assert lines == ["run        frames/s",
                     "---------  --------",
                     "ours         1234.5",
                     "TSAV loop      12.0"]


def test_print_with_and_without_title(capsys):
    print_table(["summary", "value"], [["videos", 3]])
    assert capsys.readouterr().out == "summary  value\n-------  -----\nvideos   3\n"
    print_table(["k"], [], title="goals")
    assert capsys.readouterr().out == "\ngoals\nk\n-\n"
