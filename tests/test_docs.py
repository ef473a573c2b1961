"""Every code block of README.md and docs/*.md works as written (issue 20 item 5).

Blocks are found by their fences, so a block added later is picked up with no change here:
* ```python blocks run, each in a fresh namespace of small stand-ins (`stand_ins`) for what a block
  leaves to the reader: trained networks (cheap EDM-convention denoisers), images, seeds. A block
  that needs a name no stand-in provides fails with a NameError until one is added below.
* ```bash blocks are checked without running them (they train, download or need a GPU): each
  `python -m M ...`, `python FILE ...` and `torchrun ... -m M -- ...` command is parsed by that
  command's own argparse parser, stopped right after parsing (so every documented option and value
  must parse; `--help` must exit 0); `make` targets and variables must exist in the Makefile; `pip`
  commands must parse with pip's own parser and name extras pyproject.toml declares; `pytest`
  options must be in `pytest --help`; `VAR=value` prefixes must be variables the code reads. A
  command of any other kind fails, naming itself, until a check for it is added here. A lone `...`
  argument is the docs' elision of further options and is dropped.
* Unlabelled blocks fail (label non-code `text`); any other language fails too.
* "SPEC n" anywhere in the repository names a section of docs/SPEC.md, and nothing cites a file
  outside the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import runpy
import shlex
import subprocess
import sys
import warnings

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + sorted(os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs"))
                              if f.endswith(".md"))
FENCE = re.compile(r"^```(\S*)\s*$")


def code_blocks():
    """(file:line, language, text) of every fenced block of the docs."""
    out = []
    for name in DOCS:
        with open(os.path.join(ROOT, name), encoding="utf-8") as f:
            lines = f.read().splitlines()
        i = 0
        while i < len(lines):
            m = FENCE.match(lines[i])
            if m is None:
                i += 1
                continue
            start, lang = i + 1, m.group(1)
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                i += 1
            if i == len(lines):
                raise AssertionError(f"{name}:{start}: the code block is never closed")
            out.append((f"{name}:{start}", lang, "\n".join(lines[start:i]) + "\n"))
            i += 1
    return out


BLOCKS = code_blocks()
PYTHON = [b for b in BLOCKS if b[1] in ("python", "py")]
SHELL = [b for b in BLOCKS if b[1] in ("bash", "sh", "shell")]


def test_every_block_is_checked():
    assert PYTHON and SHELL  # the extraction finds the README's blocks
    other = [(where, lang) for where, lang, _ in BLOCKS if lang not in ("python", "py", "bash", "sh", "shell", "text")]
    assert not other, f"code blocks in no checked language (label non-code blocks `text`): {other}"


# ---------------------------------------------------------------------------------- python blocks


class StandInDenoiser:
    """A trained EDMPrecond as the docs use one, at no cost: EDM's preconditioning (the one formula,
    relaydiff.networks.edm_coefficients) around F = tanh, in x's dtype, the labels ignored."""

    def __init__(self, img_resolution: int, label_dim: int = 10):
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, 3, label_dim
        self.sigma_min, self.sigma_max, self.sigma_data = 0.002, 80.0, 0.5

    def model(self, x, c_noise, class_labels=None):  # the raw network F(c_in x; c_noise; labels)
        return torch.tanh(x)

    def __call__(self, x, sigma, class_labels=None, **kwargs):
        from relaydiff.networks import edm_coefficients

        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1, 1, 1)
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, self.sigma_data)
        return (c_skip * x + c_out * self.model(c_in * x, c_noise, class_labels)).to(x.dtype)


def stand_ins() -> dict:
    """What the docs' python blocks take as given, small: two images, two cheap networks (64 px
    for stage 1, 256 px for the relay stage), the README's schedules (stage 1 shortened)."""
    import relay_kernels as rk
    from relaydiff import sampling

    gen = torch.Generator().manual_seed(0)
    B = 2
    net1, net2 = StandInDenoiser(64), StandInDenoiser(256)
    labels = torch.tensor([1, 7])
    return dict(
        torch=torch, rk=rk, sampling=sampling, B=B, device=torch.device("cpu"),
        seeds=torch.arange(B), labels=labels, extra={"class_labels": labels}, cfg1=1.5, cfg2=1.5,
        net=net2, net1=net1, net2=net2,
        x_low=torch.rand(B, 3, 16, 16, generator=gen) * 2 - 1,  # relayed to 64 px by up_scale=4
        x_cur=torch.randn(B, 3, 32, 32, generator=gen),
        sigmas1=sampling.get_sigmas_karras(16, 0.002, 80.0, 7.0),
        sigmas=sampling.get_sigmas_relay(40, 0.008, 80.0, 7.0, truncation_sigma=0.9),
    )


