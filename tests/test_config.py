"""Configuration: YAML into typed settings, precise errors, -o overrides."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from imagefs.config import (DEFAULT_CACHE_SIZE, Settings, apply_overrides, load_config,
                            parse_size, parse_umask)
from imagefs.errors import ConfigError
from imagefs.cli.mount import split_options

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.yaml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "imagefs.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_full_file(tmp_path):
    (tmp_path / "backups").mkdir()
    path = _write(tmp_path, """
        sources:
          - path: backups
            include: ["*.img", "*-ptcl-img*"]
            exclude: "old/*"
          - path: /srv/laptop/sda1.ext4-ptcl-img.zst.aa
            name: laptop-root
        cache_size: 1G
        index_dir: cache
        max_open_files: 128
        mount:
          allow_other: yes
          uid: 1000
          gid: 100
          umask: "027"
        codecs:
          threads: 4
        logging:
          level: info
          file: imagefs.log
    """)
    s = load_config(str(path))
    assert s.sources[0].path == str(tmp_path / "backups")
    assert s.sources[0].include == ["*.img", "*-ptcl-img*"]
    assert s.sources[0].exclude == ["old/*"]
    assert s.sources[1].name == "laptop-root"
    assert s.cache_size == 1 << 30
    assert s.index_dir == str(tmp_path / "cache")
    assert (s.allow_other, s.uid, s.gid, s.umask) == (True, 1000, 100, 0o27)
    assert s.codec_threads == 4 and s.max_open_files == 128
    assert s.log_level == "info" and s.log_file == str(tmp_path / "imagefs.log")


def test_empty_file_gives_defaults(tmp_path):
    s = load_config(str(_write(tmp_path, "")))
    assert s.cache_size == DEFAULT_CACHE_SIZE and s.sources == []


@pytest.mark.parametrize("text, where", [
    ("cache_sise: 1G\n", "cache_sise: unknown key"),
    ("mount:\n  allow_others: true\n", "mount.allow_others: unknown key"),
    ("sources:\n  - path: /x\n    includes: ['*']\n", "sources[0].includes: unknown key"),
    ("sources:\n  - name: x\n", "sources[0].path"),
    ("cache_size: lots\n", "cache_size: expected a size"),
    ("mount:\n  uid: -1\n", "mount.uid: expected a number >= 0"),
    ("mount:\n  umask: '999'\n", "mount.umask: expected an octal umask"),
    ("logging:\n  level: loud\n", "logging.level: expected one of"),
    ("sources: /srv\n", "sources: expected a list"),
    ("- just\n- a list\n", "expected a mapping"),
    ("mount: [1, 2\n", "not valid YAML (line"),
])
def test_errors_name_file_key_and_expectation(tmp_path, text, where):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_config(str(path))
    message = str(exc.value)
    assert message.startswith(str(path) + ": "), message
    assert where in message, message


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_config(str(tmp_path / "nope.yaml"))


def test_command_line_overrides_file(tmp_path):
    s = load_config(str(_write(tmp_path, "cache_size: 1G\nmount:\n  uid: 5\n")))
    apply_overrides(s, {"cache_size": "64M", "uid": "7", "umask": "022", "allow_other": ""})
    assert (s.cache_size, s.uid, s.umask, s.allow_other) == (64 << 20, 7, 0o22, True)
    with pytest.raises(ConfigError, match="-o cache_size"):
        apply_overrides(Settings(), {"cache_size": "huge"})


def test_sizes_and_umasks():
    assert parse_size("256M") == 256 << 20
    assert parse_size("1.5GiB") == 3 << 29
    assert parse_size(4096) == 4096
    assert parse_size("0") == 0
    assert parse_umask("022") == 0o22 and parse_umask(18) == 18 and parse_umask("0o77") == 0o77


def test_option_split():
    opts = split_options(["ro,allow_other,nofail,noauto,_netdev,x-systemd.automount,comment=a b",
                          "config=/etc/imagefs.yaml,cache_size=1G,uid=1000,max_read=131072,"
                          "user,users,defaults,rw,nonempty,fsname=back\\,ups"])
    assert opts.config == "/etc/imagefs.yaml"
    assert opts.own == {"allow_other": "", "cache_size": "1G", "uid": "1000"}
    # allow_other is a setting (its value decides); the mount plan passes it to libfuse.
    assert opts.fuse == {"max_read": "131072", "fsname": "back,ups"}
    assert "nonempty" in opts.flags
    assert {"ro", "nofail", "noauto", "_netdev", "x-systemd.automount", "comment=a b",
            "user", "users", "defaults", "rw"} <= set(opts.dropped)


def test_example_config_is_valid():
    """config.example.yaml documents every key and loads without error."""
    s = load_config(str(EXAMPLE))
    text = EXAMPLE.read_text()
    for key in ("sources", "path", "name", "include", "exclude", "cache_size", "index_dir",
                "max_open_files", "mount", "allow_other", "uid", "gid", "umask", "codecs",
                "threads", "logging", "level", "file"):
        assert f"{key}:" in text, key
    assert s.sources, "the example lists sources"
