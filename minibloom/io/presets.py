"""The BLOOM preset table and how a preset name or path becomes a model directory.

A preset is a released BLOOM checkpoint known by its keras-hub name (`bloom_560m_multi`, ...),
mapped to its Hugging Face repository id, size and parameter count. `resolve(name_or_path)` turns
what a user typed into a directory holding `config.json` + safetensors (+ `tokenizer.json`):

  1. `hf://org/name`: the HF hub cache, then (if the optional `huggingface_hub` package is
     installed) a download into that cache;
  2. an existing directory;
  3. `kaggle://keras/bloom/keras/<preset>[/<version>]` (keras-hub's handles): the kagglehub
     cache (`$KAGGLEHUB_CACHE`, else `~/.cache/kagglehub`) in kagglehub's layout
     `models/<owner>/<model>/<framework>/<variation>/<version>/`; without a version, the newest
     version on disk (kagglehub itself would ask the Kaggle API which is the latest);
  4. a preset name (keras-hub name, HF short name like `bloom-560m`, or HF id like
     `bigscience/bloom-560m`) or a plain name: looked up in the local model directory
     (`$MINIBLOOM_HOME`, default `~/.cache/minibloom`) as `<home>/<name>`, then in the HF hub cache
     layout (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`) as
     `models--org--name/snapshots/<revision>/`, then (keras-hub names) as a keras-hub download in
     the kagglehub cache.
The directory found may be an HF model directory or a keras-hub preset (io/keras.py reads it).
A preset that is not on disk raises `PresetNotFoundError` saying how to get it. Names are checked
against a strict pattern before they are joined to any path, so `..` or absolute paths cannot
escape the model directories.

`default_model_dir()` is the small model shipped in the repository's `weights/` folder, which
every install carries (found at run time: see `_find_weights_dir`).

Leaves out: downloading without `huggingface_hub`, downloading from Kaggle (the error says how:
keras-hub or kagglehub fill the cache this module reads), and the weights themselves
(checkpoint.py and keras.py read them).
"""

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from minibloom.config import BloomConfig
from minibloom.errors import PresetNotFoundError

REPO_ROOT = Path(__file__).resolve().parents[2]  # minibloom/io/presets.py -> the repository


def _find_weights_dir() -> Path:
    """Where the shipped model is, found at run time: weights/ of a source checkout (an editable
    install runs from there), else the data files a `pip install .` or a wheel put under
    <prefix>/share/minibloom/weights (setup.cfg [options.data_files]); prefix is the environment's
    (sys.prefix, a venv's included) or the user scheme's (pip install --user)."""
    import importlib.metadata
    import site
    import sysconfig

    candidates = [REPO_ROOT / "weights"]
    # where the installer recorded our data files (exact for any install scheme, e.g. Debian's
    # /usr/local): the RECORD of the dist-info next to this package
    for info in sorted(Path(__file__).resolve().parents[2].glob("minibloom-*.dist-info")):
        for f in importlib.metadata.PathDistribution(info).files or ():
            if f.name == "config.json" and "weights" in f.parts:
                candidates.append(Path(f.locate()).resolve().parent.parent)
    for base in (sys.prefix, sysconfig.get_path("data"), getattr(site, "USER_BASE", None)):
        if base:
            candidates.append(Path(base) / "share" / "minibloom" / "weights")
    # the first that holds a model: a directory that merely exists (another package's top-level
    # weights/ in site-packages, an empty share/ left by an uninstall) must not hide the real one
    holds_model = lambda d: (d / "config.json").is_file() or any(d.glob("*/config.json"))
    return next((d for d in candidates if holds_model(d)), candidates[0])


WEIGHTS_DIR = _find_weights_dir()


@dataclass(frozen=True)
class Preset:
    """One released BLOOM checkpoint: its names and the BloomConfig of its config.json."""

    name: str  # keras-hub style name
    hf_id: str  # Hugging Face repository id
    config: BloomConfig
    description: str
    kaggle_version: int | None = None  # keras-hub's `kaggle://keras/bloom/keras/<name>/<version>`

    @property
    def kaggle_handle(self) -> str | None:
        """keras-hub's handle of this preset, or None if keras-hub has none."""
        if self.kaggle_version is None:
            return None
        return f"kaggle://{KAGGLE_BLOOM}/{self.name}/{self.kaggle_version}"

    @property
    def hf_name(self) -> str:
        return self.hf_id.split("/", 1)[1]

    @property
    def params(self) -> int:
        """Parameter count with the tied LM head."""
        return self.config.num_parameters()