@pytest.mark.parametrize("where,lang,code", PYTHON, ids=[b[0] for b in PYTHON])
def test_python_block_runs(where, lang, code, one_thread):
    namespace = stand_ins()
    with torch.no_grad():
        exec(compile(code, where, "exec"), namespace)


def test_the_stand_ins_are_honest():
    """A block that runs on the stand-ins runs on the real thing: the stand-in follows EDM's
    D = c_skip x + c_out F, so at a large sigma it returns about F (not x), at a small one about x."""
    net = StandInDenoiser(8)
    x = torch.full((1, 3, 8, 8), 2.0)
    assert torch.allclose(net(x, torch.tensor([1e-3])), x, atol=1e-2)
    big = net(x, torch.tensor([80.0]))
    assert (big - 0.5 * torch.tanh(x / 80.0)).abs().max() < 1e-2


# ---------------------------------------------------------------------------------- shell blocks


class _Parsed(Exception):
    pass


def shell_commands(text: str) -> list[list[str]]:
    """The commands of a shell block: continuation lines joined, comments dropped, split at && ; |."""
    joined = text.replace("\\\n", " ")
    commands = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        current = []
        for w in words:
            if w in ("&&", "||", ";", "|"):
                commands.append(current)
                current = []
            else:
                current.append(w)
        commands.append(current)
    return [c for c in commands if c]


def _read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def check_env(name: str):
    sources = [_read("setup.py"), _read("Makefile"), _read(os.path.join("tests", "conftest.py"))]
    for pkg in ("relay_kernels", "relaydiff"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, pkg)):
            sources += [_read(os.path.join(dirpath, f)) for f in files if f.endswith(".py")]
    assert any(name in s for s in sources), f"the environment variable {name} is read nowhere in the code"


def check_cli(target: str, args: list[str], monkeypatch, capsys):
    """Run the command's own entry point with argparse stopped right after parsing."""
    args = [a for a in args if a != "..."]
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    with monkeypatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
        m.setattr(sys, "argv", [target, *args])
        m.chdir(ROOT)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module was imported before
                if target.endswith(".py"):
                    assert os.path.exists(os.path.join(ROOT, target)), f"no file {target}"
                    runpy.run_path(os.path.join(ROOT, target), run_name="__main__")
                else:
                    runpy.run_module(target, run_name="__main__", alter_sys=True)
        except _Parsed:
            return
        except SystemExit as exc:
            err = capsys.readouterr().err.strip()
            assert exc.code in (0, None), f"{target} {shlex.join(args)}: exit {exc.code}: {err}"
            return
    raise AssertionError(f"{target} returned without parsing its arguments with argparse")


def pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]


def check_pip(args: list[str]):
    assert args, "pip without a command"
    # pip's own parser, in a child: importing pip's internals loads the stdlib distutils, which then
    # breaks setuptools' distutils shim for the rest of the process (torch.compile's C++ build imports it).
    code = ("import json, sys; from pip._internal.commands import create_command; "
            "o, r = create_command(sys.argv[1]).parse_args(sys.argv[2:]); "
            "print(json.dumps({'rest': r, 'editables': list(getattr(o, 'editables', []) or [])}))")
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"pip {' '.join(args)}: {done.stderr.strip().splitlines()[-1:]}"
    parsed = json.loads(done.stdout.strip().splitlines()[-1])
    project = pyproject()
    for req in parsed["rest"] + parsed["editables"]:
        m = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", req)
        if m is not None:
            for extra in filter(None, (m.group(1) or "").split(",")):
                assert extra in project["optional-dependencies"], f"pip install: no extra [{extra}] in pyproject.toml"
        elif req.endswith(".tar.gz"):
            assert req == f"{project['name']}-{project['version']}.tar.gz", f"pip install {req}: not this sdist's name"


def check_make(args: list[str]):
    makefile = _read("Makefile")
    targets = set(re.findall(r"^([\w.-]+):", makefile, flags=re.M))
    variables = set(re.findall(r"^(\w+)\s*\?=", makefile, flags=re.M))
    for a in args:
        if "=" in a:
            assert a.split("=")[0] in variables, f"make: no variable {a.split('=')[0]} in the Makefile"
        else:
            assert a in targets, f"make: no target {a} in the Makefile"


def pytest_options(pytestconfig) -> set[str]:
    """The options of this pytest run with its plugins (pytest-benchmark's too): what `pytest --help` lists."""
    parser = pytestconfig._parser  # private, so checked: an empty set would pass nothing
    options = parser._anonymous.options + [o for group in parser._groups for o in group.options]
    names = {n for o in options for n in o.names()}
    assert "--maxfail" in names
    return names


