"""What a provider call costs (per model, size and quality), for `cost.recorded` (spec §9.1).

Built-in prices are OpenAI's published per-image prices for gpt-image-1; `config/prices.toml` in
the app root (keys `"<model>/<size>/<quality>" = <usd>` under `[prices]`) adds or overrides them.
The local provider costs nothing.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

DEFAULT_PRICES: dict[str, float] = {
    "gpt-image-1/1024x1024/low": 0.011,
    "gpt-image-1/1024x1024/medium": 0.042,
    "gpt-image-1/1024x1024/high": 0.167,
    "gpt-image-1/1024x1536/low": 0.016,
    "gpt-image-1/1024x1536/medium": 0.063,
    "gpt-image-1/1024x1536/high": 0.25,
    "gpt-image-1/1536x1024/low": 0.016,
    "gpt-image-1/1536x1024/medium": 0.063,
    "gpt-image-1/1536x1024/high": 0.25,
}


def load_prices(app_root: Path) -> dict[str, float]:
    prices = dict(DEFAULT_PRICES)
    path = app_root / "config" / "prices.toml"
    if path.is_file():
        table = tomllib.loads(path.read_text()).get("prices", {})
        prices.update({str(k): float(v) for k, v in table.items() if isinstance(v, int | float)})
    return prices


def price(prices: dict[str, float], provider: str, model: str, size: str, quality: str) -> float:
    """USD for one image; 0 for the local provider and for an unknown combination."""
    if provider == "local":
        return 0.0
    return prices.get(f"{model}/{size}/{quality}", 0.0)