# keras-hub's BLOOM presets on Kaggle (keras_hub/src/models/bloom/bloom_presets.py): the
# version of each handle kaggle://keras/bloom/keras/<name>/<version>. No 7b.
KAGGLE_BLOOM = "keras/bloom/keras"
_KAGGLE_VERSIONS = {
    "bloom_560m_multi": 4,
    "bloom_1.1b_multi": 2,
    "bloom_1.7b_multi": 2,
    "bloom_3b_multi": 2,
    "bloomz_560m_multi": 2,
    "bloomz_1.1b_multi": 2,
    "bloomz_1.7b_multi": 2,
    "bloomz_3b_multi": 2,
}


def _p(name, hf_id, n_layer, hidden, heads, description):
    config = BloomConfig(vocab_size=250880, hidden_size=hidden, n_layer=n_layer, n_head=heads)
    return Preset(name, hf_id, config, description, _KAGGLE_VERSIONS.get(name))


_BASE = "BLOOM pretrained on ROOTS: 45 natural and 12 programming languages"
_Z = "BLOOMZ: BLOOM finetuned on the xP3 multitask prompts (follows instructions)"
PRESETS = MappingProxyType(
    {
        p.name: p
        for p in (
            _p(
                "bloom_560m_multi",
                "bigscience/bloom-560m",
                24,
                1024,
                16,
                f"24 layers, hidden 1024. {_BASE}.",
            ),
            _p(
                "bloom_1.1b_multi",
                "bigscience/bloom-1b1",
                24,
                1536,
                16,
                f"24 layers, hidden 1536. {_BASE}.",
            ),
            _p(
                "bloom_1.7b_multi",
                "bigscience/bloom-1b7",
                24,
                2048,
                16,
                f"24 layers, hidden 2048. {_BASE}.",
            ),
            _p(
                "bloom_3b_multi",
                "bigscience/bloom-3b",
                30,
                2560,
                32,
                f"30 layers, hidden 2560. {_BASE}.",
            ),
            _p(
                "bloom_7b_multi",
                "bigscience/bloom-7b1",
                30,
                4096,
                32,
                f"30 layers, hidden 4096. {_BASE}.",
            ),
            _p(
                "bloomz_560m_multi",
                "bigscience/bloomz-560m",
                24,
                1024,
                16,
                f"24 layers, hidden 1024. {_Z}.",
            ),
            _p(
                "bloomz_1.1b_multi",
                "bigscience/bloomz-1b1",
                24,
                1536,
                16,
                f"24 layers, hidden 1536. {_Z}.",
            ),
            _p(
                "bloomz_1.7b_multi",
                "bigscience/bloomz-1b7",
                24,
                2048,
                16,
                f"24 layers, hidden 2048. {_Z}.",
            ),
            _p(
                "bloomz_3b_multi",
                "bigscience/bloomz-3b",
                30,
                2560,
                32,
                f"30 layers, hidden 2560. {_Z}.",
            ),
            _p(
                "bloomz_7b_multi",
                "bigscience/bloomz-7b1",
                30,
                4096,
                32,
                f"30 layers, hidden 4096. {_Z}.",
            ),
        )
    }
)

# A name a user may type: letters, digits, `.`, `_`, `-` (no path separators, no `..`).
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_MAX_PATH = 4096  # Linux PATH_MAX: a longer argument cannot name a directory
_REPO_ID = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]{0,95})/([A-Za-z0-9][A-Za-z0-9._-]{0,95})$")


def find_preset(name: str) -> Preset | None:
    """The preset called `name` (keras-hub name, HF short name or HF id), or None."""
    for p in PRESETS.values():
        if name in (p.name, p.hf_id, p.hf_name):
            return p
    return None


# ------------------------------------------------------------------------------------------------
# where models live on disk
# ------------------------------------------------------------------------------------------------


def minibloom_home() -> Path:
    """The local model directory: $MINIBLOOM_HOME, default ~/.cache/minibloom."""
    return Path(
        os.environ.get("MINIBLOOM_HOME") or Path.home() / ".cache" / "minibloom"
    ).expanduser()


