"""The lag trace: off by default, and the bench's reading of its marks."""

from __future__ import annotations

import sys
from pathlib import Path

from sutra_cluster.storage import lagtrace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import lag_stages  # noqa: E402


def test_trace_is_off_unless_named() -> None:
    assert lagtrace.ON is bool(lagtrace.PREFIX)
    lagtrace.mark("tail", 1)  # off: writes nothing, raises nothing


def test_a_record_reaches_a_stage_at_the_first_mark_at_or_above_it(tmp_path: Path) -> None:
    ms = 1_000_000
    leader = [("tail", 1, 0), ("tail", 2, 1), ("durable", 2, 3), ("sent:r1", 2, 4), ("ack:r1", 2, 20),
              ("visible", 2, 9)]
    replica = [("recv", 2, 6), ("tail", 1, 7), ("tail", 2, 7), ("durable", 2, 10), ("ackq", 2, 11),
               ("visible", 1, 12), ("visible", 2, 15)]
    (tmp_path / "t.1").write_text("".join(f"leader {s} {lsn} {t * ms}\n" for s, lsn, t in leader))
    (tmp_path / "t.2").write_text("".join(f"r1 {s} {lsn} {t * ms}\n" for s, lsn, t in replica))
    steps = lag_stages.stages(lag_stages.load(str(tmp_path / "t")))["r1"]
    assert steps["L tail -> L durable"] == [3.0, 2.0]  # record 1 became durable with record 2's group
    assert steps["L sent -> R recv"] == [2.0, 2.0]
    assert steps["R ackq -> L ack"] == [9.0, 9.0]
    assert steps["total: L tail -> L ack"] == [20.0, 19.0]
    assert steps["R durable -> R visible"] == [2.0, 5.0]
    assert steps["L durable -> L visible"] == [6.0, 6.0]


def test_records_before_a_phase_can_be_left_out(tmp_path: Path) -> None:
    ms = 1_000_000
    leader = [("tail", 1, 0), ("durable", 1, 1), ("sent:r1", 1, 2), ("ack:r1", 1, 50),
              ("tail", 2, 100), ("durable", 2, 101), ("sent:r1", 2, 102), ("ack:r1", 2, 105)]
    replica = [("recv", 1, 3), ("tail", 1, 4), ("durable", 1, 5), ("ackq", 1, 6),
               ("recv", 2, 103), ("tail", 2, 103), ("durable", 2, 104), ("ackq", 2, 104)]
    (tmp_path / "t.1").write_text("".join(f"leader {s} {lsn} {t * ms}\n" for s, lsn, t in leader))
    (tmp_path / "t.2").write_text("".join(f"r1 {s} {lsn} {t * ms}\n" for s, lsn, t in replica))
    marks = lag_stages.load(str(tmp_path / "t"))
    assert lag_stages.stages(marks)["r1"]["total: L tail -> L ack"] == [50.0, 5.0]
    assert lag_stages.stages(marks, after_lsn=1)["r1"]["total: L tail -> L ack"] == [5.0]
    assert lag_stages.summary(str(tmp_path / "t"), after_lsn=1)["r1"]["total: L tail -> L ack"]["n"] == 1
