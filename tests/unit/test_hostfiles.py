"""The hub's root-only files: a secret written whole or not at all, never through a link."""

from __future__ import annotations

import os
import stat

from vre.hostfiles import write_private


def test_write_private_replaces_atomically_root_only_and_never_through_a_link(tmp_path):
    path = tmp_path / "secrets" / "agent-tokens" / "lung"
    write_private(path, "first")
    assert path.read_text() == "first" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    inode = path.stat().st_ino
    write_private(path, "second")
    assert path.read_text() == "second" and path.stat().st_ino != inode   # a new file, renamed over
    # a link planted where the new file is written first is replaced, not followed
    target = tmp_path / "elsewhere"
    target.write_text("untouched")
    os.symlink(target, path.with_name(".lung.new"))
    write_private(path, "third")
    assert path.read_text() == "third" and target.read_text() == "untouched"
    assert not path.with_name(".lung.new").exists()