def hf_hub_cache() -> Path:
    """The HF hub cache: $HF_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "huggingface" / "hub"


def kagglehub_cache() -> Path:
    """The kagglehub cache: $KAGGLEHUB_CACHE, else ~/.cache/kagglehub (kagglehub's config.py)."""
    return Path(
        os.environ.get("KAGGLEHUB_CACHE") or Path.home() / ".cache" / "kagglehub"
    ).expanduser()


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def _kaggle_versions(handle: str) -> list[tuple[int, Path]]:
    """(version, directory) of every downloaded version of `owner/model/framework/variation` in
    the kagglehub cache that holds a config.json, oldest first."""
    base = kagglehub_cache() / "models" / handle
    found = []
    for d in base.glob("*") if base.is_dir() else []:
        if d.name.isdigit() and _is_model_dir(d):
            found.append((int(d.name), d))
    return sorted(found)


def _kaggle_dir(handle: str, version: int | None) -> Path | None:
    """The cached download of a Kaggle model handle (given version, else the newest), or None."""
    versions = _kaggle_versions(handle)
    if version is not None:
        versions = [(v, d) for v, d in versions if v == version]
    return versions[-1][1] if versions else None


def kaggle_downloads() -> list[tuple[str, Path]]:
    """(handle, directory) of every keras-hub BLOOM download in the kagglehub cache."""
    root = kagglehub_cache() / "models" / KAGGLE_BLOOM
    rows = []
    for variant in sorted(root.glob("*")) if root.is_dir() else []:
        if _plain_name(variant.name):
            for v, d in _kaggle_versions(f"{KAGGLE_BLOOM}/{variant.name}"):
                rows.append((f"kaggle://{KAGGLE_BLOOM}/{variant.name}/{v}", d))
    return rows


def _how_to_get_kaggle(handle: str) -> str:
    return (
        f"keras-hub downloads it into the kagglehub cache ({kagglehub_cache()}, $KAGGLEHUB_CACHE), where "
        f'minibloom finds it: `keras_hub.models.BloomCausalLM.from_preset("{handle}")`, or '
        f'`kagglehub.model_download("{handle.removeprefix("kaggle://")}")`'
    )


def _resolve_kaggle(text: str) -> Path:
    """`kaggle://owner/model/framework/variation[/version]` -> its kagglehub cache directory."""
    parts = text[len("kaggle://") :].split("/")
    version = parts[4] if len(parts) == 5 else None
    if (
        len(parts) not in (4, 5)
        or not all(_plain_name(x) for x in parts)
        or (version is not None and not version.isdigit())
    ):
        raise PresetNotFoundError(
            f"{text!r}: expected kaggle://owner/model/framework/variation[/version], e.g. "
            f"kaggle://{KAGGLE_BLOOM}/bloom_560m_multi/4"
        )
    handle = "/".join(parts[:4])
    found = _kaggle_dir(handle, None if version is None else int(version))
    if found is None:
        raise PresetNotFoundError(
            f"{text}: not in the kagglehub cache. " + _how_to_get_kaggle(text)
        )
    return found


def _hub_snapshot(repo_id: str) -> Path | None:
    """`models--org--name/snapshots/<rev>` in the HF cache: the `main` ref, else the newest."""
    if not _repo_id(repo_id):
        return None
    repo = hf_hub_cache() / ("models--" + repo_id.replace("/", "--"))
    ref = repo / "refs" / "main"
    if ref.is_file():
        rev = ref.read_text(encoding="utf-8").strip()
        if _plain_name(rev) and _is_model_dir(repo / "snapshots" / rev):
            return repo / "snapshots" / rev
    snapshots = [d for d in (repo / "snapshots").glob("*") if _is_model_dir(d)]
    return max(snapshots, key=lambda d: d.stat().st_mtime) if snapshots else None


def default_model_dir() -> Path:
    """The small BLOOM shipped with the project: the first directory under weights/ with a config.json."""
    candidates = (
        sorted(d for d in WEIGHTS_DIR.glob("*") if d.is_dir() and _is_model_dir(d))
        if WEIGHTS_DIR.is_dir()
        else []
    )
    if _is_model_dir(WEIGHTS_DIR):
        candidates.insert(0, WEIGHTS_DIR)
    if not candidates:
        raise PresetNotFoundError(
            f"no default model: {WEIGHTS_DIR} holds no directory with a config.json. Pass a model "
            f"directory or a preset name (see `python -m minibloom presets`)"
        )
    return candidates[0]


def _how_to_get(name: str, preset: Preset | None) -> str:
    hf_id = preset.hf_id if preset else name
    home = minibloom_home() / (preset.name if preset else name)
    keras = (
        f"; or through keras-hub: {_how_to_get_kaggle(preset.kaggle_handle)}"
        if preset is not None and preset.kaggle_handle
        else ""
    )
    return (
        f"Download it with `huggingface-cli download {hf_id}` (into the HF cache, found automatically), "
        f"or pass `hf://{hf_id}` with huggingface_hub installed, or put config.json, *.safetensors and "
        f"tokenizer.json in {home}{keras}"
    )


def _download(repo_id: str) -> Path:
    try:
        import huggingface_hub  # optional: only `hf://` names need it
    except ImportError:
        raise PresetNotFoundError(
            f"hf://{repo_id} is not in the HF cache ({hf_hub_cache()}) and huggingface_hub is not installed "
            f"to download it: `pip install huggingface_hub`, or download the files by hand into a directory"
        ) from None
    try:
        path = huggingface_hub.snapshot_download(
            repo_id, allow_patterns=["*.json", "*.safetensors", "tokenizer*"]
        )
    except Exception as e:  # network errors, unknown repo, offline mode: all mean "not available"
        raise PresetNotFoundError(
            f"hf://{repo_id}: could not download ({type(e).__name__}: {e})"
        ) from None
    return Path(path)


def _plain_name(text: str) -> bool:
    return (
        bool(_NAME.fullmatch(text)) and ".." not in text
    )  # fullmatch: `$` alone lets "x\n" through


def _repo_id(text: str) -> bool:
    return bool(_REPO_ID.fullmatch(text)) and ".." not in text


def resolve(name_or_path) -> Path:
    """A preset name, `hf://org/name` or directory -> the model directory (holding config.json)."""
    if isinstance(name_or_path, str) and name_or_path.startswith("hf://"):
        repo_id = name_or_path[len("hf://") :]
        if not _repo_id(repo_id):
            raise PresetNotFoundError(
                f"{name_or_path!r}: expected hf://org/name with letters, digits, '.', '_', '-'"
            )
        return _hub_snapshot(repo_id) or _download(repo_id)
    if isinstance(name_or_path, str) and name_or_path.startswith("kaggle://"):
        return _resolve_kaggle(name_or_path)
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise PresetNotFoundError(
            f"preset: expected a name, `hf://org/name`, `kaggle://...` or a directory, found {name_or_path!r}"
        )

    text = str(name_or_path)
    if not text or "\0" in text or len(text) > _MAX_PATH:
        raise PresetNotFoundError(
            f"preset: expected a name, `hf://org/name` or a directory path (non-empty, no NUL byte, at most "
            f"{_MAX_PATH} characters), found {text[:100]!r}{'...' if len(text) > 100 else ''}"
        )
    try:
        path = Path(text).expanduser()
        is_dir, is_file = path.is_dir(), path.exists() and not path.is_dir()
    except RuntimeError as e:  # "~nosuchuser/x": no such user to expand
        raise PresetNotFoundError(f"{text[:100]!r}: cannot expand the path ({e})") from None
    except OSError as e:  # e.g. a path component longer than the file system allows
        raise PresetNotFoundError(f"{text[:100]!r}: not a usable path ({e.strerror})") from None
    if is_file:
        raise PresetNotFoundError(
            f"{path}: is a file; expected a model directory (holding config.json)"
        )
    if is_dir:
        if not _is_model_dir(path):
            inside = [d.name for d in (path / "model", path / "checkpoints") if _is_model_dir(d)]
            hint = f" (a training run's output? its model is {path / 'model'})" if inside else ""
            raise PresetNotFoundError(
                f"{path}: directory has no config.json, so it is not a model directory{hint}"
            )
        return path
    preset = find_preset(text)
    if preset is None and not _plain_name(text) and not _repo_id(text):
        raise PresetNotFoundError(f"{text!r}: no such model directory")  # it was meant as a path

    # Only validated names reach the file system from here on.
    home = minibloom_home()
    candidates = [home / text] if _plain_name(text) else []
    if preset is not None:
        candidates += [home / preset.name, home / preset.hf_name]
    for c in candidates:
        if _is_model_dir(c):
            return c
    repo_id = preset.hf_id if preset else (text if _repo_id(text) else None)
    snapshot = _hub_snapshot(repo_id) if repo_id else None
    if snapshot is not None:
        return snapshot
    if preset is not None and preset.kaggle_version is not None:
        found = _kaggle_dir(f"{KAGGLE_BLOOM}/{preset.name}", None)
        if found is not None:
            return found
    if preset is None and repo_id is None:
        raise PresetNotFoundError(
            f"{text!r} is not a directory, a model in {home}, or a known preset ({', '.join(PRESETS)})"
        )
    raise PresetNotFoundError(f"{text}: not found on disk. " + _how_to_get(text, preset))


def list_presets() -> list[tuple[str, str, Path | None]]:
    """(name, description, directory or None) for the shipped default (if any) and every preset."""
    rows = []
    try:
        d = default_model_dir()
        rows.append(("default", f"the small BLOOM shipped in {WEIGHTS_DIR.name}/{d.name}", d))
    except PresetNotFoundError:
        pass
    for p in PRESETS.values():
        try:
            path = resolve(p.name)
        except PresetNotFoundError:
            path = None
        rows.append((p.name, f"{p.hf_id}, {p.params / 1e9:.2f}B params. {p.description}", path))
    return rows
