"""`pyctr completion bash`: the generated script, run by a real bash."""

from __future__ import annotations

import subprocess
import sys

import pytest


def complete(script: str, *words: str) -> list[str]:
    """What bash offers after `pyctr <words>` (the last word is being typed)."""
    argv = " ".join(f"'{w}'" for w in ("pyctr", *words))
    call = f"COMP_WORDS=({argv}); COMP_CWORD={len(words)}; _pyctr"
    probe = f"{script}\n{call}; printf '%s\\n' \"${{COMPREPLY[@]}}\"\n"
    out = subprocess.run(
        ["bash", "--norc", "-c", probe], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.fixture(scope="module")
def script() -> str:
    out = subprocess.run(
        [sys.executable, "-m", "pyctr.ctl.main", "completion", "bash"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return out.stdout


def test_bash_completes_commands_subcommands_and_options(script: str) -> None:
    assert "images" in complete(script, "ima") and "pods" in complete(script, "po")
    assert complete(script, "images", "pu") == ["pull"]
    assert complete(script, "pods", "l") == ["list", "logs", "ls"]
    assert complete(script, "-o", "json", "pods", "st") == ["stats"]  # options are skipped
    assert complete(script, "doctor", "--k") == ["--kubelet-config"]
    assert complete(script, "completion", "") == ["--help", "-h", "bash", "zsh"]
    assert complete(script, "nosuch", "--") == complete(script, "--")  # unknown: top level


def test_zsh_script_uses_bashcompinit() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pyctr.ctl.main", "completion", "zsh"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert out.stdout.startswith("autoload -U +X bashcompinit && bashcompinit\n")
    assert "complete -o default -F _pyctr pyctr" in out.stdout
