"""Resource planning: actor pools must never hold every CPU the task stages need (a deadlock on small machines)."""

import pytest

from pipeline.errors import UserError
from pipeline.executor import plan_resources
from pipeline.recipe import build_recipe


def test_actor_shares_shrink_to_leave_room_for_tasks():
    recipe = build_recipe({"stages": {"probe": {}, "scenes": {}, "ocr": {}, "motion": {}, "aesthetic": {}}})
    planned = plan_resources(recipe.stages, cluster_cpus=2.0, cluster_gpus=0.0)
    actors = ["ocr", "motion", "aesthetic"]
    held = sum(planned[n].cpus * planned[n].min_workers for n in actors)
    assert held + planned["scenes"].cpus <= 2.0 + 1e-9
    assert planned["scenes"].cpus == 1.0 and planned["probe"].cpus == recipe.stages[0].cls.resources.cpus
    assert all(planned[n].gpus == 0 for n in actors)


def test_big_clusters_keep_declared_resources_and_auto_devices_take_gpus():
    recipe = build_recipe({"stages": {"probe": {}, "scenes": {}, "ocr": {}, "aesthetic": {}}})
    planned = plan_resources(recipe.stages, cluster_cpus=64.0, cluster_gpus=8.0)
    for spec in recipe.stages:
        assert planned[spec.name].cpus == spec.cls.resources.cpus
    assert planned["aesthetic"].gpus > 0  # device: auto on a cluster with GPUs
    assert plan_resources(recipe.stages, 64.0, 0.0)["aesthetic"].gpus == 0


def test_a_stage_that_needs_a_gpu_on_a_cluster_without_one_is_a_clear_error():
    recipe = build_recipe({"stages": {"probe": {}, "scenes": {}, "aesthetic": {"device": "cuda"}}})
    with pytest.raises(UserError, match="stages aesthetic need a GPU"):
        plan_resources(recipe.stages, cluster_cpus=2.0, cluster_gpus=0.0)
    assert plan_resources(recipe.stages, 2.0, 1.0)["aesthetic"].gpus > 0
