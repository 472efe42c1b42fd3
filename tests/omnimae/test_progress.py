"""Progress a cluster log can read: one plain line per logging step when stdout is not a terminal."""

from __future__ import annotations

import re

from omnimae.progress import Progress

LINE = re.compile(r"^run step (\d+)/(\d+) \(\d+%\) .*lr=\S+ .*samples/s wait=\d+% eta \S+$")


def test_no_terminal_one_plain_line_per_logging_step(capsys):
    bar = Progress(30, initial=5, desc="run", tty=False)
    for step in range(6, 31):
        bar.update(1)
        if step % 10 == 0:
            bar.log(step, {"loss/image": 0.5, "loss/video": 0.25, "lr": 1e-4, "samples_per_s": 12.5,
                           "data_wait_share": 0.125, "grad_norm": 1.0})
    bar.close()
    out, err = capsys.readouterr()
    assert "\r" not in out + err
    lines = out.splitlines()
    assert [LINE.match(line).groups() for line in lines] == [("10", "30"), ("20", "30"), ("30", "30")]
    assert "image=0.5000 video=0.2500 lr=1.00e-04 12.5 samples/s wait=12%" in lines[0]
    assert lines[-1].endswith("eta 0s")


def test_a_terminal_keeps_the_bar_and_prints_no_lines(capsys):
    bar = Progress(10, desc="run", tty=True)
    bar.update(5)
    bar.log(5, {"loss": 1.0, "lr": 1e-3, "samples_per_s": 1.0, "data_wait_share": 0.0})
    bar.close()
    out, err = capsys.readouterr()
    assert out == "" and "loss=1.0000" in err  # tqdm draws on stderr


def test_a_training_run_without_a_terminal_logs_plain_lines(tiny_config, capsys):
    from omnimae.train import train

    train(tiny_config(**{"train.max_steps": 3, "train.log_every": 1, "train.run_name": "run"}))
    out, err = capsys.readouterr()
    assert "\r" not in out + err
    steps = [LINE.match(line).groups() for line in out.splitlines() if LINE.match(line)]
    assert steps == [("1", "3"), ("2", "3"), ("3", "3")]
    assert "image=" in out and "video=" in out
