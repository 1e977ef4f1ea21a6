"""Sectioned scripts run by a real POSIX sh: file reads with builtins, commands in subshells."""

import subprocess

from pyinfra_backup.shell import ReadFile, parse_sections, sectioned_script


def _run(sections):
    script = sectioned_script(sections)
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout
    return script, parse_sections(out.splitlines())


def test_file_reads_keep_content_exactly_and_report_absence(tmp_path):
    (tmp_path / "f").write_text("  leading spaces\\back\\slash\n\nlast line without newline")
    (tmp_path / "empty").write_text("")
    script, got = _run({
        "f": ReadFile(str(tmp_path / "f")),
        "empty": ReadFile(str(tmp_path / "empty")),
        "missing": ReadFile(str(tmp_path / "nope")),
        "dir": ReadFile(str(tmp_path)),
        "gated": ReadFile(str(tmp_path / "f"), only_if=str(tmp_path / "nope")),
    })
    assert got["f"].stdout == ["  leading spaces\\back\\slash", "", "last line without newline"] and got["f"].ok
    assert got["empty"].stdout == [] and got["empty"].ok
    assert [got[k].rc for k in ("missing", "dir", "gated")] == [1, 1, 1]
    assert "mktemp" not in script and "cat " not in script  # reads only: no process started


def test_commands_and_reads_mix(tmp_path):
    (tmp_path / "f").write_text("x\n")
    _, got = _run({"cmd": "echo out; echo err >&2; exit 3", "f": ReadFile(str(tmp_path / "f"))})
    assert (got["cmd"].stdout, got["cmd"].stderr, got["cmd"].rc) == (["out"], ["err"], 3)
    assert got["f"].stdout == ["x"]


def test_a_section_without_a_final_newline_does_not_swallow_the_next(tmp_path):
    (tmp_path / "f").write_text("no newline at the end")
    _, got = _run({"cat": f"cat {tmp_path / 'f'}", "next": "echo next"})
    assert got["cat"].stdout == ["no newline at the end"] and got["cat"].rc == 0
    assert got["next"].stdout == ["next"] and got["next"].rc == 0
