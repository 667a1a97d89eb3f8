"""The command line: one parser, verbs and options in any order, one exit-code table.

Every verb and the mount are run for real (``python -m imagefs``) against
real images: partclone images made by the factory, damaged copies of them
for code 2, and an lzop image with the LZO libraries hidden for code 3.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import importlib

import pytest

from imagefs.cli import exitcodes, mount as mount_mod
from imagefs.cli.mountopts import OPTION_HELP, OWN_FLAGS, split_options
from imagefs.cli.verbs import VERBS, build_parser
from imagefs.config import OVERRIDE_KEYS
from imagefs.errors import ConfigError
from mount_helpers import IMAGEFS, imagefs_mounted, need_fuse, unmount
from realimages import need

# The module, not the function imagefs.cli re-exports under the same name.
cli_main = importlib.import_module("imagefs.cli.main")

OK, USAGE, IMAGE, ENV = (exitcodes.OK, exitcodes.USAGE, exitcodes.IMAGE,
                         exitcodes.ENVIRONMENT)


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(IMAGEFS + list(args), capture_output=True, text=True, timeout=300,
                          env=env, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def images(factory, tmp_path_factory) -> dict[str, Path]:
    """A good ext4 image (CRC32 checksums), a tree, and damaged copies."""
    good = factory.partclone("ext4")
    root = tmp_path_factory.mktemp("cli")
    tree = root / "tree"
    tree.mkdir()
    os.link(good.path, tree / "sda1.ext4-ptcl-img")
    data = good.path.read_bytes()
    truncated = root / "truncated.img"
    truncated.write_bytes(data[:len(data) // 2])
    badsum = bytearray(data)
    badsum[len(data) // 2] ^= 0xFF          # inside the data area: a block's CRC fails
    bad = root / "badsum.img"
    bad.write_bytes(bytes(badsum))
    broken_tree = root / "broken"
    broken_tree.mkdir()
    os.link(truncated, broken_tree / "half.img")
    head = bytearray(data[:1 << 20])
    head[40] ^= 0xFF                          # the header CRC fails: a broken image
    (broken_tree / "badcrc.img").write_bytes(bytes(head))
    notes = root / "notes.txt"
    notes.write_text("not an image\n")
    need("lzop")
    lzo = root / "sda2.ext4-ptcl-img.lzo"
    with open(good.path, "rb") as src, open(lzo, "wb") as dst:
        subprocess.run(["lzop", "-c", "-3"], stdin=src, stdout=dst, check=True)
    return {"good": good.path, "tree": tree, "truncated": truncated, "badsum": bad,
            "broken": broken_tree, "notes": notes, "lzo": lzo, "root": root}


# ------------------------------------------------------------ the dispatcher

@pytest.mark.parametrize("argv, verb, rest", [
    (["-vv", "info", "F"], "info", ["-vv", "F"]),
    (["info", "F", "-v"], "info", ["F", "-v"]),
    (["SRC", "-f", "MNT"], "mount", ["SRC", "-f", "MNT"]),
    (["-o", "info", "SRC", "MNT"], "mount", ["-o", "info", "SRC", "MNT"]),
    (["-c", "cfg.yaml", "ls"], "ls", ["-c", "cfg.yaml"]),
    (["--index-dir", "/x", "index", "--prune"], "index", ["--index-dir", "/x", "--prune"]),
    (["-oro", "ls", "T"], "ls", ["-oro", "T"]),
    (["--", "info", "MNT"], "info", ["--", "MNT"]),
])
def test_the_first_argument_picks_the_verb(argv, verb, rest):
    chosen, args = cli_main.choose(argv)
    assert chosen.name == verb and args == rest


def test_options_and_arguments_in_any_order(tmp_path):
    args = cli_main.parse(*cli_main.choose(["SRC", "-f", "MNT", "-o", "cache_size=1M", "-vv"]))
    assert args.paths == ["SRC", "MNT"] and args.foreground and args.verbose == 2
    args = cli_main.parse(*cli_main.choose(["-q", "index", "--prune", "TREE", "-o", "x=1"]))
    assert args.source == "TREE" and args.prune and args.quiet and args.options == ["x=1"]


def test_verbose_before_the_verb_reaches_it(images):
    proc = _run("-vv", "info", str(images["notes"]))
    assert proc.returncode == IMAGE
    assert "Traceback" in proc.stderr            # -vv: the details, then the one line
    assert proc.stderr.strip().splitlines()[-1].startswith("imagefs: ")


def test_source_then_option_then_mountpoint(images, tmp_path):
    need_fuse()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen(IMAGEFS + [str(images["tree"]), "-f", str(mnt)],
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        from mount_helpers import wait_until
        wait_until(lambda: os.path.ismount(mnt) or proc.poll() is not None, what="the mount")
        assert os.path.ismount(mnt), proc.stderr.read().decode() if proc.stderr else ""
        assert "sda1.ext4-ptcl-img.info" in os.listdir(mnt)
    finally:
        unmount(mnt)
        proc.wait(timeout=30)


@pytest.mark.parametrize("typo, verb", [("inf", "info"), ("verfy", "verify"),
                                        ("indx", "index"), ("lss", "ls")])
def test_a_mistyped_verb_is_named(typo, verb, tmp_path):
    proc = subprocess.run(IMAGEFS + [typo, "x"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == USAGE
    assert proc.stderr == f"imagefs: unknown command {typo}; did you mean {verb}?\n"


def test_an_existing_path_named_like_a_typo_is_mounted(tmp_path):
    (tmp_path / "inf").mkdir()
    proc = subprocess.run(IMAGEFS + ["inf", "nope"], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == USAGE and "mount point does not exist" in proc.stderr


def test_mount_helper_form_is_unchanged():
    """mount.fuse3 runs `imagefs SRC MNT -o OPTS`: the mount verb, options intact."""
    verb, rest = cli_main.choose(["/srv/backups", "/mnt/images", "-o", "ro,allow_other,nofail"])
    args = cli_main.parse(verb, rest)
    assert verb.name == "mount" and args.paths == ["/srv/backups", "/mnt/images"]
    assert args.options == ["ro,allow_other,nofail"]


# ----------------------------------------------------------------- the help

def test_help_is_clean_and_lists_every_option_key():
    proc = _run("--help")
    assert proc.returncode == OK
    assert "usage: usage:" not in proc.stdout and proc.stdout.startswith("usage: imagefs ")
    keys = " ".join(key for key, _ in OPTION_HELP)
    for key in sorted(OVERRIDE_KEYS | OWN_FLAGS | {"config", "verify"}):
        assert key in keys, f"-o {key} is not documented"
        assert key in proc.stdout, f"--help does not list -o {key}"
    for verb in VERBS:
        assert f"  {verb.name} " in proc.stdout
    for status, _ in exitcodes.TABLE:
        assert f"  {status} " in proc.stdout


@pytest.mark.parametrize("verb", [v.name for v in VERBS if v.name != "mount"])
def test_each_verb_has_its_help(verb):
    proc = _run(verb, "--help")
    assert proc.returncode == OK and proc.stdout.startswith(f"usage: imagefs {verb}")
    assert "exit status:" in proc.stdout


def test_man_page_and_completion_are_current_and_render():
    from imagefs.cli.docs import bash_completion, man_page
    repo = Path(__file__).resolve().parent.parent
    assert (repo / "man" / "imagefs.1").read_text() == man_page(), \
        "man/imagefs.1 is stale: python -m imagefs.cli.docs man > man/imagefs.1"
    assert (repo / "contrib" / "bash-completion" / "imagefs").read_text() == \
        bash_completion(), "regenerate: python -m imagefs.cli.docs bash > " \
        "contrib/bash-completion/imagefs"
    need("groff")
    proc = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z",
                           str(repo / "man" / "imagefs.1")], capture_output=True, text=True)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    text = subprocess.run(["groff", "-man", "-Tutf8", "-P-cbou",
                           str(repo / "man" / "imagefs.1")], capture_output=True, text=True).stdout
    for verb in VERBS:
        assert verb.name in text
    assert "EXIT STATUS" in text and "index_max" in text


@pytest.mark.parametrize("line, expected", [
    ("imagefs i", {"info", "index"}),
    ("imagefs -vv ve", {"verify", "version"}),
    ("imagefs index --p", {"--prune"}),
    ("imagefs SRC MNT -o cache_s", {"cache_size="}),
])
def test_bash_completion(line, expected):
    need("bash")
    repo = Path(__file__).resolve().parent.parent
    words = line.split(" ")
    script = (f"source {repo / 'contrib' / 'bash-completion' / 'imagefs'}\n"
              f"COMP_WORDS=({' '.join(words)}); COMP_CWORD={len(words) - 1}\n"
              "_imagefs; printf '%s\\n' \"${COMPREPLY[@]}\"\n")
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd="/")
    assert expected <= set(out.stdout.split()), out.stdout + out.stderr


# ----------------------------------------------------- booleans in -o lists

@pytest.mark.parametrize("value, on", [("yes", True), ("no", False), ("true", True),
                                       ("false", False), ("1", True), ("0", False),
                                       ("on", True), ("off", False), ("", True)])
def test_boolean_options_take_every_spelling(value, on, tmp_path):
    from imagefs.config import Settings, apply_overrides
    text = "allow_other" + (f"={value}" if value else "")
    settings = apply_overrides(Settings(), split_options([text]).own)
    assert settings.allow_other is on
    flags = split_options([f"nonempty={value}" if value else "nonempty"]).flags
    assert ("nonempty" in flags) is on


def test_a_bad_boolean_is_refused_in_one_line(images, tmp_path):
    with pytest.raises(ConfigError, match="expected yes or no"):
        split_options(["nonempty=maybe"])
    (tmp_path / "mnt").mkdir()
    proc = _run(str(images["tree"]), str(tmp_path / "mnt"), "-o", "allow_other=perhaps")
    assert proc.returncode == USAGE
    assert proc.stderr == ("imagefs: -o allow_other: expected yes or no (also true/false, "
                           "on/off, 1/0), got 'perhaps'\n")


@pytest.mark.parametrize("value", ["no", "false", "0", "off"])
def test_allow_other_no_mounts_without_allow_other(images, tmp_path, value):
    with imagefs_mounted(images["tree"], tmp_path / "mnt", "-o", f"allow_other={value}") as m:
        options = _mount_options(m)
        assert "allow_other" not in options, options
    with imagefs_mounted(images["tree"], tmp_path / "mnt2", "-o", "allow_other=yes") as m:
        assert "allow_other" in _mount_options(m)


def _mount_options(mnt: Path) -> str:
    with open("/proc/self/mounts", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if fields[1] == str(mnt):
                return fields[3]
    raise AssertionError(f"{mnt} is not mounted")


# ------------------------------------------------------ the exit-code table

@pytest.mark.parametrize("args, status", [
    (["info", "{good}"], OK),
    (["info"], USAGE),
    (["info", "{good}", "--no-such-option"], USAGE),
    (["info", "{notes}"], IMAGE),
    (["info", "{truncated}"], IMAGE),
    (["info", "{root}/gone.img"], IMAGE),
    (["verify", "{good}"], OK),
    (["verify"], USAGE),
    (["verify", "{badsum}"], IMAGE),
    (["verify", "{truncated}"], IMAGE),
    (["ls", "{tree}"], OK),
    (["ls"], USAGE),
    (["ls", "{broken}"], IMAGE),
    (["ls", "{root}/gone"], IMAGE),
    (["index", "{tree}"], OK),
    (["index", "{tree}", "-o", "max_read=4096"], USAGE),
    (["index", "{broken}"], IMAGE),
    (["index", "--prune", "-q"], OK),
    (["files", "{good}"], OK),
    (["files"], USAGE),
    (["files", "{notes}"], IMAGE),
    (["extract", "{good}", "/docs/numbers.txt", "-C", "{root}/out"], OK),
    (["extract", "-C", "{root}/out2", "{good}", "/no/such/file"], IMAGE),
    (["version"], OK),
    (["version", "extra"], USAGE),
    (["{tree}"], USAGE),
    (["{tree}", "{root}/mnt", "extra"], USAGE),
    (["{root}/gone", "{root}/mnt"], IMAGE),
    (["{tree}", "{root}/no-such-mountpoint"], USAGE),
    (["{tree}", "{root}/mnt", "-o", "cache_size=lots"], USAGE),
])
def test_exit_codes(images, tmp_path, args, status):
    (images["root"] / "mnt").mkdir(exist_ok=True)
    argv = [a.format(**{k: str(v) for k, v in images.items()}) for a in args]
    proc = _run(*argv, "--index-dir", str(tmp_path / "idx"))
    assert proc.returncode == status, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    if status != OK:
        # Either one error line, or the verb's own report says what is wrong.
        said = [ln for ln in proc.stderr.splitlines() if ln.startswith("imagefs")]
        reported = any(w in proc.stdout for w in ("DAMAGED", "BROKEN", "skipped", "FAILED"))
        assert len(said) == 1 or reported, proc.stdout + proc.stderr


def test_exit_code_of_a_good_mount(images, tmp_path):
    with imagefs_mounted(images["tree"], tmp_path / "mnt"):
        pass                                   # imagefs_mounted asserts status 0


def test_mount_without_fuse_is_an_environment_error(images, tmp_path, monkeypatch, capsys):
    (tmp_path / "mnt").mkdir()
    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists",
                        lambda p: False if p == "/dev/fuse" else real_exists(p))
    assert cli_main.main([str(images["tree"]), str(tmp_path / "mnt")]) == ENV
    assert "apt-get install fuse3" in capsys.readouterr().err


def test_allow_other_refused_is_an_environment_error(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(os, "access", lambda *a, **k: True)
    monkeypatch.setattr(mount_mod, "_user_allow_other", lambda: False)
    with pytest.raises(mount_mod.MountError) as info:
        mount_mod.check_fuse(True)
    assert exitcodes.code_for(info.value) == ENV


def test_unknown_libfuse_option_is_a_usage_error(images, tmp_path):
    need_fuse()
    (tmp_path / "mnt").mkdir()
    try:
        proc = _run(str(images["tree"]), str(tmp_path / "mnt"), "-o", "no_such_fuse_option")
        assert proc.returncode == USAGE, proc.stderr
        assert "no_such_fuse_option" in proc.stderr
    finally:
        unmount(tmp_path / "mnt")


def test_missing_lzo_library_names_the_package_and_is_an_environment_error(images, tmp_path):
    """lzop without lzallright and python-lzo: exit 3, one line naming the package."""
    hide = tmp_path / "hide"
    hide.mkdir()
    for name in ("lzallright", "lzo"):
        (hide / f"{name}.py").write_text("raise ImportError('hidden by the test')\n")
    env = dict(os.environ, PYTHONPATH=f"{hide}:{os.environ.get('PYTHONPATH', '')}")
    proc = _run("info", str(images["lzo"]), "--index-dir", str(tmp_path / "idx"), env=env)
    assert proc.returncode == ENV, proc.stderr
    assert proc.stderr.count("\n") == 1 and "pip install lzallright" in proc.stderr
    proc = _run("ls", str(images["lzo"].parent), "--index-dir", str(tmp_path / "i2"), env=env)
    assert "sda2.ext4-ptcl-img" in proc.stdout and "pip install lzallright" in proc.stdout


def test_lzop_image_reads_with_the_installed_library(images, tmp_path):
    import imagefs
    with imagefs.open(images["lzo"], index_dir=str(tmp_path / "idx")) as lzo, \
            imagefs.open(images["good"], index_dir=str(tmp_path / "idx")) as plain:
        assert lzo.size == plain.size
        for off in (0, lzo.size // 3, lzo.size - 4096):
            assert lzo.pread(off, 4096) == plain.pread(off, 4096)


def test_version_names_the_libraries_that_decode():
    out = _run("version").stdout
    assert "libzstd" in out and ("lzo lzallright" in out or "lzo python-lzo" in out)


def test_parsers_build_for_every_verb():
    for verb in VERBS:
        assert build_parser(verb).prog.startswith("imagefs")


def test_no_arguments_is_a_usage_error():
    proc = _run()
    assert proc.returncode == USAGE and "see imagefs --help" in proc.stderr


def test_python_dash_m_and_the_entry_point_agree():
    proc = subprocess.run([sys.executable, "-c", "import imagefs.cli; "
                           "raise SystemExit(imagefs.cli.main(['version']))"],
                          capture_output=True, text=True)
    assert proc.returncode == OK and proc.stdout.startswith("imagefs ")
