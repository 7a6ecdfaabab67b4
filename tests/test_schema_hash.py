"""Model-file discovery and the schema hash (SPEC §6), checked against hashlib by hand."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from broker.models import SchemaDirError, model_files, schema_hash


def write(root: Path, files: dict[str, bytes]) -> None:
    for relpath, content in files.items():
        target = root / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)


def by_hand(ordered: list[tuple[str, bytes]]) -> str:
    """The SPEC §6 hash over files already in the expected order."""
    digest = hashlib.sha256()
    for relpath, content in ordered:
        digest.update(relpath.encode("utf-8") + b"\0" + content + b"\0")
    return digest.hexdigest()


def tree_hash(schema_dir: Path) -> str:
    return schema_hash((relpath, real.read_bytes()) for relpath, real in model_files(schema_dir))


BYTE_ORDER = [
    ("B.yml", b"cubes: []\n"),
    ("a-b.yml", b"cubes:\n  - name: ab\n"),
    ("a.yml", b"cubes:\n  - name: a\n"),
    ("a/b.yml", b"cubes:\n  - name: a_b\n"),
    ("sub/deep/items.js", b"cube(`items`, {});\n"),
    ("sub/x.yaml", b"views: []\n"),
    ("\u00e9t\u00e9.yml", b"cubes: []\n"),
]


def test_hash_matches_an_independent_computation(tmp_path: Path) -> None:
    write(tmp_path, dict(reversed(BYTE_ORDER)))

    assert [relpath for relpath, _ in model_files(tmp_path)] == [p for p, _ in BYTE_ORDER]
    assert tree_hash(tmp_path) == by_hand(BYTE_ORDER)


def test_order_is_utf8_bytes_not_path_components() -> None:
    """Component-wise order would put ``a/b.yml`` first; bytes put ``-`` < ``.`` < ``/``."""
    files = [("a/b.yml", b"1"), ("a.yml", b"2"), ("a-b.yml", b"3")]
    expected = by_hand([("a-b.yml", b"3"), ("a.yml", b"2"), ("a/b.yml", b"1")])

    assert schema_hash(files) == expected
    assert schema_hash(reversed(files)) == expected


def test_empty_folder_hashes_to_sha256_of_nothing(tmp_path: Path) -> None:
    assert tree_hash(tmp_path) == hashlib.sha256(b"").hexdigest()


def test_content_and_name_both_count(tmp_path: Path) -> None:
    assert schema_hash([("a.yml", b"x")]) != schema_hash([("a.yml", b"y")])
    assert schema_hash([("a.yml", b"x")]) != schema_hash([("b.yml", b"x")])
    assert schema_hash([("a.yml", b""), ("b.yml", b"x")]) != schema_hash([("a.yml", b"\0b.yml")])


def test_hidden_files_and_folders_are_skipped(tmp_path: Path) -> None:
    write(tmp_path, {"orders.yml": b"cubes: []\n"})
    before = tree_hash(tmp_path)
    write(
        tmp_path,
        {
            ".hidden.yml": b"x",
            ".git/config.yml": b"x",
            "sub/.swap.js": b"x",
            ".cache/deep/items.js": b"x",
        },
    )

    assert [p for p, _ in model_files(tmp_path)] == ["orders.yml"]
    assert tree_hash(tmp_path) == before == by_hand([("orders.yml", b"cubes: []\n")])


def test_other_extensions_are_skipped(tmp_path: Path) -> None:
    write(tmp_path, {"orders.yml": b"a", "items.js": b"b", "views.yaml": b"c"})
    write(
        tmp_path,
        {
            "README.md": b"x",
            "data.json": b"x",
            "orders.yml.bak": b"x",
            "ymlfile": b"x",
            "x.ts": b"x",
        },
    )
    (tmp_path / "folder.yml").mkdir()

    assert [p for p, _ in model_files(tmp_path)] == ["items.js", "orders.yml", "views.yaml"]


def test_configmap_mount_hashes_like_plain_files(tmp_path: Path) -> None:
    """The kubelet's layout: visible links -> ``..data/…``, ``..data`` -> hidden timestamp dir."""
    files = {"orders.yml": b"cubes: []\n", "sub/items.js": b"cube(`items`, {});\n"}
    plain = tmp_path / "plain"
    write(plain, files)
    mount = tmp_path / "mount"
    write(mount / "..2026_11_24_01_00_00.123", files)
    (mount / "..data").symlink_to("..2026_11_24_01_00_00.123/")
    (mount / "orders.yml").symlink_to("..data/orders.yml")
    (mount / "sub").symlink_to("..data/sub")

    assert [p for p, _ in model_files(mount)] == ["orders.yml", "sub/items.js"]
    assert tree_hash(mount) == tree_hash(plain)


