"""The worked example in docs/ursa.md: its app file validates, profiles, plans, and the SLA
it warns about is refused with the smallest SLA that fits."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tests.microservices.helpers import run_cli

from leanstack.errors import LeanstackError

DOC = Path(__file__).resolve().parents[2] / "docs" / "ursa.md"


@pytest.fixture()
def shop_file(tmp_path):
    block = re.search(r"```toml\n(.*?)```", DOC.read_text(), re.S)
    assert block, "docs/ursa.md has no toml example"
    path = tmp_path / "shop.toml"
    path.write_text(block.group(1))
    return path


def test_worked_example_runs_as_written(monkeypatch, capsys, tmp_path, shop_file):
    monkeypatch.chdir(tmp_path)
    commands = re.findall(r"^leanstack (micro validate|ursa profile|ursa plan) (.*)$",
                          DOC.read_text(), re.M)
    assert [c for c, _ in commands][-3:] == ["micro validate", "ursa profile", "ursa plan"]
    for cmd, args in commands[-3:]:
        code, out, err = run_cli(monkeypatch, capsys, *cmd.split(), *args.split())
        assert code == 0, err
    assert (tmp_path / "shop-plan.json").is_file()


def test_the_too_tight_sla_in_the_doc_is_refused(tmp_path, shop_file):
    from leanstack.microservices.app import load_app
    from leanstack.microservices.sim import SimBackend
    from leanstack.ursa.plan import make_plan
    from leanstack.ursa.profile import ProfileSettings, profile_app

    text = shop_file.read_text().replace("ms = 15 }", "ms = 3 }")
    assert "ms = 3 }" in text
    shop_file.write_text(text)
    app = load_app(shop_file)
    profile = profile_app(app, SimBackend(), ProfileSettings(rps=150), progress=False)
    with pytest.raises(LeanstackError, match="class 'browse'.*smallest SLA that fits"):
        make_plan(app, profile)
