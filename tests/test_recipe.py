import pytest

from pipeline.errors import UserError
from pipeline.recipe import available_recipes, build_recipe, load_recipe, parse_override


def test_packaged_recipes_load_with_sourced_thresholds():
    assert {"quickstart", "haic", "hmi", "hoigen"} <= set(available_recipes())
    for name in available_recipes():
        recipe = load_recipe(name)
        assert recipe.stage_names()[:2] == ["probe", "scenes"]


def test_set_override_keeps_types_and_changes_hash():
    base = load_recipe("quickstart")
    changed = load_recipe("quickstart", ["scenes.min_clip_s=3", "probe.min_fps=25"])
    scenes = dict(s for d in changed.to_dict()["stages"] for s in d.items())["scenes"]
    assert scenes["min_clip_s"] == 3.0
    assert changed.hash != base.hash
    assert load_recipe("quickstart").hash == base.hash  # deterministic


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"stages": {"probe": {"min_durration_s": 1}}}, "probe.min_durration_s"),
        ({"stages": {"probe": {}, "posee": {}}}, "unknown stage 'posee'"),
        ({"stages": {"probe": {"min_fps": "fast"}}}, "probe.min_fps"),
        ({"stages": {"scenes": {}}}, "'scenes' needs 'probe' before it"),
        ({"stagez": {}}, "unknown key(s) stagez"),
        ({"stages": {}}, "non-empty mapping"),
    ],
)
def test_bad_recipe_keys_are_clear_errors(doc, message):
    with pytest.raises(UserError) as err:
        build_recipe(doc)
    assert message in str(err.value)


def test_bad_override_and_missing_recipe():
    with pytest.raises(UserError, match="stage.param=value"):
        parse_override("min_fps=3")
    with pytest.raises(UserError, match="'aesthetic' is not in recipe"):  # the quickstart has no aesthetic stage
        load_recipe("quickstart", ["aesthetic.min_aesthetic=1"])
    with pytest.raises(UserError, match="recipe not found"):
        load_recipe("no-such-recipe")


def test_dataset_recipes_caption_cross_verify_and_annotate_and_skip_leaves_a_stage_out():
    for name in ("haic", "hmi", "hoigen"):
        stages = load_recipe(name).stage_names()
        assert stages[-3:] == ["caption", "mome", "annotate"], name
        skipped = load_recipe(name, skip=["mome"])
        assert skipped.stage_names() == [s for s in stages if s != "mome"]
        assert skipped.hash != load_recipe(name).hash  # a run started with mome does not silently resume without it
    with pytest.raises(UserError, match=r"'mome' needs 'caption' before it"):  # what is left must still fit
        load_recipe("haic", skip=["caption"])
    with pytest.raises(UserError, match=r"--skip nope: stage 'nope' is not in recipe"):
        load_recipe("haic", skip=["nope"])


def test_scenes_keeps_union_of_later_requests_only_when_asked():
    recipe = build_recipe({"stages": {"probe": {}, "scenes": {}}})
    scenes = recipe.stages[1].build()
    assert scenes.keep_requests() == []  # nothing downstream reads frames: none are kept
    explicit = build_recipe({"stages": {"probe": {}, "scenes": {"keep_fps": 2, "keep_max_side": 320}}})
    (request,) = explicit.stages[1].build().keep_requests()
    assert (request.fps, request.max_side) == (2, 320)
