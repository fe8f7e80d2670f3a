"""LeanKV settings: the precision of each tier, the two significance thresholds, and presets."""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from leanstack.errors import LeanstackError
from leanstack.leankv.quant import RAW_BITS, check_bits

SIGNIFICANCE = ("mean", "sum")


@dataclass(frozen=True)
class LeanKVConfig:
    """How LeanKV compresses a KV cache.

    Tokens live in three stored tiers plus "pruned". The first ``sink_tokens`` tokens and the
    most recent ``recent_window`` stay in the *full* tier (``full_bits``: 8, 16 or 32). Older tokens
    are ranked per request and KV head by significance: the smallest set covering ``hi_mass`` of
    the head's attention mass goes to the *high* tier (``hi_bits`` = key bits, value bits), the
    set up to ``keep_mass`` to the *low* tier (``lo_bits``), the rest is pruned. Tokens are only
    ever demoted. Re-tiering runs every ``retier_every`` new tokens. ``score_decay`` below 1
    weighs recent queries' attention more (an exponential observation window); 1 accumulates.
    ``significance`` is ``mean`` (mass per query that could see the token) or ``sum`` (H2O's
    accumulated mass). ``budget`` > 0 replaces the mass thresholds by a fixed number of kept
    tokens per head (all in the high tier; an H2O-style policy). ``key_channel_norm`` centres
    and scales every key channel per (request, layer, KV head) before quantizing, so outlier
    channels do not eat the per-token range (KIVI's observation, in a per-token layout).
    By default mass already pruned counts against ``keep_mass``, so all pruning together gives
    up about ``1 - keep_mass`` of each head's mass; ``reprune`` instead prunes the tail of the
    survivors' mass again at every re-tier (progressive eviction: old tokens thin out).
    ``min_kept`` > 0 is a floor: each head never prunes its ``min_kept`` most significant tokens.
    ``snap_window`` > 0 with ``snap_keep`` > 0 protects prompt tokens SnapKV-style: after every
    multi-token chunk, the ``snap_keep`` share of each head's tokens that the chunk's last
    ``snap_window`` queries attend to most are pinned to at least the high tier and never pruned.
    """

    hi_bits: tuple[int, int] = (8, 4)
    lo_bits: tuple[int, int] = (4, 2)
    hi_mass: float = 0.9
    keep_mass: float = 0.99
    sink_tokens: int = 4
    recent_window: int = 32
    full_bits: int = 16
    group: int = 64
    page_bytes: int = 2048
    retier_every: int = 16
    score_decay: float = 1.0
    significance: str = "mean"
    budget: int = 0
    key_channel_norm: bool = True
    reprune: bool = False
    min_kept: int = 0
    snap_window: int = 0
    snap_keep: float = 0.0

    def __post_init__(self) -> None:
        for name in ("hi_bits", "lo_bits"):
            pair = getattr(self, name)
            if not (isinstance(pair, tuple | list) and len(pair) == 2):
                raise LeanstackError(f"{name} must be (key_bits, value_bits), got {pair!r}")
            object.__setattr__(self, name, tuple(int(b) for b in pair))
            for b in getattr(self, name):
                check_bits(b)
        if self.full_bits not in (8, *RAW_BITS):
            raise LeanstackError(f"full_bits must be 8, 16 or 32, got {self.full_bits}")
        if not 0.0 <= self.hi_mass <= self.keep_mass <= 1.0:
            raise LeanstackError(
                f"need 0 <= hi_mass <= keep_mass <= 1, got {self.hi_mass} and {self.keep_mass}"
            )
        for name in ("sink_tokens", "recent_window"):
            if getattr(self, name) < 0:
                raise LeanstackError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 < self.score_decay <= 1.0:
            raise LeanstackError(f"score_decay must be in (0, 1], got {self.score_decay}")
        if self.significance not in SIGNIFICANCE:
            raise LeanstackError(f"significance must be one of {SIGNIFICANCE}, "
                                 f"got {self.significance!r}")
        for name in ("min_kept", "snap_window"):
            if getattr(self, name) < 0:
                raise LeanstackError(f"{name} must be >= 0 tokens, got {getattr(self, name)}")
        if not 0.0 <= self.snap_keep <= 1.0:
            raise LeanstackError(f"snap_keep must be a share in [0, 1], got {self.snap_keep}")
        if (self.snap_window > 0) != (self.snap_keep > 0):
            raise LeanstackError("snap_window and snap_keep work together: set both > 0 to pin "
                                 "observed prompt tokens, or both to 0")
        if self.budget < 0:
            raise LeanstackError(f"budget must be >= 0 tokens per head, got {self.budget}")
        for name in ("group", "page_bytes", "retier_every"):
            if getattr(self, name) <= 0:
                raise LeanstackError(f"{name} must be > 0, got {getattr(self, name)}")

    @property
    def ranks_tokens(self) -> bool:
        """Whether significance can change what is stored: pruning (``keep_mass`` < 1 or a
        ``budget``) or a high/low split with different precisions. When it cannot, attention
        skips the attention-mass bookkeeping and runs fused."""
        return (self.budget > 0 or self.keep_mass < 1.0
                or (self.hi_mass < 1.0 and self.hi_bits != self.lo_bits))

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> LeanKVConfig:
        """A named preset (``lossless``, ``balanced``, ``balanced-window``, ``aggressive``,
        ``exact``) with overrides."""
        if name not in PRESETS:
            raise LeanstackError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
        return replace(PRESETS[name], **overrides) if overrides else PRESETS[name]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LeanKVConfig:
        """Build from a dict (e.g. JSON), naming any unknown key."""
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise LeanstackError(f"unknown LeanKV setting {key!r}: use one of {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def load(cls, spec: str) -> LeanKVConfig:
        """A preset name, or a ``.toml`` file of settings (``preset = "NAME"`` picks the base
        the other settings override; without it they override the defaults)."""
        if not spec.endswith(".toml"):
            return cls.preset(spec)
        path = Path(spec).expanduser()
        if not path.is_file():
            raise LeanstackError(f"preset file {path} not found: pass a preset name or a .toml "
                                 "file written by `leanstack kv calibrate`")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise LeanstackError(f"preset file {path} is not valid UTF-8 TOML: {e}") from None
        data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()
                if not isinstance(v, dict)}  # tables (e.g. [calibration]) are notes
        base = data.pop("preset", None)
        if base is None:
            return cls.from_dict(data)
        cls.from_dict(data)  # names any unknown key
        return cls.preset(str(base), **data)

    def to_toml(self) -> str:
        """The settings as TOML lines that :meth:`load` reads back."""
        lines = []
        for key, value in self.to_dict().items():
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, str):
                text = f'"{value}"'
            elif isinstance(value, tuple | list):
                text = "[" + ", ".join(str(v) for v in value) + "]"
            else:
                text = repr(value)
            lines.append(f"{key} = {text}")
        return "\n".join(lines) + "\n"


