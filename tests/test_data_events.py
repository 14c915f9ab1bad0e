"""Retraining on new data: the data digest, `python -m flows.data_updated`, the watch-data flow, and the trigger
on sft-retrain, against a real Prefect server (its triggers and actions services turn events into flow runs).

The served end to end run, where the triggered run really trains, is in test_deployments.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, wait_for
from sft_core.data.digest import data_digest
from sft_core.errors import BAD_INPUT_EXIT_CODE, DataError

ROWS = "".join(f'{{"prompt": "Q{i}: what is {i} plus {i}?", "completion": " {2 * i}"}}\n' for i in range(40))


def test_digest_follows_the_bytes_not_the_name_it_is_given(tmp_path, monkeypatch):
    data = tmp_path / "rows.jsonl"
    data.write_text(ROWS)
    first = data_digest(data)
    monkeypatch.chdir(tmp_path)
    assert data_digest("rows.jsonl") == first  # the same file, named from its folder
    assert first.path == str(data.resolve())
    data.write_text(ROWS)  # rewritten, same bytes
    assert data_digest(data).digest == first.digest
    data.write_text(ROWS + '{"prompt": "new", "completion": " row"}\n')
    assert data_digest(data).digest != first.digest
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "a.jsonl").write_text(ROWS)
    before = data_digest(folder).digest
    (folder / "b.jsonl").write_text(ROWS)
    assert data_digest(folder).digest != before


@pytest.mark.parametrize("path, says", [
    ("{tmp}/missing.jsonl", "{tmp}/missing.jsonl: no such file or folder"),
    ("s3://bucket/train.jsonl", "s3://bucket/train.jsonl: remote URIs have no content digest"),
    ("hf://datasets/tatsu-lab/alpaca", "hf://datasets/tatsu-lab/alpaca: remote URIs"),
    ("embedded:demo", "embedded:demo: the built-in demo data never changes"),
    ("tatsu-lab/alpaca", "tatsu-lab/alpaca: no such file or folder (a hub dataset name"),
])
def test_digest_refuses_what_is_not_local_and_names_it(tmp_path, path, says):
    with pytest.raises(DataError) as error:
        data_digest(path.format(tmp=tmp_path))
    assert says.format(tmp=tmp_path) in str(error.value)


def test_data_updated_needs_a_server(capsys):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.data_updated import main

    with temporary_settings(updates={PREFECT_API_URL: None}):
        assert main([str(ROOT / "README.md")]) == 1
    assert "PREFECT_API_URL is not set" in capsys.readouterr().err


def test_prefect_yaml_has_the_same_trigger_and_parameters_as_serve():
    """prefect deploy and serve must retrain on the same events, with the same window and parameters."""
    from prefect.events import DeploymentEventTrigger

    from deployments.serve import RETRAIN_CRON, build_deployments, retrain_parameters
    from tasks.params import PipelineConfig

    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    by_name = {d["name"]: d for d in spec["deployments"]}
    retrain = by_name["sft-retrain"]
    assert retrain["schedules"][0]["cron"] == RETRAIN_CRON
    assert retrain["parameters"]["config"]["data_path"]  # the data is a parameter, filled in
    served = build_deployments()[0].triggers[0]
    (trigger,) = [DeploymentEventTrigger(**t) for t in retrain["triggers"]]
    fields = ("name", "expect", "match", "for_each", "posture", "threshold", "within", "enabled")
    assert {f: getattr(trigger, f) for f in fields} == {f: getattr(served, f) for f in fields}
    from_yaml, from_serve = trigger.parameters["config"], served.parameters["config"]
    assert from_yaml["data_path"] == from_serve["data_path"] == "{{ event.resource.get('sftflow.data.path') }}"
    assert PipelineConfig(**from_yaml) == PipelineConfig(**from_serve) == retrain_parameters(from_yaml["data_path"])
    assert by_name["watch-data"]["entrypoint"] == "flows/watch_data.py:watch_data"


# -- against a real server -------------------------------------------------------------------------------
def _read(read):
    from prefect.client.orchestration import get_client

    async def once():
        async with get_client() as client:
            return await read(client)
    return asyncio.run(once())


def _runs_of(deployment_id) -> list:
    return _read(lambda client: _runs_async(client, deployment_id))


def _data_paths(deployment_id) -> list[str]:
    return sorted(r.parameters["config"]["data_path"] for r in _runs_of(deployment_id))


def _emit(*paths: Path) -> None:
    """Events straight to the server, as any publisher of data would send them (no digest check)."""
    from prefect.events import Event
    from prefect.events.clients import get_events_client

    from tasks.data_events import DATA_UPDATED_EVENT, data_resource

    async def send():
        async with get_events_client(checkpoint_every=1) as events:
            for path in paths:
                await events.emit(Event(event=DATA_UPDATED_EVENT, resource=data_resource(str(path), "any")))
    asyncio.run(send())


@pytest.fixture
def retrain_deployment(prefect_server):
    """sft-retrain with its trigger, as `serve` registers it; nothing runs its runs (they stay Scheduled)."""
    from deployments.serve import build_deployments

    deployment_id = build_deployments()[0].apply()
    yield deployment_id

    async def remove(client):
        for run in await _runs_async(client, deployment_id):
            await client.delete_flow_run(run.id)
        await client.delete_resource_owned_automations(f"prefect.deployment.{deployment_id}")
        await client.delete_deployment(deployment_id)
    _read(remove)


async def _runs_async(client, deployment_id):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    return await client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))


def test_changed_data_starts_one_retrain_run_unchanged_none_and_a_burst_one(retrain_deployment, tmp_path, capsys):
    from prefect.variables import Variable

    from flows.data_updated import main
    from tasks.data_events import digest_variable_name

    data = tmp_path / "rows.jsonl"
    data.write_text(ROWS)
    path = str(data.resolve())
    variable = digest_variable_name(path)
    Variable.set(variable, {"path": path, "digest": "an-earlier-version"}, overwrite=True)  # announced before

    assert main([str(data)]) == 0
    assert f"changed: {path}" in capsys.readouterr().out
    assert wait_for(lambda: _data_paths(retrain_deployment), 60, "a triggered sft-retrain run") == [path]
    (run,) = _runs_of(retrain_deployment)
    assert run.parameters["config"]["registered_model_name"] == "sftflow-demo"  # the deployment's own parameters
    assert (run.created_by.type, run.created_by.display_value) == ("AUTOMATION", "sft-retrain on new data")
    assert Variable.get(variable)["digest"] == data_digest(data).digest  # recorded after the event went out

    assert main([str(data)]) == 0  # the same bytes again: no event
    assert f"unchanged: {path}" in capsys.readouterr().out

    burst, marker = tmp_path / "burst.jsonl", tmp_path / "marker.jsonl"
    _emit(*[burst] * 5, marker)  # five events for one path within the 60 s window, then one for another path
    # The server takes one connection's events in order (two at a time): once the marker's run exists, the
    # burst's events, and any event from the unchanged call above, have been evaluated, all but the last
    # burst event surely so.
    wait_for(lambda: {str(burst), str(marker)} <= set(_data_paths(retrain_deployment)), 60, "the burst's run")
    assert _data_paths(retrain_deployment) == sorted([path, str(burst), str(marker)])


def test_bad_paths_are_named_and_good_ones_still_announced(prefect_server, tmp_path, capsys):
    from prefect.variables import Variable

    from flows.data_updated import main
    from tasks.data_events import digest_variable_name

    good = tmp_path / "good.jsonl"
    good.write_text(ROWS)
    missing = tmp_path / "nope.jsonl"
    assert main([str(missing), "s3://bucket/rows.jsonl", str(good)]) == BAD_INPUT_EXIT_CODE
    out = capsys.readouterr()
    assert f"{missing}: no such file or folder" in out.err
    assert "s3://bucket/rows.jsonl: remote URIs" in out.err
    assert f"changed: {good.resolve()}" in out.out
    assert Variable.get(digest_variable_name(str(good.resolve())))["path"] == str(good.resolve())


def test_watch_data_shares_the_last_digest_with_the_command(prefect_server, tmp_path, capsys):
    """The flow and the command read and write the same Variable: what one announced, the other does not."""
    from flows.data_updated import main
    from flows.watch_data import watch_data

    data = tmp_path / "watched.jsonl"
    data.write_text(ROWS)
    first, = watch_data([str(data)])
    assert first.emitted and first.previous_digest is None
    assert main([str(data)]) == 0
    assert "unchanged" in capsys.readouterr().out
    data.write_text(ROWS + '{"prompt": "one more", "completion": " row"}\n')
    assert main([str(data)]) == 0
    assert "changed" in capsys.readouterr().out
    again, = watch_data([str(data)])
    assert not again.emitted and again.digest == data_digest(data).digest
    with pytest.raises(DataError, match="nope.jsonl: no such file or folder"):
        watch_data([str(tmp_path / "nope.jsonl"), str(data)])


def test_a_change_the_trigger_window_swallowed_is_handed_back_once_and_only_if_no_run_took_it(
        retrain_deployment, tmp_path, capsys):
    """v1 starts a run; v2, announced within the window, starts none; at its end the run (trained on v1)
    announces v2 again, unless a later run on that path exists or v2 was never announced."""
    from flows.data_updated import main
    from sft_core.data.sources import fingerprint_source
    from tasks.data_events import announce_missed_change

    data = tmp_path / "rows.jsonl"
    data.write_text(ROWS)
    path = str(data.resolve())
    assert main([path]) == 0
    (first_run,) = wait_for(lambda: _runs_of(retrain_deployment), 60, "the run v1 started")
    trained_on_v1 = fingerprint_source(path)
    assert announce_missed_change(path, trained_on_v1, flow_run_id=first_run.id) is None  # nothing changed

    data.write_text(ROWS + '{"prompt": "v2", "completion": " row"}\n')
    assert announce_missed_change(path, trained_on_v1, flow_run_id=first_run.id) is None  # not announced yet
    assert main([path]) == 0 and "changed" in capsys.readouterr().out  # within the window: no run of its own
    handed_back = announce_missed_change(path, trained_on_v1, flow_run_id=first_run.id)
    assert handed_back is not None and handed_back.emitted and handed_back.digest == data_digest(data).digest
    assert announce_missed_change(path, fingerprint_source(path), flow_run_id=first_run.id) is None  # ran on v2

    async def later_run(client):  # a run on the path, created after the last announcement
        return await client.create_flow_run_from_deployment(
            retrain_deployment, parameters={"config": {"data_path": path}})
    _read(later_run)
    assert announce_missed_change(path, trained_on_v1, flow_run_id=first_run.id) is None  # that run took it
