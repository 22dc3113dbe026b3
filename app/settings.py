"""User settings: one typed, frozen dataclass saved as JSON with an atomic write.

Also owns the quick, torch-free check of a Grok-2 folder that the settings dialog and the
welcome view run as soon as a folder is chosen (the engine checks every tensor shape on load).
No Qt and no torch here.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from app import paths
from app.api.guard import normalize_origin
from app.atomic import atomic_write_bytes, atomic_write_text
from app.checkpoint_files import TOKENIZER_NAME, read_header
from app.errors import ModelFileError, UserError
from app.messages import GenerationParams
from app.validation import check_fields

THEMES = ("system", "light", "dark")
DEVICES = ("auto", "cuda", "cpu")
QUANTIZATIONS = ("auto", "bf16", "int8", "int4")
BACKENDS = ("local", "remote")
SETTINGS_VERSION = 1
FILE_MODE = 0o600  # the file may hold API keys: readable by its owner only


@dataclass(frozen=True)
class Settings:
    """Everything the user can change, with the defaults a fresh install starts from."""

    model_folder: str = ""
    device: str = "auto"  # where the weights go: auto (CUDA if present), cuda, cpu
    quantization: str = "auto"
    gpu_memory_gb: float = 0.0  # 0: use what the card has
    cpu_memory_gb: float = 0.0  # 0: use what the machine has
    context_tokens: int = 8192  # KV cache size the engine reserves (the placement plan's context)
    backend: str = "local"  # "local": the Grok-2 folder; "remote": an OpenAI-compatible server
    remote_url: str = ""  # e.g. http://gpu-server:30000
    remote_model: str = ""  # "" takes the first model the server lists
    remote_api_key: str = ""
    remote_connect_timeout_s: float = 10.0
    remote_read_timeout_s: float = 300.0
    api_server_enabled: bool = False  # serve the loaded local model as an OpenAI-compatible API
    api_server_port: int = 1234
    api_server_key: str = ""
    api_server_allow_remote: bool = False  # listen on every address (needs a key)
    # Web origins (http://localhost:3000) whose pages may call the API server from a browser.
    api_cors_origins: list[str] = field(default_factory=list)
    sampling: GenerationParams = field(default_factory=GenerationParams)
    system_prompt: str = ""
    theme: str = "system"
    welcome_done: bool = False  # the first-run view was answered (folder chosen or demo tried)

    def __post_init__(self) -> None:
        check_fields(self)  # types and finiteness first: "8", true and NaN name their key
        if not isinstance(self.sampling, GenerationParams):
            raise TypeError("'sampling' must be an object")
        _one_of("theme", self.theme, THEMES)
        _one_of("device", self.device, DEVICES)
        _one_of("quantization", self.quantization, QUANTIZATIONS)
        _one_of("backend", self.backend, BACKENDS)
        for name in ("gpu_memory_gb", "cpu_memory_gb"):
            if getattr(self, name) < 0:
                raise ValueError(f"'{name}' must be >= 0 (0: use what the machine has)")
        if self.context_tokens < 256:
            raise ValueError("'context_tokens' must be >= 256")
        if self.remote_connect_timeout_s <= 0 or self.remote_read_timeout_s <= 0:
            raise ValueError("'remote_connect_timeout_s' and 'remote_read_timeout_s' must be "
                             "> 0 seconds")
        if not 0 <= self.api_server_port <= 65535:
            raise ValueError("'api_server_port' must be in 0..65535 (0: any free port)")
        if self.api_server_allow_remote and not self.api_server_key:
            raise ValueError("'api_server_allow_remote' needs an 'api_server_key'")
        if self.api_cors_origins is None:  # JSON null: the default, no browser origins
            object.__setattr__(self, "api_cors_origins", [])
        if not isinstance(self.api_cors_origins, (list, tuple)):
            raise TypeError("'api_cors_origins' must be a list of origins like "
                            "\"http://localhost:3000\"")
        origins = []
        for i, origin in enumerate(self.api_cors_origins):
            try:
                origins.append(normalize_origin(origin))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"'api_cors_origins[{i}]': {exc}") from None
        object.__setattr__(self, "api_cors_origins", list(dict.fromkeys(origins)))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["version"] = SETTINGS_VERSION
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Settings:
        """Build from JSON data: unknown keys are ignored; missing keys and explicit nulls
        take the default (as the API server reads null). Raises ValueError/TypeError naming
        the key for a wrong type or value."""
        known = {f.name for f in fields(cls)} - {"sampling"}
        values = {k: v for k, v in data.items() if k in known and v is not None}
        sampling = data.get("sampling")
        sampling = {} if sampling is None else sampling
        if not isinstance(sampling, dict):
            raise TypeError("'sampling' must be an object")
        try:
            params = GenerationParams.from_dict(sampling)
        except ValueError as exc:
            raise ValueError(f"in 'sampling': {exc}") from exc
        return cls(**values, sampling=params)


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"'{name}' must be one of {', '.join(allowed)} (got {value!r})")


def load_settings(path: Path | None = None) -> Settings:
    """Read the settings file; a missing file gives the defaults, a bad one a UserError."""
    path = path or paths.settings_path()
    try:
        text = path.read_text(encoding="utf-8-sig")  # a Windows editor may have added a BOM
    except FileNotFoundError:
        return Settings()
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror}); check its permissions") from exc
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8 or delete "
                        "it to start from the defaults") from exc
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise TypeError("the file must hold one JSON object")
        return Settings.from_dict(data)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path}: invalid settings ({exc}); fix the value or delete the file "
                        "to start from the defaults") from exc


def save_settings(settings: Settings, path: Path | None = None) -> Path:
    """Write the settings atomically (app.atomic), readable by their owner only (0600).
    Raises UserError naming the file when it cannot be written."""
    path = path or paths.settings_path()
    keep_unreadable_copy(path)
    text = json.dumps(settings.to_dict(), indent=2, sort_keys=True) + "\n"
    try:
        atomic_write_text(path, text, mode=FILE_MODE)
    except OSError as exc:
        raise UserError(f"{path}: cannot be written ({exc.strerror}); check the disk and "
                        "the folder's permissions") from exc
    return path


def keep_unreadable_copy(path: Path) -> Path | None:
    """Before a save replaces a settings file that does not load (the app started from the
    defaults and said why), copy it to `settings.json.unreadable` so nothing the user wrote is
    lost; returns the copy's path, or None when the file loads or is absent."""
    try:
        load_settings(path)
        return None
    except UserError:
        copy = path.with_name(path.name + ".unreadable")
        try:
            atomic_write_bytes(copy, path.read_bytes(), mode=FILE_MODE)
        except OSError:
            return None  # unreadable as bytes too: nothing could be kept either way
        return copy