PRESET_DIR = Path(__file__).parent / "presets"
SHIPPED = ("lossless", "balanced", "aggressive")
"""Presets shipped as files in :data:`PRESET_DIR`, chosen on the corpus's calibration half by
``benchmarks/leankv_calibrate_presets.py`` (their ``[calibration]`` table records how)."""


def preset_provenance(name: str) -> dict[str, Any]:
    """The ``[calibration]`` notes of a shipped preset file: split, targets, rung, numbers."""
    if name not in SHIPPED:
        raise LeanstackError(f"{name!r} is not a shipped preset file: choose one of "
                             f"{', '.join(SHIPPED)}")
    data = tomllib.loads((PRESET_DIR / f"{name}.toml").read_text(encoding="utf-8"))
    return dict(data.get("calibration", {}))


PRESETS: dict[str, LeanKVConfig] = {
    # Everything at full fp32 precision, nothing pruned: reproduces the dense cache.
    "exact": LeanKVConfig(full_bits=32, hi_bits=(32, 32), lo_bits=(32, 32), hi_mass=1.0,
                          keep_mass=1.0),
    **{name: LeanKVConfig.load(str(PRESET_DIR / f"{name}.toml")) for name in SHIPPED},
    # The first balanced preset's compression at a third of its KL on long decodes, but old
    # prompt tokens fade (fewer passkeys found): everything at K4V4, the survivors' last 0.2% of
    # mass pruned every 8 tokens, ranked with score_decay 0.99 (half-life ~70 queries).
    # Kept for comparison; not re-chosen on the calibration half.
    "balanced-window": LeanKVConfig(hi_bits=(4, 4), lo_bits=(4, 4), hi_mass=0.998,
                                    keep_mass=0.998, full_bits=8, recent_window=24,
                                    retier_every=8, page_bytes=1024, score_decay=0.99,
                                    reprune=True),
}
