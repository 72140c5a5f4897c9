"""The user documentation says what the code does: the README's tutorial runs, docs/CLI.md lists every
option, links lead somewhere. (The API reference is built by ``mkdocs build --strict`` in .ci/run.)"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from fastload.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
CLI_MD = (REPO / "docs" / "CLI.md").read_text()


def _section(text: str, heading: str) -> str:
    """The body of the markdown section ``heading``: up to the next heading of the same or a higher level
    outside a code block."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == f"## {heading}" or
                  line.rstrip() == f"# {heading}"), None)
    assert start is not None, f"no section {heading!r}"
    level = len(lines[start]) - len(lines[start].lstrip("#"))
    body, fenced = [], False
    for line in lines[start + 1:]:
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(rf"#{{1,{level}}} ", line):
            break
        body.append(line)
    return "".join(body)


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, re.M | re.S)


def test_cli_page_lists_every_command_and_option():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, p in sub.choices.items():
        body = _section(CLI_MD, name)
        for action in p._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            names = action.option_strings or [action.metavar or action.dest.upper()]
            if not all(f"`{n}" in body or f"{n}`" in body or f", {n}" in body for n in names):
                missing.append(f"{name} {'/'.join(names)}")
    assert "fastload --version" in CLI_MD
    assert not missing, f"docs/CLI.md does not describe: {missing}"


def test_readme_starts_with_the_two_commands_ci_runs():
    first = _blocks(README, "bash")[0].splitlines()
    assert first[0].startswith('pip install torch==2.13.0 -e ".[demo]" && fastload demo ')
    assert first[1].startswith('pip install torch==2.13.0 -e ".[test]" && python -m pytest -q ')
    ci = (REPO / ".ci" / "run").read_text()
    assert 'pip install -q torch==2.13.0 -e ".[test]"' in ci and "python -m pytest -q" in ci


def test_readme_links_lead_somewhere_and_speak_to_users():
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README):
        if "://" not in target:
            assert (REPO / target).exists(), f"README links to {target}, which is not in the repository"
    prose = re.sub(r"```.*?```", "", README, flags=re.S)
    assert not re.search(r"\brooms?\b", prose, re.I), "internal vocabulary"
    hashes = [w for w in re.findall(r"\b[0-9a-f]{7,40}\b", prose) if re.search(r"[a-f]", w) and re.search(r"\d", w)]
    assert not hashes, f"commit hashes in the README's prose: {hashes}"
    for heading in ("Install", "Five-minute tutorial", "Results", "Custom augmentations",
                    "Training from object storage", "Converting at scale (Ray) and other sources",
                    "When things go wrong", "The loader: arguments, resume, distributed, failures"):
        _section(README, heading)
    order = [README.index(f"\n## {h}\n") for h in ("Install", "Five-minute tutorial", "Results")]
    assert order == sorted(order)


def test_readme_tutorial_runs(tmp_path):
    """Steps 1-3 of the tutorial as written (paths moved into a temporary directory), in a real process."""
    from fastload.demo_data import make_photo_imagefolder
    tutorial = _section(README, "Five-minute tutorial")
    photos, data = tmp_path / "photos", tmp_path / "photos-fastload"
    make_photo_imagefolder(photos, images_per_class=20)          # what the tutorial's own one-liner makes

    def here(text: str) -> str:
        return text.replace("/data/photos-fastload", str(data)).replace("/data/photos", str(photos))

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    bash = _blocks(tutorial, "bash")
    commands = [here(line.split("#")[0]).strip() for line in bash[0].splitlines() if line.strip()]
    assert [c.split()[:2] for c in commands] == [["fastload", "convert"], ["fastload", "inspect"],
                                                 ["fastload", "verify"]]
    for cmd in commands:
        r = subprocess.run([sys.executable, "-m", "fastload.cli", *shlex.split(cmd)[1:]], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, (cmd, r.stderr[-2000:])
    for line in bash[-1].splitlines():                            # profile: the options exist
        if line.startswith("fastload profile"):
            build_parser().parse_args(shlex.split(here(line.split("#")[0]))[1:])

    train, gpu, resume = _blocks(tutorial, "python")
    compile(gpu, "gpu snippet", "exec")                           # needs CUDA: only checked to be Python
    script = here(train) + "\n" + here(resume).replace("        ...", "        seen = locals().get('seen', 0) + 1") \
        + "\nprint('resumed batches', seen)\n"
    r = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "epoch 1: loss" in r.stdout and (tmp_path / "checkpoint.pt").is_file()
    # 200 images in batches of 32: 6 steps an epoch, the checkpoint after step 2 of epoch 1 leaves 3
    assert "resumed batches 3" in r.stdout, r.stdout


@pytest.mark.parametrize("page", ["LOADER.md", "REMOTE.md", "CONVERT.md", "TROUBLESHOOTING.md", "OPS.md",
                                  "FORMAT.md", "PROFILE.md", "CLI.md", "index.md"])
def test_concept_pages_exist_with_a_title(page):
    text = (REPO / "docs" / page).read_text()
    assert text.startswith("# "), page
