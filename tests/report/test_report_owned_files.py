"""The report replaces only the figures it wrote: other files in DIR/figures stay untouched."""

from __future__ import annotations

from pathlib import Path


def _build(out: Path, names: list[str]) -> None:
    from vlmflow.report.figures import Figures

    figures = Figures(out)
    for name in names:
        fig, ax = figures.plt.subplots()
        ax.plot([0, 1])
        figures.save(fig, name, name)
    figures.remove_stale()


def test_foreign_files_survive_and_own_stale_figures_go(tmp_path: Path) -> None:
    folder = tmp_path / "figures"
    folder.mkdir()
    foreign = folder / "my-notes.png"
    foreign.write_bytes(b"user's own picture")
    (folder / "draft.txt").write_text("mine")
    _build(tmp_path, ["fractions", "maps"])
    assert (folder / "fractions.png").is_file() and (folder / "maps.png").is_file()
    _build(tmp_path, ["fractions"])  # a run since removed: its figure goes
    assert not (folder / "maps.png").exists() and (folder / "fractions.png").is_file()
    assert foreign.read_bytes() == b"user's own picture"
    assert (folder / "draft.txt").read_text() == "mine"


def test_a_damaged_manifest_deletes_nothing(tmp_path: Path) -> None:
    from vlmflow.report.figures import MANIFEST

    _build(tmp_path, ["fractions"])
    (tmp_path / MANIFEST).write_text("{not json")
    _build(tmp_path, [])
    assert (tmp_path / "figures" / "fractions.png").is_file()
