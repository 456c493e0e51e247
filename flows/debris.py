"""What a dead ``mtl-pipeline`` process leaves in Prefect, and closing it.

A flow run killed with its process (SIGKILL, out of memory, a lost machine)
stays RUNNING on the API, and so do its task runs. Each flow run is labelled
with its owner (host, pid, start time) as it starts; a later run on the same
host sets those whose owner is dead CRASHED, with a message. Flow runs of live
processes, of other hosts and without an owner label are left alone (a Prefect
worker reports the crashes of the runs it started itself).
"""

from __future__ import annotations

from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
    TaskRunFilterState,
    TaskRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.context import get_run_context
from prefect.runtime import flow_run
from prefect.states import Crashed

from mtl_core.owner import Owner

OWNER_LABEL = "mtl.owner."  # + host, pid, started
UNFINISHED = [StateType.PENDING, StateType.RUNNING]


def label_flow_run() -> None:
    """Label the current flow run with this process as its owner."""
    labels = {OWNER_LABEL + k: v for k, v in Owner.current().as_dict().items()}
    get_run_context().client.update_flow_run_labels(flow_run.id, labels)


def crash_dead_flow_runs(flow_name: str) -> int:
    """Set unfinished runs of ``flow_name`` whose owner is dead CRASHED; returns how many.

    Their unfinished task runs are set CRASHED too.
    """
    client = get_run_context().client
    unfinished = client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=UNFINISHED))
        ),
        limit=200,
    )
    me = Owner.current().describe()
    crashed = 0
    for run in unfinished:
        owner = Owner.from_dict(
            {
                k.removeprefix(OWNER_LABEL): str(v)
                for k, v in run.labels.items()
                if k.startswith(OWNER_LABEL)
            }
        )
        if owner is None or owner.alive() is not False:
            continue
        message = f"{owner.describe()} ended without finishing this flow run; closed by {me}"
        client.set_flow_run_state(run.id, Crashed(message=message), force=True)
        crash_task_runs(client, run.id, message)
        crashed += 1
    return crashed


def crash_task_runs(client, flow_run_id, message: str) -> int:
    """Set the unfinished task runs of a flow run that ended CRASHED too; returns how many."""
    tasks = client.read_task_runs(
        task_run_filter=TaskRunFilter(
            flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id]),
            state=TaskRunFilterState(type=TaskRunFilterStateType(any_=UNFINISHED)),
        )
    )
    for task_run in tasks:
        client.set_task_run_state(task_run.id, Crashed(message=message), force=True)
    return len(tasks)
