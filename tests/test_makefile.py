"""The Makefile: `make help` lists every target, `make clean` leaves no build output
behind, `make preview` accepts a service principal in the ARM_* variables without an
`az login`. The Pulumi CLI cannot run here: a stand-in records how it is called (its
contract: `pulumi stack select STACK` exits 0 for an existing stack, then `pulumi preview
--stack STACK`), and a stand-in `az` answers as a machine without a login does
(`az account show` exits 1: "Please run 'az login' to setup account.")."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAKEFILE = ROOT / "Makefile"


def targets() -> set[str]:
    found: set[str] = set()
    for line in MAKEFILE.read_text().splitlines():
        match = re.match(r"^([a-z][a-z -]*?)\s*:(?!=)", line)
        if match:
            found.update(match.group(1).split())
        if line.startswith(".PHONY:"):
            found.update(line.split(":", 1)[1].split())
    return found


def test_make_help_lists_every_target() -> None:
    out = subprocess.run(["make", "--no-print-directory", "help"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    listed = {word for line in out.splitlines() for word in line.split("  ")[0].split()[1:]}
    assert targets() >= {"help", "setup", "test", "run", "bench", "lint", "up", "down", "migrate", "bundle",
                         "preview", "deploy", "clean"}
    assert targets() <= listed, targets() - listed


def test_make_clean_removes_bundles_and_build_metadata(tmp_path: Path) -> None:
    shutil.copy(MAKEFILE, tmp_path / "Makefile")
    made = [".bundle/wheels/x.whl", "build/lib/txmetrics/__init__.py", "txmetrics.egg-info/PKG-INFO",
            "functions/txmetrics.egg-info/PKG-INFO", "dist/function.zip", ".local/services.json",
            ".pytest_cache/v/x", "functions/txmetrics/__pycache__/x.pyc"]
    for name in [*made, "functions/txmetrics/kept.py", "docs/kept.md"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    result = subprocess.run(["make", "clean"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in made:
        assert not (tmp_path / name.split("/")[0]).exists() or not (tmp_path / name).exists(), name
    assert not (tmp_path / ".bundle").exists() and not (tmp_path / "build").exists()
    assert not list(tmp_path.glob("**/*.egg-info"))
    assert (tmp_path / "functions/txmetrics/kept.py").exists() and (tmp_path / "docs/kept.md").exists()


def test_make_s_up_on_a_fresh_clone_prints_only_the_exports(tmp_path: Path) -> None:
    """`eval "$(make -s up)"` on a fresh clone runs the setup first: npm ci's "added 453
    packages" on stdout was run by eval (`bash: added: command not found`). Stand-ins print
    what the real tools print on stdout (python -m venv, pip, npm ci) and `txmetrics up`
    prints its export lines; stdout must be those lines alone, the rest on stderr."""
    shutil.copy(MAKEFILE, tmp_path / "Makefile")
    for name in ("requirements-dev.txt", "functions/requirements.txt", "pyproject.toml", "package.json",
                 "package-lock.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {
        "python3.11": """#!/bin/bash
[ "$1" = -c ] && exit 0
[ "$1 $2" = "-m venv" ] || exit 1
mkdir -p "$3/bin"
printf '#!/bin/bash\\necho "Successfully installed txmetrics-0.1"\\n' > "$3/bin/pip"
printf '#!/bin/bash\\necho "export DATABASE_URL=postgresql://x"\\necho "export RAW_EVENTS_CONTAINER=raw-events"\\n' \\
  > "$3/bin/txmetrics"
chmod +x "$3/bin/pip" "$3/bin/txmetrics"
echo "venv created"
""",
        "npm": """#!/bin/bash
mkdir -p node_modules && touch node_modules/.package-lock.json
echo "added 453 packages in 3s"
""",
    }
    for tool, text in scripts.items():
        (bin_dir / tool).write_text(text)
        (bin_dir / tool).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "AZURE_STORAGE_CONNECTION_STRING"}
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    result = subprocess.run(["make", "-s", "up", f"PYTHON={bin_dir / 'python3.11'}"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == ["export DATABASE_URL=postgresql://x",
                                          "export RAW_EVENTS_CONTAINER=raw-events"], result.stdout
    assert "added 453 packages" in result.stderr and "Successfully installed" in result.stderr


@pytest.fixture
def fake_tools(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "pulumi.log"
    (bin_dir / "pulumi").write_text(f"""#!/bin/bash
echo "$* | AZURE_CLIENT_ID=$AZURE_CLIENT_ID AZURE_TENANT_ID=$AZURE_TENANT_ID" >> {log}
exit 0
""")
    (bin_dir / "az").write_text("#!/bin/bash\necho \"Please run 'az login' to setup account.\" >&2\nexit 1\n")
    for tool in ("pulumi", "az"):
        (bin_dir / tool).chmod(0o755)
    return bin_dir


def make_preview(fake_tools: Path, **arm: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARM_", "AZURE_CLIENT", "AZURE_TENANT"))}
    env.update(arm, PATH=f"{fake_tools}:{env['PATH']}")
    return subprocess.run(["make", "--no-print-directory", "preview", "STACK=dev"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


SERVICE_PRINCIPAL = {"ARM_CLIENT_ID": "11111111-2222-3333-4444-555555555555", "ARM_CLIENT_SECRET": "sp-secret",
                     "ARM_TENANT_ID": "66666666-7777-8888-9999-000000000000",
                     "ARM_SUBSCRIPTION_ID": "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"}


def test_make_preview_takes_a_service_principal_without_az_login(fake_tools: Path) -> None:
    result = make_preview(fake_tools, **SERVICE_PRINCIPAL)
    assert result.returncode == 0, result.stdout + result.stderr
    calls = (fake_tools.parent / "pulumi.log").read_text().splitlines()
    assert calls[0].startswith("stack select dev")
    assert calls[-1] == (f"preview --stack dev | AZURE_CLIENT_ID={SERVICE_PRINCIPAL['ARM_CLIENT_ID']} "
                         f"AZURE_TENANT_ID={SERVICE_PRINCIPAL['ARM_TENANT_ID']}")
    assert "sp-secret" not in result.stdout + result.stderr


def test_make_preview_says_what_credentials_are_missing(fake_tools: Path) -> None:
    none = make_preview(fake_tools)
    assert none.returncode != 0 and "run 'az login', or set ARM_CLIENT_ID" in none.stdout
    partial = make_preview(fake_tools, ARM_CLIENT_ID="x", ARM_CLIENT_SECRET="y")
    assert partial.returncode != 0
    assert "incomplete service principal: set also ARM_TENANT_ID ARM_SUBSCRIPTION_ID" in partial.stdout
    assert not (fake_tools.parent / "pulumi.log").exists() or "preview" not in (
        fake_tools.parent / "pulumi.log").read_text()
