"""Resource planning: actor pools must never hold every CPU the task stages need (a deadlock on small machines),
on any node (Ray places each worker whole on one node), and a cluster that cannot run a recipe is refused."""

import itertools

import pytest

from pipeline.errors import UserError
from pipeline.executor import plan_resources
from pipeline.recipe import build_recipe


def test_actor_shares_shrink_to_leave_room_for_tasks():
    recipe = build_recipe({"stages": {"probe": {}, "scenes": {}, "ocr": {}, "motion": {}, "aesthetic": {}}})
    planned = plan_resources(recipe.stages, [{"CPU": 2.0}])
    actors = ["ocr", "motion", "aesthetic"]
    held = sum(planned[n].cpus * planned[n].min_workers for n in actors)
    assert held + planned["scenes"].cpus <= 2.0 + 1e-9
    assert planned["scenes"].cpus == 1.0 and planned["probe"].cpus == recipe.stages[0].cls.resources.cpus
    assert all(planned[n].gpus == 0 for n in actors)


def test_big_clusters_keep_declared_resources_and_auto_devices_take_gpus():
    recipe = build_recipe({"stages": {"probe": {}, "scenes": {}, "ocr": {}, "aesthetic": {}}})
    planned = plan_resources(recipe.stages, [{"CPU": 64.0, "GPU": 8.0}])
    for spec in recipe.stages:
        assert planned[spec.name].cpus == spec.cls.resources.cpus
    assert planned["aesthetic"].gpus > 0  # device: auto on a cluster with GPUs
    assert plan_resources(recipe.stages, [{"CPU": 64.0}])["aesthetic"].gpus == 0


def test_a_stage_that_needs_a_gpu_on_a_cluster_without_one_is_a_clear_error():
    recipe = build_recipe({"stages": {"probe": {}, "scenes": {}, "aesthetic": {"device": "cuda"}}})
    with pytest.raises(UserError, match="stages aesthetic need a GPU"):
        plan_resources(recipe.stages, [{"CPU": 2.0}])
    assert plan_resources(recipe.stages, [{"CPU": 2.0, "GPU": 1.0}])["aesthetic"].gpus > 0


def _worst_free(cpus: list[float], shares: list[float]) -> float:
    """The most free CPUs the best node keeps when the actors are placed as badly as possible (every order and
    node choice Ray could make, first-fit or not): exhaustive, the shares are few."""
    best_worst = None
    for nodes in itertools.product(range(len(cpus)), repeat=len(shares)):
        used = [0.0] * len(cpus)
        for share, node in zip(shares, nodes):
            used[node] += share
        if any(u > c + 1e-9 for u, c in zip(used, cpus)):
            continue  # Ray would not place it so
        free = max(c - u for c, u in zip(cpus, used))
        best_worst = free if best_worst is None else min(best_worst, free)
    return best_worst


@pytest.mark.parametrize("cpus", [[1, 1], [1], [2], [2, 2], [1, 1, 1, 1], [0, 1, 1], [4, 1]])
def test_a_task_always_fits_beside_the_actors_on_some_node(cpus):
    """The reported hang: two nodes of 1 CPU, quickstart stuck on a {'CPU': 1.0} task no node could grant."""
    from pipeline.recipe import load_recipe

    recipe = load_recipe("quickstart")
    planned = plan_resources(recipe.stages, [{"CPU": float(c)} for c in cpus])
    actors = [planned[s.name].cpus for s in recipe.stages if s.cls.actor for _ in range(planned[s.name].min_workers)]
    largest_task = max(planned[s.name].cpus for s in recipe.stages if not s.cls.actor)
    assert _worst_free([float(c) for c in cpus], actors) >= largest_task - 1e-9
    assert largest_task <= max(cpus)


def test_a_cluster_without_cpus_is_refused():
    recipe = build_recipe({"stages": {"probe": {}, "scenes": {}}})
    with pytest.raises(UserError, match="no CPU on any of its 2 node"):
        plan_resources(recipe.stages, [{"CPU": 0.0}, {"GPU": 1.0}])
    with pytest.raises(UserError, match="no CPU on any of its 0 node"):
        plan_resources(recipe.stages, [])
