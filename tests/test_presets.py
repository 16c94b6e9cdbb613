"""presets.py: the preset table and resolving names, hf:// ids and directories to model folders."""

import pytest

from minibloom.config import BloomConfig
from minibloom.errors import PresetNotFoundError
from minibloom.io import presets
from minibloom.io.presets import PRESETS, find_preset, resolve

# Parameter counts from keras-hub's bloom_presets.py metadata (tied head, vocabulary 250880).
KERAS_PARAMS = {
    "bloom_560m_multi": 559_214_592,
    "bloom_1.1b_multi": 1_065_314_304,
    "bloom_1.7b_multi": 1_722_408_960,
    "bloom_3b_multi": 3_002_557_440,
}


@pytest.fixture
def homes(tmp_path, monkeypatch):
    """Empty MINIBLOOM_HOME and HF hub cache, so the user's real caches never leak in."""
    home, hub = tmp_path / "home", tmp_path / "hub"
    home.mkdir()
    hub.mkdir()
    monkeypatch.setenv("MINIBLOOM_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    return home, hub


def _model_dir(path):
    path.mkdir(parents=True)
    (path / "config.json").write_text(
        BloomConfig(vocab_size=10, hidden_size=8, n_head=2).to_json_string()
    )
    return path


def test_table_names_ids_and_counts():
    expected = {
        f"{kind}_{size}_multi"
        for kind in ("bloom", "bloomz")
        for size in ("560m", "1.1b", "1.7b", "3b", "7b")
    }
    assert set(PRESETS) == expected
    for name, count in KERAS_PARAMS.items():
        assert PRESETS[name].params == count
        assert PRESETS[name.replace("bloom_", "bloomz_")].params == count
    assert PRESETS["bloom_7b_multi"].params == 7_069_016_064  # bloom-7b1 model card
    assert PRESETS["bloomz_7b_multi"].hf_id == "bigscience/bloomz-7b1"
    for p in PRESETS.values():
        assert p.config.vocab_size == 250880 and p.config.head_dim in (64, 80, 96, 128)
        assert p.description


def test_aliases():
    assert find_preset("bloom-7b1") is PRESETS["bloom_7b_multi"]
    assert find_preset("bigscience/bloomz-560m") is PRESETS["bloomz_560m_multi"]
    assert find_preset("bloom-7") is None


def test_directory(tmp_path, homes):
    d = _model_dir(tmp_path / "m")
    assert resolve(d) == d and resolve(str(d)) == d
    (tmp_path / "empty").mkdir()
    with pytest.raises(PresetNotFoundError, match="has no config.json"):
        resolve(tmp_path / "empty")
    with pytest.raises(PresetNotFoundError, match="no such model directory"):
        resolve(str(tmp_path / "nowhere"))


def test_preset_in_minibloom_home(homes):
    home, _ = homes
    d = _model_dir(home / "bloom-560m")  # the HF short name works as the folder name too
    assert resolve("bloom_560m_multi") == d
    own = _model_dir(home / "my-finetune")  # and a user's own model by its folder name
    assert resolve("my-finetune") == own


def test_preset_in_hf_hub_cache(homes):
    _, hub = homes
    repo = hub / "models--bigscience--bloomz-560m"
    _model_dir(repo / "snapshots" / "aaaa")
    main = _model_dir(repo / "snapshots" / "bbbb")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("bbbb\n")
    assert resolve("bloomz_560m_multi") == main
    assert resolve("bigscience/bloomz-560m") == main
    assert resolve("hf://bigscience/bloomz-560m") == main


def test_hf_home_fallback(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("MINIBLOOM_HOME", str(tmp_path / "home"))
    d = _model_dir(tmp_path / "hf" / "hub" / "models--bigscience--bloom-3b" / "snapshots" / "r1")
    assert resolve("bloom_3b_multi") == d


def test_missing_preset_says_how_to_get_it(homes):
    with pytest.raises(PresetNotFoundError) as e:
        resolve("bloom_1.1b_multi")
    msg = str(e.value)
    assert (
        "huggingface-cli download bigscience/bloom-1b1" in msg
        and "hf://bigscience/bloom-1b1" in msg
    )
    with pytest.raises(
        PresetNotFoundError, match="not a directory, a model in .*, or a known preset"
    ):
        resolve("no_such_model")


@pytest.mark.parametrize(
    "bad", ["hf://../etc", "hf://a/../b", "hf:///etc/passwd", "hf://a/b/c", "hf://a", "hf://.x/y"]
)
def test_hf_names_validated_before_file_system(homes, bad):
    with pytest.raises(PresetNotFoundError, match="expected hf://org/name"):
        resolve(bad)


@pytest.mark.parametrize("bad", ["../escape", "a/../../b", "..", "/definitely/not/here"])
def test_path_tricks_never_reach_model_dirs(homes, bad):
    home, _ = homes
    _model_dir(home.parent / "escape")  # would be found if `..` were joined to MINIBLOOM_HOME
    with pytest.raises(PresetNotFoundError):
        resolve(bad)


def test_hf_download_missing_or_failing(homes, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("huggingface_hub") is None:
        with pytest.raises(PresetNotFoundError, match="huggingface_hub is not installed"):
            resolve("hf://someone/tiny-bloom")
    else:  # HF_HUB_OFFLINE=1 (conftest): the download fails, and says so as a PresetNotFoundError
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        with pytest.raises(
            PresetNotFoundError, match="hf://someone/tiny-bloom: could not download"
        ):
            resolve("hf://someone/tiny-bloom")


def test_default_model_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(presets, "WEIGHTS_DIR", tmp_path / "weights")
    with pytest.raises(PresetNotFoundError, match="no default model"):
        presets.default_model_dir()
    (tmp_path / "weights" / "README").mkdir(parents=True)
    d = _model_dir(tmp_path / "weights" / "tiny-bloom")
    assert presets.default_model_dir() == d


def test_list_presets_marks_what_is_on_disk(homes, tmp_path, monkeypatch):
    home, _ = homes
    monkeypatch.setattr(presets, "WEIGHTS_DIR", tmp_path / "weights")
    d = _model_dir(home / "bloomz_3b_multi")
    rows = presets.list_presets()
    assert [r[0] for r in rows] == list(PRESETS)
    assert {r[0]: r[2] for r in rows}["bloomz_3b_multi"] == d
    assert sum(r[2] is not None for r in rows) == 1
    shipped = _model_dir(tmp_path / "weights" / "tiny")
    rows = presets.list_presets()
    assert rows[0][0] == "default" and rows[0][2] == shipped


def test_presets_command(homes, tmp_path, monkeypatch, capsys):
    from minibloom.cli import main

    home, _ = homes
    monkeypatch.setattr(presets, "WEIGHTS_DIR", tmp_path / "weights")
    shipped = _model_dir(tmp_path / "weights" / "tiny")
    d = _model_dir(home / "bloom_1.7b_multi")
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["default", str(shipped)]  # the shipped default comes first
    assert f"bloom_1.7b_multi     {d}" in lines
    assert "bloom_3b_multi       not on disk" in lines
