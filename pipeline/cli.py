"""The `actcurate` command: a thin layer over the library (pipeline.run, manifests.audit)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console

from manifests.export import CLIP_METHODS, FORMATS
from pipeline.errors import UserError
from pipeline.plan import DEFAULT_SHARD_SIZE

console = Console()


class _Group(click.Group):
    """Errors a user can cause end with one clear line and a non-zero exit, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/bold red] {exc}", highlight=False)
            sys.exit(2)
        except KeyboardInterrupt:
            Console(stderr=True).print("interrupted; committed shards are kept, run the same command to resume")
            sys.exit(130)


@click.group(cls=_Group)
@click.version_option(package_name="actcurate")
def main() -> None:
    """Curate human-action video datasets on Ray: filter, split, annotate, audit."""


@main.command()
@click.option("--recipe", "-r", required=True, help="Recipe name (quickstart, haic, hmi, hoigen) or YAML path.")
@click.option("--input", "-i", "input_spec", help="Directory, glob, list file (txt/csv/jsonl/parquet) or s3://prefix.")
@click.option("--output", "-o", required=True, help="Output folder or s3://bucket/prefix (plan, manifests, commits).")
@click.option("--shard-size", type=int, default=None, help=f"Videos per shard (default {DEFAULT_SHARD_SIZE}).")
@click.option("--set", "overrides", multiple=True, metavar="STAGE.PARAM=VALUE", help="Override a recipe parameter.")
@click.option("--skip", multiple=True, metavar="STAGE", help="Leave a stage of the recipe out (e.g. mome).")
@click.option("--models-dir", type=click.Path(), help="Folder with model files (also ACTCURATE_MODELS).")
@click.option("--address", help="Ray cluster address; default: an embedded local Ray.")
@click.option("--redo-errors", is_flag=True, help="Reprocess the videos whose rows have status=error.")
@click.option("--allow-recipe-change", is_flag=True, help="Continue an output that was started with another recipe.")
@click.option("--progress/--no-progress", default=None, help="Progress bars (default: on a terminal only).")
@click.option("--executor", type=click.Choice(["auto", "ray", "local"]), default="auto", show_default=True,
              help="ray: Ray Data; local: every stage in this process; auto: local for a small run on a new local Ray.")
@click.option("--profile", is_flag=True, help="Print where the run's time went (one JSON line on stderr).")
def run(recipe, input_spec, output, shard_size, overrides, skip, models_dir, address, redo_errors, allow_recipe_change,
        progress, executor, profile) -> None:
    """Run a recipe over the input; resumes where a previous run on OUTPUT stopped."""
    from pipeline.recipe import load_recipe
    from pipeline.run import RunOptions, run as run_pipeline

    loaded = load_recipe(recipe, overrides, skip)
    result = run_pipeline(RunOptions(
        recipe=loaded, output=output, input=input_spec, shard_size=shard_size, address=address,
        redo_errors=redo_errors, allow_recipe_change=allow_recipe_change, progress=progress, models_dir=models_dir,
        executor=executor,
    ))
    _print_run_result(result)
    if profile:
        click.echo("profile " + json.dumps({"executor": result.executor, **result.profile}), err=True)
    if result.shards_pending:
        sys.exit(1)


def _print_run_result(result) -> None:
    if not result.videos_processed:
        console.print(f"nothing to do: all {result.shards_total} shards of {result.output} are committed")
        return
    done = result.shards_total - len(result.shards_pending)
    console.print(f"committed {len(result.shards_committed_now)} shard(s) in {result.seconds:.1f}s; "
                  f"{done} of {result.shards_total} shards of {result.output} are committed")
    nodes = sorted({n for ids in result.stage_nodes.values() for n in ids})
    if len(nodes) > 1:
        console.print(f"workers ran on {len(nodes)} nodes: " + "  ".join(
            f"{stage} {','.join(n[:8] for n in ids)}" for stage, ids in result.stage_nodes.items()))
    if result.shards_pending:
        console.print(f"[red]{len(result.shards_pending)} shard(s) did not complete[/red] "
                      f"({', '.join(result.shards_pending[:5])}); run the same command again to retry them")
    console.print(f"next: actcurate audit {result.output}")


@main.command()
@click.argument("output")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(output, as_json) -> None:
    """Shards committed and pending, and rows by status."""
    from manifests.audit import status as get_status

    report = get_status(output)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    s, v, r = report["shards"], report["videos"], report["clips"]
    console.print(f"{report['output']}: shards {s['committed']}/{s['total']} committed, {s['pending']} pending; "
                  f"videos {v['done']}/{v['total']}")
    console.print(f"clips {r['total']}: {r['accepted']} accepted, {r['rejected']} rejected, {r['error']} error")
    rv = report["reviews"]
    if rv["records"]:
        console.print(f"reviews: {rv['clips_reviewed']} clips reviewed, {rv['review_accepted']} accepted, "
                      f"{rv['review_rejected']} rejected, {rv['caption_edits']} caption edits, {rv['disputed']} disputed")
    if report["pending_shards"]:
        console.print("pending: " + ", ".join(report["pending_shards"][:20])
                      + (" ..." if len(report["pending_shards"]) > 20 else ""))


