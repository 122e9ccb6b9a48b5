"""The documentation against the code: the generated reference pages are current, the README stays short
and keeps its test command, and every command in the README names files, configs, sub-commands, flags and
config keys that exist. In-process and fast (the unit tier)."""

from __future__ import annotations

import functools
import re
import shlex
from pathlib import Path

import pytest
from conftest import REPO

from distgan.cli import COMMANDS
from distgan.cli.reference import REGENERATE, command_parser, config_keys, pages, stale, subcommands

README = REPO / "README.md"
MAX_README_LINES = 250
# Pages whose ```bash blocks are checked like the README's (the newcomer's path).
CHECKED_PAGES = [README, REPO / "docs" / "index.md"]
# Tokens starting with one of these are repository paths that must exist.
REPO_DIRS = ("configs/", "launch/", "docs/", "distgan/", "tests/", ".ci/")
TRAINING_COMMANDS = {("train",), ("bench", "quality"), ("bench", "profile")}  # take key=value overrides


def bash_blocks(path: Path) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", path.read_text(encoding="utf-8"), flags=re.S | re.M)


def commands(path: Path) -> list[list[str]]:
    """Each simple command of the file's ```bash blocks, as tokens (continuations joined, comments dropped,
    split at ;, &&, || and |)."""
    out = []
    for block in bash_blocks(path):
        lexer = shlex.shlex(block.replace("\\\n", " "), posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        current: list[str] = []
        for line in lexer.instream.read().splitlines():
            for token in shlex.shlex(line, posix=True, punctuation_chars=";&|"):
                if set(token) <= set(";&|"):
                    out.append(current)
                    current = []
                else:
                    current.append(token)
            out.append(current)
            current = []
    return [c for c in out if c]


@functools.cache
def parser_of(name: str):
    return command_parser(name)


@functools.cache
def known_keys() -> frozenset[str]:
    return frozenset(config_keys())


def placeholder(token: str) -> bool:
    """FILE, RUN_OR_CKPT, <jobid>, *.png: a name for the reader to fill in, not a real path."""
    return bool(re.search(r"[A-Z]{3,}|[<>*$]", token))


def check_distgan(args: list[str], where: str) -> list[str]:
    """Problems of one `distgan SUB ...` invocation (args after `distgan`)."""
    if not args or args[0] not in COMMANDS:
        return [f"{where}: `distgan {' '.join(args[:1])}` is not a distgan command ({', '.join(COMMANDS)})"]
    path = (args[0],)
    parser = parser_of(args[0])
    rest = args[1:]
    subs = subcommands(parser)
    if subs:
        if not rest or rest[0] not in subs:
            return [f"{where}: `distgan {args[0]} {' '.join(rest[:1])}`: not one of {', '.join(subs)}"]
        path, parser, rest = (args[0], rest[0]), subs[rest[0]], rest[1:]
    flags = {s for action in parser._actions for s in action.option_strings}
    keys = known_keys()
    problems = []
    for i, token in enumerate(rest):
        if token.startswith("-"):
            flag = token.split("=", 1)[0]
            if flag not in flags:
                problems.append(f"{where}: `distgan {' '.join(path)}` has no option {flag}")
            elif flag == "--config" and i + 1 < len(rest) and not placeholder(rest[i + 1]):
                if not (REPO / rest[i + 1]).is_file():
                    problems.append(f"{where}: --config {rest[i + 1]} does not exist")
        elif path in TRAINING_COMMANDS and re.match(r"^[a-z_]+(\.[a-z_]+)*=", token):
            key = token.split("=", 1)[0]
            if key not in keys:
                problems.append(f"{where}: {token}: {key} is not a config key")
    return problems


def check_command(tokens: list[str], where: str) -> list[str]:
    problems = []
    for token in tokens:
        if token.startswith(REPO_DIRS) and not placeholder(token) and not (REPO / token).exists():
            problems.append(f"{where}: {token} does not exist")
    if "distgan" in tokens:
        i = tokens.index("distgan")
        if i == 0 or tokens[i - 1] == "-m":
            problems += check_distgan(tokens[i + 1:], where)
    if tokens[0] == "sbatch":
        script = next((i for i, t in enumerate(tokens) if t.endswith(".sbatch")), None)
        if script is not None and tokens[script].endswith("train.sbatch"):
            config, *overrides = tokens[script + 1:] or [""]
            if not (REPO / config).is_file():
                problems.append(f"{where}: train.sbatch's config {config!r} does not exist")
            keys = known_keys()
            problems += [f"{where}: {o}: not a config key" for o in overrides if o.split("=", 1)[0] not in keys]
    return problems


def test_reference_pages_match_the_code() -> None:
    out = REPO / "docs" / "reference"
    bad = stale(out)
    assert not bad, (f"docs/reference/{', '.join(bad)} differ from what the code generates; regenerate them with "
                     f"`{REGENERATE}` and commit the result")


def test_reference_pages_cover_every_command_and_key() -> None:
    text = pages()
    for name in COMMANDS:
        assert f"## `distgan {name}`" in text["cli.md"]
    for key in ("train.steps", "train.batch_size", "data.cache_dir", "log.with", "preempt.signals"):
        assert f"| `{key}` |" in text["config.md"]
    row = next(line for line in text["config.md"].splitlines() if line.startswith("| `train.steps` |"))
    assert "`10000`" in row and "| yes |" in row  # the default, and resumable


def test_readme_is_short_and_keeps_the_test_command() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; keep it at most {MAX_README_LINES}"
    assert any(c == ["python", "-m", "pytest", "-q"] for c in commands(README)), \
        "README.md must keep `python -m pytest -q` (CI runs it) in a ```bash block"
    first = "\n".join(lines[:60])
    for what in ("pip install", "distgan prepare", "distgan train", "python -m pytest -q", "What to expect"):
        assert what in first, f"README.md's first 60 lines lack {what!r}"
    assert "<!--" not in "\n".join(lines), "README.md: no HTML comment markers"


@pytest.mark.parametrize("page", CHECKED_PAGES, ids=lambda p: p.name)
def test_commands_name_real_files_flags_and_keys(page: Path) -> None:
    cmds = commands(page)
    assert cmds
    problems = [p for tokens in cmds for p in check_command(tokens, f"{page.name}: {' '.join(tokens)[:80]}")]
    assert not problems, "\n".join(problems)


def test_readme_links_and_images_exist() -> None:
    text = README.read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [t.split("#", 1)[0] for t in targets if "://" not in t and not t.startswith("#")]
    assert "docs/samples_mnist_cgan.png" in local
    missing = [t for t in local if not (REPO / t).exists()]
    assert not missing, f"README.md links to missing files: {missing}"
    for target in targets:
        page, _, anchor = target.partition("#")
        if anchor and page.endswith(".md") and "://" not in page:
            headings = re.findall(r"^#+ (.+)$", (REPO / page).read_text(encoding="utf-8"), flags=re.M)
            slugs = {re.sub(r"[^\w\- ]", "", h.lower()).strip().replace(" ", "-") for h in headings}
            assert anchor in slugs, f"README.md links to {target}, but {page} has no heading #{anchor}"


def test_the_checker_catches_bad_commands() -> None:
    assert check_command(["distgan", "train", "--config", "configs/nope.yaml"], "x")
    assert check_command(["distgan", "sample", "--no-such-flag"], "x")
    assert check_command(["distgan", "bench", "speed"], "x")
    assert check_command(["distgan", "train", "--config", "configs/debug.yaml", "train.stepz=3"], "x")
    assert check_command(["sbatch", "launch/slurm/train.sbatch", "configs/debug.yaml", "train.stepz=3"], "x")
    assert not check_command(["distgan", "bench", "quality", "--config", "configs/debug.yaml", "--seeds", "0",
                              "train.steps=3"], "x")


def test_help_texts_name_every_subcommand_and_no_single_dataset() -> None:
    for name in ("bench", "sweep"):
        listed = COMMANDS[name][1]
        for sub in subcommands(parser_of(name)):
            assert f"{name} {sub}" in listed, f"`distgan --help` for {name} does not list `{name} {sub}`"
    for name, (_, text) in COMMANDS.items():
        if name != "prepare":  # prepare lists the sources, MNIST among them
            assert "mnist" not in text.lower(), f"`distgan {name}`'s help speaks of MNIST only: {text!r}"


def test_the_training_page_lists_every_resumable_key() -> None:
    from distgan.run.resume import RESUMABLE_KEYS

    text = (REPO / "docs" / "training.md").read_text(encoding="utf-8")
    missing = [k for k in RESUMABLE_KEYS if f"`{k}`" not in text]
    assert not missing, f"docs/training.md's list of keys that may change on resume lacks {missing}"