def test_schema_dir_itself_may_be_a_link(tmp_path: Path) -> None:
    write(tmp_path / "real", {"orders.yml": b"x"})
    (tmp_path / "link").symlink_to("real")

    assert tree_hash(tmp_path / "link") == tree_hash(tmp_path / "real")


def test_links_inside_count_as_their_target_under_the_link_name(tmp_path: Path) -> None:
    write(tmp_path, {"orders.yml": b"o", "lib/shared.js": b"s"})
    (tmp_path / "alias.yml").symlink_to("orders.yml")
    (tmp_path / "more").symlink_to("lib")

    assert tree_hash(tmp_path) == by_hand(
        [
            ("alias.yml", b"o"),
            ("lib/shared.js", b"s"),
            ("more/shared.js", b"s"),
            ("orders.yml", b"o"),
        ]
    )


def test_dangling_link_inside_is_skipped(tmp_path: Path) -> None:
    """The kubelet leaves one for a moment when a ConfigMap key is removed."""
    write(tmp_path, {"orders.yml": b"o"})
    (tmp_path / "gone.yml").symlink_to("..data/gone.yml")

    assert [p for p, _ in model_files(tmp_path)] == ["orders.yml"]


@pytest.mark.parametrize("kind", ["file", "folder", "relative"])
def test_link_leaving_schema_dir_is_an_error(tmp_path: Path, kind: str) -> None:
    schema_dir = tmp_path / "models"
    write(schema_dir, {"orders.yml": b"o"})
    write(tmp_path / "outside", {"secret.yml": b"s"})
    if kind == "file":
        (schema_dir / "sub").mkdir()
        (schema_dir / "sub" / "evil.yml").symlink_to(tmp_path / "outside" / "secret.yml")
        relpath = "sub/evil.yml"
    elif kind == "folder":
        (schema_dir / "evil").symlink_to(tmp_path / "outside")
        relpath = "evil"
    else:
        (schema_dir / "evil.yml").symlink_to("../outside/secret.yml")
        relpath = "evil.yml"

    with pytest.raises(SchemaDirError) as info:
        model_files(schema_dir)
    assert info.value.relpath == relpath
    assert "outside" in info.value.reason


def test_link_to_a_non_model_file_outside_is_still_an_error(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "notes.txt").symlink_to("/etc/hostname")

    with pytest.raises(SchemaDirError, match=r"notes\.txt: symlink points outside"):
        model_files(tmp_path / "models")


def test_folder_link_loop_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, {"sub/orders.yml": b"o"})
    (tmp_path / "sub" / "again").symlink_to("..")

    with pytest.raises(SchemaDirError, match=r"sub/again: symlink loop"):
        model_files(tmp_path)


def test_self_referencing_link_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "self.yml").symlink_to("self.yml")

    with pytest.raises(SchemaDirError) as info:
        model_files(tmp_path)
    assert info.value.relpath == "self.yml"


def test_missing_schema_dir_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SchemaDirError, match="cannot resolve"):
        model_files(tmp_path / "nope")


@pytest.mark.skipif(os.name != "posix", reason="POSIX file names")
def test_name_that_is_not_utf8_is_an_error(tmp_path: Path) -> None:
    (tmp_path / os.fsdecode(b"bad\xff.yml")).write_bytes(b"x")

    with pytest.raises(SchemaDirError, match="not valid UTF-8"):
        model_files(tmp_path)