@main.command()
@click.argument("output")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False), help="Also write an HTML report.")
def audit(output, as_json, html_file) -> None:
    """The funnel, rejection reasons with their values and thresholds, errors and throughput."""
    from manifests.audit import audit as get_audit, render_text
    from manifests.report import write_report

    report = write_report(output, html_file) if html_file else get_audit(output)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        render_text(report, console)


@main.command()
@click.argument("output")
@click.option("--format", "fmt", required=True, type=click.Choice(FORMATS), help="The dataset shape to write.")
@click.option("--to", "to", required=True, help="Folder or s3://bucket/prefix to write the dataset to.")
@click.option("--clips", type=click.Choice(CLIP_METHODS), default="none", show_default=True,
              help="Clip files: stream copy where exact (else re-encode), re-encode, or none (records point at the "
                   "source video and span).")
@click.option("--test-share", type=float, default=0.1, show_default=True, help="Share of source videos in the test split.")
@click.option("--drop-guessable", is_flag=True, help="Leave out questions the blind text-only model answered.")
@click.option("--samples-per-shard", type=int, default=1000, show_default=True, help="webdataset: clips per tar.")
@click.option("--workers", type=int, default=4, show_default=True, help="Clip files cut at once.")
def export(output, fmt, to, clips, test_share, drop_guessable, samples_per_shard, workers) -> None:
    """Accepted (and not review-rejected) clips as a dataset: records, optional clip files, a README.md card."""
    from manifests.export import ExportOptions, export as run_export

    result = run_export(ExportOptions(output=output, fmt=fmt, to=to, clips=clips, test_share=test_share,
                                      drop_guessable=drop_guessable, samples_per_shard=samples_per_shard,
                                      workers=workers))
    s = result.stats
    console.print(f"exported {sum(v['clips'] for v in s['splits'].values())} clips "
                  f"(train {s['splits']['train']['clips']}, test {s['splits']['test']['clips']}) as {fmt} to {result.to}")
    for path, n in s["written"].items():
        console.print(f"  {path}: {n} records")
    if s["left_out"]:
        console.print("left out: " + ", ".join(f"{k} {v}" for k, v in s["left_out"].items()))
    for err in s["clip_errors"][:5]:
        console.print(f"[red]clip file failed[/red] {err['clip_id']}: {err['error']}", highlight=False)


@main.command()
@click.argument("output")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (another one exposes the app).")
@click.option("--port", default=8765, show_default=True, type=int, help="Port (0: any free port).")
@click.option("--token", envvar="ACTCURATE_REVIEW_TOKEN", help="Write token (default: a new random one).")
def review(output, host, port, token) -> None:
    """Review clips in the browser: filter, play, accept / reject / edit captions (saved under OUT/reviews/)."""
    from pipeline.review_server import make_server

    server, app = make_server(output, host, port, token)
    url_host = host if ":" not in host else f"[{host}]"
    console.print(f"review app for {app.store.root}: {app.index.n} clips in {len(app.index.shards)} shards")
    console.print(f"write token: {app.token}")
    console.print(f"open http://{url_host}:{server.server_address[1]}/?token={app.token}", soft_wrap=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


@main.group()
def models() -> None:
    """Model files: list the registry, pull files, show where a model resolves."""


@models.command("list")
def models_list() -> None:
    from rich.table import Table

    from pipeline.models import REGISTRY, find

    table = Table()
    for col in ("name", "file", "licence", "present at", "description"):
        table.add_column(col)
    for name, artifact in sorted(REGISTRY.items()):
        path = find(name)
        table.add_row(name, artifact.filename, artifact.licence, str(path) if path else "[red]missing[/red]",
                      artifact.description)
    console.print(table)


@models.command("pull")
@click.argument("names", nargs=-1, required=True)
@click.option("--dest", type=click.Path(file_okay=False), help="Folder to write to (default: the cache).")
def models_pull(names, dest) -> None:
    from pipeline.models import get_artifact, pull

    for name in names:
        get_artifact(name)  # every name checked before any download starts
    for name in names:
        path, note = pull(name, Path(dest) if dest else None)
        console.print(f"{name}: {path} ({note})")


@models.command("path")
@click.argument("name")
def models_path(name) -> None:
    from pipeline.models import resolve

    click.echo(resolve(name))


@main.command()
@click.option("--output", "-o", default="quickstart_out", show_default=True, type=click.Path(file_okay=False))
def quickstart(output) -> None:
    """Offline demo: the quickstart recipe on sample footage and bad inputs, then the audit."""
    from manifests.audit import audit as get_audit, render_text
    from pipeline.quickstart import prepare_inputs, reset_output
    from pipeline.recipe import load_recipe
    from pipeline.run import RunOptions, run as run_pipeline

    out = Path(output).resolve()
    reset_output(out)
    list_file = prepare_inputs(out / "inputs")
    console.print(f"quickstart: recipe quickstart on {list_file} -> {out}")
    result = run_pipeline(RunOptions(recipe=load_recipe("quickstart"), output=str(out), input=str(list_file),
                                     shard_size=4, executor="ray"))  # shows the engine as a cluster runs it: Ray
    _print_run_result(result)
    render_text(get_audit(str(out)), console)


if __name__ == "__main__":
    main()