def with_sampling(settings: Settings, **changes: Any) -> Settings:
    """A copy of `settings` with some sampling fields changed (validated)."""
    return replace(settings, sampling=replace(settings.sampling, **changes))


# ---- the quick folder check ----------------------------------------------------------------

_TP_RE = re.compile(r"^(?P<stem>.+)-TP-(?P<rank>\d{3})\.safetensors$")


@dataclass(frozen=True)
class FolderCheck:
    """What a folder holds: `problems` empty means it looks like a usable Grok-2 folder."""

    folder: str
    found: tuple[str, ...] = ()
    total_bytes: int = 0
    problems: tuple[str, ...] = ()
    layers: int = 0
    experts: int = 0
    context_length: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """One or more lines for the dialog: what was found, or exactly what is missing."""
        if not self.ok:
            return "\n".join(self.problems)
        size = f"{self.total_bytes / 1e9:,.1f} GB" if self.total_bytes >= 1e8 else (
            f"{self.total_bytes / 1e6:,.1f} MB")
        return (f"Found {len(self.found)} weight files ({size}), config.json and the "
                f"tokenizer: {self.layers} layers, {self.experts} experts, "
                f"context {self.context_length:,} tokens.")


def check_model_folder(folder: str | Path) -> FolderCheck:
    """Check config.json, the tokenizer and every safetensors header (sizes, TP shard sets)."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        problem = f"{root}: folder not found; choose the folder that holds config.json"
        return FolderCheck(str(root), problems=(problem,))
    problems: list[str] = []
    config = _read_config(root / "config.json", problems)
    if not (root / TOKENIZER_NAME).is_file():
        problems.append(f"{root / TOKENIZER_NAME}: missing; download it with the weights")
    files = sorted(root.glob("*.safetensors"))
    if not files:
        problems.append(f"{root}: no .safetensors weight files; download the Grok-2 weights "
                        "(hf download xai-org/grok-2) into this folder")
    headers = {p: _read_header(p, problems) for p in files}
    total = sum(size for size, _ in headers.values())
    problems.extend(_missing_shards(root, files, _expected_ranks(config, headers)))
    return FolderCheck(
        str(root), tuple(p.name for p in files), total, tuple(problems),
        layers=int(config.get("num_hidden_layers", 0) or 0),
        experts=int(config.get("num_local_experts", 0) or 0),
        context_length=int(config.get("max_position_embeddings", 0) or 0),
    )


def _read_config(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        problems.append(f"{path}: missing; it comes with the weights (config.json)")
        return {}
    except (OSError, ValueError) as exc:
        problems.append(f"{path}: unreadable ({exc}); download it again")
        return {}
    if not isinstance(data, dict):
        problems.append(f"{path}: not a JSON object; download it again")
        return {}
    return data


def _read_header(path: Path, problems: list[str]) -> tuple[int, dict[str, list[int]]]:
    """(tensor bytes, shapes) a safetensors file declares; records a problem if it is broken."""
    try:
        infos = read_header(path)
    except ModelFileError as exc:
        problems.append(str(exc))
        return 0, {}
    return sum(i.nbytes for i in infos.values()), {n: list(i.shape) for n, i in infos.items()}


def _expected_ranks(config: dict[str, Any], headers: dict[Path, tuple[int, dict]]) -> int:
    """How many TP shards an expert is cut into: moe_intermediate_size / the shard's rows."""
    width = next((shape[0] for path, (_, shapes) in headers.items() if _TP_RE.match(path.name)
                  for name, shape in shapes.items()
                  if name.endswith((".w1.weight", ".w3.weight")) and shape), 0)
    moe = config.get("moe_intermediate_size")
    return int(moe) // width if width and isinstance(moe, int) else 0


def _missing_shards(root: Path, files: list[Path], expected: int) -> list[str]:
    """Each `*-TP-NNN` family must hold ranks 000 up to `expected` (from the config and the
    shard width), or at least as many as the largest family."""
    ranks: dict[str, set[int]] = {}
    for path in files:
        m = _TP_RE.match(path.name)
        if m:
            ranks.setdefault(m["stem"], set()).add(int(m["rank"]))
    if not ranks:
        return []
    n = max(expected, max(max(r) for r in ranks.values()) + 1)
    return [f"{root / f'{stem}-TP-{rank:03d}.safetensors'}: missing; download this file"
            for stem in sorted(ranks) for rank in range(n) if rank not in ranks[stem]]
