"""How many threads a command takes by default: the cores idle *now*."""

import io
import os

import pytest

import cafeslim.cli.common as common_cli


def _fake_proc_stat(monkeypatch, samples):
    # /proc/stat's first line: user nice system idle iowait irq softirq steal
    lines = iter(f"cpu  {busy} 0 0 {idle} {iowait} 0 0 0\n" for busy, idle, iowait in samples)
    monkeypatch.setattr(common_cli, "open", lambda *a, **k: io.StringIO(next(lines)), raising=False)
    monkeypatch.setattr(common_cli.time, "sleep", lambda s: None)


def test_idle_cores_is_the_idle_share_over_the_sample(monkeypatch):
    # 300 ticks pass, 150 of them idle or waiting on I/O: half of every core is idle
    _fake_proc_stat(monkeypatch, [(100, 80, 20), (250, 200, 50)])
    assert common_cli.idle_cores() == pytest.approx((os.cpu_count() or 1) * 0.5)


def test_idle_cores_ignores_the_load_average_of_a_command_that_just_ended(monkeypatch):
    # A 1-minute load average of 1.0 left by the previous command must not cost a thread.
    _fake_proc_stat(monkeypatch, [(0, 0, 0), (0, 100, 0)])
    monkeypatch.setattr(common_cli.os, "getloadavg", lambda: (1.0, 1.0, 1.0))
    assert common_cli.idle_cores() == (os.cpu_count() or 1)


def test_idle_cores_falls_back_to_the_load_average_without_proc(monkeypatch):
    def no_proc(*a, **k):
        raise OSError("no /proc")

    monkeypatch.setattr(common_cli, "open", no_proc, raising=False)
    monkeypatch.setattr(common_cli.os, "getloadavg", lambda: (0.5, 0.5, 0.5))
    assert common_cli.idle_cores() == pytest.approx(max(0.0, (os.cpu_count() or 1) - 0.5))
