"""budgets.yaml: the horizon H per named regime, typed (Budget), planned, written and read.

The xi stage plans one Budget per regime of params.yaml (H = max(1, round(target_xi * E[T])),
with the predicted p, reward variance and P_inf at H) and writes them; the report reads them
back through `read_budgets`, which validates every entry (H >= 1, a known regime class,
every field the xi stage writes, no duplicate key), so a truncated or hand-edited file is a
one-line error naming the file and the field, never a silent H.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from relbudget.core.io import write_yaml
from relbudget.core.errors import BudgetError
from relbudget.core.params import Paths, XiParams, read_yaml

log = logging.getLogger("relbudget.measure.budgets")


def budgets_file(xi_dir: str | Path) -> Path:
    """budgets.yaml in the xi stage's folder (the name is declared once, on Paths)."""
    return Path(Paths.model_construct(xi=str(xi_dir)).budgets)


class Budget(BaseModel):
    """One regime's entry in budgets.yaml, as the xi stage writes it (estimators.plan + regime)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target_xi: float = Field(gt=0, description="the regime's xi in params.yaml")
    H: int = Field(ge=1, description="the horizon: max(1, round(target_xi * E[T]))")
    xi: float | None = Field(None, gt=0, description="achieved xi = H / E[T]")
    E_T: float | None = Field(None, gt=0)
    group_size: int | None = Field(None, ge=2)
    reward: str = "within"
    max_tokens: int | None = Field(None, ge=1, description="the rollout table's cap")
    extrapolated: bool = False
    warning: str | None = None
    p: float | None = Field(None, ge=0, le=1)
    reward_mean: float | None = None
    reward_var: float | None = Field(None, ge=0)
    p_informative: float | None = Field(None, ge=0, le=1)
    p_informative_pooled: float | None = Field(None, ge=0, le=1)
    p_informative_estimator: Literal["unbiased", "mixed", "plug-in"] | None = Field(
        None, description="how P_inf was estimated (plug-in when prompts have fewer than G attempts)")
    regime: Literal["deficient", "balanced", "ample"] = Field(
        description="the class of the achieved xi; written last, so a cut file misses it")

    @field_validator("target_xi", "xi", "E_T")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError(f"must be finite, got {v}")
        return v


def plan_budgets(df, regimes: dict[str, float], x: XiParams) -> dict[str, Budget]:
    """A Budget per named regime from a rollout table (see estimators.plan)."""
    from relbudget.measure import estimators as est

    out = {}
    for name, target in regimes.items():
        plan = est.plan(df, target, x.group_size)
        if target * plan["E_T"] < 0.5:  # H rounds to 0 and is lifted to 1: say so with numbers
            plan["warning"] = (f"target xi {target:g} x E[T] {plan['E_T']:.2f} = "
                               f"{target * plan['E_T']:.3g} tokens rounds below 1; H is set to 1 "
                               f"(achieved xi {plan['xi']:.3g})")
        if plan["warning"]:
            log.warning("regime %s: %s", name, plan["warning"])
        plan["regime"] = est.regime_of(plan["xi"], x.deficient_below, x.ample_above)
        out[name] = Budget(**est.to_json_safe(plan))
    return out


def write_budgets(budgets: dict[str, Budget], xi_dir: str | Path) -> Path:
    path = budgets_file(xi_dir)
    write_yaml({k: b.model_dump(mode="json") for k, b in budgets.items()}, path)
    return path


def _field_error(path: Path, name: str, err: ValidationError) -> BudgetError:
    e = err.errors()[0]
    field = ".".join(str(p) for p in e["loc"])
    got = "" if e["type"] == "missing" else f" (got {e.get('input')!r})"
    more = f" and {len(err.errors()) - 1} more" if len(err.errors()) > 1 else ""
    return BudgetError(f"{path}: regime {name!r}, field {field!r}: {e['msg']}{got}{more}; "
                       "the file is damaged or hand-edited: rerun the xi stage")


def read_budgets(xi_dir: str | Path) -> dict[str, Budget]:
    """Every regime's Budget in {xi_dir}/budgets.yaml, validated; BudgetError otherwise."""
    path = budgets_file(xi_dir)
    raw = read_yaml(path, BudgetError, f"{path} not found: run the xi stage first")
    if not isinstance(raw, dict) or not raw:
        raise BudgetError(f"{path} must map each regime name to its budget, got "
                          f"{type(raw).__name__}: rerun the xi stage")
    out = {}
    for name, entry in raw.items():
        if not isinstance(entry, dict):
            raise BudgetError(f"{path}: regime {name!r} is not a mapping (got {entry!r}); "
                              "rerun the xi stage")
        try:
            out[str(name)] = Budget(**entry)
        except ValidationError as err:
            raise _field_error(path, str(name), err) from None
    return out


def budget_of(xi_dir: str | Path, regime: str) -> Budget:
    """One regime's validated Budget; BudgetError naming the regimes present if it is absent."""
    budgets = read_budgets(xi_dir)
    if regime not in budgets:
        raise BudgetError(f"regime {regime!r} is not in {budgets_file(xi_dir)} (it has: "
                          f"{', '.join(budgets)}); rerun the xi stage after adding it to "
                          "params.yaml regimes")
    return budgets[regime]


def read_E_T(path: str | Path) -> float:
    """The base policy's E[T] from the xi stage's E_T.json (what every H = xi * E[T] and every
    evaluation horizon at a multiple of E[T] comes from); FileNotFoundError when absent,
    BudgetError when it is not a finite number > 0."""
    import json

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the xi stage first")
    E_T = json.loads(path.read_text()).get("E_T")
    if isinstance(E_T, bool) or not isinstance(E_T, (int, float)) or not math.isfinite(E_T) \
            or E_T <= 0:
        raise BudgetError(f"{path}: E_T is {E_T!r}; the base policy solved nothing, so no H = "
                          "xi E[T]")
    return float(E_T)


def check_token_budget(train, H: int, what: str) -> None:
    """Refuse, before training, a token budget that max_steps cannot reach: a step generates at
    most prompts_per_step x num_generations completions of at most H tokens each."""
    if getattr(train, "stop", "tokens") != "tokens":
        return
    most = train.max_steps * train.prompts_per_step * train.num_generations * H
    if train.token_budget > most:
        raise BudgetError(
            f"{what}: token_budget {train.token_budget} cannot be reached: max_steps "
            f"{train.max_steps} x prompts_per_step {train.prompts_per_step} x num_generations "
            f"{train.num_generations} x H {H} = at most {most} tokens; raise train.max_steps to "
            f"at least {-(-train.token_budget // (most // train.max_steps))} or lower the budget")
