"""dualrun.testing: hypothesis finds a divergence only a narrow band of inputs triggers (a
half-cent rounding change), shrinks it to a minimal input, and reports it as the shadow would;
the shadow's compare=, ignore= and exception rules apply unchanged."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

import dualrun
from dualrun.compare import Differ, Difference
from dualrun.testing import Agreement, Divergence, Problem, agree

OLD = {
    "shop/__init__.py": "",
    "shop/prices.py": '''
        from decimal import ROUND_HALF_UP, Decimal


        def charge(amount, quantity=1):
            """Total in cents, half a cent rounded up."""
            total = (amount * quantity).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
            return {"amount": amount, "quantity": quantity, "total": total}


        def check(amount):
            if amount < 0:
                raise ValueError(f"negative amount {amount}")
            return True


        async def charge_later(amount):
            return charge(amount)
    ''',
}

NEW_ROUNDING = {
    "shop/__init__.py": "",
    "shop/prices.py": '''
        from decimal import ROUND_HALF_EVEN, Decimal


        def charge(amount, quantity=1):
            """Total in cents, half a cent rounded to even (banker's rounding): the change."""
            total = (amount * quantity).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)
            return {"amount": amount, "quantity": quantity, "total": total}


        def check(amount):
            if amount < 0:
                raise ValueError(f"negative amount {amount}")
            return True


        async def charge_later(amount):
            return charge(amount)
    ''',
}

# Banker's rounding, and also a second change nobody documented: a fee above 900.
NEW_ROUNDING_AND_FEE = {
    "shop/__init__.py": "",
    "shop/prices.py": NEW_ROUNDING["shop/prices.py"].replace(
        "return {",
        'if amount > 900:\n                total += Decimal("0.50")\n            return {',
    ),
}


def price(euros: int, cents: int, mills: int) -> Decimal:
    """A unit price with a sub-cent part, as prices per gram or per kWh have."""
    return Decimal(euros) + Decimal(cents) / 100 + Decimal(mills) / 1000


# Drawn by parts so that the shrinker can simplify each of them on its own.
AMOUNTS = st.builds(price, st.integers(0, 1000), st.integers(0, 99), st.integers(0, 9))


def is_half_cent_tie(amount: Decimal) -> bool:
    """The inputs where half-up and half-even differ: x.xx5 with an even cent digit."""
    mills = int(amount * 1000)
    return mills % 10 == 5 and (mills // 10) % 2 == 0


def accept_rounding(old: dict[str, Decimal], new: dict[str, Decimal]) -> list[Difference]:
    """The documented contract: new rounds half a cent to even, a one-cent change of
    ``total`` on exact ties; every other difference is still reported."""
    differences = Differ().diff(old, new)
    if is_half_cent_tie(old["amount"] * old["quantity"]) and abs(
        old["total"] - new["total"]
    ) == Decimal("0.01"):
        differences = [d for d in differences if d.path != "$.total"]
    return differences


@pytest.fixture
def shop(
    write_tree: Callable[[str, dict[str, str]], Path],
    load_pair: Callable[..., dualrun.VersionPair],
) -> Callable[[dict[str, str]], dualrun.VersionPair]:
    def load(new_files: dict[str, str]) -> dualrun.VersionPair:
        old = write_tree("old", OLD)
        new = write_tree(f"new{len(new_files)}{hash(str(new_files)) & 0xFFFF}", new_files)
        return load_pair("shop", old=str(old), new=str(new))

    return load


# Deadlines and the slow-generation health check would fail on a loaded CI machine.
FAST = settings(
    max_examples=300,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_hypothesis_finds_and_shrinks_the_half_cent_divergence(shop) -> None:
    versions = shop(NEW_ROUNDING)
    prop = agree(versions, "shop.prices:charge", AMOUNTS, settings=FAST)
    with pytest.raises(Divergence) as failure:
        prop()
    divergence = failure.value
    (amount,) = divergence.call_args
    assert is_half_cent_tie(amount), divergence.call
    # Shrunk: the smallest such input is half a cent.
    assert amount == Decimal("0.005"), divergence.call
    assert [(d.path, d.kind, d.old, d.new) for d in divergence.differences] == [
        ("$.total", "value", "Decimal('0.01')", "Decimal('0.00')")
    ]
    message = str(divergence)
    assert "charge(Decimal('0.005'))" in message
    assert "$.total  value  old: Decimal('0.01')  new: Decimal('0.00')" in message
    assert "old returned {'amount': Decimal('0.005')" in message


def test_the_band_is_narrow_random_inputs_rarely_hit_it() -> None:
    """One input in twenty of this strategy is a tie; a draw of whole cents never is."""
    ties = sum(is_half_cent_tie(price(0, c, m)) for c in range(100) for m in range(10))
    assert ties == 50
    assert not any(is_half_cent_tie(price(e, c, 0)) for e in range(3) for c in range(100))


def test_a_documented_change_accepted_by_compare_passes(shop) -> None:
    versions = shop(NEW_ROUNDING)
    agree(
        versions,
        "shop.prices:charge",
        AMOUNTS,
        quantity=st.integers(1, 5),
        shadow=dualrun.Shadow(compare=accept_rounding),
        settings=FAST,
    )()


def test_compare_accepts_only_the_documented_change(shop) -> None:
    versions = shop(NEW_ROUNDING_AND_FEE)
    prop = agree(
        versions,
        "shop.prices:charge",
        AMOUNTS,
        shadow=dualrun.Shadow(compare=accept_rounding),
        settings=FAST,
    )
    with pytest.raises(Divergence) as failure:
        prop()
    (difference,) = failure.value.differences
    assert difference.path == "$.total"
    assert Decimal(difference.new[9:-2]) - Decimal(difference.old[9:-2]) >= Decimal("0.49")
    (amount,) = failure.value.call_args
    assert amount > 900


def test_ignore_rules_apply_as_in_the_shadow(shop) -> None:
    versions = shop(NEW_ROUNDING)
    agree(
        versions,
        "shop.prices:charge",
        AMOUNTS,
        shadow=dualrun.Shadow(ignore=("$.total",), sample=1, mode="background"),
        settings=FAST,
    )()


def test_agreement_checks_single_calls(shop) -> None:
    versions = shop(NEW_ROUNDING)
    with Agreement(versions) as agreement:
        assert agreement.check("shop.prices:charge", Decimal("0.015"))["total"] == Decimal("0.02")
        with pytest.raises(Divergence) as failure:
            agreement.check("shop.prices:charge", Decimal("0.125"))
        assert failure.value.observation.status == "mismatch"
        assert isinstance(failure.value, AssertionError)
        # Both raise alike: the agreed exception reaches the caller.
        with pytest.raises(ValueError, match="negative amount -1"):
            agreement.check("shop.prices:check", Decimal(-1))
        report = agreement.dispatcher.report().route("shop.prices:charge")
        assert (report.comparisons, report.mismatches) == (2, 1)


def test_a_comparator_that_raises_is_a_problem_not_a_pass(shop) -> None:
    versions = shop(NEW_ROUNDING)

    def broken(old: object, new: object) -> bool:
        raise RuntimeError("comparator bug")

    with (
        Agreement(versions, dualrun.Shadow(compare=broken)) as agreement,
        pytest.raises(Problem, match="comparator bug"),
    ):
        agreement.check("shop.prices:charge", Decimal(1))


def test_bad_arguments_fail_at_once(shop) -> None:
    versions = shop(NEW_ROUNDING)
    with pytest.raises(TypeError, match="versions is the VersionPair"):
        Agreement("shop")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"shadow is a dualrun\.Shadow"):
        Agreement(versions, shadow="inline")  # type: ignore[arg-type]
    with pytest.raises(dualrun.TargetNotFoundError):
        agree(versions, "shop.prices:nothing", AMOUNTS)


def test_async_targets_are_awaited_in_both_versions(shop) -> None:
    versions = shop(NEW_ROUNDING)
    with pytest.raises(Divergence) as failure:
        agree(versions, "shop.prices:charge_later", AMOUNTS, settings=FAST)()
    assert failure.value.call_args == (Decimal("0.005"),)
