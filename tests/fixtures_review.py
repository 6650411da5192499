"""A small real run for the audit report and the review app: generated videos through probe, scenes, motion."""

from __future__ import annotations

from pathlib import Path

import media

# Two folders so the report's breakdown by input source has two rows; one still video (rejected by min_flow), one
# unreadable file (an error row), one short scene (rejected by min_clip_length).
REVIEW_RECIPE = {
    "name": "review-test",
    "stages": {
        "probe": {"min_duration_s": 0.5, "min_short_side": 120, "min_fps": 10},
        "scenes": {"detector": "content", "threshold": 27.0, "min_clip_s": 1.0, "max_clip_s": 10.0},
        "motion": {"min_flow": 0.008, "max_flow": 0.5, "fps": 4.0},
    },
}


def make_review_inputs(root: Path) -> Path:
    media.make_video(root / "street" / "walk.mp4", segments=(45, 45, 20), fps=30)
    media.make_video(root / "street" / "still.mp4", segments=(60,), fps=30, moving=False, seed=2)
    media.make_video(root / "park" / "run.mp4", segments=(60,), fps=30, seed=3)
    media.make_text_file_as_video(root / "park" / "broken.mp4")
    return root


def make_review_run(root: Path) -> Path:
    from pipeline.recipe import build_recipe
    from pipeline.run import RunOptions, run

    inputs = make_review_inputs(root / "inputs")
    out = root / "out"
    run(RunOptions(recipe=build_recipe(REVIEW_RECIPE), output=str(out), input=str(inputs), shard_size=2,
                   progress=False))
    return out


if __name__ == "__main__":  # python tests/fixtures_review.py DIR: a run to try the app on
    import sys

    print(make_review_run(Path(sys.argv[1])))


def assert_shown_as_in_report(shown: list, report: dict) -> None:
    """Each (JSON path, text) the report page shows equals the audit's value at that path, formatted as the page
    formats it: the page can show no number the audit does not compute."""
    from manifests.audit import _fmt

    for key, text in shown:
        value = report
        for part in key.split("."):
            value = value[int(part)] if isinstance(value, list) else value[part]
        assert text == _fmt(value), key
