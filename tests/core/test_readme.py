"""The README's Python snippets run as written (in a fresh folder and MDIFF_HOME)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_the_readme_has_python_snippets():
    assert len(SNIPPETS) >= 4


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_readme_snippet_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MDIFF_HOME", str(tmp_path / "home"))
    code = compile(SNIPPETS[index], f"README.md python snippet {index}", "exec")
    exec(code, {"__name__": f"readme_snippet_{index}"})
