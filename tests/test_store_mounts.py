"""SQLite on a network filesystem is refused when several machines may use it (an artifact store
is in use): its file locks and WAL do not hold across machines. The mount is looked up in
/proc/mounts' text, given here as several machines would show it."""

from __future__ import annotations

from pathlib import Path

import pytest

from sweeper import store
from sweeper.errors import StorageError

MOUNTS = """\
/dev/sda1 / ext4 rw,relatime 0 0
tmpfs /tmp tmpfs rw,nosuid,nodev 0 0
fileserver:/export/team /mnt/team nfs4 rw,relatime,vers=4.2 0 0
//nas/share /mnt/nas cifs rw,relatime 0 0
me@host:/data /mnt/sshfs fuse.sshfs rw,nosuid,nodev 0 0
/dev/sdb1 /mnt/team/local\\040disk ext4 rw 0 0
"""


@pytest.mark.parametrize("path, kind", [
    ("/home/me/studies.db", "ext4"), ("/tmp/x/studies.db", "tmpfs"), ("/mnt/team/a/studies.db", "nfs4"),
    ("/mnt/nas/studies.db", "cifs"), ("/mnt/sshfs/studies.db", "fuse.sshfs"),
    ("/mnt/team/local disk/studies.db", "ext4"),  # a local disk mounted inside the NFS tree
    ("/mnt/teammate/studies.db", "ext4"),  # a sibling whose name starts alike is not under it
])
def test_the_mount_holding_a_path_is_the_deepest_one(path, kind):
    assert store.mount_type(Path(path), MOUNTS) == kind


@pytest.mark.parametrize("path", ["/mnt/team/a/studies.db", "/mnt/nas/studies.db", "/mnt/sshfs/s.db"])
def test_sqlite_on_a_network_filesystem_is_refused_with_an_artifact_store(path):
    with pytest.raises(StorageError, match="network filesystem .*use PostgreSQL"):
        store.check_not_shared_over_network(f"sqlite:///{path}", shared=True, mounts=MOUNTS)


def test_local_sqlite_one_machine_and_postgresql_are_accepted():
    store.check_not_shared_over_network("sqlite:////home/me/studies.db", shared=True, mounts=MOUNTS)
    store.check_not_shared_over_network("sqlite:////mnt/team/studies.db", shared=False, mounts=MOUNTS)
    store.check_not_shared_over_network("postgresql://u@db/x", shared=True, mounts=MOUNTS)
