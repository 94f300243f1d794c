"""data/tracks.py (which tracks a database holds, per split and task), test-list reading, shard parsing, and
a dataset for a layout with some tasks only."""

import numpy as np
import pytest

from data import annotations as A
from data.clips import ClipDataset, open_store
from data.tracks import split_tracks, stored_tracks, unlabelled_tracks
from opts import create_database_parser
from tasks import EXPR_NAMES_7, OutputLayout


class FakeStore:
    """The three record look-ups data.tracks uses, with a failed video among the built ones."""

    videos = {"a": {"status": "ok", "tracks": ["a"]}, "f": {"status": "failed: no frames", "tracks": ["f"]},
              "b": {"status": "ok", "tracks": ["b_left", "b_right"]}}
    tracks = {"a": {"labels": {"VA": {"split": "Train_Set"}, "EXPR": {"split": "Validation_Set"}}},
              "f": {"labels": {"VA": {"split": "Validation_Set"}}},
              "b_left": {"labels": {"AU": {"split": "Validation_Set"}, "VA": {"split": "Validation_Set"}}},
              "b_right": {"labels": {}}}

    def video_names(self):
        return sorted(self.videos)

    def video_meta(self, video):
        return self.videos[video]

    def track_meta(self, track):
        return self.tracks[track]


def test_only_built_videos_count_and_splits_are_per_task():
    db = FakeStore()
    assert [t.name for t in stored_tracks(db)] == ["a", "b_left", "b_right"]  # video order; 'f' failed
    assert [t.name for t in stored_tracks(db, wanted={"b_right", "f"})] == ["b_right"]
    assert split_tracks(db, "Validation_Set") == {"VA": ["b_left"], "EXPR": ["a"], "AU": ["b_left"]}
    assert split_tracks(db, "Train_Set") == {"VA": ["a"]}
    assert split_tracks(db, "test") == {}
    assert unlabelled_tracks(db) == ["b_right"]
    a = next(stored_tracks(db))
    assert a.video == "a" and set(a.tasks_in(None)) == {"VA", "EXPR"} and set(a.tasks_in("Train_Set")) == {"VA"}


def test_toy_database_tracks(toy):
    db = open_store(toy)
    assert split_tracks(db, "Validation_Set") == {"VA": ["b_left", "b_right"], "EXPR": ["b_left", "b_right", "c"],
                                                  "AU": ["b_left", "b_right"]}
    assert unlabelled_tracks(db) == ["d"]


def test_a_dataset_for_an_expr_only_layout_reads_no_other_label(toy):
    layout = OutputLayout("expr7", ("expr",), 7, EXPR_NAMES_7)
    ds = ClipDataset(toy, "train", layout)
    assert [t.name for t in ds.tracks] == ["a", "c"]  # c: VA in Train_Set, so its track is there (no EXPR)
    assert ds.labels["au"].shape == (len(ds), 0) and not ds.labels["va_valid"].any()
    assert ds.labels["expr_valid"][:30].sum() == 24 and not ds.labels["expr_valid"][30:].any()
    assert np.array_equal(ds.labels["expr"][:30][ds.labels["expr_valid"][:30]],
                          [i % 7 for i in range(30) if i % 5])


def test_test_lists_name_their_task_and_tracks(tmp_path):
    (tmp_path / "VA_test_set.txt").write_text("vidA\nvidB_left.mp4\n")
    (tmp_path / "MTL_test_set.txt").write_text("image,valence\nvidA/00001.jpg,0\nvidC/00003.jpg,0\n")
    assert A.task_of_list("Action_Unit_Detection_Challenge_test_set_release.txt") == "AU"
    assert A.task_of_list(tmp_path / "MTL_test_set.txt") is None
    assert A.read_test_lists([tmp_path / "VA_test_set.txt", tmp_path / "MTL_test_set.txt"]) == {
        "vidA": {"VA", "EXPR", "AU"}, "vidB_left": {"VA"}, "vidC": {"VA", "EXPR", "AU"}}
    with pytest.raises(FileNotFoundError, match="missing.txt: test-set list not found"):
        A.read_test_lists([tmp_path / "missing.txt"])


@pytest.mark.parametrize("text, shard", [("0/4", (0, 4)), (" 3 / 4 ", (3, 4))])
def test_shard_is_parsed_once_by_the_parser(text, shard):
    assert create_database_parser().parse_args(["--shard", text]).shard == shard
    assert create_database_parser().parse_args([]).shard is None


@pytest.mark.parametrize("text", ["4/4", "1", "a/b", "1/0"])
def test_bad_shards_are_refused_in_one_line(text, capsys):
    with pytest.raises(SystemExit) as e:
        create_database_parser().parse_args(["--shard", text])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "expected K/N with 0 <= K < N" in err
