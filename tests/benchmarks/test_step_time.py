"""benchmarks/step_time.py end to end on a tiny CPU run: both forwards side by side, the ratio, the
attention line and the per-part FLOPs, in the printout and the JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import step_time  # noqa: E402


def test_fast_and_reference_forwards_side_by_side(tmp_path, capsys):
    out = tmp_path / "step.json"
    code = step_time.main(["--device", "cpu", "--img-size", "64", "--frames", "4", "--batch", "2",
                           "--steps", "2", "--warmup", "1", "--rounds", "2", "--compile", "off",
                           "--modality", "video", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "fast / reference, video fp32 eager:" in text
    assert "attention: PyTorch's own kernel choice" in text
    assert "decoder_pred" in text and "decoder_positions" in text  # the per-part FLOPs table
    rows = json.loads(out.read_text())["results"]
    assert {r["forward"] for r in rows} == {"fast", "reference"}
    fast, ref = (next(r for r in rows if r["forward"] == f) for f in ("fast", "reference"))
    assert fast["gflops_per_sample"] < ref["gflops_per_sample"]  # fewer FLOPs counted, not assumed
    # Same weights, same batches: the two forwards compute the same loss.
    assert abs(fast["final_loss"] - ref["final_loss"]) < 1e-4 * abs(ref["final_loss"])