def check_pytest(args: list[str], pytestconfig):
    names = pytest_options(pytestconfig)
    for a in args:
        if a.startswith("--"):
            assert a.split("=")[0] in names, f"pytest: no option {a}"
        elif a.startswith("-"):
            assert a[:2] in names, f"pytest: no option {a}"
        else:
            assert os.path.exists(os.path.join(ROOT, a)), f"pytest: no path {a}"


def check_command(argv: list[str], monkeypatch, capsys, pytestconfig):
    if argv and all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S*", a) for a in argv):
        return None  # a shell variable for the lines below (N=32), no command
    while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0]):
        check_env(argv[0].split("=")[0])
        argv = argv[1:]
    cmd, args = argv[0], argv[1:]
    if cmd in ("python", "python3"):
        if args[:1] != ["-m"]:
            return check_cli(args[0], args[1:], monkeypatch, capsys)
        if args[1] not in ("pip", "pytest"):
            return check_cli(args[1], args[2:], monkeypatch, capsys)
        cmd, args = args[1], args[2:]
    if cmd == "pip":
        return check_pip(args)
    if cmd == "pytest":
        return check_pytest(args, pytestconfig)
    if cmd == "make":
        return check_make(args)
    if cmd == "torchrun":
        from torch.distributed.run import get_args_parser

        ns = get_args_parser().parse_args(args)
        assert ns.module or ns.training_script.endswith(".py"), f"torchrun: {ns.training_script} is no script"
        return check_cli(ns.training_script, ns.training_script_args, monkeypatch, capsys)
    if cmd in ("mkdir", "curl"):  # plain shell: downloads are documented, never run here
        return None
    if cmd == "bash":
        assert os.path.exists(os.path.join(ROOT, args[0])), f"bash: no script {args[0]}"
        return None
    raise AssertionError(f"no check for the command {cmd!r}: add one to tests/test_docs.py")


@pytest.mark.parametrize("where,lang,code", SHELL, ids=[b[0] for b in SHELL])
def test_shell_block_commands_parse(where, lang, code, monkeypatch, capsys, pytestconfig):
    for argv in shell_commands(code):
        try:
            check_command(argv, monkeypatch, capsys, pytestconfig)
        except AssertionError as exc:
            raise AssertionError(f"{where}: {shlex.join(argv)}: {exc}") from None


def test_the_shell_check_can_fail(monkeypatch, capsys, pytestconfig):
    """An option a command does not have, a missing extra or Make target, an unknown tool: each fails."""
    for bad in ("python -m relaydiff.train --no-such-option 1", "python -m relaydiff.sample --outdir o --stages 3",
                "torchrun --nproc_per_node=2 -m relaydiff.train -- --steps x",
                "pip install --no-build-isolation '.[nosuchextra]'", "pytest tests --no-such-option",
                "make no-such-target", "frobnicate --now", "NO_SUCH_VARIABLE_XYZ=1 make test"):
        with pytest.raises(AssertionError):
            for argv in shell_commands(bad):
                check_command(argv, monkeypatch, capsys, pytestconfig)


# ---------------------------------------------------------------------------------- citations


def repo_text_files():
    for top in ("README.md", "RESULTS.md", "BENCHMARKS.md", "Makefile", "setup.py", "pyproject.toml", "docs",
                "relay_kernels", "relaydiff", "csrc", "tests", "benchmarks", "tools", ".ci"):
        path = os.path.join(ROOT, top)
        if os.path.isfile(path):
            yield top
        for dirpath, _, files in os.walk(path):
            for f in files:
                if f.endswith((".md", ".py", ".cpp", ".h", ".cu", ".sh", ".toml")) or f in ("run", "Makefile"):
                    yield os.path.relpath(os.path.join(dirpath, f), ROOT)


def test_spec_citations_name_sections_of_docs_spec():
    sections = set(re.findall(r"^## (\d+)\. ", _read("docs/SPEC.md"), flags=re.M))
    assert sections >= {str(n) for n in range(1, 9)}
    outside = "../" + "shared"  # split so this file does not cite it
    bad = []
    for path in repo_text_files():
        text = _read(path)
        bad += [f"{path}: SPEC {n}" for n in re.findall(r"\bSPEC(?: section)? (\d+)", text) if n not in sections]
        bad += [f"{path}: cites {outside}" for _ in range(text.count(outside))]
        if not path.startswith("docs" + os.sep):  # inside docs/ a relative link to the SPEC file is docs/SPEC.md
            bad += [f"{path}: a SPEC file without docs/" for _ in re.findall(r"(?<![\w/])SPEC\.md", text)]
    assert not bad, bad
