"""Owner records: a live process, a dead one, a reused pid, a zombie, another host."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from mtl_core.owner import Owner


def test_this_process_is_alive_and_round_trips():
    me = Owner.current()
    assert me.pid == os.getpid() and me.started and me.namespace
    assert Owner.from_dict(me.as_dict()) == me
    assert me.alive() is True
    assert me.describe() == f"process {me.pid} on host {me.host}"


def test_a_reused_pid_is_a_dead_owner():
    me = Owner.current()
    assert Owner(me.host, me.pid, "another-boot/1", me.namespace).alive() is False


def test_an_exited_process_is_dead_also_before_it_is_reaped():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    owner = Owner(Owner.current().host, proc.pid)
    deadline = time.monotonic() + 30
    while owner.alive() and time.monotonic() < deadline:  # a zombie until we wait for it
        time.sleep(0.05)
    assert owner.alive() is False
    proc.wait()
    assert owner.alive() is False


def test_another_host_or_pid_namespace_cannot_be_told():
    me = Owner.current()
    assert Owner("elsewhere", me.pid).alive() is None
    assert Owner(me.host, me.pid, me.started, "pid:[1]").alive() is None


def test_malformed_records_are_no_owner():
    assert Owner.from_dict(None) is None
    assert Owner.from_dict({"host": "h"}) is None
    assert Owner.from_dict({"host": "h", "pid": "x"}) is None
